"""A teacher on disk: its top-k distribution at every response position, written once, read
memory-mapped by any number of distill runs (`distillm cache-teacher`, then
`distillm distill teacher_cache=DIR`).

Layout of a cache directory (the run dir of cache-teacher):

    manifest.json          what the cache holds and for which run settings (below); written
                           first with complete=false, rewritten last with complete=true
    shard-00000/           one shard: consecutive examples of the cache's example list
        ids.npy            [P, k] uint16 when the vocabulary has at most 65536 tokens, else int32
        logprobs.npy       [P, k] float32 (cache.logprob_dtype=float16: 2 bytes), descending
        tail.npy           [P] float32: log(1 − Σ top-k p), −inf when nothing is left
        keys.npy           [E, 16] uint8: the example key of each example (below)
        offsets.npy        [E + 1] int64: example e owns rows offsets[e]:offsets[e + 1]
    shard-00001/ ...

P is the number of response positions (labels != −100) of the shard's examples, in
order. Bytes per position: k · (2 + 4) + 4 with uint16 ids and float32 log-probabilities
(6 bytes per kept entry plus the tail), or k · (4 + 2) + 4 for a vocabulary above 65536
with float16 log-probabilities; plus 24 bytes per example for its key and offset. The
log-probabilities are the teacher's at loss.temperature (log_softmax(logits / T)).

An example's key is a 16-byte BLAKE2b digest of its input ids and labels: the same
rendered example gets the same rows whichever list or order it comes in (dataset
responses, generations=, validation), and a batch finds its rows from its own tokens.

Atomic and resumable: a shard is written into a temporary directory, every file fsynced,
and renamed into place; a re-run with the same settings skips the shards that exist. The
manifest names the teacher, the tokenizer (a hash of its vocabulary, special tokens and
chat template), the template, temperature, k, the id / log-prob dtypes, and a hash of the
encoded examples (the key list); a distill run refuses a cache made with another
tokenizer, template or temperature, or one that lacks an example the run needs
(`cache_problems`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.formats import IGNORE, Example
from ..errors import UserError

MANIFEST = "manifest.json"
VERSION = 1
KEY_BYTES = 16
LOGPROB_DTYPES = {"float32": np.float32, "float16": np.float16}


def example_key(input_ids, labels) -> bytes:
    """16-byte digest of an example's token ids and labels (its identity in the cache)."""
    ids = np.asarray(torch.as_tensor(input_ids).cpu(), dtype=np.int64)
    lab = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    digest.update(ids.tobytes())
    digest.update(b"|")
    digest.update(lab.tobytes())
    return digest.digest()


def data_hash(keys: list[bytes]) -> str:
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key)
    return digest.hexdigest()[:16]


def tokenizer_identity(tokenizer) -> dict:
    """{hash, tokens}: the vocabulary, special tokens and chat template, hashed."""
    payload = {"vocab": sorted(tokenizer.get_vocab().items()),
               "special": [str(getattr(tokenizer, name, None)) for name in
                           ("eos_token", "pad_token", "bos_token", "unk_token")],
               "chat_template": getattr(tokenizer, "chat_template", None) or ""}
    text = json.dumps(payload, ensure_ascii=False)
    return {"hash": hashlib.sha256(text.encode()).hexdigest()[:16], "tokens": len(tokenizer)}


def id_dtype(vocab: int):
    """uint16 holds every id of a vocabulary up to 65536 tokens (2 bytes); larger ones need int32."""
    return np.uint16 if vocab <= 2**16 else np.int32


def run_examples(cfg, tokenizer) -> list[Example]:
    """What a distill run asks the teacher about: the training split, generations= and the
    validation split, each rendered example once (first occurrence kept, in that order)."""
    from ..data.sources import encode_split, read_generations

    examples = encode_split(cfg, tokenizer, cfg.data.train_split)
    if cfg.generations:
        examples += read_generations(cfg.generations, tokenizer, cfg)
    examples += encode_split(cfg, tokenizer, cfg.data.valid_split)
    seen, unique = set(), []
    for example in examples:
        key = example_key(example.input_ids, example.labels)
        if key not in seen:
            seen.add(key)
            unique.append(example)
    return unique


def positions(example: Example) -> int:
    return int((example.labels != IGNORE).sum())


