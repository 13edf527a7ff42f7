"""The house: conf/ ships inside the wheel, stages stay independent, and the teacher and
generation seams give the stages what the models say without the stages touching them."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from distillm_cli.config import Config, GenerationConfig
from distillm_cli.errors import UserError
from distillm_cli.generation import make_generator
from distillm_cli.generation.hf import generate, sampling_settings
from distillm_cli.models.loading import response_logits
from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model
from distillm_cli.runtime import Runtime
from distillm_cli.teacher import LiveTeacher

from .conftest import ROOT

STAGES_DIR = ROOT / "distillm_cli" / "stages"


def test_the_wheel_carries_every_config_and_asset_and_runs_outside_the_checkout(tmp_path):
    source, wheels = tmp_path / "source", tmp_path / "wheels"  # built from a copy: no build/ left in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("conf", "distillm_cli"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(wheels)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("distillm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    yaml_files = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert len(yaml_files) > 30
    assert {f"distillm_cli/conf/{name}" for name in yaml_files} <= names
    assert "distillm_cli/data/assets/smollm2_prompts.jsonl" in names

    # A virtualenv holding only the wheel; the dependencies come from this interpreter's
    # site-packages through a .pth line (whose own .pth files, the editable checkout among
    # them, are not processed), so distillm_cli can only be imported from the wheel.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    (site / "distillm_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run([str(python), "-c", "import distillm_cli; print(distillm_cli.__file__)"], cwd=outside,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(site))
    job = subprocess.run([str(python), "-m", "distillm_cli.cli", "distill", "--cfg", "job", "loss=skew_rkl"],
                         cwd=outside, capture_output=True, text=True, env={"DS_ACCELERATOR": "cpu"}, timeout=300)
    assert job.returncode == 0, job.stderr
    assert "name: skew_rkl" in job.stdout and "zero_optimization:" in job.stdout


def _stage_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:  # `from . import x` / `from .x import y` inside stages/
                found |= {module} if module else {alias.name for alias in node.names}
            elif module.startswith("distillm_cli.stages."):
                found.add(module.rsplit(".", 1)[1])
    return found


@pytest.mark.parametrize("stage_file", sorted(p.name for p in STAGES_DIR.glob("*.py") if p.name != "__init__.py"))
def test_stages_import_no_other_stage(stage_file):
    imported = _stage_imports(STAGES_DIR / stage_file)
    if stage_file == "pipeline.py":  # the pipeline runs the others through the STAGES table only
        imported.discard("STAGES")
    assert not imported, f"{stage_file} imports {imported}"


def test_each_distill_recipe_is_its_own_file():
    """DistiLLM's recipe has no DistiLLM-2 case and DistiLLM-2's none of the off-policy schedule."""
    from distillm_cli.stages import DISTILL_RECIPES

    assert DISTILL_RECIPES == {"distillm2": "distill_contrastive"}
    code = {name: ast.unparse(ast.parse((STAGES_DIR / f"{name}.py").read_text()).body[1:])
            for name in ("distill", "distill_contrastive")}
    assert "distillm2" not in code["distill"] and "contrastive" not in code["distill"]
    assert "OffPolicySchedule" not in code["distill_contrastive"]


def _tiny_pair_batch():
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model("tiny-student", tokenizer)
    ids = torch.tensor([tokenizer("ab cd ef")["input_ids"], tokenizer("xy zz ww")["input_ids"]])
    labels = ids.clone()
    labels[:, :4] = -100
    return tokenizer, model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_live_teacher_is_frozen_and_says_what_its_model_says():
    tokenizer, model, batch = _tiny_pair_batch()
    expected, expected_labels = response_logits(model, batch, torch.device("cpu"), len(tokenizer))
    cfg = OmegaConf.structured(Config(deepspeed={"zero_optimization": {"stage": 0}}))
    teacher = LiveTeacher.placed(model, cfg, Runtime(rank=0, world_size=1, device=torch.device("cpu")),
                                 len(tokenizer))
    logits, labels = teacher.response_logits(batch)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert not logits.requires_grad and torch.equal(labels, expected_labels)
    assert torch.allclose(logits, expected.detach())
    assert teacher.logits(batch).shape == (2, batch["input_ids"].shape[1], len(tokenizer))


def test_generator_keeps_prompt_and_response_within_max_length():
    tokenizer, model, _ = _tiny_pair_batch()
    prompts = [tokenizer("Reverse: a b")["input_ids"], tokenizer("Count: x y z w")["input_ids"]]
    sampling = GenerationConfig(do_sample=True, max_new_tokens=40)
    longest = max(len(p) for p in prompts)
    generator = make_generator(model, sampling, tokenizer, max_length=longest + 5)
    responses = generator.generate(prompts, seed=3)
    assert all(len(r) <= 5 for r in responses)
    settings = sampling_settings(sampling, max_new_tokens=5, stop_ids=[tokenizer.eos_token_id],
                                 pad_id=tokenizer.pad_token_id)
    assert responses == generate(model, prompts, settings, seed=3, batch_size=32)
    assert generator.generate(prompts, seed=3) == responses


def test_unknown_generation_backend_is_a_user_error():
    tokenizer, model, _ = _tiny_pair_batch()
    with pytest.raises(UserError, match="generation.backend"):
        make_generator(model, GenerationConfig(backend="nope"), tokenizer, max_length=64)


def test_the_readme_architecture_names_every_module():
    readme = (ROOT / "README.md").read_text()
    picture = readme[readme.index("## Architecture"):readme.index("## DistiLLM-2")]
    package = ROOT / "distillm_cli"
    for path in sorted(package.rglob("*.py")):
        if path.name != "__init__.py":
            assert path.name in picture, f"README architecture does not mention {path.relative_to(ROOT)}"
    for folder in sorted(p for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        assert f"{folder.name}/" in picture, f"README architecture does not mention {folder.name}/"
