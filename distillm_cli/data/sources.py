"""Where records come from: the built-in toy tasks, local jsonl files, any Hugging Face
dataset (hub name, save_to_disk folder, parquet/json/jsonl/csv files), the
generations.jsonl of generate-student, and plain text for the LM term. `load_split` is
the one entry point the stages use; a new data source is a new branch of it here.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from .formats import IGNORE, Example, normalise_record, record_format


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


DATA_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def looks_local(name: str) -> bool:
    """A path the user meant (it need not exist), as opposed to a hub name such as org/dataset."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in DATA_FILE_BUILDERS


def _local_files(path: Path) -> tuple[str, list[str]]:
    """The datasets builder and data files of a file, or of a folder of same-format files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in DATA_FILE_BUILDERS)
    kinds = {DATA_FILE_BUILDERS.get(p.suffix) for p in files}
    if not files or None in kinds:
        raise UserError(f"data.hub_id='{path}' is neither a save_to_disk folder nor parquet/json/jsonl/csv "
                        "files; point it at one of those")
    if len(kinds) > 1:
        raise UserError(f"data.hub_id='{path}' mixes file formats ({', '.join(sorted(kinds))}); keep one per folder")
    return kinds.pop(), [str(p) for p in files]


def open_hf_dataset(data):
    """The dataset of data.hub_id: a save_to_disk folder, local data files, or a hub dataset."""
    import datasets

    name, path = data.hub_id, Path(data.hub_id).expanduser()
    if path.exists():
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
            return datasets.load_from_disk(str(path))
        builder, files = _local_files(path)
        return datasets.load_dataset(builder, data_files=files)  # one "train" split
    if looks_local(name):
        raise UserError(f"data.hub_id='{name}' does not exist; point it at a dataset folder or file")
    try:
        return datasets.load_dataset(name, data.hub_config or None)
    except Exception as error:  # noqa: BLE001 - any hub failure gets the same advice
        raise UserError(f"cannot load '{name}' from the hub ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:160] if str(error) else ''}); offline, point data.hub_id "
                        "at a local folder (save_to_disk, or parquet/json/jsonl/csv files)") from error


def _split(dataset, name: str, hub_id: str):
    import datasets

    if isinstance(dataset, datasets.Dataset):
        if name not in ("train", ""):
            raise UserError(f"data.hub_id='{hub_id}' holds one split; set data.hub_split=train "
                            "(and no data.hub_valid_split)")
        return dataset
    if name not in dataset:
        raise UserError(f"data.hub_id='{hub_id}' has no split '{name}'; choose data.hub_split / "
                        f"data.hub_valid_split from {', '.join(dataset)}")
    return dataset[name]


def _check_columns(table, data, label: str) -> None:
    missing = sorted(c for c in dict(data.columns).values() if c not in table.column_names)
    if missing:
        raise UserError(f"data.columns names column(s) {', '.join(missing)} that {label} does not have; its columns "
                        f"are {', '.join(table.column_names)}")


def _rows(table, data, label: str) -> list[dict]:
    """Records of a dataset split, with data.columns renaming columns onto record fields."""
    columns = dict(data.columns)
    records = []
    for index, row in enumerate(table):
        row = dict(row)
        for field_name, column in columns.items():
            row[field_name] = row.pop(column)
        records.append(normalise_record(row, f"{label}[{index}]"))
    return records


def load_hf_records(data, split: str) -> list[dict]:
    """data=hf: the training rows of hub_split, or the validation rows for valid/test."""
    validating, separate = split in ("valid", "test"), bool(data.hub_valid_split)
    name = data.hub_valid_split if validating and separate else data.hub_split
    table, label = _split(open_hf_dataset(data), name, data.hub_id), f"{data.hub_id}:{name}"
    _check_columns(table, data, label)
    if not separate:  # the first valid_size rows validate, the rest train
        if data.valid_size >= len(table):
            raise UserError(f"data.valid_size={data.valid_size} leaves no training rows of the {len(table)} in "
                            f"'{data.hub_id}'; set a smaller data.valid_size or data.hub_valid_split=<split>")
        table = table.select(range(data.valid_size) if validating else range(data.valid_size, len(table)))
    return _rows(table, data, label)


def load_split(cfg, split: str, *, need_responses: bool = True) -> list[dict]:
    """The records of one split (names as in DataConfig: teacher_train, train, unlabelled, valid, test)."""
    data = cfg.data
    if data.name == "toy":
        from .toy import make_toy_splits

        splits = make_toy_splits(seed=0, tasks=tuple(data.toy_tasks) or None, length=data.toy_length)
        if split not in splits:
            raise UserError(f"the toy data has no split '{split}'; choose one of {', '.join(splits)}")
        records = splits[split]
    elif data.name == "jsonl":
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
        records = load_hf_records(data, split)
    if data.max_examples:
        records = records[: data.max_examples]
    if data.train_examples and split == data.train_split:
        records = records[: data.train_examples]
    if not records:
        raise UserError(f"split '{split}' of data={data.name} is empty; check data.path / data.valid_size")
    if need_responses:
        missing = sum(1 for r in records if not r.get("output"))
        if missing:
            raise UserError(f"{missing} of {len(records)} records in split '{split}' have no response (an "
                            "assistant turn, or output/response); training needs one per record")
    return records


def encode_split(cfg, tokenizer, split: str) -> list[Example]:
    fmt = record_format(cfg, tokenizer)
    return [fmt.encode(record) for record in load_split(cfg, split)]


def read_generations(path: str | Path, tokenizer, cfg) -> list[Example]:
    """Training examples from a generate-student generations.jsonl (prompt + response).

    A response the length limit cut off (truncated: true) is trained on without an end token.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "generations.jsonl"
    fmt = record_format(cfg, tokenizer)
    return [fmt.encode(record) for record in read_jsonl(path) if record.get("output") is not None]


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
