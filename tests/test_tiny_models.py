"""The demo's models: the character tokenizer and the tiny GPT-2 presets."""
from __future__ import annotations

import string

import pytest
import torch

from distillm_cli.models import tiny

# --------------------------------------------------------------------------- tokenizer

ALL_CHARS = "".join(tiny.CHAR_VOCAB)


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
    tok = tiny.build_char_tokenizer()
    _check_exact(tok)
    assert len(tok) == 3 + 96
    assert (tok.pad_token, tok.eos_token, tok.bos_token, tok.unk_token) == (
        "<|pad|>", "<|endoftext|>", "<|endoftext|>", "<|unk|>")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok("é")["input_ids"] == [tok.unk_token_id]
    assert tok.model_max_length == 256


def test_char_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    tok = tiny.build_char_tokenizer(model_max_length=160)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    _check_exact(loaded)
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == (0, 1, 1)
    assert loaded.model_max_length == 160
    text = "### Instruction:\nCount the words.\n\n### Input:\nred sun\n\n### Response:\n2"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]


def test_char_tokenizer_padding_side():
    tok = tiny.build_char_tokenizer()
    tok.padding_side = "left"
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1]
    tok.padding_side = "right"
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][2:] == [tok.pad_token_id] * 2


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", sorted(tiny.TINY_PRESETS))
def test_presets_build_and_forward(preset):
    tok = tiny.build_char_tokenizer()
    torch.manual_seed(0)
    model = tiny.build_tiny_model(preset, tok)
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
    tok = tiny.build_char_tokenizer()
    torch.manual_seed(1)
    a = tiny.build_tiny_model("tiny-student", tok)
    torch.manual_seed(1)
    b = tiny.build_tiny_model("tiny-student", tok)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="unknown tiny preset"):
        tiny.build_tiny_model("huge", tok)


def test_teacher_is_bigger_than_student():
    tok = tiny.build_char_tokenizer()
    sizes = {p: tiny.build_tiny_model(p, tok).num_parameters() for p in tiny.TINY_PRESETS}
    assert sizes["tiny-teacher"] > sizes["tiny-student"]
