"""sft-teacher / sft-student: supervised fine-tuning on instruction data.

Recipe: load the model -> encode its split -> build the DeepSpeed engine -> train with
cross-entropy on response tokens -> save a Hugging Face checkpoint (the last weights, or
the best validation step's with train.select). The same recipe
makes the teacher (on data.teacher_split) and the student's starting point, the
SFT-only baseline (on data.train_split); sft-student with `generations=` also trains on
the teacher's answers (SeqKD). eval.after_training=true scores the kept checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from ..data.batches import BatchStream, collate, fixed_batches
from ..data.sources import encode_split, read_generations
from ..evaluation.scoring import after_training_scores
from ..models.loading import load_model, load_student, load_tokenizer, vocab_size
from ..run_dir import RunLog, open_run
from ..train.engine import StepPlan, build_engine, mean_over_batches, train
from ..train.objectives import batch_ce_loss
from ..train.selection import Selection


def run(cfg) -> dict:
    role = "teacher" if cfg.stage == "sft-teacher" else "student"
    runtime, run_dir = open_run(cfg)

    tokenizer = load_tokenizer(cfg, role)
    model = load_student(cfg, tokenizer) if role == "student" else load_model(cfg, role, tokenizer)
    vocab, pad = vocab_size(tokenizer), tokenizer.pad_token_id
    split = cfg.data.teacher_split if role == "teacher" else cfg.data.train_split
    train_examples = encode_split(cfg, tokenizer, split)
    if role == "student" and cfg.generations:  # SeqKD: also the teacher's answers, as distill would see them
        train_examples += read_generations(cfg.generations, tokenizer, cfg)
    valid_examples = encode_split(cfg, tokenizer, cfg.data.valid_split)
    mb = cfg.train.micro_batch_size
    valid_batches = fixed_batches(valid_examples, mb, pad, cfg.train.valid_batches)

    engine = build_engine(model, cfg, runtime)
    stream = BatchStream(train_examples, mb, cfg.seed, runtime.rank, runtime.world_size)

    def plan_step(step: int) -> StepPlan:
        batches = [collate(stream.next(), pad) for _ in range(cfg.train.grad_accum)]
        return StepPlan(batches, {"phi": 0.0, "data_source": "dataset", "buffer_size": 0})

    def micro_loss(batch: dict, normalizer: float):  # CE on the response tokens
        return batch_ce_loss(engine, batch, runtime, vocab, normalizer=normalizer, chunk_size=cfg.loss.chunk_size,
                             fused_head=cfg.loss.fused_head)

    def ce_sum(batch: dict):
        _, stats = batch_ce_loss(engine, batch, runtime, vocab, normalizer=1.0, chunk_size=cfg.loss.chunk_size,
                                 fused_head=cfg.loss.fused_head)
        return stats["ce_sum"], stats["tokens"]

    def validation_loss() -> float:
        engine.eval()
        return mean_over_batches(ce_sum, valid_batches, runtime)

    selection = Selection(cfg, engine, tokenizer, runtime, run_dir)  # train.select: last, val_loss, rouge_l
    result = train(cfg, engine, runtime, run_dir, description=f"sft {role}", plan_step=plan_step,
                   micro_loss=micro_loss, validation_loss=validation_loss, state={"data": stream}, select=selection)
    selected = selection.finish(run_dir / "checkpoint")
    scores = after_training_scores(cfg, run_dir / "checkpoint", runtime)  # eval.after_training
    return RunLog(run_dir, runtime).summary({
        "stage": cfg.stage, "role": role, "train_examples": len(train_examples), **result,
        "selected": selected, "checkpoint": str(Path(run_dir) / "checkpoint"), **scores})
