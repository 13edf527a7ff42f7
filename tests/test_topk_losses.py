"""Top-k (sparse teacher) losses against an independent float64 reference: plain torch autograd on
explicit (k + 1)-bucket distributions, straight from the definitions (losses/topk.py docstring)."""
from __future__ import annotations

import pytest
import torch

from distillm_cli.losses import LOSS_NAMES, kd_objective, kd_objective_topk, topk_of_logits

NAMES = list(LOSS_NAMES)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _kl(w, log_w, log_other):
    """Σ w (log w − log other) with 0·log 0 = 0 (rows)."""
    terms = torch.where(w > 0, w * (log_w - log_other), torch.zeros_like(w))
    return terms.sum(-1)


def ref_bucket_divergence(name, lq, lp, alpha, beta, lq_mix=None):
    """Divergence per row between bucket distributions given as log-probabilities [N, K]."""
    q, p = lq.exp(), lp.exp()
    qm = q if lq_mix is None else lq_mix.exp()
    if name == "fkl":
        return _kl(p, lp, lq)
    if name == "rkl":
        return _kl(q, lq, lp)
    if name == "skew_fkl":
        return _kl(p, lp, torch.log(alpha * p + (1 - alpha) * qm))
    if name == "skew_rkl":
        return _kl(q, lq, torch.log(alpha * qm + (1 - alpha) * p))
    if name == "jsd":
        log_m = torch.log(beta * p + (1 - beta) * qm)
        return beta * _kl(p, lp, log_m) + (1 - beta) * _kl(q, lq, log_m)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    raise ValueError(name)


def ref_objective(name, s, ids, lps, tail, labels, *, kd_ratio=1.0, alpha=0.1, beta=0.5, temperature=1.0,
                  normalizer=None, detach=False):
    """(objective, gradient w.r.t. s) in float64: explicit buckets, autograd for the gradient."""
    s = s.detach().double().requires_grad_()
    keep = labels != -100
    V = s.shape[-1]
    q = torch.softmax(s / temperature, dim=-1)  # [N, V]
    in_top = torch.zeros_like(q, dtype=torch.bool).scatter_(1, ids.long(), True)
    q_top = q.gather(1, ids.long())
    q_tail = torch.where(in_top, torch.zeros_like(q), q).sum(-1, keepdim=True)  # Σ over the other tokens
    qb = torch.cat([q_top, q_tail], dim=1)  # [N, k + 1]
    pb = torch.cat([lps.double().exp(), tail.double().exp().unsqueeze(1)], dim=1)
    pb = pb / pb.sum(-1, keepdim=True)
    lq = torch.log(qb)
    lp = torch.log(pb)
    div = ref_bucket_divergence(name, lq, lp, alpha, beta, lq_mix=lq.detach() if detach else None)
    ce = -torch.log_softmax(s, dim=-1).gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)
    per = kd_ratio * div + (1 - kd_ratio) * ce
    per = torch.where(keep, per, torch.zeros_like(per))
    norm = float(keep.sum()) if normalizer is None else float(normalizer)
    obj = per.sum() / norm if norm else per.sum() * 0
    obj.backward()
    del V
    return obj.detach(), s.grad


