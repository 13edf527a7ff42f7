"""The generation seam: one response per prompt, for every stage that samples.

generate-student (teacher answers, student samples, DistiLLM-2 pairs), the off-policy
student samples inside distill, DistiLLM-2's regeneration and evaluate all ask a
`Generator` built here:

    generator = make_generator(model, cfg.generation, tokenizer, max_length=cfg.data.max_length)
    responses = generator.generate(prompt_ids, seed=seed)   # token ids, each ending in EOS if it ended

A response has at most `gen_cfg.max_new_tokens` tokens and never makes prompt + response
longer than `max_length`. The same seed gives the same responses; the caller's random
state is left alone. Backends (generation.backend):

    hf.py      transformers `generate` on the model in this process

A new backend (vLLM, an OpenAI-compatible server) is a new module here with the same
`generate` method, chosen in `make_generator`; no stage changes.
"""
from __future__ import annotations

from typing import Protocol

from ..errors import UserError
from .hf import HFGenerator


class Generator(Protocol):
    def generate(self, prompts: list[list[int]], *, seed: int, batch_size: int | None = None,
                 on_batch=None) -> list[list[int]]:
        """One response per prompt (batches of `batch_size`, default gen_cfg.batch_size);
        `on_batch(prompts_done, tokens_generated)` after each batch."""


def make_generator(model, gen_cfg, tokenizer, *, max_length: int, sharded: bool = False) -> Generator:
    """The backend of `gen_cfg` for `model`. sharded: the weights are partitioned across ranks
    (ZeRO-3 with several processes), so every rank must take part in every forward."""
    if gen_cfg.backend == "hf":
        return HFGenerator(model, gen_cfg, tokenizer, max_length=max_length, sharded=sharded)
    raise UserError(f"unknown generation backend '{gen_cfg.backend}'; choose generation.backend=hf")
