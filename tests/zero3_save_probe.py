"""Train a student a few steps, then save it with `save_model` and check the checkpoint against the live model.

Not a test file: tests/test_saving.py runs it in one process (``python -m tests.zero3_save_probe``)
or in two through the deepspeed launcher (``--module tests.zero3_save_probe``). Every rank trains on
its own random batch, then all ranks run the forward on one fixed batch (under ZeRO-3 a forward is
collective) and save; rank 0 reloads the checkpoint with AutoModelForCausalLM and writes what it found
to OUT/result.json: the largest logit difference, the loading info and the saved dtype.

    python -m tests.zero3_save_probe OUT [hydra overrides, e.g. deepspeed=zero3 student.lora.r=4]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from distillm_cli.config import register_configs, validate

    register_configs()
    with initialize_config_module(config_module="distillm_cli.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["stage=distill", *overrides])
    validate(cfg)
    return cfg


def main(out: Path, overrides: list[str]) -> None:
    from transformers import AutoModelForCausalLM

    from distillm_cli.models.loading import load_model, load_student, load_tokenizer
    from distillm_cli.runtime import seed_everything, setup_runtime
    from distillm_cli.train.engine import build_engine, save_model

    cfg = compose(overrides)
    runtime = setup_runtime(cfg)
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg, "student")
    engine = build_engine(load_student(cfg, tokenizer), cfg, runtime)
    vocab = len(tokenizer)
    generator = torch.Generator().manual_seed(100 + runtime.rank)
    engine.train()
    for _ in range(cfg.train.max_steps):
        ids = torch.randint(3, vocab, (cfg.train.micro_batch_size, 24), generator=generator)
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
    probe = torch.randint(3, vocab, (4, 24), generator=torch.Generator().manual_seed(7))
    engine.eval()
    with torch.no_grad():
        trained = engine(input_ids=probe).logits.float()
    save_model(engine, tokenizer, out / "checkpoint", runtime)
    if runtime.main:
        saved, info = AutoModelForCausalLM.from_pretrained(out / "checkpoint", output_loading_info=True)
        with torch.no_grad():
            logits = saved.eval()(input_ids=probe).logits.float()
            initial = load_model(cfg, "student", tokenizer).eval()(input_ids=probe).logits.float()
        result = {
            "max_logit_diff": float((logits - trained).abs().max()),
            "moved_from_initial": float((trained - initial).abs().max()),  # training (or the adapters) did something
            "loading_info": {key: sorted(map(str, value)) for key, value in info.items()},
            "dtype": str(next(saved.parameters()).dtype),
            "lora_names": [name for name, _ in saved.named_parameters() if "lora" in name],
            "partitioned": any(hasattr(p, "ds_id") and p.numel() == 0 for p in engine.module.parameters()),
            "world_size": runtime.world_size,
        }
        (out / "result.json").write_text(json.dumps(result, indent=2))
    if runtime.world_size > 1:
        torch.distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
