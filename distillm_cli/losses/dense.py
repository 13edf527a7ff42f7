"""Token-level distillation losses of DistiLLM and DistiLLM-2 on full-vocabulary logits, fused and chunked.

Notation (per response position, summed over the vocabulary V):
p = softmax(teacher_logits / T), q = softmax(student_logits / T).

    fkl       KL(p ‖ q)               = Σ p (log p − log q)
    rkl       KL(q ‖ p)               = Σ q (log q − log p)
    skew_fkl  KL(p ‖ α p + (1−α) q)   DistiLLM's SKL   (Ko et al., ICML 2024, §3)
    skew_rkl  KL(q ‖ α q + (1−α) p)   DistiLLM's SRKL  (Ko et al., ICML 2024, §3)
    jsd       β KL(p ‖ m) + (1−β) KL(q ‖ m),  m = β p + (1−β) q   (generalized JSD, GKD)
    tvd       ½ Σ |p − q|

Every loss here is the *true* divergence: it is 0 exactly when the student equals
the teacher. The DistiLLM authors' code logs skew_fkl as the cross-entropy
−Σ p log m = KL(p ‖ m) + H(p): it has the same gradient (the teacher entropy H(p)
does not depend on the student) but a different value, offset by the teacher's
entropy. Values reported by distillm are therefore lower than the authors' logs
by H(p) for skew_fkl; the training signal is identical.

Numerics. Everything is computed from log-probabilities (log_softmax) in float32
at least (float64 inputs stay float64). The mixture is taken in log space,
log m = logaddexp(log α + log p, log(1−α) + log q), so it never underflows to
log 0 where both probabilities are tiny (the authors take log of the fp32
probability mixture, which turns 0·log 0 into NaN). Terms whose weight
probability is exactly 0 (for example vocabulary entries masked with −inf
logits) count as 0 (0·log 0 = 0), selected with masked_fill, never by
multiplying inf with 0. Caveat: plain fkl is +inf where the student gives −inf
to a token the teacher supports (rkl: the reverse); that is the true value (the
gradient is then meaningless). The skew losses (α > 0), jsd and tvd stay finite
for any support. +inf or NaN logits are not supported (NaN propagates).

Memory and speed. All entry points share one fused pass (``_FusedLoss``): only
the kept positions (mask true) are visited, in chunks of at most ``chunk_size``
rows, further capped so that one [rows, V] work array stays within
``CHUNK_BYTES`` (32 MiB on CPU, 256 MiB on accelerators). For each chunk the
loss *and* its analytic gradient with respect to the student logits are formed
at once, and the gradient is written into one buffer shaped like the student
logits (rows of masked positions are 0). For float32 / float64 students the
buffer has the student's dtype and backward hands it on as it is (scaled when
the incoming gradient is not 1), so beyond the logits and that buffer, which is
the gradient autograd would hold anyway, only 2–4 chunk-sized work arrays
exist; they are allocated once per call and reused by every chunk (on CPU a
fresh allocation per chunk costs page faults). A loss made of different
divergences on different rows (distillm2_rows: SKL on the teacher-response rows, SRKL on
the student-response rows) runs one pass per part into the same single buffer
(_fused_parts). For fp16 / bf16 students the
buffer is float32 (the compute dtype) and backward first multiplies it by the
incoming gradient, in float32, and only then rounds to the student's dtype, as
autograd through an upcast would: a token-normalised loss has per-entry
gradients of 1e-7–1e-10, below fp16's smallest subnormal (6e-8), which reach
fp16's range only once DeepSpeed's loss scale (the incoming gradient) is
applied; an fp16 buffer would flush most of them to 0 first (and the scale
2^16 itself is inf in fp16), a bf16 one would round them twice. The cost: the
buffer holds 4 bytes per logit instead of 2 until backward. With a student
that does not require grad (evaluation) no buffer is made. Measured on
CPU (scripts/bench_loss.py, vocab 50257 × 4096 positions): peak memory ≈ 0.13–0.22×
and time ≈ 0.4–0.5× a straightforward full-vocabulary implementation.

Analytic gradients. For a loss f(q) with q = softmax(z / T) and h = q ⊙ ∂f/∂q
(the partial derivative through every occurrence of q, the mixture included),
∂f/∂z = (h − q Σ_v h) / T. Per loss (before the projection):
    fkl       h = −p
    rkl       h = q (log q − log p)           (+q, which the projection removes)
    skew_fkl  h = −(1−α) p q / m              (0 with detach_mixture)
    skew_rkl  h = q (log q − log m) − α q² / m   (the last term absent with detach_mixture)
    jsd       h = (1−β) q (log q − log m)     (same with or without detach: ∂f/∂m = −1
                                               is constant over the vocabulary)
    tvd       h = ½ q sign(q − p)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

LOSS_NAMES = ("fkl", "rkl", "skew_fkl", "skew_rkl", "jsd", "tvd")
_USES_ALPHA = ("skew_fkl", "skew_rkl")
_USES_BETA = ("jsd", "distillm2")


def check_loss_params(name: str, alpha: float, beta: float) -> None:
    """Refuse an unknown loss name or out-of-range alpha / beta with one clear sentence.

    alpha must lie in [0, 1) (alpha = 1 would make the skew mixture ignore the
    student); beta in (0, 1), checked only for jsd and distillm2.
    """
    known = LOSS_NAMES + ("distillm2",)
    if name not in known:
        raise ValueError(f"unknown loss '{name}': set loss.name to one of {', '.join(known)}")
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"loss alpha={alpha} is out of range: set loss.alpha to a value in [0, 1) (paper: 0.1)")
    if name in _USES_BETA and not 0.0 < float(beta) < 1.0:
        raise ValueError(f"loss beta={beta} is out of range: set loss.beta to a value in (0, 1) (paper: 0.5)")


# ----------------------------------------------------------------------------
# Per-chunk math. All [n, V] work arrays come from a _Workspace that is
# allocated once per call and reused by every chunk (fresh allocations per
# chunk would cost a page-faulting mmap each on CPU). Each divergence gets
# A = log q and B = log p of one chunk (compute dtype, overwritable) and G, a
# scratch array that receives the gradient afterwards (it may be the gradient
# buffer itself), and returns (div [n], h [n, V] | None, q [n, V] | None):
# h = q ⊙ ∂f/∂q up to a multiple of q (the projection h − q Σh removes it),
# q = softmax. h is None when the student gets no gradient from the loss.
# ----------------------------------------------------------------------------

_NEG_INF = float("-inf")
# Upper bound on one [rows, V] work array: rows per chunk = min(chunk_size,
# budget // (V · itemsize)). Measured on CPU: ≤ 32 MiB keeps the temporaries
# to a small fraction of the (unavoidable) gradient of the logits.
CHUNK_BYTES = {"cpu": 32 * 2**20, "other": 256 * 2**20}


class _Workspace:
    """[rows, V] work arrays shared by the chunks of one call, made on first use."""

    def __init__(self, rows, vocab, dtype, device):
        self.rows, self.vocab, self.dtype, self.device = rows, vocab, dtype, device
        self.bufs = {}

    def __call__(self, key, n, dtype=None):
        buf = self.bufs.get(key)
        if buf is None:
            shape = (self.rows, self.vocab)
            buf = self.bufs[key] = torch.empty(shape, dtype=dtype or self.dtype, device=self.device)
        return buf[:n]  # [n, V]


def _log_mix_into(out, la, lx, l1a, ly, tmp):
    """out = log(a·x + (1−a)·y) = logaddexp(log a + log x, log(1−a) + log y). [n, V]"""
    torch.add(lx, la, out=out)
    torch.add(ly, l1a, out=tmp)
    return torch.logaddexp(out, tmp, out=out)


def _row_sums(term, zero_weight):
    """(Σ_v term [n], clean) for term = w ⊙ (a log-ratio) with 0 · ±inf = 0 (the rule 0 · log 0 = 0).

    Summed first: a finite row sum means no entry was NaN or infinite, so none needed the rule
    (clean = True, and every entry of term is already right). Only otherwise (−inf log-probabilities,
    rare) is the mask formed, ``zero_weight()``: [n, V] bool, true where w = 0 (and nowhere w > 0);
    those entries are set to 0 and the rows summed again. NaN inputs stay NaN. This spares an [n, V]
    mask and a masked fill on every chunk (together as costly as two exps on CPU)."""
    div = term.sum(-1)  # [n]
    if bool(torch.isfinite(div).all()):
        return div, True
    term.masked_fill_(zero_weight(), 0.0)
    return term.sum(-1), False


def _no_mass(d, lm):
    """Where p = 0, from d = log p − log m and log m alone (p itself overwritten): log p = −inf
    makes d = −inf where log m is finite, and NaN where log m = −inf (d = +inf there: p > 0)."""
    return (d == _NEG_INF) | ((lm == _NEG_INF) & d.isnan())


def _div_fkl(A, B, G, ws, la, l1a, beta, detach, need_grad):
    p = torch.exp(B, out=G)  # [n, V]
    div, _ = _row_sums(B.sub_(A).mul_(p), lambda: p == 0)  # Σ p (log p − log q)   [n]
    if not need_grad:
        return div, None, None
    return div, p.neg_(), A.exp_()  # h = −p


def _div_rkl(A, B, G, ws, la, l1a, beta, detach, need_grad):
    d = B.neg_().add_(A)  # log q − log p
    q = A.exp_()  # [n, V]
    term = d.mul_(q)  # q (log q − log p)
    div, _ = _row_sums(term, lambda: q == 0)  # [n]
    return div, (term if need_grad else None), q


def _div_skew_fkl(A, B, G, ws, la, l1a, beta, detach, need_grad):
    n = A.shape[0]
    C = ws("C", n)
    lm = _log_mix_into(G, la, B, l1a, A, C)  # log m = log(α p + (1−α) q)   [n, V]
    p = torch.exp(B, out=C)
    d = B.sub_(lm)  # log p − log m
    div, clean = _row_sums(p.mul_(d), lambda: _no_mass(d, lm))  # [n] (p is overwritten by the terms)
    if not need_grad:
        return div, None, None
    if detach:  # the student appears only inside the (constant) mixture
        return div, None, A.exp_()
    # h = −(1−α) p q / m = −(1−α) exp(log p + log q − log m); 0 where m = 0 (only possible when
    # a row was not clean: m = 0 makes that entry's log p − log m NaN).
    h = d.add_(A).exp_()
    if not clean:
        h.masked_fill_(lm == _NEG_INF, 0.0)
    h.mul_(l1a.exp().neg_() if torch.is_tensor(l1a) else -math.exp(l1a))
    return div, h, A.exp_()


def _div_skew_rkl(A, B, G, ws, la, l1a, beta, detach, need_grad):
    n = A.shape[0]
    C = ws("C", n)
    lm = _log_mix_into(G, la, A, l1a, B, C)  # log m = log(α q + (1−α) p)   [n, V]
    d = torch.sub(A, lm, out=B)  # log q − log m
    v = None
    if need_grad and not detach and not _is_zero(la):
        v = torch.add(A, d, out=C).add_(la).exp_()  # α q² / m = exp(log α + 2 log q − log m)
    q = A.exp_()
    term = d.mul_(q)  # q (log q − log m)
    div, clean = _row_sums(term, lambda: q == 0)  # [n]
    if not need_grad:
        return div, None, None
    if v is not None:
        if not clean:  # NaN where q = m = 0 (not possible in a clean row)
            v.masked_fill_(q == 0, 0.0)
        term.sub_(v)
    return div, term, q


def _div_jsd(A, B, G, ws, la, l1a, beta, detach, need_grad):
    n = A.shape[0]
    C = ws("C", n)
    lm = _log_mix_into(G, math.log(beta), B, math.log1p(-beta), A, C)  # log(β p + (1−β) q)   [n, V]
    p = torch.exp(B, out=C)
    d = B.sub_(lm)  # log p − log m
    div_p, _ = _row_sums(p.mul_(d), lambda: _no_mass(d, lm))  # Σ p (log p − log m)   [n]
    q = torch.exp(A, out=C)
    term = A.sub_(lm).mul_(q)  # q (log q − log m)
    div_q, _ = _row_sums(term, lambda: q == 0)
    div = beta * div_p + (1.0 - beta) * div_q  # [n]
    if not need_grad:
        return div, None, None
    return div, term.mul_(1.0 - beta), q


def _div_tvd(A, B, G, ws, la, l1a, beta, detach, need_grad):
    q = A.exp_()  # [n, V]
    diff = B.exp_().sub_(q).neg_()  # q − p
    sign = torch.sign(diff, out=G)
    div = 0.5 * diff.mul_(sign).sum(-1)  # ½ Σ |q − p|   [n]
    if not need_grad:
        return div, None, None
    return div, sign.mul_(q).mul_(0.5), q


_DIVERGENCES = {
    "fkl": _div_fkl,
    "rkl": _div_rkl,
    "skew_fkl": _div_skew_fkl,
    "skew_rkl": _div_skew_rkl,
    "jsd": _div_jsd,
    "tvd": _div_tvd,
}


def _is_zero(la) -> bool:
    """True when log α is the python float −inf (α = 0: no mixture term)."""
    return not torch.is_tensor(la) and la == _NEG_INF


def _log_alphas(alpha):
    """(log α, log(1 − α)) as python floats, or as [n, 1] tensors for per-row α."""
    if torch.is_tensor(alpha):
        return torch.log(alpha), torch.log1p(-alpha)
    alpha = float(alpha)
    return (math.log(alpha) if alpha > 0 else _NEG_INF), math.log1p(-alpha)


@dataclass
class _Spec:
    """What one fused pass computes. Per kept row r (batch index b):
    objective += w_div[b] · div_r + w_ce · CE_r, with w_div = scale (float) or
    scale[b] ([B] tensor), both divided by the number of kept rows when ``mean``."""

    name: str | None  # divergence name, None for pure cross-entropy
    alpha: float | torch.Tensor = 0.1  # float or [B]
    beta: float = 0.5
    temperature: float = 1.0
    detach: bool = False
    scale: float | torch.Tensor = 1.0  # divergence weight: float or [B]
    w_ce: float = 0.0  # cross-entropy weight in the objective
    with_ce: bool = False  # compute the cross-entropy (value and stats) at all
    mean: bool = False  # divide both weights by the number of kept rows
    chunk_size: int = 1024


def _log_softmax_into(dst, x, inv_t, scratch):
    """dst = log_softmax(x · inv_t) in dst's dtype; x: [n, V] any float dtype."""
    if inv_t == 1.0:
        return torch.log_softmax(x, dim=-1, dtype=dst.dtype, out=dst)
    scratch.copy_(x).mul_(inv_t)  # upcast first, then scale (no bf16 rounding of x / T)
    return torch.log_softmax(scratch, dim=-1, out=dst)