def shard_plan(counts: list[int], shard_positions: int) -> list[tuple[int, int]]:
    """Consecutive example ranges [lo, hi) of about shard_positions positions each."""
    plan, lo, total = [], 0, 0
    for i, count in enumerate(counts):
        total += count
        if total >= shard_positions:
            plan.append((lo, i + 1))
            lo, total = i + 1, 0
    if lo < len(counts):
        plan.append((lo, len(counts)))
    return plan


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())


def write_shard(root: Path, index: int, arrays: dict, tag: str) -> None:
    """Write one shard atomically: into a temporary directory, fsynced, renamed into place."""
    final = root / shard_name(index)
    tmp = root / f".{shard_name(index)}.tmp-{tag}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        _save(tmp / f"{name}.npy", array)
    _fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)  # a shard left by a run of other settings (overwrite=true)
    os.rename(tmp, final)
    _fsync_dir(root)


def shard_done(root: Path, index: int) -> bool:
    return (root / shard_name(index) / "offsets.npy").exists()


def write_manifest(root: Path, manifest: dict) -> None:
    tmp = root / f".{MANIFEST}.tmp"
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, root / MANIFEST)
    _fsync_dir(root)


def read_manifest(root: str | Path) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def shard_arrays(examples: list[Example], rows: list[tuple], vocab: int, logprob_dtype: str) -> dict:
    """The arrays of one shard from each example's (ids [n, k], logprobs [n, k], tail [n]) tensors."""
    ids = np.concatenate([r[0].cpu().numpy() for r in rows]).astype(id_dtype(vocab))
    lps = np.concatenate([r[1].float().cpu().numpy() for r in rows]).astype(LOGPROB_DTYPES[logprob_dtype])
    tail = np.concatenate([r[2].float().cpu().numpy() for r in rows]).astype(np.float32)
    counts = [r[0].shape[0] for r in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    keys = np.frombuffer(b"".join(example_key(e.input_ids, e.labels) for e in examples), dtype=np.uint8)
    return {"ids": ids, "logprobs": lps, "tail": tail, "keys": keys.reshape(len(examples), KEY_BYTES),
            "offsets": offsets}


# ----------------------------------------------------------------------------- reading


@dataclass
class _Shard:
    path: Path
    arrays: dict | None = None

    def get(self, name: str) -> np.ndarray:
        if self.arrays is None:
            self.arrays = {n: np.load(self.path / f"{n}.npy", mmap_mode="r") for n in ("ids", "logprobs", "tail")}
        return self.arrays[name]


class TeacherCache:
    """A finished cache, memory-mapped: rows(batch) gives the teacher's top-k rows of a batch."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = read_manifest(self.root)
        if manifest is None:
            raise UserError(f"teacher_cache='{root}' holds no teacher cache (no {MANIFEST}); write one with "
                            f"`distillm cache-teacher run_dir={root}`")
        if not manifest.get("complete"):
            raise UserError(f"teacher_cache='{root}' is incomplete; rerun `distillm cache-teacher run_dir={root}` "
                            "with the same settings to finish it")
        self.manifest = manifest
        self.k = int(manifest["k"])
        self.shards = [_Shard(self.root / s["name"]) for s in manifest["shards"]]
        self.index: dict[bytes, tuple[int, int, int]] = {}
        for number, shard in enumerate(self.shards):
            keys = np.load(shard.path / "keys.npy")
            offsets = np.load(shard.path / "offsets.npy")
            for e in range(keys.shape[0]):
                self.index[keys[e].tobytes()] = (number, int(offsets[e]), int(offsets[e + 1]))

    def example_rows(self, key: bytes, expected: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        entry = self.index.get(key)
        if entry is None or entry[2] - entry[1] != expected:
            raise UserError(f"teacher_cache='{self.root}' has no rows for an example this run trains on; rewrite "
                            "it with `distillm cache-teacher` and this run's data settings")
        shard, lo, hi = entry
        part = self.shards[shard]
        return part.get("ids")[lo:hi], part.get("logprobs")[lo:hi], part.get("tail")[lo:hi]

    def rows(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [N, k] long, logprobs [N, k] float32, tail [N] float32) at the batch's N label positions."""
        ids_b, labels_b, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
        parts = []
        for b in range(ids_b.shape[0]):
            n = int(attention[b].sum())
            labels = labels_b[b, :n]
            count = int((labels != IGNORE).sum())
            if count:
                parts.append(self.example_rows(example_key(ids_b[b, :n], labels), count))
        if not parts:
            return (torch.zeros((0, self.k), dtype=torch.long), torch.zeros((0, self.k)), torch.zeros(0))
        ids = torch.from_numpy(np.concatenate([p[0] for p in parts]).astype(np.int64))
        lps = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.float32))
        tail = torch.from_numpy(np.concatenate([p[2] for p in parts]).astype(np.float32))
        return ids, lps, tail


