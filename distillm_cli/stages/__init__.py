"""The stages, by CLI name. Each module has `run(cfg) -> dict` and imports no other stage.

    sft-teacher, sft-student   sft.py
    generate-student           generate_student.py
    cache-teacher              cache_teacher.py (the teacher's top-k rows on disk: distill teacher_cache=DIR)
    distill                    distill.py (DistiLLM), or distill_contrastive.py with loss=distillm2 (DistiLLM-2)
    evaluate                   evaluate.py
    pipeline                   pipeline.py (every stage in order, through this table)
    check                      check.py (the preflight every other stage runs first, shown as a table)
"""
from __future__ import annotations

import importlib

# The distill stage runs one recipe per algorithm; the loss names the algorithm.
DISTILL_RECIPES = {"distillm2": "distill_contrastive"}


def _lazy(module: str, preflight: bool = True):
    def run(cfg):
        if preflight:  # the checks of `distillm check`, before any work (checks.py)
            from ..checks import enforce

            enforce(cfg)
        result = importlib.import_module(f"distillm_cli.stages.{module}").run(cfg)
        _all_ranks_done()
        return result

    return run


def _all_ranks_done() -> None:
    """Under a launcher, a stage ends when it has ended on every rank: the next stage may then
    read what this one wrote (generations.jsonl, the checkpoint, summary.json)."""
    import torch

    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def _distill(cfg):
    return _lazy(DISTILL_RECIPES.get(cfg.loss.name, "distill"))(cfg)


STAGES = {
    "sft-teacher": _lazy("sft"),
    "sft-student": _lazy("sft"),
    "generate-student": _lazy("generate_student"),
    "cache-teacher": _lazy("cache_teacher"),
    "distill": _distill,
    "evaluate": _lazy("evaluate"),
    "pipeline": _lazy("pipeline", preflight=False),  # each of its stages runs its own checks
    "check": _lazy("check", preflight=False),
}
