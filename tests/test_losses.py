"""Losses against an independent float64 numpy reference (plain formulas, not the library)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillm_cli.losses import LOSSES, check_loss_params, distillm2, kd_objective

NAMES = list(LOSSES)
NEG_INF = float("-inf")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: a second intra-op thread only adds hand-off waits (large on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------
# Reference: numpy float64, straight from the definitions (METHOD.md §1, §4)
# ----------------------------------------------------------------------------


def np_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _kl_terms(w, log_w, log_other):
    """Σ w (log w − log other) with 0·log 0 = 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = np.where(w > 0, w * (log_w - log_other), 0.0)
    return terms.sum(-1)


def ref_per_position(name, s, t, alpha=0.1, beta=0.5, temperature=1.0, s_mix=None):
    """Divergence per position [B, T] from logits [B, T, V]; s_mix: logits of the q used inside m."""
    lq, lp = np_log_softmax(np.asarray(s) / temperature), np_log_softmax(np.asarray(t) / temperature)
    q, p = np.exp(lq), np.exp(lp)
    qm = q if s_mix is None else np.exp(np_log_softmax(np.asarray(s_mix) / temperature))
    a = np.asarray(alpha, dtype=np.float64)
    a = a.reshape(a.shape + (1, 1)) if a.ndim == 1 else a  # per-sample alpha [B] -> [B, 1, 1]
    with np.errstate(divide="ignore"):
        if name == "fkl":
            return _kl_terms(p, lp, lq)
        if name == "rkl":
            return _kl_terms(q, lq, lp)
        if name == "skew_fkl":
            return _kl_terms(p, lp, np.log(a * p + (1 - a) * qm))
        if name == "skew_rkl":
            return _kl_terms(q, lq, np.log(a * qm + (1 - a) * p))
        if name == "jsd":
            log_m = np.log(beta * p + (1 - beta) * qm)
            return beta * _kl_terms(p, lp, log_m) + (1 - beta) * _kl_terms(q, lq, log_m)
        if name == "tvd":
            return 0.5 * np.abs(p - q).sum(-1)
    raise ValueError(name)


def ref_loss(name, s, t, mask, reduction="mean", **kw):
    per = ref_per_position(name, s, t, **kw)
    mask = np.asarray(mask, dtype=bool)
    if reduction == "sum":
        return per[mask].sum()
    return per[mask].mean() if mask.any() else 0.0


def ref_ce(s, labels):
    """Cross-entropy per position at temperature 1 (labels -100 give 0)."""
    ls = np_log_softmax(s)
    safe = np.where(labels < 0, 0, labels)
    ce = -np.take_along_axis(ls, safe[..., None], axis=-1)[..., 0]
    return np.where(labels < 0, 0.0, ce)


def ref_distillm2(st, tt, mt, ss, ts, ms, alpha_t, alpha_s, beta, temperature=1.0, ss_mix=None):
    skl = ref_per_position("skew_fkl", st, tt, alpha=alpha_t, temperature=temperature)  # [B, T]
    srkl = ref_per_position("skew_rkl", ss, ts, alpha=alpha_s, temperature=temperature,
                            s_mix=ss if ss_mix is None else ss_mix)
    mt, ms = np.asarray(mt, dtype=np.float64), np.asarray(ms, dtype=np.float64)
    per_t = (skl * mt).sum(1) / np.maximum(mt.sum(1), 1)
    per_s = (srkl * ms).sum(1) / np.maximum(ms.sum(1), 1)
    return np.mean((1 - beta) * per_t + beta * per_s)


def num_grad(f, x, eps=1e-6):
    """Central differences of a scalar numpy function at x (float64)."""
    x = np.array(x, dtype=np.float64)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        hi = f(x)
        x[i] = old - eps
        lo = f(x)
        x[i] = old
        g[i] = (hi - lo) / (2 * eps)
    return g


# ----------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------


def make(B=3, T=5, V=11, seed=0, scale=3.0, dtype=torch.float64, p_keep=0.7):
    gen = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, T, V, generator=gen, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(B, T, V, generator=gen, dtype=torch.float64) * scale).to(dtype)
    mask = torch.rand(B, T, generator=gen) < p_keep
    mask[0, 0] = True
    return s, t, mask


def value_and_grad(fn, s, *args, **kw):
    x = s.clone().requires_grad_()
    v = fn(x, *args, **kw)
    v.backward()
    return v.detach(), x.grad


def rel_err(a, b):
    a, b = (float(x.detach()) if torch.is_tensor(x) else float(x) for x in (a, b))
    return abs(a - b) / max(abs(b), 1e-300)


PARAMS = [
    dict(alpha=0.1, beta=0.5, temperature=1.0),
    dict(alpha=0.0, beta=0.3, temperature=1.0),
    dict(alpha=0.5, beta=0.9, temperature=2.0),
    dict(alpha=0.9, beta=0.1, temperature=0.7),
]


# ----------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "a{alpha}-b{beta}-T{temperature}".format(**p))
@pytest.mark.parametrize("seed", [0, 1])
def test_value_matches_float64_reference(name, params, seed):
    s, t, mask = make(seed=seed)
    for reduction in ("mean", "sum"):
        got = LOSSES[name](s, t, mask, reduction=reduction, chunk_size=4, **params)
        assert got.dtype == torch.float64 and got.dim() == 0
        want = ref_loss(name, s.numpy(), t.numpy(), mask.numpy(), reduction=reduction, **params)
        assert rel_err(got, want) <= 1e-6, (reduction, float(got), want)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype, tol, grad_rtol", [(torch.float32, 2e-5, 1e-5), (torch.bfloat16, 2e-4, 8e-3),
                                                   (torch.float16, 2e-4, 1e-3)])
