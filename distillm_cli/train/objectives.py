"""The distillation objectives as the distill recipes use them: the token-level objective's
settings from the loss config, its value on one batch (teacher seam + student forward + fused
loss) and its token mean over the fixed validation batches; DistiLLM-2's on one pair batch.

With loss.fused_head=true both models' output heads are fused into the loss
(losses/fused_head.py): the teacher gives its response rows' last hidden states and its head,
the student's forward stops at its body, and the loss runs inside the student's forward
(models.head.response_rows), with both heads gathered under ZeRO-3. Without it, both models
make the logits of the response rows and the loss reads those (losses/dense.py).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.formats import IGNORE
from ..losses import (
    distillm2_head,
    distillm2_rows,
    head_label_logprobs,
    kd_objective,
    kd_objective_head,
    kd_objective_topk,
)
from ..models.head import gathered, output_head, response_rows
from ..models.loading import response_logits
from ..runtime import Runtime
from .contrastive import per_sample_probability, response_label_probability
from .engine import mean_over_batches


def kd_params(loss_cfg, **overrides) -> dict:
    """`kd_objective`'s keyword arguments from a LossConfig, and `fused_head`; `overrides` replace single ones."""
    params = {"loss": loss_cfg.name, "kd_ratio": loss_cfg.kd_ratio, "alpha": loss_cfg.alpha, "beta": loss_cfg.beta,
              "temperature": loss_cfg.temperature, "detach_mixture": loss_cfg.detach_mixture,
              "chunk_size": loss_cfg.chunk_size, "fused_head": loss_cfg.fused_head}
    return {**params, **overrides}


def batch_kd_loss(engine, teacher, batch: dict, runtime: Runtime, vocab: int, params: dict,
                  normalizer: float) -> tuple[torch.Tensor, dict]:
    """The objective on one batch: its token sum / normalizer, and the stats of kd_objective."""
    params = dict(params)
    fused_head = params.pop("fused_head")
    if hasattr(teacher, "response_topk"):  # a top-k cache (teacher/cache.py): the sparse loss, losses/topk.py
        ids, logprobs, tail = teacher.response_topk(batch)  # [N, k], [N, k], [N]
        student_logits, labels = response_logits(engine, batch, runtime.device, vocab)  # [1, N, V]
        n = ids.shape[0]  # an all-masked batch comes back as [B, T, V] rows, none of them kept
        return kd_objective_topk(student_logits.flatten(0, -2)[:n], ids, logprobs, tail, labels.flatten()[:n],
                                 normalizer=normalizer, **params)
    if fused_head:
        teacher_hidden, _ = teacher.response_hidden(batch)  # [N, H_t]
        teacher_head, student_head = teacher.output_head(), output_head(engine, vocab)

        def objective(hidden: torch.Tensor, labels: torch.Tensor):  # runs inside the student's forward
            with gathered(student_head), gathered(teacher_head):
                return kd_objective_head(hidden, student_head, teacher_hidden, teacher_head, labels,
                                         normalizer=normalizer, **params)

        return response_rows(engine, batch, runtime.device, objective)
    teacher_logits, labels = teacher.response_logits(batch)  # [1, N, V]
    student_logits, _ = response_logits(engine, batch, runtime.device, vocab)  # [1, N, V]
    return kd_objective(student_logits, teacher_logits, labels, normalizer=normalizer, **params)


