"""pipeline: every stage in order, each in its own folder of this run dir.

  sft-teacher      -> <run_dir>/sft_teacher     the teacher
  sft-student      -> <run_dir>/sft_student     the student's start, the SFT-only baseline
  generate-student -> <run_dir>/generate        the teacher answers the unlabelled prompts
                                                (loss=distillm2: teacher and student response pairs,
                                                and <run_dir>/generate_valid: pairs for the
                                                validation prompts, distill's validation loss)
  distill          -> <run_dir>/distill         SFT student + teacher answers + off-policy samples
  evaluate         -> <run_dir>/evaluate        teacher vs SFT-only vs distilled

Each stage is composed from the same command-line overrides as the pipeline itself
(so `train.max_steps=3` shrinks every stage) plus the paths that chain them. As DistiLLM
does, sft-student keeps its lowest-validation-loss checkpoint and distill its best
validation ROUGE-L (train.select), unless the command line sets train.select or
train.eval_interval=0 turns validation off. With resume=auto a stage that already
finished with the same config is skipped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from hydra import compose
from hydra.core.hydra_config import HydraConfig

from ..run_dir import write_json_atomic
from ..train.preemption import Preempted, preempted_earlier
from ..ui import is_main_process, print_table


def _user_overrides() -> list[str]:
    keep = []
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key not in ("stage", "run_dir"):
            keep.append(override)
    return keep


# DistiLLM's checkpoint choice per pipeline folder (train.select).
PIPELINE_SELECT = {"sft_student": "val_loss", "distill": "rouge_l"}


def select_overrides(cfg, folder: str, user: list[str]) -> list[str]:
    """train.select of one stage: DistiLLM's choice, unless the user chose or validation is off."""
    chosen = any(override.split("=", 1)[0].lstrip("+~") == "train.select" for override in user)
    if folder not in PIPELINE_SELECT or chosen or not cfg.train.eval_interval:
        return []
    return [f"train.select={PIPELINE_SELECT[folder]}"]


def generate_overrides(cfg, ckpt: dict) -> list[str]:
    """DistiLLM-2 curates teacher/student pairs; otherwise the teacher answers the unlabelled prompts."""
    if cfg.loss.name == "distillm2":
        return ["generate.pairs=true", f"teacher_dir={ckpt['sft_teacher']}", f"student_dir={ckpt['sft_student']}"]
    return ["generate=teacher", "generation=greedy", f"teacher_dir={ckpt['sft_teacher']}"]


def run(cfg) -> dict:
    from . import STAGES

    root = Path(cfg.run_dir)
    ckpt = {name: str(root / name / "checkpoint") for name in ("sft_teacher", "sft_student", "distill")}
    distill_inputs = [f"teacher_dir={ckpt['sft_teacher']}", f"student_dir={ckpt['sft_student']}",
                      f"generations={root / 'generate' / 'generations.jsonl'}"]
    curate_valid = []
    if cfg.loss.name == "distillm2":  # held-out pairs for the validation prompts: distill's validation loss
        valid_prompts = cfg.train.micro_batch_size * cfg.train.valid_batches
        curate_valid = [("generate_valid", "generate-student", [*generate_overrides(cfg, ckpt),
                         f"generate.split={cfg.data.valid_split}", f"generate.max_prompts={valid_prompts}"])]
        distill_inputs.append(f"valid_generations={root / 'generate_valid' / 'generations.jsonl'}")
    plan = [
        ("sft_teacher", "sft-teacher", []),
        ("sft_student", "sft-student", []),
        ("generate", "generate-student", generate_overrides(cfg, ckpt)),
        *curate_valid,
        ("distill", "distill", distill_inputs),
        ("evaluate", "evaluate", [f"+eval.models.teacher={ckpt['sft_teacher']}",
                                  f"+eval.models.sft_student={ckpt['sft_student']}",
                                  f"+eval.models.distilled={ckpt['distill']}", f"eval.teacher={ckpt['sft_teacher']}"]),
    ]
    user = _user_overrides()
    seconds, summaries = {}, {}
    for folder, stage, extra in plan:
        sub_dir = root / folder
        sub_cfg = compose(config_name="config",
                          overrides=[*user, f"stage={stage.replace('-', '_')}", f"run_dir={sub_dir}", *extra,
                                     *select_overrides(cfg, folder, user)])
        if cfg.resume == "auto" and (sub_dir / "summary.json").exists():
            summaries[folder] = json.loads((sub_dir / "summary.json").read_text())
            seconds[folder] = None  # finished by an earlier run: no time spent now
            continue
        if preempted_earlier():  # SIGTERM during the last step of the stage before: stop before this one
            raise Preempted(f"stopped by SIGTERM before {stage}; run the same command with resume=auto to continue")
        started = time.perf_counter()
        summaries[folder] = STAGES[stage](sub_cfg)
        seconds[folder] = time.perf_counter() - started

    def took(*folders: str) -> str:
        spent = [seconds[folder] for folder in folders if seconds.get(folder) is not None]
        return f"{sum(spent):.0f}s" if spent else "earlier run"

    scores = summaries["evaluate"]["models"]
    stage_of = {"teacher": "sft_teacher", "sft_student": "sft_student", "distilled": "distill"}
    rows = []
    for name in ("teacher", "sft_student", "distilled"):
        s = scores[name]
        rows.append([name, f"{s['rouge_l']['mean']:.2f}", f"{s['exact_match']['mean']:.1f}",
                     took(stage_of[name])])
    rows.append(["(generate + evaluate)", "", "", took("generate", "generate_valid", "evaluate")])
    print_table("distillm pipeline", ["model", "ROUGE-L", "exact match %", "stage time"], rows)
    summary = {"stage": "pipeline", "stage_seconds": seconds, "scores": {
        name: {"rouge_l": scores[name]["rouge_l"]["mean"], "exact_match": scores[name]["exact_match"]["mean"]}
        for name in ("teacher", "sft_student", "distilled")},
        "distilled_minus_sft_rouge_l":
            scores["distilled"]["rouge_l"]["mean"] - scores["sft_student"]["rouge_l"]["mean"]}
    if is_main_process():
        write_json_atomic(root / "summary.json", summary)
    return summary