def test_low_precision_inputs_stay_close(name, dtype, tol, grad_rtol):
    s, t, mask = make(seed=3, dtype=dtype, V=64)
    got, grad = value_and_grad(LOSSES[name], s, t, mask, alpha=0.1, beta=0.5)
    assert got.dtype == torch.float32 and grad.dtype == dtype
    # Reference on the very same (rounded) inputs: only the float32 computation may differ.
    want = ref_loss(name, s.double().numpy(), t.double().numpy(), mask.numpy())
    assert rel_err(got, want) <= tol
    _, grad64 = value_and_grad(LOSSES[name], s.double(), t.double(), mask)
    # The gradient is stored in the input dtype: equal up to its rounding.
    atol = max(1e-6 * float(grad64.abs().max()), 2.0**-23)  # fp16 subnormals are 2^-24 apart
    assert torch.allclose(grad.double(), grad64, rtol=grad_rtol, atol=atol)


def test_fkl_and_rkl_are_not_swapped():
    s, t, mask = make(seed=4)
    fkl, rkl = LOSSES["fkl"](s, t, mask), LOSSES["rkl"](s, t, mask)
    assert abs(float(fkl) - float(rkl)) > 1e-3
    # KL(p || q): teacher first. Swapping the models turns one into the other.
    assert torch.allclose(LOSSES["fkl"](t, s, mask), rkl, rtol=1e-12)
    per = ref_per_position("fkl", s.numpy(), t.numpy())
    lp, lq = np_log_softmax(t.numpy()), np_log_softmax(s.numpy())
    assert np.allclose(per, (np.exp(lp) * (lp - lq)).sum(-1))


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    s, t, mask = make(B=2, T=3, V=5, seed=5)
    x = s.clone().requires_grad_()
    for params in PARAMS[:3]:
        assert torch.autograd.gradcheck(lambda z, p=params: LOSSES[name](z, t, mask, chunk_size=2, **p), (x,))


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_numeric_reference(name):
    s, t, mask = make(B=2, T=3, V=6, seed=6)
    params = dict(alpha=0.2, beta=0.4, temperature=1.5)
    _, grad = value_and_grad(LOSSES[name], s, t, mask, **params)
    want = num_grad(lambda z: ref_loss(name, z, t.numpy(), mask.numpy(), **params), s.numpy())
    assert np.allclose(grad.numpy(), want, atol=1e-8)


def test_gradcheck_kd_objective():
    s, t, mask = make(B=2, T=3, V=5, seed=7)
    labels = torch.randint(0, 5, (2, 3), generator=torch.Generator().manual_seed(0))
    labels[~mask] = -100
    x = s.clone().requires_grad_()
    for loss, ratio, temp in (("jsd", 0.4, 1.5), ("skew_rkl", 1.0, 1.0), ("fkl", 0.0, 2.0), ("tvd", 0.7, 1.0)):
        fn = lambda z, loss=loss, ratio=ratio, temp=temp: kd_objective(  # noqa: E731
            z, t, labels, loss=loss, kd_ratio=ratio, temperature=temp, normalizer=5.0, chunk_size=2)[0]
        assert torch.autograd.gradcheck(fn, (x,))


def test_gradcheck_distillm2_teacher_response_term():
    st, tt, mt = make(B=2, T=3, V=5, seed=8)
    ss, ts, ms = make(B=2, T=4, V=5, seed=9)
    x = st.clone().requires_grad_()
    alpha = torch.tensor([0.1, 0.03], dtype=torch.float64)
    fn = lambda z: distillm2(z, tt, mt, ss, ts, ms, alpha_t=alpha, beta=0.3, chunk_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))


