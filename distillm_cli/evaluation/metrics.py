"""Evaluation metrics and run summaries.

ROUGE-L follows the DistiLLM / DistiLLM-2 evaluation protocol (METHOD.md §3):
ROUGE-L F-measure with Porter stemming (the ``rouge_score`` package), the
maximum over a prediction's references, ×100, averaged over predictions.
Exact match uses the same answer normalisation as the authors'
``rouge_metric.py`` (SQuAD v1.1 without article removal, see
:func:`normalize_answer`), also maxed over references. Seeds are then
summarised as mean ± sample standard deviation.

Pure functions: no file I/O, no global state except the cached scorer.
"""

from __future__ import annotations

import functools
import math
import string
from collections.abc import Sequence

__all__ = [
    "cut_at_eos",
    "exact_match",
    "mean_std",
    "normalize_answer",
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


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Normalise an answer string the way the DistiLLM / MiniLLM evaluation does.

    This is the SQuAD v1.1 ``normalize_answer`` *without* article removal, as
    in the authors' ``rouge_metric.py``, applied in this order:

    1. lower case (``str.lower``);
    2. delete every character in ``string.punctuation`` (the 32 ASCII
       punctuation characters ``!"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~``), so
       ``"don't"`` becomes ``"dont"`` and ``"state-of-the-art"`` becomes
       ``"stateoftheart"``;
    3. collapse whitespace: ``" ".join(text.split())``.

    Articles ("a", "an", "the") are kept. Non-ASCII punctuation such as
    ``"\u2019"`` (right single quote), ``"\u2014"`` (em dash) or ``"\u3002"``
    is not in ``string.punctuation`` and is therefore kept, exactly as the
    authors' code keeps it.
    """
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    return " ".join(no_punct.split())


def exact_match(
    predictions: Sequence[str], references: Sequence[Sequence[str] | str]
) -> float:
    """Fraction in [0, 1] of predictions equal to any of their references.

    EM = (1/N) * sum_i max_{r in refs_i} [normalize_answer(pred_i) == normalize_answer(r)]

    where :func:`normalize_answer` is the SQuAD v1.1 normalisation without
    article removal (lower case, drop ``string.punctuation``, collapse
    whitespace), as in the DistiLLM / MiniLLM ``rouge_metric.py``; the max
    over references is that code's ``metric_max_over_ground_truths``.
    ``references[i]`` is the list of references of ``predictions[i]`` (a bare
    string is accepted as a single reference). Multiply by 100 for the
    papers' percentage. Empty ``predictions`` gives 0.0; a length mismatch or
    a prediction with no references raises ValueError.
    """
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    hits = 0
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        norm = normalize_answer(pred)
        if any(norm == normalize_answer(ref) for ref in _as_reference_list(refs, i)):
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