def _student_side(s, labels, spec, w_ce, need_grad, ws, G, logq=None):
    """A = log softmax(s / T) [n, V] (``logq`` when already formed), the cross-entropy of each row at
    temperature 1 (None without CE) and, when T ≠ 1 and the CE term has weight, softmax(s) [n, V]
    for its gradient (else None). G is scratch here."""
    n = (s if logq is None else logq).shape[0]
    inv_t = 1.0 / spec.temperature
    A = logq if logq is not None else _log_softmax_into(ws("A", n), s, inv_t, scratch=G)  # log q   [n, V]
    ce = q1 = None
    if spec.with_ce:
        lab = labels.unsqueeze(1)  # [n, 1]
        if inv_t == 1.0:
            ce = A.gather(1, lab).squeeze(1).neg_()  # −log softmax(s)[label]   [n]
        else:  # CE is always at temperature 1
            L1 = _log_softmax_into(ws("Q1", n), s, 1.0, scratch=G)  # [n, V]
            ce = L1.gather(1, lab).squeeze(1).neg_()
            if need_grad and w_ce:
                q1 = L1.exp_()  # softmax(s)   [n, V]
    return A, ce, q1


def _chunk(s, t, labels, w, alpha, spec, w_ce, need_grad, ws, out, logq=None, logp=None):
    """Loss terms and gradient of one chunk of kept rows.

    s: [n, V] student logit rows, t: [n, V] teacher rows (None for pure CE),
    labels: [n] (None without CE), w: float or [n, 1] divergence weight, alpha:
    float or [n, 1], out: [n, V] compute-dtype destination of the gradient or
    None. logq / logp: log_softmax(s / T) / log_softmax(t / T) already formed
    (compute dtype, overwritable; s / t are then not read, except s for CE at
    T ≠ 1). Returns (div [n] | None, ce [n] | None, grad [n, V] | None) with
    grad = ∂(Σ_r w_r div_r + w_ce CE_r)/∂s (out itself when given).
    """
    n = (s if logq is None else logq).shape[0]
    inv_t = 1.0 / spec.temperature
    G = out if out is not None else ws("G", n)  # scratch, then the gradient   [n, V]
    A, ce, q1 = _student_side(s, labels, spec, w_ce, need_grad, ws, G, logq)
    div = h = q = None
    if spec.name is not None:
        B = logp if logp is not None else _log_softmax_into(ws("B", n), t, inv_t, scratch=G)  # log p   [n, V]
        la, l1a = _log_alphas(alpha)
        div, h, q = _DIVERGENCES[spec.name](A, B, G, ws, la, l1a, spec.beta, spec.detach, need_grad)
    elif need_grad:
        q = A.exp_()
    if not need_grad:
        return div, ce, None
    ce_done = not w_ce
    if h is not None:
        # grad = (w / T)(h − q Σh) + w_ce (q1 − onehot) = c·h + q·qcoef (+ w_ce q1) − w_ce onehot
        c = w.mul(inv_t) if torch.is_tensor(w) else w * inv_t  # float or [n, 1]
        qcoef = h.sum(-1, keepdim=True).mul_(-c)  # [n, 1]
        if not ce_done and q1 is None:  # temperature 1: the CE softmax is q itself
            qcoef.add_(w_ce)
            ce_done = True
        if h is G:
            G.mul_(c).addcmul_(q, qcoef)
        elif q is G:
            G.mul_(qcoef)
            if torch.is_tensor(c):
                G.addcmul_(h, c)
            else:
                G.add_(h, alpha=c)
        else:
            torch.mul(h, c, out=G).addcmul_(q, qcoef)
    elif not ce_done:
        src = q if q1 is None else q1
        torch.mul(src, w_ce, out=G)
        ce_done = True
    else:
        G.zero_()
    if not ce_done:
        G.add_(q1, alpha=w_ce)
    if w_ce:
        G[torch.arange(n, device=G.device), labels] -= w_ce  # − w_ce · onehot(label)
    return div, ce, G


