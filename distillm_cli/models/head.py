"""The output head apart from the body: response rows as last hidden states, and the head
that turns them into logits.

Every loss reads the logits of the response positions only. Running the model's own head
would make a [B, T, V] tensor (or [N, V] with a boolean ``logits_to_keep``, which only some
transformers versions accept). Here the body runs alone, its last hidden states are cut
to the N response rows ([N, H]), and the head is a plain description of the projection:

    logits = softcap(scale · (hidden @ weight[:V]ᵀ + bias[:V]))        # [N, V]

so a loss can either apply it (``OutputHead.logits``, the response-rows path) or fuse it
into its own chunks (``losses.fused_head``), where no [N, V] tensor exists at all. ``V`` is
the shared vocabulary: padded embedding rows beyond the tokenizer are never read.

Models that change their logits after the head are covered where it is known how:
Cohere's ``logit_scale`` and Granite's ``logits_scaling`` (scale), Gemma 2's
``final_logit_softcapping`` (softcap). Any other transformation is caught by
``check_head``: the head's logits on a short input must equal the model's own, or the
run stops with one line.

The forward goes through the model the caller holds (a DeepSpeed engine included), with
an empty index tensor as ``logits_to_keep`` so the model's own head makes no logits at all
(``logits_to_keep=1``, one row per sequence, for models that take only an int), and a forward
hook on the body keeps its last hidden states. Whatever the caller computes from the rows
(``reader``) runs inside the model's forward (a hook on the outermost module replaces its
output), so a DeepSpeed engine sees it as the forward's output and runs its backward
bookkeeping when the gradient reaches it, as it would for the logits.
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.formats import IGNORE
from ..errors import UserError


@dataclass
class OutputHead:
    """The projection from last hidden states to the logits of the shared vocabulary."""

    weight: torch.Tensor  # [V', H], V' >= vocab (padded rows are never read)
    bias: torch.Tensor | None  # [V'] or None
    vocab: int
    scale: float = 1.0  # Cohere's logit_scale; 1 / Granite's logits_scaling
    softcap: float | None = None  # Gemma 2's final_logit_softcapping: c · tanh(z / c)
    module: torch.nn.Module | None = None  # the model's own head layer, when there is one

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] hidden states -> [..., V] logits, differentiable.

        Through the model's own head layer when known: ZeRO-3 then gathers its weight for the
        product and again for the backward, as in the model's own forward."""
        if self.module is not None:
            z = self.module(hidden)[..., :self.vocab]
        else:
            bias = None if self.bias is None else self.bias[:self.vocab]
            z = torch.nn.functional.linear(hidden, self.weight[:self.vocab], bias)
        return transform_logits(z, self.scale, self.softcap)


