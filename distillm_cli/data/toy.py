"""The embedded toy data: synthetic instruction tasks (models: distillm_cli/models/tiny.py).

Everything here is offline and deterministic, so that ``distillm pipeline`` runs
end to end on a laptop CPU in a few minutes and shows distillation doing
something measurable:

- ``make_toy_splits(seed)`` builds instruction records ``{instruction, input,
  output, task}`` from a few deterministic task families. The teacher learns
  from a large labelled pool (``teacher_train``); the student only gets a small
  labelled split (``train``) plus prompts without labels (``unlabelled``) that
  the teacher answers. ``valid`` and ``test`` are held out. No input string
  occurs twice, within or across splits.

The families and split sizes were chosen by measurement (DESIGN.md, "What experiments on a
toy task showed"; the README's demo results).
"""

from __future__ import annotations

import random

__all__ = ["DEFAULT_SPLIT_SIZES", "TASK_FAMILIES", "make_toy_splits"]

# Split sizes of the demo. Splits are generated in this order from their own
# random streams, so growing a later split never changes an earlier one (the
# test set stays the same when the pools change size).
DEFAULT_SPLIT_SIZES: dict[str, int] = {
    "test": 300,
    "valid": 200,
    "train": 600,
    "unlabelled": 2400,
    "teacher_train": 4000,
}

# ---------------------------------------------------------------------------
# Task families
# ---------------------------------------------------------------------------

# Short, common lower-case words: the material of the word-level tasks.
WORDS = (
    "ant arm art bag bed bee big box boy bus cab cap car cat cow cup cut day dog "
    "dry ear egg elf end eye fan far fig fish fly fog fox fun gap gas gem girl "
    "gold gum hat hen hill hot ice ink jam jar jet joy key kid kit lab lake lamp "
    "leaf leg lid lip log map mat milk mix mud nap net nut oak oil owl pan pen "
    "pig pin pot rain ram rat red rib ring road rock rod rope rug run sad salt "
    "sand sea ship shoe sky snow sock son star sun tab tea ten tin toe top toy "
    "tree tub van vet wall web wet wig win wind wolf yak yam zip zoo"
).split()

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve "
    "thirteen fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 10000, e.g. 347 -> 'three hundred forty-seven'."""
    if not 0 <= n < 10000:
        raise ValueError(f"number_to_words covers 0..9999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("-" + _ONES[ones] if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " hundred" + (" " + number_to_words(rest) if rest else "")
    thousands, rest = divmod(n, 1000)
    return _ONES[thousands] + " thousand" + (" " + number_to_words(rest) if rest else "")


def _words(rng: random.Random, lo: int, hi: int, length: int = 1) -> list[str]:
    """Between lo and hi words, both scaled by `length` (data.toy_length: longer inputs and answers)."""
    return [rng.choice(WORDS) for _ in range(rng.randint(lo * length, hi * length))]


def _reverse_words(rng, length):
    words = _words(rng, 2, 5, length)
    return " ".join(words), " ".join(reversed(words))


def _every_second(rng, length):
    words = _words(rng, 3, 6, length)
    return " ".join(words), " ".join(words[0::2])


def _uppercase(rng, length):
    text = " ".join(_words(rng, 2, 4, length))
    return text, text.upper()


def _count_words(rng, length):
    words = _words(rng, 1, 8, length)
    return " ".join(words), str(len(words))


def _number(rng):
    return rng.randrange(10000) if rng.random() < 0.5 else rng.randrange(1000)


def _number_to_words(rng, length):  # noqa: ARG001 - numbers keep their size
    n = _number(rng)
    return str(n), number_to_words(n)


def _words_to_number(rng, length):  # noqa: ARG001 - numbers keep their size
    n = _number(rng)
    return number_to_words(n), str(n)


_ROMAN = ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
          (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))


def to_roman(n: int) -> str:
    out = ""
    for value, letters in _ROMAN:
        while n >= value:
            out, n = out + letters, n - value
    return out


def _roman(rng, length):  # noqa: ARG001 - numbers keep their size
    n = rng.randint(1, 3999) if rng.random() < 0.5 else rng.randint(1, 399)
    return str(n), to_roman(n)


def _count_letters(rng, length):  # noqa: ARG001 - numbers keep their size
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9)))
    return word, str(len(word))


def _max_digit(rng, length):  # noqa: ARG001 - numbers keep their size
    digits = [str(rng.randrange(10)) for _ in range(rng.randint(2, 6))]
    return " ".join(digits), max(digits)


