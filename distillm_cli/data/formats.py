"""Record formats and prompt templates: what one record is and how it becomes token ids
with a loss mask (prompt masked, response and its end token counted).

Records are normalised to one of three shapes:

    {messages: [{role, content}, ...], output}   a chat (messages, or ShareGPT conversations)
    {instruction, input, output}                 Alpaca-style (dolly's context/response too)
    {prompt, output, truncated}                  text that is already templated (generations.jsonl)

`output` is the reference answer: a string, a list of strings (several references; the
first is trained on, evaluation takes the best), or None for a prompt without answer.

`RecordFormat` (built by `record_format(cfg, tokenizer)`) renders them with data.template:

    chat      the tokenizer's chat template (data/chat.py); the response ends with the
              template's end-of-turn token
    alpaca    DistiLLM's Alpaca template (METHOD.md §3); the response ends with EOS
    compact   the Alpaca template without its preamble (the toy models)
    auto      chat when the tokenizer has a chat template, else alpaca
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from . import chat

# The Alpaca-style template of DistiLLM (METHOD.md §3). "compact" drops the
# one-sentence preamble: for the embedded character-level toy models the
# preamble alone would be ~110 tokens of constant prefix per example.
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)

PROMPT_TEMPLATES = {"alpaca": ALPACA_PREAMBLE, "compact": ""}
TEMPLATES = ("auto", "chat", "alpaca", "compact")

IGNORE = -100  # label value the loss skips (prompt and padding positions)


def format_prompt(record: dict, template: str = "alpaca") -> str:
    """Build the prompt text for one {instruction, input, output} record."""
    text = PROMPT_TEMPLATES[template] + "### Instruction:\n" + record["instruction"].strip() + "\n\n"
    if record.get("input", "").strip():
        text += "### Input:\n" + record["input"].strip() + "\n\n"
    return text + "### Response:\n"


def _answer(value):
    """An output as the record keeps it: None, a string, or a non-empty list of strings."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        answers = [str(v) for v in value if v is not None]
        return answers or None
    return str(value)


def first_answer(output) -> str | None:
    """The answer trained on: the output, or the first of several references."""
    return output[0] if isinstance(output, list) else output


def references(output) -> list[str]:
    """Every reference of an output (evaluation scores the best match)."""
    return list(output) if isinstance(output, list) else [output]