# ----------------------------------------------------------------------------
# Limits
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("plain, skew", [("fkl", "skew_fkl"), ("rkl", "skew_rkl")])
def test_alpha_zero_is_plain_kl(plain, skew):
    s, t, mask = make(seed=10, dtype=torch.float32)
    v_plain, g_plain = value_and_grad(LOSSES[plain], s, t, mask)
    v_skew, g_skew = value_and_grad(LOSSES[skew], s, t, mask, alpha=0.0)
    assert torch.equal(v_plain, v_skew)
    assert torch.allclose(g_plain, g_skew, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_identical_models_give_zero_loss_and_gradient(name):
    s, _, mask = make(seed=11)
    for params in PARAMS:
        v, g = value_and_grad(LOSSES[name], s, s.clone(), mask, **params)
        assert abs(float(v)) <= 1e-12
        assert float(g.abs().max()) <= 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_fully_masked_batch_is_zero_with_zero_gradient(name):
    s, t, _ = make(seed=12, dtype=torch.float32)
    mask = torch.zeros(s.shape[:2], dtype=torch.bool)
    v, g = value_and_grad(LOSSES[name], s, t, mask)
    assert float(v) == 0.0
    assert torch.isfinite(g).all() and float(g.abs().max()) == 0.0


def test_kd_objective_without_tokens_is_zero():
    s, t, _ = make(seed=13, dtype=torch.float32)
    labels = torch.full(s.shape[:2], -100)
    x = s.clone().requires_grad_()
    obj, stats = kd_objective(x, t, labels, loss="skew_rkl", kd_ratio=0.5)
    obj.backward()
    assert float(obj.detach()) == 0.0 and stats == {"kd_sum": 0.0, "ce_sum": 0.0, "tokens": 0.0}
    assert float(x.grad.abs().max()) == 0.0


def test_jsd_symmetric_at_half():
    s, t, mask = make(seed=14)
    a = LOSSES["jsd"](s, t, mask, beta=0.5)
    assert torch.allclose(a, LOSSES["jsd"](t, s, mask, beta=0.5), rtol=1e-12)
    b = LOSSES["jsd"](s, t, mask, beta=0.2)
    assert not torch.allclose(b, LOSSES["jsd"](t, s, mask, beta=0.2), rtol=1e-6)


# ----------------------------------------------------------------------------
# Extreme logits
# ----------------------------------------------------------------------------


def _finite(v, g):
    return bool(torch.isfinite(v)) and bool(torch.isfinite(g).all())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_huge_logit_gaps(name, dtype):
    s, t, mask = make(seed=15, V=9)
    s[..., 0] += 1e4  # student sure of token 0
    t[..., 1] -= 1e4  # teacher rules out token 1
    t[1, :, 2] += 1e4  # and is sure of token 2 in one sequence
    v, g = value_and_grad(LOSSES[name], s.to(dtype), t.to(dtype), mask)
    assert _finite(v, g)
    if dtype == torch.float64:
        assert rel_err(v, ref_loss(name, s.numpy(), t.numpy(), mask.numpy())) <= 1e-6


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_minus_inf_at_the_same_entries_is_a_smaller_vocabulary(name, dtype):
    s, t, mask = make(seed=16, V=10)
    s[..., 7:], t[..., 7:] = NEG_INF, NEG_INF  # padded vocabulary entries
    s[0, 1, 3], t[0, 1, 3] = NEG_INF, NEG_INF
    v, g = value_and_grad(LOSSES[name], s.to(dtype), t.to(dtype), mask, alpha=0.1)
    assert _finite(v, g)
    assert float(g[..., 7:].abs().max()) == 0.0
    # Same value as the reference on the vocabulary without the padded entries.
    want = ref_loss(name, s[..., :7].numpy(), t[..., :7].numpy(), mask.numpy())
    tol = 1e-6 if dtype == torch.float64 else 1e-5
    assert rel_err(v, want) <= tol


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_minus_inf_at_different_entries(name, alpha):
    s, t, mask = make(seed=17, V=8)
    s[..., 2] = NEG_INF  # student rules out token 2, which the teacher supports
    t[..., 5] = NEG_INF  # teacher rules out token 5, which the student supports
    v, g = value_and_grad(LOSSES[name], s, t, mask, alpha=alpha)
    want = ref_loss(name, s.numpy(), t.numpy(), mask.numpy(), alpha=alpha)
    if name in ("fkl", "rkl") or alpha == 0.0 and name in ("skew_fkl", "skew_rkl"):
        assert float(v) == float("inf") and want == float("inf")  # the true KL, not NaN
        return
    assert _finite(v, g) and rel_err(v, want) <= 1e-6
    assert float(g[..., 2].abs().max()) == 0.0  # q = 0 there and stays 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_nan_logit_makes_the_loss_nan(name, side):
    """0 · log 0 = 0 is applied only where a probability is 0: a NaN logit is not hidden as 0
    (the distill loop's finiteness check must see it before the optimizer does)."""
    s, t, mask = make(seed=20, V=8)
    (s if side == "student" else t)[0, 0, 3] = float("nan")
    v, _ = value_and_grad(LOSSES[name], s.float(), t.float(), mask, alpha=0.1)
    assert bool(torch.isnan(v))


@pytest.mark.parametrize("name", ["fkl", "skew_fkl", "skew_rkl", "jsd", "tvd"])
def test_minus_inf_only_in_the_teacher(name):
    s, t, mask = make(seed=18, V=8)
    t[..., 5] = NEG_INF
    t[0, 0, :4] = NEG_INF
    v, g = value_and_grad(LOSSES[name], s.float(), t.float(), mask)
    assert _finite(v, g)
    assert rel_err(v, ref_loss(name, s.numpy(), t.numpy(), mask.numpy())) <= 1e-5


@pytest.mark.parametrize("name", ["rkl", "skew_fkl", "skew_rkl", "jsd", "tvd"])
def test_minus_inf_only_in_the_student(name):
    s, t, mask = make(seed=19, V=8)
    s[..., 5] = NEG_INF
    s[0, 0, :4] = NEG_INF
    v, g = value_and_grad(LOSSES[name], s.float(), t.float(), mask)
    assert _finite(v, g)
    assert rel_err(v, ref_loss(name, s.numpy(), t.numpy(), mask.numpy())) <= 1e-5


# ----------------------------------------------------------------------------
# Chunking
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_chunked_equals_unchunked(name):
    s, t, mask = make(B=3, T=7, seed=20)  # N kept rows, not a multiple of most chunk sizes
    n = int(mask.sum())
    params = dict(alpha=0.2, beta=0.3, temperature=1.3)
    v_ref, g_ref = value_and_grad(LOSSES[name], s, t, mask, chunk_size=n + 5, **params)
    for chunk in (1, 2, 3, 4, n - 1, n):
        v, g = value_and_grad(LOSSES[name], s, t, mask, chunk_size=chunk, **params)
        assert torch.allclose(v, v_ref, rtol=1e-13, atol=0)
        assert torch.allclose(g, g_ref, rtol=1e-12, atol=1e-15)
    # all positions kept and a non-contiguous student (a shifted view) take other code paths
    full = torch.ones_like(mask)
    big_s = torch.cat([s, s[:, :1]], dim=1)
    v1 = LOSSES[name](big_s[:, :-1], t, full, chunk_size=2, **params)
    v2 = LOSSES[name](s, t, full, chunk_size=100, **params)
    assert torch.allclose(v1, v2, rtol=1e-13)


def test_no_gradient_buffer_in_eval():
    s, t, mask = make(seed=21)
    x = s.clone().requires_grad_()
    with torch.no_grad():
        v = LOSSES["skew_rkl"](x, t, mask)
    assert not v.requires_grad
    assert torch.allclose(v, LOSSES["skew_rkl"](s, t, mask), rtol=1e-14)


def test_backward_scales_by_the_incoming_gradient():
    s, t, mask = make(seed=22)
    _, g = value_and_grad(LOSSES["skew_fkl"], s, t, mask)
    x = s.clone().requires_grad_()
    (3.0 * LOSSES["skew_fkl"](x, t, mask)).backward()
    assert torch.allclose(x.grad, 3.0 * g, rtol=1e-13)
    y = s.clone().requires_grad_()
    v = LOSSES["skew_fkl"](y, t, mask)
    v.backward(retain_graph=True)
    v.backward()  # accumulates: the buffer handed out the first time must not have been modified
    assert torch.allclose(y.grad, 2.0 * g, rtol=1e-13)
    # Two losses on the same logits (non-leaf, as in a model): their gradients add up.
    _, g2 = value_and_grad(LOSSES["tvd"], s, t, mask)
    z = s.clone().requires_grad_()
    logits = z * 1.0
    (LOSSES["skew_fkl"](logits, t, mask) + LOSSES["tvd"](logits, t, mask)).backward()
    assert torch.allclose(z.grad, g + g2, rtol=1e-12, atol=1e-16)


# ----------------------------------------------------------------------------
# Half-precision students: the loss scale meets the gradient in float32
# ----------------------------------------------------------------------------


def torch_ref_per_position(name, s, t, alpha=0.1, beta=0.5):
    """Divergence per position [B, T] by plain torch ops (autograd differentiates it), any float dtype."""
    lq, lp = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    q, p = lq.exp(), lp.exp()
    if name == "fkl":
        return (p * (lp - lq)).sum(-1)
    if name == "skew_rkl":
        return (q * (lq - torch.log(alpha * q + (1 - alpha) * p))).sum(-1)
    if name == "jsd":
        log_m = torch.log(beta * p + (1 - beta) * q)
        return beta * (p * (lp - log_m)).sum(-1) + (1 - beta) * (q * (lq - log_m)).sum(-1)
    raise ValueError(name)


def _fused_and_autograd_grads(name, dtype, teacher_dtype, incoming, normalizer, kd_ratio=0.9):
    """Gradients of (kd_objective · incoming) w.r.t. half-precision student logits, fused and by autograd.

    The reference upcasts the same half logits to float32, forms the objective by
    plain torch ops and back-propagates the same incoming gradient. Returns (fused
    [student dtype], reference float32, autograd's own [reference rounded once to
    the student dtype, which is what autograd through ``.float()`` hands back]).
    """
    B, T, V = 2, 24, 2048
    gen = torch.Generator().manual_seed(40)
    s = (torch.randn(B, T, V, generator=gen) * 3).to(dtype)
    t = (torch.randn(B, T, V, generator=gen) * 3).to(teacher_dtype)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[0, :5] = labels[1, -3:] = -100  # prompt and padding rows: the gather / scatter path
    x = s.clone().requires_grad_()
    objective, _ = kd_objective(x, t, labels, loss=name, kd_ratio=kd_ratio, normalizer=normalizer)
    (objective * incoming).backward()

    r = s.float().requires_grad_()
    keep = labels != -100
    div = torch_ref_per_position(name, r, t.float())[keep].sum()
    ce = F.cross_entropy(r[keep], labels[keep], reduction="sum")
    ((kd_ratio * div + (1 - kd_ratio) * ce) / normalizer * incoming).backward()
    return x.grad, r.grad, r.grad.to(dtype)


@pytest.mark.parametrize("name", ["skew_rkl", "fkl", "jsd"])
@pytest.mark.parametrize("dtype, teacher_dtype, incoming", [
    # DeepSpeed's fp16 loss scale: 2^16 at the start (inf in fp16 itself), 2^15 after one overflow.
    (torch.float16, torch.float16, 2.0**16), (torch.float16, torch.float16, 2.0**15),
    # bf16 has no loss scale; a weight that is not a power of two (e.g. 1/grad_accum at 3) would
    # round a bf16 gradient twice.
    (torch.bfloat16, torch.float32, 1.0 / 3.0),
], ids=["fp16-scale2^16", "fp16-scale2^15", "bf16-weight1/3"])
def test_half_precision_gradient_matches_float32_autograd(name, dtype, teacher_dtype, incoming):
    # 4096 tokens in the window: per-entry gradients of 1e-7..1e-10 before the scale, most of them below
    # fp16's smallest subnormal (6e-8), i.e. 0 if stored in fp16 before the scale is applied.
    fused, ref, auto = _fused_and_autograd_grads(name, dtype, teacher_dtype, incoming, normalizer=4096.0)
    assert fused.dtype == dtype and bool(torch.isfinite(fused).all())
    nonzero = ref != 0
    flushed = float(((fused == 0) & nonzero).sum() / nonzero.sum())
    flushed_by_autograd = float(((auto == 0) & nonzero).sum() / nonzero.sum())
    assert flushed < 0.01 and flushed <= flushed_by_autograd + 1e-3, (flushed, flushed_by_autograd)
    # Rounded once from float32, like autograd: half an ulp (2^-11 fp16, 2^-8 bf16) plus float32 noise,
    # absolute: half fp16's subnormal spacing, and float32 noise on entries that are a cancellation.
    half_ulp = torch.finfo(dtype).eps / 2
    atol = max(2.0**-25 if dtype == torch.float16 else 0.0, 1e-6 * float(ref.abs().max()))
    assert torch.allclose(fused.float(), ref, rtol=1.1 * half_ulp, atol=atol)
    # ... and so the very same half values as autograd's, but for a few float32 rounding ties.
    assert float((fused != auto).float().mean()) < 0.01


# ----------------------------------------------------------------------------
# The mixture gradient (DistiLLM) and its detached variant (DistiLLM-2)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["skew_fkl", "skew_rkl"])
def test_gradient_flows_through_the_mixture(name):
    s, t, mask = make(B=2, T=3, V=6, seed=23)
    v, g = value_and_grad(LOSSES[name], s, t, mask, alpha=0.3)
    v_det, g_det = value_and_grad(LOSSES[name], s, t, mask, alpha=0.3, detach_mixture=True)
    assert torch.allclose(v, v_det, rtol=1e-14)  # same value
    assert float((g - g_det).abs().max()) > 1e-3  # different gradient
    # Detached: the gradient of the formula with q inside m held at its current value.
    s0 = s.numpy().copy()
    want = num_grad(lambda z: ref_loss(name, z, t.numpy(), mask.numpy(), alpha=0.3, s_mix=s0), s0)
    assert np.allclose(g_det.numpy(), want, atol=1e-8)


def test_jsd_gradient_is_the_same_with_a_detached_mixture():
    s, t, mask = make(seed=24)
    _, g = value_and_grad(LOSSES["jsd"], s, t, mask, beta=0.3)
    _, g_det = value_and_grad(LOSSES["jsd"], s, t, mask, beta=0.3, detach_mixture=True)
    assert torch.allclose(g, g_det, rtol=1e-10, atol=1e-15)


# ----------------------------------------------------------------------------
# kd_objective
# ----------------------------------------------------------------------------


def _labels(mask, V, seed=0):
    labels = torch.randint(0, V, mask.shape, generator=torch.Generator().manual_seed(seed))
    labels[~mask] = -100
    return labels


def test_kd_ratio_zero_is_token_mean_cross_entropy():
    s, t, mask = make(seed=25)
    labels = _labels(mask, s.shape[-1])
    want = F.cross_entropy(s.reshape(-1, s.shape[-1]), labels.reshape(-1), ignore_index=-100)
    for teacher, temp in ((t, 1.0), (None, 1.0), (t, 2.5)):  # CE is always at temperature 1
        x = s.clone().requires_grad_()
        obj, stats = kd_objective(x, teacher, labels, loss="fkl", kd_ratio=0.0, temperature=temp, chunk_size=3)
        assert rel_err(obj, want) <= 1e-12
        assert stats["kd_sum"] == 0.0 and stats["tokens"] == float(mask.sum())
        assert rel_err(stats["ce_sum"], ref_ce(s.numpy(), labels.numpy()).sum()) <= 1e-12
        obj.backward()
        y = s.clone().requires_grad_()
        F.cross_entropy(y.reshape(-1, y.shape[-1]), labels.reshape(-1), ignore_index=-100).backward()
        assert torch.allclose(x.grad, y.grad, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_kd_ratio_one_is_the_divergence(name):
    s, t, mask = make(seed=26)
    labels = _labels(mask, s.shape[-1])
    obj, stats = kd_objective(s, t, labels, loss=name, kd_ratio=1.0, alpha=0.2, beta=0.4, temperature=1.5)
    want = ref_loss(name, s.numpy(), t.numpy(), mask.numpy(), alpha=0.2, beta=0.4, temperature=1.5)
    assert rel_err(obj, want) <= 1e-6
    assert rel_err(stats["kd_sum"], want * int(mask.sum())) <= 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_objective_mixes_and_normalizes(temperature):
    s, t, mask = make(seed=27)
    labels = _labels(mask, s.shape[-1])
    per = ref_per_position("skew_rkl", s.numpy(), t.numpy(), alpha=0.1, temperature=temperature)
    ce = ref_ce(s.numpy(), labels.numpy())
    m = mask.numpy()
    want = (0.3 * per[m] + 0.7 * ce[m]).sum() / 40.0
    obj, stats = kd_objective(s, t, labels, loss="skew_rkl", kd_ratio=0.3, temperature=temperature,
                              normalizer=torch.tensor(40.0))
    assert rel_err(obj, want) <= 1e-6
    assert rel_err(stats["kd_sum"], per[m].sum()) <= 1e-6 and rel_err(stats["ce_sum"], ce[m].sum()) <= 1e-6


def test_gradient_accumulation_invariance():
    torch.manual_seed(0)
    B, T, H, V = 8, 6, 4, 13
    model = torch.nn.Linear(H, V).double()
    x = torch.randn(B, T, H, dtype=torch.float64)
    teacher = torch.randn(B, T, V, dtype=torch.float64) * 2
    mask = torch.rand(B, T) < 0.6
    mask[:, 0] = True
    mask[5, :] = False  # a sample without response tokens
    labels = _labels(mask, V, seed=1)
    kw = dict(loss="skew_rkl", kd_ratio=0.6, alpha=0.1, chunk_size=5)

    model.zero_grad()
    kd_objective(model(x), teacher, labels, **kw)[0].backward()
    full = [p.grad.clone() for p in model.parameters()]

    total = int(mask.sum())
    model.zero_grad()
    for lo in range(0, B, 2):
        kd_objective(model(x[lo:lo + 2]), teacher[lo:lo + 2], labels[lo:lo + 2], normalizer=total, **kw)[0].backward()
    for p, g in zip(model.parameters(), full):
        assert torch.allclose(p.grad, g, rtol=0, atol=1e-6 * float(g.abs().max()))

    # Per-micro-batch means (the common bug) do not give the same gradient here.
    model.zero_grad()
    for lo in range(0, B, 2):
        (kd_objective(model(x[lo:lo + 2]), teacher[lo:lo + 2], labels[lo:lo + 2], **kw)[0] / 4).backward()
    assert not torch.allclose(model.weight.grad, full[0], atol=1e-6 * float(full[0].abs().max()))


def test_kd_objective_refusals():
    s, t, mask = make(seed=28)
    labels = _labels(mask, s.shape[-1])
    with pytest.raises(ValueError, match="teacher"):
        kd_objective(s, None, labels, loss="fkl", kd_ratio=0.5)
    with pytest.raises(ValueError, match="kd_ratio"):
        kd_objective(s, t, labels, loss="fkl", kd_ratio=1.5)
    with pytest.raises(ValueError, match="vocabulary"):
        kd_objective(s, t[..., :-1], labels, loss="fkl")


# ----------------------------------------------------------------------------
# DistiLLM-2
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.5, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("per_sample", [False, True])
def test_distillm2_matches_reference(beta, per_sample):
    st, tt, mt = make(B=3, T=5, V=9, seed=29)
    ss, ts, ms = make(B=3, T=6, V=9, seed=30)
    ms[2] = False  # a student response with no kept tokens contributes 0
    alpha_t = torch.tensor([0.1, 0.05, 0.01], dtype=torch.float64) if per_sample else 0.1
    alpha_s = torch.tensor([0.02, 0.1, 0.07], dtype=torch.float64) if per_sample else 0.05
    a_t = alpha_t.numpy() if per_sample else alpha_t
    a_s = alpha_s.numpy() if per_sample else alpha_s
    xt, xs = st.clone().requires_grad_(), ss.clone().requires_grad_()
    got = distillm2(xt, tt, mt, xs, ts, ms, alpha_t=alpha_t, alpha_s=alpha_s, beta=beta, chunk_size=4)
    want = ref_distillm2(st.numpy(), tt.numpy(), mt.numpy(), ss.numpy(), ts.numpy(), ms.numpy(), a_t, a_s, beta)
    assert rel_err(got, want) <= 1e-6
    got.backward()
    args = (tt.numpy(), mt.numpy(), ss.numpy(), ts.numpy(), ms.numpy(), a_t, a_s, beta)
    g_t = num_grad(lambda z: ref_distillm2(z, *args), st.numpy())
    assert np.allclose(xt.grad.numpy() if xt.grad is not None else 0.0, g_t, atol=1e-8)
    # Student-response term: the student inside the SRKL mixture is a constant.
    s0 = ss.numpy().copy()
    g_s = num_grad(lambda z: ref_distillm2(st.numpy(), tt.numpy(), mt.numpy(), z, ts.numpy(), ms.numpy(),
                                           a_t, a_s, beta, ss_mix=s0), s0)
    assert np.allclose(xs.grad.numpy(), g_s, atol=1e-8)
    g_s_undetached = num_grad(lambda z: ref_distillm2(st.numpy(), tt.numpy(), mt.numpy(), z, ts.numpy(),
                                                      ms.numpy(), a_t, a_s, beta), s0)
    assert not np.allclose(g_s, g_s_undetached, atol=1e-6)  # the detach is visible


def test_distillm2_float32_and_shapes():
    st, tt, mt = make(B=2, T=4, V=7, seed=31, dtype=torch.float32)
    ss, ts, ms = make(B=2, T=4, V=7, seed=32, dtype=torch.float32)
    got = distillm2(st, tt, mt, ss, ts, ms)
    assert got.dtype == torch.float32
    want = ref_distillm2(st.double().numpy(), tt.double().numpy(), mt.numpy(), ss.double().numpy(),
                         ts.double().numpy(), ms.numpy(), 0.1, 0.1, 0.5)
    assert rel_err(got, want) <= 1e-5
    with pytest.raises(ValueError, match="same prompts"):
        distillm2(st, tt, mt, ss[:1], ts[:1], ms[:1])
    with pytest.raises(ValueError, match="alpha_s"):
        distillm2(st, tt, mt, ss, ts, ms, alpha_s=torch.tensor([0.1, 1.0]))


def _pair_logits(n=3, T=9, V=13, seed=40, dtype=torch.float64):
    """[2n, T, V] logits of a pair batch [teacher responses; student responses] and its label mask:
    prompts of different lengths (mask False in front), right padding (False behind)."""
    s, t, _ = make(B=2 * n, T=T, V=V, seed=seed, dtype=dtype)
    keep = torch.zeros(2 * n, T, dtype=torch.bool)
    for row, (start, stop) in enumerate([(3, 9), (1, 5), (4, 7), (2, 8), (5, 6), (3, 3)][:2 * n]):
        keep[row, start:stop] = True  # the last student response has no tokens
    return s, t, keep


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("per_sample", [False, True])
def test_distillm2_rows_equal_the_dense_loss_on_a_padded_pair_batch(dtype, tol, beta, per_sample):
    from distillm_cli.losses import distillm2_rows

    n = 3
    s, t, keep = _pair_logits(n=n, dtype=dtype)
    alpha_t = torch.tensor([0.1, 0.05, 0.01], dtype=torch.float64) if per_sample else 0.1
    alpha_s = torch.tensor([0.02, 0.1, 0.07], dtype=torch.float64) if per_sample else 0.05
    params = dict(alpha_t=alpha_t, alpha_s=alpha_s, beta=beta, temperature=1.5, chunk_size=2)

    dense_x = s.clone().requires_grad_()
    dense = distillm2(dense_x[:n], t[:n], keep[:n], dense_x[n:], t[n:], keep[n:], **params)
    dense.backward()
    rows_x = s.clone().requires_grad_()
    sample = keep.nonzero(as_tuple=True)[0]  # the sequence of each row, as response_logits orders them
    rows = distillm2_rows(rows_x[keep].unsqueeze(0), t[keep].unsqueeze(0), sample, n, **params)
    rows.backward()
    assert rows.dtype == dense.dtype
    assert rel_err(rows, dense) <= tol
    scale = float(dense_x.grad.abs().max())
    assert torch.allclose(rows_x.grad, dense_x.grad, rtol=tol, atol=tol * scale)
    assert not bool(rows_x.grad[~keep].any())  # prompt and padding rows get nothing


def test_distillm2_rows_take_rows_as_response_logits_gives_them_and_refuse_bad_ones():
    from distillm_cli.losses import distillm2_rows

    s, t, keep = _pair_logits(n=2, T=6, V=7, seed=41, dtype=torch.float32)
    rows = s[keep].unsqueeze(0).requires_grad_()  # [1, N, V], what response_logits gives
    teacher = t[keep].unsqueeze(0)
    sample = keep.nonzero(as_tuple=True)[0]
    loss = distillm2_rows(rows, teacher, sample, 2)
    loss.backward()
    assert rows.grad.shape == rows.shape and rows.grad.is_contiguous()
    with torch.no_grad():
        assert float(distillm2_rows(rows, teacher, sample, 2)) == pytest.approx(float(loss), rel=1e-6)
    with pytest.raises(ValueError, match="before the student-response rows"):
        distillm2_rows(rows, teacher, sample.flip(0), 2)
    with pytest.raises(ValueError, match="sample values"):
        distillm2_rows(rows, teacher, sample + 1, 2)
    with pytest.raises(ValueError, match="rows"):
        distillm2_rows(rows, teacher, sample[1:], 2)
    with pytest.raises(ValueError, match="alpha_t"):
        distillm2_rows(rows, teacher, sample, 2, alpha_t=torch.tensor([0.1, 0.1, 0.1]))
    with pytest.raises(ValueError, match="same tokenizer"):
        distillm2_rows(rows, teacher[..., :5], sample, 2)
    empty = distillm2_rows(rows[:, :0], teacher[:, :0], sample[:0], 2)
    assert float(empty.detach()) == 0.0


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6), (torch.bfloat16, 1e-6)])
def test_label_logprobs_match_log_softmax(dtype, tol):
    from distillm_cli.losses import label_logprobs

    x = (torch.randn(1, 37, 11, generator=torch.Generator().manual_seed(42), dtype=torch.float64) * 4).to(dtype)
    labels = torch.randint(0, 11, (1, 37), generator=torch.Generator().manual_seed(43))
    want = torch.log_softmax(x.double(), -1).gather(-1, labels[..., None]).reshape(-1)
    got = label_logprobs(x, labels, chunk_size=4)
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and got.shape == (37,)
    assert torch.allclose(got.double(), want, rtol=0, atol=tol * 10)


