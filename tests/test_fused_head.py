"""The output head fused into the loss (losses/fused_head.py, models/head.py, loss.fused_head).

Values and gradients against (a) an independent float64 reference written from the formulas
(numpy, tests/test_losses.py's ref_per_position, on logits made by hand from the hidden
states), (b) the unfused path (the head's logit rows into dense.py's losses), on real
transformers models: tied GPT-2, a Llama with padded vocabulary rows, a LoRA student, models
that scale or soft-cap their logits, and through DeepSpeed engines at ZeRO 0, 2 and 3 with
gradient accumulation.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillm_cli.errors import UserError
from distillm_cli.losses import (
    LOSS_NAMES,
    distillm2_head,
    distillm2_rows,
    head_label_logprobs,
    kd_objective,
    kd_objective_head,
    label_logprobs,
)
from distillm_cli.models.head import OutputHead, check_head, output_head, response_rows
from tests.test_losses import ref_ce, ref_per_position

CPU = torch.device("cpu")


def _heads(dtype=torch.float64, N=29, H=12, H_t=20, V=40, padded=6, bias=False, scale=1.0, softcap=None, seed=0):
    """Random hidden rows and heads (padded vocabulary rows beyond V) for student and teacher."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    weight = (torch.randn(V + padded, H, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    b = torch.randn(V + padded, generator=g, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    t_hidden = torch.randn(N, H_t, generator=g, dtype=torch.float64).to(dtype)
    t_weight = torch.randn(V + padded, H_t, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, V, (N,), generator=g)
    return (hidden, OutputHead(weight, b, V, scale, softcap), t_hidden, OutputHead(t_weight, None, V), labels)


def _params(hidden, head):
    return [x for x in (hidden, head.weight, head.bias) if x is not None]


def _grads(objective, params):
    return torch.autograd.grad(objective, params, retain_graph=True)


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("transforms", [{}, {"bias": True, "scale": 0.7, "softcap": 4.0}])
def test_value_matches_an_independent_float64_reference(name, transforms):
    """kd_ratio · D + (1 − kd_ratio) · CE over normalizer, with logits written out from the formula."""
    hidden, head, t_hidden, t_head, labels = _heads(**transforms)
    kw = {"alpha": 0.1, "beta": 0.3, "temperature": 1.5}
    objective, stats = kd_objective_head(hidden, head, t_hidden, t_head, labels, loss=name, kd_ratio=0.8,
                                         normalizer=40.0, chunk_size=7, **kw)
    # The reference: z = softcap(scale · (h Wᵀ + b)) in numpy, then the divergence per row.
    h, w = hidden.detach().numpy(), head.weight.detach().numpy()[:head.vocab]
    z = h @ w.T + (head.bias.detach().numpy()[:head.vocab] if head.bias is not None else 0.0)
    z = z * transforms.get("scale", 1.0)
    if transforms.get("softcap"):
        z = np.tanh(z / transforms["softcap"]) * transforms["softcap"]
    z_t = t_hidden.numpy() @ t_head.weight.numpy()[:head.vocab].T
    per = ref_per_position(name, z[None], z_t[None], **kw)[0]  # [N]
    ce = ref_ce(z[None], labels.numpy()[None])[0]  # [N]
    expected = (0.8 * per.sum() + 0.2 * ce.sum()) / 40.0
    assert abs(float(objective.detach()) - expected) <= 1e-10 * max(1.0, abs(expected))
    assert stats["tokens"] == len(labels) and abs(stats["kd_sum"] - per.sum()) <= 1e-9 * max(1.0, per.sum())


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("transforms", [{}, {"bias": True, "scale": 0.7, "softcap": 4.0}])
def test_gradients_equal_the_unfused_path_in_float64(name, transforms):
    hidden, head, t_hidden, t_head, labels = _heads(**transforms)
    kw = {"loss": name, "kd_ratio": 0.7, "alpha": 0.1, "beta": 0.3, "temperature": 2.0, "normalizer": 31.0}
    fused, _ = kd_objective_head(hidden, head, t_hidden, t_head, labels, chunk_size=5, **kw)
    unfused, _ = kd_objective(head.logits(hidden)[None], t_head.logits(t_hidden)[None], labels[None], **kw)
    assert rel(fused, unfused) <= 1e-12
    params = _params(hidden, head)
    for a, b in zip(_grads(3.0 * fused, params), _grads(3.0 * unfused, params)):  # incoming gradient 3
        assert rel(a, b) <= 1e-10
    grad_weight = _grads(fused, [head.weight])[0]
    assert torch.count_nonzero(grad_weight[head.vocab:]) == 0  # padded vocabulary rows are never read


