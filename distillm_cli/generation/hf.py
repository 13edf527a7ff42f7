"""The transformers backend (generation.backend=hf): batched `model.generate` with left
padding and the KV cache, seeded per batch, each response cut after its first EOS."""
from __future__ import annotations

import torch

from ..data.batches import left_pad


def sampling_kwargs(gen_cfg, max_new_tokens: int | None = None) -> dict:
    """Hugging Face `generate` arguments from a GenerationConfig."""
    kwargs = {"do_sample": gen_cfg.do_sample, "max_new_tokens": max_new_tokens or gen_cfg.max_new_tokens,
              "use_cache": True}
    if gen_cfg.do_sample:
        kwargs.update(temperature=gen_cfg.temperature, top_p=gen_cfg.top_p, top_k=gen_cfg.top_k or None)
    if gen_cfg.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = gen_cfg.no_repeat_ngram_size
    return kwargs


def cut_after_eos(tokens: list[int], eos_id: int, pad_id: int) -> list[int]:
    """A generated continuation up to and including its first EOS (padding after it dropped)."""
    if eos_id in tokens:
        return tokens[: tokens.index(eos_id) + 1]
    while tokens and tokens[-1] == pad_id and pad_id != eos_id:
        tokens = tokens[:-1]
    return tokens


@torch.no_grad()
def generate(model, prompts: list[list[int]], gen_cfg, *, eos_id: int, pad_id: int, seed: int,
             max_new_tokens: int | None = None, batch_size: int | None = None, on_batch=None,
             synced_gpus: bool = False) -> list[list[int]]:
    """Sample one response per prompt; each response keeps its EOS.

    Sampling is seeded from `seed` (and the batch index) inside a forked RNG, so the
    caller's random state is untouched and the same seed gives the same responses.
    """
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    size = batch_size or gen_cfg.batch_size
    responses: list[list[int]] = []
    kwargs = sampling_kwargs(gen_cfg, max_new_tokens)
    try:
        for index, start in enumerate(range(0, len(prompts), size)):
            chunk = prompts[start:start + size]
            batch = {k: v.to(device) for k, v in left_pad(chunk, pad_id).items()}
            with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
                torch.manual_seed(seed * 1_000_003 + index)
                out = model.generate(**batch, **kwargs, eos_token_id=eos_id, pad_token_id=pad_id,
                                     synced_gpus=synced_gpus)
            new_tokens = out[:, batch["input_ids"].shape[1]:].tolist()
            chunk_responses = [cut_after_eos(tokens, eos_id, pad_id) for tokens in new_tokens]
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
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    def generate(self, prompts: list[list[int]], *, seed: int, batch_size: int | None = None,
                 on_batch=None) -> list[list[int]]:
        room = self.max_length - max(len(p) for p in prompts)  # prompt + response fit in max_length
        return generate(self.model, prompts, self.gen_cfg, eos_id=self.eos_id, pad_id=self.pad_id, seed=seed,
                        max_new_tokens=max(1, min(self.gen_cfg.max_new_tokens, room)), batch_size=batch_size,
                        on_batch=on_batch, synced_gpus=self.sharded)