# ----------------------------------------------------------------------------
# Parameter checks
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, alpha, beta, match", [
    ("kl", 0.1, 0.5, "unknown loss"),
    ("skew_rkl", 1.0, 0.5, "alpha"),
    ("skew_fkl", -0.1, 0.5, "alpha"),
    ("jsd", 0.1, 0.0, "beta"),
    ("jsd", 0.1, 1.0, "beta"),
    ("distillm2", 0.1, 1.5, "beta"),
])
def test_check_loss_params_refuses(name, alpha, beta, match):
    with pytest.raises(ValueError, match=match) as info:
        check_loss_params(name, alpha, beta)
    message = str(info.value)
    assert "\n" not in message and "set loss." in message


def test_check_loss_params_accepts():
    for name in NAMES + ["distillm2"]:
        check_loss_params(name, 0.0, 0.5)
        check_loss_params(name, 0.1, 0.5)
    check_loss_params("fkl", 0.1, 7.0)  # beta only matters for jsd and distillm2


def test_losses_refuse_bad_inputs():
    s, t, mask = make(seed=33)
    with pytest.raises(ValueError, match="alpha"):
        LOSSES["skew_rkl"](s, t, mask, alpha=1.0)
    with pytest.raises(ValueError, match="vocabulary"):
        LOSSES["fkl"](s, t[..., :5], mask)
    with pytest.raises(ValueError, match="reduction"):
        LOSSES["fkl"](s, t, mask, reduction="none")


