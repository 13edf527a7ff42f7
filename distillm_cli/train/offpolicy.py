"""Where each training batch comes from: DistiLLM's adaptive off-policy schedule.

DistiLLM (Ko et al., ICML 2024, section 4; METHOD.md §2) trains on
student-generated outputs (SGOs) without generating at every step. State: a
probability φ (starting at φ0), a FIFO replay buffer of single samples and a
reference validation loss. At step t of T, with λ = φ·(1 − t/T) and r ~ U(0,1):

- r < λ, or r < φ while the buffer is not yet full → generate *fresh* student
  responses for the batch's prompts, push them into the buffer, train on them;
- else r < φ → train on a batch sampled from the *buffer*;
- else → train on the *dataset* batch.

φ grows by 0.1 (up to 1) whenever the validation loss has risen by ε or more
over the reference, which then moves to the current loss.

Also expressible: ``"on_policy"`` (GKD: fresh samples with probability
``lmbda`` at each step, otherwise the dataset) and ``"none"`` (always the
dataset).

Every random choice that changes control flow is identical on every rank
without communication: r is a function of (seed, step) only (see
:func:`shared_uniform`); the authors' code drew r per rank, so ranks took
different branches and waited on each other.

Pure Python / torch: no distributed calls and no file I/O. State dicts hold
only plain Python values and tensors, so ``torch.save`` / ``torch.load``
(``weights_only=True``) round-trip them.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch

__all__ = [
    "MODES",
    "SCHEDULES",
    "SOURCES",
    "AdaptivePhi",
    "OffPolicySchedule",
    "ReplayBuffer",
    "choose_source",
    "mixing_probability",
    "shared_uniform",
]

SOURCES = ("dataset", "fresh", "buffer")
MODES = ("none", "on_policy", "adaptive")
SCHEDULES = ("decreasing", "constant", "increasing")

_MASK64 = (1 << 64) - 1
# Salts keep the streams of shared_uniform and of buffer sampling apart even
# though both derive from the same (seed, step).
_SALT_DECIDE = 0x5EED_0FF_901
_SALT_SAMPLE = 0xB0FF_E125_A3


def _mix64(x: int) -> int:
    """SplitMix64 finaliser: a fixed, well-scrambling bijection on 64-bit ints."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _derive_seed(*parts: int) -> int:
    """Combine integers into one 63-bit generator seed (order-sensitive)."""
    h = 0
    for part in parts:
        h = _mix64(h ^ (int(part) & _MASK64))
    return h & ((1 << 63) - 1)


