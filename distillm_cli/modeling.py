"""Loading teacher and student: hub ids, local directories, or the built-in tiny presets."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .errors import UserError

log = logging.getLogger("distillm")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_source(cfg, role: str) -> str:
    """Where the teacher/student comes from: an earlier stage's output, else the model preset."""
    explicit = cfg.teacher_dir if role == "teacher" else cfg.student_dir
    source = explicit or (cfg.model.teacher if role == "teacher" else cfg.model.student)
    if source.startswith("smollm2-"):  # model=smollm2: presets made into cached model dirs (smollm2.py)
        from .smollm2 import resolve

        source = resolve(source, cfg.seed)
    return source


def _is_preset(source: str) -> bool:
    from .toy import TINY_PRESETS

    return source in TINY_PRESETS


def _check_local(source: str) -> None:
    path = Path(source)
    looks_like_path = source.startswith((".", "/", "~")) or path.exists() or source.count("/") > 1
    if looks_like_path:
        if not path.exists():
            raise UserError(f"model path '{source}' does not exist; point teacher_dir/student_dir at a "
                            "checkpoint/ folder written by an earlier stage or at a Hugging Face model dir")
        if not (path / "config.json").exists():
            raise UserError(f"'{source}' holds no Hugging Face model (no config.json); use the checkpoint/ "
                            "folder inside a run directory")


def load_tokenizer(cfg, role: str = "teacher"):
    """The tokenizer of `role`'s model, or the built-in character tokenizer."""
    source = model_source(cfg, role)
    if cfg.model.tokenizer == "char" and (_is_preset(source) or not (Path(source) / "tokenizer_config.json").exists()):
        from .toy import build_char_tokenizer

        tokenizer = build_char_tokenizer()
    else:
        from transformers import AutoTokenizer

        name = cfg.model.tokenizer if cfg.model.tokenizer not in ("", "char") else source
        _check_local(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load the tokenizer of '{name}': {str(error).splitlines()[0]}") from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_same_tokenizer(teacher_tok, student_tok, cfg) -> None:
    """Token-level KD compares distributions id by id: both models must share one vocabulary."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise UserError(
            f"teacher '{model_source(cfg, 'teacher')}' ({len(teacher_tok)} tokens) and student "
            f"'{model_source(cfg, 'student')}' ({len(student_tok)} tokens) use different tokenizers; "
            "token-level distillation needs one shared vocabulary: pick a pair from one model family")


def load_model(cfg, role: str, tokenizer, *, seed: int | None = None):
    """A causal LM for `role`; a fresh random-init preset when no earlier run is given."""
    source = model_source(cfg, role)
    dtype = DTYPES[cfg.model.dtype]
    if _is_preset(source):
        from .toy import build_tiny_model

        log.warning("%s: fresh random-init '%s' (no earlier run given; set %s_dir=<run>/checkpoint "
                    "to start from a trained one)", role, source, role)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed if seed is None else seed)
            model = build_tiny_model(source, tokenizer)
        return model.to(dtype)
    _check_local(source)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load {role} model '{source}': {str(error).splitlines()[0]} "
                        "(no hub access here? use a local model directory)") from error
    return model


def add_lora(model, lora_cfg):
    """Wrap the student in LoRA adapters (peft); only the adapters train."""
    from peft import LoraConfig, get_peft_model

    targets = list(lora_cfg.target_modules)
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules="all-linear" if targets == ["all-linear"] else targets,
                        task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise UserError(f"student.lora.target_modules={targets} does not fit this model: "
                        f"{str(error).splitlines()[0]}") from error


def plain_model(module):
    """The module to save as a Hugging Face checkpoint: LoRA adapters merged into a copy."""
    if hasattr(module, "merge_and_unload"):
        import copy

        return copy.deepcopy(module).merge_and_unload()
    return module


def vocab_size(tokenizer) -> int:
    """The shared vocabulary: logits beyond it (padded embedding rows) are dropped."""
    return len(tokenizer)
