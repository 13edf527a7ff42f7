"""The token-level distillation objective as the distill recipes use it: its settings from
the loss config, its value on one batch (teacher seam + student forward + fused loss), and
its token mean over the fixed validation batches."""
from __future__ import annotations

import torch

from ..losses import kd_objective
from ..models.loading import response_logits
from ..runtime import Runtime
from .engine import mean_over_batches


def kd_params(loss_cfg, **overrides) -> dict:
    """`kd_objective`'s keyword arguments from a LossConfig; `overrides` replace single ones."""
    params = {"loss": loss_cfg.name, "kd_ratio": loss_cfg.kd_ratio, "alpha": loss_cfg.alpha, "beta": loss_cfg.beta,
              "temperature": loss_cfg.temperature, "detach_mixture": loss_cfg.detach_mixture,
              "chunk_size": loss_cfg.chunk_size}
    return {**params, **overrides}


def batch_kd_loss(engine, teacher, batch: dict, runtime: Runtime, vocab: int, params: dict,
                  normalizer: float) -> tuple[torch.Tensor, dict]:
    """The objective on one batch: its token sum / normalizer, and the stats of kd_objective."""
    teacher_logits, labels = teacher.response_logits(batch)  # [1, N, V]
    student_logits, _ = response_logits(engine, batch, runtime.device, vocab)  # [1, N, V]
    return kd_objective(student_logits, teacher_logits, labels, normalizer=normalizer, **params)


def validation_kd_loss(engine, teacher, batches: list[dict], runtime: Runtime, vocab: int, params: dict) -> float:
    """Token mean of the objective over validation batches (all ranks), the student in eval mode."""
    def loss_sum(batch: dict) -> tuple[float, float]:
        loss, stats = batch_kd_loss(engine, teacher, batch, runtime, vocab, params, normalizer=1.0)
        return float(loss), stats["tokens"]

    engine.eval()
    return mean_over_batches(loss_sum, batches, runtime)
