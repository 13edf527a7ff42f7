"""Benchmark the fused chunked losses against a full-materialisation implementation.

For every divergence in ``distillm_cli.losses.LOSSES`` this measures one
forward + backward pass over ``--positions`` positions of fp32 logits (student
requires grad, teacher does not, every position kept) at each ``--vocab``:

* chunked: ``LOSSES[name](student, teacher, mask, chunk_size=...)`` then ``.backward()``;
* full: the straightforward implementation written below, log_softmax of both
  models over the whole [N, V] in fp32, the formula, a masked mean and autograd's
  backward.

Peak memory, measured honestly: each (loss, implementation) runs in a *fresh*
subprocess. The worker allocates the inputs, runs a tiny warm-up on other
tensors (so one-time kernel / allocator setup is not counted), then reads its
current resident set size (VmRSS) as the baseline, runs one forward + backward
and reports ``ru_maxrss − baseline``: the growth of the peak resident memory
caused by the loss, including the gradient of the student logits (the same
[N, V] for both sides). Nothing else runs in that process, so nothing else can
raise its peak. glibc serves blocks of ≥ 32 MB with mmap and gives them back on
free, so the peak RSS follows the live allocations closely; both sides run
under the same allocator settings (``--malloc``).

Time: one subprocess per loss alternates full and chunked passes (warm-up of
each first), ``--repeats`` times each, and reports the median seconds per
forward + backward. Ratios are chunked / full (lower is better).

A worker that would exceed the memory available on the machine stops with an
allocation error instead of calling the OOM killer: before running it caps its
own address space at what it holds plus ``MemAvailable`` minus a margin; such a
case is reported as "oom".

Usage: python scripts/bench_loss.py [--quick] [--positions 4096] [--vocab 50257 151936]
                                    [--threads 2] [--out bench/loss.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALPHA, BETA = 0.1, 0.5
ROWS_PER_SEQUENCE = 512  # the [N, V] logits are laid out as [N / 512, 512, V]


# ----------------------------------------------------------------------------
# The full-materialisation baseline: the way one writes these losses first.
# ----------------------------------------------------------------------------


def full_loss(name, student, teacher, mask):
    """Straightforward loss: [N, V] fp32 log-probabilities of both models, formula, masked mean."""
    import torch

    ls = torch.log_softmax(student.float(), dim=-1)  # [B, T, V]
    lt = torch.log_softmax(teacher.float(), dim=-1)  # [B, T, V]
    if name == "fkl":
        per_pos = (lt.exp() * (lt - ls)).sum(-1)
    elif name == "rkl":
        per_pos = (ls.exp() * (ls - lt)).sum(-1)
    elif name == "skew_fkl":
        lm = torch.logaddexp(lt + math.log(ALPHA), ls + math.log1p(-ALPHA))
        per_pos = (lt.exp() * (lt - lm)).sum(-1)
    elif name == "skew_rkl":
        lm = torch.logaddexp(ls + math.log(ALPHA), lt + math.log1p(-ALPHA))
        per_pos = (ls.exp() * (ls - lm)).sum(-1)
    elif name == "jsd":
        lm = torch.logaddexp(lt + math.log(BETA), ls + math.log1p(-BETA))
        per_pos = BETA * (lt.exp() * (lt - lm)).sum(-1) + (1 - BETA) * (ls.exp() * (ls - lm)).sum(-1)
    elif name == "tvd":
        per_pos = 0.5 * (lt.exp() - ls.exp()).abs().sum(-1)
    else:
        raise ValueError(name)
    m = mask.to(per_pos.dtype)  # [B, T]
    return (per_pos * m).sum() / m.sum().clamp(min=1)


def chunked_loss(name, student, teacher, mask, chunk_size):
    from distillm_cli.losses import LOSSES

    return LOSSES[name](student, teacher, mask, alpha=ALPHA, beta=BETA, chunk_size=chunk_size)


# ----------------------------------------------------------------------------
# Worker (runs in a fresh subprocess)
# ----------------------------------------------------------------------------


def _rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _mem_available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _cap_address_space(margin_bytes: int) -> None:
    """Make allocations beyond the machine's free memory fail in this process (no OOM killer)."""
    limit = _vm_size_bytes() + max(0, _mem_available_bytes() - margin_bytes)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    n, vocab = args.positions, args.vocab_one
    rows = min(ROWS_PER_SEQUENCE, n)
    shape = (math.ceil(n / rows), rows, vocab)
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(shape, generator=gen) * 2).requires_grad_()  # [B, T, V] fp32
    teacher = torch.randn(shape, generator=gen) * 2  # [B, T, V] fp32
    mask = torch.zeros(shape[:2], dtype=torch.bool).view(-1)
    mask[:n] = True
    mask = mask.view(shape[:2])  # [B, T]
    impls = {
        "full": lambda: full_loss(args.loss, student, teacher, mask),
        "chunked": lambda: chunked_loss(args.loss, student, teacher, mask, args.chunk_size),
    }
    # Warm-up on tiny tensors: loads kernels and the loss module without touching the big buffers.
    small = torch.randn(2, 8, 64, requires_grad=True)
    small_mask = torch.ones(2, 8, dtype=torch.bool)
    for fn in (full_loss, lambda *a: chunked_loss(*a, args.chunk_size)):
        fn(args.loss, small, small.detach() * 0.5, small_mask).backward()
    _cap_address_space(margin_bytes=4 * 2**30)  # leave room for other users of the machine

    def step(impl):
        student.grad = None
        t0 = time.perf_counter()
        value = impls[impl]()
        value.backward()
        return time.perf_counter() - t0, float(value)

    if args.mode == "memory":
        try:
            base_kb = _rss_kb()
            seconds, value = step(args.impl)
        except (RuntimeError, MemoryError) as exc:  # allocation refused by the address-space cap
            return {"oom": _short(exc)}
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_mb": max(0, peak_kb - base_kb) / 1024, "first_s": seconds, "value": value}
    result, values, live = {}, {}, []
    for impl in ("chunked", "full"):  # warm-up, not timed; an implementation that cannot allocate drops out
        try:
            values[impl] = step(impl)[1]
            live.append(impl)
        except (RuntimeError, MemoryError) as exc:
            student.grad = None
            result[f"{impl}_oom"] = _short(exc)
    times = {impl: [] for impl in live}
    grads = {}
    for r in range(args.repeats):
        for impl in (live if r % 2 == 0 else live[::-1]):  # alternate the order
            times[impl].append(step(impl)[0])
            grads.setdefault(impl, student.grad)
    for impl in live:
        result[f"{impl}_s"] = statistics.median(times[impl])
        result[f"{impl}_times"] = times[impl]
        result[f"value_{impl}"] = values[impl]
    if len(grads) == 2:
        result["grad_rel_diff"] = float((grads["chunked"] - grads["full"]).abs().max() / grads["full"].abs().max())
    return result


