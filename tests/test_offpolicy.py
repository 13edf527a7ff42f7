import io
from collections import Counter

import pytest
import torch

from distillm_cli.train.offpolicy import (
    AdaptivePhi,
    OffPolicySchedule,
    ReplayBuffer,
    choose_source,
    mixing_probability,
    shared_uniform,
)


def _sample(i):
    return {"input_ids": torch.tensor([i, i + 1]), "id": i}


def _ids(samples):
    return [s["id"] for s in samples]


# --- λ schedules ---------------------------------------------------------


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("decreasing", [0.8, 0.6, 0.4, 0.0]),
        ("constant", [0.4, 0.4, 0.4, 0.4]),
        ("increasing", [0.0, 0.2, 0.4, 0.8]),
    ],
)
def test_mixing_probability(schedule, expected):
    steps = [0, 25, 50, 100]
    got = [mixing_probability(0.8, t, 100, schedule) for t in steps]
    assert got == pytest.approx(expected)


def test_mixing_probability_clips_and_validates():
    assert mixing_probability(0.5, 150, 100, "decreasing") == 0.0
    assert mixing_probability(0.5, 150, 100, "increasing") == 0.5
    with pytest.raises(ValueError):
        mixing_probability(0.5, 1, 100, "cosine")
    with pytest.raises(ValueError):
        mixing_probability(0.5, 1, 0, "constant")


# --- adaptive φ ------------------------------------------------------------


def test_first_observation_sets_reference_only():
    ap = AdaptivePhi(phi0=0.0)
    assert ap.reference is None
    assert ap.observe(2.0) is False
    assert ap.reference == 2.0 and ap.phi == 0.0


def test_rise_below_eps_changes_nothing():
    ap = AdaptivePhi(phi0=0.0, eps=0.1)
    ap.observe(2.0)
    assert ap.observe(2.05) is False
    assert ap.phi == 0.0 and ap.reference == 2.0
    # a falling loss does not move the reference either
    assert ap.observe(1.5) is False
    assert ap.reference == 2.0


def test_rise_of_eps_or_more_raises_phi_and_moves_reference():
    ap = AdaptivePhi(phi0=0.0, eps=0.1, phi_step=0.1)
    ap.observe(2.0)
    assert ap.observe(2.1) is True  # exactly eps (2.1 - 2.0 is ~0.1000000000000001)
    assert ap.phi == pytest.approx(0.1) and ap.reference == 2.1
    assert ap.observe(2.15) is False  # measured against the new reference
    assert ap.observe(2.5) is True
    assert ap.phi == 0.2 and ap.reference == 2.5


def test_phi_is_clipped_at_one():
    ap = AdaptivePhi(phi0=0.95, eps=0.1, phi_step=0.1)
    ap.observe(1.0)
    assert ap.observe(2.0) is True
    assert ap.phi == 1.0
    assert ap.observe(3.0) is True
    assert ap.phi == 1.0


def test_phi_state_round_trip():
    ap = AdaptivePhi(phi0=0.2)
    ap.observe(1.0)
    ap.observe(1.3)
    other = AdaptivePhi(phi0=0.0)
    other.load_state_dict(ap.state_dict())
    assert (other.phi, other.reference) == (ap.phi, ap.reference)


# --- replay buffer -------------------------------------------------------------


def test_fifo_eviction_order():
    buf = ReplayBuffer(capacity=3)
    buf.push([_sample(0), _sample(1)])
    assert len(buf) == 2 and not buf.full
    buf.push([_sample(2), _sample(3), _sample(4)])
    assert len(buf) == 3 and buf.full
    assert _ids(buf.state_dict()["samples"]) == [2, 3, 4]


def test_sample_without_replacement_when_possible():
    buf = ReplayBuffer(capacity=10)
    buf.push([_sample(i) for i in range(10)])
    for seed in range(20):
        ids = _ids(buf.sample(10, torch.Generator().manual_seed(seed)))
        assert sorted(ids) == list(range(10))


