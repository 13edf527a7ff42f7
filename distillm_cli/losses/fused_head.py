"""The distillation losses with both models' output head fused in: no [N, V] logits at all.

The losses of dense.py read logit rows. Here they read what the logits are made of: the
last hidden states of the N response positions of each model (student hᵢ ∈ ℝ^H, teacher
h'ᵢ ∈ ℝ^H') and each model's output head (``models.head.OutputHead``):

    zᵢ = softcap(scale · (W hᵢ + b))[:V]          student logits of row i     (W: [V', H])
    z'ᵢ = softcap'(scale' · (W' h'ᵢ + b'))[:V]     teacher logits of row i     (W': [V', H'])

and compute exactly the objective of dense.py on (z, z'): for ``kd_objective_head``

    L = Σ_i [kd_ratio · D(p'ᵢ, qᵢ) + (1 − kd_ratio) · CE(qᵢ, yᵢ)] / normalizer,
        qᵢ = softmax(zᵢ / T), p'ᵢ = softmax(z'ᵢ / T), D ∈ {fkl, rkl, skew_fkl, skew_rkl, jsd, tvd}

(formulas and numerics in dense.py's docstring), and for ``distillm2_head`` DistiLLM-2's
contrastive loss of ``dense.distillm2_rows`` on the rows of a pair batch.

How. The rows are visited in chunks of n (the HEAD_CHUNK_BYTES budget, below). For a
chunk, both heads form that chunk's logits [n, V] into reused work arrays, dense.py's
``_chunk`` forms the loss terms and G = ∂L/∂z [n, V], and G is pushed back through the
head at once:

    ∂L/∂hᵢ = Gᵢ · (∂z/∂u) W[:V]            [n, H]   (u = W h + b before scale and softcap)
    ∂L/∂W[:V] += ((∂z/∂u) ⊙ G)ᵀ hᵢ          [V, H]   (accumulated over the chunks)
    ∂L/∂b[:V] += Σ_i (∂z/∂u) ⊙ Gᵢ           [V]
    ∂z/∂u = scale · (1 − (z / c)²) with softcap c, scale without.

So beyond the models' own tensors there exist only: the hidden-state gradient [N, H],
the head-weight gradient [V', H] (which autograd would hold anyway) and a few [n, V]
chunk arrays. Padded vocabulary rows (V' > V) get a zero gradient and are never read.
A head that does not require a gradient (a LoRA student's frozen head) gets none formed.

Precision. Logits are formed in the model's dtype (as the model's own head would), the
loss math in float32 (float64 for float64 inputs). The head-weight gradient accumulates
in float32 (float64) over the chunks. For fp16 / bf16 students, G goes through the head
matrix in the model's dtype, scaled per chunk by a power of two so its largest entry is
near 1 (a token-normalised gradient of 1e-7-1e-10 would flush to 0 in fp16), and the
[n, H] product is unscaled in float32; backward then multiplies by the incoming gradient
(DeepSpeed's loss scale) in float32 and rounds once to the model's dtype.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from .dense import _budget_rows, _chunk, _compute_dtype, _Workspace, add_chunk_terms, distillm2_parts, kd_spec

# Upper bound on one [rows, V] work array of the fused-head passes; dense.py's CHUNK_BYTES, but
# larger on CPU. Each chunk multiplies by both whole head matrices ([V, H]), and a matrix product
# re-reads (and re-packs) its [V, H] operand on every call: measured on a 2-thread CPU
# (scripts/bench_step.py, the GPT-2 and SmolLM2 shapes), 32 MiB chunks (~160 rows at V = 50k)
# left the loss 10-20% slower than one product over all rows, while ~256 rows came within a
# few percent of it, and the elementwise passes, from RAM either way, did not mind the size.
HEAD_CHUNK_BYTES = {"cpu": 64 * 2**20, "other": 256 * 2**20}


def _head_rows(N: int, V: int, cdt, device, chunk_sizes=()) -> int:
    """Rows per chunk: within HEAD_CHUNK_BYTES and every chunk_size, then evened out over the
    chunks so that no small last chunk is left (the head products lose speed below ~200 rows)."""
    step = max(1, min([int(c) for c in chunk_sizes] + [_budget_rows(V, cdt, device, HEAD_CHUNK_BYTES)]))
    return -(-N // -(-N // step)) if N else step


def _rows(x: torch.Tensor, what: str) -> torch.Tensor:
    """[N, H] or [1, N, H] rows as [N, H]."""
    if x.dim() == 3 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 2:
        raise ValueError(f"{what} must be rows [N, H] or [1, N, H], got shape {tuple(x.shape)}")
    return x


def _check_pair(student_hidden, student_head, teacher_hidden, teacher_head):
    if student_hidden.shape[-1] != student_head.weight.shape[1]:
        raise ValueError(f"student hidden size {student_hidden.shape[-1]} does not match its head "
                         f"{tuple(student_head.weight.shape)}")
    if teacher_hidden is None:
        return
    if teacher_hidden.shape[0] != student_hidden.shape[0]:
        raise ValueError(f"teacher rows ({teacher_hidden.shape[0]}) and student rows ({student_hidden.shape[0]}) "
                         "differ in number")
    if teacher_head.vocab != student_head.vocab:
        raise ValueError(f"teacher vocabulary ({teacher_head.vocab}) and student vocabulary ({student_head.vocab}) "
                         "differ: use a teacher and student with the same tokenizer")


def _head_logits_into(out, hidden, head):
    """out [n, V] = softcap(scale · (hidden @ W[:V]ᵀ + b[:V])) in the head's dtype."""
    V = head.vocab
    torch.mm(hidden.to(head.weight.dtype), head.weight[:V].t(), out=out)
    if head.bias is not None:
        out.add_(head.bias[:V])
    if head.scale != 1.0:
        out.mul_(head.scale)
    if head.softcap:
        out.div_(head.softcap).tanh_().mul_(head.softcap)
    return out


