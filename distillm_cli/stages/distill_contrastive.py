"""distill loss=distillm2: contrastive distillation on response pairs (DistiLLM-2, Ko et al. 2025).

Recipe: load teacher and student (one shared tokenizer) -> read the teacher/student
response pairs (`generate-student generate.pairs=true`) -> build the engine -> each step,
one teacher and one student forward over [teacher responses; student responses] -> SKL
pulls the student up on the teacher's answers, SRKL pushes it down where the teacher
disagrees with its own, weighted by the beta curriculum, each skewed by a per-sample
alpha from the alpha curriculum -> optionally fresh responses before each epoch
(loss.regenerate=student|both, "batched on-policy") -> save the student.

The loss is averaged over prompts (each term is a token mean over its response).
`distillm distill` with any other loss runs DistiLLM: stages/distill.py.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from ..data.batches import BatchStream, fixed_batches
from ..data.formats import build_example
from ..data.sources import encode_split
from ..errors import UserError
from ..evaluation.scoring import after_training_scores
from ..generation import make_generator
from ..generation.across_ranks import generate_all
from ..models.loading import (
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
    pair_batch,
    read_pairs,
)
from ..train.engine import StepPlan, build_engine, mean_over_batches, train
from ..train.objectives import batch_pair_loss, kd_params, validation_kd_loss
from ..train.selection import Selection

log = logging.getLogger("distillm")


def run(cfg) -> dict:
    runtime, run_dir = open_run(cfg)  # loss name, alpha and beta were checked by config.validate

    tokenizer = load_shared_tokenizer(cfg)
    teacher = load_teacher(cfg, tokenizer, runtime)
    student = load_student(cfg, tokenizer)
    vocab, pad = vocab_size(tokenizer), tokenizer.pad_token_id
    mb = cfg.train.micro_batch_size

    pairs = read_pairs(cfg.generations, tokenizer, cfg)
    valid_pairs, valid_batches = held_out_validation(cfg, tokenizer, mb, pad)
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
        return beta_at(step_now["step"], cfg.train.max_steps, cfg.loss.beta, cfg.loss.beta_schedule,
                       cfg.loss.beta_max, cfg.loss.beta_ramp_fraction)

    pairs_state = RegeneratedPairs(stream)

    teacher_sampler = None
    if cfg.loss.regenerate == "both":  # the paper: both responses sampled anew before every epoch
        if not hasattr(teacher, "generator"):
            raise UserError("loss.regenerate=both samples from the teacher, which this teacher source cannot do; "
                            "use loss.regenerate=student")
        teacher_sampler = teacher.generator(cfg.generation, tokenizer, max_length=cfg.data.max_length)

    def regenerate_pairs(step: int) -> None:
        """Batched on-policy: new responses for every pair (student, or teacher and student),
        shared out over the ranks and gathered, so any number of ranks gets the same new pairs."""
        prompts = [t.input_ids[:t.prompt_len].tolist() for t, _ in stream.items]

        def sample(generator, salt: int) -> list:
            responses = generate_all(generator, prompts, seed=(cfg.seed * 7919 + step) * 2 + salt,
                                     batch_size=cfg.generation.batch_size, runtime=runtime, sharded=sharded)
            return [build_example(p, r, cfg.data.max_length) for p, r in zip(prompts, responses)]

        pairs_state.replace(sample(teacher_sampler, 1) if teacher_sampler else None, sample(sampler, 0))

    def plan_step(step: int) -> StepPlan:
        step_now["step"] = step
        if cfg.loss.regenerate != "none" and step and step % steps_per_epoch == 0:
            regenerate_pairs(step)
        batches = [pair_batch(stream.next(), pad) for _ in range(cfg.train.grad_accum)]
        engine.train()
        return StepPlan(batches, {"phi": 0.0, "data_source": "dataset", "buffer_size": 0, "beta": beta_now()})

    def micro_loss(batch: dict, normalizer: float):
        """DistiLLM-2 on one [teacher responses; student responses] batch: mean over its prompts."""
        n = int(batch["pairs"])

        def alphas(gap):  # gap [2n]: per response, mean teacher minus mean student token probability
            return (alpha_t.alphas(step_now["step"], gap[:n]).to(runtime.device),
                    alpha_s.alphas(step_now["step"], gap[n:]).to(runtime.device))

        # Both models' output head on the response rows only; the gap from a chunked pass over them.
        loss, alphas_t, alphas_s = batch_pair_loss(engine, teacher, batch, runtime, vocab, alphas=alphas,
                                                   beta=beta_now(), temperature=cfg.loss.temperature,
                                                   chunk_size=cfg.loss.chunk_size, fused_head=cfg.loss.fused_head)
        stats = {"kd_sum": float(loss.detach()) * n, "tokens": float(n),
                 "alpha_t_sum": float(alphas_t.sum()), "alpha_s_sum": float(alphas_s.sum())}
        return cfg.loss.scale * loss * n / normalizer, stats

    def validation_loss() -> float:
        """SKL on the teacher responses of the first pairs."""
        if not valid_pairs:  # SKL on the validation split's own responses
            return validation_kd_loss(engine, teacher, valid_batches, runtime, vocab,
                                      kd_params(cfg.loss, loss="skew_fkl"))

        def pair_loss_sum(batch: dict) -> tuple[float, float]:
            n = int(batch["pairs"])
            loss, _, _ = batch_pair_loss(engine, teacher, batch, runtime, vocab,
                                         alphas=lambda gap: (cfg.loss.alpha, cfg.loss.alpha_s), beta=cfg.loss.beta,
                                         temperature=cfg.loss.temperature, chunk_size=cfg.loss.chunk_size,
                                         fused_head=cfg.loss.fused_head)
            return float(loss) * n, float(n)

        engine.eval()
        return mean_over_batches(pair_loss_sum, valid_batches, runtime)

    selection = Selection(cfg, engine, tokenizer, runtime, run_dir)  # train.select: last, val_loss, rouge_l
    result = train(cfg, engine, runtime, run_dir, description=f"distill {cfg.loss.name}", plan_step=plan_step,
                   micro_loss=micro_loss, validation_loss=validation_loss,
                   state={"data": stream, "alpha_t": alpha_t, "alpha_s": alpha_s, "pairs": pairs_state},
                   bar_fields=lambda: {"beta": f"{beta_now():.2f}"}, count_units=lambda batch: int(batch["pairs"]),
                   select=selection)
    selected = selection.finish(run_dir / "checkpoint")
    scores = after_training_scores(cfg, run_dir / "checkpoint", runtime)  # eval.after_training
    return RunLog(run_dir, runtime).summary({
        "stage": "distill", "loss": cfg.loss.name, "off_policy": "none", "train_examples": len(pairs),
        "validation": f"{len(valid_pairs)} held-out pairs" if valid_pairs else f"split {cfg.data.valid_split}",
        **result, "selected": selected, "checkpoint": str(Path(run_dir) / "checkpoint"), **scores})


def held_out_validation(cfg, tokenizer, mb: int, pad: int) -> tuple[list, list[dict]]:
    """The validation data, never the training pairs: (pairs, their batches) from the pairs
    curated for the validation prompts (valid_generations; the pipeline makes them), where
    the validation loss is DistiLLM-2's objective at beta0 and alpha0 (a fixed objective,
    comparable from step to step); else ([], batches) of the validation split's responses
    for SKL."""
    size = mb * cfg.train.valid_batches
    if cfg.valid_generations:
        pairs = read_pairs(cfg.valid_generations, tokenizer, cfg)[:size]
        return pairs, [pair_batch(pairs[i:i + mb], pad) for i in range(0, len(pairs), mb)]
    try:
        examples = encode_split(cfg, tokenizer, cfg.data.valid_split)
    except UserError as error:
        raise UserError(f"loss=distillm2 validates on held-out data and the validation split has none ({error}); "
                        "curate pairs for it with `distillm generate-student generate.pairs=true "
                        f"generate.split={cfg.data.valid_split}` and pass valid_generations=<that run>") from error
    return [], fixed_batches(examples, mb, pad, cfg.train.valid_batches)
