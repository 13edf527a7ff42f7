"""Never lose work: kill -9 mid-run, resume=auto, and end with identical weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from .conftest import ROOT

ARGS = ["distill", "train.max_steps=12", "train.save_interval=4", "train.micro_batch_size=8",
        "off_policy.phi0=0.5", "off_policy.capacity=16", "generation.max_new_tokens=8", "train.eval_interval=4"]


def cli(*args):
    return [sys.executable, "-m", "distillm_cli.cli", *args]


def weights(run_dir):
    return load_file(str(run_dir / "checkpoint" / "model.safetensors"))


def records(path):
    """The metrics log without its wall-clock fields (seconds spent sampling differ from run to run)."""
    return [{k: v for k, v in json.loads(line).items() if k != "sample_s"} for line in path.read_text().splitlines()]


def test_kill_and_resume_gives_identical_weights(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    straight = tmp_path / "straight"
    subprocess.run(cli(*ARGS, f"run_dir={straight}"), cwd=ROOT, env=env, check=True, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(cli(*ARGS, f"run_dir={killed}"), cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "resume" / "step-4").exists():
        assert process.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(cli(*ARGS, f"run_dir={killed}", "resume=auto"), cwd=ROOT, env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), f"{name} differs after resume"
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert records(straight / "metrics.jsonl") == records(killed / "metrics.jsonl")


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
    """A half-written .tmp folder (a kill during saving) is ignored by resume."""
    run_dir = tmp_path / "run"
    args = ["sft-student", "train.max_steps=4", "train.save_interval=2", "train.micro_batch_size=4"]
    first = subprocess.Popen(cli(*args, f"run_dir={run_dir}"), cwd=ROOT, env={**os.environ, "DS_ACCELERATOR": "cpu"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "resume" / "step-2").exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    (run_dir / "resume" / ".tmp-step-4").mkdir(exist_ok=True)  # what a kill during the next save leaves
    (run_dir / "resume" / ".tmp-step-4" / "partial").write_text("half")
    resumed = subprocess.run(cli(*args, f"run_dir={run_dir}", "resume=auto"), cwd=ROOT,
                             env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "checkpoint" / "model.safetensors").exists()


def test_sigterm_in_one_process_exits_143_with_a_resume_line(tmp_path):
    run_dir = tmp_path / "run"
    args = ["distill", "off_policy=none", "train.max_steps=40", "train.micro_batch_size=4", "train.eval_interval=0"]
    process = subprocess.Popen([sys.executable, "-m", "distillm_cli.cli", *args, f"run_dir={run_dir}"], cwd=ROOT,
                               env={**os.environ, "DS_ACCELERATOR": "cpu"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(metric_lines(run_dir)) < 2:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-3000:]
    step = len(metric_lines(run_dir))
    assert (run_dir / "resume" / f"step-{step}" / "rank-0.pt").exists()
    assert f"stopped by SIGTERM after step {step} of 40" in stderr and "Traceback" not in stderr


def metric_lines(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []
