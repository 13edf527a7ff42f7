"""Loading real Hugging Face model directories: the attention kernel, and models that ship their own code."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distillm_cli.errors import UserError
from distillm_cli.models.loading import load_model

REMOTE_CONFIG = '''from transformers import LlamaConfig


class TinyRemoteConfig(LlamaConfig):
    model_type = "tiny-remote"
'''
REMOTE_MODEL = '''from transformers import LlamaForCausalLM

from .configuration_tiny import TinyRemoteConfig


class TinyRemoteForCausalLM(LlamaForCausalLM):
    config_class = TinyRemoteConfig
'''


def tiny_llama_dir(path):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_the_attention_kernel_is_the_configured_one(compose_cfg, tmp_path):
    source = tiny_llama_dir(tmp_path / "llama")
    for kernel in ("sdpa", "eager"):
        cfg = compose_cfg("distill", f"student_dir={source}", f"model.attn_implementation={kernel}")
        assert load_model(cfg, "student", tokenizer=None).config._attn_implementation == kernel


def test_a_kernel_that_is_not_installed_names_the_fix(compose_cfg, tmp_path):
    source = tiny_llama_dir(tmp_path / "llama")
    cfg = compose_cfg("distill", f"student_dir={source}", "model.attn_implementation=flash_attention_2")
    with pytest.raises(UserError, match="model.attn_implementation=sdpa or eager"):
        load_model(cfg, "student", tokenizer=None)


def test_a_model_with_its_own_code_loads_only_when_trusted(compose_cfg, tmp_path):
    source = tiny_llama_dir(tmp_path / "remote")
    config = json.loads((source / "config.json").read_text())
    config.update(model_type="tiny-remote", architectures=["TinyRemoteForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tiny.TinyRemoteConfig",
                            "AutoModelForCausalLM": "modeling_tiny.TinyRemoteForCausalLM"})
    (source / "config.json").write_text(json.dumps(config))
    (source / "configuration_tiny.py").write_text(REMOTE_CONFIG)
    (source / "modeling_tiny.py").write_text(REMOTE_MODEL)
    refused = compose_cfg("distill", f"student_dir={source}")
    with pytest.raises(UserError, match="model.trust_remote_code=true"):
        load_model(refused, "student", tokenizer=None)
    trusted = compose_cfg("distill", f"student_dir={source}", "model.trust_remote_code=true")
    assert type(load_model(trusted, "student", tokenizer=None)).__name__ == "TinyRemoteForCausalLM"