def batch_ce_loss(engine, batch: dict, runtime: Runtime, vocab: int, *, normalizer: float, chunk_size: int,
                  fused_head: bool) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of the student on the batch's response tokens (SFT, DistiLLM's LM term):
    token sum / normalizer, and the stats of kd_objective (ce_sum, tokens)."""
    params = {"loss": "fkl", "kd_ratio": 0.0, "normalizer": normalizer, "chunk_size": chunk_size}
    if fused_head:
        head = output_head(engine, vocab)

        def objective(hidden: torch.Tensor, labels: torch.Tensor):  # runs inside the student's forward
            with gathered(head):
                return kd_objective_head(hidden, head, None, None, labels, **params)

        return response_rows(engine, batch, runtime.device, objective)
    logits, labels = response_logits(engine, batch, runtime.device, vocab)  # [1, N, V]: response positions
    return kd_objective(logits, None, labels, **params)


def validation_kd_loss(engine, teacher, batches: list[dict], runtime: Runtime, vocab: int, params: dict) -> float:
    """Token mean of the objective over validation batches (all ranks), the student in eval mode."""
    def loss_sum(batch: dict) -> tuple[float, float]:
        loss, stats = batch_kd_loss(engine, teacher, batch, runtime, vocab, params, normalizer=1.0)
        return float(loss), stats["tokens"]

    engine.eval()
    return mean_over_batches(loss_sum, batches, runtime)


def batch_pair_loss(engine, teacher, batch: dict, runtime: Runtime, vocab: int, *,
                    alphas: Callable[[torch.Tensor], tuple], beta: float, temperature: float,
                    chunk_size: int, fused_head: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DistiLLM-2's loss on one pair batch [teacher responses; student responses] (pair_batch):
    the mean over its prompts, as `losses.distillm2_rows` defines it. Returns (loss, alpha_t, alpha_s).

    Both models run the output head on the response rows alone (teacher.response_logits,
    response_logits: [1, N_t + N_s, V], never a prompt or padding position), or, with
    fused_head, not at all outside the loss (losses.distillm2_head). The alpha curriculum's
    gap of each response (mean teacher minus mean student token probability) comes first,
    from a chunked pass over the same rows, since the alphas depend on it:
    ``alphas(gap [2n]) -> (alpha_t [n], alpha_s [n])``, floats or tensors on the device.
    """
    n = int(batch["pairs"])
    sample = (batch["labels"] != IGNORE).nonzero(as_tuple=True)[0].to(runtime.device)  # [N] the sequence of each row
    if fused_head:
        teacher_hidden, labels = teacher.response_hidden(batch)  # [N, H_t], [N]
        teacher_head, student_head = teacher.output_head(), output_head(engine, vocab)

        def objective(hidden: torch.Tensor, labels: torch.Tensor):  # runs inside the student's forward
            with gathered(student_head), gathered(teacher_head):
                gap = (per_sample_probability(head_label_logprobs(teacher_hidden, teacher_head, labels,
                                                                  chunk_size=chunk_size), sample, 2 * n)
                       - per_sample_probability(head_label_logprobs(hidden.detach(), student_head, labels,
                                                                    chunk_size=chunk_size), sample, 2 * n))  # [2n]
                alpha_t, alpha_s = alphas(gap)
                loss = distillm2_head(hidden, student_head, teacher_hidden, teacher_head, sample, n, alpha_t=alpha_t,
                                      alpha_s=alpha_s, beta=beta, temperature=temperature, chunk_size=chunk_size)
            return loss, alpha_t, alpha_s

        return response_rows(engine, batch, runtime.device, objective)
    teacher_rows, labels = teacher.response_logits(batch)  # [1, N, V]
    student_rows, _ = response_logits(engine, batch, runtime.device, vocab)  # [1, N, V]
    if not sample.numel():  # no response token (response_logits then gives every position): no rows
        teacher_rows, student_rows = (x.flatten(0, -2)[:0] for x in (teacher_rows, student_rows))  # [0, V]
        labels = labels.flatten()[:0]
    gap = (response_label_probability(teacher_rows, labels, sample, 2 * n, chunk_size)
           - response_label_probability(student_rows.detach(), labels, sample, 2 * n, chunk_size))  # [2n]
    alpha_t, alpha_s = alphas(gap)
    loss = distillm2_rows(student_rows, teacher_rows, sample, n, alpha_t=alpha_t, alpha_s=alpha_s, beta=beta,
                          temperature=temperature, chunk_size=chunk_size)
    return loss, alpha_t, alpha_s
