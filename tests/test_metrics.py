import math

import pytest
from rouge_score import rouge_scorer

from distillm_cli.evaluation.metrics import (
    cut_at_eos,
    exact_match,
    mean_std,
    rouge_l,
    summarize_scores,
)

# Independent reference: a fresh scorer, built here, not the module's cache.
_REF_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _reference_rouge_l(predictions, references):
    scores = [
        max(_REF_SCORER.score(ref, pred)["rougeL"].fmeasure for ref in refs) * 100
        for pred, refs in zip(predictions, references)
    ]
    return sum(scores) / len(scores)


PAIRS = [
    ("the cat sat on the mat", ["the cat sat on the mat"]),
    ("the cat is running", ["the cats run"]),
    ("running runners ran", ["run runner run"]),
    ("", ["a non-empty reference"]),
    ("completely different words", ["nothing shared here"]),
    (
        "Paris is the capital of France.",
        ["France's capital is Paris", "The capital is Paris."],
    ),
    ("a b c d", ["d c b a", "a b x d", "a"]),
    ("Punctuation, CASE; and   spacing!", ["punctuation case and spacing"]),
]


def test_rouge_l_matches_rouge_score_on_each_pair():
    for pred, refs in PAIRS:
        assert abs(rouge_l([pred], [refs]) - _reference_rouge_l([pred], [refs])) < 1e-9


def test_rouge_l_matches_rouge_score_on_the_whole_set():
    preds = [p for p, _ in PAIRS]
    refs = [r for _, r in PAIRS]
    assert abs(rouge_l(preds, refs) - _reference_rouge_l(preds, refs)) < 1e-9


def test_rouge_l_takes_the_max_over_references():
    refs = ["zzz yyy", "the quick brown fox", "quick fox"]
    best = max(rouge_l(["the quick brown fox"], [[r]]) for r in refs)
    assert rouge_l(["the quick brown fox"], [refs]) == pytest.approx(best, abs=1e-12)
    assert best == pytest.approx(100.0)


def test_rouge_l_stemming_matches_inflections():
    # With the Porter stemmer, "running" and "run" are the same token.
    assert rouge_l(["running"], [["run"]]) == pytest.approx(100.0)
    assert rouge_l(["cats"], [["cat"]]) == pytest.approx(100.0)


def test_rouge_l_edge_cases():
    assert rouge_l([], []) == 0.0
    assert rouge_l([""], [["anything"]]) == 0.0
    assert rouge_l(["same text"], ["same text"]) == pytest.approx(
        100.0
    )  # bare string ref
    with pytest.raises(ValueError):
        rouge_l(["a", "b"], [["a"]])
    with pytest.raises(ValueError):
        rouge_l(["a"], [[]])


def test_exact_match():
    preds = ["  hello   world ", "foo", "Bar", "x\ny"]
    refs = [["hello world"], ["baz", "foo "], ["bar"], ["x y"]]
    # matches: whitespace-normalised, any reference; case-sensitive
    assert exact_match(preds, refs) == pytest.approx(3 / 4)
    assert exact_match([], []) == 0.0
    assert exact_match(["a"], ["a"]) == 1.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])


def test_cut_at_eos():
    assert (
        cut_at_eos(" answer here<|endoftext|>junk<|endoftext|>", "<|endoftext|>")
        == "answer here"
    )
    assert cut_at_eos("  no eos  ", "</s>") == "no eos"
    assert cut_at_eos("</s>after", "</s>") == ""
    assert cut_at_eos(" text </s> more ", None) == "text </s> more"
    assert cut_at_eos(" text ", "") == "text"


def test_mean_std():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(5.0 / 3.0))  # sample std, ddof=1
    assert mean_std([7.5]) == (7.5, 0.0)
    assert mean_std([2.0, 2.0]) == (2.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_summarize_scores():
    per_seed = [
        {"rougeL": 20.0, "em": 0.5},
        {"rougeL": 22.0, "em": 0.7},
        {"rougeL": 24.0, "em": 0.6},
    ]
    summary = summarize_scores(per_seed)
    assert list(summary) == ["rougeL", "em"]
    assert summary["rougeL"]["mean"] == pytest.approx(22.0)
    assert summary["rougeL"]["std"] == pytest.approx(2.0)
    assert summary["rougeL"]["per_seed"] == [20.0, 22.0, 24.0]
    assert summary["em"]["mean"] == pytest.approx(0.6)
    assert summarize_scores([]) == {}
    with pytest.raises(ValueError):
        summarize_scores([{"a": 1.0}, {"b": 1.0}])
