"""DistiLLM-2's curricula: beta schedule, per-sample alpha from the probability gap, pair batches."""
from __future__ import annotations

import math

import pytest
import torch

from distillm_cli.data.formats import build_example
from distillm_cli.train.contrastive import AlphaCurriculum, beta_at, mean_label_probability, pair_batch


def test_beta_rises_linearly_from_beta0_to_one():
    assert beta_at(0, 11, 0.5, "linear") == 0.5
    assert beta_at(5, 11, 0.5, "linear") == pytest.approx(0.75)
    assert beta_at(10, 11, 0.5, "linear") == pytest.approx(1.0)
    assert [beta_at(s, 11, 0.3, "constant") for s in (0, 5, 10)] == [0.3, 0.3, 0.3]


def test_alpha_is_alpha0_in_the_first_epoch_then_follows_the_gap():
    curriculum = AlphaCurriculum(alpha0=0.1, alpha_min=0.01, enabled=True, first_epoch_steps=2)
    first = curriculum.alphas(0, torch.tensor([0.2, 0.4]))
    assert first.tolist() == [0.1, 0.1]
    curriculum.alphas(1, torch.tensor([0.3, 0.3]))
    target = 0.9 * 0.3  # mean of (1 - alpha0) * gap over epoch one
    assert curriculum.target == pytest.approx(target)
    later = curriculum.alphas(2, torch.tensor([0.3, 0.2, 0.2995, 1.0, -0.5]))
    expected = [min(0.1, max(0.01, 1 - target / g)) for g in (0.3, 0.2, 0.2995, 1.0, 0.5)]
    assert later.tolist() == pytest.approx(expected)
    assert later[1] == pytest.approx(0.01)  # a small gap clips at alpha_min
    assert later[3] == pytest.approx(0.1)  # a large gap clips at alpha0


def test_alpha_curriculum_off_keeps_alpha0_and_state_round_trips():
    off = AlphaCurriculum(0.1, 0.01, enabled=False, first_epoch_steps=1)
    assert off.alphas(5, torch.tensor([0.9, 0.01])).tolist() == [0.1, 0.1]
    on = AlphaCurriculum(0.1, 0.01, enabled=True, first_epoch_steps=1)
    on.alphas(0, torch.tensor([0.5]))
    copy = AlphaCurriculum(0.1, 0.01, enabled=True, first_epoch_steps=1)
    copy.load_state_dict(on.state_dict())
    assert copy.target == on.target


def test_mean_label_probability_matches_a_direct_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[-100, 3, 5, -100], [1, -100, -100, -100]])
    probs = logits.softmax(-1)
    expected = [(probs[0, 1, 3] + probs[0, 2, 5]) / 2, probs[1, 0, 1]]
    assert mean_label_probability(logits, labels).tolist() == pytest.approx([float(e) for e in expected])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_the_gap_from_response_rows_equals_the_gap_from_full_logits(dtype):
    """Per sample from the [1, N, V] response rows (chunked, no full float copy) = from [B, T, V] logits."""
    from distillm_cli.train.contrastive import response_label_probability

    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(4, 9, 13, generator=gen, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, 13, (4, 9), generator=gen)
    labels[0, :3], labels[1, :1], labels[2, :5], labels[:, 7:] = -100, -100, -100, -100  # prompts, padding
    labels[3] = -100  # a response without tokens: 0
    keep = labels != -100
    sample = keep.nonzero(as_tuple=True)[0]
    got = response_label_probability(logits[keep].unsqueeze(0), labels[keep].unsqueeze(0), sample, 4, chunk_size=3)
    want = mean_label_probability(logits, labels)
    assert got.shape == (4,) and float(got[3]) == 0.0
    assert torch.allclose(got.double(), want.double(), rtol=1e-6, atol=1e-7)


def test_pair_batch_stacks_teacher_then_student_responses():
    pairs = [(build_example([5, 6], [7, 1], 10), build_example([5, 6], [8, 9, 1], 10)),
             (build_example([5], [7, 7, 1], 10), build_example([5], [9, 1], 10))]
    batch = pair_batch(pairs, pad_id=0)
    assert int(batch["pairs"]) == 2 and batch["input_ids"].shape[0] == 4
    assert batch["input_ids"][0, :4].tolist() == [5, 6, 7, 1]
    assert batch["input_ids"][2, :5].tolist() == [5, 6, 8, 9, 1]
    assert not math.isnan(float(batch["labels"].float().mean()))


def test_beta_can_stop_rising_at_beta_max_part_way():
    assert beta_at(0, 11, 0.5, "linear", beta_max=0.75, ramp_fraction=0.5) == 0.5
    assert beta_at(5, 11, 0.5, "linear", beta_max=0.75, ramp_fraction=0.5) == pytest.approx(0.75)
    assert beta_at(10, 11, 0.5, "linear", beta_max=0.75, ramp_fraction=0.5) == pytest.approx(0.75)
    # The released trainer's gradual_beta: b = 1 + 0.5 min(1, 2t/T) on (2 - b) SKL + b SRKL, i.e. beta = b / 2.
    total = 100
    for step in range(total):
        released = (1 + 0.5 * min(1.0, 2 * step / total)) / 2
        assert abs(beta_at(step, total, 0.5, "linear", 0.75, 0.5) - released) <= 0.25 * 2 / total + 1e-12


def test_the_released_code_preset_is_skl_plus_srkl_with_fixed_alpha(compose_cfg):
    """experiment=distillm2_released: b = 1, so (2 - b) SKL + b SRKL = SKL + SRKL; alpha 0.1 throughout."""
    cfg = compose_cfg("distill", "experiment=distillm2_released")
    loss = cfg.loss
    assert loss.name == "distillm2" and not loss.alpha_curriculum and loss.alpha == loss.alpha_s == 0.1
    for step in (0, 50, 99):
        beta = beta_at(step, 100, loss.beta, loss.beta_schedule, loss.beta_max, loss.beta_ramp_fraction)
        assert (loss.scale * (1 - beta), loss.scale * beta) == (1.0, 1.0)
    paper = compose_cfg("distill", "experiment=distillm2").loss
    assert beta_at(99, 100, paper.beta, paper.beta_schedule, paper.beta_max, paper.beta_ramp_fraction) == 1.0
    assert paper.scale == 1.0 and paper.alpha_curriculum