def normalise_record(raw: dict, where: str) -> dict:
    """Accept messages, ShareGPT conversations, instruction/input/output (dolly's
    instruction/context/response), or prompt/response."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a JSON object per record")
    if "messages" in raw or "conversations" in raw:
        sharegpt = "messages" not in raw
        turns = chat.normalise_turns(raw["conversations" if sharegpt else "messages"], where, sharegpt=sharegpt)
        last = chat.last_assistant(turns)
        if last is None:  # a prompt-only conversation: the model answers its last user turn
            return {"messages": turns, "output": None}
        return {"messages": turns[: last + 1], "output": turns[last]["content"]}
    if "prompt" in raw:  # already templated text (e.g. generate-student's generations.jsonl)
        return {"prompt": str(raw["prompt"]), "output": _answer(raw.get("response", raw.get("output"))),
                "truncated": bool(raw.get("truncated", False))}
    if "instruction" in raw:
        return {"instruction": str(raw["instruction"]), "input": str(raw.get("input", raw.get("context", "")) or ""),
                "output": _answer(raw.get("output", raw.get("response")))}
    raise UserError(f"{where}: record has none of 'messages', 'conversations', 'instruction' or 'prompt' (it has "
                    f"{', '.join(sorted(map(str, raw))) or 'no fields'}); map its columns with "
                    "data.columns.<field>=<column>")


# ------------------------------------------------------------------- tokenization
@dataclass
class Example:
    """One training sample: input ids and next-token labels (IGNORE where nothing is learnt)."""

    input_ids: torch.Tensor  # [L] long
    labels: torch.Tensor  # [L] long; labels[t] is the target of position t, i.e. input_ids[t + 1]
    prompt_len: int  # tokens of the generation prompt (before the last response) at the start


def build_example(prompt_ids: list[int], response_ids: list[int], max_length: int) -> Example:
    """Join prompt and response and align labels for next-token prediction.

    The loss counts exactly the response tokens, including the end token when the
    response has one (a response cut by the length limit has none and gets none
    invented). Position t predicts token t + 1, so the label of the last prompt position
    is the first response token. Samples longer than max_length are cut at the end.
    """
    ids = list(prompt_ids) + list(response_ids)
    return example_from_pieces(ids, [False] * len(prompt_ids) + [True] * len(response_ids), len(prompt_ids),
                               max_length)


def example_from_pieces(ids: list[int], trained: list[bool], prompt_len: int, max_length: int) -> Example:
    """An Example from token ids and, per token, whether it is a target."""
    ids, trained = ids[:max_length], trained[:max_length]
    labels = [token if learn else IGNORE for token, learn in zip(ids[1:], trained[1:])] + [IGNORE]
    return Example(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long),
                   min(prompt_len, len(ids)))


class RecordFormat:
    """How the records of one run become text and token ids, for one tokenizer."""

    def __init__(self, tokenizer, template: str, *, max_prompt_length: int, max_length: int,
                 system_prompt: str = "", train_on: str = "last"):
        if template == "auto":
            template = "chat" if chat.has_chat_template(tokenizer) else "alpaca"
        if template == "chat" and not chat.has_chat_template(tokenizer):
            raise UserError("data.template=chat needs a tokenizer with a chat template, and this one has none; "
                            "use data.template=alpaca (or a model that ships a chat template)")
        self.tokenizer, self.template = tokenizer, template
        self.max_prompt_length, self.max_length = max_prompt_length, max_length
        self.system_prompt, self.train_on = system_prompt, train_on
        end_token = chat.end_of_turn_token(tokenizer) if template == "chat" else None
        # The token a finished response ends with: the chat template's end of turn, else EOS.
        self.end_id = tokenizer.convert_tokens_to_ids(end_token) if end_token else tokenizer.eos_token_id

    def tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # --- prompts (generation and evaluation)
    def _turns(self, record: dict) -> list[dict]:
        turns = record["messages"]
        if self.system_prompt and turns[0]["role"] != "system":
            turns = [{"role": "system", "content": self.system_prompt}, *turns]
        return turns

    def _as_turns(self, record: dict) -> list[dict]:
        """An instruction record as a chat: one user turn (instruction, then input)."""
        if "messages" in record:
            return self._turns(record)
        content = record["instruction"].strip()
        if record.get("input", "").strip():
            content += "\n\n" + record["input"].strip()
        turns = [{"role": "user", "content": content}]
        if record.get("output") is not None:
            turns.append({"role": "assistant", "content": first_answer(record["output"])})
        return self._turns({"messages": turns})

    def prompt_text(self, record: dict) -> str:
        """The text the model answers: the prompt before the (last) response."""
        if "prompt" in record:
            return record["prompt"]
        if self.template == "chat":
            turns = self._as_turns(record)
            last = chat.last_assistant(turns)
            return chat.render(self.tokenizer, turns if last is None else turns[:last], generation_prompt=True)
        if "messages" in record:
            raise UserError(f"chat records (messages) need data.template=chat or auto, not '{self.template}'")
        return format_prompt(record, self.template)

    def prompt_ids(self, record: dict) -> list[int]:
        return self.tokens(self.prompt_text(record))[-self.max_prompt_length:]  # keep the question's end

    # --- training examples
    def response_ids(self, text: str, *, finished: bool = True) -> list[int]:
        """A response's tokens, ended by the end token unless it was cut off (truncated)."""
        ids = self.tokens(text)
        return ids + [self.end_id] if finished and (not ids or ids[-1] != self.end_id) else ids

    def encode(self, record: dict) -> Example:
        """Token ids with their loss mask for a record that has a response."""
        if self.template == "chat" and "prompt" not in record:
            return self._encode_chat(self._as_turns(record))
        prompt = self.prompt_ids(record)
        response = self.response_ids(first_answer(record["output"]), finished=not record.get("truncated", False))
        return build_example(prompt, response, self.max_length)

    def _encode_chat(self, turns: list[dict]) -> Example:
        ids, trained = [], []
        for text, learn in chat.chat_segments(self.tokenizer, turns, self.train_on):
            piece = self.tokens(text)
            ids += piece
            trained += [learn] * len(piece)
        prompt_len = len(ids) - len(piece)  # the last piece is the last reply: generation answers there
        cut = max(0, prompt_len - self.max_prompt_length)  # a long prompt keeps its end
        return example_from_pieces(ids[cut:], trained[cut:], prompt_len - cut, self.max_length)

    def describe(self) -> str:
        return f"{self.template} (responses end with {self.tokenizer.convert_ids_to_tokens(self.end_id)!r})"


def record_format(cfg, tokenizer) -> RecordFormat:
    data = cfg.data
    return RecordFormat(tokenizer, data.template, max_prompt_length=data.max_prompt_length,
                        max_length=data.max_length, system_prompt=data.system_prompt, train_on=data.train_on)