def _rows_logits(ws, logp_key, logits_key, hidden, head, cdt, inv_t, keep_logits):
    """(logits, None) in a work array of the head's dtype, or (None, log_softmax(logits / T)) formed in
    place in the compute-dtype array ``logp_key`` when the logits are needed no further (one [n, V]
    array less per model). log_softmax with out= its own input is exact: each row is reduced
    before any entry of it is written."""
    n = hidden.shape[0]
    if keep_logits or head.weight.dtype != cdt:
        return _head_logits_into(ws(logits_key, n, head.weight.dtype), hidden, head), None
    x = _head_logits_into(ws(logp_key, n), hidden, head)  # [n, V]
    if inv_t != 1.0:
        x.mul_(inv_t)
    return None, torch.log_softmax(x, dim=-1, out=x)


class _Grads:
    """The gradient of one fused pass with respect to the student's rows and head."""

    def __init__(self, hidden, head, cdt, need_weight):
        N, H = hidden.shape
        self.head, self.cdt = head, cdt
        self.half = head.weight.dtype in (torch.float16, torch.bfloat16)
        self.hidden = torch.zeros((N, H), dtype=torch.promote_types(hidden.dtype, cdt), device=hidden.device)
        self.weight = self.bias = None
        if need_weight and head.weight.requires_grad:
            self.weight = torch.zeros(head.weight.shape, dtype=cdt, device=hidden.device)  # [V', H]
        if need_weight and head.bias is not None and head.bias.requires_grad:
            self.bias = torch.zeros(head.bias.shape, dtype=cdt, device=hidden.device)  # [V']

    def add_chunk(self, G, z, rows, hidden, ws):
        """Push G = ∂L/∂z of rows [lo, hi) back through the head (module docstring)."""
        head, V = self.head, self.head.vocab
        if head.softcap:  # ∂z/∂u of the cap, from the capped logits themselves (z is free now)
            G.mul_(z.div_(head.softcap).square_().neg_().add_(1.0))
        if head.scale != 1.0:
            G.mul_(head.scale)
        lo, hi = rows
        if self.weight is not None:
            self.weight[:V].addmm_(G.t(), hidden.to(self.cdt))
        if self.bias is not None:
            self.bias[:V].add_(G.sum(0))
        if self.half:  # G scaled by a power of two (exact) so fp16 keeps its tiny entries; G is spent after this
            peak = float(G.abs().max())
            factor = 2.0 ** -math.floor(math.log2(peak)) if peak > 0 else 1.0
            Gh = ws("G_half", hi - lo, head.weight.dtype).copy_(G.mul_(factor))
            self.hidden[lo:hi] = torch.mm(Gh, head.weight[:V]).to(self.hidden.dtype).div_(factor)
        else:
            torch.mm(G, head.weight[:V].to(G.dtype), out=self.hidden[lo:hi])


