"""Progress in a log file: plain lines at the right moments, with step, loss, tokens/s, elapsed, ETA."""
from __future__ import annotations

import io
import re

from distillm_cli import ui


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_training_progress_prints_every_n_steps_and_at_the_end(monkeypatch):
    clock, out = Clock(), io.StringIO()
    monkeypatch.setattr(ui.time, "perf_counter", clock)
    bar = ui.PlainBar("distill skew_rkl", total=5, every_steps=2, stream=out)
    for step in range(5):
        clock.now += 2.0
        bar.advance(1, tokens=100, loss=f"{1.0 / (step + 1):.4f}", lr="5.00e-04")
    lines = out.getvalue().splitlines()
    assert [re.search(r"step (\d+)/5", line).group(1) for line in lines] == ["2", "4", "5"]
    # At step 2: 4 s elapsed for 2 of 5 steps, so 6 s to go; 200 tokens in 4 s.
    assert lines[0] == "distill skew_rkl  step 2/5  loss 0.5000  lr 5.00e-04  50 tok/s  elapsed 0:00:04  eta 0:00:06"
    assert lines[-1].endswith("eta 0:00:00")


def test_a_resumed_run_estimates_from_its_own_steps(monkeypatch):
    clock, out = Clock(), io.StringIO()
    monkeypatch.setattr(ui.time, "perf_counter", clock)
    bar = ui.PlainBar("sft student", total=100, start=90, every_steps=5, stream=out)
    for _ in range(5):
        clock.now += 1.0
        bar.advance(1)
    assert out.getvalue().strip().endswith("step 95/100  0 tok/s  elapsed 0:00:05  eta 0:00:05")


def test_generation_progress_prints_every_few_seconds(monkeypatch):
    clock, out = Clock(), io.StringIO()
    monkeypatch.setattr(ui.time, "perf_counter", clock)
    bar = ui.PlainBar("generate (teacher)", total=640, stream=out)
    for _ in range(10):  # 64 prompts per batch, 4 s each: a line at 12 s, 24 s, 36 s and at the end
        clock.now += 4.0
        bar.advance(64, tokens=640)
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["192/640", "384/640", "576/640", "640/640"]
    assert "160 tok/s" in lines[0] and "elapsed 0:00:12" in lines[0] and "eta 0:00:28" in lines[0]