@pytest.mark.parametrize("name", ["fkl", "skew_rkl", "jsd"])
def test_float32_within_1e5_of_the_unfused_path(name):
    hidden, head, t_hidden, t_head, labels = _heads(torch.float32, N=200, H=32, V=300, bias=True)
    kw = {"loss": name, "kd_ratio": 0.9, "normalizer": None}
    fused, _ = kd_objective_head(hidden, head, t_hidden, t_head, labels, chunk_size=64, **kw)
    unfused, _ = kd_objective(head.logits(hidden)[None], t_head.logits(t_hidden)[None], labels[None], **kw)
    assert rel(fused, unfused) <= 1e-5
    for a, b in zip(_grads(fused, _params(hidden, head)), _grads(unfused, _params(hidden, head))):
        assert rel(a, b) <= 1e-5


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_half_precision_within_its_precision_and_no_gradient_flushed(dtype, tol):
    """A token-normalised gradient is ~1e-7 per entry, below fp16's smallest subnormal: the per-chunk
    power-of-two scaling must keep it, and the head-weight gradient accumulates in float32."""
    hidden, head, t_hidden, t_head, labels = _heads(torch.float32, N=96, H=16, V=500, bias=True)
    kw = {"loss": "skew_rkl", "kd_ratio": 0.9, "normalizer": 2e5, "chunk_size": 32}
    ref, _ = kd_objective_head(hidden, head, t_hidden, t_head, labels, **kw)
    ref_grads = _grads(ref, _params(hidden, head))
    half = [x.detach().to(dtype).requires_grad_() for x in (hidden, head.weight, head.bias)]
    h_head = OutputHead(half[1], half[2], head.vocab)
    t_half = OutputHead(t_head.weight.to(dtype), None, head.vocab)
    low, _ = kd_objective_head(half[0], h_head, t_hidden.to(dtype), t_half, labels, **kw)
    assert rel(low, ref) <= tol
    scale = 2.0 ** 16  # DeepSpeed's fp16 loss scale arrives as the incoming gradient, applied before rounding
    for a, b in zip(_grads(low * scale, half), ref_grads):
        assert a.dtype == dtype
        assert rel(a.float() / scale, b) <= 5 * tol
        assert torch.count_nonzero(a) >= 0.9 * torch.count_nonzero(b)  # not flushed to 0


def test_frozen_head_gets_no_gradient_and_pure_ce_is_cross_entropy():
    hidden, head, _, _, labels = _heads()
    frozen = OutputHead(head.weight.detach(), None, head.vocab)
    objective, stats = kd_objective_head(hidden, frozen, None, None, labels, loss="fkl", kd_ratio=0.0)
    expected = torch.nn.functional.cross_entropy(frozen.logits(hidden), labels)
    assert rel(objective, expected) <= 1e-12 and stats["kd_sum"] == 0.0
    (grad_hidden,) = _grads(objective, [hidden])
    assert rel(grad_hidden, _grads(expected, [hidden])[0]) <= 1e-10
    objective.backward()
    assert frozen.weight.grad is None


def test_rows_without_a_label_count_for_nothing_and_identical_models_give_zero():
    hidden, head, _, _, labels = _heads()
    masked = labels.clone()
    masked[::3] = -100
    same = OutputHead(head.weight.detach(), None, head.vocab)
    objective, stats = kd_objective_head(hidden, head, hidden.detach(), same, masked, loss="skew_fkl")
    assert stats["tokens"] == int((masked != -100).sum())
    assert abs(float(objective)) <= 1e-12
    assert all(float(g.abs().max()) <= 1e-12 for g in _grads(objective, [hidden, head.weight]))


def test_extreme_hidden_states_stay_finite():
    hidden, head, t_hidden, t_head, labels = _heads()
    big = (hidden.detach() * 1e3).requires_grad_()
    for name in ("skew_fkl", "skew_rkl", "jsd", "tvd"):
        objective, _ = kd_objective_head(big, head, t_hidden * 1e3, t_head, labels, loss=name)
        assert torch.isfinite(objective)
        assert all(torch.isfinite(g).all() for g in _grads(objective, [big, head.weight]))


