"""train.select: checkpoint/ keeps the weights of the best validation step, also across a resume.

The weights a run had at step N are read from its own resume point resume/step-N (DeepSpeed's
model state, written by the engine at that step), so the kept checkpoint is compared with
the weights the same run really had at the selected step, not with another run.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .conftest import run_cli

# lr 0.02 on the toy data: the validation loss is lowest at step 8 of 12, not at the last step.
ROUGH = ["sft-student", "train.max_steps=12", "train.eval_interval=2", "train.micro_batch_size=8", "train.lr=0.02",
         "train.save_interval=2", "train.keep_checkpoints=10"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def selected(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["selected"]


def weights_at(run_dir: Path, step: int) -> dict:
    """The student's weights at `step`, from the run's resume point of that step (ZeRO 0: not sharded)."""
    state = torch.load(run_dir / "resume" / f"step-{step}" / "state" / "mp_rank_00_model_states.pt",
                       weights_only=False)
    return state["module"]


def assert_checkpoint_is(run_dir: Path, expected: dict) -> None:
    saved = load_file(str(run_dir / "checkpoint" / "model.safetensors"))
    assert saved and set(saved) <= set(expected)
    for name, tensor in saved.items():
        assert torch.equal(tensor, expected[name].to(tensor.dtype)), name


@pytest.fixture(scope="module")
def by_val_loss(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("val_loss") / "run"
    result = run_cli(*ROUGH, "train.select=val_loss", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_val_loss_keeps_the_step_with_the_lowest_validation_loss(by_val_loss):
    validations = [(r["step"], r["val_loss"]) for r in metrics(by_val_loss) if "val_loss" in r]
    best_step, best_value = min(validations, key=lambda sv: sv[1])
    assert best_step < 12, f"the test needs a run whose best validation is not the last: {validations}"
    assert selected(by_val_loss) == {"by": "val_loss", "step": best_step, "value": best_value}
    assert json.loads((by_val_loss / "checkpoint" / "selection.json").read_text())["step"] == best_step
    assert_checkpoint_is(by_val_loss, weights_at(by_val_loss, best_step))
    later = weights_at(by_val_loss, 10)
    saved = load_file(str(by_val_loss / "checkpoint" / "model.safetensors"))
    assert any(not torch.equal(saved[k], later[k]) for k in saved)  # the comparison can tell steps apart


def test_a_resumed_run_still_ends_with_the_best_step_of_the_whole_run(by_val_loss, tmp_path):
    """Killed after step 10, whose resume point says the best is step 8: steps 11-12 are no better,
    so only the resume state can make checkpoint/ hold step 8."""
    best_step = selected(by_val_loss)["step"]
    assert best_step <= 10
    cut = tmp_path / "cut"
    shutil.copytree(by_val_loss, cut)
    # The folder as a kill after step 11 leaves it: no summary, the best still in best/, and
    # a best/step-12 of the lost steps (as if they had gone otherwise), which resume drops.
    (cut / "summary.json").unlink()
    os.replace(cut / "checkpoint", cut / "best" / f"step-{best_step}")
    shutil.copytree(cut / "best" / f"step-{best_step}", cut / "best" / "step-12")
    result = run_cli(*ROUGH, "train.select=val_loss", f"run_dir={cut}", "resume=auto")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {cut / 'resume' / 'step-10'}" in result.stdout + result.stderr
    assert selected(cut) == selected(by_val_loss)
    assert_checkpoint_is(cut, weights_at(by_val_loss, best_step))
    assert not (cut / "best" / "step-12").exists()


def test_rouge_l_keeps_the_first_step_with_the_best_answers(tmp_path):
    """Greedy answers reach ROUGE-L 100 at step 8 while the validation loss keeps falling to step 24."""
    data = tmp_path / "yes.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"answer {i}", "output": "yes"}) + "\n" for i in range(96)))
    run_dir = tmp_path / "rouge"
    result = run_cli("sft-student", "data=jsonl", f"data.path={data}", "data.valid_size=16", "data.max_length=64",
                     "data.max_prompt_length=32", "train.max_steps=24", "train.eval_interval=4", "train.lr=5e-3",
                     "train.micro_batch_size=8", "train.save_interval=4", "train.keep_checkpoints=10",
                     "train.select=rouge_l", "train.select_examples=8", "eval.sampling.max_new_tokens=8",
                     f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    validations = [r for r in metrics(run_dir) if "val_loss" in r]
    assert [r["step"] for r in validations] == [4, 8, 12, 16, 20, 24]
    scores = [r["val_rouge_l"] for r in validations]
    best = max(scores)
    first = validations[scores.index(best)]["step"]
    assert selected(run_dir) == {"by": "rouge_l", "step": first, "value": best}
    assert 0 < best and first < 24  # the lowest validation loss would have been a later step
    assert min(validations, key=lambda r: r["val_loss"])["step"] > first
    assert_checkpoint_is(run_dir, weights_at(run_dir, first))


def test_last_is_the_default_and_a_bad_choice_is_one_line(tmp_path, compose_cfg):
    from distillm_cli.errors import UserError

    assert compose_cfg("distill").train.select == "last"
    with pytest.raises(UserError, match="train.eval_interval=0 has none"):
        compose_cfg("sft-student", "train.select=val_loss", "train.eval_interval=0")
    result = run_cli("sft-student", "train.select=best", f"run_dir={tmp_path / 'bad'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.select='best'; choose last, val_loss" in lines[0] and "rouge_l" in lines[0]


def test_the_pipeline_selects_the_sft_student_and_distill_unless_told_otherwise(compose_cfg):
    from distillm_cli.stages.pipeline import select_overrides

    cfg = compose_cfg("pipeline")
    assert select_overrides(cfg, "sft_teacher", []) == []
    assert select_overrides(cfg, "sft_student", []) == ["train.select=val_loss"]
    assert select_overrides(cfg, "distill", ["train.max_steps=3"]) == ["train.select=rouge_l"]
    assert select_overrides(cfg, "distill", ["train.select=last"]) == []  # the user's choice wins
    off = compose_cfg("pipeline", "train.eval_interval=0")
    assert select_overrides(off, "distill", ["train.eval_interval=0"]) == []  # no validation: the last weights
