import math

import pytest
from rouge_score import rouge_scorer

from distillm_cli.evaluation.metrics import (
    cut_at_eos,
    exact_match,
    mean_std,
    normalize_answer,
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
    preds = ["  hello   world ", "foo", "Bar", "x\ny", "nope"]
    refs = [["hello world"], ["baz", "foo "], ["bar"], ["x y"], ["yes"]]
    # whitespace collapsed and case folded, any reference counts
    assert exact_match(preds, refs) == pytest.approx(4 / 5)
    assert exact_match([], []) == 0.0
    assert exact_match(["a"], ["a"]) == 1.0
    with pytest.raises(ValueError):
        exact_match(["a"], [])
    with pytest.raises(ValueError):
        exact_match(["a"], [[]])


# Expected outputs written by hand from the authors' rouge_metric.py
# (SQuAD v1.1 normalize_answer without the article-removal step).
NORMALIZED = [
    ("Hello, World!", "hello world"),
    ("  The   CAT\tsat.\n", "the cat sat"),
    ("don't", "dont"),
    ("state-of-the-art", "stateoftheart"),
    ("a (b) [c] {d}", "a b c d"),
    ("x - y", "x y"),  # a lone dash vanishes, whitespace re-collapsed
    ("!!!", ""),
    ("", ""),
    ("e.g. 3.14 $5 @home #1 50% a_b a/b", "eg 314 5 home 1 50 ab ab"),
]


@pytest.mark.parametrize(("text", "expected"), NORMALIZED)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_answer_is_public():
    import distillm_cli.evaluation.metrics as metrics

    assert "normalize_answer" in metrics.__all__


def test_exact_match_ignores_case_and_punctuation():
    assert exact_match(["Hello, World!"], [["hello world"]]) == 1.0
    assert exact_match(["hello world"], [["Hello, World!"]]) == 1.0
    assert exact_match(["HELLO   world."], ["hello world"]) == 1.0
    # still a real comparison: different words do not match
    assert exact_match(["Hello, World!"], [["hello there"]]) == 0.0


def test_exact_match_keeps_articles():
    # SQuAD v1.1 would drop "the"; the DistiLLM/MiniLLM variant does not.
    assert exact_match(["the cat"], [["cat"]]) == 0.0
    assert exact_match(["cat"], [["the cat"]]) == 0.0
    assert exact_match(["a dog"], [["dog"]]) == 0.0
    assert exact_match(["An apple"], [["an apple"]]) == 1.0


def test_exact_match_punctuation_inside_words():
    assert exact_match(["don't"], [["dont"]]) == 1.0
    assert exact_match(["dont"], [["don't"]]) == 1.0
    # removing the apostrophe joins the word, it does not split it
    assert exact_match(["don't"], [["don t"]]) == 0.0
    assert exact_match(["well-known"], [["wellknown"]]) == 1.0


def test_exact_match_keeps_unicode_punctuation():
    # Only string.punctuation (ASCII) is removed, as in the authors' code,
    # so typographic punctuation survives normalisation.
    assert normalize_answer("don\u2019t") == "don\u2019t"
    assert exact_match(["don\u2019t"], [["dont"]]) == 0.0
    assert exact_match(["don\u2019t"], [["don't"]]) == 0.0
    assert exact_match(["yes\u3002"], [["yes"]]) == 0.0
    assert exact_match(["\u00abhi\u00bb"], [["hi"]]) == 0.0
    assert exact_match(["a\u2014b"], [["ab"]]) == 0.0
    # ... but it is still case-folded and compared after ASCII removal
    assert exact_match(["Don\u2019t!"], [["don\u2019t"]]) == 1.0


def test_exact_match_max_over_references():
    # the prediction matches only the second reference
    assert exact_match(["Paris."], [["London", "paris"]]) == 1.0
    assert exact_match(["Paris."], [["London", "Berlin"]]) == 0.0
    preds = ["blue", "red", "green"]
    refs = [["Red", "BLUE!"], ["red"], ["yellow", "teal"]]
    assert exact_match(preds, refs) == pytest.approx(2 / 3)


def test_rouge_l_second_reference_counts():
    pred = "the quick brown fox"
    worse = "completely unrelated words"
    assert rouge_l([pred], [[worse]]) == pytest.approx(0.0)
    assert rouge_l([pred], [[worse, pred]]) == pytest.approx(100.0)
    partial = rouge_l([pred], [["the quick fox"]])
    assert 0.0 < partial < 100.0
    assert rouge_l([pred], [[worse, "the quick fox"]]) == pytest.approx(partial)


def test_bare_string_reference_equals_one_element_list():
    cases = [
        ("Hello, World!", "hello world"),
        ("the cat", "cat"),
        ("running fast", "run fast today"),
        ("", "something"),
    ]
    for pred, ref in cases:
        assert exact_match([pred], [ref]) == exact_match([pred], [[ref]])
        assert rouge_l([pred], [ref]) == pytest.approx(rouge_l([pred], [[ref]]))
    # a bare string is one reference, not a list of one-character references
    assert exact_match(["a"], ["abc"]) == 0.0
    assert rouge_l(["a"], ["abc"]) == pytest.approx(0.0)
    preds = [p for p, _ in cases]
    assert exact_match(preds, [r for _, r in cases]) == exact_match(
        preds, [[r] for _, r in cases]
    )


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
