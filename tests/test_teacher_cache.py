"""The top-k teacher cache end to end: cache-teacher writes it (resumably, the same files from
1 or 2 processes), distill trains from it with no teacher model, a sweep shares it, and a cache
that does not fit the run is refused with one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distillm_cli.data.batches import collate
from distillm_cli.losses import topk_of_logits
from distillm_cli.teacher import cache as tc

from .conftest import run_cli

DATA = ["data.max_examples=40"]  # 40 train + 40 valid toy examples: seconds per run
STEPS = ["off_policy=none", "train.max_steps=2", "train.micro_batch_size=8", "train.eval_interval=0"]
NO_TEACHER = ["teacher_dir=/nonexistent/teacher", "model.teacher=no-such-teacher"]  # fails if ever loaded


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def shard_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("shard-*/*.npy"))}


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory) -> Path:
    """k >= V: the whole teacher distribution, in 3+ shards."""
    root = tmp_path_factory.mktemp("cache") / "full"
    result = run_cli("cache-teacher", *DATA, "cache.k=100000", "cache.shard_positions=300", "cache.batch_size=7",
                     f"run_dir={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_the_cache_holds_the_teachers_rows(full_cache, compose_cfg):
    manifest = json.loads((full_cache / "manifest.json").read_text())
    summary = json.loads((full_cache / "summary.json").read_text())
    assert manifest["complete"] and manifest["k"] == manifest["vocab"] == summary["k"]
    assert manifest["temperature"] == 1.0 and manifest["template"] == "compact" and manifest["id_dtype"] == "uint16"
    assert len(manifest["shards"]) >= 3 and sum(s["positions"] for s in manifest["shards"]) == manifest["positions"]
    k, positions = manifest["k"], manifest["positions"]
    # 2-byte ids + 4-byte log-probs per entry, a 4-byte tail per position; the rest is a small constant.
    assert 6 * k + 4 <= summary["bytes_per_position"] <= 6 * k + 4 + 4096 * len(manifest["shards"]) / positions + 24

    # The rows of a batch are the teacher's own top-k of its logits (the k = V case: everything).
    from distillm_cli.models.loading import load_model, load_tokenizer, response_logits

    cfg = compose_cfg("distill", *DATA)
    tokenizer = load_tokenizer(cfg, "teacher")
    examples = tc.run_examples(cfg, tokenizer)
    assert manifest["data_hash"] == tc.data_hash([tc.example_key(e.input_ids, e.labels) for e in examples])
    batch = collate(examples[3:9], tokenizer.pad_token_id)
    ids, lps, tail = tc.TeacherCache(full_cache).rows(batch)
    teacher = load_model(cfg, "teacher", tokenizer, seed=cfg.seed + 1).eval()
    with torch.no_grad():
        logits, _ = response_logits(teacher, batch, torch.device("cpu"), len(tokenizer))
    want_ids, want_lps, _ = topk_of_logits(logits, k)
    assert torch.equal(ids, want_ids) and torch.allclose(lps, want_lps.float(), atol=1e-6)
    assert torch.isinf(tail).all()


def test_distill_from_the_cache_loads_no_teacher_and_equals_the_live_teacher(full_cache, tmp_path):
    cached, live = tmp_path / "cached", tmp_path / "live"
    result = run_cli("distill", *DATA, *STEPS, "loss=skew_rkl", f"teacher_cache={full_cache}", *NO_TEACHER,
                     f"run_dir={cached}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((cached / "summary.json").read_text())
    assert summary["teacher"].startswith(f"cache {full_cache}")
    result = run_cli("distill", *DATA, *STEPS, "loss=skew_rkl", f"run_dir={live}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((live / "summary.json").read_text())["teacher"] == "live"
    first_cached, first_live = metrics(cached)[0], metrics(live)[0]
    assert abs(first_cached["loss"] - first_live["loss"]) <= 1e-5 * abs(first_live["loss"])
    assert first_cached["tokens"] == first_live["tokens"]


def test_a_sweep_reuses_one_cache(full_cache, tmp_path):
    """The command as a user types it: no off_policy named, so the default adaptive falls to none."""
    sweep = tmp_path / "sweep"
    result = run_cli("distill", "-m", "loss=fkl,skew_fkl,skew_rkl", *DATA, *STEPS[1:], f"teacher_cache={full_cache}",
                     *NO_TEACHER, f"run_dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("using off_policy=none") == 1
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    assert sorted(s["loss"] for s in summaries) == ["fkl", "skew_fkl", "skew_rkl"]
    assert all(s["teacher"].startswith("cache ") and s["steps"] == 2 for s in summaries)
    assert all("off_policy=none" in (run / ".hydra" / "overrides.yaml").read_text() for run in runs)


def test_an_interrupted_cache_write_continues(tmp_path):
    root = tmp_path / "cache"
    args = ["cache-teacher", *DATA, "cache.k=5", "cache.shard_positions=250", "cache.logprob_dtype=float16",
            f"run_dir={root}"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    whole = shard_files(root)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["logprob_dtype"] == "float16" and np.load(root / "shard-00000" / "logprobs.npy").dtype == np.float16
    # A kill part-way: the last shard never renamed into place (a half-written temporary left
    # behind), the manifest not yet complete.
    last = root / manifest["shards"][-1]["name"]
    shutil.rmtree(last)
    partial = root / f".{last.name}.tmp-0"
    partial.mkdir()
    (partial / "ids.npy").write_bytes(b"\x93NUMPY garbage")
    tc.write_manifest(root, {**manifest, "complete": False, "shards": []})
    refused = run_cli("distill", *DATA, *STEPS, f"teacher_cache={root}")
    assert refused.returncode == 2 and "is incomplete" in refused.stderr and "Traceback" not in refused.stderr
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((root / "summary.json").read_text())["written_shards"] == 1
    assert shard_files(root) == whole and not partial.exists()
    assert json.loads((root / "manifest.json").read_text())["complete"]


def test_a_cache_that_does_not_fit_the_run_is_refused(full_cache, tmp_path, compose_cfg):
    def refusal(*overrides: str) -> str:
        result = run_cli("distill", *DATA, *overrides, f"run_dir={tmp_path / 'never'}")
        assert result.returncode == 2, result.stderr[-2000:]
        lines = [line for line in result.stderr.splitlines() if line.startswith("distillm: error:")]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        return lines[0]

    assert "loss.temperature=2.0" in refusal(*STEPS, f"teacher_cache={full_cache}", "loss.temperature=2.0")
    assert "written for other data" in refusal(*STEPS, f"teacher_cache={full_cache}", "data.toy_length=2")
    # an off_policy named with a cache is kept, and refused when it needs fresh samples
    assert "off_policy=none" in refusal(*STEPS[1:], f"teacher_cache={full_cache}", "off_policy=adaptive")
    assert "off_policy=none" in refusal(*STEPS[1:], f"teacher_cache={full_cache}", "experiment=distillm")
    assert "does not exist" in refusal(*STEPS, f"teacher_cache={tmp_path / 'nothing'}")

    # Another tokenizer: the same cache with the manifest of a different vocabulary.
    other = tmp_path / "other"
    shutil.copytree(full_cache, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["tokenizer"] = {"hash": "0123456789abcdef", "tokens": 50257}
    tc.write_manifest(other, manifest)
    from distillm_cli.errors import UserError
    from distillm_cli.models.loading import load_tokenizer
    from distillm_cli.stages import STAGES

    cfg = compose_cfg("distill", *DATA, *STEPS, f"teacher_cache={other}", f"run_dir={tmp_path / 'x'}")
    problems = tc.cache_problems(cfg, load_tokenizer(cfg, "student"))
    assert len(problems) == 1 and "another tokenizer (50257 tokens" in problems[0]
    with pytest.raises(UserError, match="another tokenizer"):
        STAGES["distill"](cfg)  # the stage's preflight stops it before any work
    cfg = compose_cfg("distill", *DATA, *STEPS, f"teacher_cache={full_cache}", "data.template=alpaca")
    assert "data.template=compact" in tc.cache_problems(cfg, load_tokenizer(cfg, "student"))[0]
    with pytest.raises(UserError, match="loss=distillm2"):
        compose_cfg("distill", *STEPS, f"teacher_cache={full_cache}", "loss=distillm2")


def test_shard_plan_and_keys():
    assert tc.shard_plan([3, 3, 3, 3, 3], 6) == [(0, 2), (2, 4), (4, 5)]
    assert tc.shard_plan([10], 4) == [(0, 1)]
    assert tc.shard_plan([], 4) == []
    ids, labels = torch.tensor([5, 6, 7]), torch.tensor([-100, 7, -100])
    assert tc.example_key(ids, labels) == tc.example_key(ids.int().tolist(), labels.tolist())
    assert tc.example_key(ids, labels) != tc.example_key(ids, torch.tensor([6, 7, -100]))
    assert tc.id_dtype(65536) == np.uint16 and tc.id_dtype(65537) == np.int32


@pytest.mark.slow
def test_two_processes_write_the_same_cache(full_cache, tmp_path):
    from .test_distributed import launch

    for zero in ("zero0", "zero3"):
        root = tmp_path / zero
        result = launch("cache-teacher", *DATA, "cache.k=100000", "cache.shard_positions=300", "cache.batch_size=7",
                        f"deepspeed={zero}", f"run_dir={root}")
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert shard_files(root) == shard_files(full_cache)
        ours, theirs = (json.loads((r / "manifest.json").read_text()) for r in (root, full_cache))
        assert ours["shards"] == theirs["shards"] and ours["data_hash"] == theirs["data_hash"]