def _compute_dtype(*tensors):
    """float64 if any input is float64, else float32 (bf16 / fp16 are upcast)."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in tensors) else torch.float32


def _grad_dtype(student_dtype):
    """dtype of the gradient buffer: float32 for fp16 / bf16 students, else the student's own.

    A half-precision buffer would round the gradient before backward applies the
    incoming gradient (DeepSpeed's fp16 loss scale): its tiny per-entry values
    flush to 0 in fp16 and are rounded twice in bf16 (see the module docstring).
    """
    return torch.promote_types(student_dtype, torch.float32)


def _budget_rows(vocab, dtype, device, budgets=CHUNK_BYTES):
    """Rows of one [rows, vocab] work array of this dtype that fit the budget (at least 1)."""
    budget = budgets["cpu" if device.type == "cpu" else "other"]
    return max(1, budget // (vocab * torch.finfo(dtype).bits // 8))


def add_chunk_terms(totals, div, ce, w, w_ce) -> None:
    """Add one chunk's terms to totals = (objective, div_sum, ce_sum), 0-dim tensors updated in place:
    objective += Σ w_r div_r + w_ce Σ CE_r. w: float or [n, 1]; div / ce: [n] or None."""
    objective, div_sum, ce_sum = totals
    if div is not None:
        div_sum += div.sum()
        objective += (div * w.squeeze(1)).sum() if torch.is_tensor(w) else div.sum() * w
    if ce is not None:
        ce_sum += ce.sum()
        if w_ce:
            objective += ce.sum() * w_ce


def _fused_forward(student, teacher, mask, labels, spec, need_grad, buf=None):
    """One chunked pass over the kept rows. Returns (objective, div_sum, ce_sum, grad_buffer or None).

    student, teacher: [B, T, V]; mask: [B, T] bool; labels: [B, T] long or None; buf: where
    the gradient goes ([B, T, V], contiguous, of _grad_dtype), made here when None.
    """
    B, T, V = student.shape
    cdt = _compute_dtype(student, teacher)
    device = student.device
    b_idx, t_idx = mask.nonzero(as_tuple=True)  # [N], [N]
    n_rows = b_idx.numel()
    all_kept = n_rows == B * T
    lin_idx = None if all_kept else b_idx * T + t_idx  # [N] flat row of each kept position
    flat = {}  # [B*T, ...] row views of the contiguous inputs
    for key, x in (("s", student), ("t", teacher), ("y", labels)):
        if x is not None and x.is_contiguous():
            flat[key] = x.view(B * T, *x.shape[2:])

    def take(key, x, lo, hi):
        """Kept rows lo:hi of x: a view when all rows are kept, else gathered into a reused work array."""
        if key not in flat:
            return x[b_idx[lo:hi], t_idx[lo:hi]]
        if all_kept:
            return flat[key][lo:hi]
        if key == "y":
            return flat[key][lin_idx[lo:hi]]
        # Kept rows come in runs (one response per sequence): copy each run as a slice.
        # index_select on [*, V] rows was measured 100-400x slower with 2 CPU threads.
        idx, out, src = lin_idx[lo:hi], ws("in_" + key, hi - lo, x.dtype), flat[key]
        bounds = [0, *(torch.nonzero(idx[1:] - idx[:-1] != 1).flatten() + 1).tolist(), hi - lo]
        for start, end in zip(bounds[:-1], bounds[1:]):
            first = int(idx[start])
            out[start:end].copy_(src[first:first + end - start])
        return out

    per_token = (1.0 / n_rows if n_rows else 0.0) if spec.mean else 1.0
    w_ce = spec.w_ce * per_token
    if torch.is_tensor(spec.scale):
        scale = spec.scale.to(device=device, dtype=cdt) * per_token  # [B]
    else:
        scale = float(spec.scale) * per_token
    alpha = spec.alpha.to(device=device, dtype=cdt) if torch.is_tensor(spec.alpha) else float(spec.alpha)

    step = max(1, min(int(spec.chunk_size), _budget_rows(V, cdt, device)))
    ws = _Workspace(min(step, max(n_rows, 1)), V, cdt, device)
    buf_rows = None
    if need_grad:
        # every row is written when all are kept; otherwise masked rows stay 0
        if buf is None:
            buf = (torch.empty if all_kept else torch.zeros)((B, T, V), dtype=_grad_dtype(student.dtype),
                                                             device=device)
        elif not all_kept:
            buf.zero_()
        buf_rows = buf.view(B * T, V)
    direct = need_grad and all_kept and buf.dtype == cdt  # write the gradient straight into buf
    objective = torch.zeros((), dtype=cdt, device=device)
    div_sum = torch.zeros((), dtype=cdt, device=device)
    ce_sum = torch.zeros((), dtype=cdt, device=device)
    for lo in range(0, n_rows, step):
        hi = min(n_rows, lo + step)
        s = take("s", student, lo, hi)  # [n, V]
        t = take("t", teacher, lo, hi) if spec.name is not None else None  # [n, V]
        y = take("y", labels, lo, hi) if spec.with_ce else None  # [n]
        w = scale[b_idx[lo:hi]].unsqueeze(1) if torch.is_tensor(scale) else scale  # float or [n, 1]
        a = alpha[b_idx[lo:hi]].unsqueeze(1) if torch.is_tensor(alpha) else alpha  # float or [n, 1]
        out = buf_rows[lo:hi] if direct else None
        div, ce, grad = _chunk(s, t, y, w, a, spec, w_ce, need_grad, ws, out)
        add_chunk_terms((objective, div_sum, ce_sum), div, ce, w, w_ce)
        if need_grad and not direct:
            if all_kept:
                buf_rows[lo:hi].copy_(grad)
            else:
                buf_rows.index_copy_(0, lin_idx[lo:hi], grad.to(buf.dtype))
    return objective, div_sum, ce_sum, buf


def _fused_parts(student, teacher, mask, labels, spec, need_grad):
    """_fused_forward with one spec, or with a different spec on each part of the batch dimension.

    spec: a _Spec, or a list of (lo, hi, _Spec | None) that covers 0..B in order; a part
    with None adds nothing and gets a zero gradient. Every part writes its gradient into
    its rows of one buffer, so a loss that is a different divergence on different rows
    (distillm2_rows) holds one gradient of the student's size, as a single loss does.
    """
    if isinstance(spec, _Spec):
        return _fused_forward(student, teacher, mask, labels, spec, need_grad)
    cdt = _compute_dtype(student, teacher)
    buf = torch.empty(student.shape, dtype=_grad_dtype(student.dtype), device=student.device) if need_grad else None
    totals = [torch.zeros((), dtype=cdt, device=student.device) for _ in range(3)]  # objective, div_sum, ce_sum
    for lo, hi, part in spec:
        if part is None or hi <= lo:
            if need_grad:
                buf[lo:hi].zero_()
            continue
        sliced = [None if x is None else x[lo:hi] for x in (student, teacher, mask, labels)]
        *sums, _ = _fused_forward(*sliced, part, need_grad, buf=buf[lo:hi] if need_grad else None)
        totals = [a + b for a, b in zip(totals, sums)]
    return (*totals, buf)


class _FusedLoss(torch.autograd.Function):
    """Chunked loss whose forward also forms d(objective)/d(student logits).

    forward(student [B, T, V], teacher [B, T, V] | None, mask [B, T], labels [B, T] | None, spec)
    → (objective, div_sum, ce_sum); only the objective is differentiable (spec: see
    _fused_parts). The
    gradient buffer (shape of the student logits; student dtype, float32 for
    fp16 / bf16 students) is the only tensor kept for backward; the teacher
    never gets a gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, mask, labels, spec):
        objective, div_sum, ce_sum, buf = _fused_parts(student, teacher, mask, labels, spec, need_grad=True)
        ctx.save_for_backward(buf)
        ctx.student_dtype = student.dtype
        ctx.mark_non_differentiable(div_sum, ce_sum)
        return objective, div_sum, ce_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_objective, _grad_div, _grad_ce):
        (buf,) = ctx.saved_tensors
        if buf.dtype != ctx.student_dtype:
            return _scaled_to(buf, grad_objective, ctx.student_dtype), None, None, None, None
        # The common call is loss.backward() (grad 1): hand over the buffer itself, no copy.
        if grad_objective.numel() == 1 and bool(grad_objective == 1):
            return buf, None, None, None, None
        return buf * grad_objective.to(buf.dtype), None, None, None, None