def test_sample_with_replacement_when_too_small():
    buf = ReplayBuffer(capacity=10)
    buf.push([_sample(i) for i in range(3)])
    ids = _ids(buf.sample(8, torch.Generator().manual_seed(0)))
    assert len(ids) == 8 and set(ids) <= {0, 1, 2}
    with pytest.raises(ValueError):
        ReplayBuffer(capacity=2).sample(1, torch.Generator())


def test_sample_is_deterministic_given_generator():
    buf = ReplayBuffer(capacity=50)
    buf.push([_sample(i) for i in range(50)])
    a = _ids(buf.sample(8, torch.Generator().manual_seed(123)))
    b = _ids(buf.sample(8, torch.Generator().manual_seed(123)))
    c = _ids(buf.sample(8, torch.Generator().manual_seed(124)))
    assert a == b and a != c


def test_sample_is_roughly_uniform():
    buf = ReplayBuffer(capacity=10)
    buf.push([_sample(i) for i in range(10)])
    gen = torch.Generator().manual_seed(0)
    counts = Counter()
    for _ in range(2000):
        counts.update(_ids(buf.sample(2, gen)))
    # 4000 draws over 10 items: 400 expected each, std ~19
    assert set(counts) == set(range(10))
    assert all(320 < c < 480 for c in counts.values())


def test_buffer_state_round_trip_through_torch_save():
    buf = ReplayBuffer(capacity=4)
    buf.push([_sample(i) for i in range(6)])
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    restored = ReplayBuffer(capacity=4)
    restored.load_state_dict(torch.load(blob, weights_only=True))
    saved = buf.state_dict()["samples"]
    loaded = restored.state_dict()["samples"]
    assert _ids(loaded) == [2, 3, 4, 5]
    for s, r in zip(saved, loaded):
        assert torch.equal(s["input_ids"], r["input_ids"])
    assert restored.full


# --- shared uniform ----------------------------------------------------------


def test_shared_uniform_is_deterministic_and_in_range():
    draws = [shared_uniform(7, t) for t in range(200)]
    assert draws == [shared_uniform(7, t) for t in range(200)]
    assert all(0.0 <= r < 1.0 for r in draws)
    assert len(set(draws)) == 200
    assert draws != [shared_uniform(8, t) for t in range(200)]
    assert 0.4 < sum(draws) / len(draws) < 0.6


def test_shared_uniform_ignores_and_preserves_global_rng():
    torch.manual_seed(0)
    a = shared_uniform(3, 5)
    state = torch.get_rng_state()
    torch.manual_seed(999)
    torch.rand(10)
    b = shared_uniform(3, 5)
    assert a == b
    torch.set_rng_state(state)
    shared_uniform(3, 6)
    assert torch.equal(torch.get_rng_state(), state)


# --- choose_source -------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, r, phi, lam, lmbda, full, expected",
    [
        ("none", 0.0, 1.0, 1.0, 1.0, False, "dataset"),
        ("none", 0.9, 1.0, 1.0, 1.0, True, "dataset"),
        ("on_policy", 0.3, 0.0, 0.0, 0.5, False, "fresh"),
        ("on_policy", 0.7, 1.0, 1.0, 0.5, True, "dataset"),
        ("adaptive", 0.1, 0.5, 0.2, 0.0, True, "fresh"),  # r < λ
        ("adaptive", 0.3, 0.5, 0.2, 0.0, False, "fresh"),  # λ ≤ r < φ, buffer not full
        ("adaptive", 0.3, 0.5, 0.2, 0.0, True, "buffer"),  # λ ≤ r < φ, buffer full
        ("adaptive", 0.6, 0.5, 0.2, 0.0, False, "dataset"),  # r ≥ φ
        ("adaptive", 0.6, 0.5, 0.2, 0.0, True, "dataset"),
        ("adaptive", 0.0, 0.0, 0.0, 1.0, False, "dataset"),  # φ = 0
    ],
)
def test_choose_source_truth_table(mode, r, phi, lam, lmbda, full, expected):
    assert (
        choose_source(mode, r, phi=phi, lam=lam, lmbda=lmbda, buffer_full=full)
        == expected
    )


