"""The final checkpoint (issue 17, "saving at scale"): gathered a module at a time under ZeRO-3, LoRA merged.

The tiny student's tensors are all under DeepSpeed's default stage3_param_persistence_threshold, so
ZeRO-3 would keep every one of them whole on every rank; the ZeRO-3 tests set it to 0 so the weights
really are partitioned and the save really has to gather them.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT, run_cli
from .test_distributed import DEEPSPEED, free_port, launch

PARTITIONED = "+deepspeed.zero_optimization.stage3_param_persistence_threshold=0"
PROBE = ["student.lora.r=4", "train.lr=1e-2", "train.max_steps=2", "train.micro_batch_size=4", PARTITIONED]
DISTILL = ["train.max_steps=2", "off_policy=none", "train.eval_interval=0"]


def probe(out: Path, *overrides: str, processes: int = 1) -> dict:
    """tests/zero3_save_probe.py: train a few steps, save, reload; what rank 0 measured."""
    command = [sys.executable, "-m", "tests.zero3_save_probe"] if processes == 1 else \
        [DEEPSPEED, "--num_gpus", str(processes), "--master_port", str(free_port()), "--no_local_rank", "--module",
         "tests.zero3_save_probe"]
    result = subprocess.run([*command, str(out), *overrides], cwd=ROOT, env={**os.environ, "DS_ACCELERATOR": "cpu"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def saved_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(checkpoint / "model.safetensors")


def test_lora_merge_equals_peft_merge_and_unload():
    """Without ZeRO the same walk runs: the merged state dict is peft's own merge, tied weights stay tied."""
    from peft import LoraConfig, get_peft_model

    from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model
    from distillm_cli.train.saving import plain_state_dict

    torch.manual_seed(0)
    model = get_peft_model(build_tiny_model("tiny-student", build_char_tokenizer()),
                           LoraConfig(r=4, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # B starts at zero: make the adapters matter
    state = plain_state_dict(model, main=True)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(state) == set(expected)
    for key, tensor in expected.items():
        torch.testing.assert_close(state[key], tensor, rtol=0, atol=1e-6, msg=key)
    assert state["lm_head.weight"] is state["transformer.wte.weight"]
    assert any((state[k] - model.get_base_model().state_dict()[k.replace(".weight", ".base_layer.weight")]).abs().max()
               > 1e-3 for k in state if k.endswith("c_attn.weight"))
    assert plain_state_dict(model, main=False) is None  # no ZeRO-3: the other ranks hold nothing


def test_lora_on_a_tied_weight_is_refused():
    from peft import LoraConfig, get_peft_model

    from distillm_cli.errors import UserError
    from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model
    from distillm_cli.train.saving import plain_state_dict

    model = get_peft_model(build_tiny_model("tiny-student", build_char_tokenizer()),
                           LoraConfig(r=4, target_modules=["lm_head"], task_type="CAUSAL_LM"))
    with pytest.raises(UserError, match="tied"):
        plain_state_dict(model, main=True)


def test_lora_student_under_zero3_saves_a_merged_checkpoint_with_the_trained_logits(tmp_path):
    result = probe(tmp_path, "deepspeed=zero3", *PROBE)
    assert result["partitioned"]  # outside a gather the engine's weights were empty: the save gathered them
    assert result["loading_info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [],
                                      "error_msgs": []}
    assert result["lora_names"] == [] and result["dtype"] == "torch.float32"
    assert result["moved_from_initial"] > 1e-2  # the adapters changed the model, so the merge is tested
    assert result["max_logit_diff"] <= 1e-5


@pytest.mark.slow
def test_two_processes_lora_under_zero3_save_the_trained_logits(tmp_path):
    result = probe(tmp_path, "deepspeed=zero3", *PROBE, processes=2)
    assert result["world_size"] == 2 and result["partitioned"]
    assert result["loading_info"]["missing_keys"] == [] and result["loading_info"]["unexpected_keys"] == []
    assert result["lora_names"] == [] and result["moved_from_initial"] > 1e-2
    assert result["max_logit_diff"] <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("lora", [[], ["student.lora.r=4", "student.lora.dropout=0.0"]], ids=["full", "lora"])
def test_two_processes_at_zero3_save_the_weights_of_one_process_at_zero0(tmp_path, lora, compose_cfg):
    """Same global batch, same updates: the gathered (and merged) checkpoint equals the unsharded one.

    LoRA dropout is off: its masks come from each rank's own RNG, which would make the runs differ.
    Adam turns the reduction-order noise of near-zero gradients into weight differences of a few 1e-6,
    so the bound is 1e-5; training moved the weights far more than that (checked against the initial ones).
    """
    from transformers import AutoModelForCausalLM

    from distillm_cli.models.loading import load_model, load_tokenizer

    one = run_cli("distill", *DISTILL, *lora, "train.micro_batch_size=8", f"run_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("distill", *DISTILL, *lora, "deepspeed=zero3", PARTITIONED, "train.micro_batch_size=4",
                 f"run_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    reference, sharded = saved_tensors(tmp_path / "one" / "checkpoint"), saved_tensors(tmp_path / "two" / "checkpoint")
    assert set(sharded) == set(reference) and not any("lora" in key for key in sharded)
    cfg = compose_cfg("distill", *lora)
    initial = load_model(cfg, "student", load_tokenizer(cfg, "student")).state_dict()
    for key, tensor in reference.items():
        assert sharded[key].dtype == tensor.dtype == torch.float32, key
        torch.testing.assert_close(sharded[key], tensor, rtol=0, atol=1e-5, msg=key)
    moved = max(float((reference[k] - initial[k]).abs().max()) for k in reference)
    assert moved > 1e-4
    _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "checkpoint", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