def _scaled_to(buf, grad, dtype):
    """buf · grad in buf's dtype (float32), rounded once to ``dtype`` (the half-precision student's).

    buf: [B, T, V]; grad: the incoming 0-dim gradient (it carries the fp16 loss
    scale). Row chunks of one reused work array, so no full-size float32 product
    exists beside buf and the result (torch.mul with a half ``out`` would make one).
    buf itself is left as it is: a retained graph may run backward again.
    """
    out = torch.empty(buf.shape, dtype=dtype, device=buf.device)
    g = grad.to(buf.dtype)
    if g.numel() == 1 and bool(g == 1):
        return out.copy_(buf)
    V = buf.shape[-1]
    src, dst = buf.view(-1, V), out.view(-1, V)  # [B*T, V]
    step = min(src.shape[0], _budget_rows(V, buf.dtype, buf.device))
    work = torch.empty((step, V), dtype=buf.dtype, device=buf.device)
    for lo in range(0, src.shape[0], step):
        hi = min(src.shape[0], lo + step)
        dst[lo:hi].copy_(torch.mul(src[lo:hi], g, out=work[:hi - lo]))
    return out


def _run(student, teacher, mask, labels, spec):
    """Dispatch: the autograd Function when the student needs a gradient, else a plain pass."""
    if torch.is_grad_enabled() and student.requires_grad:
        return _FusedLoss.apply(student, teacher, mask, labels, spec)
    objective, div_sum, ce_sum, _ = _fused_parts(student, teacher, mask, labels, spec, need_grad=False)
    return objective, div_sum, ce_sum


