"""Where records come from: the built-in toy tasks, local jsonl files, a hub dataset, the
generations.jsonl of generate-student, and plain text for the LM term. `load_split` is
the one entry point the stages use; a new data source is a new branch of it here.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from .formats import IGNORE, Example, encode_record, normalise_record


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
            records.append(normalise_record(raw, f"{path}:{number}"))
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
    return [normalise_record(dict(row), f"{cfg.data.hub_id}[{i}]") for i, row in enumerate(rows)]


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