def test_choose_source_unknown_mode():
    with pytest.raises(ValueError):
        choose_source("sometimes", 0.5, phi=0.5, lam=0.5, lmbda=0.5, buffer_full=False)


# --- OffPolicySchedule ------------------------------------------------------------


def _run(sched, steps, start=0, batch=4):
    out = []
    for t in range(start, start + steps):
        src = sched.decide(t)
        if src == "fresh":
            sched.buffer.push([_sample(100 * t + i) for i in range(batch)])
        elif src == "buffer":
            assert len(sched.sample_buffer(batch, t)) == batch
        out.append(src)
    return out


def test_adaptive_schedule_uses_fresh_and_buffer():
    sched = OffPolicySchedule(
        mode="adaptive", seed=0, total_steps=20, phi0=1.0, capacity=8
    )
    sources = _run(sched, 20)
    assert "fresh" in sources and "buffer" in sources
    assert "dataset" not in sources  # φ = 1: every draw is below φ
    assert sched.source_counts == {"dataset": 0, **Counter(sources)}


def test_adaptive_without_replay_makes_the_same_decisions_with_fresh_samples():
    replayed = OffPolicySchedule(mode="adaptive", seed=0, total_steps=20, phi0=1.0, capacity=8)
    fresh_only = OffPolicySchedule(mode="adaptive", seed=0, total_steps=20, phi0=1.0, capacity=8, replay=False)
    with_buffer, without = _run(replayed, 20), _run(fresh_only, 20)
    assert "buffer" in with_buffer and "buffer" not in without
    # every step that replayed the buffer samples afresh instead; the others are unchanged
    assert without == ["fresh" if source == "buffer" else source for source in with_buffer]
    assert fresh_only.source_counts["fresh"] == with_buffer.count("fresh") + with_buffer.count("buffer")


def test_none_mode_always_dataset():
    sched = OffPolicySchedule(mode="none", seed=0, total_steps=20, phi0=1.0)
    assert _run(sched, 20) == ["dataset"] * 20
    assert sched.phi == 0.0
    assert sched.observe_validation(1.0) is False


def test_on_policy_mode_follows_lmbda():
    sched = OffPolicySchedule(mode="on_policy", seed=1, total_steps=200, lmbda=0.5)
    assert sched.phi == 0.5
    sources = _run(sched, 200, batch=1)
    assert set(sources) == {"fresh", "dataset"}
    assert 60 < sources.count("fresh") < 140


def test_adaptive_phi_drives_schedule():
    sched = OffPolicySchedule(mode="adaptive", seed=0, total_steps=50, phi0=0.0)
    assert _run(sched, 10) == ["dataset"] * 10
    assert sched.observe_validation(2.0) is False
    assert sched.observe_validation(2.5) is True
    assert sched.phi == pytest.approx(0.1)


def test_state_dict_round_trip_reproduces_future_decisions():
    kwargs = {
        "mode": "adaptive",
        "seed": 5,
        "total_steps": 40,
        "phi0": 0.6,
        "capacity": 6,
    }
    sched = OffPolicySchedule(**kwargs)
    _run(sched, 10)
    sched.observe_validation(1.0)
    blob = io.BytesIO()
    torch.save(sched.state_dict(), blob)
    blob.seek(0)
    resumed = OffPolicySchedule(**kwargs)
    resumed.load_state_dict(torch.load(blob, weights_only=True))
    assert resumed.source_counts == sched.source_counts
    assert _run(resumed, 30, start=10) == _run(sched, 30, start=10)
    assert _ids(resumed.buffer.state_dict()["samples"]) == _ids(
        sched.buffer.state_dict()["samples"]
    )
    with pytest.raises(ValueError):
        OffPolicySchedule(mode="none", total_steps=40).load_state_dict(
            sched.state_dict()
        )
