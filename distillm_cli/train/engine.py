"""The one owner of DeepSpeed: engines, the training loop, checkpoints.

Every training stage (sft-teacher, sft-student, distill) goes through `build_engine`
and `train`; a teacher sharded under ZeRO-3 through `build_frozen_engine`. Nothing else
calls `deepspeed.initialize`.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..data.formats import IGNORE
from ..errors import UserError
from ..loggers import make_logger
from ..run_dir import RunLog
from ..runtime import Runtime, all_reduce_sum, barrier
from ..ui import progress_bar
from .preemption import Preempted, stop_at_step_end, stop_requested

log = logging.getLogger("distillm")


# ------------------------------------------------------------------------- engines
def deepspeed_config(cfg) -> dict:
    """DeepSpeed's config of this run: the deepspeed group's keys plus the precision of model.dtype.

    bf16 weights get fp32 gradient accumulation (data_types.grad_accum_dtype): a bf16
    running sum of the micro-batch gradients rounds at every add and drops the small
    ones once the sum is large. DeepSpeed accumulates in fp32 under ZeRO 1-3 but refuses
    it without ZeRO, so ZeRO 0 runs as ZeRO 1, DeepSpeed's BF16_Optimizer: the same
    update (one process: nothing to partition; several: the optimizer state is split).
    ZeRO 1 reduces the gradients once per step, so that reduction is kept in fp32 too
    (communication_data_type; bf16 would round the fp32 sum). Keys given in the config win.
    """
    config = OmegaConf.to_container(cfg.deepspeed, resolve=True)
    if cfg.model.dtype == "bfloat16":
        config.setdefault("bf16", {})["enabled"] = True
        accum = config.setdefault("data_types", {}).setdefault("grad_accum_dtype", "fp32")
        if str(accum).lower() in ("fp32", "float32", "float", "torch.float32"):
            zero = config.setdefault("zero_optimization", {})
            if zero.get("stage", 0) == 0:
                zero["stage"] = 1
            if zero["stage"] == 1:
                config.setdefault("communication_data_type", "fp32")
    elif cfg.model.dtype == "float16":
        config.setdefault("fp16", {})["enabled"] = True
    return config


def _cosine_schedule(optimizer, train_cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay from lr to min_lr at max_steps (METHOD.md §3)."""
    floor = train_cfg.min_lr / train_cfg.lr

    def factor(step: int) -> float:
        if step < train_cfg.warmup_steps:
            return (step + 1) / train_cfg.warmup_steps
        progress = (step - train_cfg.warmup_steps) / max(1, train_cfg.max_steps - train_cfg.warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_engine(model, cfg, runtime: Runtime):
    """The student's DeepSpeed engine: torch AdamW (no JIT op builds) + cosine schedule."""
    import deepspeed

    if cfg.train.gradient_checkpointing:  # non-reentrant: also right for LoRA, whose base weights are frozen
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)  # biases and norms: no weight decay
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.lr)
    scheduler = _cosine_schedule(optimizer, cfg.train)
    # DeepSpeed's bf16 optimizer prints a dozen memory lines with print(); the run's own output says more.
    with contextlib.redirect_stdout(io.StringIO()):
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=deepspeed_config(cfg))
    return engine


def zero_stage(cfg) -> int:
    return deepspeed_config(cfg).get("zero_optimization", {}).get("stage", 0)


def build_frozen_engine(model, cfg):
    """An inference-only engine that shards a frozen model like the student (ZeRO-3)."""
    import deepspeed

    config = deepspeed_config(cfg)
    config.pop("gradient_clipping", None)
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


# --------------------------------------------------------------------- checkpoints
def _gathered_state_dict(engine, main: bool) -> dict | None:
    """The checkpoint's full state dict on CPU on rank 0, None elsewhere; every rank must call it.

    Under ZeRO-3 the weights are gathered one module at a time and copied on rank 0 only
    (train/saving.py); a LoRA student comes back merged, under its base model's keys.
    """
    from .saving import plain_state_dict

    module = engine.module if hasattr(engine, "module") else engine
    optimizer = getattr(engine, "optimizer", None)
    zero3 = getattr(engine, "zero_optimization_stage", lambda: 0)() == 3
    if zero3 and hasattr(optimizer, "checkpoint_event_prologue"):
        optimizer.checkpoint_event_prologue()  # every parameter partitioned first, as DeepSpeed's own save does
    state = plain_state_dict(module, main)
    if zero3 and hasattr(optimizer, "checkpoint_event_epilogue"):
        optimizer.checkpoint_event_epilogue()  # persistent parameters gathered again for training
    return state


def save_model(engine, tokenizer, out_dir: Path, runtime: Runtime, extra_files: dict | None = None) -> None:
    """Write a Hugging Face model dir atomically: into a temp dir, then renamed into place.

    Every rank joins the gathering; rank 0 alone holds the weights and writes. A LoRA
    student is written as its base model with the adapters merged in.
    """
    from .saving import save_target

    module = engine.module if hasattr(engine, "module") else engine
    state = _gathered_state_dict(engine, runtime.main)
    if runtime.main:
        tmp = out_dir.with_name(f".{out_dir.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_target(module).save_pretrained(tmp, state_dict=state)
        tokenizer.save_pretrained(tmp)
        for name, payload in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(payload, indent=2))
        old = out_dir.with_name(f".{out_dir.name}.old")
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    if runtime.world_size > 1:
        torch.distributed.barrier()


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rank_file(folder: Path, rank: int) -> Path:
    return folder / f"rank-{rank}.pt"


