"""Evaluation metrics and run summaries.

ROUGE-L follows the DistiLLM / DistiLLM-2 evaluation protocol (METHOD.md §3):
ROUGE-L F-measure with Porter stemming (the ``rouge_score`` package), the
maximum over a prediction's references, ×100, averaged over predictions.
Seeds are then summarised as mean ± sample standard deviation.

Pure functions: no file I/O, no global state except the cached scorer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

__all__ = [
    "cut_at_eos",
    "exact_match",
    "mean_std",
    "rouge_l",
    "summarize_scores",
]


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer():
    # Imported lazily so that importing this module stays cheap.
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _as_reference_list(refs: str | Sequence[str], index: int) -> list[str]:
    if isinstance(refs, str):
        return [refs]
    refs = list(refs)
    if not refs:
        raise ValueError(f"prediction {index} has no references")
    return refs


def _check_lengths(predictions: Sequence[str], references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} predictions but {len(references)} reference lists"
        )


def rouge_l(
    predictions: Sequence[str], references: Sequence[Sequence[str] | str]
) -> float:
    """Mean ROUGE-L F-measure ×100, max over each prediction's references.

    ``references[i]`` is the list of references of ``predictions[i]`` (a bare
    string is accepted as a single reference). Scores use
    ``rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)``: lower-cased,
    non-alphanumeric characters dropped, Porter-stemmed tokens. An empty
    prediction scores 0. An empty ``predictions`` list gives 0.0.

    Raises ValueError if the lengths differ or a prediction has no references.
    """
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    scorer = _rouge_l_scorer()
    total = 0.0
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        best = max(
            scorer.score(ref, pred)["rougeL"].fmeasure
            for ref in _as_reference_list(refs, i)
        )
        total += best * 100.0
    return total / len(predictions)


def _normalize_ws(text: str) -> str:
    return " ".join(text.split())


def exact_match(
    predictions: Sequence[str], references: Sequence[Sequence[str] | str]
) -> float:
    """Fraction in [0, 1] of predictions equal to any of their references.

    Both sides are stripped and runs of whitespace collapsed to one space
    before comparing; the comparison is otherwise exact (case-sensitive).
    Empty ``predictions`` gives 0.0; a length mismatch raises ValueError.
    """
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    hits = 0
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        norm = _normalize_ws(pred)
        if any(norm == _normalize_ws(ref) for ref in _as_reference_list(refs, i)):
            hits += 1
    return hits / len(predictions)


def cut_at_eos(text: str, eos_token: str | None) -> str:
    """Cut ``text`` at the first occurrence of ``eos_token`` (if any), then strip.

    ``None`` or an empty EOS string only strips.
    """
    if eos_token:
        idx = text.find(eos_token)
        if idx >= 0:
            text = text[:idx]
    return text.strip()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (ddof=1) of ``values``.

    The sample std is the usual choice for "mean ± std over seeds". With a
    single value the std is 0.0. An empty sequence raises ValueError.
    """
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    vals = [float(v) for v in values]
    mean = math.fsum(vals) / n
    if n == 1:
        return mean, 0.0
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var)


def summarize_scores(per_seed: Sequence[dict[str, float]]) -> dict[str, dict]:
    """Summarise per-seed metric dicts.

    ``per_seed`` is one ``{metric: value}`` dict per seed, all with the same
    keys. Returns ``{metric: {"mean": m, "std": s, "per_seed": [...]}}`` with
    the std from :func:`mean_std` (sample std, 0.0 for one seed). Metrics keep
    the order of the first seed's dict. An empty input gives ``{}``; seeds
    with different metric names raise ValueError.
    """
    if not per_seed:
        return {}
    names = list(per_seed[0])
    for i, scores in enumerate(per_seed):
        if set(scores) != set(names):
            raise ValueError(
                f"seed {i} has metrics {sorted(scores)}, expected {sorted(names)}"
            )
    summary: dict[str, dict] = {}
    for name in names:
        values = [float(scores[name]) for scores in per_seed]
        mean, std = mean_std(values)
        summary[name] = {"mean": mean, "std": std, "per_seed": values}
    return summary
