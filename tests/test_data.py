"""Data: next-token alignment, prompt masking, EOS, padding, streams, readable errors."""
from __future__ import annotations

import pytest
import torch

from distillm_cli.data.batches import BatchStream, collate, left_pad
from distillm_cli.data.formats import IGNORE, build_example, format_prompt
from distillm_cli.data.sources import read_jsonl
from distillm_cli.errors import UserError


def test_labels_cover_exactly_the_response_tokens_including_eos():
    prompt, response = [5, 6, 7], [8, 9, 1]
    example = build_example(prompt, response, max_length=100)
    assert example.input_ids.tolist() == [5, 6, 7, 8, 9, 1]
    # position t predicts token t+1: the last prompt position predicts the first response token
    assert example.labels.tolist() == [IGNORE, IGNORE, 8, 9, 1, IGNORE]
    counted = example.input_ids[1:][example.labels[:-1] != IGNORE].tolist()
    assert counted == [8, 9, 1]


def test_a_response_is_labelled_as_given_no_end_token_invented():
    example = build_example([5, 6], [8, 1], max_length=100)
    assert example.input_ids.tolist() == [5, 6, 8, 1]
    assert (example.labels != IGNORE).sum() == 2
    truncated = build_example([5, 6], [8, 9], max_length=100)  # cut by the length limit: no EOS added
    assert truncated.input_ids.tolist() == [5, 6, 8, 9]
    assert truncated.labels.tolist() == [IGNORE, 8, 9, IGNORE]


def test_long_samples_are_cut_at_max_length():
    example = build_example([5, 6, 7], [8, 9, 10, 11, 1], max_length=5)
    assert len(example.input_ids) == 5
    assert example.labels.tolist() == [IGNORE, IGNORE, 8, 9, IGNORE]


def test_collate_right_pads_and_left_pad_for_generation():
    a, b = build_example([5], [8, 1], 10), build_example([5, 6, 7], [8, 9, 1], 10)
    batch = collate([a, b], pad_id=0)
    assert batch["input_ids"].shape == (2, 6)
    assert batch["attention_mask"].sum(1).tolist() == [3, 6]
    assert (batch["labels"][0, 3:] == IGNORE).all()
    prompts = left_pad([[5], [5, 6, 7]], pad_id=0)
    assert prompts["input_ids"][0].tolist() == [0, 0, 5]
    assert prompts["attention_mask"][0].tolist() == [0, 0, 1]


def test_prompt_template_matches_the_papers():
    text = format_prompt({"instruction": "Say hi.", "input": "Bob"}, "alpaca")
    assert text.startswith("Below is an instruction that describes a task.")
    assert text.endswith("### Instruction:\nSay hi.\n\n### Input:\nBob\n\n### Response:\n")
    assert "### Input" not in format_prompt({"instruction": "Say hi.", "input": ""}, "compact")


def test_batch_stream_is_deterministic_sharded_and_resumable():
    items = list(range(10))
    one = BatchStream(items, 4, seed=3)
    sequence = [one.next() for _ in range(5)]
    again = BatchStream(items, 4, seed=3)
    assert [again.next() for _ in range(5)] == sequence
    resumed = BatchStream(items, 4, seed=3)
    resumed.load_state_dict({"taken": 2})
    assert resumed.next() == sequence[2]
    ranks = [BatchStream(items, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].next() + ranks[1].next() == sequence[0]
    assert sorted(sequence[0] + sequence[1] + [x for x in sequence[2][:2]]) == sorted(items)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{oops\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(UserError, match="does not exist"):
        read_jsonl(tmp_path / "missing.jsonl")
    path.write_text('{"text": "no instruction"}\n')
    with pytest.raises(UserError, match="none of 'messages', 'conversations', 'instruction' or 'prompt'"):
        read_jsonl(path)


def test_dtype_of_examples():
    example = build_example([1, 2], [3, 0], 8)
    assert example.input_ids.dtype == torch.long and example.labels.dtype == torch.long


def test_train_examples_caps_the_training_split_only(compose_cfg):
    from distillm_cli.data.sources import load_split

    cfg = compose_cfg("distill", "data.train_examples=100")
    full = compose_cfg("distill")
    assert load_split(cfg, "train") == load_split(full, "train")[:100]
    for split in ("valid", "test", "teacher_train"):
        assert load_split(cfg, split) == load_split(full, split)
    import pytest

    from distillm_cli.errors import UserError
    with pytest.raises(UserError, match="data.train_examples=-1"):
        compose_cfg("distill", "data.train_examples=-1")
