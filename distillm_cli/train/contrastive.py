"""DistiLLM-2's contrastive recipe around the loss: response pairs, the beta and alpha curricula.

The loss itself is `losses.distillm2`; this module holds what changes over training
(METHOD.md §4, Ko et al. 2025):

- beta, the weight of the student-response (SRKL) term, rises linearly from beta0 to 1;
- alpha, the skew of each sample, is set so that (1 - alpha) * gap stays near the value
  it had in the first epoch, where gap = |mean teacher token prob - mean student token
  prob| on that sample's response; clipped to [alpha_min, alpha0]; alpha0 in epoch one.
  A large gap keeps alpha near alpha0 (strong skew, bounded gradients); as the student
  closes the gap alpha shrinks toward plain KL.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.batches import collate
from ..data.formats import IGNORE, Example, record_format
from ..errors import UserError
from ..losses import label_logprobs


def beta_at(step: int, total_steps: int, beta0: float, schedule: str, beta_max: float = 1.0,
            ramp_fraction: float = 1.0) -> float:
    """beta at `step`. 'constant': beta0 throughout. 'linear': from beta0 at step 0 up to
    beta_max at `ramp_fraction` of training (step ramp_fraction * (T - 1)), then beta_max.

    The paper: beta0 0.5 to 1.0 over all of training. The authors' released trainer with its
    gradual_beta switch on: 0.5 to 0.75 over the first half (beta_max 0.75, ramp_fraction 0.5).
    """
    if schedule == "constant" or total_steps <= 1:
        return beta0
    progress = min(1.0, step / max(ramp_fraction * (total_steps - 1), 1e-12))
    return beta0 + (beta_max - beta0) * progress


@torch.no_grad()
def mean_label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean probability the model gives the response tokens. logits [B, T, V] -> [B]."""
    keep = labels != IGNORE  # [B, T]
    safe = labels.clamp_min(0)
    log_z = torch.logsumexp(logits.float(), dim=-1)  # [B, T]
    picked = logits.float().gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, T]
    probs = torch.where(keep, (picked - log_z).exp(), torch.zeros_like(log_z))
    return probs.sum(1) / keep.sum(1).clamp_min(1)


@torch.no_grad()
def response_label_probability(logits: torch.Tensor, labels: torch.Tensor, sample: torch.Tensor, samples: int,
                               chunk_size: int = 1024) -> torch.Tensor:
    """mean_label_probability from response rows: logits [1, N, V] and labels [1, N] (response_logits),
    sample [N] the sequence of each row -> [samples].

    No [B, T, V] float copy: the label log-probabilities come from a chunked pass over the
    rows (losses.label_logprobs), then a per-sample mean (index_add over the rows).
    """
    return per_sample_probability(label_logprobs(logits, labels, chunk_size=chunk_size), sample, samples)


@torch.no_grad()
def per_sample_probability(logprobs: torch.Tensor, sample: torch.Tensor, samples: int) -> torch.Tensor:
    """Mean of exp(logprobs) over the rows of each sample: logprobs [N], sample [N] -> [samples]."""
    probs = logprobs.exp()  # [N]
    sample = sample.to(probs.device)
    sums = torch.zeros(samples, dtype=probs.dtype, device=probs.device).index_add_(0, sample, probs)
    return sums / torch.bincount(sample, minlength=samples).clamp_min(1)


class AlphaCurriculum:
    """Per-sample alpha from the teacher/student probability gap (fixed at alpha0 in epoch one)."""

    def __init__(self, alpha0: float, alpha_min: float, enabled: bool, first_epoch_steps: int):
        self.alpha0, self.alpha_min, self.enabled = alpha0, alpha_min, enabled
        self.first_epoch_steps = first_epoch_steps
        self.target_sum, self.target_count = 0.0, 0  # running mean of (1 - alpha0) * gap in epoch one

    @property
    def target(self) -> float | None:
        return self.target_sum / self.target_count if self.target_count else None

    def alphas(self, step: int, gap: torch.Tensor) -> torch.Tensor:
        """alpha for each sample of a batch given its gap [B]."""
        gap = gap.abs().double()
        if not self.enabled or step < self.first_epoch_steps or self.target is None:
            if self.enabled and step < self.first_epoch_steps:
                self.target_sum += float(((1 - self.alpha0) * gap).sum())
                self.target_count += gap.numel()
            return torch.full_like(gap, self.alpha0)
        alpha = 1.0 - self.target / gap.clamp_min(1e-8)
        return alpha.clamp(self.alpha_min, self.alpha0)

    def state_dict(self) -> dict:
        return {"target_sum": self.target_sum, "target_count": self.target_count}

    def load_state_dict(self, state: dict) -> None:
        self.target_sum, self.target_count = state["target_sum"], state["target_count"]


def pair_batch(pairs: list[tuple[Example, Example]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch [teacher responses; student responses] so each model runs one forward."""
    batch = collate([t for t, _ in pairs] + [s for _, s in pairs], pad_id)
    batch["pairs"] = torch.tensor(len(pairs))
    return batch


def read_pairs(path: str, tokenizer, cfg) -> list[tuple[Example, Example]]:
    """(teacher-response, student-response) examples from a pairs generations.jsonl."""
    path = Path(path)
    path = path / "generations.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"loss=distillm2 needs response pairs: generations='{path}' does not exist; run "
                        "`distillm generate-student generate.pairs=true` first (or experiment=distillm2)")
    fmt = record_format(cfg, tokenizer)
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        record = json.loads(line)
        if "teacher_response" not in record or "student_response" not in record:
            raise UserError(f"{path}:{number}: not a response pair; make it with generate.pairs=true")
        # Both responses of a prompt; one the length limit cut off (truncated) gets no end token.
        teacher, student = (fmt.encode({"prompt": record["prompt"], "output": record[f"{role}_response"],
                                        "truncated": record.get(f"{role}_truncated", False)})
                            for role in ("teacher", "student"))
        pairs.append((teacher, student))
    return pairs


class RegeneratedPairs:
    """The training pairs once loss.regenerate has replaced their responses.

    Batched on-policy training swaps every pair's student response (regenerate=student),
    or both responses (both), for fresh samples each epoch; a resumed run must train on
    the samples the interrupted one had, not on the curated file's, so they are part of
    the resume point.
    """

    def __init__(self, stream):
        self.stream, self.regenerated = stream, False

    def replace(self, teacher_examples: list[Example] | None, student_examples: list[Example]) -> None:
        """New responses; teacher_examples None keeps the teacher halves."""
        teachers = teacher_examples or [t for t, _ in self.stream.items]
        self.stream.items = list(zip(teachers, student_examples))
        self.regenerated = True

    def state_dict(self) -> dict:
        if not self.regenerated:
            return {}
        return {"teacher": [vars(t) for t, _ in self.stream.items], "student": [vars(s) for _, s in self.stream.items]}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.replace([Example(**t) for t in state["teacher"]], [Example(**s) for s in state["student"]])
