"""Every DistiLLM divergence on a sparse teacher: its top-k tokens and one tail bucket.

A teacher cache (teacher/cache.py) keeps, per response position, the teacher's k most
likely token ids I = (i_1..i_k), their log-probabilities log p_i at temperature T and the
log of the mass left over, log p_tail = log(1 − Σ_j p_{i_j}). The full teacher
distribution is gone; what is left is a (k + 1)-way distribution over the buckets
{i_1}, ..., {i_k} and "every other token". This module computes exactly:

    p̃ = (p_{i_1}, ..., p_{i_k}, p_tail) / Z                 (Z: the stored values' sum, 1 up to rounding)
    q̃ = (q_{i_1}, ..., q_{i_k}, q_tail),  q = softmax(z / T),  q_tail = Σ_{v ∉ I} q_v
    D̃ = D(p̃, q̃)                                             on the k + 1 buckets

where D is the dense formula of the loss (losses/dense.py, METHOD.md §1) applied to the
bucket distributions:

    fkl       Σ_j p̃_j (log p̃_j − log q̃_j)
    rkl       Σ_j q̃_j (log q̃_j − log p̃_j)
    skew_fkl  Σ_j p̃_j (log p̃_j − log m̃_j),  m̃ = α p̃ + (1−α) q̃
    skew_rkl  Σ_j q̃_j (log q̃_j − log m̃_j),  m̃ = α q̃ + (1−α) p̃
    jsd       β Σ_j p̃_j (log p̃_j − log m̃_j) + (1−β) Σ_j q̃_j (log q̃_j − log m̃_j),  m̃ = β p̃ + (1−β) q̃
    tvd       ½ Σ_j |p̃_j − q̃_j|

with j over the k + 1 buckets. This is the divergence between the two distributions
coarse-grained onto the same partition of the vocabulary, so by the data-processing
inequality D̃ ≤ D for every f-divergence here (all of them): the cache never invents
disagreement, it can only miss some inside the tail. At k = V (an empty tail, p_tail = 0
stored as −inf) p̃ = p, q̃ = q and D̃ is the dense loss exactly. The cross-entropy part
of the objective (kd_ratio < 1) needs only the label and the student: it is the dense
CE, unchanged.

Numerics. log q̃_tail is a log-sum-exp of the student's log-probabilities outside I (the
k entries set to −inf for the reduction, then restored), never log(1 − Σ q_i), which loses
all precision when the top-k hold nearly all of the student's mass. Mixtures are taken
in log space by the dense module's per-chunk functions, which run here on [n, k + 1]
arrays (0·log 0 = 0 by masking, as there).

Gradient. With g_j = q̃_j ∂D̃/∂q̃_j (the dense module's h on the buckets, up to a multiple
of q̃, which the projection below removes since Σ_j q̃_j = 1), and using
∂ log q̃_j / ∂z_v = (1[v ∈ bucket j] · q_v / q̃_j − q_v) / T:

    ∂D̃/∂z_v = (1/T) (g_j − q_v Σ_j g_j)                     v = i_j in the top-k
    ∂D̃/∂z_v = (1/T) (q_v / q̃_tail) (g_tail − q̃_tail Σ_j g_j)   v outside the top-k

q_v / q̃_tail = exp(log q_v − log q̃_tail) ≤ 1 there, so the tail part never overflows;
it is 0 where q̃_tail = 0. The gradient is formed in the forward pass, chunk by chunk,
into one buffer shaped like the student rows (as dense.py's _FusedLoss); the only
[n, V] work arrays are the chunk's log q and that gradient (one more for CE at T ≠ 1),
within dense.py's CHUNK_BYTES. No [N, V] teacher tensor exists anywhere.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .dense import (
    _DIVERGENCES,
    _USES_ALPHA,
    _budget_rows,
    _compute_dtype,
    _grad_dtype,
    _log_alphas,
    _scaled_to,
    _Spec,
    _student_side,
    _Workspace,
    add_chunk_terms,
    check_loss_params,
)

IGNORE = -100
_NEG_INF = float("-inf")


def _chunk(s, ids, lps, tail, labels, spec, w, w_ce, need_grad, ws, wk, out):
    """Loss terms (and gradient) of one chunk of n kept rows.

    s: [n, V] student rows; ids: [n, k] long; lps: [n, k], tail: [n] (teacher, any float
    dtype); labels: [n] long; w / w_ce: divergence and CE weights (floats); ws: [rows, V]
    workspace, wk: [rows, k + 1] workspace; out: [n, V] destination of the gradient or None.
    Returns (div [n] | None, ce [n] | None, grad [n, V] | None).
    """
    n, k = ids.shape
    inv_t = 1.0 / spec.temperature
    G = out if out is not None else ws("G", n)  # scratch, then the gradient   [n, V]
    A, ce, q1 = _student_side(s, labels, spec, w_ce, need_grad, ws, G)  # A: log q at T   [n, V]
    div = None
    gt = ct = None  # gradient of the top-k entries [n, k] and the tail factor [n]
    if spec.name is not None:
        lq_top = A.gather(1, ids)  # log q at the teacher's top-k   [n, k]
        A.scatter_(1, ids, _NEG_INF)
        lq_tail = torch.logsumexp(A, dim=-1)  # log Σ_{v ∉ I} q_v   [n]
        A.scatter_(1, ids, lq_top)  # A is log q again
        Ak, Bk, Gk = wk("A", n), wk("B", n), wk("G", n)  # [n, k + 1]
        Ak[:, :k].copy_(lq_top)
        Ak[:, k].copy_(lq_tail)
        Bk[:, :k].copy_(lps)
        Bk[:, k].copy_(tail)
        Bk.sub_(torch.logsumexp(Bk, dim=-1, keepdim=True))  # p̃ sums to 1 (stored values are rounded)
        la, l1a = _log_alphas(spec.alpha)
        div, h, q = _DIVERGENCES[spec.name](Ak, Bk, Gk, wk, la, l1a, spec.beta, spec.detach, need_grad)
        if need_grad:
            c = w * inv_t
            if h is None:  # the student only inside a detached mixture: no gradient from D
                gt = torch.zeros((n, k), dtype=A.dtype, device=A.device)
                ct = torch.zeros(n, dtype=A.dtype, device=A.device)
            else:
                hsum = h.sum(-1, keepdim=True)  # [n, 1]
                grad_k = h.sub(q * hsum).mul_(c)  # c (g_j − q̃_j Σg)   [n, k + 1]
                gt, ct = grad_k[:, :k], grad_k[:, k]
    if not need_grad:
        return div, ce, None
    if spec.name is None:
        src = q1 if q1 is not None else A.exp_()
        torch.mul(src, w_ce, out=G)
    else:
        if w_ce and q1 is None:  # T = 1: the CE softmax is q itself, bucket by bucket
            gt = gt + lq_top.exp() * w_ce
            ct = ct + lq_tail.exp() * w_ce
        finite = torch.isfinite(lq_tail)
        shift = torch.where(finite, lq_tail, torch.zeros_like(lq_tail)).unsqueeze(1)  # [n, 1]
        coef = torch.where(finite, ct, torch.zeros_like(ct)).unsqueeze(1)  # [n, 1]
        torch.sub(A, shift, out=G).exp_().mul_(coef)  # (q_v / q̃_tail) · tail factor   [n, V]
        G.scatter_(1, ids, gt.to(G.dtype))  # the top-k entries (inf · 0 there is overwritten)
        if q1 is not None:
            G.add_(q1, alpha=w_ce)
    if w_ce:
        G[torch.arange(n, device=G.device), labels] -= w_ce  # − w_ce · onehot(label)
    return div, ce, G


def _topk_forward(student, ids, lps, tail, labels, spec, need_grad):
    """One chunked pass over the kept rows (labels != IGNORE).

    student: [N, V]; ids, lps: [N, k]; tail: [N]; labels: [N]. Returns (objective, div_sum,
    ce_sum, gradient buffer [N, V] or None; rows of ignored positions are 0).
    """
    N, V = student.shape
    k = ids.shape[1]
    cdt = _compute_dtype(student)
    device = student.device
    keep = labels != IGNORE
    rows = keep.nonzero(as_tuple=True)[0]  # [n_kept]
    n_rows = rows.numel()
    all_kept = n_rows == N
    per_token = (1.0 / n_rows if n_rows else 0.0) if spec.mean else 1.0
    w, w_ce = float(spec.scale) * per_token, spec.w_ce * per_token
    step = max(1, min(int(spec.chunk_size), _budget_rows(V, cdt, device)))
    ws = _Workspace(min(step, max(n_rows, 1)), V, cdt, device)
    wk = _Workspace(min(step, max(n_rows, 1)), k + 1, cdt, device)
    buf = None
    if need_grad:
        buf = (torch.empty if all_kept else torch.zeros)((N, V), dtype=_grad_dtype(student.dtype), device=device)
    direct = need_grad and all_kept and buf.dtype == cdt
    objective = torch.zeros((), dtype=cdt, device=device)
    div_sum = torch.zeros((), dtype=cdt, device=device)
    ce_sum = torch.zeros((), dtype=cdt, device=device)
    for lo in range(0, n_rows, step):
        hi = min(n_rows, lo + step)
        sel = slice(lo, hi) if all_kept else rows[lo:hi]
        s = student[sel]  # [n, V] (a copy of the kept rows when some are ignored)
        out = buf[lo:hi] if direct else None
        div, ce, grad = _chunk(s, ids[sel].long(), lps[sel], tail[sel], labels[sel], spec, w, w_ce, need_grad,
                               ws, wk, out)
        add_chunk_terms((objective, div_sum, ce_sum), div, ce, w, w_ce)
        if need_grad and not direct:
            if all_kept:
                buf[lo:hi].copy_(grad)
            else:
                buf.index_copy_(0, rows[lo:hi], grad.to(buf.dtype))
    return objective, div_sum, ce_sum, buf


class _TopkLoss(torch.autograd.Function):
    """forward(student [N, V], ids, lps, tail, labels, spec) → (objective, div_sum, ce_sum);
    the gradient of the objective is formed in the forward (see the module docstring)."""

    @staticmethod
    def forward(ctx, student, ids, lps, tail, labels, spec):
        objective, div_sum, ce_sum, buf = _topk_forward(student, ids, lps, tail, labels, spec, need_grad=True)
        ctx.save_for_backward(buf)
        ctx.student_dtype = student.dtype
        ctx.mark_non_differentiable(div_sum, ce_sum)
        return objective, div_sum, ce_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_objective, _grad_div, _grad_ce):
        (buf,) = ctx.saved_tensors
        none = (None,) * 5
        if buf.dtype != ctx.student_dtype:
            return _scaled_to(buf, grad_objective, ctx.student_dtype), *none
        if grad_objective.numel() == 1 and bool(grad_objective == 1):
            return buf, *none
        return buf * grad_objective.to(buf.dtype), *none


def _rows(x, what):
    """[N, V] or [1, N, V] student rows as [N, V] (a view)."""
    if x.dim() == 3 and x.shape[0] == 1:
        x = x.reshape(x.shape[1], x.shape[2])
    if x.dim() != 2:
        raise ValueError(f"{what} must be response rows [N, V] or [1, N, V], got shape {tuple(x.shape)}")
    return x


def kd_objective_topk(student_logits, topk_ids, topk_logprobs, tail_logmass, labels, *, loss: str, kd_ratio=1.0,
                      alpha=0.1, beta=0.5, temperature=1.0, detach_mixture=False, normalizer=None,
                      chunk_size=1024):
    """``kd_objective`` with a sparse teacher: Σ_kept [kd_ratio · D̃(p̃, q̃) + (1 − kd_ratio) · CE] / normalizer.

    D̃ is the divergence ``loss`` between the teacher's (k + 1)-way distribution (top-k
    plus the tail bucket) and the student's distribution coarse-grained onto the same
    buckets, at ``temperature`` (module docstring); CE = −log softmax(student)[label] at
    temperature 1. student_logits: [N, V] or [1, N, V] response rows (as
    ``response_logits`` returns them); topk_ids: [N, k] int (distinct ids per row);
    topk_logprobs: [N, k] teacher log-probabilities at ``temperature``; tail_logmass: [N]
    log(1 − Σ top-k p), −inf when nothing is left; labels: [N] (or [1, N]) long, −100 for
    rows that count for nothing. ``normalizer``: as in ``kd_objective`` (the response
    tokens of the whole accumulation window; default: the rows kept here).

    Returns (objective: scalar tensor, stats: {"kd_sum", "ce_sum", "tokens"} as floats).
    """
    student = _rows(student_logits, "student_logits")
    N, V = student.shape
    labels = labels.reshape(-1).to(student.device)
    ids, lps, tail = topk_ids.to(student.device), topk_logprobs.to(student.device), tail_logmass.to(student.device)
    tail = tail.reshape(-1)
    if ids.dim() != 2 or ids.shape[0] != N or lps.shape != ids.shape or tail.numel() != N or labels.numel() != N:
        raise ValueError(f"top-k teacher rows must be ids [N, k], logprobs [N, k], tail [N] and labels [N] for the "
                         f"{N} student rows; got {tuple(ids.shape)}, {tuple(lps.shape)}, {tuple(tail.shape)}, "
                         f"{tuple(labels.shape)}")
    if not student.is_floating_point() or not lps.is_floating_point() or not tail.is_floating_point():
        raise ValueError("logits, top-k log-probabilities and tail log-mass must be floating-point tensors")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= V):
        raise ValueError(f"top-k ids must lie in [0, {V}): the teacher cache was written for another vocabulary")
    kd_ratio = float(kd_ratio)
    if not 0.0 <= kd_ratio <= 1.0:
        raise ValueError(f"kd_ratio={kd_ratio} must lie in [0, 1]")
    check_loss_params(loss, alpha if loss in _USES_ALPHA else 0.0, beta)
    if loss == "distillm2":
        raise ValueError("loss=distillm2 has no top-k form here: use one of fkl, rkl, skew_fkl, skew_rkl, jsd, tvd")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    spec = _Spec(name=loss if kd_ratio > 0 else None, alpha=float(alpha) if loss in _USES_ALPHA else 0.0,
                 beta=float(beta), temperature=float(temperature), detach=bool(detach_mixture),
                 scale=kd_ratio, w_ce=1.0 - kd_ratio, with_ce=True, chunk_size=int(chunk_size))
    kept = labels != IGNORE
    if normalizer is None:
        spec.mean = True
    else:
        norm = float(normalizer)
        if norm <= 0 and bool(kept.any()):
            raise ValueError(f"normalizer={norm} must be positive: pass the number of response tokens")
        inv = 1.0 / norm if norm > 0 else 0.0
        spec.scale, spec.w_ce = kd_ratio * inv, (1.0 - kd_ratio) * inv
    if torch.is_grad_enabled() and student.requires_grad:
        objective, div_sum, ce_sum = _TopkLoss.apply(student, ids, lps, tail, labels, spec)
    else:
        objective, div_sum, ce_sum, _ = _topk_forward(student, ids, lps, tail, labels, spec, need_grad=False)
    stats = {"kd_sum": float(div_sum), "ce_sum": float(ce_sum), "tokens": float(kept.sum())}
    return objective, stats


@torch.no_grad()
def topk_of_logits(logits, k: int, *, temperature: float = 1.0, chunk_size: int = 1024):
    """The sparse teacher of logit rows: (ids [N, k] long, logprobs [N, k], tail [N]) at ``temperature``.

    logprobs = log softmax(logits / T) at the k largest entries (descending), tail =
    log Σ of the rest (a log-sum-exp, −inf when k = V). logits: [N, V] or [1, N, V];
    chunked within CHUNK_BYTES. float32 results (float64 for float64 logits).
    """
    rows = logits.reshape(-1, logits.shape[-1])  # [N, V]
    N, V = rows.shape
    k = min(int(k), V)
    cdt = _compute_dtype(logits)
    ids = torch.empty((N, k), dtype=torch.long, device=rows.device)
    lps = torch.empty((N, k), dtype=cdt, device=rows.device)
    tail = torch.empty(N, dtype=cdt, device=rows.device)
    step = max(1, min(int(chunk_size), _budget_rows(V, cdt, rows.device)))
    inv_t = 1.0 / float(temperature)
    for lo in range(0, N, step):
        hi = min(N, lo + step)
        lp = torch.log_softmax(rows[lo:hi].to(cdt) * inv_t if inv_t != 1.0 else rows[lo:hi].to(cdt), dim=-1)
        values, index = lp.topk(k, dim=-1)
        ids[lo:hi], lps[lo:hi] = index, values
        tail[lo:hi] = torch.logsumexp(lp.scatter_(1, index, _NEG_INF), dim=-1) if k < V else _NEG_INF
    return ids, lps, tail


__all__ = ["kd_objective_topk", "topk_of_logits"]
