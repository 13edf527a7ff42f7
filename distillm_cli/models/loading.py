"""Loading teacher and student (hub ids, local directories, presets), LoRA, and the forward
passes every stage shares: full logits, or logits at response positions only.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..data.formats import IGNORE
from ..errors import UserError
from . import presets
from .head import check_head, output_head, response_rows

log = logging.getLogger("distillm")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_source(cfg, role: str) -> str:
    """Where the teacher/student comes from: an earlier stage's output, else the model preset."""
    explicit = cfg.teacher_dir if role == "teacher" else cfg.student_dir
    return presets.resolve(explicit or (cfg.model.teacher if role == "teacher" else cfg.model.student), cfg.seed)


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
    if cfg.model.tokenizer == "char" and (presets.is_in_memory(source)
                                         or not (Path(source) / "tokenizer_config.json").exists()):
        from .tiny import build_char_tokenizer

        tokenizer = build_char_tokenizer()
    else:
        from transformers import AutoTokenizer

        name = cfg.model.tokenizer if cfg.model.tokenizer not in ("", "char") else source
        _check_local(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.model.trust_remote_code)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load the tokenizer of '{name}': {_first_line(error)}{_fix_hint(error)}") \
                from error
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_shared_tokenizer(cfg):
    """The teacher's tokenizer, refused unless the student's is the same (token-level KD)."""
    tokenizer = load_tokenizer(cfg, "teacher")
    check_same_tokenizer(tokenizer, load_tokenizer(cfg, "student"), cfg)
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
    if presets.is_in_memory(source):
        from .tiny import build_tiny_model

        log.warning("%s: fresh random-init '%s' (no earlier run given; set %s_dir=<run>/checkpoint "
                    "to start from a trained one)", role, source, role)
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed if seed is None else seed)
            model = build_tiny_model(source, tokenizer)
        return model.to(dtype)
    _check_local(source)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code,
                                                     attn_implementation=cfg.model.attn_implementation)
    except (OSError, ValueError, ImportError) as error:
        hint = _fix_hint(error) or " (no hub access here? use a local model directory)"
        raise UserError(f"cannot load {role} model '{source}': {_first_line(error)}{hint}") from error
    return model


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _fix_hint(error: Exception) -> str:
    """The config key that fixes a loading error transformers explains in its own words."""
    text = str(error)
    if "trust_remote_code" in text:
        return "; the model ships its own code: set model.trust_remote_code=true if you trust it"
    if any(word in text for word in ("attn_implementation", "flash_attn", "sdpa", "FlashAttention")):
        return "; choose another kernel: model.attn_implementation=sdpa or eager"
    return ""


def load_student(cfg, tokenizer):
    """The student to train: its model, wrapped in LoRA adapters when student.lora.r > 0."""
    student = load_model(cfg, "student", tokenizer)
    return add_lora(student, cfg.student.lora) if cfg.student.lora.r else student


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


def vocab_size(tokenizer) -> int:
    """The shared vocabulary: logits beyond it (padded embedding rows) are dropped."""
    return len(tokenizer)


def forward_logits(model, batch: dict, device: torch.device, vocab: int) -> torch.Tensor:
    """Logits [B, T, V] over the shared vocabulary (padded embedding rows dropped)."""
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
    return out.logits[..., :vocab]


def response_logits(model, batch: dict, device: torch.device, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [1, N, V] at the N positions the loss counts (labels != -100), and their labels [1, N].

    The output head runs on those positions alone (head.response_rows: the body's last hidden
    states cut to the kept rows, then the head), so prompt and padding positions never cost a
    row of V logits: at vocab 50k the head is most of a small model's forward, and a prompt is
    often half the tokens. Every loss only reads kept positions, so the result is the same as
    slicing full logits. A model whose logits ``check_head`` cannot reproduce from its hidden
    states gets the full forward, cut afterwards.
    """
    labels = batch["labels"].to(device)
    keep = labels != IGNORE
    if not bool(keep.any()):  # nothing to score: the losses return 0 for an all-masked batch
        return forward_logits(model, batch, device, vocab), labels
    try:
        check_head(model, vocab, "model")
        head = output_head(model, vocab)
    except UserError:  # an unknown transform after the head: the model's own logits, cut to the rows
        return forward_logits(model, batch, device, vocab)[keep].unsqueeze(0), labels[keep].unsqueeze(0)
    logits = response_rows(model, batch, device, lambda hidden, _labels: head.logits(hidden))  # [N, V]
    return logits.unsqueeze(0), labels[keep].unsqueeze(0)
