"""The tiny on-disk chat model pairs of tests/chat_models.py really have the traps they promise."""
from __future__ import annotations

import pytest
import torch

from tests.chat_models import (
    DEFAULT_SYSTEM,
    ENDOFTEXT,
    IM_END,
    IM_START,
    build_chat_pair,
    build_tokenizer,
    messages_records,
    write_messages_dataset,
)

ARCHS = ["llama", "qwen2"]
TWO_TURNS = [
    {"role": "user", "content": "Hi there!"},
    {"role": "assistant", "content": "Hello. How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
]
CHATML_TWO_TURNS = (
    "<|im_start|>user\nHi there!<|im_end|>\n"
    "<|im_start|>assistant\nHello. How can I help?<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n4.<|im_end|>\n"
)


@pytest.fixture(scope="module", params=ARCHS)
def pair(request, tmp_path_factory):
    """(arch, teacher_dir, student_dir), built once per arch for the whole module (building is the slow bit)."""
    teacher, student = build_chat_pair(tmp_path_factory.mktemp(f"pair_{request.param}"), arch=request.param)
    return request.param, teacher, student


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_both_dirs_load_with_auto_classes(pair):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    arch, teacher, student = pair
    expected_cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}[arch]
    for path, layers, hidden in [(teacher, 2, 64), (student, 1, 32)]:
        model = _model(path)
        assert type(model) is expected_cls
        assert (model.config.num_hidden_layers, model.config.hidden_size) == (layers, hidden)
        assert model.config.max_position_embeddings == 512
        assert model.config.tie_word_embeddings is False
        tok = _tok(path)
        enc = tok(["Hello world.", "Hi"], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**enc).logits
        assert logits.shape == (2, enc["input_ids"].shape[1], model.config.vocab_size)


def test_teacher_and_student_share_tokenizer_files(pair):
    _, teacher, student = pair
    names = sorted(p.name for p in teacher.iterdir() if "token" in p.name or p.suffix == ".jinja")
    assert "tokenizer.json" in names and "chat_template.jinja" in names
    for name in names:
        assert (teacher / name).read_bytes() == (student / name).read_bytes(), name


@pytest.mark.parametrize("padded_rows", [16, 5])
def test_vocab_is_padded(tmp_path, padded_rows):
    teacher, student = build_chat_pair(tmp_path, padded_rows=padded_rows)
    tok = _tok(teacher)
    for path in (teacher, student):
        model = _model(path)
        rows = len(tok) + padded_rows
        assert model.config.vocab_size == rows
        assert model.get_input_embeddings().weight.shape[0] == rows
        assert model.get_output_embeddings().weight.shape[0] == rows


def test_eos_is_not_end_of_turn(pair):
    _, teacher, _ = pair
    tok = _tok(teacher)
    assert tok.eos_token == tok.pad_token == ENDOFTEXT
    assert tok.eos_token != IM_END
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert im_end != tok.eos_token_id
    assert im_end != tok.unk_token_id  # a real token, not an unknown
    assert tok.bos_token is None
    ids = tok("a b")["input_ids"]
    assert tok.decode(ids) == "a b"  # nothing prepended or appended
    assert tok.eos_token_id not in ids


def test_specials_are_single_tokens_at_the_top(pair):
    _, teacher, _ = pair
    tok = _tok(teacher)
    ids = [tok.convert_tokens_to_ids(t) for t in (ENDOFTEXT, IM_START, IM_END)]
    assert ids == [len(tok) - 3, len(tok) - 2, len(tok) - 1]
    assert tok(IM_START + "user\nHi" + IM_END)["input_ids"][0] == ids[1]
    assert tok(IM_START + "user\nHi" + IM_END)["input_ids"][-1] == ids[2]


def test_chat_template_renders_exactly(pair):
    arch, teacher, _ = pair
    tok = _tok(teacher)
    prefix = f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n" if arch == "qwen2" else ""
    assert tok.apply_chat_template(TWO_TURNS, tokenize=False) == prefix + CHATML_TWO_TURNS
    prompt = tok.apply_chat_template(TWO_TURNS[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == prefix + "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n"
    # An explicit system turn replaces the default one in both flavours.
    with_system = [{"role": "system", "content": "Be brief."}, *TWO_TURNS[:2]]
    assert tok.apply_chat_template(with_system, tokenize=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n" + CHATML_TWO_TURNS.split("<|im_start|>user\nWhat")[0])


def test_generation_config_has_two_eos_and_leaky_sampling(pair):
    from transformers import GenerationConfig

    _, teacher, student = pair
    tok = _tok(teacher)
    for path in (teacher, student):
        for gen in (GenerationConfig.from_pretrained(path), _model(path).generation_config):
            assert gen.eos_token_id == [tok.convert_tokens_to_ids(IM_END), tok.eos_token_id]
            assert gen.pad_token_id == tok.pad_token_id
            assert (gen.repetition_penalty, gen.top_k, gen.temperature, gen.do_sample) == (1.3, 5, 0.7, True)


def test_same_seed_same_weights(tmp_path):
    a, a_student = build_chat_pair(tmp_path / "a", seed=3)
    b, _ = build_chat_pair(tmp_path / "b", seed=3)
    c, _ = build_chat_pair(tmp_path / "c", seed=4)
    sa, sb, sc = (_model(p).state_dict() for p in (a, b, c))
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert _model(a_student).config.hidden_size == 32


@pytest.mark.parametrize("text", [
    "Hello, world! It's 9:30 -- call 555-0123 (ext. 42); cost: $3.50 / 20%.",
    "  leading spaces,\n\nblank lines,\ttabs and trailing space ",
    "Unseen bytes: café, naïve, 日本語, 😀 and {\"json\": [1, 2.5e-3]}",
])
def test_text_round_trips_and_matches_built_tokenizer(pair, text):
    arch, teacher, _ = pair
    tok = _tok(teacher)
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode())  # BPE merged something: not a byte-per-token tokenizer
    # What AutoTokenizer loads tokenizes exactly like the in-memory tokenizer we built and saved.
    assert build_tokenizer(arch)(text)["input_ids"] == ids


def test_messages_dataset_on_disk(tmp_path):
    from datasets import load_from_disk

    path = write_messages_dataset(tmp_path / "ds", n=24, seed=1)
    ds = load_from_disk(str(path))
    assert len(ds) == 24 and "messages" in ds.column_names
    assert ds.to_list() == messages_records(24, seed=1)
    shapes = {tuple(m["role"] for m in row["messages"]) for row in ds}
    assert shapes == {
        ("user", "assistant"),
        ("system", "user", "assistant"),
        ("user", "assistant", "user", "assistant"),
    }
    assert all(m["content"].strip() for row in ds for m in row["messages"])


def test_messages_records_are_deterministic():
    assert messages_records(10, seed=0) == messages_records(10, seed=0)
    assert messages_records(10, seed=0) != messages_records(10, seed=1)
    assert len(messages_records(5)) == 5