def make(N=9, V=23, k=5, seed=0, scale=3.0, dtype=torch.float64, ignored=(2, 6)):
    """Student rows, a random teacher's top-k cache of them, labels (some ignored)."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(N, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = torch.randn(N, V, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, V, (N,), generator=g)
    labels[list(ignored)] = -100
    return s, t, labels


def rel(a, b):
    a = torch.as_tensor(a).detach().to(torch.float64)
    b = torch.as_tensor(b).detach().to(torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


PARAMS = [dict(kd_ratio=1.0, temperature=1.0), dict(kd_ratio=0.6, temperature=1.0),
          dict(kd_ratio=1.0, temperature=2.0), dict(kd_ratio=0.3, temperature=0.7)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [1, 5, 22])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "r{kd_ratio}-T{temperature}".format(**p))
def test_value_and_gradient_match_the_float64_reference(name, k, params):
    s, t, labels = make(k=k, seed=k)
    ids, lps, tail = topk_of_logits(t, k, temperature=params["temperature"])
    x = s.clone().requires_grad_()
    obj, stats = kd_objective_topk(x, ids, lps, tail, labels, loss=name, alpha=0.2, beta=0.4, chunk_size=4,
                                   **params)
    obj.backward()
    want, want_grad = ref_objective(name, s, ids, lps, tail, labels, alpha=0.2, beta=0.4, **params)
    assert rel(obj, want) <= 1e-9, (float(obj), float(want))
    assert rel(x.grad, want_grad) <= 1e-9
    assert stats["tokens"] == float((labels != -100).sum())


@pytest.mark.parametrize("name", NAMES)
def test_float32_inputs_and_fp16_cache_stay_close(name):
    s, t, labels = make(seed=3, k=4)
    ids, lps, tail = topk_of_logits(t.float(), 4)
    x = s.float().clone().requires_grad_()
    obj, _ = kd_objective_topk(x.unsqueeze(0), ids.to(torch.int32), lps.half(), tail, labels.unsqueeze(0),
                               loss=name, kd_ratio=0.8)
    obj.backward()
    assert obj.dtype == torch.float32 and x.grad.dtype == torch.float32
    want, want_grad = ref_objective(name, s, ids, lps.half(), tail, labels, kd_ratio=0.8)
    assert rel(obj, want) <= 1e-5 and rel(x.grad, want_grad) <= 1e-5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "r{kd_ratio}-T{temperature}".format(**p))
def test_k_equal_to_the_vocabulary_is_the_dense_objective(name, params):
    s, t, labels = make(seed=11)
    V = s.shape[-1]
    ids, lps, tail = topk_of_logits(t, V, temperature=params["temperature"])
    assert torch.isinf(tail).all() and (tail < 0).all()
    x, y = s.clone().requires_grad_(), s.clone().requires_grad_()
    got, got_stats = kd_objective_topk(x, ids, lps, tail, labels, loss=name, normalizer=20.0, **params)
    dense, dense_stats = kd_objective(y.unsqueeze(0), t.unsqueeze(0), labels.unsqueeze(0), loss=name,
                                      normalizer=20.0, **params)
    got.backward()
    dense.backward()
    assert rel(got, dense) <= 1e-12
    assert rel(x.grad, y.grad) <= 1e-10
    assert abs(got_stats["kd_sum"] - dense_stats["kd_sum"]) <= 1e-10 * max(1.0, abs(dense_stats["kd_sum"]))


@pytest.mark.parametrize("plain, skew", [("fkl", "skew_fkl"), ("rkl", "skew_rkl")])
def test_alpha_zero_is_plain_kl(plain, skew):
    s, t, labels = make(seed=5)
    ids, lps, tail = topk_of_logits(t, 6)
    out = {}
    for name, alpha in ((plain, 0.1), (skew, 0.0)):
        x = s.clone().requires_grad_()
        obj, _ = kd_objective_topk(x, ids, lps, tail, labels, loss=name, alpha=alpha)
        obj.backward()
        out[name] = (obj, x.grad)
    assert rel(out[skew][0], out[plain][0]) <= 1e-12 and rel(out[skew][1], out[plain][1]) <= 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_identical_distributions_give_zero_loss_and_gradient(name):
    s, _, labels = make(seed=6)
    for k in (1, 7, 23):
        ids, lps, tail = topk_of_logits(s, k, temperature=1.5)
        x = s.clone().requires_grad_()
        obj, _ = kd_objective_topk(x, ids, lps, tail, labels, loss=name, temperature=1.5)
        obj.backward()
        assert abs(float(obj.detach())) <= 1e-12
        if name != "tvd":  # tvd's subgradient sign(q − p) at q = p is whatever rounding leaves
            assert float(x.grad.abs().max()) <= 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_ignored_rows_count_for_nothing(name):
    s, t, labels = make(seed=7, ignored=(0, 4, 8))
    ids, lps, tail = topk_of_logits(t, 5)
    keep = labels != -100
    x, y = s.clone().requires_grad_(), s[keep].clone().requires_grad_()
    got, stats = kd_objective_topk(x, ids, lps, tail, labels, loss=name, kd_ratio=0.5)
    want, _ = kd_objective_topk(y, ids[keep], lps[keep], tail[keep], labels[keep], loss=name, kd_ratio=0.5)
    got.backward()
    want.backward()
    assert rel(got, want) <= 1e-12 and stats["tokens"] == float(keep.sum())
    assert float(x.grad[~keep].abs().max()) == 0.0
    assert rel(x.grad[keep], y.grad) <= 1e-12
    none = torch.full_like(labels, -100)
    z = s.clone().requires_grad_()
    obj, stats = kd_objective_topk(z, ids, lps, tail, none, loss=name)
    obj.backward()
    assert float(obj) == 0.0 and stats["tokens"] == 0.0 and float(z.grad.abs().max()) == 0.0


@pytest.mark.parametrize("name", ["skew_fkl", "skew_rkl", "jsd", "tvd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_stay_finite(name, dtype):
    s, t, labels = make(seed=8, scale=1e3, dtype=dtype)
    for k in (1, 4, 23):
        ids, lps, tail = topk_of_logits(t.to(dtype), k)
        x = s.clone().requires_grad_()
        obj, _ = kd_objective_topk(x, ids, lps, tail, labels, loss=name, kd_ratio=0.7)
        obj.backward()
        assert torch.isfinite(obj) and torch.isfinite(x.grad).all(), (k, float(obj))
        if dtype == torch.float64:
            want, want_grad = ref_objective(name, s, ids, lps, tail, labels, kd_ratio=0.7)
            assert rel(obj, want) <= 1e-8
            if torch.isfinite(want_grad).all():  # the plain reference takes log 0 where q underflows
                assert rel(x.grad, want_grad) <= 1e-8


def test_tail_mass_of_a_near_one_hot_student_keeps_its_precision():
    """q_tail far below float32's epsilon is a log-sum-exp, not log(1 − Σ q_top)."""
    V = 50
    s = torch.zeros(1, V, dtype=torch.float32)
    s[0, 3] = 40.0  # the other 49 tokens share about e^-40 of the mass
    t = s.clone().double()
    t[0, 7] = 30.0  # the teacher keeps e^-10 of its mass on token 7, outside its top-1
    ids, lps, tail = topk_of_logits(t, 1)
    x = s.clone().requires_grad_()
    obj, _ = kd_objective_topk(x, ids, lps.float(), tail.float(), torch.tensor([3]), loss="fkl")
    obj.backward()
    want, want_grad = ref_objective("fkl", s.double(), ids, lps, tail, torch.tensor([3]))
    assert rel(obj, want) <= 1e-4 and rel(x.grad, want_grad) <= 1e-3  # float32 rounding of p − q ≈ 1 − 1