def _head_pass(s_hidden, s_head, t_hidden, t_head, labels, parts, need_grad):
    """One chunked pass over the rows. parts: [(lo, hi, _Spec | None)] covering 0..N in order;
    a spec's tensor scale / alpha hold one value per row of its part.
    Returns (objective, div_sum, ce_sum, _Grads | None)."""
    N = s_hidden.shape[0]
    V = s_head.vocab
    device = s_hidden.device
    cdt = _compute_dtype(s_hidden, s_head.weight, t_hidden, None if t_head is None else t_head.weight)
    specs = [spec for _, _, spec in parts if spec is not None]
    step = _head_rows(N, V, cdt, device, [spec.chunk_size for spec in specs])
    ws = _Workspace(min(step, max(N, 1)), V, cdt, device)
    grads = _Grads(s_hidden, s_head, cdt, need_weight=True) if need_grad else None
    totals = [torch.zeros((), dtype=cdt, device=device) for _ in range(3)]  # objective, div_sum, ce_sum
    for lo, hi, spec in parts:
        if spec is None:
            continue
        for a in range(lo, hi, step):
            b = min(hi, a + step)
            w, alpha = (x[a - lo:b - lo].unsqueeze(1) if torch.is_tensor(x) else x for x in (spec.scale, spec.alpha))
            # Logits straight into the log-probability arrays where nothing reads them afterwards.
            inv_t = 1.0 / spec.temperature
            z, logq = _rows_logits(ws, "A", "z_s", s_hidden[a:b], s_head, cdt, inv_t,
                                   keep_logits=bool(s_head.softcap) or (spec.with_ce and inv_t != 1.0))
            z_t = logp = None
            if spec.name is not None:
                z_t, logp = _rows_logits(ws, "B", "z_t", t_hidden[a:b], t_head, cdt, inv_t, keep_logits=False)
            y = labels[a:b] if spec.with_ce else None
            div, ce, G = _chunk(z, z_t, y, w, alpha, spec, spec.w_ce, need_grad, ws, None, logq=logq, logp=logp)
            add_chunk_terms(totals, div, ce, w, spec.w_ce)
            if need_grad:
                grads.add_chunk(G, z, (a, b), s_hidden[a:b], ws)
    return (*totals, grads)


