"""The embedded toy setting: deterministic disjoint splits, an exact tokenizer, tiny presets."""

from __future__ import annotations

import string

import pytest
import torch

from distillm_cli import toy
from distillm_cli.data import format_prompt

SMALL = {"teacher_train": 200, "train": 50, "unlabelled": 100, "valid": 30, "test": 40}


def test_splits_deterministic_by_seed():
    a, b = toy.make_toy_splits(0, SMALL), toy.make_toy_splits(0, SMALL)
    assert a == b
    c = toy.make_toy_splits(1, SMALL)
    assert a["test"] != c["test"]


def test_splits_have_requested_sizes_and_fields():
    splits = toy.make_toy_splits(3, SMALL)
    assert set(splits) == {"teacher_train", "train", "unlabelled", "valid", "test"}
    for name, records in splits.items():
        assert len(records) == SMALL[name]
        for rec in records:
            assert set(rec) == {"instruction", "input", "output", "task"}
            assert rec["task"] in toy.TASK_FAMILIES
            assert rec["instruction"] in toy.TASK_FAMILIES[rec["task"]][0]
            assert rec["input"] and rec["output"]


def test_default_sizes():
    splits = toy.make_toy_splits(0)
    assert {k: len(v) for k, v in splits.items()} == toy.DEFAULT_SPLIT_SIZES


def test_inputs_unique_within_and_across_splits():
    splits = toy.make_toy_splits(0)
    inputs = [rec["input"] for records in splits.values() for rec in records]
    assert len(inputs) == len(set(inputs))


def test_every_family_in_every_split():
    splits = toy.make_toy_splits(0, SMALL)
    for records in splits.values():
        assert {rec["task"] for rec in records} == set(toy.DEFAULT_TASKS)


def test_growing_a_pool_keeps_the_held_out_splits():
    small = toy.make_toy_splits(5, SMALL)
    big = toy.make_toy_splits(5, {**SMALL, "teacher_train": 400, "unlabelled": 300})
    assert small["test"] == big["test"]
    assert small["valid"] == big["valid"]
    assert small["train"] == big["train"]


def test_toy_length_scales_word_list_answers_only():
    short, long = toy.make_toy_splits(0, SMALL), toy.make_toy_splits(0, SMALL, length=4)
    for task in ("reverse_words", "uppercase", "every_second_word", "count_words"):
        short_words = [len(r["input"].split()) for r in short["train"] if r["task"] == task]
        long_words = [len(r["input"].split()) for r in long["train"] if r["task"] == task]
        lo, hi = {"reverse_words": (2, 5), "uppercase": (2, 4), "every_second_word": (3, 6),
                  "count_words": (1, 8)}[task]
        assert lo <= min(short_words) and max(short_words) <= hi
        assert 4 * lo <= min(long_words) and max(long_words) <= 4 * hi
    numbers = [r["input"] for r in long["train"] if r["task"] == "number_to_words"]
    assert all(int(n) < 10000 for n in numbers)  # numbers keep their size
    for rec in long["train"]:  # the answers are still right at the longer length
        if rec["task"] == "reverse_words":
            assert rec["output"].split() == rec["input"].split()[::-1]
    with pytest.raises(ValueError, match="toy length"):
        toy.make_toy_splits(0, SMALL, length=0)


def test_unknown_split_name_is_an_error():
    with pytest.raises(ValueError, match="unknown toy split"):
        toy.make_toy_splits(0, {"training": 10})


def test_family_outputs_are_correct():
    assert toy.number_to_words(0) == "zero"
    assert toy.number_to_words(13) == "thirteen"
    assert toy.number_to_words(40) == "forty"
    assert toy.number_to_words(347) == "three hundred forty-seven"
    assert toy.number_to_words(9005) == "nine thousand five"
    expected = {
        "reverse_words": lambda text: " ".join(reversed(text.split())),
        "every_second_word": lambda text: " ".join(text.split()[0::2]),
        "uppercase": lambda text: text.upper(),
        "count_words": lambda text: str(len(text.split())),
        "number_to_words": lambda text: toy.number_to_words(int(text)),
    }
    for rec in toy.make_toy_splits(2, SMALL)["valid"]:
        if rec["task"] in expected:
            assert rec["output"] == expected[rec["task"]](rec["input"])


def test_sequences_fit_the_toy_data_config():
    # conf/data/toy.yaml: max_prompt_length 128, max_length 192 (response + EOS included).
    tok = toy.build_char_tokenizer()
    for records in toy.make_toy_splits(0).values():
        for rec in records:
            prompt = format_prompt(rec, template="compact")
            assert len(tok(prompt)["input_ids"]) <= 128
            assert len(tok(prompt + rec["output"])["input_ids"]) + 1 <= 192


# --------------------------------------------------------------------------- tokenizer

ALL_CHARS = "".join(toy.CHAR_VOCAB)


def _check_exact(tok):
    printable = "".join(c for c in string.printable if c not in "\t\r\x0b\x0c")
    for text in [ALL_CHARS, "  two  spaces\n\n### Response:\nX", printable]:
        ids = tok(text)["input_ids"]
        assert len(ids) == len(text)  # one token per character, nothing added
        assert tok.decode(ids) == text
    ids = tok("ab" + tok.eos_token)["input_ids"]
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_char_tokenizer_is_exact():
    tok = toy.build_char_tokenizer()
    _check_exact(tok)
    assert len(tok) == 3 + 96
    assert (tok.pad_token, tok.eos_token, tok.bos_token, tok.unk_token) == (
        "<|pad|>", "<|endoftext|>", "<|endoftext|>", "<|unk|>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok("é")["input_ids"] == [tok.unk_token_id]
    assert tok.model_max_length == 256


def test_char_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    tok = toy.build_char_tokenizer(model_max_length=160)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    _check_exact(loaded)
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == (0, 1, 1)
    assert loaded.model_max_length == 160
    text = "### Instruction:\nCount the words.\n\n### Input:\nred sun\n\n### Response:\n2"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]


def test_char_tokenizer_padding_side():
    tok = toy.build_char_tokenizer()
    tok.padding_side = "left"
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1]
    tok.padding_side = "right"
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][2:] == [tok.pad_token_id] * 2


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", sorted(toy.TINY_PRESETS))
def test_presets_build_and_forward(preset):
    tok = toy.build_char_tokenizer()
    torch.manual_seed(0)
    model = toy.build_tiny_model(preset, tok)
    cfg = model.config
    assert cfg.vocab_size == len(tok)
    assert (cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id) == (0, 1, 1)
    assert cfg.resid_pdrop == cfg.embd_pdrop == cfg.attn_pdrop == 0.0
    assert cfg.n_positions >= 160
    enc = tok(["### Input:\nred", "sun"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (2, enc["input_ids"].shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_build_is_deterministic_and_checks_names():
    tok = toy.build_char_tokenizer()
    torch.manual_seed(1)
    a = toy.build_tiny_model("tiny-student", tok)
    torch.manual_seed(1)
    b = toy.build_tiny_model("tiny-student", tok)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="unknown tiny preset"):
        toy.build_tiny_model("huge", tok)


def test_teacher_is_bigger_than_student():
    tok = toy.build_char_tokenizer()
    sizes = {p: toy.build_tiny_model(p, tok).num_parameters() for p in toy.TINY_PRESETS}
    assert sizes["tiny-teacher"] > sizes["tiny-student"]
