"""Reduced precision in training: a bf16 student accumulates its gradients in fp32 under DeepSpeed.

A real DeepSpeed engine (build_engine, CPU, one process) trains a tiny bf16 GPT-2 with
grad_accum=4; the gradient it holds at the accumulation boundary is compared with the fp32
and the bf16 sums of the four micro-batch gradients, computed by plain torch on a copy.
"""
from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import open_dict

from distillm_cli.losses import kd_objective
from distillm_cli.train.engine import deepspeed_config

GRAD_ACCUM = 4


def _bf16_cfg(compose_cfg, deepspeed="zero0", dtype="bfloat16"):
    return compose_cfg("sft-student", f"model.dtype={dtype}", f"deepspeed={deepspeed}",
                       f"train.grad_accum={GRAD_ACCUM}", "train.micro_batch_size=2",
                       "train.grad_clip=0.0")  # no clipping: the optimizer sees the accumulated sum as it is


# ----------------------------------------------------------------------------- the config


@pytest.mark.parametrize("deepspeed, stage", [("zero0", 1), ("zero1", 1), ("zero2", 2), ("zero3", 3),
                                              ("zero3_offload", 3)])
def test_bf16_config_asks_for_fp32_accumulation(compose_cfg, deepspeed, stage):
    config = deepspeed_config(_bf16_cfg(compose_cfg, deepspeed))
    assert config["bf16"]["enabled"] and config["data_types"]["grad_accum_dtype"] == "fp32"
    # DeepSpeed refuses fp32 accumulation of bf16 without ZeRO: ZeRO 0 becomes ZeRO 1 (BF16_Optimizer),
    # whose one reduction per step stays fp32.
    assert config["zero_optimization"]["stage"] == stage
    assert config.get("communication_data_type") == ("fp32" if stage == 1 else None)


def test_other_dtypes_and_explicit_keys_are_left_alone(compose_cfg):
    for dtype in ("float32", "float16"):
        config = deepspeed_config(_bf16_cfg(compose_cfg, dtype=dtype))
        assert "data_types" not in config and config["zero_optimization"]["stage"] == 0
    cfg = _bf16_cfg(compose_cfg)
    with open_dict(cfg):
        cfg.deepspeed["data_types"] = {"grad_accum_dtype": "bf16"}  # a user's explicit choice wins
    config = deepspeed_config(cfg)
    assert config["data_types"]["grad_accum_dtype"] == "bf16" and config["zero_optimization"]["stage"] == 0


# ----------------------------------------------------------------------------- a real engine


def _loss(model, ids):
    """The token-mean cross-entropy through the fused loss, formed outside the model as the stages do.

    (At ZeRO 0 and under the BF16_Optimizer, DeepSpeed 0.19 divides by grad_accum, scale_wrt_gas=False
    or not, when the tensor given to engine.backward is itself an output of the engine's forward,
    such as a model's own .loss.)
    """
    logits = model(input_ids=ids).logits  # [B, T, V] bf16
    return kd_objective(logits, None, ids, loss="skew_rkl", kd_ratio=0.0, normalizer=float(ids.numel()))[0]


def _micro_gradients(model, batches):
    """Each micro-batch's gradient (bf16, as autograd gives it) of a copy of the model, by name."""
    model = copy.deepcopy(model)
    grads = []
    for ids in batches:
        model.zero_grad(set_to_none=True)
        _loss(model, ids).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    return grads


@pytest.mark.parametrize("deepspeed", ["zero0", "zero2", "zero3"])
def test_bf16_gradients_accumulate_in_fp32(compose_cfg, runtime, deepspeed):
    from deepspeed.utils import safe_get_full_grad

    from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model
    from distillm_cli.train.engine import build_engine

    cfg = _bf16_cfg(compose_cfg, deepspeed)
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model("tiny-student", tokenizer).to(torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, len(tokenizer), (2, 24), generator=gen) for _ in range(GRAD_ACCUM)]
    micro = _micro_gradients(model, batches)
    names = list(micro[0])
    fp32_sum = {n: sum(g[n].float() for g in micro) for n in names}
    bf16_sum = {}
    for n in names:
        acc = micro[0][n].clone()
        for g in micro[1:]:
            acc += g[n]  # what a bf16 accumulation buffer would hold
        bf16_sum[n] = acc.float()

    engine = build_engine(model, cfg, runtime)
    held = {}
    for i, ids in enumerate(batches):
        engine.backward(_loss(engine, ids), scale_wrt_gas=False)  # as train() calls it
        if i == GRAD_ACCUM - 1:  # the boundary: what the optimizer step is about to use
            held = {n: safe_get_full_grad(p).detach().clone() for n, p in engine.module.named_parameters()}
        engine.step()
    for n in names:
        assert torch.allclose(held[n].float(), fp32_sum[n], rtol=1e-6, atol=0), n
    assert engine.get_data_types() == (torch.bfloat16, torch.float32)
    assert all(g.dtype == torch.float32 for g in held.values())
    # The case tells the two apart: bf16 accumulation would be visibly off.
    worst = max(float((bf16_sum[n] - fp32_sum[n]).abs().max() / fp32_sum[n].abs().max()) for n in names)
    assert worst > 1e-3