class _FusedHeadLoss(torch.autograd.Function):
    """forward(student_hidden [N, H], weight [V', H] | None, bias [V'] | None, plan)
    -> (objective, div_sum, ce_sum, weight_grad, bias_grad).

    plan = (student OutputHead, teacher hidden | None, teacher OutputHead | None, labels, parts).
    The gradients of the hidden rows, the head weight and bias are formed in the forward.
    Only the objective is differentiable. weight / bias None (a sharded head, see ``_run``):
    their gradients come out as the last two outputs instead (empty when not needed).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, plan):
        head, t_hidden, t_head, labels, parts = plan
        objective, div_sum, ce_sum, grads = _head_pass(hidden, head, t_hidden, t_head, labels, parts, True)
        empty = hidden.new_empty(0)
        kept = [grads.hidden, grads.weight if weight is not None else None, grads.bias if bias is not None else None]
        ctx.dtypes = (hidden.dtype, head.weight.dtype, None if head.bias is None else head.bias.dtype)
        ctx.present = tuple(x is not None for x in kept)
        ctx.save_for_backward(*(x if x is not None else empty for x in kept))
        handed = [grads.weight if weight is None and grads.weight is not None else empty,
                  grads.bias if bias is None and grads.bias is not None else empty]
        ctx.mark_non_differentiable(div_sum, ce_sum, *handed)
        return objective, div_sum, ce_sum, *handed

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_objective, *_non_differentiable):
        out = []
        for grad, present, dtype in zip(ctx.saved_tensors, ctx.present, ctx.dtypes):
            if not present:
                out.append(None)
                continue
            if not (grad_objective.numel() == 1 and bool(grad_objective == 1)):
                grad = grad * grad_objective.to(grad.dtype)  # the incoming gradient (loss scale) in float32
            out.append(grad if grad.dtype == dtype else grad.to(dtype))
        return (*out, None)


def _sharded(head) -> bool:
    """A head whose weight ZeRO-3 partitions across ranks (gathered by the caller for the loss)."""
    return hasattr(head.weight, "ds_id") and head.module is not None


def _through_layer(head, grad_weight, grad_bias):
    """A term whose gradient with respect to the head layer's parameters is (grad_weight, grad_bias)
    and whose value is 0, formed through the layer itself: with E = [I_H; 0] ([H + 1, H]) and
    C = [grad_weightᵀ; grad_bias − Σ_h grad_weightᵀ], ∂ Σ (layer(E) ⊙ C) / ∂W = Cᵀ E = grad_weight and
    ∂/∂b = Σ_rows C = grad_bias. ZeRO-3 gathers the weight for this product and for its backward,
    and reduces the gradient into the shards with its own hooks, as for any layer it runs; a
    gradient handed to a sharded parameter any other way would meet an empty tensor."""
    weight = head.module.weight
    H = weight.shape[1]
    rows = H + (grad_bias is not None)
    E = torch.zeros((rows, H), dtype=weight.dtype, device=grad_weight.device)
    E[:H].fill_diagonal_(1.0)
    C = torch.empty((rows, grad_weight.shape[0]), dtype=grad_weight.dtype, device=grad_weight.device)  # [H(+1), V']
    C[:H] = grad_weight.t()
    if grad_bias is not None:
        C[H] = grad_bias - grad_weight.sum(1)
    term = (head.module(E).to(C.dtype) * C).sum()
    return term - term.detach()


def _run(hidden, head, t_hidden, t_head, labels, parts):
    if not (torch.is_grad_enabled() and (hidden.requires_grad or head.weight.requires_grad)):
        objective, div_sum, ce_sum, _ = _head_pass(hidden, head, t_hidden, t_head, labels, parts, need_grad=False)
        return objective, div_sum, ce_sum
    plan = (head, t_hidden, t_head, labels, parts)
    if not _sharded(head):
        objective, div_sum, ce_sum, _, _ = _FusedHeadLoss.apply(hidden, head.weight, head.bias, plan)
        return objective, div_sum, ce_sum
    objective, div_sum, ce_sum, grad_weight, grad_bias = _FusedHeadLoss.apply(hidden, None, None, plan)
    if grad_weight.numel():
        objective = objective + _through_layer(head, grad_weight, grad_bias if grad_bias.numel() else None)
    return objective, div_sum, ce_sum


def kd_objective_head(student_hidden, student_head, teacher_hidden, teacher_head, labels, *, loss: str,
                      kd_ratio=1.0, alpha=0.1, beta=0.5, temperature=1.0, detach_mixture=False, normalizer=None,
                      chunk_size=1024):
    """``dense.kd_objective`` with both output heads fused in (module docstring).

    student_hidden: [N, H] (or [1, N, H]) last hidden states of the response rows; teacher_hidden:
    [N, H'] (None when kd_ratio == 0: pure SFT); heads: ``models.head.OutputHead``; labels: [N]
    token ids of the rows (−100 rows count for nothing). Same value, gradient and stats as
    ``kd_objective`` on the logits the heads would make, without those logits.
    """
    hidden = _rows(student_hidden, "student_hidden")
    t_hidden = None if teacher_hidden is None else _rows(teacher_hidden, "teacher_hidden")
    if t_hidden is None and float(kd_ratio) > 0:
        raise ValueError("teacher rows are required when kd_ratio > 0: pass the teacher or set kd_ratio=0 (SFT)")
    _check_pair(hidden, student_head, t_hidden, teacher_head)
    labels = labels.reshape(-1).to(hidden.device)
    if labels.numel() != hidden.shape[0]:
        raise ValueError(f"labels ({labels.numel()}) and hidden rows ({hidden.shape[0]}) differ in number")
    kept = labels != -100
    if not bool(kept.all()):  # rows without a label count for nothing: drop them
        hidden, labels = hidden[kept], labels[kept]
        t_hidden = None if t_hidden is None else t_hidden[kept]
    spec = kd_spec(loss=loss, kd_ratio=kd_ratio, alpha=alpha, beta=beta, temperature=temperature,
                   detach_mixture=detach_mixture, normalizer=normalizer, chunk_size=chunk_size,
                   any_kept=labels.numel() > 0)
    if spec.mean:  # per kept row
        inv = 1.0 / labels.numel() if labels.numel() else 0.0
        spec.scale, spec.w_ce, spec.mean = spec.scale * inv, spec.w_ce * inv, False
    objective, div_sum, ce_sum = _run(hidden, student_head, t_hidden, teacher_head, labels,
                                      [(0, hidden.shape[0], spec)])
    return objective, {"kd_sum": float(div_sum), "ce_sum": float(ce_sum), "tokens": float(labels.numel())}


def distillm2_head(student_hidden, student_head, teacher_hidden, teacher_head, sample, pairs, *, alpha_t=0.1,
                   alpha_s=0.1, beta=0.5, temperature=1.0, chunk_size=1024):
    """``dense.distillm2_rows`` (DistiLLM-2's contrastive loss on the rows of a pair batch) with
    both output heads fused in: hidden rows [N, H] / [N, H'] in place of logit rows."""
    hidden, t_hidden = _rows(student_hidden, "student_hidden"), _rows(teacher_hidden, "teacher_hidden")
    _check_pair(hidden, student_head, t_hidden, teacher_head)
    cdt = _compute_dtype(hidden, student_head.weight, t_hidden, teacher_head.weight)
    parts = distillm2_parts(sample, pairs, hidden.shape[0], alpha_t=alpha_t, alpha_s=alpha_s, beta=beta,
                            temperature=temperature, chunk_size=chunk_size, cdt=cdt, device=hidden.device)
    objective, _, _ = _run(hidden, student_head, t_hidden, teacher_head, None, parts)
    return objective


@torch.no_grad()
def head_label_logprobs(hidden, head, labels, *, chunk_size=1024):
    """log softmax(z)[label] of each row, z from the head (``dense.label_logprobs`` without the logits).
    hidden: [N, H] or [1, N, H]; labels: [N] or [1, N]. Returns [N] (float32, float64 for float64)."""
    rows, y = _rows(hidden, "hidden"), labels.reshape(-1).to(hidden.device)
    if y.numel() != rows.shape[0]:
        raise ValueError(f"labels ({y.numel()}) and hidden rows ({rows.shape[0]}) differ in number")
    cdt = _compute_dtype(rows, head.weight)
    out = torch.empty(rows.shape[0], dtype=cdt, device=rows.device)
    step = _head_rows(rows.shape[0], head.vocab, cdt, rows.device, [chunk_size])
    ws = _Workspace(min(step, max(rows.shape[0], 1)), head.vocab, cdt, rows.device)
    for lo in range(0, rows.shape[0], step):
        hi = min(rows.shape[0], lo + step)
        z = _head_logits_into(ws("z", hi - lo, head.weight.dtype), rows[lo:hi], head).to(cdt)  # [n, V]
        out[lo:hi] = z.gather(1, y[lo:hi, None]).squeeze(1) - torch.logsumexp(z, dim=-1)
    return out
