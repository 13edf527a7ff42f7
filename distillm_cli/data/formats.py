"""Record formats and prompt templates: what one instruction record is and how it becomes
token ids with a loss mask (prompt masked, response and its EOS counted).

Records are normalised to {instruction, input, output} (dolly's context/response and
prompt/response are accepted) or {prompt, output} for text that is already templated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError

# The Alpaca-style template of DistiLLM (METHOD.md §3). "compact" drops the
# one-sentence preamble: for the embedded character-level toy models the
# preamble alone would be ~110 tokens of constant prefix per example.
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)

PROMPT_TEMPLATES = {"alpaca": ALPACA_PREAMBLE, "compact": ""}

IGNORE = -100  # label value the loss skips (prompt and padding positions)


def format_prompt(record: dict, template: str = "alpaca") -> str:
    """Build the prompt text for one {instruction, input, output} record."""
    text = PROMPT_TEMPLATES[template] + "### Instruction:\n" + record["instruction"].strip() + "\n\n"
    if record.get("input", "").strip():
        text += "### Input:\n" + record["input"].strip() + "\n\n"
    return text + "### Response:\n"


def prompt_text(record: dict, template: str) -> str:
    return record["prompt"] if "prompt" in record else format_prompt(record, template)


def normalise_record(raw: dict, where: str) -> dict:
    """Accept instruction/input/output, dolly's instruction/context/response, or prompt/response."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object per line")
    if "prompt" in raw:  # already templated text (e.g. generate-student's generations.jsonl)
        response = raw.get("response", raw.get("output"))
        record = {"prompt": str(raw["prompt"]), "output": None if response is None else str(response)}
    elif "instruction" in raw:
        output = raw.get("output", raw.get("response"))
        record = {"instruction": str(raw["instruction"]), "input": str(raw.get("input", raw.get("context", "")) or ""),
                  "output": None if output is None else str(output)}
    else:
        raise UserError(f"{where}: record has neither 'instruction' nor 'prompt'; each line needs "
                        "instruction/input/output (or prompt/response)")
    return record


# ------------------------------------------------------------------- tokenization
@dataclass
class Example:
    """One training sample: input ids and next-token labels (IGNORE on the prompt)."""

    input_ids: torch.Tensor  # [L] long
    labels: torch.Tensor  # [L] long; labels[t] is the target of position t, i.e. input_ids[t + 1]
    prompt_len: int  # tokens of the prompt at the start of input_ids


def encode_prompt(tokenizer, text: str, max_prompt_length: int) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_prompt_length:]  # keep the end: the instruction's question and "### Response:"


def build_example(prompt_ids: list[int], response_ids: list[int], eos_id: int, max_length: int) -> Example:
    """Join prompt and response (+EOS) and align labels for next-token prediction.

    The loss counts exactly the response tokens including EOS: position t predicts token
    t + 1, so the label of the last prompt position is the first response token. Samples
    longer than max_length are cut at the end (the EOS may then be cut off too).
    """
    if not response_ids or response_ids[-1] != eos_id:
        response_ids = [*response_ids, eos_id]
    ids = (list(prompt_ids) + list(response_ids))[:max_length]
    labels = ids[1:] + [IGNORE]
    for t in range(min(len(prompt_ids) - 1, len(labels))):
        labels[t] = IGNORE
    return Example(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), len(prompt_ids))


def encode_record(tokenizer, record: dict, cfg) -> Example:
    prompt_ids = encode_prompt(tokenizer, prompt_text(record, cfg.data.template), cfg.data.max_prompt_length)
    response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
    return build_example(prompt_ids, response_ids, tokenizer.eos_token_id, cfg.data.max_length)
