"""The command line: help, every config option composes, bad input gets one clear line."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from distillm_cli.cli import config_groups
from distillm_cli.config import STAGE_NAMES

from .conftest import run_cli


def test_help_lists_stages_and_groups():
    result = run_cli("--help")
    assert result.returncode == 0
    for stage in STAGE_NAMES:
        assert stage in result.stdout
    for group in ("model", "loss", "off_policy", "data", "deepspeed", "generation", "eval"):
        assert group in result.stdout


def test_every_option_of_every_group_composes(compose_cfg):
    groups = config_groups()
    assert {"model", "loss", "off_policy", "data", "deepspeed", "generation", "eval"} <= set(groups)
    for group, options in groups.items():
        for option in options:
            extra = {("data", "jsonl"): ["data.path=/tmp/x.jsonl"], ("data", "hf"): ["data.hub_id=/tmp/x"]}.get(
                (group, option), [])
            cfg = compose_cfg("distill", f"{group}={option}", *extra)
            OmegaConf.resolve(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "run_dir"]))


@pytest.mark.parametrize("stage", [s.replace("-", "_") for s in STAGE_NAMES])
def test_every_stage_composes(compose_cfg, stage):
    assert compose_cfg(stage).stage == stage.replace("_", "-")


def test_deepspeed_group_holds_deepspeeds_own_keys(compose_cfg):
    cfg = compose_cfg("distill", "deepspeed=zero2", "train.micro_batch_size=3", "train.grad_accum=5")
    assert cfg.deepspeed.zero_optimization.stage == 2
    assert cfg.deepspeed.train_micro_batch_size_per_gpu == 3
    assert cfg.deepspeed.gradient_accumulation_steps == 5


def test_loss_overrides_reach_the_config(compose_cfg):
    cfg = compose_cfg("distill", "loss=skew_rkl", "loss.alpha=0.2")
    assert (cfg.loss.name, cfg.loss.alpha) == ("skew_rkl", 0.2)


def test_cfg_job_prints_the_config():
    result = run_cli("distill", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "loss:" in result.stdout and "deepspeed:" in result.stdout


@pytest.mark.parametrize("args, expected", [
    (["distill", "los=fkl"], "unknown config key 'los'; did you mean 'loss'?"),
    (["distill", "loss=nope"], "unknown option 'nope' for loss"),
    (["distill", "train.max_steps=abc"], "train.max_steps"),
    (["distill", "train.max_steps=0"], "train.max_steps=0 must be a positive integer"),
    (["distill", "train.micro_batch_size=-1"], "train.micro_batch_size=-1"),
    (["distill", "train.log_interval=0"], "train.log_interval=0 must be a positive integer"),
    (["distill", "model.attn_implementation=fast"], "model.attn_implementation='fast'; choose one of sdpa"),
    (["distill", "loss.alpha=1.0"], "loss.alpha=1.0 is outside [0, 1)"),
    (["distill", "loss=jsd", "loss.beta=0"], "loss.beta=0.0 is outside (0, 1)"),
    (["distill", "off_policy=sometimes"], "unknown option 'sometimes' for off_policy"),
    (["distill", "model=huge"], "unknown option 'huge' for model"),
    (["distill", "deepspeed=zero4"], "unknown option 'zero4' for deepspeed"),
    (["distill", "deepspeed.zero_optimization.stage=5"], "unknown ZeRO stage 5"),
    (["distill", "data.max_length=50", "data.max_prompt_length=64"], "must be longer than data.max_prompt_length"),
    (["distill", "generation.backend=nope"], "unknown generation.backend 'nope'; choose one of hf"),
    (["distil"], "unknown stage 'distil' (did you mean 'distill'?)"),
    (["distill", "-m", "loss=fkl,bogus"], "unknown option 'bogus' for loss"),
])
def test_bad_input_gets_one_clear_line(args, expected):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("distillm: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_help_piped_into_a_closed_reader_prints_no_traceback():
    # `distillm --help | head -1`: the reader closes the pipe after one line.
    import os
    import subprocess
    import sys

    reader = subprocess.Popen(["head", "-c", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    writer = subprocess.run([sys.executable, "-m", "distillm_cli.cli", "--help"], stdout=reader.stdin,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            timeout=120)
    reader.stdin.close()
    reader.wait(timeout=60)
    assert "Traceback" not in writer.stderr
