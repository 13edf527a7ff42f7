"""Distillation losses: pure functions of student and teacher logits, formula in each docstring.

    LOSSES[name](student_logits, teacher_logits, mask, **params) -> scalar
        name in fkl, rkl, skew_fkl, skew_rkl, jsd, tvd; logits [B, T, V], mask [B, T] bool
    kd_objective(...)   kd_ratio * divergence + (1 - kd_ratio) * CE over response tokens
    distillm2(...)      DistiLLM-2's contrastive loss over teacher / student response pairs
    distillm2_rows(...) the same loss on the response rows of a pair batch ([1, N, V], a sample index per row)
    label_logprobs(...) log-probability of each row's label, chunked (DistiLLM-2's alpha curriculum)

    kd_objective_topk(...) the same objective against a sparse teacher (top-k + tail bucket)
    topk_of_logits(...)    a teacher's top-k ids, log-probabilities and tail log-mass

    dense.py       every loss over full-vocabulary logits, fused and chunked (no [N, V] temporaries
                   beyond one chunk; the gradient formed in the forward pass)
    fused_head.py  the same losses from both models' last hidden states and output heads: the
                   logits exist one chunk at a time (kd_objective_head, distillm2_head,
                   head_label_logprobs); loss.fused_head
    topk.py        every divergence between the teacher's (k + 1)-way distribution (a top-k cache)
                   and the student's coarse-grained onto the same buckets, fused and chunked

A new family of losses (divergences on a sparse top-k teacher) is a new module here, exported below.
"""
from .dense import (
           LOSS_NAMES,
           LOSSES,
           check_loss_params,
           distillm2,
           distillm2_rows,
           fkl,
           jsd,
           kd_objective,
           label_logprobs,
           rkl,
           skew_fkl,
           skew_rkl,
           tvd,
)
from .fused_head import distillm2_head, head_label_logprobs, kd_objective_head
from .topk import kd_objective_topk, topk_of_logits

__all__ = ["LOSSES", "LOSS_NAMES", "check_loss_params", "distillm2", "distillm2_head", "distillm2_rows", "fkl",
           "head_label_logprobs", "jsd", "kd_objective", "kd_objective_head", "kd_objective_topk", "label_logprobs",
           "rkl", "skew_fkl", "skew_rkl", "topk_of_logits", "tvd"]
