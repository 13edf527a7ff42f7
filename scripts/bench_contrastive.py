"""DistiLLM-2's contrastive step against a skew_rkl step over the same response tokens: peak memory.

Issue 18: a DistiLLM-2 step should cost about what a DistiLLM step costs, at most 1.25x the
peak memory of a skew_rkl step over the same number of response tokens. Both sides are a
whole training step of the product on the same models and the same tokens:

* models: random-init GPT-2 teacher 4 x 128 and student 2 x 64 (bench_vs_trl.py's shapes)
  at ``--vocab``, fp32 on CPU (bf16 on CUDA), the student in a DeepSpeed engine built by
  ``engine.build_engine`` from the shipped configs (stage=distill, off_policy=none);
* data: ``--pairs`` prompts, each with a teacher and a student response of different
  lengths; the 2n sequences are right-padded to the longest (``--seq``): at the defaults
  (4 pairs, 256) prompts are 31% of the 2048 positions, padding 25%, and the N = 896
  response tokens 44%;
* ``skew_rkl``: the distill stage's micro-step (``train.objectives.batch_kd_loss``,
  loss=skew_rkl with its config: alpha 0.1, mixture not detached) on the 2n sequences as
  one batch, normalised by its N tokens;
* ``distillm2``: the contrastive stage's (``train.objectives.batch_pair_loss``,
  loss=distillm2 with its config: the alpha curriculum's gap, then ``distillm2_rows``) on
  the same 2n sequences as the pair batch [teacher responses; student responses];
* ``distillm2_dense`` (``--dense``): the contrastive step as it was before issue 18, kept
  here to measure what the change saved: teacher and student logits at every position
  ([2n, seq, V]), the gap from ``mean_label_probability`` on them, dense ``distillm2``.

then ``engine.backward`` and ``engine.step``. The loss of a step, before backward, is
the same function of the same student rows on both DistiLLM-2 paths; skew_rkl differs in
the divergence only, over the same N rows.

Peak memory: every (kind, vocab) runs in a fresh subprocess. It builds everything, runs one
warm-up step on a small batch (kernels, optimizer state), then resets the peak resident
set (``/proc/self/clear_refs``), runs one step and reports the growth of the peak
(VmHWM) over the resident set just before the step: the step's own temporaries (logits,
the gradient of the logits, work arrays, activations). On CUDA: max_memory_allocated
minus memory_allocated before the step. The product's CPU allocator settings
(``runtime.setup_runtime``: no mmap, freed memory kept in the heap) make the resident set
follow the heap rather than the live tensors, so on CPU the workers hand blocks of
>= 1 MiB back to mmap (returned to the kernel on free; the default glibc does so from
32 MiB), as scripts/bench_loss.py measures; ``--malloc product`` keeps the product's.

The ratio ``distillm2 / skew_rkl`` is the headline (``contrastive_memory_ratio``: the
largest over the vocabularies run; target <= 1.25).

    .venv/bin/python scripts/bench_contrastive.py [--quick] [--vocab 50257 151936] [--pairs 4]
                                                  [--seq 256] [--dense] [--out bench/contrastive.json]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_trl import STUDENT, TEACHER, compose_distill_config, device_name  # noqa: E402, I001
from bench_loss import _fmt, _ratio, worker_result  # noqa: E402, I001

KINDS = ("skew_rkl", "distillm2", "distillm2_dense")
DEFAULT_VOCABS = (50257, 151936)


# ----------------------------------------------------------------------------- data and models
def pair_lengths(pairs: int, seq: int) -> list[tuple[int, int, int]]:
    """(prompt, teacher response, student response) lengths of each pair; the longest sequence is seq."""
    out = []
    for i in range(pairs):
        frac = i / max(pairs - 1, 1)  # 0 .. 1 over the pairs
        prompt = max(1, round(seq * (0.375 - 0.125 * frac)))
        teacher = seq - round(seq * 0.375) - round(seq * 0.25 * frac)  # the first pair fills seq
        student = max(1, round(seq * (0.25 + 0.25 * frac)))
        out.append((prompt, max(1, teacher), min(student, seq - prompt)))
    return out


def make_pair_batch(pairs: int, seq: int, vocab: int, seed: int) -> dict:
    """The pair batch [teacher responses; student responses] as the contrastive stage builds it."""
    import torch

    from distillm_cli.data.formats import build_example
    from distillm_cli.train.contrastive import pair_batch

    gen = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(0, vocab - 1, (n,), generator=gen).tolist()

    examples = []
    for prompt_len, teacher_len, student_len in pair_lengths(pairs, seq):
        prompt = ids(prompt_len)
        examples.append((build_example(prompt, ids(teacher_len), seq), build_example(prompt, ids(student_len), seq)))
    return pair_batch(examples, pad_id=vocab - 1)


def build_models(vocab: int, seq: int, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(shape: dict, model_seed: int):
        config = GPT2Config(vocab_size=vocab, n_positions=seq, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            **shape)
        torch.manual_seed(model_seed)
        return GPT2LMHeadModel(config)

    return make(TEACHER, seed), make(STUDENT, seed + 1)


# ----------------------------------------------------------------------------- the steps
def make_micro_loss(kind: str, cfg, teacher, engine, runtime, vocab: int):
    """batch -> loss of one micro-step, as the distill (skew_rkl) or contrastive stage computes it."""
    import torch

    from distillm_cli.data.formats import IGNORE
    from distillm_cli.train.contrastive import AlphaCurriculum
    from distillm_cli.train.objectives import batch_kd_loss, batch_pair_loss, kd_params

    device, loss_cfg = runtime.device, cfg.loss
    if kind == "skew_rkl":
        params = kd_params(loss_cfg)

        def micro_loss(batch: dict) -> torch.Tensor:
            tokens = float((batch["labels"] != IGNORE).sum())
            return batch_kd_loss(engine, teacher, batch, runtime, vocab, params, normalizer=tokens)[0]

        return micro_loss
    # The alpha curricula past their first epoch, so the gap decides the alphas as in training.
    curricula = [AlphaCurriculum(alpha0, loss_cfg.alpha_min, loss_cfg.alpha_curriculum, first_epoch_steps=1)
                 for alpha0 in (loss_cfg.alpha, loss_cfg.alpha_s)]
    for curriculum in curricula:
        curriculum.target_sum, curriculum.target_count = 0.01, 1

    def alphas(gap, n):
        return curricula[0].alphas(1, gap[:n]).to(device), curricula[1].alphas(1, gap[n:]).to(device)

    if kind == "distillm2":
        def micro_loss(batch: dict) -> torch.Tensor:
            n = int(batch["pairs"])
            loss, _, _ = batch_pair_loss(engine, teacher, batch, runtime, vocab, alphas=lambda gap: alphas(gap, n),
                                         beta=loss_cfg.beta, temperature=loss_cfg.temperature,
                                         chunk_size=loss_cfg.chunk_size, fused_head=loss_cfg.fused_head)
            return loss_cfg.scale * loss  # normalizer = n: this batch is the whole step

        return micro_loss

    from distillm_cli.losses import distillm2
    from distillm_cli.models.loading import forward_logits
    from distillm_cli.train.contrastive import mean_label_probability

    def dense_micro_loss(batch: dict) -> torch.Tensor:  # the step before issue 18, line for line
        n = int(batch["pairs"])
        labels = batch["labels"].to(device)
        teacher_logits = teacher.logits(batch)  # [2n, T, V]
        student_logits = forward_logits(engine, batch, device, vocab)  # [2n, T, V]
        gap = mean_label_probability(teacher_logits, labels) - mean_label_probability(student_logits.detach(), labels)
        alphas_t, alphas_s = alphas(gap, n)
        keep = labels != IGNORE
        loss = distillm2(student_logits[:n], teacher_logits[:n], keep[:n], student_logits[n:], teacher_logits[n:],
                         keep[n:], alpha_t=alphas_t, alpha_s=alphas_s, beta=loss_cfg.beta,
                         temperature=loss_cfg.temperature, chunk_size=loss_cfg.chunk_size)
        return loss_cfg.scale * loss

    return dense_micro_loss


# ----------------------------------------------------------------------------- worker
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _mmap_large_blocks() -> None:
    """glibc: blocks of >= 1 MiB from mmap again (returned on free), after setup_runtime turned that off."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
    libc.mallopt(m_mmap_max, 65536)
    libc.mallopt(m_mmap_threshold, 1 << 20)
    libc.mallopt(m_trim_threshold, 1 << 20)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        return True
    except OSError:
        return False


