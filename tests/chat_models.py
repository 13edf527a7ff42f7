"""Tiny, real Hugging Face chat model pairs on disk, built offline, for the "user's own instruct models" path.

Not a test file: tests import ``build_chat_pair``, ``write_messages_dataset`` and ``messages_records``.

The pair deliberately reproduces the traps of real instruct checkpoints (Qwen2.5-Instruct in particular),
so tests exercise them without a model hub:

* the chat end-of-turn token ``<|im_end|>`` is NOT ``tokenizer.eos_token`` (that is ``<|endoftext|>``,
  which doubles as the pad token), so code that stops on ``eos_token_id`` alone never stops a reply;
* the embedding matrix has more rows than the tokenizer has tokens (padded vocabulary), so code that
  sizes things by ``len(tokenizer)`` and code that sizes them by ``config.vocab_size`` disagree;
* ``generation_config.json`` lists two eos ids and ships "leaky" sampling defaults
  (repetition penalty, top-k, temperature, do_sample) that a careful generator must not inherit;
* the "qwen2" flavour's chat template adds a default system turn the caller never wrote.
"""
from __future__ import annotations

import random
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
DEFAULT_SYSTEM = "You are a helpful assistant."

# Sampling defaults a user's checkpoint might ship; tests use them to prove our generator ignores them.
LEAKY_SAMPLING = {"repetition_penalty": 1.3, "top_k": 5, "temperature": 0.7, "do_sample": True}

BPE_VOCAB_SIZE = 400  # 256 byte symbols + ~144 merges: big enough to merge common words, tiny to train
MAX_POSITIONS = 512

# Per message: <|im_start|>ROLE\nCONTENT<|im_end|>\n ; generation prompt opens an assistant turn.
_CHATML_BODY = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
# Qwen2-style: a conversation without its own system turn gets the default one, silently.
_QWEN2_PREFIX = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif -%}"
)
CHAT_TEMPLATES = {"llama": _CHATML_BODY, "qwen2": _QWEN2_PREFIX + _CHATML_BODY}

# Teacher bigger than student in both depth and width, as in real distillation; all tiny for CPU speed.
_SIZES = {
    "teacher": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128},
    "student": {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64},
}

# Fixed training text for the BPE: mixed case, punctuation, digits and newlines, so the merges are
# realistic. Byte-level BPE round-trips any text regardless; this only decides which merges exist.
_CORPUS = [
    "Hello! How are you today?",
    "I am fine, thank you. And you?",
    "The quick brown fox jumps over the lazy dog.",
    "Please summarise the following paragraph in one sentence.",
    "What is 12 plus 30? The answer is 42.",
    "Count the words: red, green, blue.",
    "There are 3 apples and 7 oranges on the table.",
    "Write a short poem about the sea.",
    "The sea is calm; the sky is grey, and the gulls fly away.",
    "Translate 'good morning' into French: bonjour.",
    "List three colours of the rainbow.",
    "Red, orange, and yellow are colours of the rainbow.",
    "Why is the sky blue? Because of Rayleigh scattering.",
    "The meeting starts at 9:30 on 2024-05-17.",
    "Name a planet in our solar system. Mars is one.",
    "She said, \"I will be there at 5 o'clock.\"",
    "Is 17 a prime number? Yes, it is.",
    "Give me a word that rhymes with cat: hat.",
    "The train left the station at 10:15 (on time).",
    "How many legs does a spider have? Eight.",
    "Water boils at 100 degrees Celsius at sea level.",
    "You are a helpful assistant.",
    "Explain the idea in simple words, please.",
    "Sort these numbers: 5, 2, 9, 1 -> 1, 2, 5, 9.",
    "The cost is $3.50 per item, or 20% off for ten.",
    "Answer with yes or no.",
    "Thank you very much for your help!",
    "Here is a list:\n- milk\n- eggs\n- bread",
    "What is the capital of Italy? Rome.",
    "A dog, a cat and a bird sat in the garden.",
    "Describe your favourite book in two sentences.",
    "It was a bright cold day in April, and the clocks were striking 13.",
    "Finally, check your work & submit it.",
    "user assistant system",
]


def _pre_tokenization(arch: str):
    """(normalizer, pre_tokenizer) for ``arch``: what ``AutoTokenizer`` will actually run after loading.

    transformers 5 loads any ``model_type == "qwen2"`` directory as ``Qwen2Tokenizer``, which rebuilds the
    pipeline from vocab + merges with its own hard-coded NFC + digit-splitting regex and ignores the
    pre-tokenizer saved in tokenizer.json. Training and wrapping with that same pipeline keeps the
    tokenizer returned here and the one loaded from disk identical. "llama" loads as the generic
    ``TokenizersBackend``, which honours tokenizer.json, so plain GPT-2-style byte-level is used.
    """
    from tokenizers import Regex, normalizers, pre_tokenizers

    if arch == "qwen2":
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        return normalizers.NFC(), pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    # add_prefix_space=False: "Hi" at the start of a string stays "Hi", and nothing is added on decode.
    return None, pre_tokenizers.ByteLevel(add_prefix_space=False)


