"""Batched sampling: seeded, left-padded, end tokens kept, equal to unbatched decoding."""
from __future__ import annotations

import os

import torch

from distillm_cli.config import GenerationConfig
from distillm_cli.generation.hf import generate, sampling_settings
from distillm_cli.generation.stops import cut_after_stop
from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model

from .conftest import run_cli


def tiny():
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    return tokenizer, build_tiny_model("tiny-student", tokenizer).eval()


def prompts(tokenizer):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("Reverse: a b", "Count the words in x y z")]


def run(model, tokenizer, sampling, seed, max_new_tokens):
    settings = sampling_settings(sampling, max_new_tokens=max_new_tokens, stop_ids=[tokenizer.eos_token_id],
                                 pad_id=tokenizer.pad_token_id)
    return generate(model, prompts(tokenizer), settings, seed=seed, batch_size=8)


def test_same_seed_same_samples_other_seed_other_samples():
    tokenizer, model = tiny()
    sampling = GenerationConfig(do_sample=True)
    first = run(model, tokenizer, sampling, 1, 12)
    assert run(model, tokenizer, sampling, 1, 12) == first
    assert run(model, tokenizer, sampling, 2, 12) != first


def test_sampling_leaves_the_global_rng_alone():
    tokenizer, model = tiny()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    run(model, tokenizer, GenerationConfig(), 1, 4)
    assert torch.equal(torch.rand(3), expected)


def test_left_padded_batch_equals_one_prompt_at_a_time():
    tokenizer, model = tiny()
    settings = sampling_settings(GenerationConfig(do_sample=False), max_new_tokens=10,
                                 stop_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id)
    batched = generate(model, prompts(tokenizer), settings, seed=0, batch_size=8)
    single = [generate(model, [p], settings, seed=0, batch_size=8)[0] for p in prompts(tokenizer)]
    assert batched == single


def test_responses_end_at_their_first_end_token_and_keep_it():
    assert cut_after_stop([5, 6, 1, 7, 1], [1], pad_id=0) == [5, 6, 1]
    assert cut_after_stop([5, 6, 0, 0], [1], pad_id=0) == [5, 6]
    assert cut_after_stop([5, 9, 6, 1], [1, 9], pad_id=0) == [5, 9]  # any of several end tokens
    assert cut_after_stop([5, 6], [1], pad_id=1) == [5, 6]


def test_settings_switch_off_what_transformers_would_fill_in():
    settings = sampling_settings(GenerationConfig(do_sample=True, top_k=0), max_new_tokens=7, stop_ids=[3, 4],
                                 pad_id=0, suppress=[98])
    assert settings["top_k"] == 0 and settings["repetition_penalty"] == 1.0 and settings["num_beams"] == 1
    assert settings["eos_token_id"] == [3, 4] and settings["suppress_tokens"] == [98]
    assert settings["max_new_tokens"] == 7


def test_vllm_backend_without_vllm_is_one_clear_line(tmp_path):
    """generation.backend=vllm where vllm cannot be imported: the fix in one line, no traceback."""
    hidden = tmp_path / "hide" / "vllm"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('vllm is hidden by this test')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get("PYTHONPATH")]))}
    result = run_cli("generate-student", "generation.backend=vllm", "generate.max_prompts=2",
                     f"run_dir={tmp_path / 'run'}", env=env)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("distillm: error:")]
    assert len(errors) == 1 and "make vllm-install" in errors[0] and "Traceback" not in result.stderr