# --------------------------------------------------------------------------- response-only logits

def _tiny_causal_lms():
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=53, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=0,
                                      eos_token_id=0))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=53, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                         bos_token_id=0, eos_token_id=0))
    return [gpt2.double().eval(), llama.double().eval()]  # eval: no dropout, so two passes agree


def _padded_batch():
    """Right-padded batch, prompts of different lengths, labels -100 on prompt and padding."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (3, 12), generator=g)
    attention = torch.ones(3, 12, dtype=torch.long)
    attention[1, 9:] = 0
    attention[2, 6:] = 0
    labels = ids.clone()
    labels[0, :4], labels[1, :7], labels[2, :2] = -100, -100, -100
    labels[attention == 0] = -100
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


@pytest.mark.parametrize("loss", ["skew_rkl", "jsd"])
def test_response_logits_give_the_same_objective_and_gradient(loss):
    from distillm_cli.models.loading import forward_logits, response_logits

    student, teacher = _tiny_causal_lms()
    batch = _padded_batch()

    def objective(logits_fn):
        student.zero_grad()
        with torch.no_grad():
            t_logits, labels = logits_fn(teacher, batch, torch.device("cpu"), 50)
        s_logits, _ = logits_fn(student, batch, torch.device("cpu"), 50)
        value, _ = kd_objective(s_logits, t_logits, labels, loss=loss, kd_ratio=0.7, normalizer=5.0)
        value.backward()
        return value.detach(), [p.grad.clone() for p in student.parameters()]

    full_value, full_grads = objective(lambda m, b, d, v: (forward_logits(m, b, d, v), b["labels"]))
    kept_value, kept_grads = objective(response_logits)
    assert torch.allclose(full_value, kept_value, rtol=1e-10)
    for a, b in zip(full_grads, kept_grads):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
    logits, labels = response_logits(student, batch, torch.device("cpu"), 50)
    assert logits.shape == (1, int((batch["labels"] != -100).sum()), 50) and labels.shape == logits.shape[:2]


def test_response_logits_of_an_all_masked_batch_count_nothing():
    from distillm_cli.models.loading import response_logits

    student, teacher = _tiny_causal_lms()
    batch = {**_padded_batch(), "labels": torch.full((3, 12), -100)}
    s_logits, labels = response_logits(student, batch, torch.device("cpu"), 50)
    t_logits, _ = response_logits(teacher, batch, torch.device("cpu"), 50)
    value, stats = kd_objective(s_logits, t_logits, labels, loss="fkl", normalizer=1.0)
    assert float(value) == 0.0 and stats["tokens"] == 0.0


def _padded_pair_batch():
    """A pair batch [teacher responses; student responses] of 2 prompts: prompts of different
    lengths, responses of different lengths, right padding, labels -100 on prompt and padding."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50, (4, 12), generator=g)
    attention = torch.ones(4, 12, dtype=torch.long)
    labels = ids.clone()
    for row, (prompt, length) in enumerate([(4, 12), (2, 7), (4, 9), (2, 10)]):
        ids[row, length:] = 49
        attention[row, length:] = 0
        labels[row, :prompt - 1] = -100
        labels[row, length - 1:] = -100
        ids[row + 2 if row < 2 else row - 2, :prompt] = ids[row, :prompt]  # both responses share the prompt
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "pairs": torch.tensor(2)}