def _first_word(rng, length):
    words = _words(rng, 2, 5, length)
    return " ".join(words), words[0]


def _last_word(rng, length):
    words = _words(rng, 2, 5, length)
    return " ".join(words), words[-1]


# name -> (instruction phrasings, input/output generator)
TASK_FAMILIES: dict[str, tuple[tuple[str, ...], object]] = {
    "reverse_words": (("Reverse the order of the words.", "Write the words in reverse order.",
                       "Reverse the word order."), _reverse_words),
    "every_second_word": (("Write every second word.", "Keep every other word.",
                           "List every second word."), _every_second),
    "uppercase": (("Convert the text to uppercase.", "Write this in capital letters.",
                   "Make every letter uppercase."), _uppercase),
    "count_words": (("How many words are there?", "Count the words.",
                     "Count the words in the input."), _count_words),
    "number_to_words": (("Write the number in words.", "Spell out this number.",
                         "Convert the number to words."), _number_to_words),
    "words_to_number": (("Write this as digits.", "Convert the words to a number.",
                         "Write the number in digits."), _words_to_number),
    "roman_numeral": (("Write this as a Roman numeral.", "Convert to Roman numerals.",
                       "Give the Roman numeral."), _roman),
    "count_letters": (("How many letters are there?", "Count the letters.",
                       "Count the letters in the word."), _count_letters),
    "max_digit": (("What is the largest digit?", "Find the largest digit.",
                   "Give the biggest digit."), _max_digit),
    "first_word": (("What is the first word?", "Write the first word.",
                    "Give the first word."), _first_word),
    "last_word": (("What is the last word?", "Write the last word.",
                   "Give the last word."), _last_word),
}
# The families the demo trains on: ones a 3-layer character model learns within the demo's
# few minutes (measured: teacher 1200 steps x 32 -> EM 0.52 on these five, 0.35 on seven
# copy-style families, 0.06 on all eleven after 450 steps). The rest stay available through
# `data.toy_tasks=[...]` for harder variants.
DEFAULT_TASKS: tuple[str, ...] = (
    "reverse_words", "number_to_words", "every_second_word", "uppercase", "count_words")


def _make_split(name: str, size: int, seed: int, seen: set[str], tasks, length: int) -> list[dict]:
    """`size` records, families balanced (round robin) and shuffled; inputs unique in `seen`."""
    rng = random.Random(f"distillm-toy/{seed}/{name}")
    families = list(tasks)
    records = []
    for i in range(size):
        task = families[i % len(families)]
        phrasings, generate = TASK_FAMILIES[task]
        for _ in range(10000):
            text, output = generate(rng, length)
            if text not in seen:
                break
        else:  # pragma: no cover - only with absurd split sizes
            raise ValueError(f"toy task {task!r} ran out of unique inputs; use smaller splits")
        seen.add(text)
        records.append(
            {"instruction": rng.choice(phrasings), "input": text, "output": output, "task": task}
        )
    rng.shuffle(records)
    return records


def make_toy_splits(
    seed: int, sizes: dict[str, int] | None = None, tasks: tuple[str, ...] | None = None, length: int = 1
) -> dict[str, list[dict]]:
    """Deterministic toy splits ``teacher_train, train, unlabelled, valid, test``.

    ``sizes`` overrides entries of ``DEFAULT_SPLIT_SIZES`` (unknown names are an
    error). Records are ``{"instruction", "input", "output", "task"}``; the
    ``unlabelled`` split keeps its reference ``output`` for analysis only.
    ``length`` multiplies the word counts of the word-list tasks (3: answers of
    up to ~90 characters instead of ~30), for runs where response length matters.
    """
    if length < 1:
        raise ValueError(f"toy length must be >= 1, got {length}")
    merged = dict(DEFAULT_SPLIT_SIZES)
    for key, value in (sizes or {}).items():
        if key not in merged:
            raise ValueError(f"unknown toy split {key!r}; known: {sorted(merged)}")
        if int(value) < 0:
            raise ValueError(f"toy split {key!r} needs a size >= 0, got {value}")
        merged[key] = int(value)
    seen: set[str] = set()
    splits = {name: _make_split(name, merged[name], seed, seen, tasks or DEFAULT_TASKS, length)
              for name in DEFAULT_SPLIT_SIZES}
    return {name: splits[name] for name in ("teacher_train", "train", "unlabelled", "valid", "test")}
