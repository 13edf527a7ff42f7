"""A live teacher: a frozen model in memory, answering every batch with a forward pass.

Placement follows the student: under ZeRO-3 the teacher is sharded by an inference-only
DeepSpeed engine (so a teacher larger than one device fits), otherwise it is a plain
module on the run's device. Its weights never receive gradients.
"""
from __future__ import annotations

import torch

from ..models.head import OutputHead, check_head, output_head, response_rows
from ..models.loading import forward_logits, load_model, response_logits, vocab_size
from ..runtime import Runtime
from ..train.engine import build_frozen_engine, zero_stage


class LiveTeacher:
    def __init__(self, model, device: torch.device, vocab: int, sharded: bool = False):
        self.model, self.device, self.vocab = model, device, vocab
        self.sharded = sharded  # partitioned across ranks (ZeRO-3 with several processes)

    @classmethod
    def load(cls, cfg, tokenizer, runtime: Runtime) -> LiveTeacher:
        """teacher_dir (else model.teacher); a random-init preset is seeded apart from the student."""
        return cls.placed(load_model(cfg, "teacher", tokenizer, seed=cfg.seed + 1), cfg, runtime, vocab_size(tokenizer))

    @classmethod
    def placed(cls, model, cfg, runtime: Runtime, vocab: int) -> LiveTeacher:
        """A loaded model, frozen and placed like the student (sharded under ZeRO-3)."""
        model.eval()
        model.requires_grad_(False)
        zero3 = zero_stage(cfg) == 3
        placed = build_frozen_engine(model, cfg) if zero3 else model.to(runtime.device)
        return cls(placed, runtime.device, vocab, sharded=zero3 and runtime.world_size > 1)

    @classmethod
    def on_device(cls, model, tokenizer, runtime: Runtime) -> LiveTeacher:
        """An already loaded model, moved to the run's device (evaluate's KL reference)."""
        return cls(model.to(runtime.device).eval(), runtime.device, vocab_size(tokenizer))

    def generator(self, gen_cfg, tokenizer, *, max_length: int):
        """A generator that samples from the teacher (DistiLLM-2's regenerate=both)."""
        from ..generation import make_generator

        module = self.model.module if hasattr(self.model, "module") else self.model  # a frozen ZeRO-3 engine
        return make_generator(module, gen_cfg, tokenizer, max_length=max_length, sharded=self.sharded)

    @torch.no_grad()
    def response_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return response_logits(self.model, batch, self.device, self.vocab)

    @torch.no_grad()
    def response_hidden(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return response_rows(self.model, batch, self.device, lambda hidden, labels: (hidden, labels))

    def output_head(self) -> OutputHead:
        check_head(self.model, self.vocab, "teacher")
        return output_head(self.model, self.vocab)

    @torch.no_grad()
    def logits(self, batch: dict) -> torch.Tensor:
        return forward_logits(self.model, batch, self.device, self.vocab)