@pytest.mark.parametrize("fused_head", [False, True])
def test_the_pair_step_on_response_rows_equals_the_dense_pair_step(fused_head):
    """DistiLLM-2's step (batch_pair_loss: head on response rows, or fused into the loss; chunked gap)
    against the dense one it replaced (logits at every position, mean_label_probability on them):
    loss, alphas and gradients."""
    from distillm_cli.models.loading import forward_logits
    from distillm_cli.runtime import Runtime
    from distillm_cli.teacher import LiveTeacher
    from distillm_cli.train.contrastive import AlphaCurriculum, mean_label_probability
    from distillm_cli.train.objectives import batch_pair_loss

    cpu = torch.device("cpu")
    runtime = Runtime(rank=0, world_size=1, device=cpu)
    batch = _padded_pair_batch()
    for student, teacher_model in (_tiny_causal_lms(), _tiny_causal_lms()[::-1]):
        teacher = LiveTeacher(teacher_model, cpu, 50)
        # Past the first epoch with a target, so the alphas depend on the gap.
        curricula = [AlphaCurriculum(0.1, 0.01, enabled=True, first_epoch_steps=1) for _ in range(2)]
        for c in curricula:
            c.target_sum, c.target_count = 0.004, 1

        def alphas(gap, curricula=curricula):
            return curricula[0].alphas(1, gap[:2]), curricula[1].alphas(1, gap[2:])

        student.zero_grad()
        loss, alpha_t, alpha_s = batch_pair_loss(student, teacher, batch, runtime, 50, alphas=alphas, beta=0.7,
                                                 temperature=1.0, chunk_size=3, fused_head=fused_head)
        loss.backward()
        rows_grads = [p.grad.clone() for p in student.parameters()]

        student.zero_grad()
        labels = batch["labels"]
        t_logits = teacher.logits(batch)  # [4, T, V]
        s_logits = forward_logits(student, batch, cpu, 50)
        gap = mean_label_probability(t_logits, labels) - mean_label_probability(s_logits.detach(), labels)
        dense_t, dense_s = alphas(gap)
        assert not torch.equal(alpha_t, torch.full_like(alpha_t, 0.1))  # the curriculum is live
        # The dense gap was float32 (mean_label_probability upcasts to float32 only): alike to its rounding.
        assert torch.allclose(alpha_t, dense_t, rtol=0, atol=1e-6)
        assert torch.allclose(alpha_s, dense_s, rtol=0, atol=1e-6)
        keep = labels != -100  # the same alphas into the dense loss: the rest must agree to float64 rounding
        dense = distillm2(s_logits[:2], t_logits[:2], keep[:2], s_logits[2:], t_logits[2:], keep[2:],
                          alpha_t=alpha_t, alpha_s=alpha_s, beta=0.7, chunk_size=3)
        dense.backward()
        assert rel_err(loss, dense) <= 1e-10
        for a, b in zip(rows_grads, (p.grad for p in student.parameters())):
            assert torch.allclose(a, b, rtol=1e-8, atol=1e-10 * float(b.abs().max()))