def mixing_probability(phi: float, step: int, total_steps: int, schedule: str) -> float:
    """λ, the probability of generating fresh student outputs at ``step``.

    ``"decreasing"``: φ·(1 − t/T) (DistiLLM's default); ``"constant"``: φ/2;
    ``"increasing"``: φ·t/T. t/T is clipped to [0, 1], so steps past
    ``total_steps`` behave like the last one.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    frac = min(step / total_steps, 1.0)
    if schedule == "decreasing":
        return phi * (1.0 - frac)
    if schedule == "constant":
        return phi / 2.0
    if schedule == "increasing":
        return phi * frac
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")


def shared_uniform(seed: int, step: int) -> float:
    """A U[0, 1) draw that depends only on ``(seed, step)``.

    Every rank computes the same value without communicating, and resuming at
    ``step`` reproduces it. Uses a private ``torch.Generator`` (float64), so
    the global RNG state is neither read nor advanced.
    """
    gen = torch.Generator().manual_seed(_derive_seed(_SALT_DECIDE, seed, step))
    return torch.rand((), generator=gen, dtype=torch.float64).item()


def choose_source(
    mode: str,
    r: float,
    *,
    phi: float,
    lam: float,
    lmbda: float,
    buffer_full: bool,
) -> str:
    """Map a uniform draw ``r`` to ``"dataset"``, ``"fresh"`` or ``"buffer"``.

    - ``"none"``: always the dataset.
    - ``"on_policy"`` (GKD): fresh if r < lmbda, else dataset.
    - ``"adaptive"`` (DistiLLM): fresh if r < λ or (r < φ and the buffer is
      not full); buffer if r < φ; else dataset.
    """
    if mode == "none":
        return "dataset"
    if mode == "on_policy":
        return "fresh" if r < lmbda else "dataset"
    if mode == "adaptive":
        if r < lam or (r < phi and not buffer_full):
            return "fresh"
        if r < phi:
            return "buffer"
        return "dataset"
    raise ValueError(f"unknown off-policy mode {mode!r}; expected one of {MODES}")


class ReplayBuffer:
    """FIFO buffer of single samples (each a dict of 1-D tensors / Python values).

    Samples are stored as given (no copy, no device move): the training loop
    decides where they live, and must not modify them in place afterwards.
    """

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(
                f"replay buffer capacity must be at least 1, got {capacity}"
            )
        self.capacity = int(capacity)
        self._items: deque[dict[str, Any]] = deque(maxlen=self.capacity)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity

    def push(self, samples: list[dict[str, Any]]) -> None:
        """Append ``samples`` in order; the oldest are evicted beyond capacity."""
        for sample in samples:
            if not isinstance(sample, dict):
                raise TypeError(
                    f"replay buffer samples must be dicts, got {type(sample).__name__}"
                )
            self._items.append(sample)

    def sample(self, n: int, generator: torch.Generator) -> list[dict[str, Any]]:
        """Draw ``n`` samples uniformly, deterministically given ``generator``.

        Without replacement when the buffer holds at least ``n`` samples (as
        the authors do); with replacement otherwise, so a buffer smaller than
        the batch still fills it. Returns shallow copies of the stored dicts.
        """
        if n < 0:
            raise ValueError(f"cannot sample a negative number of items ({n})")
        size = len(self._items)
        if size == 0:
            if n == 0:
                return []
            raise ValueError("cannot sample from an empty replay buffer")
        if size >= n:
            idx = torch.randperm(size, generator=generator)[:n]
        else:
            idx = torch.randint(size, (n,), generator=generator)
        return [dict(self._items[i]) for i in idx.tolist()]

    def state_dict(self) -> dict[str, Any]:
        """Capacity and the samples, oldest first."""
        return {"capacity": self.capacity, "samples": [dict(s) for s in self._items]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the samples in order.

        The capacity stays the one this buffer was built with; if the saved
        buffer holds more samples, only the newest ``capacity`` are kept.
        """
        self._items = deque((dict(s) for s in state["samples"]), maxlen=self.capacity)


class AdaptivePhi:
    """φ and the reference validation loss of DistiLLM's adaptive schedule.

    The first finite loss observed (the step-0 validation) becomes the
    reference. Afterwards, if ``val_loss − reference ≥ eps``:
    φ ← min(φ + phi_step, 1) and the reference becomes ``val_loss``;
    otherwise nothing changes (the reference does not follow a falling loss).
    Non-finite losses are ignored. φ is rounded to 12 decimals after each
    rise so that repeated steps of 0.1 land on 0.3, not 0.30000000000000004.
    """

    def __init__(self, phi0: float = 0.0, eps: float = 0.1, phi_step: float = 0.1):
        if not 0.0 <= phi0 <= 1.0:
            raise ValueError(f"phi0 must be in [0, 1], got {phi0}")
        if eps < 0 or phi_step < 0:
            raise ValueError(
                f"eps and phi_step must be non-negative, got {eps}, {phi_step}"
            )
        self.phi = float(phi0)
        self.eps = float(eps)
        self.phi_step = float(phi_step)
        self.reference: float | None = None

    def observe(self, val_loss: float) -> bool:
        """Feed a validation loss; return True if φ was raised."""
        val_loss = float(val_loss)
        if not math.isfinite(val_loss):
            return False
        if self.reference is None:
            self.reference = val_loss
            return False
        if val_loss - self.reference >= self.eps:
            self.phi = min(round(self.phi + self.phi_step, 12), 1.0)
            self.reference = val_loss
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"phi": self.phi, "reference": self.reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phi = float(state["phi"])
        ref = state["reference"]
        self.reference = None if ref is None else float(ref)