def transform_logits(z: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    """scale, then soft-capping, as the models that have them apply them after the head."""
    if scale != 1.0:
        z = z * scale
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    return z


def causal_lm(model):
    """The transformers causal LM inside a DeepSpeed engine and/or a peft wrapper."""
    # A DeepSpeed engine holds the model as its child "module". (It also answers every attribute
    # of the model, get_output_embeddings included, so hasattr cannot tell it from the model.)
    wrapped = model._modules.get("module") if isinstance(model, torch.nn.Module) else None
    if wrapped is not None:
        model = wrapped
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()  # peft: LoRA layers stay injected in the base model
    return model


def output_head(model, vocab: int) -> OutputHead:
    """The output head of `model` over the first `vocab` rows, with the logit transforms it applies."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    if type(head) is not torch.nn.Linear:  # a LoRA layer on the head, or no head at all
        raise UserError(f"the output head of {type(lm).__name__} is {type(head).__name__}, not a plain linear "
                        "layer (LoRA on lm_head?): leave lm_head out of student.lora.target_modules or set "
                        "loss.fused_head=false")
    config = lm.config
    scale = float(getattr(config, "logit_scale", None) or 1.0)
    if getattr(config, "logits_scaling", None):
        scale /= float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return OutputHead(head.weight, head.bias, vocab, scale, float(softcap) if softcap else None, head)


def is_partitioned(param: torch.Tensor) -> bool:
    """A ZeRO-3 parameter: its data lives in shards across ranks until gathered."""
    return hasattr(param, "ds_id")


@contextlib.contextmanager
def gathered(head: OutputHead):
    """The head's full weights for the duration (ZeRO-3 gathers them on every rank; else nothing).

    Every rank must enter together. Gradients formed while gathered reach the sharded
    parameters through ZeRO-3's own hooks.
    """
    params = [p for p in (head.weight, head.bias) if p is not None and is_partitioned(p)]
    if not params:
        yield head
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield head


def response_rows(model, batch: dict, device: torch.device, reader: Callable):
    """Run `model` on the batch and return ``reader(hidden, labels)``, computed inside its forward.

    hidden: [N, H] last hidden states at the N positions the loss counts (labels != -100),
    in batch order; labels: [N]. With no such position, N = 0.
    """
    labels = batch["labels"].to(device)
    keep = labels != IGNORE  # [B, T]
    lm = causal_lm(model)
    body, top = lm.base_model, model  # top: the module the call runs first (the engine, when there is one)
    if body is lm:
        raise UserError(f"{type(lm).__name__} has no separate body to read hidden states from: "
                        "set loss.fused_head=false")
    captured = {}

    def keep_hidden(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state  # [B, T, H]
        captured["rows"] = hidden[keep]  # [N, H]

    def replace_output(_module, _args, _output):
        return reader(captured.pop("rows"), labels[keep])

    kwargs = _no_logits(lm, device)
    handles = [body.register_forward_hook(keep_hidden), top.register_forward_hook(replace_output)]
    try:
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                    **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    # DeepSpeed 0.19 hooks the outputs of an engine's forward to scale their gradient by grad_accum
    # unless engine.backward has claimed the graph first; hand back copies, so the tensor given to
    # engine.backward is formed after the forward, as a loss formed from an engine's logits is.
    if isinstance(out, tuple):
        return tuple(_after_forward(x) for x in out)
    return _after_forward(out)


def _after_forward(x):
    return x.clone() if torch.is_tensor(x) and x.requires_grad else x


def _no_logits(lm, device) -> dict:
    """Keyword arguments that make the model's own head cost (almost) nothing: an empty index
    tensor for ``logits_to_keep`` where the model takes one (its logits are then [B, 0, V]),
    else the last position of each sequence, else nothing (a model without the argument)."""
    parameter = inspect.signature(lm.forward).parameters.get("logits_to_keep")
    if parameter is None:
        return {}
    if "Tensor" in str(parameter.annotation):
        return {"logits_to_keep": torch.empty(0, dtype=torch.long, device=device)}
    return {"logits_to_keep": 1}


@torch.no_grad()
def check_head(model, vocab: int, what: str) -> None:
    """Refuse a model whose own logits differ from ``output_head``'s on a short input.

    Catches transformations after the head that ``output_head`` does not know. Skipped for
    ZeRO-3 sharded weights (the known transforms still apply). Run once per model.
    """
    lm = causal_lm(model)
    if getattr(lm, "_distillm_head_checked", False) or is_partitioned(lm.get_output_embeddings().weight):
        return
    head = output_head(lm, vocab)
    device = head.weight.device
    ids = torch.arange(min(8, vocab), device=device).unsqueeze(0)  # [1, 8]
    was_training = lm.training
    lm.eval()
    try:
        mask = torch.ones_like(ids)
        out = lm(input_ids=ids, attention_mask=mask)
        hidden = lm.base_model(input_ids=ids, attention_mask=mask)[0]  # [1, 8, H]
    finally:
        lm.train(was_training)
    expected, got = out.logits[..., :vocab].float(), head.logits(hidden).float()
    tolerance = 1e-4 if head.weight.dtype == torch.float32 else 5e-2
    if not torch.allclose(got, expected, rtol=tolerance, atol=tolerance * max(1.0, float(expected.abs().max()))):
        raise UserError(f"the {what} ({type(lm).__name__}) transforms its logits after the output head in a way "
                        "distillm does not know: set loss.fused_head=false")
    lm._distillm_head_checked = True
