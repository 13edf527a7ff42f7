"""The loss with the output head fused in, against the head's logit rows fed to the fused loss.

One forward + backward of the distillation objective (skew_rkl, kd_ratio 0.9) over N response
positions, from the last hidden states of a student ([N, H], requires grad) and a teacher
([N, H_t]) and their output heads ([V, H], student head requires grad):

* fused: ``losses.kd_objective_head`` (loss.fused_head=true): logits one chunk at a time;
* rows: the heads make the [N, V] logit rows, then ``losses.kd_objective`` (loss.fused_head=false).

Each (implementation, N) runs in a fresh subprocess that allocates the inputs, warms up on
other tensors, reads its resident set size as the baseline and reports the growth of its peak
(ru_maxrss) over one forward + backward: the loss's own memory, the head-weight and hidden-state
gradients included (autograd holds those on both paths). N and 2N show whether it grows with
the positions (the issue's bar: at most +10% from N to 2N). Time: one subprocess per N
alternates the two implementations, medians of ``--repeats``.

    .venv/bin/python scripts/bench_head.py [--quick] [--positions 2048] [--vocab 50257]
                                           [--hidden 768] [--threads 2] [--out bench/head.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("fused", "rows")


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args) -> dict:
    import torch

    from distillm_cli.losses import kd_objective, kd_objective_head
    from distillm_cli.models.head import OutputHead

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    N, H, V = args.n, args.hidden, args.vocab
    hidden = (torch.randn(N, H, generator=g) * 0.5).requires_grad_()
    student = OutputHead((torch.randn(V, H, generator=g) * 0.05).requires_grad_(), None, V)
    t_hidden = torch.randn(N, 2 * H, generator=g) * 0.5
    teacher = OutputHead(torch.randn(V, 2 * H, generator=g) * 0.05, None, V)
    labels = torch.randint(0, V, (N,), generator=g)
    params = {"loss": "skew_rkl", "kd_ratio": 0.9, "alpha": 0.1, "normalizer": float(N)}

    def step(impl: str) -> float:
        hidden.grad = student.weight.grad = None
        if impl == "fused":
            loss, _ = kd_objective_head(hidden, student, t_hidden, teacher, labels, **params)
        else:
            with torch.no_grad():
                t_rows = teacher.logits(t_hidden)  # [N, V]
            loss, _ = kd_objective(student.logits(hidden)[None], t_rows[None], labels[None], **params)
        loss.backward()
        return float(loss)

    small = OutputHead(student.weight[:64].detach(), None, 64)  # warm-up on other shapes
    kd_objective_head(hidden[:8].detach(), small, t_hidden[:8], OutputHead(teacher.weight[:64], None, 64),
                      labels[:8] % 64, loss="skew_rkl")
    if args.mode == "memory":
        baseline = _rss_mb()
        loss = step(args.impl)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"growth_mb": peak - baseline, "loss": loss}
    for impl in IMPLS:  # warm-up of each
        step(impl)
    times = {impl: [] for impl in IMPLS}
    losses = {}
    for r in range(args.repeats):
        for impl in IMPLS if r % 2 == 0 else IMPLS[::-1]:
            started = time.perf_counter()
            losses[impl] = step(impl)
            times[impl].append(time.perf_counter() - started)
    return {"seconds": {impl: statistics.median(v) for impl, v in times.items()}, "losses": losses}


def spawn(args, mode: str, n: int, impl: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", mode, "--n", str(n),
           "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--threads", str(args.threads),
           "--repeats", str(args.repeats), *(["--impl", impl] if impl else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} worker failed:\n" + "\n".join(proc.stderr.strip().splitlines()[-10:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1024, 3 timing repeats")
    parser.add_argument("--positions", type=int, default=None, help="N (default 2048; --quick 1024); 2N too")
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=None, help="timed passes each (default 5; --quick 3)")
    parser.add_argument("--out", default="bench/head.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("memory", "time"), help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.worker:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(worker(args)))
        return 0
    n0 = args.positions or (1024 if args.quick else 2048)
    rows = {}
    for n in (n0, 2 * n0):
        memory = {impl: spawn(args, "memory", n, impl)["growth_mb"] for impl in IMPLS}
        timing = spawn(args, "time", n)
        rows[n] = {"peak_growth_mb": memory, "seconds": timing["seconds"], "losses": timing["losses"]}
        print(f"N={n:>6}: peak growth fused {memory['fused']:.0f} MB, rows {memory['rows']:.0f} MB; "
              f"time fused {timing['seconds']['fused'] * 1000:.0f} ms, rows {timing['seconds']['rows'] * 1000:.0f} ms",
              flush=True)
    big = rows[2 * n0]
    result = {
        "setup": {"vocab": args.vocab, "hidden": args.hidden, "teacher_hidden": 2 * args.hidden, "loss": "skew_rkl",
                  "positions": [n0, 2 * n0], "threads": args.threads, "repeats": args.repeats},
        "rows": {str(n): r for n, r in rows.items()},
        "fused_growth_2n_over_n": big["peak_growth_mb"]["fused"] / rows[n0]["peak_growth_mb"]["fused"],
        "rows_growth_2n_over_n": big["peak_growth_mb"]["rows"] / rows[n0]["peak_growth_mb"]["rows"],
        "fused_over_rows_memory": big["peak_growth_mb"]["fused"] / big["peak_growth_mb"]["rows"],
        "fused_over_rows_time": big["seconds"]["fused"] / big["seconds"]["rows"],
    }
    print(f"fused loss memory N -> 2N: x{result['fused_growth_2n_over_n']:.2f} (rows: "
          f"x{result['rows_growth_2n_over_n']:.2f}); at 2N fused / rows: memory "
          f"x{result['fused_over_rows_memory']:.2f}, time x{result['fused_over_rows_time']:.2f}")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