def _short(exc) -> str:
    text = str(exc)
    if "can't allocate memory" in text or isinstance(exc, MemoryError):
        return "does not fit in the free memory"
    return text.splitlines()[0][:160]


# ----------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------


def _spawn(args, mode, loss, vocab, impl=None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode, "--loss", loss,
           "--vocab-one", str(vocab), "--positions", str(args.positions), "--threads", str(args.threads),
           "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats)]
    if impl:
        cmd += ["--impl", impl]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    if args.malloc == "tuned":
        env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(2**40), MALLOC_TOP_PAD_=str(2**30))
    return worker_result(subprocess.run(cmd, capture_output=True, text=True, env=env))


def worker_result(proc: subprocess.CompletedProcess, killed_key: str = "oom") -> dict:
    """A benchmark worker's last stdout line (JSON), or why there is none: killed (out of memory) or failed."""
    if proc.returncode in (-9, 137):
        return {killed_key: "killed (out of memory?)"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timing repeats, vocab 50257 only")
    parser.add_argument("--positions", type=int, default=4096)
    parser.add_argument("--vocab", type=int, nargs="+", default=None, help="default: 50257 151936")
    parser.add_argument("--losses", nargs="+", default=None, help="default: all of LOSSES")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per implementation (default 5)")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: the loss functions' default")
    parser.add_argument("--malloc", choices=("default", "tuned"), default="default",
                        help="tuned: keep freed memory in the process (MALLOC_MMAP_MAX_=0 ...), both sides")
    parser.add_argument("--out", default="bench/loss.json")
    # worker-only flags
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("memory", "time"), help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=("full", "chunked"), help=argparse.SUPPRESS)
    parser.add_argument("--loss", help=argparse.SUPPRESS)
    parser.add_argument("--vocab-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.chunk_size is None:
        sys.path.insert(0, str(ROOT))
        import inspect

        from distillm_cli.losses import fkl

        args.chunk_size = inspect.signature(fkl).parameters["chunk_size"].default
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    sys.path.insert(0, str(ROOT))
    from distillm_cli.losses import LOSSES

    vocabs = args.vocab or ([50257] if args.quick else [50257, 151936])
    losses = args.losses or list(LOSSES)
    results = {"positions": args.positions, "threads": args.threads, "chunk_size": args.chunk_size,
               "malloc": args.malloc, "repeats": args.repeats, "vocab": {}}
    header = (f"{'vocab':>7} {'loss':<9} {'full s':>7} {'chunk s':>7} {'time x':>6} "
              f"{'full MB':>8} {'chunk MB':>8} {'mem x':>6} {'grad diff':>9}")
    print(f"positions={args.positions} threads={args.threads} chunk_size={args.chunk_size} "
          f"malloc={args.malloc} repeats={args.repeats}")
    print(header)
    for vocab in vocabs:
        per_loss = {}
        for loss in losses:
            mem_full = _spawn(args, "memory", loss, vocab, "full")
            mem_chunk = _spawn(args, "memory", loss, vocab, "chunked")
            timing = _spawn(args, "time", loss, vocab)
            row = {
                "full_s": timing.get("full_s"),
                "chunked_s": timing.get("chunked_s"),
                "full_peak_mb": mem_full.get("peak_mb"),
                "chunked_peak_mb": mem_chunk.get("peak_mb"),
                "grad_rel_diff": timing.get("grad_rel_diff"),
                "value_full": timing.get("value_full"),
                "value_chunked": timing.get("value_chunked"),
                "full_times": timing.get("full_times"),
                "chunked_times": timing.get("chunked_times"),
            }
            row["time_ratio"] = _ratio(row["chunked_s"], row["full_s"])
            row["memory_ratio"] = _ratio(row["chunked_peak_mb"], row["full_peak_mb"])
            problems = {}
            for key, res in (("full", mem_full), ("chunked", mem_chunk)):
                if "oom" in res or "error" in res:
                    problems[key] = res.get("oom") or res.get("error")
            for key in ("full", "chunked"):
                if f"{key}_oom" in timing:
                    problems.setdefault(key, timing[f"{key}_oom"])
            if "oom" in timing or "error" in timing:
                problems["time"] = timing.get("oom") or timing.get("error")
            if problems:
                row["problems"] = problems
            per_loss[loss] = row
            print(f"{vocab:>7} {loss:<9} {_fmt(row['full_s']):>7} {_fmt(row['chunked_s']):>7} "
                  f"{_fmt(row['time_ratio']):>6} {_fmt(row['full_peak_mb'], '.0f'):>8} "
                  f"{_fmt(row['chunked_peak_mb'], '.0f'):>8} {_fmt(row['memory_ratio']):>6} "
                  f"{_fmt(row['grad_rel_diff'], '.1e'):>9}" + (f"  {problems}" if problems else ""), flush=True)
        results["vocab"][str(vocab)] = per_loss
    ref = results["vocab"].get("50257") or next(iter(results["vocab"].values()))
    mem = [r["memory_ratio"] for r in ref.values() if r["memory_ratio"] is not None]
    tim = [r["time_ratio"] for r in ref.values() if r["time_ratio"] is not None]
    results["loss_memory_ratio"] = max(mem) if mem else None
    results["loss_time_ratio"] = max(tim) if tim else None
    # Per-loss ratios at the reference vocabulary, flat, for quick reading.
    for loss, r in ref.items():
        results[loss] = {k: r[k] for k in ("time_ratio", "memory_ratio", "full_s", "chunked_s",
                                           "full_peak_mb", "chunked_peak_mb")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"loss_memory_ratio={_fmt(results['loss_memory_ratio'])} (target <= 0.25)  "
          f"loss_time_ratio={_fmt(results['loss_time_ratio'])} (target <= 1.1)  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
