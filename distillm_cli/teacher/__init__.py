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
    cache.py   a top-k cache on disk (teacher_cache=DIR, written by `distillm cache-teacher`):
               no model at all; it answers response_topk(batch) -> (ids, logprobs, tail)
               instead of logits, and the objective takes the sparse loss (losses/topk.py)

from .cache import CachedTeacher
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..models.head import OutputHead
from .cache import CachedTeacher
from .live import LiveTeacher

__all__ = ["CachedTeacher", "LiveTeacher", "Teacher", "load_teacher"]


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
    """The teacher of a distill run: teacher_cache when given (no model loaded), else
    teacher_dir (else model.teacher), placed for this run."""
    if cfg.teacher_cache:
        return CachedTeacher.load(cfg, tokenizer, runtime)
    return LiveTeacher.load(cfg, tokenizer, runtime)
