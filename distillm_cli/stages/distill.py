"""distill: train the student to imitate the teacher (DistiLLM, ICML 2024; DistiLLM-2, 2025).

Recipe: load teacher and student (one shared tokenizer) -> encode the training data
-> build the engine -> each step pick what to train on -> loss between the student's
and the teacher's token distributions -> save the student.

- loss=fkl/rkl/skew_fkl/skew_rkl/jsd/tvd: dataset responses (plus teacher/student
  generations with `generations=`), and per step a batch source chosen by off_policy=
  none / on_policy / adaptive: the dataset, fresh student samples, or the replay buffer.
- loss=distillm2: teacher/student response pairs from `generate-student generate.pairs=true`;
  one student and one teacher forward over [teacher responses; student responses], the beta
  and alpha curricula, and optionally fresh student responses before each epoch.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from ..contrastive import AlphaCurriculum, beta_at, mean_label_probability, pair_batch, pair_examples
from ..data import (
    BatchStream,
    Example,
    build_example,
    collate,
    encode_prompt,
    encode_split,
    fixed_batches,
    read_generations,
    read_lm_blocks,
)
from ..engine import (
    RunLog,
    StepPlan,
    build_engine,
    forward_logits,
    mean_over_batches,
    prepare_run_dir,
    prepare_teacher,
    response_logits,
    save_model,
    seed_everything,
    setup_runtime,
    train,
)
from ..errors import UserError
from ..generation import generate
from ..losses import check_loss_params, distillm2, kd_objective
from ..modeling import add_lora, check_same_tokenizer, load_model, load_tokenizer, vocab_size
from ..offpolicy import OffPolicySchedule

log = logging.getLogger("distillm")


def read_pairs(path: str, tokenizer, cfg) -> list[tuple[Example, Example]]:
    """(teacher-response, student-response) examples from a pairs generations.jsonl."""
    path = Path(path)
    path = path / "generations.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"loss=distillm2 needs response pairs: generations='{path}' does not exist; run "
                        "`distillm generate-student generate.pairs=true` first (or experiment=distillm2)")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        record = json.loads(line)
        if "teacher_response" not in record or "student_response" not in record:
            raise UserError(f"{path}:{number}: not a response pair; make it with generate.pairs=true")
        prompt = encode_prompt(tokenizer, record["prompt"], cfg.data.max_prompt_length)
        ids = [tokenizer(record[k], add_special_tokens=False)["input_ids"]
               for k in ("teacher_response", "student_response")]
        pairs.append(pair_examples(prompt, ids[0], ids[1], tokenizer.eos_token_id, cfg.data.max_length))
    return pairs


def run(cfg) -> dict:
    contrastive = cfg.loss.name == "distillm2"
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
    if cfg.student.lora.r:
        student = add_lora(student, cfg.student.lora)
    vocab, pad, eos = vocab_size(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id
    mb = cfg.train.micro_batch_size

    if contrastive:
        train_items = read_pairs(cfg.generations, tokenizer, cfg)
        valid_examples = [t for t, _ in train_items[: mb * cfg.train.valid_batches]]
    else:
        train_items = encode_split(cfg, tokenizer, cfg.data.train_split)
        if cfg.generations:
            train_items += read_generations(cfg.generations, tokenizer, cfg)
        valid_examples = encode_split(cfg, tokenizer, cfg.data.valid_split)
    valid_batches = fixed_batches(valid_examples, mb, pad, cfg.train.valid_batches)

    lm_stream = None
    if cfg.loss.lm_coef > 0:  # DistiLLM's language-modelling term on plain pre-training text
        lm_blocks = read_lm_blocks(cfg.data.lm_path, tokenizer, cfg.data.max_length)
        lm_stream = BatchStream(lm_blocks, mb, cfg.seed + 1, runtime.rank, runtime.world_size)

    engine = build_engine(student, cfg, runtime)
    stream = BatchStream(train_items, mb, cfg.seed, runtime.rank, runtime.world_size)
    op = cfg.off_policy
    if contrastive and op.name != "none":
        log.warning("loss=distillm2 trains on its own response pairs: off_policy=%s is not used", op.name)
    schedule = OffPolicySchedule(mode="none" if contrastive else op.name, seed=cfg.seed,
                                 total_steps=cfg.train.max_steps, phi0=op.phi0, eps=op.eps, phi_step=op.phi_step,
                                 capacity=op.capacity, schedule=op.schedule, lmbda=op.lmbda)
    zero3_multi = engine.zero_optimization_stage() == 3 and runtime.world_size > 1
    steps_per_epoch = max(1, math.ceil(len(train_items) / (mb * runtime.world_size * cfg.train.grad_accum)))
    curricula = [AlphaCurriculum(alpha0, cfg.loss.alpha_min, cfg.loss.alpha_curriculum, steps_per_epoch)
                 for alpha0 in (cfg.loss.alpha, cfg.loss.alpha_s)]

    step_now = {"step": 0}  # the step being trained (the curricula depend on it)

    def student_responses(prompts: list[list[int]], seed: int) -> list[list[int]]:
        """Fresh student samples for these prompts (sampling as in generation=...)."""
        room = cfg.data.max_length - max(len(p) for p in prompts)
        return generate(engine.module, prompts, cfg.generation, eos_id=eos, pad_id=pad, seed=seed,
                        max_new_tokens=max(1, min(cfg.generation.max_new_tokens, room)),
                        batch_size=min(len(prompts), cfg.generation.batch_size), synced_gpus=zero3_multi)

    def regenerate_pairs(step: int) -> None:
        """Batched on-policy (DistiLLM-2): new student responses for every pair, same on every rank."""
        prompts = [t.input_ids[:t.prompt_len].tolist() for t, _ in stream.items]
        responses = student_responses(prompts, seed=cfg.seed * 7919 + step)
        stream.items = [(t, build_example(p, r, eos, cfg.data.max_length))
                        for (t, _), p, r in zip(stream.items, prompts, responses)]

    def plan_step(step: int) -> StepPlan:
        step_now["step"] = step
        if contrastive:
            if cfg.loss.regenerate and step and step % steps_per_epoch == 0:
                regenerate_pairs(step)
            batches = [pair_batch(stream.next(), pad) for _ in range(cfg.train.grad_accum)]
            engine.train()
            beta = beta_at(step, cfg.train.max_steps, cfg.loss.beta, cfg.loss.beta_schedule)
            return StepPlan(batches, {"phi": 0.0, "data_source": "dataset", "buffer_size": 0, "beta": beta})
        source = schedule.decide(step)
        batches = []
        for micro in range(cfg.train.grad_accum):
            if source == "dataset":
                examples = stream.next()
            elif source == "fresh":
                picked = stream.next()
                prompts = [e.input_ids[:e.prompt_len].tolist() for e in picked]
                seed = (cfg.seed * 7919 + step) * 64 + micro + 1000 * runtime.rank
                examples = [build_example(p, r, eos, cfg.data.max_length)
                            for p, r in zip(prompts, student_responses(prompts, seed))]
                schedule.buffer.push([vars(e) for e in examples])
            else:
                examples = [Example(**s) for s in schedule.sample_buffer(mb, step * 64 + micro, runtime.rank)]
            batches.append(collate(examples, pad))
        engine.train()
        return StepPlan(batches, {"phi": schedule.phi, "data_source": source, "buffer_size": len(schedule.buffer)})

    loss_params = {"loss": cfg.loss.name, "kd_ratio": cfg.loss.kd_ratio, "alpha": cfg.loss.alpha,
                   "beta": cfg.loss.beta, "temperature": cfg.loss.temperature,
                   "detach_mixture": cfg.loss.detach_mixture, "chunk_size": cfg.loss.chunk_size}
    def contrastive_loss(batch: dict, normalizer: float):
        """DistiLLM-2 on one [teacher responses; student responses] batch: mean over its prompts."""
        n = int(batch["pairs"])
        labels = batch["labels"].to(runtime.device)
        with torch.no_grad():
            teacher_logits = forward_logits(teacher, batch, runtime.device, vocab)  # [2n, T, V]
        student_logits = forward_logits(engine, batch, runtime.device, vocab)  # [2n, T, V]
        gap = mean_label_probability(teacher_logits, labels) - mean_label_probability(student_logits.detach(), labels)
        alpha_t = curricula[0].alphas(step_now["step"], gap[:n]).to(student_logits.device)
        alpha_s = curricula[1].alphas(step_now["step"], gap[n:]).to(student_logits.device)
        beta = beta_at(step_now["step"], cfg.train.max_steps, cfg.loss.beta, cfg.loss.beta_schedule)
        keep = labels != -100
        loss = distillm2(student_logits[:n], teacher_logits[:n], keep[:n], student_logits[n:], teacher_logits[n:],
                         keep[n:], alpha_t=alpha_t, alpha_s=alpha_s, beta=beta,
                         temperature=cfg.loss.temperature, chunk_size=cfg.loss.chunk_size)
        stats = {"kd_sum": float(loss.detach()) * n, "tokens": float(n),
                 "alpha_t_sum": float(alpha_t.sum()), "alpha_s_sum": float(alpha_s.sum())}
        return loss * n / normalizer, stats

    def lm_term(stats: dict) -> torch.Tensor:
        """lm_coef * token-mean CE on one batch of pre-training text, an equal share of the window."""
        batch = collate(lm_stream.next(), pad)
        logits, labels = response_logits(engine, batch, runtime.device, vocab)
        ce, lm_stats = kd_objective(logits, None, labels, loss="fkl", kd_ratio=0.0,
                                    chunk_size=cfg.loss.chunk_size)
        stats["lm_ce_sum"] = float(ce.detach()) * stats["tokens"]  # logged per response token like kd/ce
        return cfg.loss.lm_coef * ce / cfg.train.grad_accum

    def micro_loss(batch: dict, normalizer: float):
        if contrastive:
            return contrastive_loss(batch, normalizer)
        with torch.no_grad():
            teacher_logits, labels = response_logits(teacher, batch, runtime.device, vocab)  # [1, N, V]
        student_logits, _ = response_logits(engine, batch, runtime.device, vocab)  # [1, N, V]
        loss, stats = kd_objective(student_logits, teacher_logits, labels, normalizer=normalizer, **loss_params)
        if lm_stream is not None:
            loss = loss + lm_term(stats)
        return loss, stats

    def objective_sum(batch: dict):
        teacher_logits, labels = response_logits(teacher, batch, runtime.device, vocab)
        student_logits, _ = response_logits(engine, batch, runtime.device, vocab)
        validation_params = {**loss_params, "loss": "skew_fkl" if contrastive else cfg.loss.name}
        loss, stats = kd_objective(student_logits, teacher_logits, labels, normalizer=1.0, **validation_params)
        return float(loss), stats["tokens"]

    def validation_loss() -> float:
        engine.eval()
        return mean_over_batches(objective_sum, valid_batches, runtime)

    def on_validation(step: int, loss: float) -> dict:
        schedule.observe_validation(loss)
        return {"phi": schedule.phi}

    def bar_fields() -> dict:
        if contrastive:
            beta = beta_at(step_now["step"], cfg.train.max_steps, cfg.loss.beta, cfg.loss.beta_schedule)
            return {"beta": f"{beta:.2f}"}
        counts = schedule.source_counts
        total = max(sum(counts.values()), 1)
        shares = " ".join(f"{k[0]}{100 * v / total:.0f}%" for k, v in counts.items())
        return {"phi": f"{schedule.phi:.2f}", "src": shares}

    if op.name == "adaptive" and not contrastive:
        schedule.observe_validation(validation_loss())  # the reference loss at step 0
    state = {"data": stream, "off_policy": schedule, "alpha_t": curricula[0], "alpha_s": curricula[1]}
    result = train(cfg, engine, runtime, run_dir, description=f"distill {cfg.loss.name}", plan_step=plan_step,
                   micro_loss=micro_loss, validation_loss=validation_loss, on_validation=on_validation,
                   state=state, bar_fields=bar_fields,
                   count_units=(lambda batch: int(batch["pairs"])) if contrastive else None)
    save_model(engine, tokenizer, run_dir / "checkpoint", runtime)
    return RunLog(run_dir, runtime).summary({
        "stage": "distill", "loss": cfg.loss.name, "off_policy": "none" if contrastive else op.name,
        "train_examples": len(train_items), "source_counts": dict(schedule.source_counts),
        "final_phi": schedule.phi, **result, "checkpoint": str(Path(run_dir) / "checkpoint")})
