"""A run directory: created once per stage run, guarded against overwriting another run's
work, with metrics.jsonl (one JSON object per logged step) and summary.json. Rank 0 writes.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from .errors import UserError
from .runtime import Runtime, barrier, broadcast_from_main, seed_everything, setup_runtime

# Where and how a run executes, not what it computes.
IGNORED_FOR_COMPARISON = ("run_dir", "resume", "overwrite", "threads")


def open_run(cfg, *, allow_existing: bool = False) -> tuple[Runtime, Path]:
    """Every stage's first step: join the processes, seed, and claim the run directory."""
    runtime = setup_runtime(cfg)
    seed_everything(cfg.seed)
    return runtime, prepare_run_dir(cfg, runtime, allow_existing=allow_existing)


def agree_on_run_dir(cfg) -> None:
    """One run directory for every rank: rank 0's.

    Each process of a launch resolves the default run_dir (`${now:...}`) by its own clock,
    so ranks started a second apart would write to different folders. Rank 0's choice is
    sent to the others; the folder Hydra made for another rank (empty: only rank 0 writes)
    is removed.
    """
    runtime = setup_runtime(cfg)
    shared = broadcast_from_main(cfg.run_dir, runtime)
    if shared != cfg.run_dir:
        with contextlib.suppress(OSError):  # not empty or already gone: leave it
            Path(cfg.run_dir).rmdir()
        cfg.run_dir = shared


def prepare_run_dir(cfg, runtime: Runtime, *, allow_existing: bool = False) -> Path:
    """Create the run dir, refusing to overwrite a run made with another config.

    allow_existing: a finished run with the same config may be continued (generate-student
    skips the prompts it already answered). Rank 0 decides and writes; every rank gets the
    same answer, so all stop together or none does.
    """
    run_dir = Path(cfg.run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    problem = _refusal(cfg, run_dir, resolved, allow_existing) if runtime.main else None
    problem = broadcast_from_main(problem, runtime)
    if problem:
        raise UserError(problem)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if runtime.main:
            OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")
            if cfg.resume != "auto":
                (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    except OSError as error:
        raise UserError(f"cannot write to run_dir '{run_dir}' ({error.strerror}); choose a writable run_dir") \
            from error
    barrier(runtime)  # no rank reads the run dir before rank 0 has set it up
    return run_dir


def _refusal(cfg, run_dir: Path, resolved: dict, allow_existing: bool) -> str | None:
    """Why this run may not use run_dir (another config, or a finished run), or None."""
    existing = run_dir / "config.yaml"
    if not existing.exists() or cfg.overwrite:
        return None
    previous = OmegaConf.to_container(OmegaConf.load(existing), resolve=True)
    differs = {k for k in set(previous) | set(resolved)
               if k not in IGNORED_FOR_COMPARISON and previous.get(k) != resolved.get(k)}
    if differs:
        return (f"run_dir '{run_dir}' holds a run with another config (differs in {', '.join(sorted(differs))}); "
                "pick a new run_dir or pass overwrite=true")
    if (run_dir / "summary.json").exists() and cfg.resume != "auto" and not allow_existing:
        return (f"run_dir '{run_dir}' already holds a finished run; pick a new run_dir, "
                "or pass overwrite=true to replace it")
    return None


class RunLog:
    """metrics.jsonl (one JSON object per logged step) and summary.json; rank 0 writes."""

    def __init__(self, run_dir: Path, runtime: Runtime):
        self.path, self.run_dir, self.main = run_dir / "metrics.jsonl", run_dir, runtime.main

    def log(self, record: dict) -> None:
        if self.main:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def summary(self, summary: dict) -> dict:
        if self.main:
            write_json_atomic(self.run_dir / "summary.json", summary)
        return summary


def write_json_atomic(path: Path, payload) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)

