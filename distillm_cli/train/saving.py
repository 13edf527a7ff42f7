"""The final checkpoint's weights: gathered one module at a time, LoRA adapters merged on the way.

`plain_state_dict` walks the student's module tree in the same order on every rank. Under
ZeRO-3 each step of the walk gathers one module's own parameters (a LoRA layer: its base
layer and its adapters together) with ``GatheredParameters(modifier_rank=None)``, an
all-gather that every rank joins; rank 0 alone copies them to CPU, and the gathered
tensors are released before the next module. A rank other than 0 therefore never holds
more than its own shards plus one module, and rank 0 builds exactly one CPU copy of the
model. Without ZeRO-3 the gathers are no-ops, the ranks other than 0 skip the walk, and
rank 0 copies only what is not already on CPU (a merged LoRA weight is new either way).

A LoRA student (peft) comes out as its base model: an adapted layer's weight is its base
weight plus the adapters' delta, computed with peft's own per-layer pieces
(``get_delta_weight``, or a variant's ``merge_safe``) as ``merge_and_unload`` would, under
the base model's keys. Nothing is deep-copied and the trained module is never modified.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..errors import UserError


def _is_peft(module: nn.Module) -> bool:
    return hasattr(module, "get_base_model") and hasattr(module, "peft_config")


def save_target(module: nn.Module) -> nn.Module:
    """The Hugging Face model whose class and config the checkpoint takes: a peft model's base model."""
    return module.get_base_model() if _is_peft(module) else module


def _lora_layer(module: nn.Module) -> bool:
    """True for a LoRA layer to merge; any other peft wrapper cannot become a plain checkpoint."""
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:
        return False
    if isinstance(module, LoraLayer) and not isinstance(module.base_layer, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
        return True
    if isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
        raise UserError(f"cannot merge the peft layer {type(module).__name__} into a plain checkpoint; "
                        "only LoRA adapters on plain layers are merged")
    return False


def _walk(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module, bool]]:
    """(key prefix, module, is a LoRA layer) in a fixed order; a LoRA layer's subtree is one step."""
    if _lora_layer(module):
        yield prefix, module, True
        return
    yield prefix, module, False
    for name, child in module.named_children():
        yield from _walk(child, f"{prefix}{name}.")


def _cpu(tensor: torch.Tensor, gathered: bool = False) -> torch.Tensor:
    """A CPU tensor to save: a copy of a gathered ZeRO-3 parameter or of a device tensor, else the tensor itself."""
    tensor = tensor.detach()
    return tensor.to("cpu", copy=gathered or tensor.device.type != "cpu")


def _copy_module(module: nn.Module, prefix: str, state: dict, first_key: dict, overrides: dict | None = None) -> None:
    """Rank 0: a module's own parameters and persistent buffers into `state` (a tied weight stays one tensor)."""
    overrides = overrides or {}
    for name, param in module.named_parameters(recurse=False):
        if name in overrides:
            state[prefix + name] = overrides[name]
        elif id(param) in first_key:
            state[prefix + name] = state[first_key[id(param)]]
        else:
            state[prefix + name] = _cpu(param, gathered=hasattr(param, "ds_id"))
    for name, buffer in module.named_buffers(recurse=False):
        if name not in module._non_persistent_buffers_set:
            state[prefix + name] = _cpu(buffer)


def _merged_lora(layer: nn.Module, prefix: str, state: dict, first_key: dict) -> None:
    """Rank 0, a gathered LoRA layer: its base layer's tensors, the weight (and a LoRA bias) merged."""
    from peft.tuners.tuners_utils import check_adapters_to_merge

    base = layer.get_base_layer()
    weight, bias = base.weight.detach(), getattr(base, "bias", None)
    merged_weight = merged_bias = False
    for adapter in check_adapters_to_merge(layer):  # the active adapters not merged already
        if adapter not in layer.lora_A and adapter not in getattr(layer, "lora_embedding_A", {}):
            continue
        if adapter in getattr(layer, "lora_variant", {}):  # DoRA and other variants: peft's merge, out of place
            weight = layer.lora_variant[adapter].merge_safe(layer, adapter, weight.clone())
        else:
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
        merged_weight = True
        if getattr(layer, "lora_bias", {}).get(adapter):
            if bias is None:
                raise UserError("cannot merge LoRA with lora_bias=True: the base layer has no bias")
            bias = bias.detach() + (layer.lora_B[adapter].bias * layer.scaling[adapter]).to(bias.dtype)
            merged_bias = True
    # A merged tensor is new (no copy needed on CPU); an unmerged one is saved like any other parameter.
    overrides = {"weight": _cpu(weight)} if merged_weight else {}
    if merged_bias:
        overrides["bias"] = _cpu(bias)
    for name, module in base.named_modules():
        _copy_module(module, f"{prefix}{name}." if name else prefix, state, first_key, None if name else overrides)


def _refuse_tied_lora(root: nn.Module) -> None:
    """A LoRA layer on a tied weight (say lm_head on the embeddings) has no plain equivalent: the trained
    model uses W in one place and W + BA in the other, one saved tensor cannot be both."""
    names: dict[int, list[str]] = {}
    for name, param in root.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    for prefix, layer, is_lora in _walk(root):
        if is_lora and len(names[id(layer.get_base_layer().weight)]) > 1:
            raise UserError(f"LoRA on {prefix.rstrip('.')}, whose weight is tied to "
                            f"{', '.join(names[id(layer.get_base_layer().weight)])}, cannot be merged into a "
                            "plain checkpoint; leave that module out of student.lora.target_modules")


def plain_state_dict(module: nn.Module, main: bool) -> dict | None:
    """The checkpoint's full state dict on CPU on rank 0 (None on the others); every rank must call it.

    Keys and dtypes are those of the plain Hugging Face model (`save_target`), LoRA merged.
    """
    import deepspeed

    root = save_target(module)
    zero3 = any(hasattr(param, "ds_id") for param in root.parameters())
    if not zero3 and not main:
        return None
    _refuse_tied_lora(root)
    state: dict[str, torch.Tensor] = {}
    first_key: dict[int, str] = {}  # id(parameter) -> its first key, on every rank: a tied weight is gathered once
    for prefix, owner, is_lora in _walk(root):
        own = [(prefix + name, param) for name, param in owner.named_parameters(recurse=is_lora)]
        with deepspeed.zero.GatheredParameters([p for _, p in own if id(p) not in first_key], modifier_rank=None):
            if main:
                (_merged_lora if is_lora else _copy_module)(owner, prefix, state, first_key)
        for key, param in own:
            first_key.setdefault(id(param), key)
    return state if main else None
