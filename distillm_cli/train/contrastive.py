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


def beta_at(step: int, total_steps: int, beta0: float, schedule: str) -> float:
    """beta at `step`: 'linear' goes from beta0 (step 0) to 1.0 (last step); 'constant' stays at beta0."""
    if schedule == "constant" or total_steps <= 1:
        return beta0
    return beta0 + (1.0 - beta0) * step / (total_steps - 1)


@torch.no_grad()
def mean_label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, the mean probability the model gives the response tokens. logits [B, T, V] -> [B]."""
    keep = labels != IGNORE  # [B, T]
    safe = labels.clamp_min(0)
    log_z = torch.logsumexp(logits.float(), dim=-1)  # [B, T]
    picked = logits.float().gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, T]
    probs = torch.where(keep, (picked - log_z).exp(), torch.zeros_like(log_z))
    return probs.sum(1) / keep.sum(1).clamp_min(1)


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
    """The student halves of the training pairs once loss.regenerate has replaced them.

    Batched on-policy training swaps every pair's student response for a fresh sample
    each epoch; a resumed run must train on the samples the interrupted one had, not on
    the curated file's, so they are part of the resume point.
    """

    def __init__(self, stream):
        self.stream, self.regenerated = stream, False

    def replace(self, student_examples: list[Example]) -> None:
        self.stream.items = [(teacher, student) for (teacher, _), student in zip(self.stream.items, student_examples)]
        self.regenerated = True

    def state_dict(self) -> dict:
        return {"student": [vars(s) for _, s in self.stream.items]} if self.regenerated else {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.replace([Example(**s) for s in state["student"]])
