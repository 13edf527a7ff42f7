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


import json  # noqa: E402  (kept below the template so the template reads first)
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from .errors import UserError  # noqa: E402

IGNORE = -100  # label value the loss skips (prompt and padding positions)


# --------------------------------------------------------------------------- loading
def _normalise_record(raw: dict, where: str) -> dict:
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


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a jsonl file; a malformed line is reported as file:line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data file '{path}' does not exist; set data.path to a jsonl file")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not valid JSON ({error.msg}); fix or remove that line") from error
            records.append(_normalise_record(raw, f"{path}:{number}"))
    if not records:
        raise UserError(f"data file '{path}' holds no records")
    return records


def _load_dolly(cfg) -> list[dict]:
    try:
        import datasets

        rows = datasets.load_dataset(cfg.data.hub_id, split="train")
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        raise UserError(f"cannot load '{cfg.data.hub_id}' from the hub ({type(error).__name__}); "
                        "without internet use data=jsonl data.path=<file>") from error
    return [_normalise_record(dict(row), f"{cfg.data.hub_id}[{i}]") for i, row in enumerate(rows)]


def load_split(cfg, split: str, *, need_responses: bool = True) -> list[dict]:
    """The records of one split (names as in DataConfig: teacher_train, train, unlabelled, valid, test)."""
    data = cfg.data
    if data.name == "toy":
        from .toy import make_toy_splits

        splits = make_toy_splits(seed=0, tasks=tuple(data.toy_tasks) or None, length=data.toy_length)
        if split not in splits:
            raise UserError(f"the toy data has no split '{split}'; choose one of {', '.join(splits)}")
        records = splits[split]
    else:
        if data.name == "jsonl":
            everything = read_jsonl(data.path)
            explicit = {"valid": data.valid_path, "test": data.test_path or data.valid_path}
            if explicit.get(split):
                records = read_jsonl(explicit[split])
            elif split in ("valid", "test"):
                records = everything[: data.valid_size]
            else:
                records = everything[data.valid_size:] if not data.valid_path and len(everything) > data.valid_size \
                    else everything
        else:
            everything = _load_dolly(cfg)
            records = everything[: data.valid_size] if split in ("valid", "test") else everything[data.valid_size:]
    if data.max_examples:
        records = records[: data.max_examples]
    if not records:
        raise UserError(f"split '{split}' of data={data.name} is empty; check data.path / data.valid_size")
    if need_responses:
        missing = sum(1 for r in records if not r.get("output"))
        if missing:
            raise UserError(f"{missing} of {len(records)} records in split '{split}' have no response "
                            "(output/response); training needs one per record")
    return records


def prompt_text(record: dict, template: str) -> str:
    return record["prompt"] if "prompt" in record else format_prompt(record, template)


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


def encode_split(cfg, tokenizer, split: str) -> list[Example]:
    return [encode_record(tokenizer, record, cfg) for record in load_split(cfg, split)]


def read_generations(path: str | Path, tokenizer, cfg) -> list[Example]:
    """Training examples from a generate-student generations.jsonl (prompt + response)."""
    path = Path(path)
    if path.is_dir():
        path = path / "generations.jsonl"
    records = read_jsonl(path)
    return [encode_record(tokenizer, record, cfg) for record in records if record.get("output") is not None]


def read_lm_blocks(path: str | Path, tokenizer, block: int) -> list[Example]:
    """Plain text cut into blocks of `block` tokens; every token is a target (DistiLLM's LM term)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    texts.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise UserError(f"{path}:{number}: expected a JSON object with a 'text' field") from error
    else:
        texts = [path.read_text(encoding="utf-8")]
    ids = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [ids[i:i + block] for i in range(0, len(ids) - 1, block) if len(ids[i:i + block]) > 1]
    if not blocks:
        raise UserError(f"data.lm_path '{path}' holds no text")
    return [Example(torch.tensor(b), torch.tensor(b[1:] + [IGNORE]), 0) for b in blocks]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into a batch: input_ids, attention_mask, labels [B, T]."""
    width = max(len(e.input_ids) for e in examples)
    batch = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        batch[row, :n] = example.input_ids
        labels[row, :n] = example.labels
        attention[row, :n] = 1
    return {"input_ids": batch, "attention_mask": attention, "labels": labels}


def fixed_batches(examples: list[Example], size: int, pad_id: int, max_batches: int = 0) -> list[dict]:
    """Consecutive batches of `size` (validation: the same batches every time); 0 = all of them."""
    stop = len(examples) if not max_batches else min(len(examples), size * max_batches)
    return [collate(examples[i:i + size], pad_id) for i in range(0, stop, size)]


def left_pad(prompts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompts for batched generation (new tokens then line up on the right)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        attention[row, width - len(prompt):] = 1
    return {"input_ids": ids, "attention_mask": attention}


class BatchStream:
    """Endless shuffled micro-batches over a list of items; its position is resumable.

    Each epoch is a permutation drawn from (seed, epoch), so the stream depends only on
    the seed and how many batches were taken, never on global RNG state.
    """

    def __init__(self, items: list, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if not items:
            raise UserError("no training examples left after filtering; check the data and length limits")
        self.items, self.batch_size, self.seed = items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.taken = 0  # global batches taken (each rank takes its own slice of each)
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.items), generator=generator).tolist()}
        return self._orders[epoch]

    def next(self) -> list:
        global_batch = self.batch_size * self.world_size
        start = self.taken * global_batch
        picks = []
        for k in range(start + self.rank * self.batch_size, start + (self.rank + 1) * self.batch_size):
            epoch, index = divmod(k, len(self.items))
            picks.append(self.items[self._order(epoch)[index]])
        self.taken += 1
        return picks

    def state_dict(self) -> dict:
        return {"taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.taken = state["taken"]
