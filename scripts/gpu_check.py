"""`make gpu-check`: the CUDA path of distillm end to end, in one short run, with one results file.

Not part of CI. Whoever is lent a machine with one or more GPUs runs it once and records the
figures in the README ("GPU check"). Each step is the real CLI in its own process, with its
own timeout; the whole run stays within --budget seconds (default 600) and a failed step
never stops the next ones (a step that needs a failed one's output is skipped, saying why):

  environment       torch / CUDA / NCCL / cuDNN / DeepSpeed / transformers versions, GPU names and
                    count, bf16 support, DeepSpeed's accelerator (a child process: the CUDA
                    context is never made here). No CUDA visible to torch: every later step is
                    skipped, with the reason in the results.
  convert           model=smollm2: the GGUF teacher and the 6-layer student in the cache (made once)
  teacher_train     generate-student generate=teacher on train prompts: the teacher on the GPU
  teacher_test      the same on test prompts (evaluate's references)
  distill_zero0     distill, bf16 engine, ZeRO-0, skew RKL + adaptive off-policy with phi0=1 and a
                    one-batch replay buffer, so the student samples on the GPU inside the loop
                    (fresh steps) and the buffer is replayed (buffer steps)
  distill_zero3     the same under ZeRO-3: sharded student, frozen teacher engine, generation
                    through ZeRO-3's gathered parameters
  generate_student  generate-student from the distilled student
  evaluate          evaluate the student before training and both distilled students on the
                    teacher's test answers (ROUGE-L, exact match, KL to the teacher on the GPU)
  bench_*           scripts/bench.py --quick, one benchmark per step (vs_trl, step, loss,
                    contrastive, offpolicy): bench.py runs the model benchmarks in bf16 on CUDA and adds MFU

With more than one GPU the distill steps run under the `deepspeed` launcher (--num_gpus N
--no_local_rank --module distillm_cli.cli), so NCCL carries the all-reduces, ZeRO-3's
gathers and the off-policy source agreement; with one GPU they are a plain process (NCCL
then only sets up a one-rank group).

Each step records ok / failed / timeout / skipped, return code, wall seconds, the last
lines of stderr on failure, and its key figures: final loss and tokens/s (summary.json),
ROUGE-L (evaluate's summary.json), peak GPU memory (torch.cuda.max_memory_allocated in the
child, for plain processes) and the peak memory in use on each GPU (nvidia-smi, sampled
every second, for every step). Written to <out-dir>/results.json and <out-dir>/results.md
(a table, also printed); each step's stdout / stderr in <out-dir>/logs/; run directories
and checkpoints under --work-dir (default runs/gpu-check, git-ignored).

    make gpu-check                                      # = .venv/bin/python scripts/gpu_check.py
    .venv/bin/python scripts/gpu_check.py --num-gpus 2 --budget 600
    .venv/bin/python scripts/gpu_check.py --device cpu --quick    # smoke test of this script: tiny models, CPU
    .venv/bin/python scripts/gpu_check.py --dry-run               # print the commands only
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "smollm2-student-0.1.2.27.28.29"
BENCHMARKS = ("vs_trl", "step", "loss", "contrastive", "offpolicy")
MIN_STEP_SECONDS = 20  # a step is not started with less of the budget left than this

# Sizes of the run. "full": what `make gpu-check` runs on a GPU (well inside 10 minutes on an
# H200, most of it process start-up); "quick": the fewest that still exercise every path.
SIZES = {
    "full": {"train_prompts": 64, "test_prompts": 16, "steps": 20, "micro_batch": 8, "eval_interval": 10,
             "gen_tokens": 32, "eval_tokens": 48},
    "quick": {"train_prompts": 16, "test_prompts": 4, "steps": 4, "micro_batch": 4, "eval_interval": 2,
              "gen_tokens": 8, "eval_tokens": 8},
}
# Per-step time limits in seconds; the overall --budget caps them further.
TIMEOUTS = {"environment": 120, "convert": 300, "teacher_train": 150, "teacher_test": 120, "distill_zero0": 180,
            "distill_zero3": 240, "generate_student": 120, "evaluate": 180, "bench_vs_trl": 240,
            "bench_step": 150, "bench_loss": 180, "bench_contrastive": 120, "bench_offpolicy": 300}

PROBE = r"""
import json, os, torch
info = {"torch": torch.__version__, "torch_cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
if info["cuda_available"]:
    info["gpus"] = [torch.cuda.get_device_name(i) for i in range(info["gpu_count"])]
    info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    info["bf16_supported"] = torch.cuda.is_bf16_supported()
    try:
        import torch.cuda.nccl as nccl
        version = nccl.version()
        info["nccl"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    except Exception as error:  # noqa: BLE001 - a build without NCCL says so in the results
        info["nccl"] = f"unavailable ({type(error).__name__})"
    info["cudnn"] = torch.backends.cudnn.version()
    info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
import deepspeed, transformers
from deepspeed.accelerator import get_accelerator
info.update(deepspeed=deepspeed.__version__, transformers=transformers.__version__,
            ds_accelerator=get_accelerator().device_name(), DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR"))
print("GPU_CHECK_PROBE " + json.dumps(info))
"""


class Skip(Exception):
    """A step that cannot run (its input is missing, or the budget is spent); the message says why."""


@dataclass
class Step:
    name: str
    command: Callable[[], list[str]]  # raises Skip when an earlier step's output is missing
    figures: Callable[[Step], dict] | None = None  # read from the step's outputs after it ran
    run_dir: Path | None = None
    record: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- child mode
def child_main(argv: list[str]) -> None:
    """`gpu_check.py --child PEAK.json STAGE overrides...`: `python -m distillm_cli.cli STAGE ...`,
    then the child's peak memory (torch's CUDA allocator, resident set) written to PEAK.json."""
    peak_path, rest = Path(argv[0]), argv[1:]

    def write_peak() -> None:
        import resource

        peak = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
            peak["peak_gpu_allocated_mb"] = round(max(torch.cuda.max_memory_allocated(i)
                                                      for i in range(torch.cuda.device_count())) / 2**20, 1)
            peak["peak_gpu_reserved_mb"] = round(max(torch.cuda.max_memory_reserved(i)
                                                     for i in range(torch.cuda.device_count())) / 2**20, 1)
        peak_path.write_text(json.dumps(peak))

    atexit.register(write_peak)
    import runpy

    sys.argv = ["distillm_cli.cli", *rest]
    sys.path[0] = str(ROOT)  # as `python -m` from the repository root would have it
    runpy.run_module("distillm_cli.cli", run_name="__main__", alter_sys=True)


# --------------------------------------------------------------------------- helpers
def cache_root() -> Path:
    """distillm_cli.models.smollm2.cache_root, without importing the package here."""
    return Path(os.environ.get("DISTILLM_CACHE") or "~/.cache/distillm").expanduser()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def tail(path: Path, lines: int = 25) -> str:
    if not path.is_file():
        return ""
    text = path.read_text(errors="replace").rstrip().splitlines()
    return "\n".join(text[-lines:])


class GpuMemorySampler:
    """The largest memory.used nvidia-smi reports for each GPU while a step runs (whole device, MiB)."""

    def __init__(self, enabled: bool):
        self.binary = shutil.which("nvidia-smi") if enabled else None
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.binary:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run([self.binary, "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                for line in out.strip().splitlines():
                    index, used = (int(part.strip()) for part in line.split(","))
                    self.peak[index] = max(self.peak.get(index, 0), used)
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(1.0)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)


def nvidia_smi_summary() -> list[str]:
    binary = shutil.which("nvidia-smi")
    if not binary:
        return []
    try:
        out = subprocess.run([binary, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.strip().splitlines() if line.strip()]


def run_process(cmd: list[str], env: dict, timeout: float, log_dir: Path, name: str) -> tuple[int | None, float]:
    """Run one step in its own session (so a timeout ends the launcher and all its ranks);
    stdout / stderr go to log_dir/NAME.{out,err}. Returns (return code or None on timeout, seconds)."""
    started = time.perf_counter()
    with (log_dir / f"{name}.out").open("w") as out, (log_dir / f"{name}.err").open("w") as err:
        out.write("$ " + " ".join(cmd) + "\n\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            code = None
    return code, time.perf_counter() - started


# --------------------------------------------------------------------------- the plan
class Plan:
    """Every step of the check, its command line, and how its figures are read."""

    def __init__(self, args):
        self.args = args
        self.size = SIZES["quick" if args.quick else "full"]
        self.work = (ROOT / args.work_dir).resolve()
        self.out = (ROOT / args.out_dir).resolve()
        self.env_info: dict = {}
        self.records: dict[str, dict] = {}
        self.smollm2 = args.model == "smollm2"
        self.teacher_dir = cache_root() / "smollm2-135m-instruct"
        self.student_dir = cache_root() / STUDENT

    # ---- command pieces
    def gpus(self) -> int:
        if self.args.device != "cuda":
            return 0
        visible = int(self.env_info.get("gpu_count") or 0)
        return min(self.args.num_gpus, visible) if self.args.num_gpus else visible

    def common(self) -> list[str]:
        a = self.args
        overrides = [f"model={a.model}", f"model.dtype={a.dtype}", "model.attn_implementation=sdpa",
                     f"device={a.device}", "seed=0", "overwrite=true"]
        if self.smollm2:
            overrides.append(f"model.student={STUDENT}")
        if a.device == "cpu":
            overrides.append(f"threads={a.threads}")
        return overrides

    def data(self) -> list[str]:
        """Training, validation and test data: the teacher's answers (validation reuses train's)."""
        train, test = self.generations("teacher_train"), self.generations("teacher_test")
        group = ["data=smollm2"] if self.smollm2 else ["data=jsonl", "data.max_length=192",
                                                        "data.max_prompt_length=128"]
        return [*group, f"data.path={train}", f"data.valid_path={train}", f"data.test_path={test}"]

    def generations(self, step: str) -> Path:
        return self.work / step / "generations.jsonl"

    def need(self, *steps: str) -> None:
        for step in steps:
            record = self.records.get(step)
            if record is not None and record.get("status") != "ok":
                raise Skip(f"needs {step}, which {record.get('status')}")

    def cli(self, stage: str, *overrides: str, launcher: bool = False, peak: Path | None = None) -> list[str]:
        if launcher and self.gpus() > 1:
            deepspeed = Path(sys.executable).with_name("deepspeed")
            binary = str(deepspeed) if deepspeed.exists() else (shutil.which("deepspeed") or "deepspeed")
            return [binary, "--num_gpus", str(self.gpus()), "--no_local_rank", "--master_port", str(free_port()),
                    "--module", "distillm_cli.cli", stage, *overrides]
        return [sys.executable, str(Path(__file__).resolve()), "--child", str(peak), stage, *overrides]

    # ---- the steps
    def steps(self) -> list[Step]:
        a, s, w = self.args, self.size, self.work
        steps = [Step("environment", lambda: [sys.executable, "-c", PROBE], self.environment_figures)]
        if self.smollm2:
            steps.append(Step("convert", lambda: [sys.executable, "-m", "distillm_cli.models.smollm2",
                                                  "smollm2-teacher", STUDENT], self.convert_figures))

        def teacher_answers(split: str, prompts: int):
            name = f"teacher_{split}"

            def command() -> list[str]:
                self.need("convert")
                data = ["data=smollm2"] if self.smollm2 else ["data=toy"]
                return self.cli("generate-student", *self.common(), *data, "generate=teacher",
                                f"generate.split={split}", f"generate.max_prompts={prompts}", "generation=sample",
                                f"generation.max_new_tokens={s['eval_tokens']}", "generation.batch_size=64",
                                f"run_dir={w / name}", peak=self.peak(name))
            return Step(name, command, self.generation_figures, w / name)

        steps += [teacher_answers("train", s["train_prompts"]), teacher_answers("test", s["test_prompts"])]

        def distill(zero: int):
            name = f"distill_zero{zero}"

            def command() -> list[str]:
                self.need("convert", "teacher_train", "teacher_test")
                mb = s["micro_batch"]
                return self.cli("distill", *self.common(), *self.data(), "loss=skew_rkl", "off_policy=adaptive",
                                "off_policy.phi0=1.0", f"off_policy.capacity={mb}", "generation=sample",
                                f"generation.max_new_tokens={s['gen_tokens']}", f"generation.batch_size={mb}",
                                f"train.max_steps={s['steps']}", f"train.micro_batch_size={mb}",
                                f"train.eval_interval={s['eval_interval']}", "train.valid_batches=2",
                                "train.warmup_steps=0", "train.lr=2e-4", "train.log_interval=5",
                                f"deepspeed=zero{zero}", f"run_dir={w / name}", launcher=True, peak=self.peak(name))
            return Step(name, command, self.distill_figures, w / name)

        steps += [distill(0), distill(3)]

        def distilled() -> dict[str, Path]:
            return {name: w / name / "checkpoint" for name in ("distill_zero0", "distill_zero3")
                    if (w / name / "checkpoint" / "config.json").is_file()}

        def generate_student() -> list[str]:
            self.need("teacher_train", "teacher_test")
            checkpoints = distilled()
            if not checkpoints and not a.dry_run:
                raise Skip("no distilled checkpoint (both distill steps failed)")
            source = next(iter(checkpoints.values()), w / "distill_zero0" / "checkpoint")
            return self.cli("generate-student", *self.common(), *self.data(), "generate=student",
                            "generate.split=test", f"generate.max_prompts={s['test_prompts']}", "generation=sample",
                            f"generation.max_new_tokens={s['eval_tokens']}", f"student_dir={source}",
                            f"run_dir={w / 'generate_student'}", peak=self.peak("generate_student"))

        steps.append(Step("generate_student", generate_student, self.generation_figures, w / "generate_student"))

        def evaluate() -> list[str]:
            self.need("teacher_train", "teacher_test")
            models = {"student_before": self.student_dir} if self.smollm2 else {}
            models.update(distilled() if not a.dry_run else {n: w / n / "checkpoint"
                                                            for n in ("distill_zero0", "distill_zero3")})
            if not models:
                raise Skip("no model to score (both distill steps failed)")
            teacher = self.teacher_dir if self.smollm2 else "tiny-teacher"
            return self.cli("evaluate", *self.common(), *self.data(), "eval=default", "eval.seeds=[0]",
                            "eval.sampling.do_sample=false", f"eval.max_examples={s['test_prompts']}",
                            f"eval.sampling.max_new_tokens={s['eval_tokens']}", "eval.batch_size=16",
                            "eval.kl_examples=32", f"eval.teacher={teacher}",
                            *[f"+eval.models.{k}={v}" for k, v in models.items()],
                            f"run_dir={w / 'evaluate'}", peak=self.peak("evaluate"))

        steps.append(Step("evaluate", evaluate, self.evaluate_figures, w / "evaluate"))

        for bench in ([] if a.bench == "none" else BENCHMARKS):
            def command(bench=bench) -> list[str]:
                return [sys.executable, "scripts/bench.py", f"--{a.bench}", "--only", bench,
                        "--threads", str(a.threads), "--out-dir", str(w / "bench" / bench)]
            steps.append(Step(f"bench_{bench}", command, self.bench_figures, w / "bench" / bench))
        return steps

    def peak(self, name: str) -> Path:
        return self.out / "logs" / f"{name}.peak.json"

    # ---- figures
    def environment_figures(self, step: Step) -> dict:
        out = (self.out / "logs" / "environment.out")
        line = next((x for x in out.read_text().splitlines() if x.startswith("GPU_CHECK_PROBE ")), None) \
            if out.is_file() else None
        info = json.loads(line.split(" ", 1)[1]) if line else {}
        smi = nvidia_smi_summary()
        if smi:
            info["nvidia_smi"] = smi
        self.env_info = info
        return info

    def convert_figures(self, step: Step) -> dict:
        return {"teacher_dir": str(self.teacher_dir), "student_dir": str(self.student_dir),
                "ready": (self.teacher_dir / "config.json").is_file() and (self.student_dir / "config.json").is_file()}

    def generation_figures(self, step: Step) -> dict:
        summary = read_json(step.run_dir / "summary.json")
        path = step.run_dir / "generations.jsonl"
        records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        figures = {"generated": summary.get("generated"), "prompts": summary.get("prompts")}
        if records:
            figures["mean_response_chars"] = round(sum(len(r["response"]) for r in records) / len(records), 1)
            figures["truncated"] = sum(bool(r.get("truncated")) for r in records)
        return figures

    def distill_figures(self, step: Step) -> dict:
        summary = read_json(step.run_dir / "summary.json")
        keys = ("final_loss", "val_loss", "tokens_per_second", "train_seconds", "steps", "source_counts", "final_phi")
        return {k: summary.get(k) for k in keys if k in summary}

    def evaluate_figures(self, step: Step) -> dict:
        models = read_json(step.run_dir / "summary.json").get("models", {})
        return {name: {"rouge_l": m["rouge_l"]["mean"], "exact_match": m["exact_match"]["mean"],
                       "kl_to_teacher": m.get("kl_to_teacher"), "seconds": m.get("seconds")}
                for name, m in models.items()}

    def bench_figures(self, step: Step) -> dict:
        results = read_json(step.run_dir / "results.json")
        if not results:
            return {}
        keep = {"device": results.get("device"), **{k: v for k, v in results.get("vs_trl", {}).items()
                                                     if v is not None and k in ("throughput_ratio",
                                                                                "peak_memory_ratio")}}
        for key in ("step_overhead_ratio", "mfu", "loss_memory_ratio", "loss_time_ratio", "contrastive_memory_ratio",
                    "offpolicy_speedup"):
            if results.get(key) is not None:
                keep[key] = results[key]
        if results.get("failed"):
            keep["failed"] = results["failed"]
        return keep


def short_figures(name: str, record: dict) -> str:
    """One line of the step's key figures for the table."""
    f, parts = record.get("figures") or {}, []

    def num(value, spec):
        return "-" if value is None else format(value, spec)

    if name == "environment" and f:
        gpus = f.get("gpus") or []
        parts.append(f"{len(gpus)}x {gpus[0]}" if gpus else "no CUDA device")
        parts.append(f"torch {f.get('torch')} (CUDA {f.get('torch_cuda_build')}), NCCL {f.get('nccl', '-')}, "
                     f"DeepSpeed {f.get('deepspeed')} on {f.get('ds_accelerator')}")
    elif name.startswith(("teacher_", "generate_")) and f:
        parts.append(f"{f.get('generated')} answers, {num(f.get('mean_response_chars'), '.0f')} chars avg, "
                     f"{f.get('truncated', '-')} cut by the limit")
    elif name.startswith("distill") and f:
        sources = f.get("source_counts") or {}
        parts.append(f"loss {num(f.get('final_loss'), '.4f')}, val {num(f.get('val_loss'), '.4f')}, "
                     f"{num(f.get('tokens_per_second'), '.0f')} tok/s, "
                     + "/".join(f"{k} {v}" for k, v in sources.items()))
    elif name == "evaluate" and f:
        parts.append(", ".join(f"{m} {num(v['rouge_l'], '.2f')} (KL {num(v.get('kl_to_teacher'), '.2f')})"
                               for m, v in f.items() if isinstance(v, dict)))
    elif name.startswith("bench_") and f:
        labels = {"throughput_ratio": "vs TRL tok/s", "peak_memory_ratio": "vs TRL memory",
                  "step_overhead_ratio": "step/parts", "mfu": "MFU", "loss_memory_ratio": "loss memory",
                  "loss_time_ratio": "loss time", "contrastive_memory_ratio": "distillm2/skew_rkl memory",
                  "offpolicy_speedup": "off-policy speed-up"}
        parts += [f"{label} {100 * f[k]:.1f}%" if k == "mfu" else f"{label} {f[k]:.2f}x"
                  for k, label in labels.items() if isinstance(f.get(k), (int, float))]
    peak = record.get("peak") or {}
    if "peak_gpu_allocated_mb" in peak:
        parts.append(f"peak {peak['peak_gpu_allocated_mb'] / 1024:.2f} GiB allocated")
    elif record.get("gpu_memory_used_mib"):
        parts.append(f"GPU in use {max(record['gpu_memory_used_mib'].values()) / 1024:.2f} GiB")
    elif "peak_rss_mb" in peak:
        parts.append(f"peak RSS {peak['peak_rss_mb']:.0f} MB")
    if record.get("reason"):
        parts.append(record["reason"])
    return "; ".join(p for p in parts if p)


def markdown(results: dict) -> str:
    env = results.get("environment") or {}
    gpus = env.get("gpus") or []
    lines = [f"# distillm GPU check ({results['created']})", "",
             f"{results['device']}, model={results['model']}, {results['dtype']}, sizes {results['sizes']}; "
             f"revision {results.get('revision')}; {len(gpus)} GPU(s): {', '.join(dict.fromkeys(gpus)) or 'none'}; "
             f"torch {env.get('torch')}, CUDA {env.get('torch_cuda_build')}, NCCL {env.get('nccl', '-')}, "
             f"DeepSpeed {env.get('deepspeed')}, transformers {env.get('transformers')}; "
             f"total {results['total_seconds']:.0f} s of a {results['budget_seconds']:.0f} s budget."
             + (f" Distill final loss, ZeRO-3 vs ZeRO-0: relative difference "
                f"{results['zero3_vs_zero0_final_loss_rel_diff']:.1e}."
                if "zero3_vs_zero0_final_loss_rel_diff" in results else ""), "",
             "| step | status | rc | wall s | key figures |", "|---|---|---|---|---|"]
    for step in results["steps"]:
        rc = "-" if step.get("returncode") is None else str(step["returncode"])
        wall = "-" if step.get("seconds") is None else f"{step['seconds']:.1f}"
        figures = short_figures(step["name"], step).replace("|", "/")
        lines.append(f"| {step['name']} | {step['status']} | {rc} | {wall} | {figures} |")
    failed = [s for s in results["steps"] if s.get("stderr_tail")]
    for step in failed:
        lines += ["", f"## {step['name']}: last lines of stderr", "", "```", step["stderr_tail"], "```"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--model", choices=("smollm2", "tiny"), default=None,
                        help="default: smollm2 on cuda, tiny on cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None,
                        help="model.dtype; default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--quick", action="store_true", help="the fewest steps and prompts that exercise every path")
    parser.add_argument("--num-gpus", type=int, default=0, help="GPUs for the distill steps (default: all visible)")
    parser.add_argument("--bench", choices=("quick", "smoke", "none"), default=None,
                        help="scripts/bench.py profile; default: quick on cuda, none on cpu")
    parser.add_argument("--budget", type=float, default=600, help="seconds for the whole run (default 600)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (cpu runs, bench)")
    parser.add_argument("--out-dir", default="gpu-check", help="results.json, results.md, logs/")
    parser.add_argument("--work-dir", default="runs/gpu-check", help="run directories and checkpoints")
    parser.add_argument("--dry-run", action="store_true", help="print each step's command, run nothing")
    args = parser.parse_args(argv)
    args.model = args.model or ("smollm2" if args.device == "cuda" else "tiny")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.bench = args.bench or ("quick" if args.device == "cuda" else "none")

    plan = Plan(args)
    logs = plan.out / "logs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1",
           # The Makefile exports DS_ACCELERATOR=cpu for CPU machines; a CUDA run must not inherit it.
           "DS_ACCELERATOR": "cuda" if args.device == "cuda" else "cpu"}
    if args.device == "cpu":
        env.update(OMP_NUM_THREADS=str(args.threads), CUDA_VISIBLE_DEVICES="")
    if args.dry_run:
        plan.env_info = {"gpu_count": args.num_gpus or 1}
        for step in plan.steps():
            try:
                shown = ["<the probe in scripts/gpu_check.py>" if "\n" in part else part for part in step.command()]
                print(f"# {step.name}\n" + " ".join(shown) + "\n")
            except Skip as why:
                print(f"# {step.name}: skipped ({why})\n")
        return 0

    steps = plan.steps()
    for step in steps:  # a check is always a fresh run: no stage reuses an earlier output
        if step.run_dir is not None:
            shutil.rmtree(step.run_dir, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    plan.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    deadline = started + args.budget
    no_cuda = None
    print(f"gpu-check: {args.device}, model={args.model}, {args.dtype}, budget {args.budget:.0f} s; "
          f"logs in {logs}", flush=True)
    index = 0
    while index < len(steps):
        step = steps[index]
        index += 1
        record = step.record = {"name": step.name, "status": "skipped", "returncode": None, "seconds": None}
        plan.records[step.name] = record
        left = deadline - time.perf_counter()
        try:
            if no_cuda:
                raise Skip("no CUDA device (see environment)")
            if left < MIN_STEP_SECONDS:
                raise Skip(f"time budget spent ({args.budget:.0f} s)")
            cmd = step.command()
        except Skip as why:
            record["reason"] = str(why)
            print(f"-- {step.name:<17} skipped: {why}", flush=True)
            continue
        timeout = min(TIMEOUTS.get(step.name, 180), left)
        shown = ["<the probe in scripts/gpu_check.py>" if "\n" in part else part for part in cmd]
        record.update(command=" ".join(shown), timeout=round(timeout, 1), log=str(logs / f"{step.name}.err"))
        print(f"-- {step.name:<17} running (timeout {timeout:.0f} s)", flush=True)
        with GpuMemorySampler(args.device == "cuda") as sampler:
            code, seconds = run_process(cmd, env, timeout, logs, step.name)
        record.update(returncode=code, seconds=round(seconds, 1))
        record["status"] = "timeout" if code is None else "ok" if code == 0 else "failed"
        if sampler.peak:
            record["gpu_memory_used_mib"] = {str(k): v for k, v in sorted(sampler.peak.items())}
        peak_path = plan.peak(step.name)
        if peak_path.is_file():
            record["peak"] = read_json(peak_path)
            peak_path.unlink()
        try:
            record["figures"] = step.figures(step) if step.figures else {}
        except (OSError, ValueError, KeyError, TypeError) as error:
            record["figures"] = {"error": f"{type(error).__name__}: {error}"}
        if record["status"] != "ok":
            record["stderr_tail"] = tail(logs / f"{step.name}.err") or tail(logs / f"{step.name}.out")
        if step.name == "environment" and args.device == "cuda":
            info = plan.env_info
            if not info.get("cuda_available"):
                no_cuda = (f"no CUDA device visible to torch {info.get('torch')} (built with CUDA "
                           f"{info.get('torch_cuda_build')}): install a CUDA build of torch into .venv")
                record["status"], record["reason"] = "failed", no_cuda
            elif info.get("ds_accelerator") != "cuda":
                record["reason"] = f"DeepSpeed's accelerator is '{info.get('ds_accelerator')}', not cuda"
        print(f"   {step.name:<17} {record['status']} in {seconds:.1f} s: {short_figures(step.name, record)}",
              flush=True)

    total = time.perf_counter() - started
    results = {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": args.device,
               "model": args.model, "dtype": args.dtype, "sizes": "quick" if args.quick else "full",
               "bench_profile": args.bench, "num_gpus_used": plan.gpus() if args.device == "cuda" else 0,
               "revision": git_revision(), "host": platform.node(), "python": platform.python_version(),
               "budget_seconds": args.budget, "total_seconds": round(total, 1), "settings": plan.size,
               "environment": plan.env_info, "steps": [s.record for s in steps]}
    losses = [plan.records.get(f"distill_zero{z}", {}).get("figures", {}).get("final_loss") for z in (0, 3)]
    if all(isinstance(x, float) for x in losses):  # same data, seed and steps: ZeRO-3 must train like ZeRO-0
        results["zero3_vs_zero0_final_loss_rel_diff"] = abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-30)
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (plan.out / "results.md").write_text(table)
    print("\n" + table)
    print(f"written to {plan.out / 'results.json'} and {plan.out / 'results.md'}")
    return 0 if all(s.record["status"] == "ok" for s in steps) else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        sys.exit(main())
