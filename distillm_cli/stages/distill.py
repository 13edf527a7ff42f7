"""distill: train the student to imitate the teacher (DistiLLM, ICML 2024).

Recipe: load teacher and student (one shared tokenizer) -> encode the training data
(dataset responses, plus teacher/student generations when `generations=` is set) ->
build the engine -> each step pick the batch source (dataset, fresh student samples,
or the replay buffer; off_policy=none/on_policy/adaptive) -> loss between the student's
and the teacher's token distributions (loss=fkl/rkl/skew_fkl/skew_rkl/jsd/tvd) ->
save the student.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import BatchStream, Example, build_example, collate, encode_split, read_generations
from ..engine import (RunLog, StepPlan, build_engine, forward_logits, mean_over_batches, prepare_run_dir,
                      prepare_teacher, save_model, seed_everything, setup_runtime, train)
from ..errors import UserError
from ..generation import generate
from ..losses import check_loss_params, kd_objective
from ..modeling import check_same_tokenizer, load_model, load_tokenizer, vocab_size
from ..offpolicy import OffPolicySchedule


def run(cfg) -> dict:
    if cfg.loss.name == "distillm2":
        raise UserError("loss=distillm2 trains on teacher/student response pairs: use experiment=distillm2")
    try:
        check_loss_params(cfg.loss.name, cfg.loss.alpha, cfg.loss.beta)
    except ValueError as error:
        raise UserError(str(error)) from error
    runtime = setup_runtime(cfg)
    seed_everything(cfg.seed)
    run_dir = prepare_run_dir(cfg, runtime)

    tokenizer = load_tokenizer(cfg, "teacher")
    check_same_tokenizer(tokenizer, load_tokenizer(cfg, "student"), cfg)
    teacher = prepare_teacher(load_model(cfg, "teacher", tokenizer, seed=cfg.seed + 1), cfg, runtime)
    student = load_model(cfg, "student", tokenizer)
    vocab, pad, eos = vocab_size(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id

    train_examples = encode_split(cfg, tokenizer, cfg.data.train_split)
    if cfg.generations:
        train_examples += read_generations(cfg.generations, tokenizer, cfg)
    valid_examples = encode_split(cfg, tokenizer, cfg.data.valid_split)
    mb = cfg.train.micro_batch_size
    valid_batches = [collate(valid_examples[i:i + mb], pad)
                     for i in range(0, min(len(valid_examples), mb * cfg.train.valid_batches), mb)]

    engine = build_engine(student, cfg, runtime)
    stream = BatchStream(train_examples, mb, cfg.seed, runtime.rank, runtime.world_size)
    op = cfg.off_policy
    schedule = OffPolicySchedule(mode=op.name, seed=cfg.seed, total_steps=cfg.train.max_steps, phi0=op.phi0,
                                 eps=op.eps, phi_step=op.phi_step, capacity=op.capacity, schedule=op.schedule,
                                 lmbda=op.lmbda)
    zero3_multi = engine.zero_optimization_stage() == 3 and runtime.world_size > 1

    def student_samples(examples: list[Example], step: int, micro: int) -> list[Example]:
        """Fresh student responses for these prompts (sampling as in generation=...)."""
        prompts = [e.input_ids[:e.prompt_len].tolist() for e in examples]
        room = cfg.data.max_length - max(len(p) for p in prompts)
        responses = generate(engine.module, prompts, cfg.generation, eos_id=eos, pad_id=pad,
                             seed=(cfg.seed * 7919 + step) * 64 + micro + 1000 * runtime.rank,
                             max_new_tokens=max(1, min(cfg.generation.max_new_tokens, room)),
                             batch_size=len(prompts), synced_gpus=zero3_multi)
        return [build_example(p, r, eos, cfg.data.max_length) for p, r in zip(prompts, responses)]

    def plan_step(step: int) -> StepPlan:
        source = schedule.decide(step)
        batches = []
        for micro in range(cfg.train.grad_accum):
            if source == "dataset":
                examples = stream.next()
            elif source == "fresh":
                examples = student_samples(stream.next(), step, micro)
                schedule.buffer.push([vars(e) for e in examples])
            else:
                examples = [Example(**s) for s in schedule.sample_buffer(mb, step * 64 + micro, runtime.rank)]
            batches.append(collate(examples, pad))
        engine.train()
        return StepPlan(batches, {"phi": schedule.phi, "data_source": source, "buffer_size": len(schedule.buffer)})

    loss_params = {"loss": cfg.loss.name, "kd_ratio": cfg.loss.kd_ratio, "alpha": cfg.loss.alpha,
                   "beta": cfg.loss.beta, "temperature": cfg.loss.temperature,
                   "detach_mixture": cfg.loss.detach_mixture, "chunk_size": cfg.loss.chunk_size}

    def micro_loss(batch: dict, normalizer: float):
        with torch.no_grad():
            teacher_logits = forward_logits(teacher, batch, runtime.device, vocab)  # [B, T, V]
        student_logits = forward_logits(engine, batch, runtime.device, vocab)  # [B, T, V]
        return kd_objective(student_logits, teacher_logits, batch["labels"].to(runtime.device),
                            normalizer=normalizer, **loss_params)

    def objective_sum(batch: dict):
        teacher_logits = forward_logits(teacher, batch, runtime.device, vocab)
        student_logits = forward_logits(engine, batch, runtime.device, vocab)
        loss, stats = kd_objective(student_logits, teacher_logits, batch["labels"].to(runtime.device),
                                   normalizer=1.0, **loss_params)
        return float(loss), stats["tokens"]

    def validation_loss() -> float:
        engine.eval()
        return mean_over_batches(objective_sum, valid_batches, runtime)

    def on_validation(step: int, loss: float) -> dict:
        schedule.observe_validation(loss)
        return {"phi": schedule.phi}

    def bar_fields() -> dict:
        counts = schedule.source_counts
        total = max(sum(counts.values()), 1)
        shares = " ".join(f"{k[0]}{100 * v / total:.0f}%" for k, v in counts.items())
        return {"phi": f"{schedule.phi:.2f}", "src": shares}

    if op.name == "adaptive":
        schedule.observe_validation(validation_loss())  # the reference loss at step 0
    result = train(cfg, engine, runtime, run_dir, description=f"distill {cfg.loss.name}", plan_step=plan_step,
                   micro_loss=micro_loss, validation_loss=validation_loss, on_validation=on_validation,
                   state={"data": stream, "off_policy": schedule}, bar_fields=bar_fields)
    save_model(engine, tokenizer, run_dir / "checkpoint", runtime)
    return RunLog(run_dir, runtime).summary({
        "stage": "distill", "loss": cfg.loss.name, "off_policy": op.name, "train_examples": len(train_examples),
        "source_counts": dict(schedule.source_counts), "final_phi": schedule.phi, **result,
        "checkpoint": str(Path(run_dir) / "checkpoint")})
