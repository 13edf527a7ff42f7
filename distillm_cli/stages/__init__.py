"""The stages, by CLI name. Each module has `run(cfg) -> dict` and imports no other stage."""
from __future__ import annotations

import importlib


def _lazy(module: str):
    def run(cfg):
        return importlib.import_module(f"distillm_cli.stages.{module}").run(cfg)

    return run


STAGES = {
    "sft-teacher": _lazy("sft_teacher"),
    "sft-student": _lazy("sft_teacher"),
    "generate-student": _lazy("generate_student"),
    "distill": _lazy("distill"),
    "evaluate": _lazy("evaluate"),
    "pipeline": _lazy("pipeline"),
}
