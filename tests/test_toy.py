"""The embedded toy data: deterministic disjoint splits of learnable task families."""

from __future__ import annotations

import pytest

from distillm_cli.data import toy
from distillm_cli.data.formats import format_prompt
from distillm_cli.models import tiny

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
    tok = tiny.build_char_tokenizer()
    for records in toy.make_toy_splits(0).values():
        for rec in records:
            prompt = format_prompt(rec, template="compact")
            assert len(tok(prompt)["input_ids"]) <= 128
            assert len(tok(prompt + rec["output"])["input_ids"]) + 1 <= 192