def worker(args) -> dict:
    import torch

    from distillm_cli.data.formats import IGNORE
    from distillm_cli.models.loading import DTYPES
    from distillm_cli.runtime import seed_everything, setup_runtime
    from distillm_cli.teacher import LiveTeacher
    from distillm_cli.train.engine import build_engine

    cuda = torch.cuda.is_available()
    vocab, seq = args.vocab_one, args.seq
    tmp = tempfile.TemporaryDirectory(prefix="bench_contrastive_")
    cfg = compose_distill_config(steps=1000, lr=1e-4, threads=args.threads, cuda=cuda, run_dir=tmp.name,
                                 loss="skew_rkl" if args.kind == "skew_rkl" else "distillm2", batch=2 * args.pairs)
    runtime = setup_runtime(cfg)
    if not cuda and args.malloc == "mmap":
        _mmap_large_blocks()
    seed_everything(cfg.seed)
    teacher_model, student_model = build_models(vocab, seq, args.seed)
    dtype = DTYPES[cfg.model.dtype]
    teacher = LiveTeacher.placed(teacher_model.to(dtype), cfg, runtime, vocab)
    engine = build_engine(student_model.to(dtype), cfg, runtime)
    engine.train()
    micro_loss = make_micro_loss(args.kind, cfg, teacher, engine, runtime, vocab)

    def step(batch: dict) -> float:
        loss = micro_loss(batch)
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()
        return float(loss.detach())

    step(make_pair_batch(2, 16, vocab, args.seed + 1))  # warm-up: kernels, optimizer state
    batch = make_pair_batch(args.pairs, seq, vocab, args.seed + 2)
    tokens = int((batch["labels"] != IGNORE).sum())
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base_kb = _status_kb("VmRSS")
        hwm_reset = _reset_peak()
    started = time.perf_counter()
    loss = step(batch)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_kb = _status_kb("VmHWM") if hwm_reset else _status_kb("VmPeak")
        peak_mb = max(0, peak_kb - base_kb) / 1024
    tmp.cleanup()
    return {"peak_mb": peak_mb, "step_s": seconds, "loss": loss, "response_tokens": tokens,
            "positions": int(batch["labels"].numel()), "sequences": int(batch["labels"].shape[0]),
            "memory": "cuda max_memory_allocated" if cuda else f"VmHWM growth, malloc={args.malloc}",
            "dtype": cfg.model.dtype}


