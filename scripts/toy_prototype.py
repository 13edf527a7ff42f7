"""Prototype of the embedded demo: does distillation beat SFT on the toy tasks, in minutes?

A plain-torch re-implementation of the five pipeline stages on the built-in toy
data (``distillm_cli.toy``), independent of the tool's stages, used to pick the
defaults of ``make demo``:

1. sft-teacher   tiny-teacher from random init, CE on responses of ``teacher_train``
2. sft-student   tiny-student from random init, CE on the small labelled ``train``
3. generate      teacher greedy answers for the ``unlabelled`` prompts (left padding, KV cache)
4. distill       from the SFT student, on ``train`` (labels) + ``unlabelled`` (teacher answers),
                 loss = kd_ratio * KD(teacher || student) + (1 - kd_ratio) * CE
5. evaluate      greedy decoding on ``test``: exact match and ROUGE-L (F, stemmer, x100)

Optional control (``--control``): the SFT student trained for the distill
stage's extra steps on ``train`` alone, so that a gain of the distilled student
cannot be put down to extra steps.

Usage::

    .venv/bin/python scripts/toy_prototype.py --seeds 0 1 2

Measured result: see RESULT below (filled in from a run of this script).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from distillm_cli.data import format_prompt  # noqa: E402
from distillm_cli.toy import (  # noqa: E402
    TINY_PRESETS,
    build_char_tokenizer,
    build_tiny_model,
    make_toy_splits,
)

RESULT = "(not measured yet)"


# --------------------------------------------------------------------------- data


def encode(records, tokenizer, responses=None, template="compact"):
    """(input_ids, labels) per record; labels are -100 on the prompt. Responses end with EOS."""
    out = []
    for i, rec in enumerate(records):
        prompt = tokenizer(format_prompt(rec, template))["input_ids"]
        if responses is None:
            resp = tokenizer(rec["output"])["input_ids"] + [tokenizer.eos_token_id]
        else:
            resp = responses[i]
        out.append((prompt + resp, [-100] * len(prompt) + resp))
    return out


def collate(examples, pad_id):
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return ids, mask, labels


def batch_stream(n, batch_size, generator):
    """Endless shuffled epochs of indices (last partial batch of an epoch carried over)."""
    buf = []
    while True:
        buf.extend(torch.randperm(n, generator=generator).tolist())
        while len(buf) >= batch_size:
            yield buf[:batch_size]
            buf = buf[batch_size:]


# --------------------------------------------------------------------------- losses


def kd_loss(student_logits, teacher_logits, kind, alpha):
    """Mean over rows of a divergence between teacher p and student q; logits [N, V]."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)  # [N, V]
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)  # [N, V]
    p = log_p.exp()
    if kind == "fkl":  # KL(p || q)
        return (p * (log_p - log_q)).sum(-1).mean()
    if kind == "skew_fkl":  # KL(p || a p + (1-a) q), mixture in log space
        log_m = torch.logaddexp(log_p + math.log(alpha), log_q + math.log1p(-alpha))
        return (p * (log_p - log_m)).sum(-1).mean()
    raise ValueError(kind)


# --------------------------------------------------------------------------- training


