"""End to end through the real CLI: real tiny HF models, real DeepSpeed engines, temp dirs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from .conftest import run_cli

LOSSES = ("fkl", "rkl", "skew_fkl", "skew_rkl", "jsd", "tvd")


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_run_dir(run_dir: Path, steps: int) -> None:
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoint"):
        assert (run_dir / name).exists(), f"{run_dir} lacks {name}"
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == list(range(1, steps + 1))
    for record in metrics:
        assert {"step", "loss", "phi", "data_source", "buffer_size"} <= set(record)
        assert torch.isfinite(torch.tensor(record["loss"]))
    model = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_every_loss_runs_under_zero3_as_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("distill", "-m", f"loss={','.join(LOSSES)}", "deepspeed=zero3", "train.max_steps=3",
                     "train.micro_batch_size=4", "train.eval_interval=0", f"run_dir={sweep}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(runs) == len(LOSSES)
    seen = set()
    for run_dir in runs:
        assert_run_dir(run_dir, steps=3)
        seen.add(json.loads((run_dir / "summary.json").read_text())["loss"])
    assert seen == set(LOSSES)
    report = run_cli("report", str(sweep))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (sweep / "report.md").exists() and (sweep / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (sweep / "report.md").read_text()
    assert all(f"loss={name}" in table for name in LOSSES)


def test_adaptive_off_policy_trains_on_fresh_and_buffered_samples(tmp_path):
    run_dir = tmp_path / "adaptive"
    # The command with a micro-batch of 16 and the toy's 128-sample buffer.
    result = run_cli("distill", "off_policy=adaptive", "off_policy.phi0=1.0", "train.max_steps=20",
                     "train.micro_batch_size=16",
                     "generation.max_new_tokens=16", "train.eval_interval=10", "train.log_interval=5",
                     f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_run_dir(run_dir, steps=20)
    # stderr is a pipe here, as in a cluster log: plain progress lines every 5 steps.
    progress = [line for line in result.stderr.splitlines() if line.startswith("distill skew_fkl  step ")]
    assert [line.split("  ")[1] for line in progress] == ["step 5/20", "step 10/20", "step 15/20", "step 20/20"]
    assert all(re.search(r"loss \d+\.\d{4}  lr \S+ .* tok/s  elapsed \d:\d\d:\d\d  eta ", line) for line in progress)
    sources = [m["data_source"] for m in read_metrics(run_dir)]
    assert "fresh" in sources and "buffer" in sources
    # the seconds spent sampling: only where fresh samples were drawn
    assert all((m["sample_s"] > 0) == (m["data_source"] == "fresh") for m in read_metrics(run_dir))
    sizes = [m["buffer_size"] for m in read_metrics(run_dir)]
    assert sizes == sorted(sizes) and sizes[-1] == min(128, 16 * sources.count("fresh"))


@pytest.mark.parametrize("mode", ["none", "on_policy"])
def test_other_off_policy_modes_run(tmp_path, mode):
    run_dir = tmp_path / mode
    result = run_cli("distill", f"off_policy={mode}", "off_policy.lmbda=1.0", "train.max_steps=3",
                     "train.micro_batch_size=4", "generation.max_new_tokens=8", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    sources = {m["data_source"] for m in read_metrics(run_dir)}
    assert sources == ({"dataset"} if mode == "none" else {"fresh"})


def test_pipeline_end_to_end(tmp_path):
    run_dir = tmp_path / "pipeline"
    result = run_cli("pipeline", "train.max_steps=4", "train.micro_batch_size=4", "eval.max_examples=12",
                     "generate.max_prompts=16", "generation.max_new_tokens=24", "eval.sampling.max_new_tokens=24",
                     f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("sft_teacher", "sft_student", "distill"):
        assert_run_dir(run_dir / stage, steps=4)
    generations = (run_dir / "generate" / "generations.jsonl").read_text().splitlines()
    assert len(generations) == 16 and json.loads(generations[0])["source"] == "teacher"
    distill_cfg = (run_dir / "distill" / "config.yaml").read_text()
    assert str(run_dir / "sft_teacher" / "checkpoint") in distill_cfg
    scores = json.loads((run_dir / "evaluate" / "summary.json").read_text())["models"]
    assert set(scores) == {"teacher", "sft_student", "distilled"}
    assert scores["teacher"]["kl_to_teacher"] < 1e-6 < scores["distilled"]["kl_to_teacher"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["scores"]) == {"teacher", "sft_student", "distilled"}
    assert "distillm pipeline" in result.stdout + result.stderr


def test_a_run_dir_with_another_config_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "mine"
    first = run_cli("sft-student", "train.max_steps=2", "train.micro_batch_size=4", f"run_dir={run_dir}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = (run_dir / "checkpoint" / "model.safetensors").read_bytes()
    second = run_cli("sft-student", "train.max_steps=3", "train.micro_batch_size=4", f"run_dir={run_dir}")
    assert second.returncode == 2
    assert "holds a run with another config" in second.stderr and "Traceback" not in second.stderr
    assert (run_dir / "checkpoint" / "model.safetensors").read_bytes() == before


def test_distillm2_pipeline_curates_pairs_and_regenerates(tmp_path):
    run_dir = tmp_path / "d2"
    result = run_cli("pipeline", "experiment=distillm2", "loss.regenerate=both", "train.max_steps=4",
                     "train.micro_batch_size=4", "eval.max_examples=8", "generate.max_prompts=8",
                     "generation.max_new_tokens=12", "eval.sampling.max_new_tokens=12", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    pair = json.loads((run_dir / "generate" / "generations.jsonl").read_text().splitlines()[0])
    assert {"prompt", "teacher_response", "student_response"} <= set(pair)
    metrics = read_metrics(run_dir / "distill")
    betas = [m["beta"] for m in metrics]
    assert betas[0] == 0.5 and betas[-1] == pytest.approx(1.0) and betas == sorted(betas)
    assert all(0.01 <= m["alpha_t"] <= 0.1 and 0.01 <= m["alpha_s"] <= 0.1 for m in metrics)
    # Validation on pairs curated for the validation prompts, never on training pairs.
    valid = [json.loads(line)["prompt"] for line in (run_dir / "generate_valid" / "generations.jsonl").open()]
    train = {json.loads(line)["prompt"] for line in (run_dir / "generate" / "generations.jsonl").open()}
    assert valid and not set(valid) & train
    summary = json.loads((run_dir / "distill" / "summary.json").read_text())
    assert summary["validation"] == f"{len(valid)} held-out pairs" and summary["val_loss"] > 0
    assert all(m["tokens"] > m["loss_units"] for m in metrics)  # progress counts tokens, the loss averages prompts
    assert set(json.loads((run_dir / "evaluate" / "summary.json").read_text())["models"]) == {
        "teacher", "sft_student", "distilled"}


def test_lora_student_is_saved_as_a_plain_checkpoint(tmp_path):
    run_dir = tmp_path / "lora"
    result = run_cli("distill", "student.lora.r=4", "loss=skew_rkl", "train.max_steps=2", "train.micro_batch_size=4",
                     "off_policy=none", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint")
    assert not any("lora" in name for name, _ in model.named_parameters())


def test_evaluate_several_sets_and_seeds(tmp_path):
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"instruction": "Say yes.", "input": "", "output": "yes"}) + "\n")
    run_dir = tmp_path / "eval"
    result = run_cli("evaluate", "eval=paper", "eval.seeds=[1,2]", "eval.max_examples=6", "+eval.sets.test=",
                     f"+eval.sets.extra={extra}", "eval.sampling.max_new_tokens=8", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sets"] == {"test": 6, "extra": 1}
    scores = summary["models"]["student"]["sets"]["test"]["rouge_l"]
    assert len(scores["per_seed"]) == 2 and 0.0 <= scores["mean"] <= 100.0
    predictions = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 * (6 + 1)
    assert "ROUGE-L" in result.stdout


def test_language_modelling_term_on_plain_text(tmp_path):
    text = tmp_path / "lm.txt"
    text.write_text("plain pre-training text, a few words long. " * 30)
    run_dir = tmp_path / "lm"
    result = run_cli("distill", "loss.lm_coef=1.0", f"data.lm_path={text}", "train.max_steps=2",
                     "train.micro_batch_size=4", "off_policy=none", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    for record in read_metrics(run_dir):
        assert record["lm_ce"] > 0 and record["loss"] == pytest.approx(record["kd"] + record["lm_ce"], rel=1e-4)


def test_teacher_with_a_padded_embedding_distils(tmp_path):
    """A teacher whose embedding has extra rows (e.g. 50304 for 50257 tokens) is cut to the shared vocabulary."""
    from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model

    tokenizer = build_char_tokenizer()
    teacher = build_tiny_model("tiny-teacher", tokenizer)
    teacher.resize_token_embeddings(len(tokenizer) + 29)
    teacher.save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    run_dir = tmp_path / "run"
    result = run_cli("distill", f"teacher_dir={tmp_path / 'teacher'}", "train.max_steps=2", "train.micro_batch_size=4",
                     "off_policy=none", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in read_metrics(run_dir))


def test_gradient_checkpointing_trains_the_same_steps(tmp_path):
    losses = {}
    for flag in ("false", "true"):
        run_dir = tmp_path / f"checkpointing_{flag}"
        result = run_cli("sft-student", f"train.gradient_checkpointing={flag}", "train.max_steps=3",
                         "train.micro_batch_size=8", "train.eval_interval=0", f"run_dir={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
        losses[flag] = [m["loss"] for m in read_metrics(run_dir)]
    assert torch.allclose(torch.tensor(losses["true"]), torch.tensor(losses["false"]), rtol=1e-5)


def test_training_stages_score_their_checkpoint_and_seqkd_trains_on_teacher_answers(tmp_path):
    answers = tmp_path / "answers"
    result = run_cli("generate-student", "generate=teacher", "generation=greedy", "generate.max_prompts=8",
                     "generation.max_new_tokens=8", f"run_dir={answers}")
    assert result.returncode == 0, result.stderr[-3000:]
    scoring = ["eval.after_training=true", "eval.max_examples=4", "eval.seeds=[1,2]",
               "eval.sampling.max_new_tokens=8", "train.max_steps=2", "train.eval_interval=0"]
    plain, seqkd = tmp_path / "sft", tmp_path / "seqkd"
    for run_dir, extra in ((plain, []), (seqkd, [f"generations={answers}"])):
        result = run_cli("sft-student", *scoring, *extra, f"run_dir={run_dir}")
        assert result.returncode == 0, result.stderr[-3000:]
    plain_summary = json.loads((plain / "summary.json").read_text())
    seqkd_summary = json.loads((seqkd / "summary.json").read_text())
    assert seqkd_summary["train_examples"] == plain_summary["train_examples"] + 8  # SeqKD: + the answers
    distilled = tmp_path / "distill"
    result = run_cli("distill", "off_policy=none", *scoring, f"generations={answers}", f"run_dir={distilled}")
    assert result.returncode == 0, result.stderr[-3000:]
    for summary in (plain_summary, seqkd_summary, json.loads((distilled / "summary.json").read_text())):
        student = summary["scores"]["student"]
        assert student["set"] == "test" and student["seeds"] == [1, 2]
        assert len(student["rouge_l"]["per_seed"]) == 2 and 0.0 <= student["rouge_l"]["mean"] <= 100.0
    report = run_cli("report", str(tmp_path))
    assert report.returncode == 0, report.stderr[-3000:]
    assert "ROUGE-L" in (tmp_path / "report.md").read_text()
    missing = run_cli("sft-student", f"generations={tmp_path / 'nowhere'}", f"run_dir={tmp_path / 'bad'}")
    assert missing.returncode == 2 and "run generate-student first" in missing.stderr
