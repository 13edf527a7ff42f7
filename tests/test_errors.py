"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing of the user's touched."""
from __future__ import annotations

import json

import pytest
import torch

from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model

from .conftest import run_cli

DISTILL = ["distill", "train.max_steps=2", "train.micro_batch_size=4", "off_policy=none"]


def assert_one_line_error(result, expected: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("distillm: error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def save_model(path, tokenizer, nan: bool = False):
    torch.manual_seed(0)
    model = build_tiny_model("tiny-student", tokenizer)
    if nan:
        with torch.no_grad():
            model.lm_head.weight[0, 0] = float("nan")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("case, make_args, expected", [
    ("missing data file", lambda d: ["data=jsonl", f"data.path={d / 'none.jsonl'}"], "does not exist"),
    ("malformed jsonl line", lambda d: [
        "data=jsonl", "data.valid_size=1", "data.max_length=256", "data.max_prompt_length=128",
        f"data.path={jsonl(d / 'bad.jsonl', [{'instruction': 'a', 'output': 'b'}, '{oops'])}"],
     "bad.jsonl:2: not valid JSON"),
    ("empty dataset", lambda d: ["data=jsonl", f"data.path={jsonl(d / 'empty.jsonl', [])}"], "holds no records"),
    ("records without a response", lambda d: [
        "data=jsonl", "data.valid_size=1", "data.max_length=256", "data.max_prompt_length=128",
        f"data.path={jsonl(d / 'noresp.jsonl', [{'instruction': 'a'}, {'instruction': 'b', 'output': 'c'}])}"],
     "have no response"),
    ("model path that does not exist", lambda d: [f"teacher_dir={d / 'nothing'}"], "does not exist"),
    ("model path without a model", lambda d: [f"student_dir={d}"], "holds no Hugging Face model"),
    ("toy answers of length zero", lambda d: ["data.toy_length=0"], "data.toy_length=0 must be 1 or more"),
    ("unwritable run_dir", lambda d: [f"run_dir={jsonl(d / 'file', [])}/run"], "not a writable directory"),
])
def test_bad_input_cases(tmp_path, case, make_args, expected):
    result = run_cli(*DISTILL, f"run_dir={tmp_path / 'run'}", *make_args(tmp_path))
    assert_one_line_error(result, expected)


def test_teacher_and_student_with_different_tokenizers(tmp_path):
    char = build_char_tokenizer()
    other = build_char_tokenizer()
    other.add_tokens(["<extra>"])
    teacher, student = save_model(tmp_path / "t", char), save_model(tmp_path / "s", other)
    result = run_cli(*DISTILL, f"teacher_dir={teacher}", f"student_dir={student}", f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(result, "use different tokenizers")
    assert str(teacher) in result.stderr and str(student) in result.stderr


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    student = save_model(tmp_path / "nan", build_char_tokenizer(), nan=True)
    result = run_cli(*DISTILL, f"student_dir={student}", f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(result, "non-finite at step 1")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_non_finite_loss_can_skip_the_step(tmp_path):
    student = save_model(tmp_path / "nan", build_char_tokenizer(), nan=True)
    result = run_cli(*DISTILL, "train.on_nonfinite=skip", f"student_dir={student}", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["skipped"] for r in records)


def test_user_files_are_not_touched_by_a_failed_run(tmp_path):
    data = jsonl(tmp_path / "bad.jsonl", ['{"instruction": "a", "output": "b"}', "{oops"])
    before = data.read_bytes()
    run_cli(*DISTILL, "data=jsonl", "data.valid_size=1", f"data.path={data}", f"run_dir={tmp_path / 'run'}")
    assert data.read_bytes() == before
