"""Batches: right-padded training batches, left-padded prompts for generation, fixed
validation batches, and the resumable shuffled stream every training stage draws from."""
from __future__ import annotations

import torch

from ..errors import UserError
from .formats import IGNORE, Example


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into a batch: input_ids, attention_mask, labels [B, T]."""
    width = max(len(e.input_ids) for e in examples)
    batch = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        batch[row, :n] = example.input_ids
        labels[row, :n] = example.labels
        attention[row, :n] = 1
    return {"input_ids": batch, "attention_mask": attention, "labels": labels}


def fixed_batches(examples: list[Example], size: int, pad_id: int, max_batches: int = 0) -> list[dict]:
    """Consecutive batches of `size` (validation: the same batches every time); 0 = all of them."""
    stop = len(examples) if not max_batches else min(len(examples), size * max_batches)
    return [collate(examples[i:i + size], pad_id) for i in range(0, stop, size)]


def left_pad(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation (new tokens then line up on the right)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention[row, width - len(prompt):] = 1
    return {"input_ids": ids, "attention_mask": attention}


class BatchStream:
    """Endless shuffled micro-batches over a list of items; its position is resumable.

    Each epoch is a permutation drawn from (seed, epoch), so the stream depends only on
    the seed and how many batches were taken, never on global RNG state.
    """

    def __init__(self, items: list, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if not items:
            raise UserError("no training examples left after filtering; check the data and length limits")
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.taken = 0  # global batches taken (each rank takes its own slice of each)
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.items), generator=generator).tolist()}
        return self._orders[epoch]

    def next(self) -> list:
        global_batch = self.batch_size * self.world_size
        start = self.taken * global_batch
        picks = []
        for k in range(start + self.rank * self.batch_size, start + (self.rank + 1) * self.batch_size):
            epoch, index = divmod(k, len(self.items))
            picks.append(self.items[self._order(epoch)[index]])
        self.taken += 1
        return picks

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken = state["taken"]
