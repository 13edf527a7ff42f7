"""The generation seam: one response per prompt, for every stage that samples.

generate-student (teacher answers, student samples, DistiLLM-2 pairs), the off-policy
student samples inside distill, DistiLLM-2's regeneration and evaluate all ask a
`Generator` built here:

    generator = make_generator(model, cfg.generation, tokenizer, max_length=cfg.data.max_length)
    responses = generator.generate(prompt_ids, seed=seed)   # token ids, each with the end token it stopped at
    generator.finished(response)                            # False: cut by the length limit (truncated)

A response has at most `gen_cfg.max_new_tokens` tokens (0: as many as fit) and never
makes prompt + response longer than `max_length`. It stops at any of the model's end
tokens and never samples an id beyond the tokenizer (stops.py). Only the config's
sampling settings apply, nothing from the model's own generation_config. The same seed
gives the same responses; the caller's random state is left alone. Backends
(generation.backend):

    hf.py      transformers `generate` on the model in this process
    vllm.py    a vLLM engine in this process, given the model's current weights before each call
    served.py  an OpenAI-compatible completions server by URL (black-box teacher answers)

A new backend is a new module here with the same `generate` method, chosen in
`make_generator`; no stage changes.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..errors import UserError
from .hf import HFGenerator


class Generator(Protocol):
    stop_ids: list[int]  # every token id a response may end with

    def finished(self, response: list[int]) -> bool:
        """Whether the response ended with an end token (False: the length limit cut it)."""

    def settings(self, prompts: list[list[int]]) -> dict:
        """The exact sampling settings a call on these prompts uses (written beside the outputs)."""

    def generate(self, prompts: list[list[int]], *, seed: int, batch_size: int | None = None,
                 on_batch=None) -> list[list[int]]:
        """One response per prompt (batches of `batch_size`, default gen_cfg.batch_size);
        `on_batch(prompts_done, tokens_generated)` after each batch."""


def make_generator(model, gen_cfg, tokenizer, *, max_length: int, sharded: bool = False) -> Generator:
    """The backend of `gen_cfg` for `model`. sharded: the weights are partitioned across ranks
    (ZeRO-3 with several processes), so every rank must take part in every forward.

    `model` may also be a function that loads it: a served model (backend=openai) never
    needs the weights here, so they are loaded only for the backends that run them."""
    if gen_cfg.backend == "openai":
        from .served import ServedGenerator

        return ServedGenerator(None if callable(model) and not isinstance(model, torch.nn.Module) else model,
                               gen_cfg, tokenizer, max_length=max_length)
    if gen_cfg.backend == "vllm":
        from .vllm import VLLMGenerator, import_vllm

        import_vllm()  # not installed: one line, before any model is loaded
    if callable(model) and not isinstance(model, torch.nn.Module):
        model = model()
    if gen_cfg.backend == "hf":
        return HFGenerator(model, gen_cfg, tokenizer, max_length=max_length, sharded=sharded)
    if gen_cfg.backend == "vllm":
        return VLLMGenerator(model, gen_cfg, tokenizer, max_length=max_length, sharded=sharded)
    raise UserError(f"unknown generation backend '{gen_cfg.backend}'; choose generation.backend=hf, vllm or openai")
