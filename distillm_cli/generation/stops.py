"""Where a response ends, for every backend: the model's end tokens, and the ids it may not sample.

A chat model has several end tokens: the template's end of turn (`<|im_end|>`), the
tokenizer's EOS (`<|endoftext|>`), and whatever its generation_config lists. Generation
stops at any of them. Embedding rows beyond the tokenizer (Qwen2 pads 151665 tokens to
151936 rows) are ids no text maps to: they are never sampled, so they never become a label.
"""
from __future__ import annotations

from ..data.chat import end_of_turn_token


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a response: EOS, the chat template's end of turn, the model's own list."""
    ids = [tokenizer.eos_token_id]
    end_token = end_of_turn_token(tokenizer)
    if end_token:
        ids.append(tokenizer.convert_tokens_to_ids(end_token))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def padded_ids(tokenizer, model) -> list[int]:
    """Embedding rows past the tokenizer's last id (padded vocabulary)."""
    rows = getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer)
    return list(range(len(tokenizer), rows))


def cut_after_stop(tokens: list[int], stop_ids, pad_id: int) -> list[int]:
    """A generated continuation up to and including its first end token (padding after it dropped)."""
    stops = set(stop_ids)
    for index, token in enumerate(tokens):
        if token in stops:
            return tokens[: index + 1]
    while tokens and tokens[-1] == pad_id:
        tokens = tokens[:-1]
    return tokens