def _check_inputs(student, teacher, mask):
    if student.dim() != 3:
        raise ValueError(f"student logits must be [B, T, V], got shape {tuple(student.shape)}")
    if teacher is not None and teacher.shape != student.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher.shape)} and student logits {tuple(student.shape)} differ in shape: "
            "use a teacher and student with the same tokenizer and vocabulary size"
        )
    if not student.is_floating_point() or (teacher is not None and not teacher.is_floating_point()):
        raise ValueError("logits must be a floating-point tensor")
    if mask.shape != student.shape[:2]:
        raise ValueError(f"mask must be [B, T] = {tuple(student.shape[:2])}, got {tuple(mask.shape)}")
    return mask.to(torch.bool)


def _check_alpha(alpha, what="alpha"):
    if torch.is_tensor(alpha):
        if alpha.numel() and not bool(((alpha >= 0) & (alpha < 1)).all()):
            raise ValueError(f"{what} values must lie in [0, 1)")
    elif not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"{what}={alpha} must lie in [0, 1)")


def _divergence(name, student_logits, teacher_logits, mask, alpha, beta, temperature, detach_mixture,
                chunk_size, reduction):
    mask = _check_inputs(student_logits, teacher_logits, mask)
    if teacher_logits is None:
        raise ValueError(f"loss '{name}' needs teacher logits")
    check_loss_params(name, alpha if name in _USES_ALPHA else 0.0, beta)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction='{reduction}' is not supported: use 'mean' or 'sum'")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    spec = _Spec(name=name, alpha=alpha if name in _USES_ALPHA else 0.0, beta=float(beta),
                 temperature=float(temperature), detach=bool(detach_mixture), scale=1.0,
                 mean=reduction == "mean", chunk_size=int(chunk_size))
    objective, _, _ = _run(student_logits, teacher_logits, mask, None, spec)
    return objective


