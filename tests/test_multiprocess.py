"""Two processes through the real `deepspeed` launcher (gloo on CPU), against one process.

- generate-student and evaluate share their batches out over the ranks: sampled outputs
  are the same files from 1 and 2 processes;
- the pipeline under the launcher ends with the same files as one process;
- a 2-process adaptive distill killed with SIGKILL after a resume point and restarted
  with resume=auto equals an uninterrupted run (losses and weights), at ZeRO 0 and 3:
  every rank resumes its own replay buffer, RNG and data position;
- SIGTERM (preemption) makes every rank stop at a resume point and exit cleanly;
- train.select=rouge_l under ZeRO-3 keeps the step and weights one process keeps.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from .conftest import ROOT, run_cli
from .test_distributed import DEEPSPEED, free_port, launch

pytestmark = pytest.mark.slow

# Sampled, an odd number of batches (the last round leaves rank 1 without one), two eval seeds.
SAMPLING = ["generation=sample", "generation.max_new_tokens=12", "generation.batch_size=4",
            "eval.sampling.do_sample=true", "eval.sampling.max_new_tokens=12", "eval.batch_size=4",
            "eval.max_examples=10", "eval.seeds=[0,1]"]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_paths(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("model", "teacher", "student")}


def test_generate_and_evaluate_write_the_same_files_with_two_processes(tmp_path):
    outputs = {}
    for procs in (1, 2):
        gen, ev = tmp_path / f"gen{procs}", tmp_path / f"eval{procs}"
        run = run_cli if procs == 1 else launch
        result = run("generate-student", *SAMPLING, "generate.max_prompts=10", f"run_dir={gen}")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        result = run("evaluate", *SAMPLING, f"run_dir={ev}")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        outputs[procs] = ((gen / "generations.jsonl").read_text(), (ev / "predictions.jsonl").read_text(),
                          json.loads((ev / "summary.json").read_text())["models"]["student"]["rouge_l"])
    assert len(outputs[1][0].splitlines()) == 10 and len(outputs[1][1].splitlines()) == 20
    assert len({line["response"] for line in lines(tmp_path / "gen1" / "generations.jsonl")}) > 1  # really sampled
    assert outputs[2] == outputs[1]


PIPELINE = ["train.max_steps=2", "generate.max_prompts=8", "generation.batch_size=4", "eval.max_examples=8",
            "eval.batch_size=4", "off_policy=none", "train.eval_interval=0"]


def test_pipeline_under_the_launcher_ends_with_the_files_of_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    result = run_cli("pipeline", *PIPELINE, "train.micro_batch_size=8", f"run_dir={one}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = launch("pipeline", *PIPELINE, "train.micro_batch_size=4", f"run_dir={two}", timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".hydra" not in p.parts)

    assert files(two) == files(one)
    gen1, gen2 = lines(one / "generate" / "generations.jsonl"), lines(two / "generate" / "generations.jsonl")
    assert [g["prompt"] for g in gen2] == [g["prompt"] for g in gen1]
    assert [without_paths(g) for g in gen2] == [without_paths(g) for g in gen1]  # greedy teacher answers
    pred1, pred2 = lines(one / "evaluate" / "predictions.jsonl"), lines(two / "evaluate" / "predictions.jsonl")
    assert pred2 == pred1  # the same models (to float rounding) answer greedily: the same predictions
    scores1, scores2 = (json.loads((d / "summary.json").read_text())["scores"] for d in (one, two))
    assert scores2 == scores1
    for stage in ("sft_teacher", "sft_student", "distill"):  # the same global batch: the same losses
        loss1 = [r["loss"] for r in lines(one / stage / "metrics.jsonl")]
        assert [r["loss"] for r in lines(two / stage / "metrics.jsonl")] == pytest.approx(loss1, rel=1e-5), stage


# Adaptive off-policy with phi0=1: steps 1-4 train on fresh, fresh, fresh, buffer samples,
# the resume point is step 4, and steps 5-8 on buffer, fresh, buffer, buffer.
RESUMABLE = ["distill", "off_policy=adaptive", "off_policy.phi0=1.0", "off_policy.capacity=8", "train.max_steps=8",
             "train.save_interval=4", "train.micro_batch_size=4", "generation.max_new_tokens=8",
             "train.eval_interval=4", "loss=skew_rkl"]


def launcher_command(*args: str) -> list[str]:
    return [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), "--no_local_rank", "--module",
            "distillm_cli.cli", *args]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(launcher_command(*args), cwd=ROOT, env={**os.environ, "DS_ACCELERATOR": "cpu"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name}: {process.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"no {path.name} after {timeout}s"
        time.sleep(0.02)


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "checkpoint" / "model.safetensors"))


def assert_same_run(straight: Path, resumed: Path, from_step: int) -> None:
    a, b = lines(straight / "metrics.jsonl"), lines(resumed / "metrics.jsonl")
    assert [r["step"] for r in b] == [r["step"] for r in a]
    assert [r["data_source"] for r in b] == [r["data_source"] for r in a]
    after = [r["loss"] for r in a if r["step"] > from_step], [r["loss"] for r in b if r["step"] > from_step]
    assert after[1] == pytest.approx(after[0], rel=0, abs=1e-6)
    wa, wb = weights(straight), weights(resumed)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert (wa[name] - wb[name]).abs().max() <= 1e-6, name


@pytest.mark.parametrize("zero", ["zero0", "zero3"])
def test_two_processes_killed_and_resumed_equal_an_uninterrupted_run(tmp_path, zero):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = launch(*RESUMABLE, f"deepspeed={zero}", f"run_dir={straight}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sources = [r["data_source"] for r in lines(straight / "metrics.jsonl")]
    assert {"fresh", "buffer"} <= set(sources[:4]) and {"fresh", "buffer"} <= set(sources[4:])

    process = start(*RESUMABLE, f"deepspeed={zero}", f"run_dir={killed}")
    wait_for(killed / "resume" / "step-4", process)
    os.killpg(process.pid, signal.SIGKILL)  # the whole job at once, as a node failure would
    process.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    assert sorted(p.name for p in (killed / "resume" / "step-4").glob("rank-*.pt")) == ["rank-0.pt", "rank-1.pt"]

    result = launch(*RESUMABLE, f"deepspeed={zero}", f"run_dir={killed}", "resume=auto")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_run(straight, killed, from_step=4)


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    args = ["sft-student", "train.max_steps=4", "train.save_interval=2", "train.micro_batch_size=4"]
    process = start(*args, f"run_dir={run_dir}")
    wait_for(run_dir / "resume" / "step-2", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    result = run_cli(*args, f"run_dir={run_dir}", "resume=auto")
    assert result.returncode == 2
    assert "written by 2 process(es) and this run has 1" in result.stderr


def test_sigterm_stops_every_rank_at_a_resume_point(tmp_path):
    """As the launcher passes on a scheduler's SIGTERM: to each worker; then resume=auto finishes the run."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    result = launch(*RESUMABLE, "train.save_interval=0", f"run_dir={straight}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    process = start(*RESUMABLE, "train.save_interval=0", f"run_dir={stopped}")
    deadline = time.time() + 600
    while not (stopped / "metrics.jsonl").exists() or len(lines(stopped / "metrics.jsonl")) < 2:
        assert process.poll() is None and time.time() < deadline, process.stdout.read()[-3000:]
        time.sleep(0.05)
    launcher = next(p for p in psutil.Process(process.pid).children(recursive=True)
                    if "deepspeed.launcher.launch" in " ".join(p.cmdline()))
    launcher.send_signal(signal.SIGTERM)  # it terminates its workers with SIGTERM and waits 30 s for them
    output = process.communicate(timeout=120)[0]
    points = sorted((stopped / "resume").glob("step-*"))
    assert len(points) == 1, output[-3000:]
    step = int(points[0].name.split("-")[1])
    assert 2 <= step < 8 and sorted(p.name for p in points[0].glob("rank-*.pt")) == ["rank-0.pt", "rank-1.pt"]
    assert "preempted: stopped by SIGTERM after step" in output and "resume=auto" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not (stopped / "summary.json").exists()

    result = launch(*RESUMABLE, "train.save_interval=0", f"run_dir={stopped}", "resume=auto")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_run(straight, stopped, from_step=step)



