"""distill: train the student to imitate the teacher token by token (DistiLLM, ICML 2024).

Recipe: load teacher (or open its top-k cache: teacher_cache=) and student (one shared
tokenizer) -> encode the training data
(dataset responses, plus teacher/student answers with `generations=`) -> build the
engine -> each step, off_policy= picks the batch source (the dataset, fresh student
samples, or the replay buffer) -> divergence between the student's and the teacher's
token distributions (loss=fkl/rkl/skew_fkl/skew_rkl/jsd/tvd, mixed with CE by
loss.kd_ratio, plus DistiLLM's optional LM term) -> save the student (train.select: the
last weights, or the best validation step's).

`distillm distill loss=distillm2` runs DistiLLM-2 instead: stages/distill_contrastive.py.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..data.batches import BatchStream, collate, fixed_batches
from ..data.formats import Example, build_example
from ..data.sources import encode_split, read_generations, read_lm_blocks
from ..evaluation.scoring import after_training_scores
from ..generation import make_generator
from ..models.loading import load_shared_tokenizer, load_student, load_tokenizer, vocab_size
from ..run_dir import RunLog, open_run
from ..teacher import load_teacher
from ..train.engine import StepPlan, build_engine, train
from ..train.objectives import batch_ce_loss, batch_kd_loss, kd_params, validation_kd_loss
from ..train.offpolicy import OffPolicySchedule
from ..train.selection import Selection


def run(cfg) -> dict:
    runtime, run_dir = open_run(cfg)  # loss name, alpha and beta were checked by config.validate

    # teacher_cache: no teacher files are read; the cache was checked against the student's tokenizer.
    tokenizer = load_tokenizer(cfg, "student") if cfg.teacher_cache else load_shared_tokenizer(cfg)
    teacher = load_teacher(cfg, tokenizer, runtime)
    student = load_student(cfg, tokenizer)
    vocab, pad = vocab_size(tokenizer), tokenizer.pad_token_id
    mb = cfg.train.micro_batch_size

    train_examples = encode_split(cfg, tokenizer, cfg.data.train_split)
    if cfg.generations:
        train_examples += read_generations(cfg.generations, tokenizer, cfg)
    valid_batches = fixed_batches(encode_split(cfg, tokenizer, cfg.data.valid_split), mb, pad,
                                  cfg.train.valid_batches)
    lm_stream = None
    if cfg.loss.lm_coef > 0:  # DistiLLM's language-modelling term on plain pre-training text
        lm_blocks = read_lm_blocks(cfg.data.lm_path, tokenizer, cfg.data.max_length)
        lm_stream = BatchStream(lm_blocks, mb, cfg.seed + 1, runtime.rank, runtime.world_size)

    engine = build_engine(student, cfg, runtime)
    stream = BatchStream(train_examples, mb, cfg.seed, runtime.rank, runtime.world_size)
    op = cfg.off_policy
    schedule = OffPolicySchedule(mode=op.name, seed=cfg.seed, total_steps=cfg.train.max_steps, phi0=op.phi0,
                                 eps=op.eps, phi_step=op.phi_step, capacity=op.capacity, schedule=op.schedule,
                                 lmbda=op.lmbda, replay=op.replay)
    # The student samples its own answers (SGOs) with the model being trained.
    sampler = make_generator(engine.module, cfg.generation, tokenizer, max_length=cfg.data.max_length,
                             sharded=engine.zero_optimization_stage() == 3 and runtime.world_size > 1)

    def plan_step(step: int) -> StepPlan:
        """This step's micro-batches from the source the schedule picks (the same on every rank)."""
        source = schedule.decide(step)
        batches, sampling = [], 0.0
        for micro in range(cfg.train.grad_accum):
            if source == "dataset":
                examples = stream.next()
            elif source == "fresh":
                prompts = [e.input_ids[:e.prompt_len].tolist() for e in stream.next()]
                seed = (cfg.seed * 7919 + step) * 64 + micro + 1000 * runtime.rank
                started = time.perf_counter()
                responses = sampler.generate(prompts, seed=seed)
                sampling += time.perf_counter() - started
                # Each response keeps the end token it stopped at; one cut by the limit has none.
                examples = [build_example(p, r, cfg.data.max_length) for p, r in zip(prompts, responses)]
                schedule.buffer.push([vars(e) for e in examples])
            else:
                examples = [Example(**s) for s in schedule.sample_buffer(mb, step * 64 + micro, runtime.rank)]
            batches.append(collate(examples, pad))
        engine.train()
        # sample_s: this rank's seconds in the generator (0 for dataset and replay steps): what a faster
        # generation backend can save at most.
        return StepPlan(batches, {"phi": schedule.phi, "data_source": source, "buffer_size": len(schedule.buffer),
                                  "sample_s": round(sampling, 4)})

    loss_params = kd_params(cfg.loss)

    def lm_term(stats: dict) -> torch.Tensor:
        """lm_coef * token-mean CE on one batch of pre-training text, an equal share of the window."""
        batch = collate(lm_stream.next(), pad)
        ce, _ = batch_ce_loss(engine, batch, runtime, vocab, normalizer=None, chunk_size=cfg.loss.chunk_size,
                              fused_head=cfg.loss.fused_head)  # token mean
        stats["lm_ce_sum"] = float(ce.detach()) * stats["tokens"]  # logged per response token like kd/ce
        return cfg.loss.lm_coef * ce / cfg.train.grad_accum

    def micro_loss(batch: dict, normalizer: float):
        loss, stats = batch_kd_loss(engine, teacher, batch, runtime, vocab, loss_params, normalizer)
        if lm_stream is not None:
            loss = loss + lm_term(stats)
        return loss, stats

    def validation_loss() -> float:
        return validation_kd_loss(engine, teacher, valid_batches, runtime, vocab, loss_params)

    def on_validation(step: int, loss: float) -> dict:
        schedule.observe_validation(loss)  # adaptive: a rise of eps or more raises phi
        return {"phi": schedule.phi}

    def bar_fields() -> dict:
        counts = schedule.source_counts
        total = max(sum(counts.values()), 1)
        shares = " ".join(f"{k[0]}{100 * v / total:.0f}%" for k, v in counts.items())
        return {"phi": f"{schedule.phi:.2f}", "src": shares}

    if op.name == "adaptive":
        schedule.observe_validation(validation_loss())  # the reference loss at step 0
    selection = Selection(cfg, engine, tokenizer, runtime, run_dir)  # train.select: last, val_loss, rouge_l
    result = train(cfg, engine, runtime, run_dir, description=f"distill {cfg.loss.name}", plan_step=plan_step,
                   micro_loss=micro_loss, validation_loss=validation_loss, on_validation=on_validation,
                   state={"data": stream, "off_policy": schedule}, bar_fields=bar_fields, select=selection)
    selected = selection.finish(run_dir / "checkpoint")
    scores = after_training_scores(cfg, run_dir / "checkpoint", runtime)  # eval.after_training
    return RunLog(run_dir, runtime).summary({
        "stage": "distill", "loss": cfg.loss.name, "off_policy": op.name,
        "teacher": teacher.describe() if hasattr(teacher, "describe") else "live",
        "train_examples": len(train_examples), "source_counts": dict(schedule.source_counts),
        "final_phi": schedule.phi, **result, "selected": selected, "checkpoint": str(Path(run_dir) / "checkpoint"),
        **scores})