# ----------------------------------------------------------------------------
# Public losses: fn(student_logits [B, T, V], teacher_logits [B, T, V], mask [B, T]) -> scalar.
# Parameters a loss does not use are accepted and ignored.
# ----------------------------------------------------------------------------


def fkl(student_logits, teacher_logits, mask, *, alpha=0.1, beta=0.5, temperature=1.0, detach_mixture=False,
        chunk_size=1024, reduction="mean"):
    """Forward KL, KL(p ‖ q) = Σ_v p_v (log p_v − log q_v): mode-covering word-level KD
    (Hinton et al. 2015; DistiLLM, Ko et al. ICML 2024, §3). Mean (or sum) over kept positions."""
    return _divergence("fkl", student_logits, teacher_logits, mask, alpha, beta, temperature, detach_mixture,
                       chunk_size, reduction)


def rkl(student_logits, teacher_logits, mask, *, alpha=0.1, beta=0.5, temperature=1.0, detach_mixture=False,
        chunk_size=1024, reduction="mean"):
    """Reverse KL, KL(q ‖ p) = Σ_v q_v (log q_v − log p_v): mode-seeking (MiniLLM, Gu et al. 2024;
    DistiLLM, Ko et al. ICML 2024, §3). Mean (or sum) over kept positions."""
    return _divergence("rkl", student_logits, teacher_logits, mask, alpha, beta, temperature, detach_mixture,
                       chunk_size, reduction)


def skew_fkl(student_logits, teacher_logits, mask, *, alpha=0.1, beta=0.5, temperature=1.0,
             detach_mixture=False, chunk_size=1024, reduction="mean"):
    """Skew forward KL (SKL), KL(p ‖ α p + (1−α) q) = Σ_v p_v (log p_v − log m_v)
    (DistiLLM, Ko et al. ICML 2024, §3; α = 0.1 in the paper, α = 0 is fkl).

    The true divergence, not the authors' logged cross-entropy −Σ p log m
    (which is larger by H(p)). Gradient flows through q inside m unless
    ``detach_mixture`` (then the loss is constant in the student)."""
    return _divergence("skew_fkl", student_logits, teacher_logits, mask, alpha, beta, temperature,
                       detach_mixture, chunk_size, reduction)


def skew_rkl(student_logits, teacher_logits, mask, *, alpha=0.1, beta=0.5, temperature=1.0,
             detach_mixture=False, chunk_size=1024, reduction="mean"):
    """Skew reverse KL (SRKL), KL(q ‖ α q + (1−α) p) = Σ_v q_v (log q_v − log m_v)
    (DistiLLM, Ko et al. ICML 2024, §3; α = 0.1 in the paper, α = 0 is rkl).

    Gradient flows through every q, the mixture included (DistiLLM);
    ``detach_mixture=True`` holds q inside m constant (DistiLLM-2's SRKL,
    Ko et al. 2025, arXiv 2503.07067)."""
    return _divergence("skew_rkl", student_logits, teacher_logits, mask, alpha, beta, temperature,
                       detach_mixture, chunk_size, reduction)


def jsd(student_logits, teacher_logits, mask, *, alpha=0.1, beta=0.5, temperature=1.0, detach_mixture=False,
        chunk_size=1024, reduction="mean"):
    """Generalized Jensen–Shannon divergence, β KL(p ‖ m) + (1−β) KL(q ‖ m) with
    m = β p + (1−β) q, β ∈ (0, 1) (GKD, Agarwal et al. ICLR 2024; DistiLLM §3).

    Symmetric in p and q at β = ½. The logit gradient is the same with or
    without ``detach_mixture`` (∂f/∂m = −1 is constant over the vocabulary)."""
    return _divergence("jsd", student_logits, teacher_logits, mask, alpha, beta, temperature, detach_mixture,
                       chunk_size, reduction)


def tvd(student_logits, teacher_logits, mask, *, alpha=0.1, beta=0.5, temperature=1.0, detach_mixture=False,
        chunk_size=1024, reduction="mean"):
    """Total variation distance, ½ Σ_v |p_v − q_v| (DistiLLM, Ko et al. ICML 2024, §3; Wen et al. 2023).
    Subgradient 0 where p_v = q_v."""
    return _divergence("tvd", student_logits, teacher_logits, mask, alpha, beta, temperature, detach_mixture,
                       chunk_size, reduction)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "fkl": fkl,
    "rkl": rkl,
    "skew_fkl": skew_fkl,
    "skew_rkl": skew_rkl,
    "jsd": jsd,
    "tvd": tvd,
}