@pytest.mark.parametrize("name", ["skew_fkl", "skew_rkl", "jsd"])
def test_detached_mixture_matches_the_reference(name):
    s, t, labels = make(seed=9)
    ids, lps, tail = topk_of_logits(t, 4)
    x = s.clone().requires_grad_()
    obj, _ = kd_objective_topk(x, ids, lps, tail, labels, loss=name, detach_mixture=True, kd_ratio=0.9)
    obj.backward()
    want, want_grad = ref_objective(name, s, ids, lps, tail, labels, detach=True, kd_ratio=0.9)
    assert rel(obj, want) <= 1e-9 and rel(x.grad, want_grad) <= 1e-9


@pytest.mark.parametrize("name", NAMES)
def test_chunks_and_coarse_graining(name):
    """Chunk size does not change anything, and the bucket divergence never exceeds the dense one."""
    s, t, labels = make(N=12, seed=10, ignored=())
    ids, lps, tail = topk_of_logits(t, 3)
    values = [kd_objective_topk(s, ids, lps, tail, labels, loss=name, chunk_size=c)[0] for c in (1, 5, 1024)]
    assert rel(values[0], values[2]) <= 1e-12 and rel(values[1], values[2]) <= 1e-12
    dense, _ = kd_objective(s.unsqueeze(0), t.unsqueeze(0), labels.unsqueeze(0), loss=name)
    assert float(values[2]) <= float(dense) + 1e-12  # data-processing inequality


def test_backward_scales_by_the_incoming_gradient():
    s, t, labels = make(seed=12)
    ids, lps, tail = topk_of_logits(t, 4)
    grads = []
    for factor in (1.0, 3.0):
        x = s.clone().requires_grad_()
        obj, _ = kd_objective_topk(x, ids, lps, tail, labels, loss="skew_rkl", kd_ratio=0.5)
        (obj * factor).backward()
        grads.append(x.grad)
    assert rel(grads[1], 3.0 * grads[0]) <= 1e-12


def test_topk_of_logits_is_the_teachers_top_k_and_tail():
    _, t, _ = make(seed=13)
    ids, lps, tail = topk_of_logits(t, 5, temperature=2.0, chunk_size=2)
    lp = torch.log_softmax(t / 2.0, dim=-1)
    assert torch.equal(ids, lp.topk(5, dim=-1).indices)
    assert rel(lps, lp.gather(1, ids)) <= 1e-12
    assert rel(tail, torch.log1p(-lps.exp().sum(-1))) <= 1e-10


def test_refusals():
    s, t, labels = make(seed=14)
    ids, lps, tail = topk_of_logits(t, 4)
    with pytest.raises(ValueError, match="ids \\[N, k\\]"):
        kd_objective_topk(s, ids[:-1], lps, tail, labels, loss="fkl")
    with pytest.raises(ValueError, match="another vocabulary"):
        kd_objective_topk(s[:, :10], ids.clamp(min=12), lps, tail, labels.clamp(max=9), loss="fkl")
    with pytest.raises(ValueError, match="kd_ratio"):
        kd_objective_topk(s, ids, lps, tail, labels, loss="fkl", kd_ratio=1.5)
    with pytest.raises(ValueError, match="unknown loss"):
        kd_objective_topk(s, ids, lps, tail, labels, loss="nope")