def cache_problems(cfg, tokenizer, examples: list[Example] | None = None, *, coverage: bool = True) -> list[str]:
    """Why teacher_cache cannot serve this run (one line each, naming the fix); [] when it can.

    coverage: also check that every example the run reads (``examples``, default: encoded
    here) has its rows in the cache (the preflight does; opening the cache does not repeat it)."""
    root = cfg.teacher_cache
    manifest = read_manifest(root)
    rewrite = f"or rewrite the cache: `distillm cache-teacher run_dir={root}` with this run's settings"
    if manifest is None:
        return [f"teacher_cache='{root}' holds no teacher cache (no {MANIFEST}); write one with "
                f"`distillm cache-teacher run_dir={root}`"]
    if not manifest.get("complete"):
        return [f"teacher_cache='{root}' is incomplete ({len(manifest.get('shards', []))} of "
                f"{manifest.get('planned_shards', '?')} shards); rerun `distillm cache-teacher run_dir={root}` "
                "with the same settings to finish it"]
    problems = []
    if float(manifest["temperature"]) != float(cfg.loss.temperature):
        problems.append(f"teacher_cache='{root}' holds the teacher at temperature {manifest['temperature']}, this "
                        f"run uses loss.temperature={cfg.loss.temperature}; set loss.temperature="
                        f"{manifest['temperature']} {rewrite}")
    ours = tokenizer_identity(tokenizer)
    if manifest["tokenizer"]["hash"] != ours["hash"]:
        problems.append(f"teacher_cache='{root}' was written with another tokenizer ({manifest['tokenizer']['tokens']}"
                        f" tokens, hash {manifest['tokenizer']['hash']}) than this run's ({ours['tokens']} tokens, "
                        f"hash {ours['hash']}); give the run the teacher's tokenizer (model.tokenizer=...) {rewrite}")
    from ..data.formats import record_format

    template = record_format(cfg, tokenizer).template
    if manifest["template"] != template:
        problems.append(f"teacher_cache='{root}' was rendered with template '{manifest['template']}', this run "
                        f"uses '{template}'; set data.template={manifest['template']} {rewrite}")
    if problems or not coverage:
        return problems
    if examples is None:
        examples = run_examples(cfg, tokenizer)
    cached = set()
    for shard in manifest["shards"]:
        keys = np.load(Path(root) / shard["name"] / "keys.npy")
        cached.update(keys[e].tobytes() for e in range(keys.shape[0]))
    keys = [example_key(e.input_ids, e.labels) for e in examples if positions(e)]
    missing = sum(1 for key in keys if key not in cached)
    if missing:
        problems.append(f"teacher_cache='{root}' lacks {missing} of the {len(keys)} examples this run trains or "
                        f"validates on (cache data hash {manifest['data_hash']}, this run's "
                        f"{data_hash(keys)}): it was written for other data; {rewrite[3:]}")
    return problems


class CachedTeacher:
    """The teacher seam (teacher/__init__.py) served from a cache: no model is loaded.

    It answers ``response_topk(batch)``; the objective (train/objectives.py) then takes
    the sparse form of the loss (losses/topk.py). Dense logits do not exist here.
    """

    def __init__(self, cache: TeacherCache, device: torch.device):
        self.cache, self.device = cache, device

    @classmethod
    def load(cls, cfg, tokenizer, runtime) -> CachedTeacher:
        cache = TeacherCache(cfg.teacher_cache)
        problems = cache_problems(cfg, tokenizer, coverage=False)  # the preflight checked the examples
        if problems:
            raise UserError(*problems)
        return cls(cache, runtime.device)

    def describe(self) -> str:
        m = self.cache.manifest
        return f"cache {self.cache.root} (k={m['k']}, T={m['temperature']}, teacher {m['teacher']})"

    @torch.no_grad()
    def response_topk(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids [N, k], logprobs [N, k], tail [N]) at the batch's N label positions, on the run's device."""
        return tuple(x.to(self.device) for x in self.cache.rows(batch))

    def response_logits(self, batch: dict):
        raise UserError("teacher_cache holds the teacher's top-k rows only, and this step needs its full logits; "
                        "run it with a live teacher (no teacher_cache)")

    def logits(self, batch: dict):
        self.response_logits(batch)