def test_distillm2_head_equals_the_row_loss_with_per_sample_alphas():
    hidden, head, t_hidden, t_head, labels = _heads(N=30, bias=True, softcap=6.0)
    sample = torch.tensor([0] * 6 + [1] * 9 + [2] * 7 + [3] * 8)  # 2 prompts: teacher rows, then student rows
    alpha_t, alpha_s = torch.tensor([0.1, 0.05], dtype=torch.float64), torch.tensor([0.02, 0.1], dtype=torch.float64)
    kw = {"alpha_t": alpha_t, "alpha_s": alpha_s, "beta": 0.7, "temperature": 1.3, "chunk_size": 4}
    fused = distillm2_head(hidden, head, t_hidden, t_head, sample, 2, **kw)
    rows = distillm2_rows(head.logits(hidden), t_head.logits(t_hidden), sample, 2, **kw)
    assert rel(fused, rows) <= 1e-12
    for a, b in zip(_grads(fused, _params(hidden, head)), _grads(rows, _params(hidden, head))):
        assert rel(a, b) <= 1e-10
    logprobs = head_label_logprobs(hidden, head, labels, chunk_size=4)
    assert rel(logprobs, label_logprobs(head.logits(hidden).detach(), labels)) <= 1e-12


# ---------------------------------------------------------------------------- real models


def _gpt2(vocab=60):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=2, n_embd=32, n_head=4, n_positions=64,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def _llama(vocab=60, padded=8, hidden=32, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab + padded, hidden_size=hidden, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, tie_word_embeddings=False, **extra))


def _gemma2(vocab=60):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(2)
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                          max_position_embeddings=64, final_logit_softcapping=3.0,
                                          attn_implementation="eager"))


def _cohere(vocab=60):
    from transformers import CohereConfig, CohereForCausalLM

    torch.manual_seed(3)
    return CohereForCausalLM(CohereConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          logit_scale=0.25))


def _batch(vocab=60, B=3, T=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    attention = torch.ones_like(ids)
    attention[1, -3:] = 0  # right padding
    labels = ids.clone()
    labels[:, :5] = -100  # prompts
    labels[attention == 0] = -100
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def _step_grads(student, teacher, batch, fused, vocab=60, loss="skew_rkl"):
    from distillm_cli.runtime import Runtime
    from distillm_cli.teacher import LiveTeacher
    from distillm_cli.train.objectives import batch_kd_loss

    student = copy.deepcopy(student)
    params = {"loss": loss, "kd_ratio": 0.9, "alpha": 0.1, "beta": 0.5, "temperature": 1.0, "detach_mixture": False,
              "chunk_size": 8, "fused_head": fused}
    runtime = Runtime(rank=0, world_size=1, device=CPU)
    objective, stats = batch_kd_loss(student, LiveTeacher(teacher.eval(), CPU, vocab), batch, runtime, vocab,
                                     params, normalizer=float((batch["labels"] != -100).sum()))
    objective.backward()
    return objective.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pair", ["gpt2 tied", "llama padded", "gemma2 softcap", "cohere scale", "lora llama"])
def test_a_distill_step_on_real_models_equals_the_unfused_step(pair):
    if pair == "gpt2 tied":
        student, teacher = _gpt2(), _gpt2()
    elif pair == "llama padded":
        student, teacher = _llama(), _llama(hidden=48)
    elif pair == "gemma2 softcap":
        student, teacher = _gemma2(), _gemma2()
    elif pair == "cohere scale":
        student, teacher = _cohere(), _cohere()
    else:
        from distillm_cli.models.loading import add_lora

        student = add_lora(_llama(), SimpleNamespace(r=4, alpha=8, dropout=0.0, target_modules=["all-linear"]))
        teacher = _llama(hidden=48)
    for p in teacher.parameters():  # teacher and student differ
        p.data.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    loss_fused, grads_fused = _step_grads(student, teacher, batch, fused=True)
    loss_rows, grads_rows = _step_grads(student, teacher, batch, fused=False)
    assert rel(loss_fused, loss_rows) <= 1e-5
    assert grads_fused.keys() == grads_rows.keys() and grads_fused
    for name in grads_rows:
        assert rel(grads_fused[name], grads_rows[name]) <= 1e-4, name
    if pair == "lora llama":
        assert not any("lm_head" in name for name in grads_fused)  # the frozen head got no gradient


def test_response_rows_are_the_model_logits_at_the_kept_positions():
    model, batch = _gemma2(), _batch()
    head = output_head(model, 60)
    rows = response_rows(model, batch, CPU, lambda hidden, labels: (head.logits(hidden), labels))
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    keep = batch["labels"] != -100
    assert torch.allclose(rows[0], full[keep], atol=1e-5) and torch.equal(rows[1], batch["labels"][keep])


def test_an_unknown_logit_transform_is_refused_with_one_line():
    from transformers import GPT2LMHeadModel

    class Doubled(GPT2LMHeadModel):  # stands for an architecture that changes its logits after the head
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    model = _gpt2()
    doubled = Doubled(model.config)
    doubled.load_state_dict(model.state_dict())
    check_head(model, 60, "student")
    with pytest.raises(UserError, match="loss.fused_head=false"):
        check_head(doubled, 60, "student")


def test_lora_on_the_head_is_refused_with_one_line():
    from distillm_cli.models.loading import add_lora

    student = add_lora(_llama(), SimpleNamespace(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "lm_head"]))
    with pytest.raises(UserError, match="lm_head"):
        output_head(student, 60)