def kd_objective(student_logits, teacher_logits, labels, *, loss: str, kd_ratio=1.0, alpha=0.1, beta=0.5,
                 temperature=1.0, detach_mixture=False, normalizer=None, chunk_size=1024):
    """The training objective: Σ_kept [kd_ratio · D(p, q) + (1 − kd_ratio) · CE] / normalizer.

    student_logits, teacher_logits: [B, T, V] (teacher may be None when
    kd_ratio == 0: pure SFT); labels: [B, T] long, −100 where not counted.
    D is ``LOSSES[loss]`` at ``temperature``; CE = −log softmax(student)[label]
    at temperature 1 (DistiLLM's kd_ratio mixing, Ko et al. ICML 2024).
    ``normalizer`` (float or 0-dim tensor) is the number of response tokens in
    the whole gradient-accumulation window (across ranks if data-parallel), so
    that summing micro-batch objectives equals the objective of the full batch;
    default: the tokens kept here. Both terms come from one fused chunked pass.

    Returns (objective: scalar tensor, stats: {"kd_sum", "ce_sum", "tokens"} as
    python floats; kd_sum is 0.0 when kd_ratio == 0).
    """
    if teacher_logits is None and float(kd_ratio) > 0:
        raise ValueError("teacher logits are required when kd_ratio > 0: pass the teacher or set kd_ratio=0 (SFT)")
    mask = _check_inputs(student_logits, teacher_logits, labels != -100)
    spec = kd_spec(loss=loss, kd_ratio=kd_ratio, alpha=alpha, beta=beta, temperature=temperature,
                   detach_mixture=detach_mixture, normalizer=normalizer, chunk_size=chunk_size,
                   any_kept=bool(mask.any()))
    objective, div_sum, ce_sum = _run(student_logits, teacher_logits, mask, labels, spec)
    stats = {"kd_sum": float(div_sum), "ce_sum": float(ce_sum), "tokens": float(mask.sum())}
    return objective, stats


def kd_spec(*, loss, kd_ratio, alpha, beta, temperature, detach_mixture, normalizer, chunk_size, any_kept) -> _Spec:
    """The fused pass of ``kd_objective`` (checked): kd_ratio · D + (1 − kd_ratio) · CE per kept row,
    divided by ``normalizer`` (None: the kept rows' count)."""
    kd_ratio = float(kd_ratio)
    if not 0.0 <= kd_ratio <= 1.0:
        raise ValueError(f"kd_ratio={kd_ratio} must lie in [0, 1]")
    check_loss_params(loss, alpha if loss in _USES_ALPHA else 0.0, beta)
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive")
    spec = _Spec(name=loss if kd_ratio > 0 else None, alpha=alpha if loss in _USES_ALPHA else 0.0,
                 beta=float(beta), temperature=float(temperature), detach=bool(detach_mixture),
                 scale=kd_ratio, w_ce=1.0 - kd_ratio, with_ce=True, chunk_size=int(chunk_size))
    if normalizer is None:
        spec.mean = True
    else:
        norm = float(normalizer)
        if norm <= 0 and any_kept:
            raise ValueError(f"normalizer={norm} must be positive: pass the number of response tokens")
        inv = 1.0 / norm if norm > 0 else 0.0
        spec.scale, spec.w_ce = kd_ratio * inv, (1.0 - kd_ratio) * inv
    return spec


def distillm2(student_logits_t, teacher_logits_t, mask_t, student_logits_s, teacher_logits_s, mask_s, *,
              alpha_t=0.1, alpha_s=0.1, beta=0.5, temperature=1.0, chunk_size=1024):
    """DistiLLM-2 contrastive loss (Ko et al. 2025, arXiv 2503.07067, §3; METHOD.md §4).

    For each prompt x_b with a teacher response (``*_t`` tensors, [B, T, V] and
    mask [B, T]) and a student response (``*_s`` tensors, [B, T', V] / [B, T']):

        L = 1/B Σ_b [ (1−β) · SKL_{α_t}(x_b, y_t)  +  β · SRKL_{α_s}(x_b, y_s) ]

    SKL = KL(p ‖ α p + (1−α) q), SRKL = KL(q ‖ α q + (1−α) p) with the student
    detached inside the SRKL mixture; each term is a token mean over that
    response's kept positions (0 for a response with none). alpha_t / alpha_s:
    float or [B] tensor (per-sample α, the α curriculum); beta ∈ [0, 1] (the
    curriculum moves it from 0.5 to 1). Returns a scalar (float32, or float64
    for float64 inputs).
    """
    mask_t = _check_inputs(student_logits_t, teacher_logits_t, mask_t)
    mask_s = _check_inputs(student_logits_s, teacher_logits_s, mask_s)
    B = student_logits_t.shape[0]
    if student_logits_s.shape[0] != B:
        raise ValueError(f"teacher-response batch ({B}) and student-response batch "
                         f"({student_logits_s.shape[0]}) must hold the same prompts")
    _check_alpha(alpha_t, "alpha_t")
    _check_alpha(alpha_s, "alpha_s")
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"distillm2 beta={beta} must lie in [0, 1]")
    cdt = _compute_dtype(student_logits_t, teacher_logits_t, student_logits_s, teacher_logits_s)
    total = torch.zeros((), dtype=cdt, device=student_logits_t.device)
    parts = (("skew_fkl", student_logits_t, teacher_logits_t, mask_t, alpha_t, 1.0 - beta, False),
             ("skew_rkl", student_logits_s, teacher_logits_s, mask_s, alpha_s, beta, True))
    for name, student, teacher, mask, alpha, weight, detach in parts:
        if weight == 0.0:
            continue
        # Per-sample weight: weight / (B · kept tokens of that response); rows of a sample share it.
        tokens = mask.sum(1).clamp(min=1).to(cdt)  # [B]
        spec = _Spec(name=name, alpha=alpha, temperature=float(temperature), detach=detach,
                     scale=weight / (B * tokens), chunk_size=int(chunk_size))
        objective, _, _ = _run(student, teacher, mask, None, spec)
        total = total + objective
    return total


