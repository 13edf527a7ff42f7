"""Preemption: a scheduler's SIGTERM ends training at a resume point, not mid-step.

Slurm, Kubernetes and the `deepspeed` launcher stop a job with SIGTERM and kill it a while
later (30 s for the launcher). While a training loop runs, SIGTERM only raises a flag.
At the end of every step the ranks agree whether any of them saw it (one tiny
all-reduce; the signal reaches ranks at different moments); if so, every rank writes a
resume point for the step just finished and the run stops with `Preempted`, which the
CLI reports as one line saying how to resume (exit code 143, as for SIGTERM). Outside
training loops (loading, generation, saving) SIGTERM keeps its usual effect: those
stages continue from their output on the next run.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

from ..runtime import Runtime, all_reduce_max

EXIT_PREEMPTED = 128 + signal.SIGTERM


class Preempted(Exception):
    """Training stopped at a resume point because the job was asked to stop."""


class _State:
    seen = False  # this process got SIGTERM
    agreed = False  # the ranks agreed to stop (the same on every rank)


def _on_sigterm(signum, frame) -> None:
    _State.seen = True


@contextlib.contextmanager
def stop_at_step_end():
    """Within this block, SIGTERM asks the training loop to stop at the end of its step."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    preempted = False
    try:
        yield
    except Preempted:
        preempted = True  # keep ignoring the launcher's follow-up SIGTERM while the run reports and exits
        raise
    finally:
        if not preempted:
            signal.signal(signal.SIGTERM, previous)
            if _State.seen and not _State.agreed:  # arrived after the last step's check: act on it now
                os.kill(os.getpid(), signal.SIGTERM)


def stop_requested(runtime: Runtime) -> bool:
    """Whether any rank saw SIGTERM; the same answer on every rank (a collective: all ranks call it)."""
    _State.agreed = all_reduce_max(1.0 if _State.seen else 0.0, runtime) > 0
    return _State.agreed


def preempted_earlier() -> bool:
    """Whether a training loop of this process stopped for SIGTERM (the pipeline then stops too)."""
    return _State.agreed