# ----------------------------------------------------------------------------- orchestration
def spawn(args, kind: str, vocab: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--kind", kind, "--vocab-one", str(vocab),
           "--pairs", str(args.pairs), "--seq", str(args.seq), "--threads", str(args.threads),
           "--seed", str(args.seed), "--malloc", args.malloc]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    env.setdefault("DS_ACCELERATOR", "cpu")
    return worker_result(subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True), killed_key="error")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="vocab 50257 only (make bench)")
    parser.add_argument("--vocab", type=int, nargs="+", default=None, help="default: 50257 151936 (--quick: 50257)")
    parser.add_argument("--pairs", type=int, default=4, help="prompts per step: 2 x pairs sequences")
    parser.add_argument("--seq", type=int, default=256, help="the longest sequence of the batch")
    parser.add_argument("--dense", action="store_true", help="also measure the dense step from before issue 18")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--malloc", choices=("mmap", "product"), default="mmap",
                        help="CPU: mmap (peak follows live tensors) or the product's allocator settings")
    parser.add_argument("--out", default="bench/contrastive.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--vocab-one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    vocabs = args.vocab or ([DEFAULT_VOCABS[0]] if args.quick else list(DEFAULT_VOCABS))
    kinds = [k for k in KINDS if args.dense or k != "distillm2_dense"]
    results = {"device": device_name(args.threads), "pairs": args.pairs, "sequences": 2 * args.pairs,
               "seq": args.seq, "lengths": pair_lengths(args.pairs, args.seq), "malloc": args.malloc,
               "threads": args.threads, "vocab": {}}
    print(f"{results['device']}; {2 * args.pairs} sequences of up to {args.seq} tokens, malloc={args.malloc}")
    print(f"{'vocab':>7} {'kind':<16} {'tokens':>6} {'peak MB':>8} {'x skew_rkl':>10} {'[N,V] MB':>8} {'step s':>7}")
    for vocab in vocabs:
        rows = {kind: spawn(args, kind, vocab) for kind in kinds}
        base = rows["skew_rkl"].get("peak_mb")
        for kind, row in rows.items():
            row["ratio_to_skew_rkl"] = _ratio(row.get("peak_mb"), base)
            tokens = row.get("response_tokens")
            floor = tokens * vocab * 4 / 2**20 if tokens else None  # one fp32 [N, V] array
            print(f"{vocab:>7} {kind:<16} {tokens or '-':>6} {_fmt(row.get('peak_mb'), '.0f'):>8} "
                  f"{_fmt(row['ratio_to_skew_rkl']):>10} {_fmt(floor, '.0f'):>8} {_fmt(row.get('step_s')):>7}"
                  + (f"  {row['error']}" if "error" in row else ""), flush=True)
        results["vocab"][str(vocab)] = {"kinds": rows,
                                        "memory_ratio": rows["distillm2"]["ratio_to_skew_rkl"],
                                        "dense_memory_ratio": rows.get("distillm2_dense", {}).get("ratio_to_skew_rkl")}
    ratios = [v["memory_ratio"] for v in results["vocab"].values() if v["memory_ratio"] is not None]
    dense = [v["dense_memory_ratio"] for v in results["vocab"].values() if v["dense_memory_ratio"] is not None]
    results["contrastive_memory_ratio"] = max(ratios) if len(ratios) == len(vocabs) else None
    results["contrastive_memory_ratio_dense"] = max(dense) if dense else None
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"contrastive_memory_ratio={_fmt(results['contrastive_memory_ratio'])} (target <= 1.25)"
          + (f", before issue 18: {_fmt(results['contrastive_memory_ratio_dense'])}" if dense else "")
          + f" -> {out}")
    return 0 if results["contrastive_memory_ratio"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
