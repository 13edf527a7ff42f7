"""Everyday instruction prompts for the SmolLM2 setting (model=smollm2 data=smollm2).

The prompts are data: ``assets/smollm2_prompts.jsonl``, one ``{split, instruction,
category}`` record per line, 324 train / 16 valid / 60 test. They are short, everyday
requests (definitions, explanations, lists, rewrites, comparisons, tips, classification,
opposites, short messages, one-line summaries), each asking for a short answer so that a
135M teacher finishes within a few dozen tokens on a CPU; categories are balanced across
the splits and no instruction occurs twice. There are no reference answers: the
teacher's responses are the labels (``distillm generate-student generate=teacher``).

``write_prompt_files(out_dir, tokenizer)`` renders each instruction as one user turn with
the tokenizer's chat template and writes ``train.jsonl`` / ``valid.jsonl`` /
``test.jsonl`` with a ``prompt`` field, the form the data loader uses verbatim.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

PROMPTS_FILE = "smollm2_prompts.jsonl"


def prompt_splits() -> dict[str, list[dict]]:
    """The shipped prompts by split, in file order: {split: [{instruction, category}, ...]}."""
    text = (resources.files("distillm_cli.data") / "assets" / PROMPTS_FILE).read_text(encoding="utf-8")
    splits: dict[str, list[dict]] = {}
    for line in text.splitlines():
        record = json.loads(line)
        splits.setdefault(record.pop("split"), []).append(record)
    return splits


def chat_prompt(tokenizer, instruction: str) -> str:
    """One user turn in the tokenizer's chat template, ending where the assistant answers."""
    messages = [{"role": "user", "content": instruction}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def write_prompt_files(out_dir: str | Path, tokenizer) -> dict[str, Path]:
    """train/valid/test.jsonl with chat-rendered prompts (written atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, records in prompt_splits().items():
        path = out_dir / f"{name}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps({"prompt": chat_prompt(tokenizer, record["instruction"]), **record}) + "\n")
        tmp.replace(path)
        paths[name] = path
    return paths