def test_ranks_that_resolve_run_dir_differently_share_rank_0s(tmp_path):
    """As `${now:...}` does for ranks started a second apart: each rank's run_dir is its own."""
    base = tmp_path / "runs"
    result = launch("sft-student", "train.max_steps=2", "train.micro_batch_size=4", "train.eval_interval=0",
                    f"run_dir={base}/rank${{oc.env:RANK}}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in base.iterdir()) == ["rank0"]
    assert (base / "rank0" / "checkpoint" / "model.safetensors").exists()
    assert len(lines(base / "rank0" / "metrics.jsonl")) == 2


def test_distillm2_regenerated_pairs_survive_a_kill(tmp_path):
    """loss.regenerate replaces the student responses at step 4; the kill comes after step 6."""
    pairs = tmp_path / "pairs"
    result = run_cli("generate-student", "generate.pairs=true", "generate.max_prompts=16",
                     "generation.max_new_tokens=8", f"run_dir={pairs}")
    assert result.returncode == 0, result.stderr[-3000:]
    # 16 pairs, 2 per rank per step on 2 ranks: an epoch is 4 steps.
    args = ["distill", "experiment=distillm2", "loss.regenerate=student", f"generations={pairs / 'generations.jsonl'}",
            "train.max_steps=8", "train.save_interval=6", "train.micro_batch_size=2", "generation.max_new_tokens=8",
            "train.eval_interval=0"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    result = launch(*args, f"run_dir={straight}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    process = start(*args, f"run_dir={killed}")
    wait_for(killed / "resume" / "step-6", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    result = launch(*args, f"run_dir={killed}", "resume=auto")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_same_run(straight, killed, from_step=6)


def test_rouge_l_selection_under_zero3_keeps_the_step_of_one_process(tmp_path):
    """train.select=rouge_l with the student sharded over 2 ranks: both ranks generate (10 prompts in
    batches of 4: rank 1 has no batch in the last round), agree on the best step and join its save."""
    data = tmp_path / "yes.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"answer {i}", "output": "yes"}) + "\n" for i in range(96)))
    args = ["sft-student", "deepspeed=zero3", "data=jsonl", f"data.path={data}", "data.valid_size=16",
            "data.max_length=64", "data.max_prompt_length=32", "train.max_steps=12", "train.eval_interval=4",
            "train.lr=5e-3", "train.select=rouge_l", "train.select_examples=10", "eval.batch_size=4",
            "eval.sampling.max_new_tokens=8"]
    one, two = tmp_path / "one", tmp_path / "two"
    result = run_cli(*args, "train.micro_batch_size=8", f"run_dir={one}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = launch(*args, "train.micro_batch_size=4", f"run_dir={two}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    picked = [json.loads((d / "summary.json").read_text())["selected"] for d in (one, two)]
    assert picked[0]["by"] == "rouge_l" and picked[0]["value"] > 0 and picked[0]["step"] < 12  # not the last
    assert picked[1] == {**picked[0], "value": pytest.approx(picked[0]["value"])}
    assert [r.get("val_rouge_l") for r in lines(two / "metrics.jsonl")] == pytest.approx(
        [r.get("val_rouge_l") for r in lines(one / "metrics.jsonl")])
    wa, wb = weights(one), weights(two)
    assert wa.keys() == wb.keys()
    for name in wa:  # the ranks' float rounding, grown by 8 Adam steps at lr 5e-3: ~1e-4
        assert (wa[name] - wb[name]).abs().max() <= 1e-3, name
