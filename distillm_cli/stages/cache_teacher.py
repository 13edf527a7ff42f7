"""cache-teacher: run the teacher once over the training data and keep its top-k
distribution at every response position on disk (teacher/cache.py), so that distill
runs (`distill teacher_cache=<this run dir>`, a whole `-m` sweep) need no teacher.

Recipe: load the teacher, placed as distill places it (sharded under ZeRO-3) -> encode
what a distill run with these settings reads (data.train_split, generations=,
data.valid_split) -> cut the examples into shards of about cache.shard_positions
positions -> skip the shards an earlier run finished -> shards dealt to the ranks (shard
s to rank s mod world): batches of cache.batch_size through the teacher, log_softmax at
loss.temperature, top cache.k per position plus the tail's log-mass -> each shard written
atomically by its rank -> rank 0 writes the manifest once every shard exists.
The shards do not depend on the number of processes: 1 or N ranks write the same files.
"""
from __future__ import annotations

import shutil
import time

from omegaconf import OmegaConf

from ..data.batches import collate
from ..data.formats import IGNORE, record_format
from ..errors import UserError
from ..losses import topk_of_logits
from ..models.loading import load_tokenizer, model_source, vocab_size
from ..run_dir import RunLog, open_run
from ..runtime import barrier, gather_from_all
from ..teacher import LiveTeacher
from ..teacher import cache as tc
from ..ui import progress_bar


def run(cfg) -> dict:
    runtime, run_dir = open_run(cfg, allow_existing=True)  # a re-run continues the shards
    tokenizer = load_tokenizer(cfg, "teacher")
    vocab, k = vocab_size(tokenizer), min(cfg.cache.k, vocab_size(tokenizer))
    examples = [e for e in tc.run_examples(cfg, tokenizer) if tc.positions(e)]
    counts = [tc.positions(e) for e in examples]
    plan = tc.shard_plan(counts, cfg.cache.shard_positions)
    keys = [tc.example_key(e.input_ids, e.labels) for e in examples]
    header = {"version": tc.VERSION, "teacher": model_source(cfg, "teacher"),
              "tokenizer": tc.tokenizer_identity(tokenizer), "template": record_format(cfg, tokenizer).template,
              "temperature": float(cfg.loss.temperature), "k": k, "vocab": vocab,
              "id_dtype": tc.id_dtype(vocab).__name__, "logprob_dtype": cfg.cache.logprob_dtype,
              "data_hash": tc.data_hash(keys), "examples": len(examples), "positions": sum(counts),
              "data": OmegaConf.to_container(cfg.data, resolve=True), "generations": cfg.generations,
              "planned_shards": len(plan)}
    if runtime.main:
        _claim(run_dir, header, cfg.overwrite)
    barrier(runtime)

    teacher = LiveTeacher.load(cfg, tokenizer, runtime)
    pad, size = tokenizer.pad_token_id, cfg.cache.batch_size
    mine = [s for s in range(len(plan)) if s % runtime.world_size == runtime.rank and not tc.shard_done(run_dir, s)]
    batches = {s: [examples[i:min(i + size, plan[s][1])] for i in range(plan[s][0], plan[s][1], size)] for s in mine}
    forwards = sum(len(b) for b in batches.values())
    # A sharded teacher needs every rank in every forward pass: ranks with less to do repeat a batch.
    most = max(gather_from_all(forwards, runtime)) if teacher.sharded else forwards
    todo = sum(counts[i] for s in mine for i in range(*plan[s]))
    started = time.perf_counter()
    with progress_bar(f"cache-teacher (k={k})", max(todo, 1)) as bar:
        for s in mine:
            rows = []
            for chunk in batches[s]:
                rows += _teacher_rows(teacher, collate(chunk, pad), k, cfg.loss.temperature, cfg.loss.chunk_size)
                bar.advance(sum(tc.positions(e) for e in chunk), tokens=sum(len(e.input_ids) for e in chunk))
            lo, hi = plan[s]
            tc.write_shard(run_dir, s, tc.shard_arrays(examples[lo:hi], rows, vocab, cfg.cache.logprob_dtype),
                           tag=str(runtime.rank))
        for _ in range(most - forwards):
            teacher.response_logits(collate(examples[:1], pad))
    seconds = time.perf_counter() - started
    barrier(runtime)  # every shard is on disk before the manifest says so

    shards = [{"name": tc.shard_name(s), "examples": hi - lo, "positions": sum(counts[lo:hi])}
              for s, (lo, hi) in enumerate(plan)]
    missing = [s["name"] for s in shards if not (run_dir / s["name"] / "offsets.npy").exists()]
    if missing:
        raise UserError(f"cache-teacher: shards {', '.join(missing)} were not written; rerun the same command "
                        "to finish them")
    size_bytes = sum(f.stat().st_size for s in shards for f in (run_dir / s["name"]).iterdir())
    if runtime.main:
        tc.write_manifest(run_dir, {**header, "complete": True, "shards": shards, "bytes": size_bytes})
    barrier(runtime)  # no reader before the manifest
    positions = sum(counts)
    return RunLog(run_dir, runtime).summary({
        "stage": "cache-teacher", "teacher": header["teacher"], "k": k, "temperature": header["temperature"],
        "examples": len(examples), "positions": positions, "shards": len(plan), "written_shards": len(mine),
        "bytes": size_bytes, "bytes_per_position": size_bytes / max(positions, 1),
        "bytes_per_entry": (size_bytes / max(positions, 1)) / max(k, 1), "seconds": seconds,
        "id_dtype": header["id_dtype"], "logprob_dtype": header["logprob_dtype"], "cache": str(run_dir)})


def _claim(run_dir, header: dict, overwrite: bool) -> None:
    """Start or continue the cache in run_dir: a partial cache of other data or settings is refused."""
    previous = tc.read_manifest(run_dir)
    fields = ("teacher", "tokenizer", "template", "temperature", "k", "logprob_dtype", "data_hash", "planned_shards")
    if previous is not None and not overwrite:
        differs = [f for f in fields if previous.get(f) != header.get(f)]
        if differs:
            raise UserError(f"run_dir '{run_dir}' holds a teacher cache of other settings (differs in "
                            f"{', '.join(differs)}); pick a new run_dir or pass overwrite=true")
    if previous is None or overwrite or not previous.get("complete"):
        if overwrite:
            for old in run_dir.glob("shard-*"):
                shutil.rmtree(old, ignore_errors=True)
        tc.write_manifest(run_dir, {**header, "complete": False, "shards": []})


def _teacher_rows(teacher, batch: dict, k: int, temperature: float, chunk_size: int) -> list[tuple]:
    """Per example of the batch: (ids [n, k], logprobs [n, k], tail [n]) at its n label positions."""
    logits, _ = teacher.response_logits(batch)  # [1, N, V]
    ids, lps, tail = topk_of_logits(logits, k, temperature=temperature, chunk_size=chunk_size)
    counts = (batch["labels"] != IGNORE).sum(1).tolist()
    out, lo = [], 0
    for n in counts:
        out.append((ids[lo:lo + n], lps[lo:lo + n], tail[lo:lo + n]))
        lo += n
    return out