# ---------------------------------------------------------------------------- DeepSpeed engines


@pytest.mark.parametrize("deepspeed", ["zero0", "zero2", "zero3"])
def test_engine_steps_with_gradient_accumulation_equal_the_unfused_ones(compose_cfg, runtime, deepspeed):
    """Two optimizer steps of 2 micro-batches each through a real engine, fused vs unfused: the same
    weights after (ZeRO-3: the head gathered for the loss, its gradient reaching the shards)."""
    from deepspeed.runtime.zero import GatheredParameters
    from deepspeed.utils import safe_get_full_grad

    from distillm_cli.teacher import LiveTeacher
    from distillm_cli.train.engine import build_engine
    from distillm_cli.train.objectives import batch_kd_loss, kd_params

    cfg = compose_cfg("distill", f"deepspeed={deepspeed}", "train.grad_accum=2", "train.micro_batch_size=3",
                      "train.lr=1e-2", "train.max_steps=2")
    teacher = LiveTeacher(_llama(hidden=48).eval(), CPU, 60)
    batches = [_batch(seed=s) for s in range(4)]
    normalizer = [float(sum((b["labels"] != -100).sum() for b in batches[i:i + 2])) for i in (0, 0, 2, 2)]
    grads, weights = {}, {}
    for fused in (False, True):
        torch.manual_seed(0)
        engine = build_engine(_llama(), cfg, runtime)
        params = kd_params(cfg.loss, fused_head=fused)
        for i, (batch, norm) in enumerate(zip(batches, normalizer)):
            loss, _ = batch_kd_loss(engine, teacher, batch, runtime, 60, params, normalizer=norm)
            engine.backward(loss, scale_wrt_gas=False)
            if i % 2:  # the boundary: the accumulated gradient the optimizer is about to use
                grads[fused, i] = {n: safe_get_full_grad(p).detach().clone()
                                   for n, p in engine.module.named_parameters()}
            engine.step()
        with GatheredParameters(list(engine.module.parameters())):  # a no-op below ZeRO-3
            weights[fused] = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    for i in (1, 3):
        for name, value in grads[False, i].items():
            assert rel(grads[True, i][name], value) <= 1e-5, (i, name)
    for name, value in weights[False].items():
        assert rel(weights[True][name], value) <= 1e-5, name


@pytest.mark.parametrize("fused", [True, False])
def test_through_an_engine_the_models_own_head_makes_no_logits(compose_cfg, runtime, fused):
    """A DeepSpeed engine answers every attribute of its model, so it once passed for a model without
    ``logits_to_keep`` and the student's own head made [B, T, V] logits every step (discarded, and
    most of the step's time at the benchmark's shapes). The head layers may see the kept rows
    (the rows path applies them there), never more."""
    from distillm_cli.models.head import causal_lm
    from distillm_cli.teacher import LiveTeacher
    from distillm_cli.train.engine import build_engine
    from distillm_cli.train.objectives import batch_kd_loss, kd_params

    cfg = compose_cfg("distill")
    engine, teacher_model = build_engine(_llama(), cfg, runtime), _llama(hidden=48).eval()
    assert causal_lm(engine) is engine.module
    batch = _batch()
    kept = int((batch["labels"] != -100).sum())
    seen = []

    def record(_module, args, _output):
        seen.append(args[0].shape[:-1].numel())  # rows the head layer projected

    handles = [m.lm_head.register_forward_hook(record) for m in (engine.module, teacher_model)]
    loss, _ = batch_kd_loss(engine, LiveTeacher(teacher_model, CPU, 60), batch, runtime, 60,
                            kd_params(cfg.loss, fused_head=fused), normalizer=float(kept))
    engine.backward(loss, scale_wrt_gas=False)
    for handle in handles:
        handle.remove()
    assert seen and max(seen) <= kept < batch["input_ids"].numel()
    assert seen.count(0) == 2  # both models' own forwards: no row at all
