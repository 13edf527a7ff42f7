"""Instruction data: loading, prompt templates, tokenization, loss masks, collation."""
from __future__ import annotations

# The Alpaca-style template of DistiLLM (METHOD.md §3). "compact" drops the
# one-sentence preamble: for the embedded character-level toy models the
# preamble alone would be ~110 tokens of constant prefix per example.
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)
PROMPT_TEMPLATES = {"alpaca": ALPACA_PREAMBLE, "compact": ""}


def format_prompt(record: dict, template: str = "alpaca") -> str:
    """Build the prompt text for one {instruction, input, output} record."""
    text = PROMPT_TEMPLATES[template] + "### Instruction:\n" + record["instruction"].strip() + "\n\n"
    if record.get("input", "").strip():
        text += "### Input:\n" + record["input"].strip() + "\n\n"
    return text + "### Response:\n"
