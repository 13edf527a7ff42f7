"""`distillm report` on run dirs written by hand, and the optional loggers (no training here)."""
from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from distillm_cli.errors import UserError
from distillm_cli.evaluation import report as report_module
from distillm_cli.evaluation.report import report
from distillm_cli.loggers import LOGGER_NAMES, Logger, make_logger, scalars

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_PX = (900, 500)  # width, height: 9 x 5 inches at 100 dpi, for loss.png and scores.png


# ------------------------------------------------------------------------ fake runs
def loss_at(step: int, offset: float) -> float:
    return offset + 3.0 / step


def write_run(run_dir: Path, *, loss: str, offset: float, overrides: list[str] | None, summary: dict | None,
              steps: int = 10, metrics_dir: str = ".") -> None:
    """A run dir as the stages leave it: config.yaml, metrics.jsonl, summary.json, .hydra/overrides.yaml."""
    run_dir.mkdir(parents=True)
    config = {"stage": "distill", "run_dir": str(run_dir), "seed": 0, "resume": "never",
              "loss": {"name": loss, "alpha": 0.1}, "train": {"max_steps": steps, "lr": 1e-3}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    metrics = run_dir / metrics_dir / "metrics.jsonl"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    with metrics.open("w") as handle:
        for step in range(1, steps + 1):
            record = {"step": step, "loss": loss_at(step, offset), "lr": 1e-3, "tokens": 100, "kd": 0.5, "ce": 0.4,
                      "phi": 0.0, "data_source": "dataset", "buffer_size": 0}
            if step % 5 == 0:
                record["val_loss"] = loss_at(step, offset) + 0.25
            handle.write(json.dumps(record) + "\n")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))


