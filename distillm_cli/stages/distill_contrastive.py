"""distill loss=distillm2: contrastive distillation on response pairs (DistiLLM-2, Ko et al. 2025).

Recipe: load teacher and student (one shared tokenizer) -> read the teacher/student
response pairs (`generate-student generate.pairs=true`) -> build the engine -> each step,
one teacher and one student forward over [teacher responses; student responses] -> SKL
pulls the student up on the teacher's answers, SRKL pushes it down where the teacher
disagrees with its own, weighted by the beta curriculum, each skewed by a per-sample
alpha from the alpha curriculum -> optionally fresh student responses before each epoch
(loss.regenerate, "batched on-policy") -> save the student.

The loss is averaged over prompts (each term is a token mean over its response).
`distillm distill` with any other loss runs DistiLLM: stages/distill.py.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from ..data.batches import BatchStream, fixed_batches
from ..data.formats import IGNORE, build_example
from ..generation import make_generator
from ..generation.across_ranks import batched, generate_across_ranks
from ..losses import distillm2
from ..models.loading import (
    forward_logits,
    load_shared_tokenizer,
    load_student,
    vocab_size,
)
from ..run_dir import RunLog, open_run
from ..teacher import load_teacher
from ..train.contrastive import (
    AlphaCurriculum,
    RegeneratedPairs,
    beta_at,
    mean_label_probability,
    pair_batch,
    read_pairs,
)
from ..train.engine import StepPlan, build_engine, save_model, train
from ..train.objectives import kd_params, validation_kd_loss

log = logging.getLogger("distillm")


def run(cfg) -> dict:
    runtime, run_dir = open_run(cfg)  # loss name, alpha and beta were checked by config.validate

    tokenizer = load_shared_tokenizer(cfg)
    teacher = load_teacher(cfg, tokenizer, runtime)
    student = load_student(cfg, tokenizer)
    vocab, pad = vocab_size(tokenizer), tokenizer.pad_token_id
    mb = cfg.train.micro_batch_size

    pairs = read_pairs(cfg.generations, tokenizer, cfg)
    valid_batches = fixed_batches([t for t, _ in pairs[: mb * cfg.train.valid_batches]], mb, pad,
                                  cfg.train.valid_batches)
    if cfg.off_policy.name != "none":
        log.warning("loss=distillm2 trains on its own response pairs: off_policy=%s is not used", cfg.off_policy.name)
    if cfg.loss.lm_coef > 0:
        log.warning("loss=distillm2 has no language-modelling term (DistiLLM-2 drops it): loss.lm_coef is not used")

    engine = build_engine(student, cfg, runtime)
    stream = BatchStream(pairs, mb, cfg.seed, runtime.rank, runtime.world_size)
    steps_per_epoch = max(1, math.ceil(len(pairs) / (mb * runtime.world_size * cfg.train.grad_accum)))
    alpha_t, alpha_s = (AlphaCurriculum(alpha0, cfg.loss.alpha_min, cfg.loss.alpha_curriculum, steps_per_epoch)
                        for alpha0 in (cfg.loss.alpha, cfg.loss.alpha_s))
    sharded = engine.zero_optimization_stage() == 3 and runtime.world_size > 1
    sampler = make_generator(engine.module, cfg.generation, tokenizer, max_length=cfg.data.max_length,
                             sharded=sharded)
    step_now = {"step": 0}  # the step being trained (both curricula depend on it)

    def beta_now() -> float:
        return beta_at(step_now["step"], cfg.train.max_steps, cfg.loss.beta, cfg.loss.beta_schedule)

    pairs_state = RegeneratedPairs(stream)

    def regenerate_pairs(step: int) -> None:
        """Batched on-policy: new student responses for every pair, shared out over the ranks
        and gathered, so every rank (and any number of them) gets the same new pairs."""
        prompts = [t.input_ids[:t.prompt_len].tolist() for t, _ in stream.items]
        responses = []
        for _, results in generate_across_ranks(lambda batch, seed: sampler.generate(batch, seed=seed),
                                                batched(prompts, cfg.generation.batch_size),
                                                seed=cfg.seed * 7919 + step, runtime=runtime, sharded=sharded):
            responses += [r for batch in results for r in batch]
        pairs_state.replace([build_example(p, r, cfg.data.max_length) for p, r in zip(prompts, responses)])

    def plan_step(step: int) -> StepPlan:
        step_now["step"] = step
        if cfg.loss.regenerate and step and step % steps_per_epoch == 0:
            regenerate_pairs(step)
        batches = [pair_batch(stream.next(), pad) for _ in range(cfg.train.grad_accum)]
        engine.train()
        return StepPlan(batches, {"phi": 0.0, "data_source": "dataset", "buffer_size": 0, "beta": beta_now()})

    def micro_loss(batch: dict, normalizer: float):
        """DistiLLM-2 on one [teacher responses; student responses] batch: mean over its prompts."""
        n = int(batch["pairs"])
        labels = batch["labels"].to(runtime.device)
        teacher_logits = teacher.logits(batch)  # [2n, T, V]
        student_logits = forward_logits(engine, batch, runtime.device, vocab)  # [2n, T, V]
        gap = mean_label_probability(teacher_logits, labels) - mean_label_probability(student_logits.detach(), labels)
        alphas_t = alpha_t.alphas(step_now["step"], gap[:n]).to(student_logits.device)
        alphas_s = alpha_s.alphas(step_now["step"], gap[n:]).to(student_logits.device)
        keep = labels != IGNORE
        loss = distillm2(student_logits[:n], teacher_logits[:n], keep[:n], student_logits[n:], teacher_logits[n:],
                         keep[n:], alpha_t=alphas_t, alpha_s=alphas_s, beta=beta_now(),
                         temperature=cfg.loss.temperature, chunk_size=cfg.loss.chunk_size)
        stats = {"kd_sum": float(loss.detach()) * n, "tokens": float(n),
                 "alpha_t_sum": float(alphas_t.sum()), "alpha_s_sum": float(alphas_s.sum())}
        return loss * n / normalizer, stats

    def validation_loss() -> float:
        """SKL on the teacher responses of the first pairs."""
        return validation_kd_loss(engine, teacher, valid_batches, runtime, vocab, kd_params(cfg.loss, loss="skew_fkl"))

    result = train(cfg, engine, runtime, run_dir, description=f"distill {cfg.loss.name}", plan_step=plan_step,
                   micro_loss=micro_loss, validation_loss=validation_loss,
                   state={"data": stream, "alpha_t": alpha_t, "alpha_s": alpha_s, "pairs": pairs_state},
                   bar_fields=lambda: {"beta": f"{beta_now():.2f}"}, count_units=lambda batch: int(batch["pairs"]))
    save_model(engine, tokenizer, run_dir / "checkpoint", runtime)
    return RunLog(run_dir, runtime).summary({
        "stage": "distill", "loss": cfg.loss.name, "off_policy": "none", "train_examples": len(pairs),
        **result, "checkpoint": str(Path(run_dir) / "checkpoint")})