def train(model, examples, *, steps, batch_size, lr, seed, pad_id, teacher=None, kd="fkl",
          alpha=0.1, kd_ratio=1.0, warmup=0, log_every=0, name=""):
    """AdamW (wd 0.01), grad clip 1.0, cosine decay to 1e-7 over `steps`."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    min_ratio = 1e-7 / lr

    def schedule(step):
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    gen = torch.Generator().manual_seed(seed)
    stream = batch_stream(len(examples), batch_size, gen)
    running = 0.0
    for step in range(steps):
        ids, mask, labels = collate([examples[i] for i in next(stream)], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # [B, T-1, V]
        target = labels[:, 1:]  # [B, T-1]
        keep = target != -100
        s_rows = logits[keep]  # [N, V]
        ce = F.cross_entropy(s_rows.float(), target[keep])
        if teacher is not None and kd_ratio > 0:
            with torch.no_grad():
                t_rows = teacher(input_ids=ids, attention_mask=mask).logits[:, :-1][keep]
            loss = kd_ratio * kd_loss(s_rows, t_rows, kd, alpha) + (1 - kd_ratio) * ce
        else:
            loss = ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"  [{name}] step {step + 1}/{steps} loss {running / log_every:.4f}", flush=True)
            running = 0.0
    model.eval()
    return model


# --------------------------------------------------------------------------- generation / eval


@torch.no_grad()
def generate(model, tokenizer, records, *, batch_size, max_new_tokens, template="compact"):
    """Greedy responses (token ids up to and including EOS, or truncated) per record."""
    model.eval()
    prompts = [format_prompt(r, template) for r in records]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding
    out = [None] * len(prompts)
    tokenizer.padding_side = "left"
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
        gen = model.generate(
            **enc, do_sample=False, max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        new = gen[:, enc["input_ids"].shape[1]:].tolist()
        for i, row in zip(idx, new):
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id) + 1]
            else:
                row = [t for t in row if t != tokenizer.pad_token_id]
            out[i] = row
    tokenizer.padding_side = "right"
    return out


def scores(tokenizer, responses, records):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]
    em = [" ".join(t.split()) == " ".join(r["output"].split()) for t, r in zip(texts, records)]
    rl = [scorer.score(r["output"], t)["rougeL"].fmeasure * 100 for t, r in zip(texts, records)]
    per_task = {}
    for hit, r in zip(em, records):
        per_task.setdefault(r["task"], []).append(hit)
    return (sum(em) / len(em), sum(rl) / len(rl),
            {k: sum(v) / len(v) for k, v in sorted(per_task.items())}, texts)


# --------------------------------------------------------------------------- one seed


def run_seed(seed, a):
    tok = build_char_tokenizer()
    pad = tok.pad_token_id
    sizes = {k: v for k, v in (("teacher_train", a.teacher_train), ("train", a.train),
                               ("unlabelled", a.unlabelled), ("test", a.test)) if v is not None}
    splits = make_toy_splits(seed, sizes, tasks=tuple(a.tasks.split(",")) if a.tasks else None)
    res, times = {}, {}

    def timed(key, fn):
        t0 = time.perf_counter()
        value = fn()
        times[key] = time.perf_counter() - t0
        return value

    torch.manual_seed(seed)
    teacher = build_tiny_model("tiny-teacher", tok)
    teacher = timed("sft-teacher", lambda: train(
        teacher, encode(splits["teacher_train"], tok), steps=a.t_steps, batch_size=a.t_bs,
        lr=a.t_lr, warmup=a.warmup, seed=seed, pad_id=pad, log_every=a.log_every, name="teacher"))

    torch.manual_seed(seed + 1000)
    student = build_tiny_model("tiny-student", tok)
    student = timed("sft-student", lambda: train(
        student, encode(splits["train"], tok), steps=a.s_steps, batch_size=a.s_bs, lr=a.s_lr,
        warmup=a.warmup, seed=seed, pad_id=pad, log_every=a.log_every, name="student"))
    sft_state = {k: v.clone() for k, v in student.state_dict().items()}

    answers = timed("generate", lambda: generate(
        teacher, tok, splits["unlabelled"], batch_size=a.gen_bs, max_new_tokens=a.max_new))
    em_u = scores(tok, answers, splits["unlabelled"])[0]

    distilled = build_tiny_model("tiny-student", tok)
    distilled.load_state_dict(sft_state)
    kd_data = encode(splits["train"], tok) + encode(splits["unlabelled"], tok, responses=answers)
    distilled = timed("distill", lambda: train(
        distilled, kd_data, steps=a.d_steps, batch_size=a.d_bs, lr=a.d_lr, warmup=0,
        teacher=teacher, kd=a.kd, alpha=a.alpha, kd_ratio=a.kd_ratio, seed=seed + 1,
        pad_id=pad, log_every=a.log_every, name="distill"))

    models = {"teacher": teacher, "sft": student, "distilled": distilled}
    if a.control:
        control = build_tiny_model("tiny-student", tok)
        control.load_state_dict(sft_state)
        control = timed("control", lambda: train(
            control, encode(splits["train"], tok), steps=a.d_steps, batch_size=a.d_bs,
            lr=a.d_lr, warmup=0, seed=seed + 1, pad_id=pad))
        models["sft+more"] = control

    t0 = time.perf_counter()
    for name, model in models.items():
        gen = generate(model, tok, splits["test"], batch_size=a.gen_bs, max_new_tokens=a.max_new)
        res[name] = scores(tok, gen, splits["test"])
    times["evaluate"] = time.perf_counter() - t0
    return res, times, em_u


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--teacher-train", type=int)
    p.add_argument("--train", type=int)
    p.add_argument("--unlabelled", type=int)
    p.add_argument("--test", type=int)
    p.add_argument("--t-steps", type=int, default=450)
    p.add_argument("--t-bs", type=int, default=32)
    p.add_argument("--t-lr", type=float, default=2e-3)
    p.add_argument("--s-steps", type=int, default=250)
    p.add_argument("--s-bs", type=int, default=32)
    p.add_argument("--s-lr", type=float, default=2e-3)
    p.add_argument("--d-steps", type=int, default=300)
    p.add_argument("--d-bs", type=int, default=32)
    p.add_argument("--d-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--kd", choices=["fkl", "skew_fkl"], default="fkl")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--kd-ratio", type=float, default=1.0)
    p.add_argument("--gen-bs", type=int, default=100)
    p.add_argument("--max-new", type=int, default=48)
    p.add_argument("--tasks", default="", help="comma-separated task families (default: toy.DEFAULT_TASKS)")
    p.add_argument("--teacher-shape", default="", help="n_layer,n_embd,n_head overriding the preset")
    p.add_argument("--student-shape", default="", help="n_layer,n_embd,n_head overriding the preset")
    p.add_argument("--control", action="store_true")
    p.add_argument("--log-every", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for preset, shape in (("tiny-teacher", a.teacher_shape), ("tiny-student", a.student_shape)):
        if shape:
            n_layer, n_embd, n_head = (int(x) for x in shape.split(","))
            TINY_PRESETS[preset].update(n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    print(vars(a), {k: {n: v[n] for n in ("n_layer", "n_embd", "n_head")} for k, v in TINY_PRESETS.items()},
          flush=True)

    rows = {}
    all_times = []
    for seed in a.seeds:
        res, times, em_u = run_seed(seed, a)
        all_times.append(times)
        print(f"seed {seed}: teacher EM on unlabelled {em_u:.3f}; "
              + " ".join(f"{k} {v:.0f}s" for k, v in times.items()), flush=True)
        for name, (em, rl, per_task, _) in res.items():
            rows.setdefault(name, []).append((em, rl))
            tasks = " ".join(f"{k[:8]}={v:.2f}" for k, v in per_task.items())
            print(f"  {name:10s} EM {em:.3f} ROUGE-L {rl:5.1f} | {tasks}", flush=True)

    def ms(xs):
        return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)

    stage_of = {"teacher": "sft-teacher", "sft": "sft-student", "distilled": "distill",
                "sft+more": "control"}
    print("\n| model | EM | ROUGE-L | stage s |\n|---|---|---|---|")
    for name, vals in rows.items():
        em, rl = ms([v[0] for v in vals]), ms([v[1] for v in vals])
        sec = statistics.mean(t[stage_of[name]] for t in all_times)
        print(f"| {name} | {em[0]:.3f} ± {em[1]:.3f} | {rl[0]:.1f} ± {rl[1]:.1f} | {sec:.0f} |")
    for key in all_times[0]:
        print(f"{key}: {statistics.mean(t[key] for t in all_times):.1f} s (mean over seeds)")
    print(f"total: {statistics.mean(sum(t.values()) for t in all_times):.1f} s per seed")


if __name__ == "__main__":
    main()
