"""How far one distill step is from its physical limit: the step over the sum of its unavoidable parts.

Same shapes as scripts/bench_vs_trl.py: random-init GPT-2 teacher 4 x 128 and student
2 x 64, vocabulary 50257, batch 8 x 128 tokens (96 completion), forward KL, 2 threads;
``--pair smollm2``: the model=smollm2 preset's SmolLM2-135M-Instruct teacher and its
6-layer student (Llama, tied head, vocabulary 49152), same batch shape.

* full step: distillm's own step, as the distill stage runs it through engine.train for
  one micro-batch: teacher forward under no_grad, student forward through the DeepSpeed
  engine, ``kd_objective`` (fused chunked forward KL), the finiteness check,
  ``engine.backward(loss, scale_wrt_gas=False)``, ``engine.step()`` (gradient clipping at
  1.0, AdamW, LR schedule) and reading the loss (the loop's per-step logging is not in it).
* the parts, each measured alone, on separate copies of the same models:
  - teacher forward under no_grad (the logits [B, T, V] included);
  - student forward + backward with the cheapest loss that still sends a gradient through
    the full logits: ``F.cross_entropy`` on the labels;
  - the optimizer step: ``torch.optim.AdamW.step()`` over the student's parameters (the
    optimizer build_engine makes, same groups and settings), gradients present. On CUDA
    the weights are bf16 with fp32 master weights, so the step also copies the masters
    back into the bf16 weights, as any mixed-precision step must.

distillm's step runs the output head on the response positions only (96 of 128 here), which
a plain trainer does not. So there are two ratios: ``step_overhead_ratio`` against the parts
as a plain trainer runs them (logits at every position), and the stricter
``step_overhead_ratio_response_only`` against the same parts with the head on the response
positions too (the body's hidden states cut to those rows, then the head), where only the divergence
and the glue are left.

Where the time of the fused step goes (``breakdown``), from parts measured the same way,
on the same copies, in the same alternated rounds:

  - teacher forward: the teacher's body under no_grad, its last hidden states at the
    response positions (what the fused step takes from the teacher);
  - student forward: the student's body with autograd on, hidden states at the response rows;
  - student backward: (body forward + backward of a fixed random gradient on those rows)
    minus the body forward;
  - loss: ``kd_objective_head`` (the fused forward KL, both heads inside) on real hidden states
    of both models, forward + backward (its gradient into the student's rows and head weight);
    the forward alone under no_grad is reported beside it;
    and the same loss unfused (loss.fused_head=false: both heads make the [N, V] rows, then
    ``kd_objective``), forward + backward, to compare the two in the same rounds;
  - gradient clipping (``clip_grad_norm_`` at 1.0) and the optimizer step (AdamW);
  - engine overhead: the full step minus all of the above: DeepSpeed's forward/backward/step
    bookkeeping, the teacher seam, hooks, the finiteness check, the loss read-back.

``step_overhead_ratio = full / (teacher + student + optimizer)``: 1.0 would mean the
distillation costs nothing beyond a teacher forward and a plain CE training step, so
what is above 1 is the divergence itself (teacher softmax, KL, its gradient) plus the
engine's bookkeeping (clipping, schedule, checks). All timings are medians over
``--repeats`` rounds that alternate the four measurements (rotating their order) in one
process, after one warm-up of each.

On CUDA the models run in bf16 and the report adds model FLOPs utilisation:
6 * P * tokens / time / peak, with P the student's parameters without the position
embeddings (the tied output head counted once) and tokens = B * T, for the full step
(``mfu``) and for the student's forward + backward alone (``mfu_student_fwd_bwd``);
the peak is the GPU's dense bf16 peak (table below, or ``--peak-tflops``).

    .venv/bin/python scripts/bench_step.py [--repeats 10] [--quick] [--out bench/step.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_trl import (  # noqa: I001  (the sibling script: shared models, data and distillm set-up)
    BATCH,
    COMPLETION,
    PAIRS,
    SEQ,
    compose_distill_config,
    device_name,
    distill_micro_loss,
    distillm_batches,
    make_token_ids,
    pair_pad_id,
    pair_vocab,
    setup_distillm,
)

# Dense bf16 tensor-core peak, FLOP/s (vendor data sheets; SXM parts unless named).
PEAK_BF16 = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100": 989.4e12, "A100": 312.0e12, "L40S": 362.0e12,
             "L4": 121.0e12}


def peak_flops(name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # most specific names first
        if key in name:
            return value
    return None


def trained_params(model) -> int:
    """Parameters that cost FLOPs per token: all (tied head counted once) but the position embeddings."""
    return sum(p.numel() for n, p in model.named_parameters() if "wpe" not in n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; --quick: 3)")
    parser.add_argument("--quick", action="store_true", help="3 timed rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU bf16 peak for MFU (default: table)")
    parser.add_argument("--pair", choices=PAIRS, default="gpt2", help="gpt2 (default) or smollm2 (model=smollm2)")
    parser.add_argument("--out", default=None, help="default bench/step.json; --pair smollm2: bench/step_smollm2.json")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 10)
    args.out = args.out or ("bench/step_smollm2.json" if args.pair == "smollm2" else "bench/step.json")

    import torch
    import torch.nn.functional as F

    from distillm_cli.losses import kd_objective, kd_objective_head
    from distillm_cli.models.head import output_head
    from distillm_cli.runtime import all_reduce_sum
    from distillm_cli.train.objectives import kd_params

    cuda = torch.cuda.is_available()
    vocab = pair_vocab(args.pair)
    tmp = tempfile.TemporaryDirectory(prefix="bench_step_")
    cfg = compose_distill_config(steps=10**6, lr=args.lr, threads=args.threads, cuda=cuda, run_dir=tmp.name,
                                 pair=args.pair)
    if not cfg.loss.fused_head:
        raise SystemExit("the breakdown is of the fused-head step (loss.fused_head=true, the default)")
    runtime, teacher, engine, _ = setup_distillm(cfg, args.seed, args.pair)
    device = runtime.device
    batch = distillm_batches(make_token_ids(1, args.seed + 2, args.pair), pad_id=pair_pad_id(args.pair))[0]
    tokens = float((batch["labels"] != -100).sum())
    micro_loss = distill_micro_loss(cfg, teacher, engine, runtime, vocab)
    engine.train()

    # Separate copies for the parts, so they never touch the engine's weights or gradients.
    model = teacher.model  # the LiveTeacher's model (an engine under ZeRO-3): its forward is a part
    plain_teacher = copy.deepcopy(model.module if hasattr(model, "module") else model).eval()
    plain_student = copy.deepcopy(engine.module).train()
    params = [p for p in plain_student.parameters() if p.requires_grad]
    # The optimizer steps its own copy of the weights (fp32 masters on CUDA, refreshed into the
    # bf16 weights after each step), so the student part's gradients never reach it.
    masters = [p.detach().float().clone().requires_grad_() for p in params]
    groups = [{"params": [p for p in masters if p.ndim >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in masters if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.train.lr)
    for p in masters:
        p.grad = torch.randn_like(p) * 1e-3
    ids = batch["input_ids"].to(device)
    mask = batch["attention_mask"].to(device)
    labels = batch["labels"].to(device)

    def full_step() -> None:
        loss, _ = micro_loss(batch, tokens)
        if all_reduce_sum(0.0 if torch.isfinite(loss).all() else float("inf"), runtime) != 0.0:
            raise RuntimeError("non-finite loss")
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()
        float(loss.detach())

    def teacher_forward():
        with torch.no_grad():
            return plain_teacher(input_ids=ids, attention_mask=mask).logits  # [B, T, V]

    def student_forward_backward() -> None:
        logits = plain_student(input_ids=ids, attention_mask=mask).logits  # [B, T, V]
        F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100).backward()

    # The same two parts with the output head on the response positions only, as distillm's own
    # step does (models/head.py): the strict limit, in which skipping prompt logits is no gain.
    keep = labels != -100

    def body_rows(model):  # the body's last hidden states at the kept rows: [N, H]
        return model.base_model(input_ids=ids, attention_mask=mask)[0][keep]

    def response_rows(model):  # the body, then the head on the kept rows only: [N, V]
        return model.get_output_embeddings()(body_rows(model))

    def teacher_forward_response():
        with torch.no_grad():
            return response_rows(plain_teacher)

    def student_forward_backward_response() -> None:
        F.cross_entropy(response_rows(plain_student), labels[keep]).backward()

    # The breakdown of the fused step (module docstring): the bodies alone, and the fused loss on real rows.
    def teacher_body_forward():
        with torch.no_grad():
            return body_rows(plain_teacher)  # [N, H_t]

    def student_body_forward() -> None:
        body_rows(plain_student)  # autograd on: the graph is built, then dropped

    with torch.no_grad():
        row_grad = torch.randn(int(tokens), plain_student.config.hidden_size, device=device,
                               generator=torch.Generator(device=device).manual_seed(args.seed)) * 1e-3

    def student_body_forward_backward() -> None:
        body_rows(plain_student).backward(row_grad.to(plain_student.dtype))

    loss_params = kd_params(cfg.loss)
    loss_params.pop("fused_head")
    teacher_rows = teacher_body_forward()  # [N, H_t]
    with torch.no_grad():
        student_rows = body_rows(plain_student)  # [N, H]
    student_head, teacher_head = output_head(plain_student, vocab), output_head(plain_teacher, vocab)
    row_labels = labels[keep]

    def loss_forward() -> None:
        with torch.no_grad():
            kd_objective_head(student_rows, student_head, teacher_rows, teacher_head, row_labels,
                              normalizer=tokens, **loss_params)

    def loss_forward_backward() -> None:
        rows = student_rows.detach().requires_grad_()
        loss, _ = kd_objective_head(rows, student_head, teacher_rows, teacher_head, row_labels, normalizer=tokens,
                                    **loss_params)
        loss.backward()

    def loss_unfused_forward_backward() -> None:  # loss.fused_head=false: both heads make [N, V] rows first
        rows = student_rows.detach().requires_grad_()
        with torch.no_grad():
            teacher_logits = teacher_head.logits(teacher_rows)  # [N, V]
        loss, _ = kd_objective(student_head.logits(rows)[None], teacher_logits[None], row_labels[None],
                               normalizer=tokens, **loss_params)
        loss.backward()

    def grad_clip() -> None:
        torch.nn.utils.clip_grad_norm_(masters, cfg.train.grad_clip)

    def optimizer_step() -> None:
        optimizer.step()
        if cuda:
            with torch.no_grad():
                for p, m in zip(params, masters):
                    p.copy_(m)  # fp32 master -> bf16 weight

    parts = {"full_step": full_step, "teacher_forward": teacher_forward,
             "student_forward_backward_ce": student_forward_backward, "optimizer_step": optimizer_step,
             "teacher_forward_response": teacher_forward_response,
             "student_forward_backward_ce_response": student_forward_backward_response,
             "teacher_body_forward": teacher_body_forward, "student_body_forward": student_body_forward,
             "student_body_forward_backward": student_body_forward_backward, "loss_forward": loss_forward,
             "loss_forward_backward": loss_forward_backward, "grad_clip": grad_clip,
             "loss_unfused_forward_backward": loss_unfused_forward_backward}

    def timed(name: str) -> float:
        plain_student.zero_grad(set_to_none=True)  # fresh gradients each pass, as after engine.step()
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        parts[name]()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for name in parts:  # warm-up
        timed(name)
    times = {name: [] for name in parts}
    names = list(parts)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(timed(name))
    med = {name: statistics.median(values) for name, values in times.items()}
    limit = med["teacher_forward"] + med["student_forward_backward_ce"] + med["optimizer_step"]
    strict = med["teacher_forward_response"] + med["student_forward_backward_ce_response"] + med["optimizer_step"]
    breakdown = {
        "teacher_forward": med["teacher_body_forward"],
        "student_forward": med["student_body_forward"],
        "loss_forward_backward": med["loss_forward_backward"],
        "student_backward": med["student_body_forward_backward"] - med["student_body_forward"],
        "grad_clip": med["grad_clip"],
        "optimizer_step": med["optimizer_step"],
    }
    breakdown["engine_overhead"] = med["full_step"] - sum(breakdown.values())
    result = {
        "device": device_name(args.threads),
        "pair": args.pair,
        "breakdown_s": breakdown,
        "breakdown_fraction": {name: seconds / med["full_step"] for name, seconds in breakdown.items()},
        "loss_forward_only_s": med["loss_forward"],
        "loss_unfused_forward_backward_s": med["loss_unfused_forward_backward"],
        "setup": {"vocab": vocab, "batch": BATCH, "seq_len": SEQ, "completion_tokens": COMPLETION,
                  "loss": cfg.loss.name, "dtype": cfg.model.dtype, "threads": torch.get_num_threads(),
                  "repeats": args.repeats},
        "step_overhead_ratio": med["full_step"] / limit,
        "seconds": med,
        "sum_of_parts_s": limit,
        "step_overhead_ratio_response_only": med["full_step"] / strict,
        "sum_of_parts_response_only_s": strict,
        "times": times,
    }
    if cuda:
        peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(torch.cuda.get_device_name())
        n_params, n_tokens = trained_params(plain_student), BATCH * SEQ
        result["mfu_params"], result["mfu_tokens"], result["peak_flops"] = n_params, n_tokens, peak
        if peak:
            result["mfu"] = 6 * n_params * n_tokens / med["full_step"] / peak
            result["mfu_student_fwd_bwd"] = 6 * n_params * n_tokens / med["student_forward_backward_ce"] / peak
        else:
            result["mfu_note"] = "unknown GPU peak: pass --peak-tflops"
    print(f"{result['device']}; median of {args.repeats} alternated rounds")
    for name, seconds in med.items():
        print(f"  {name:<38}{seconds * 1000:>9.1f} ms")
    print(f"  {'sum of the parts':<38}{limit * 1000:>9.1f} ms")
    print(f"  {'same, head on responses only':<38}{strict * 1000:>9.1f} ms"
          f"  -> ratio {result['step_overhead_ratio_response_only']:.2f}")
    print(f"\nwhere the fused step's {med['full_step'] * 1000:.0f} ms go (parts alone; engine overhead = the rest)")
    for name, seconds in breakdown.items():
        print(f"  {name:<38}{seconds * 1000:>9.1f} ms {100 * seconds / med['full_step']:>6.1f} %")
    print(f"  (loss forward alone, no_grad: {med['loss_forward'] * 1000:.1f} ms; the same loss unfused, heads on "
          f"the rows then the dense loss, forward+backward: {med['loss_unfused_forward_backward'] * 1000:.1f} ms)")
    print(f"step_overhead_ratio = {result['step_overhead_ratio']:.2f}" +
          (f"; MFU {100 * result['mfu']:.1f}% (student fwd+bwd alone {100 * result['mfu_student_fwd_bwd']:.1f}%)"
           if "mfu" in result else ""))
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
