"""The embedded toy models: a character tokenizer and tiny random-init GPT-2s, offline.

- ``build_char_tokenizer()`` is a real Hugging Face fast tokenizer (built with
  the ``tokenizers`` library) over printable ASCII and newline: one token per
  character, exact round trip, ``save_pretrained`` / ``AutoTokenizer`` work.
- ``TINY_PRESETS`` / ``build_tiny_model`` give randomly initialised GPT-2
  teacher and student sized for a 2-core CPU (model=tiny, the demo).
"""
from __future__ import annotations

# ---------------------------------------------------------------------------
# Character tokenizer
# ---------------------------------------------------------------------------

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<|pad|>", "<|endoftext|>", "<|unk|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
CHAR_VOCAB = ("\n",) + tuple(chr(c) for c in range(32, 127))


def build_char_tokenizer(model_max_length: int = 256, padding_side: str = "right"):
    """A character-level ``PreTrainedTokenizerFast``: one token per printable ASCII char or "\\n".

    Ids: 0 ``<|pad|>``, 1 ``<|endoftext|>`` (eos and bos), 2 ``<|unk|>``, then
    newline and the 95 printable ASCII characters. Other characters map to
    ``<|unk|>``. No BOS/EOS is added automatically. Decoding fuses the
    characters back with nothing in between, so ``decode(encode(s)) == s`` for
    any ASCII-printable ``s``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHAR_VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # Every character is its own pre-token ([\s\S] also matches "\n").
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


# ---------------------------------------------------------------------------
# Tiny GPT-2 presets
# ---------------------------------------------------------------------------

_NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0}

# GPT2Config keyword arguments; vocabulary and special ids come from the tokenizer.
TINY_PRESETS: dict[str, dict] = {
    "tiny-teacher": {"n_layer": 3, "n_embd": 192, "n_head": 6, "n_positions": 256, **_NO_DROPOUT},
    "tiny-student": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 256, **_NO_DROPOUT},
}


def build_tiny_model(preset: str, tokenizer):
    """A randomly initialised ``GPT2LMHeadModel`` of a ``TINY_PRESETS`` entry for ``tokenizer``.

    Seed torch beforehand for a reproducible init.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if preset not in TINY_PRESETS:
        raise ValueError(f"unknown tiny preset {preset!r}; known: {sorted(TINY_PRESETS)}")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_PRESETS[preset],
    )
    return GPT2LMHeadModel(config)
