"""The transformers backend (generation.backend=hf): batched `model.generate` with left
padding and the KV cache, seeded per batch, each response cut after its first end token.

Sampling uses exactly the settings of distillm's config. transformers fills every
setting a GenerationConfig leaves unset from the model's own generation_config (a
shipped repetition_penalty, top_k, min_p ...) and then from its global defaults (top_k=50),
so every setting that shapes sampling is given here, and the model's generation_config is
set aside while generating.
"""
from __future__ import annotations

import contextlib

import torch

from ..data.batches import left_pad
from .stops import cut_after_stop, padded_ids, stop_token_ids


def sampling_settings(gen_cfg, *, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                      suppress: list[int] = ()) -> dict:
    """The complete `transformers.GenerationConfig` arguments of one generation call."""
    settings = {"do_sample": bool(gen_cfg.do_sample), "max_new_tokens": int(max_new_tokens), "num_beams": 1,
                "repetition_penalty": 1.0, "no_repeat_ngram_size": int(gen_cfg.no_repeat_ngram_size),
                "eos_token_id": list(stop_ids), "pad_token_id": pad_id, "use_cache": True}
    if gen_cfg.do_sample:  # top_k=0 switches top-k off (transformers would otherwise default to 50)
        settings.update(temperature=float(gen_cfg.temperature), top_p=float(gen_cfg.top_p), top_k=int(gen_cfg.top_k),
                        min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
    if suppress:
        settings["suppress_tokens"] = list(suppress)
    return settings


@contextlib.contextmanager
def _own_generation_config(model, config):
    """Put `config` in place of the model's shipped generation_config for one call."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    saved = target.generation_config
    target.generation_config = config
    try:
        yield
    finally:
        target.generation_config = saved


@torch.no_grad()
def generate(model, prompts: list[list[int]], settings: dict, *, seed: int, batch_size: int, on_batch=None,
             synced_gpus: bool = False) -> list[list[int]]:
    """Sample one response per prompt; each keeps the end token it stopped at.

    Sampling is seeded from `seed` (and the batch index) inside a forked RNG, so the
    caller's random state is untouched and the same seed gives the same responses.
    """
    from transformers import GenerationConfig

    config = GenerationConfig(**settings)
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    responses: list[list[int]] = []
    try:
        with _own_generation_config(model, config):
            for index, start in enumerate(range(0, len(prompts), batch_size)):
                chunk = prompts[start:start + batch_size]
                batch = {k: v.to(device) for k, v in left_pad(chunk, settings["pad_token_id"]).items()}
                with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
                    torch.manual_seed(seed * 1_000_003 + index)
                    out = model.generate(**batch, generation_config=config, synced_gpus=synced_gpus)
                new_tokens = out[:, batch["input_ids"].shape[1]:].tolist()
                chunk_responses = [cut_after_stop(tokens, settings["eos_token_id"], settings["pad_token_id"])
                                   for tokens in new_tokens]
                responses.extend(chunk_responses)
                if on_batch is not None:
                    on_batch(len(chunk), sum(len(r) for r in chunk_responses))
    finally:
        model.train(model_was_training)
    return responses


class HFGenerator:
    """`generate` on a model in this process (the student being trained, or a loaded model)."""

    def __init__(self, model, gen_cfg, tokenizer, *, max_length: int, sharded: bool = False):
        self.model, self.gen_cfg, self.max_length, self.sharded = model, gen_cfg, max_length, sharded
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.pad_id = tokenizer.pad_token_id
        self.suppress = padded_ids(tokenizer, model)

    def new_tokens(self, prompts: list[list[int]]) -> int:
        """generation.max_new_tokens, or (0) the room the longest prompt leaves in max_length."""
        room = max(1, self.max_length - max(len(p) for p in prompts))
        return min(self.gen_cfg.max_new_tokens, room) if self.gen_cfg.max_new_tokens else room

    def settings(self, prompts: list[list[int]]) -> dict:
        return sampling_settings(self.gen_cfg, max_new_tokens=self.new_tokens(prompts), stop_ids=self.stop_ids,
                                 pad_id=self.pad_id, suppress=self.suppress)

    def finished(self, response: list[int]) -> bool:
        """Whether a response ended with an end token (else the length limit cut it)."""
        return bool(response) and response[-1] in self.stop_ids

    def generate(self, prompts: list[list[int]], *, seed: int, batch_size: int | None = None,
                 on_batch=None) -> list[list[int]]:
        return generate(self.model, prompts, self.settings(prompts), seed=seed,
                        batch_size=batch_size or self.gen_cfg.batch_size, on_batch=on_batch, synced_gpus=self.sharded)
