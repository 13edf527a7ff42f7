"""Generation split across the ranks of a run, with the same outputs for any number of them.

generate-student, evaluate and DistiLLM-2's regeneration answer a fixed list of prompts.
The list is cut into batches of the generation batch size, always the same way; batch k
is sampled with a seed made from (seed, k), and batches are dealt to ranks in rounds
(rank r takes batch `round * world_size + r`). After each round every rank has every
response of the round in order. So each batch is sampled the same way, with the same
padding and the same seed, whether 1 or 8 processes run: the files written from the
results are the same.

When the model is sharded (ZeRO-3 with several ranks) every rank must take part in every
forward pass: a rank with no batch left in the last round samples a copy of the round's
first batch and throws the result away.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..runtime import Runtime, gather_from_all


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of batch `batch_index` of a prompt list: a function of the two numbers only."""
    return seed * 1_000_003 + batch_index


def generate_across_ranks(answer: Callable[[list[list[int]], int], Any], batches: list[list[list[int]]], *,
                          seed: int, runtime: Runtime, batch_ids: list[int] | None = None,
                          sharded: bool = False) -> Iterator[tuple[list[int], list[Any]]]:
    """Yield, round by round, (the round's batch positions, `answer` of each) on every rank.

    answer(prompts, seed): one batch's result, e.g. `generator.generate(prompts, seed=seed)`
    (any picklable value: a pair of models may answer together). batch_ids: the index of
    each batch in its whole prompt list (its seed), default 0, 1, 2, ... A run that
    continues an interrupted one passes the indices of the batches still to do, so they
    get the seeds they would have had. sharded: the model is partitioned across ranks.
    """
    batch_ids = list(range(len(batches))) if batch_ids is None else list(batch_ids)
    world, rank = runtime.world_size, runtime.rank
    for first in range(0, len(batches), world):
        positions = list(range(first, min(first + world, len(batches))))
        mine = first + rank
        result = None
        if mine < len(batches):
            result = answer(batches[mine], batch_seed(seed, batch_ids[mine]))
        elif sharded:  # every rank must join every forward of a partitioned model
            answer(batches[first], batch_seed(seed, batch_ids[first]))
        gathered = gather_from_all(result, runtime)
        yield positions, [gathered[p - first] for p in positions]


def batched(items: list, size: int) -> list[list]:
    """Consecutive pieces of `size` (the last may be shorter)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def generate_all(generator, prompts: list[list[int]], *, seed: int, batch_size: int, runtime: Runtime,
                 sharded: bool = False) -> list[list[int]]:
    """One response per prompt, in order, on every rank: the batches shared out and gathered."""
    responses = []
    for _, results in generate_across_ranks(lambda batch, batch_seed: generator.generate(batch, seed=batch_seed),
                                            batched(prompts, batch_size), seed=seed, runtime=runtime,
                                            sharded=sharded):
        responses += [response for batch in results for response in batch]
    return responses