def _as_rows(x, what):
    """[N, V] or [1, N, V] logit rows as an [N, 1, V] view: a batch of N one-position sequences."""
    if x.dim() == 3 and x.shape[0] == 1:
        x = x.reshape(x.shape[1], x.shape[2])
    if x.dim() != 2:
        raise ValueError(f"{what} must be response rows [N, V] or [1, N, V], got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], 1, x.shape[1])  # a view: the gradient comes back without a copy


def distillm2_rows(student_logits, teacher_logits, sample, pairs, *, alpha_t=0.1, alpha_s=0.1, beta=0.5,
                   temperature=1.0, chunk_size=1024):
    """DistiLLM-2's contrastive loss (``distillm2``) on the response rows of a pair batch.

    The same loss, read from the N = N_t + N_s response positions alone instead of
    full [B, T, V] logits. For prompts b = 0..B−1 (B = ``pairs``) with a teacher
    response y_t,b and a student response y_s,b:

        L = 1/B Σ_b [ (1−β) · SKL_{α_t,b}(x_b, y_t,b)  +  β · SRKL_{α_s,b}(x_b, y_s,b) ]

    SKL = KL(p ‖ α p + (1−α) q), SRKL = KL(q ‖ α q + (1−α) p) with the student
    detached inside the SRKL mixture, each a token mean over its response. Row r
    of response s_r is weighted (1−β) / (B · |y_t,s_r|) or β / (B · |y_s,s_r−B|).

    student_logits, teacher_logits: [1, N, V] or [N, V], the rows of the pair batch
    [teacher responses; student responses] at its label positions in batch order, as
    ``response_logits`` / ``teacher.response_logits`` return them. sample: [N] long,
    the sequence of each row: b < B the teacher response of prompt b, B + b its
    student response; every teacher-response row comes before every student-response
    row. alpha_t / alpha_s: float or [B] tensor (per-sample α); beta ∈ [0, 1].
    A response with no rows contributes 0. One fused chunked pass over all rows, one
    gradient buffer the size of the student rows. Returns a scalar (float32, or
    float64 for float64 inputs).
    """
    student, teacher = _as_rows(student_logits, "student_logits"), _as_rows(teacher_logits, "teacher_logits")
    if teacher.shape != student.shape:
        raise ValueError(f"teacher rows {tuple(teacher_logits.shape)} and student rows "
                         f"{tuple(student_logits.shape)} differ in shape: use a teacher and student with the "
                         "same tokenizer and vocabulary size")
    if not student.is_floating_point() or not teacher.is_floating_point():
        raise ValueError("logits must be a floating-point tensor")
    n_rows = student.shape[0]
    parts = distillm2_parts(sample, pairs, n_rows, alpha_t=alpha_t, alpha_s=alpha_s, beta=beta,
                            temperature=temperature, chunk_size=chunk_size, cdt=_compute_dtype(student, teacher),
                            device=student.device)
    objective, _, _ = _run(student, teacher, torch.ones((n_rows, 1), dtype=torch.bool, device=student.device),
                           None, parts)
    return objective


def distillm2_parts(sample, pairs, n_rows, *, alpha_t, alpha_s, beta, temperature, chunk_size, cdt, device) -> list:
    """The fused passes of ``distillm2_rows`` (checked): [(0, N_t, SKL spec), (N_t, N, SRKL spec)] over
    the rows, each row weighted by its response's share of the batch mean (a part is None at weight 0)."""
    B = int(pairs)
    sample = torch.as_tensor(sample, device=device).long().reshape(-1)
    if sample.numel() != n_rows:
        raise ValueError(f"sample must give the sequence of each of the {n_rows} rows, got {sample.numel()}")
    if n_rows and (int(sample.min()) < 0 or int(sample.max()) >= 2 * B):
        raise ValueError(f"sample values must lie in [0, {2 * B}): the pair batch holds {2 * B} sequences")
    teacher_part = sample < B
    n_t = int(teacher_part.sum())
    if bool(teacher_part[n_t:].any()):
        raise ValueError("the teacher-response rows (sample < pairs) must all come before the student-response rows")
    for alpha, what in ((alpha_t, "alpha_t"), (alpha_s, "alpha_s")):
        _check_alpha(alpha, what)
        if torch.is_tensor(alpha) and alpha.numel() != B:
            raise ValueError(f"{what} must be a float or hold one alpha per prompt ({B}), got {alpha.numel()}")
    beta = float(beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"distillm2 beta={beta} must lie in [0, 1]")
    tokens = torch.bincount(sample, minlength=2 * B).clamp(min=1).to(cdt)[sample]  # [N] rows of the row's response
    parts = []
    for lo, hi, name, alpha, weight, detach, first in ((0, n_t, "skew_fkl", alpha_t, 1.0 - beta, False, 0),
                                                        (n_t, n_rows, "skew_rkl", alpha_s, beta, True, B)):
        if weight == 0.0:
            parts.append((lo, hi, None))
            continue
        # Rows are the batch dimension of the [N, 1, V] view, so weight and alpha are per row,
        # indexed within the part (_fused_parts hands each part its slice of the rows).
        if torch.is_tensor(alpha):
            alpha = alpha.to(device=device, dtype=cdt)[sample[lo:hi] - first]  # [hi - lo]
        spec = _Spec(name=name, alpha=alpha, temperature=float(temperature), detach=detach,
                     scale=weight / (B * tokens[lo:hi]), chunk_size=int(chunk_size))
        parts.append((lo, hi, spec))
    return parts


@torch.no_grad()
def label_logprobs(logits, labels, *, chunk_size=1024):
    """log softmax(logits)[label] of each row, computed in chunks of rows.

    logits: [N, V] or [1, N, V] (any float dtype); labels: [N] or [1, N] token ids (no −100).
    Returns [N] in float32 (float64 for float64 logits). Only chunk-sized temporaries exist
    (a float32 copy of a half-precision chunk, logsumexp's work array), within the fused
    losses' CHUNK_BYTES, never a float copy of all N rows.
    """
    V = logits.shape[-1]
    rows, y = logits.reshape(-1, V), labels.reshape(-1).to(logits.device)  # [N, V], [N]
    if y.numel() != rows.shape[0]:
        raise ValueError(f"labels ({y.numel()}) and logit rows ({rows.shape[0]}) differ in number")
    cdt = _compute_dtype(logits)
    out = torch.empty(rows.shape[0], dtype=cdt, device=logits.device)
    step = max(1, min(int(chunk_size), _budget_rows(V, cdt, logits.device)))
    for lo in range(0, rows.shape[0], step):
        hi = min(rows.shape[0], lo + step)
        x = rows[lo:hi].to(cdt)  # [n, V]
        out[lo:hi] = x.gather(1, y[lo:hi, None]).squeeze(1) - torch.logsumexp(x, dim=-1)
    return out