def evaluate_summary(rouge: list[float], em: list[float], model: str = "student") -> dict:
    def stats(values):
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        return {"mean": mean, "std": std, "per_seed": values}

    return {"stage": "evaluate", "split": "test", "prompts": 20, "seeds": [0, 1, 2],
            "models": {model: {"rouge_l": stats(rouge), "exact_match": stats(em), "source": "x", "seconds": 1.0}}}


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A 2-job Hydra multirun dir: 0/ with loss=fkl, 1/ with loss=rkl."""
    root = tmp_path / "sweep"
    write_run(root / "0", loss="fkl", offset=1.0, overrides=["loss=fkl", "train.max_steps=10"],
              summary=evaluate_summary([40.0, 42.0, 44.0], [10.0, 20.0, 30.0]))
    write_run(root / "1", loss="rkl", offset=0.5, overrides=["loss=rkl", "train.max_steps=10"],
              summary=evaluate_summary([50.0, 51.0, 52.0], [30.0, 30.0, 30.0]))
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# --------------------------------------------------------------------------- report
def test_sweep_report_table_json_markdown_and_plots(sweep, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    result = report([str(sweep)])

    table = capsys.readouterr().out
    for text in ("loss=fkl", "loss=rkl", "42.00 ± 2.00", "51.00 ± 1.00"):
        assert text in table
    assert "train.max_steps" not in table  # the same in both runs: not a differing override

    markdown = (sweep / "report.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| 0 ") or line.startswith("| 1 ")]
    assert len(rows) == 2
    assert "loss=fkl" in rows[0] and "loss=rkl" in rows[1]
    assert "| 1.3 |" in rows[0] and "| 0.8 |" in rows[1]  # final loss: offset + 3/10

    saved = json.loads((sweep / "report.json").read_text())
    assert saved == result
    assert result["compared_by"] == "overrides" and result["differing_keys"] == ["loss"]
    assert result["out_dir"] == str(sweep.resolve())
    first, second = result["runs"]
    assert (first["name"], second["name"]) == ("0", "1")
    assert first["differing"] == {"loss": "fkl"} and second["differing"] == {"loss": "rkl"}
    assert first["overrides"] == ["loss=fkl", "train.max_steps=10"]
    assert first["steps"] == 10
    assert first["final_loss"] == pytest.approx(1.3) and second["final_loss"] == pytest.approx(0.8)
    assert first["final_val_loss"] == pytest.approx(1.55) and second["final_val_loss"] == pytest.approx(1.05)
    assert first["scores"]["student"]["rouge_l"] == pytest.approx({"mean": 42.0, "std": 2.0})
    assert first["scores"]["student"]["exact_match"] == pytest.approx({"mean": 20.0, "std": 10.0})
    assert second["scores"]["student"]["exact_match"] == pytest.approx({"mean": 30.0, "std": 0.0})
    assert result["unfinished"] == []

    for name in ("loss.png", "scores.png"):
        assert png_size(sweep / name) == PLOT_PX
        from matplotlib.image import imread

        assert imread(sweep / name).shape[:2] == (PLOT_PX[1], PLOT_PX[0])
    assert set(result["files"]) == {"markdown", "json", "loss_plot", "scores_plot"}


def test_runs_that_differ_only_in_seed_share_a_row_with_the_spread_over_seeds(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    root = tmp_path / "sweep"
    job = 0
    rouge = {"fkl": [30.0, 32.0, 34.0], "skew_rkl": [40.0, 41.0, 42.0]}
    for loss in ("fkl", "skew_rkl"):
        for seed in (0, 1, 2):
            # a training stage with eval.after_training: its own scores, mean over 2 eval seeds
            summary = {"stage": "distill", "train_seconds": 60.0 + 10 * seed,
                       "source_counts": {"dataset": 4, "fresh": 3 + seed, "buffer": 3 - seed},
                       "scores": {"student": {"rouge_l": {"mean": rouge[loss][seed], "std": 5.0},
                                              "exact_match": {"mean": 10.0, "std": 0.0}, "set": "test"}}}
            write_run(root / str(job), loss=loss, offset=float(seed), overrides=[f"loss={loss}", f"seed={seed}"],
                      summary=summary)
            job += 1
    result = report([str(root)])
    assert [r["label"] for r in result["runs"]] == ["loss=fkl", "loss=skew_rkl"]
    fkl, skew = result["runs"]
    assert fkl["seeds"] == ["0", "1", "2"] and fkl["name"] == "0 (+2)" and skew["name"] == "3 (+2)"
    # the std is over training seeds (the runs' means), not the evaluation seeds' 5.0
    assert fkl["scores"]["student"]["rouge_l"] == pytest.approx({"mean": 32.0, "std": 2.0, "n": 3})
    assert skew["scores"]["student"]["rouge_l"] == pytest.approx({"mean": 41.0, "std": 1.0, "n": 3})
    assert fkl["final_loss"] == pytest.approx(0.3 + 1.0) and fkl["final_loss_std"] == pytest.approx(1.0)
    assert fkl["train_seconds"] == pytest.approx(70.0) and fkl["source_counts"] == {"fresh": 4.0, "buffer": 2.0}
    assert result["differing_keys"] == ["loss"]
    table = capsys.readouterr().out
    for text in ("32.00 ± 2.00", "41.00 ± 1.00", "0,1,2", "70s", "4 / 2", "mean ± std over them"):
        assert text in table
    assert "seed=" not in (root / "report.md").read_text()
    assert png_size(root / "scores.png") == PLOT_PX and png_size(root / "loss.png") == PLOT_PX

    each = report([str(root)], per_seed=True)
    assert len(each["runs"]) == 6 and each["runs"][0]["label"] == "loss=fkl seed=0"


def test_sweep_sorts_jobs_numerically_and_notes_unfinished_ones(tmp_path):
    root = tmp_path / "sweep"
    for job in (2, 10):
        write_run(root / str(job), loss="fkl", offset=1.0, overrides=[f"train.lr={job}e-4"],
                  summary={"stage": "distill", "final_loss": 9.0})
    write_run(root / "3", loss="fkl", offset=1.0, overrides=["train.lr=3e-4"], summary=None)  # still running
    result = report([str(root)])
    assert [r["name"] for r in result["runs"]] == ["2", "10"]
    assert [r["label"] for r in result["runs"]] == ["train.lr=2e-4", "train.lr=10e-4"]
    assert result["unfinished"] == [str((root / "3").resolve())]
    assert "scores_plot" not in result["files"] and not (root / "scores.png").exists()
    assert png_size(root / "loss.png") == PLOT_PX


def test_a_key_only_one_run_sets_shows_as_default_there(tmp_path):
    write_run(tmp_path / "a", loss="fkl", offset=1.0, overrides=["loss=fkl"], summary={"stage": "distill"})
    write_run(tmp_path / "b", loss="skew_fkl", offset=1.0, overrides=["train.lr=1e-4"], summary={"stage": "distill"})
    result = report([str(tmp_path / "a"), str(tmp_path / "b")])
    assert [r["differing"] for r in result["runs"]] == [{"loss": "fkl", "train.lr": None},
                                                        {"loss": None, "train.lr": "1e-4"}]
    assert [r["label"] for r in result["runs"]] == ["loss=fkl train.lr=(default)", "loss=(default) train.lr=1e-4"]
    assert result["out_dir"] == str(tmp_path.resolve())


def test_pipeline_dirs_are_one_run_each_and_compared_by_config(tmp_path):
    """Pipeline roots without .hydra: the loss curve from distill/, scores with std from evaluate/."""
    for loss, offset, rouge in (("skew_fkl", 1.0, [30.0, 34.0]), ("skew_rkl", 0.9, [36.0, 36.0])):
        root = tmp_path / "runs" / loss
        summary = {"stage": "pipeline", "stage_seconds": {"distill": 1.0},
                   "scores": {"distilled": {"rouge_l": sum(rouge) / 2, "exact_match": 5.0}}}
        write_run(root, loss=loss, offset=offset, overrides=None, summary=summary, metrics_dir="distill")
        (root / "distill" / "summary.json").write_text(json.dumps({"stage": "distill"}))
        (root / "evaluate").mkdir()
        (root / "evaluate" / "summary.json").write_text(json.dumps(evaluate_summary(rouge, [5.0, 5.0], "distilled")))
    a, b = tmp_path / "runs" / "skew_fkl", tmp_path / "runs" / "skew_rkl"
    result = report([str(a), str(b)])
    assert result["out_dir"] == str((tmp_path / "runs").resolve())  # several paths: their common folder
    assert result["compared_by"] == "config" and "loss.name" in result["differing_keys"]
    assert [r["name"] for r in result["runs"]] == ["skew_fkl", "skew_rkl"]
    assert all(r["stage"] == "pipeline" for r in result["runs"])
    assert result["runs"][0]["differing"]["loss.name"] == "skew_fkl"
    assert "run_dir" not in result["runs"][0]["differing"]  # differs, but never tells runs apart
    assert result["runs"][0]["final_loss"] == pytest.approx(1.3)
    assert result["runs"][0]["scores"]["distilled"]["rouge_l"] == pytest.approx({"mean": 32.0, "std": 2.8284271})
    assert png_size(tmp_path / "runs" / "scores.png") == PLOT_PX
    # The parent folder finds the same two runs, and never the pipeline's own stage folders.
    assert [r["name"] for r in report([str(tmp_path / "runs")])["runs"]] == ["skew_fkl", "skew_rkl"]


def test_single_run_shows_all_its_overrides_and_out_dir_wins(sweep, tmp_path):
    out = tmp_path / "elsewhere"
    result = report([str(sweep / "1")], out=str(out))
    assert result["runs"][0]["label"] == "loss=rkl train.max_steps=10"
    assert (out / "report.md").is_file() and (out / "report.json").is_file() and (out / "loss.png").is_file()
    assert not (sweep / "1" / "report.md").exists()


def test_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        report([str(tmp_path / "nope")])


def test_folder_without_runs_is_a_user_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="no runs under"):
        report([str(tmp_path / "empty")])


def test_main_reports_one_line_and_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_module.main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distillm: error:") and "does not exist" in err and "\n" not in err


def test_main_help_explains_paths_and_out(capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_module.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "distillm report" in text and "--out DIR" in text and "sweep dir" in text


# -------------------------------------------------------------------------- loggers
def test_logger_yaml_files_have_name_and_project():
    conf = resources.files("distillm_cli.conf") / "logger"
    for name in LOGGER_NAMES:
        assert yaml.safe_load((conf / f"{name}.yaml").read_text()) == {"name": name, "project": "distillm"}


def test_none_logger_is_a_no_op_and_unknown_name_is_a_user_error(tmp_path):
    logger = make_logger({"name": "none", "project": "distillm"}, tmp_path)
    assert type(logger) is Logger
    logger.log({"loss": 1.0}, step=1)
    logger.close()
    assert list(tmp_path.iterdir()) == []
    assert type(make_logger(None, tmp_path)) is Logger
    with pytest.raises(UserError, match="unknown logger 'tensorbord'"):
        make_logger({"name": "tensorbord"}, tmp_path)


def test_scalars_keeps_finite_numbers_only():
    record = {"step": 3, "loss": 1.5, "tokens": 7, "data_source": "student", "val_loss": float("nan"), "ok": True}
    assert scalars(record) == {"loss": 1.5, "tokens": 7.0}


def test_missing_packages_name_the_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match="pip install tensorboard"):
        make_logger({"name": "tensorboard"}, tmp_path)
    with pytest.raises(UserError, match="pip install wandb"):
        make_logger({"name": "wandb"}, tmp_path)


def test_tensorboard_logger_writes_scalar_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = make_logger({"name": "tensorboard", "project": "distillm"}, tmp_path)
    for step in (1, 2, 3):
        logger.log({"step": step, "loss": 1.0 / step, "lr": 1e-3, "data_source": "dataset"}, step=step)
    logger.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(tmp_path / "tensorboard"))
    accumulator.Reload()
    assert sorted(accumulator.Tags()["scalars"]) == ["loss", "lr"]
    assert [(e.step, round(e.value, 4)) for e in accumulator.Scalars("loss")] == [(1, 1.0), (2, 0.5), (3, 0.3333)]
