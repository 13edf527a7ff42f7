"""Several processes (gloo on CPU) through the real `deepspeed` launcher.

Same global batch => same per-step losses as one process, at ZeRO 1, 2 and 3; ranks always
agree on the off-policy batch source; two "nodes" on this machine via --no_ssh.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, run_cli

DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
COMMON = ["train.max_steps=4", "off_policy=none", "train.eval_interval=0", "loss=skew_rkl"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def launch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank", "--module",
               "distillm_cli.cli", *args]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[float]:
    run_dir = tmp_path_factory.mktemp("one") / "run"
    result = run_cli("distill", *COMMON, "train.micro_batch_size=8", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return losses(run_dir)


def test_two_processes_match_one_process_at_every_zero_stage(tmp_path, reference):
    """The two processes fuse the output heads into the loss (ZeRO-3: the heads gathered, the student head's
    gradient through its layer); the one-process reference reads logit rows: the same losses."""
    sweep = tmp_path / "two"
    result = launch("distill", "-m", "deepspeed=zero1,zero2,zero3", *COMMON, "train.micro_batch_size=4",
                    "loss.fused_head=true", f"run_dir={sweep}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for job in ("0", "1", "2"):
        assert losses(sweep / job) == pytest.approx(reference, rel=1e-5, abs=1e-7), job


def test_adaptive_off_policy_keeps_ranks_in_step(tmp_path):
    run_dir = tmp_path / "adaptive"
    result = launch("distill", "off_policy=adaptive", "off_policy.phi0=1.0", "off_policy.capacity=8",
                    "train.max_steps=8", "train.micro_batch_size=4", "generation.max_new_tokens=8",
                    "train.eval_interval=4", f"run_dir={run_dir}", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 8
    for record in records:
        assert record["data_source_ranks"] == [record["data_source"]] * 2
    assert {"fresh", "buffer"} <= {r["data_source"] for r in records}


def test_two_nodes_without_ssh_match_one_process(tmp_path, reference):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    run_dir, port = tmp_path / "nodes", str(free_port())
    script = str(ROOT / "scripts" / "launch_multinode.sh")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "DEEPSPEED": DEEPSPEED}
    args = ["--", "distill", *COMMON, "train.micro_batch_size=4", f"run_dir={run_dir}"]
    nodes = [subprocess.Popen([script, str(hostfile), str(rank), "127.0.0.1", port, *args], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-3000:] + outputs[1][-3000:]
    assert losses(run_dir) == pytest.approx(reference, rel=1e-5, abs=1e-7)