class OffPolicySchedule:
    """Per-step data-source decisions for the training loop.

    Usage, at each optimiser step::

        source = schedule.decide(step)        # "dataset" | "fresh" | "buffer"
        if source == "fresh":   generate for the batch's prompts, then
                                schedule.buffer.push(per_sample_dicts)
        elif source == "buffer": batch = schedule.sample_buffer(batch_size, step, rank)
        ...
        schedule.observe_validation(val_loss)  # at step 0 and every evaluation

    Why ranks cannot diverge: r comes from :func:`shared_uniform` (seed,
    step), φ changes only through the validation loss (which every rank
    sees reduced to the same value), and every rank pushes the same number of
    samples on each fresh step (its per-rank batch size), so buffer fullness —
    the only other input to the decision — is identical on every rank. The
    buffer *contents* differ per rank (each holds its own prompts' samples),
    which is fine: no control flow depends on them.

    With ``replay=False`` every "buffer" decision is answered with fresh samples
    instead (the decisions themselves are unchanged), which isolates what reusing
    samples saves in wall time and costs in quality.

    ``state_dict`` holds the buffer, φ and its reference, and ``source_counts``
    (how often each source was chosen so far, for progress display);
    together with the same constructor arguments, loading it reproduces the
    same future decisions.
    """

    def __init__(
        self,
        mode: str = "adaptive",
        seed: int = 0,
        total_steps: int = 1,
        phi0: float = 0.0,
        eps: float = 0.1,
        phi_step: float = 0.1,
        capacity: int = 1000,
        schedule: str = "decreasing",
        lmbda: float = 0.5,
        replay: bool = True,
    ):
        if mode not in MODES:
            raise ValueError(
                f"unknown off-policy mode {mode!r}; expected one of {MODES}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {schedule!r}; expected one of {SCHEDULES}"
            )
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"lmbda must be in [0, 1], got {lmbda}")
        self.mode = mode
        self.seed = int(seed)
        self.total_steps = int(total_steps)
        self.schedule = schedule
        self.lmbda = float(lmbda)
        self.replay = bool(replay)
        self.adaptive = AdaptivePhi(phi0=phi0, eps=eps, phi_step=phi_step)
        self.buffer = ReplayBuffer(capacity)
        self.source_counts: dict[str, int] = {s: 0 for s in SOURCES}

    @property
    def phi(self) -> float:
        """The current generation probability: φ (adaptive), lmbda (on_policy), 0 (none)."""
        if self.mode == "adaptive":
            return self.adaptive.phi
        if self.mode == "on_policy":
            return self.lmbda
        return 0.0

    def mixing_probability(self, step: int) -> float:
        """λ at ``step`` (adaptive mode's fresh-generation probability)."""
        return mixing_probability(self.phi, step, self.total_steps, self.schedule)

    def decide(self, step: int) -> str:
        """Pick this step's data source and count it in ``source_counts``."""
        r = shared_uniform(self.seed, step)
        source = choose_source(
            self.mode,
            r,
            phi=self.phi,
            lam=self.mixing_probability(step),
            lmbda=self.lmbda,
            buffer_full=self.buffer.full,
        )
        if source == "buffer" and not self.replay:
            source = "fresh"  # the no-replay ablation: the same decision, answered by new samples
        self.source_counts[source] += 1
        return source

    def sample_buffer(self, n: int, step: int, rank: int = 0) -> list[dict[str, Any]]:
        """Sample ``n`` buffer entries with a generator seeded from (seed, step, rank).

        Reproducible across resumes; different ranks draw independently from
        their own buffers.
        """
        gen = torch.Generator().manual_seed(
            _derive_seed(_SALT_SAMPLE, self.seed, step, rank)
        )
        return self.buffer.sample(n, gen)

    def observe_validation(self, loss: float) -> bool:
        """Feed a validation loss; returns True if φ rose (adaptive mode only)."""
        if self.mode != "adaptive":
            return False
        return self.adaptive.observe(loss)

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "phi": self.adaptive.state_dict(),
            "buffer": self.buffer.state_dict(),
            "source_counts": dict(self.source_counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(
                f"off-policy state was saved in mode {state['mode']!r} but this run uses "
                f"{self.mode!r}; resume with the same off_policy mode"
            )
        self.adaptive.load_state_dict(state["phi"])
        self.buffer.load_state_dict(state["buffer"])
        counts = {s: 0 for s in SOURCES}
        counts.update({k: int(v) for k, v in state["source_counts"].items()})
        self.source_counts = counts
