"""scripts/compare.py (`make compare`): the runs it plans and the tables it builds from their summaries."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_script", ROOT / "scripts" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scored(run_dir: Path, rouge: float, **extra) -> None:
    run_dir.mkdir(parents=True)
    scores = {"rouge_l": {"mean": rouge, "std": 0.0}, "exact_match": {"mean": rouge / 2, "std": 0.0}}
    (run_dir / "summary.json").write_text(json.dumps({"train_seconds": 10.0, **extra, "scores": {"student": scores}}))


def test_every_run_starts_from_its_seeds_sft_student_at_equal_steps(compare, tmp_path):
    runs = compare.from_sft_student(tmp_path, 1, [1, 2])
    names = [name for name, _, _ in runs]
    assert names[:3] == ["seed1/losses", "seed1/seqkd", "seed1/control"]
    assert len(names) == 3 + len(compare.OFF_POLICY)
    sweep_args, sweep_dirs = runs[0][1], runs[0][2]
    assert sweep_args[:3] == ["distill", "-m", "loss=fkl,rkl,jsd,tvd,skew_fkl,skew_rkl"]
    assert len(sweep_dirs) == 6
    # the sweeps read the shared cache and never name the live teacher; part 2's fresh samples need it
    assert f"teacher_cache={tmp_path / 'cache'}" in sweep_args and not any(a.startswith("teacher_dir=")
                                                                          for a in sweep_args)
    assert all(f"teacher_dir={tmp_path / 'teacher' / 'checkpoint'}" in args for _, args, _ in runs[3:])
    for _, args, _ in runs:
        # the seed goes into the path by interpolation, so runs of one setting differ in `seed` alone
        assert "seed=1" in args and f"student_dir={tmp_path / 'sft'}/seed${{seed}}/checkpoint" in args
        assert "eval.after_training=true" in args
    for _, args, _ in runs[:3]:
        assert set(compare.EQUAL_STEPS) <= set(args)
    assert f"generations={tmp_path / 'answers'}" in runs[1][1] and not any("generations" in a for a in runs[2][1])
    assert "off_policy.replay=false" in runs[-1][1]
    name, args, dirs = compare.capacity(tmp_path, 2)
    # the reference is trained as the teacher is, from the student's own init (no student_dir)
    assert {"seed=2", "data.train_split=teacher_train", "train.max_steps=1000"} <= set(args)
    assert not any(a.startswith("student_dir=") for a in args) and dirs == [tmp_path / "capacity" / "seed2"]


def test_gap_closed_is_measured_per_seed_between_sft_only_and_capacity(compare, tmp_path):
    seeds = [0, 1]
    scored(tmp_path / "teacher", 70.0)
    for seed, (start, reach) in zip(seeds, [(10.0, 30.0), (20.0, 30.0)]):
        scored(tmp_path / "sft" / f"seed{seed}", start)
        scored(tmp_path / "capacity" / f"seed{seed}", reach)
        scored(tmp_path / "control" / f"seed{seed}", start + 2.0)
        scored(tmp_path / "seqkd" / f"seed{seed}", start + 5.0)
        for job in range(len(compare.LOSSES)):
            scored(tmp_path / "losses" / f"seed{seed}" / str(job), start + job)
    headers, rows, figures = compare.loss_table(tmp_path, seeds)
    assert headers[3:5] == ["gap closed", "minus SeqKD, same seed"]
    seqkd = figures["SeqKD: + 300 SFT steps on labels + teacher answers"]
    assert seqkd["gap_closed_percent"] == pytest.approx([25.0, 50.0])  # 5 of 20, 5 of 10
    assert figures["distill loss=skew_rkl"]["rouge_l"] == [15.0, 25.0]
    by_name = {row[0]: row for row in rows}
    assert by_name["SeqKD: + 300 SFT steps on labels + teacher answers"][3] == "38 ± 18 %"
    assert by_name["teacher"][1] == "70.00 ± 0.00" and by_name["teacher"][3] == ""
    # fkl is job 0: start + 0, 5 below SeqKD on both seeds
    assert figures["distill loss=fkl"]["minus_seqkd"] == [-5.0, -5.0]
    assert by_name["distill loss=fkl"][4] == "-5.00 ± 0.00 (above on 0/2 seeds)"


def test_the_sweeps_cache_keeps_every_token_so_each_loss_is_the_dense_one(compare, compose_cfg):
    from distillm_cli.models.loading import load_tokenizer, vocab_size

    cfg = compose_cfg("distill")
    assert compare.EXACT_CACHE_K >= vocab_size(load_tokenizer(cfg, "student"))