def save_resume_point(engine, run_dir: Path, step: int, objects: dict, keep: int, runtime: Runtime) -> None:
    """A resumable checkpoint: DeepSpeed's model, optimizer and scheduler state, plus one file
    per rank with that rank's own state (data position, RNG, replay buffer, curricula).

    DeepSpeed's client_state is written by one rank and read by all, so what differs
    between ranks goes into rank-R.pt instead. Everything is written into a temporary
    folder; only a complete one is renamed to step-N, so a kill during saving leaves the
    previous one loadable.
    """
    root = run_dir / "resume"
    tmp = root / f".tmp-step-{step}"
    if runtime.main:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier(runtime)
    engine.save_checkpoint(str(tmp), tag="state", client_state={"step": step})
    rank_state = {"step": step, "world_size": runtime.world_size, "objects": objects, "rng": _rng_state()}
    partial = tmp / f".rank-{runtime.rank}.pt.tmp"
    torch.save(rank_state, partial)
    os.replace(partial, _rank_file(tmp, runtime.rank))
    barrier(runtime)
    if runtime.main:
        os.replace(tmp, root / f"step-{step}")
        for stale in sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    barrier(runtime)


def load_resume_point(engine, run_dir: Path, runtime: Runtime) -> dict | None:
    """Restore the newest complete checkpoint in run_dir/resume and this rank's own state
    (returned: step and objects); None when there is none."""
    points = sorted((run_dir / "resume").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    if not points:
        return None
    mine = _rank_file(points[-1], runtime.rank)
    saved_by = len(list(points[-1].glob("rank-*.pt")))
    if not mine.exists() or saved_by != runtime.world_size:
        raise UserError(f"the resume point {points[-1]} was written by {saved_by} process(es) and this run has "
                        f"{runtime.world_size}; resume with the same number of processes, or pass a new run_dir")
    engine.load_checkpoint(str(points[-1]), tag="state")
    rank_state = torch.load(mine, weights_only=False)  # our own file: python RNG state is a tuple
    _set_rng_state(rank_state["rng"])
    log.info("resumed from %s", points[-1])
    return rank_state


# ------------------------------------------------------------------ training loop
def _same_on_every_rank(value: str, step: int) -> list[str]:
    """Every rank's value; ranks that branch differently would deadlock in the next collective."""
    values = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise RuntimeError(f"ranks disagree on the batch source at step {step + 1}: {values}")
    return values


def _response_tokens(batch: dict) -> int:
    return int((batch["labels"] != IGNORE).sum())


@dataclass
class StepPlan:
    """What one optimizer step trains on: grad_accum micro-batches plus fields to log."""

    micro_batches: list[dict]
    info: dict


def train(cfg, engine, runtime: Runtime, run_dir: Path, *, description: str,
          plan_step: Callable[[int], StepPlan],
          micro_loss: Callable[[dict, float], tuple[torch.Tensor, dict]],
          validation_loss: Callable[[], float] | None = None,
          on_validation: Callable[[int, float], dict] | None = None,
          state: dict | None = None, bar_fields: Callable[[], dict] | None = None,
          count_units: Callable[[dict], int] | None = None, select=None) -> dict:
    """The shared loop: plan a step, forward/backward each micro-batch, step, log, validate, save.

    The loss of each micro-batch is a token *sum* divided by the response tokens of the
    whole accumulation window on all ranks, times the world size (DeepSpeed averages
    gradients over ranks). So grad_accum and the number of processes never change the update.
    `state` maps names to objects with state_dict/load_state_dict that resume restores.
    `count_units` says what the loss averages over (default: response tokens; DistiLLM-2: prompts).
    `select` (train/selection.py, train.select) sees every validation and keeps the best weights;
    its best figure and step resume with the rest of the state.
    """
    loss_per_token = count_units is None
    count_units = count_units or _response_tokens
    state = state or {}
    if select is not None and select.active:
        state = {**state, "select": select}
    runlog = RunLog(run_dir, runtime)
    start_step = 0
    if cfg.resume == "auto":
        rank_state = load_resume_point(engine, run_dir, runtime)
        if rank_state is not None:
            start_step = rank_state["step"]
            for name, obj in state.items():
                obj.load_state_dict(rank_state["objects"][name])
            if runtime.main and runlog.path.exists():  # drop steps logged after the resume point
                kept = [line for line in runlog.path.read_text().splitlines()
                        if line.strip() and json.loads(line)["step"] <= start_step]
                runlog.path.write_text("".join(line + "\n" for line in kept))
    logger = make_logger(cfg.logger, run_dir, start_step=start_step,
                         config=OmegaConf.to_container(cfg, resolve=True))
    engine.train()
    last_loss, last_val, started, tokens_seen, skipped = float("nan"), None, time.perf_counter(), 0, 0
    with progress_bar(description, cfg.train.max_steps, start_step, every_steps=cfg.train.log_interval) as bar, \
            stop_at_step_end():
        for step in range(start_step, cfg.train.max_steps):
            if step > start_step and stop_requested(runtime):  # SIGTERM: stop at a resume point (preemption.py)
                if not (run_dir / "resume" / f"step-{step}").exists():
                    save_resume_point(engine, run_dir, step, {k: v.state_dict() for k, v in state.items()},
                                      cfg.train.keep_checkpoints, runtime)
                logger.close()
                raise Preempted(f"stopped by SIGTERM after step {step} of {cfg.train.max_steps} ({description}); "
                                f"the resume point is {run_dir / 'resume' / f'step-{step}'}: run the same command "
                                "with resume=auto to continue")
            plan = plan_step(step)
            if runtime.world_size > 1 and "data_source" in plan.info:
                plan.info["data_source_ranks"] = _same_on_every_rank(plan.info["data_source"], step)
            window_units = all_reduce_sum(sum(count_units(b) for b in plan.micro_batches), runtime)
            normalizer = max(window_units, 1.0) / runtime.world_size
            # Progress and tokens/s always count response tokens, whatever the loss averages over.
            window_tokens = window_units if loss_per_token else all_reduce_sum(
                sum(_response_tokens(b) for b in plan.micro_batches), runtime)
            step_loss, step_stats = 0.0, {}
            for batch in plan.micro_batches:
                loss, stats = micro_loss(batch, normalizer)
                # Checked before backward, on every rank together, so no bad update is ever applied.
                if not math.isfinite(all_reduce_sum(0.0 if torch.isfinite(loss).all() else math.inf, runtime)):
                    break
                engine.backward(loss, scale_wrt_gas=False)
                engine.step()
                step_loss += float(loss.detach())
                for key, value in stats.items():
                    step_stats[key] = step_stats.get(key, 0.0) + value
            else:
                step_stats["ok"] = True
            if "ok" not in step_stats:
                if cfg.train.on_nonfinite == "skip":
                    skipped += 1
                    log.warning("step %d: non-finite loss, step skipped (%d so far)", step + 1, skipped)
                    runlog.log({"step": step + 1, "loss": None, "skipped": True, **plan.info})
                    bar.advance(1)
                    continue
                raise UserError(f"the loss became non-finite at step {step + 1}; the run stopped and the last "
                                "good checkpoint is kept: lower train.lr, check the data and model, or pass "
                                "train.on_nonfinite=skip")
            del step_stats["ok"]
            last_loss = all_reduce_sum(step_loss, runtime) / runtime.world_size
            tokens_seen += window_tokens
            per_token = max(step_stats.get("tokens", 0.0), 1.0)  # this rank's response tokens
            record = {"step": step + 1, "loss": last_loss, "lr": engine.get_lr()[0], "tokens": int(window_tokens),
                      **{k[:-4]: v / per_token for k, v in step_stats.items() if k.endswith("_sum")},
                      **({} if loss_per_token else {"loss_units": int(window_units)}), **plan.info}
            if validation_loss is not None and cfg.train.eval_interval and (
                    (step + 1) % cfg.train.eval_interval == 0 or step + 1 == cfg.train.max_steps):
                record["val_loss"] = last_val = validation_loss()
                if on_validation is not None:
                    record.update(on_validation(step + 1, record["val_loss"]))
                if select is not None:
                    record.update(select.observe(step + 1, record["val_loss"]))
                engine.train()
            runlog.log(record)  # every step: metrics.jsonl is the run's full record
            logger.log(record, step + 1)
            bar.advance(1, tokens=int(window_tokens), loss=f"{last_loss:.4f}", lr=f"{record['lr']:.2e}",
                        **(bar_fields() if bar_fields else {}))
            if cfg.train.save_interval and (step + 1) % cfg.train.save_interval == 0 \
                    and step + 1 < cfg.train.max_steps:
                save_resume_point(engine, run_dir, step + 1, {k: v.state_dict() for k, v in state.items()},
                                  cfg.train.keep_checkpoints, runtime)
    logger.close()
    elapsed = time.perf_counter() - started
    return {"final_loss": last_loss, "val_loss": last_val, "skipped_steps": skipped, "steps": cfg.train.max_steps,
            "train_seconds": elapsed, "tokens_per_second": tokens_seen / max(elapsed, 1e-9)}


@torch.no_grad()
def mean_over_batches(loss_sum_fn: Callable[[dict], tuple[float, float]], batches: list[dict],
                      runtime: Runtime) -> float:
    """Token-mean of a loss over validation batches, reduced over ranks."""
    total, tokens = 0.0, 0.0
    for batch in batches:
        loss_sum, count = loss_sum_fn(batch)
        total, tokens = total + loss_sum, tokens + count
    return all_reduce_sum(total, runtime) / max(all_reduce_sum(tokens, runtime), 1.0)