def build_tokenizer(arch: str = "llama"):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained in-process on ``_CORPUS`` (deterministic).

    Special tokens get the highest ids (after the BPE vocabulary), as in Qwen: <|endoftext|>, then
    <|im_start|>, then <|im_end|>.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if arch not in CHAT_TEMPLATES:
        raise ValueError(f"arch must be one of {sorted(CHAT_TEMPLATES)}, got {arch!r}")
    core = Tokenizer(models.BPE())
    normalizer, pre_tokenizer = _pre_tokenization(arch)
    if normalizer is not None:
        core.normalizer = normalizer
    core.pre_tokenizer = pre_tokenizer
    core.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offset mappings covering the leading space, like GPT-2/Qwen tokenizers.
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        # All 256 byte symbols are seeded, so bytes never seen in the corpus (é, emoji) still encode.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS, trainer=trainer)
    # Added after training so they take the highest ids, as in Qwen (specials sit after the BPE vocab).
    core.add_special_tokens(SPECIAL_TOKENS)

    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,  # Qwen convention: pad == eos == <|endoftext|>, and neither ends a chat turn
        # Qwen2Tokenizer (what a qwen2 directory loads as) defaults unk to <|endoftext|>; match it so the
        # tokenizer returned here and the loaded one agree. Byte-level BPE never emits unk anyway.
        unk_token=ENDOFTEXT if arch == "qwen2" else None,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=MAX_POSITIONS,
        # Otherwise decode may rewrite " ." as "." and break the exact round trip.
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def _model_config(arch: str, size: dict, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import LlamaConfig, Qwen2Config

    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return config_cls(
        vocab_size=vocab_size,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as both real families use
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        bos_token_id=None,  # the tokenizer adds no BOS; a stale default id would point at a BPE token
        eos_token_id=eos_id,  # Qwen2.5-Instruct's config.json names the end-of-turn token here
        pad_token_id=pad_id,
        **size,
    )


def build_chat_pair(root: Path, arch: str = "llama", padded_rows: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Write ``root/teacher`` and ``root/student`` (tokenizer + model + generation config); return both paths.

    Same arguments -> byte-identical weights and tokenizer files. Both directories hold the same tokenizer.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM, Qwen2ForCausalLM

    root = Path(root)
    tokenizer = build_tokenizer(arch)
    tokenizer.chat_template = CHAT_TEMPLATES[arch]
    eot_id = tokenizer.convert_tokens_to_ids(IM_END)
    eos_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    vocab_size = len(tokenizer) + padded_rows
    model_cls = {"llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}[arch]

    paths = []
    for offset, role in enumerate(("teacher", "student")):
        out = root / role
        config = _model_config(arch, _SIZES[role], vocab_size, eot_id, eos_id)
        # Seed per role so teacher and student differ but each is reproducible from `seed` alone; fork_rng
        # so building a pair does not reset the calling test's own global RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 2 + offset)
            model = model_cls(config)
        model.generation_config = GenerationConfig(
            eos_token_id=[eot_id, eos_id],  # stop at end of turn, or at end of text
            pad_token_id=eos_id,
            bos_token_id=None,
            **LEAKY_SAMPLING,
        )
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        paths.append(out)
    return paths[0], paths[1]


# --------------------------------------------------------------------------- conversations

_SYSTEMS = [
    "You are a concise assistant.",
    "Answer in one short sentence.",
    "You are a friendly tutor.",
]
# (question, answer) pairs; short so that tiny models with 512 positions handle whole conversations.
_QA = [
    ("What is 2 plus 3?", "2 plus 3 is 5."),
    ("Name a colour of the sky.", "The sky is often blue."),
    ("How many legs does a cat have?", "A cat has four legs."),
    ("Say hello in French.", "Bonjour!"),
    ("Is 7 a prime number?", "Yes, 7 is prime."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Give a word that rhymes with hat.", "Cat rhymes with hat."),
    ("What do bees make?", "Bees make honey."),
    ("Count to three.", "One, two, three."),
    ("What is 10 minus 4?", "10 minus 4 is 6."),
    ("Which animal barks?", "A dog barks."),
    ("What colour is grass?", "Grass is green."),
]
_FOLLOW_UPS = [
    ("And why is that?", "Because that is how it works."),
    ("Can you say it shorter?", "Yes: it is so."),
    ("Thanks! One more, please.", "Of course, ask away."),
    ("Are you sure?", "Yes, I am sure."),
]


def _turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def messages_records(n: int = 24, seed: int = 0) -> list[dict]:
    """``n`` records ``{"messages": [...]}`` cycling single-turn, with-system and multi-turn shapes.

    Deterministic in (n, seed); the shape of record i is fixed by i % 3, so every n >= 3 has all three.
    """
    rng = random.Random(seed)
    records = []
    for i in range(n):
        question, answer = rng.choice(_QA)
        kind = i % 3
        if kind == 0:  # plain single turn
            messages = [_turn("user", question), _turn("assistant", answer)]
        elif kind == 1:  # system prompt + single turn
            messages = [_turn("system", rng.choice(_SYSTEMS)), _turn("user", question), _turn("assistant", answer)]
        else:  # two user/assistant exchanges
            follow_q, follow_a = rng.choice(_FOLLOW_UPS)
            messages = [_turn("user", question), _turn("assistant", answer),
                        _turn("user", follow_q), _turn("assistant", follow_a)]
        records.append({"messages": messages})
    return records


def write_messages_dataset(path: Path, n: int = 24, seed: int = 0) -> Path:
    """Save ``messages_records(n, seed)`` as a ``datasets.Dataset`` with ``save_to_disk``; return ``path``."""
    from datasets import Dataset

    path = Path(path)
    Dataset.from_list(messages_records(n, seed)).save_to_disk(str(path))
    return path
