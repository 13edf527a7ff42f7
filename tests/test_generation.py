"""Batched sampling: seeded, left-padded, EOS kept, equal to unbatched decoding."""
from __future__ import annotations

import torch

from distillm_cli.config import GenerationConfig
from distillm_cli.generation.hf import cut_after_eos, generate
from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model


def tiny():
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    return tokenizer, build_tiny_model("tiny-student", tokenizer).eval()


def prompts(tokenizer):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("Reverse: a b", "Count the words in x y z")]


def test_same_seed_same_samples_other_seed_other_samples():
    tokenizer, model = tiny()
    sampling = GenerationConfig(do_sample=True, max_new_tokens=12)
    kwargs = {"eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id}
    first = generate(model, prompts(tokenizer), sampling, seed=1, **kwargs)
    assert generate(model, prompts(tokenizer), sampling, seed=1, **kwargs) == first
    assert generate(model, prompts(tokenizer), sampling, seed=2, **kwargs) != first


def test_sampling_leaves_the_global_rng_alone():
    tokenizer, model = tiny()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    generate(model, prompts(tokenizer), GenerationConfig(max_new_tokens=4), seed=1,
             eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    assert torch.equal(torch.rand(3), expected)


def test_left_padded_batch_equals_one_prompt_at_a_time():
    tokenizer, model = tiny()
    greedy = GenerationConfig(do_sample=False, max_new_tokens=10)
    kwargs = {"eos_id": tokenizer.eos_token_id, "pad_id": tokenizer.pad_token_id, "seed": 0}
    batched = generate(model, prompts(tokenizer), greedy, **kwargs)
    single = [generate(model, [p], greedy, **kwargs)[0] for p in prompts(tokenizer)]
    assert batched == single


def test_responses_end_at_their_first_eos_and_keep_it():
    assert cut_after_eos([5, 6, 1, 7, 1], eos_id=1, pad_id=0) == [5, 6, 1]
    assert cut_after_eos([5, 6, 0, 0], eos_id=1, pad_id=0) == [5, 6]
