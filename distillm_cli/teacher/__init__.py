"""The teacher seam: what the teacher says about a batch.

Stages never touch the teacher model. They ask a `Teacher` for its distribution over
the vocabulary at the positions a loss reads, and get logits cut to the shared
vocabulary (padded embedding rows dropped), computed without gradients:

    teacher = load_teacher(cfg, tokenizer, runtime)
    teacher_logits, labels = teacher.response_logits(batch)   # [1, N, V], [1, N]
    teacher_logits = teacher.logits(batch)                     # [B, T, V]
    hidden, labels = teacher.response_hidden(batch)            # [N, H], [N]  (loss.fused_head)
    head = teacher.output_head()                               # what turns hidden into logits

Where the numbers come from is the implementation's business:

    live.py    a model in memory: on the device, or sharded like the student under ZeRO-3

A new source (a top-k cache on disk, a served teacher) is a new module here that
implements the same methods, chosen in `load_teacher`; no stage changes.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..models.head import OutputHead
from .live import LiveTeacher

__all__ = ["LiveTeacher", "Teacher", "load_teacher"]


class Teacher(Protocol):
    def response_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [1, N, V] at the N positions with a label (labels != IGNORE), and those labels [1, N]."""

    def logits(self, batch: dict) -> torch.Tensor:
        """Logits [B, T, V] at every position of the batch."""

    def response_hidden(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden states [N, H] at the N positions with a label, and those labels [N]:
        the fused-head losses (loss.fused_head) form the logits chunk by chunk from these."""

    def output_head(self) -> OutputHead:
        """The head that turns `response_hidden` into the logits of the shared vocabulary
        (gathered by the loss under ZeRO-3: models.head.gathered)."""

    # Optional: a teacher that can sample (a model in memory) also has
    # generator(gen_cfg, tokenizer, max_length=...) -> Generator, for DistiLLM-2's regenerate=both.


def load_teacher(cfg, tokenizer, runtime) -> Teacher:
    """The teacher of a distill run: teacher_dir (else model.teacher), placed for this run."""
    return LiveTeacher.load(cfg, tokenizer, runtime)
