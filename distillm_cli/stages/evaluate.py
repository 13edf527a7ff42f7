"""evaluate: score models by generating answers to held-out prompts (METHOD.md §3).

Recipe: pick the models (eval.models, else the student) and the eval sets (eval.sets,
else data.test_split) -> for each model, set and seed: batched generation shared out over
the ranks (the same answers from 1 or N processes), cut at the end token -> ROUGE-L (F,
stemmed, max over references, x100) and exact match -> mean and std over seeds -> with a
teacher (eval.teacher), the token-level KL(teacher || model) on the validation split as a
cheap extra score -> rank 0 writes predictions.jsonl, summary.json and a table.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..data.batches import fixed_batches
from ..data.formats import record_format
from ..data.sources import encode_split
from ..evaluation.scoring import eval_sets, score_set
from ..generation import make_generator
from ..losses import kd_objective
from ..models.loading import load_model, load_tokenizer, model_source, response_logits, vocab_size
from ..run_dir import RunLog, open_run
from ..runtime import Runtime, all_reduce_sum
from ..teacher import LiveTeacher, Teacher
from ..ui import print_table


def models_to_score(cfg) -> dict[str, str]:
    """name -> model dir / hub id; a run dir stands for its checkpoint/."""
    models = OmegaConf.to_container(cfg.eval.models, resolve=True) or {"student": model_source(cfg, "student")}
    return {name: str(Path(src) / "checkpoint") if (Path(src) / "checkpoint").is_dir() else src
            for name, src in models.items()}


@torch.no_grad()
def kl_to_teacher(model, teacher: Teacher, batches: list[dict], vocab: int, runtime: Runtime) -> float:
    """Token-mean KL(teacher || model) over validation responses; each rank scores its share."""
    total, tokens = 0.0, 0.0
    for batch in batches[runtime.rank::runtime.world_size]:
        student_logits, labels = response_logits(model, batch, runtime.device, vocab)
        teacher_logits, _ = teacher.response_logits(batch)
        _, stats = kd_objective(student_logits, teacher_logits, labels, loss="fkl", normalizer=1.0)
        total, tokens = total + stats["kd_sum"], tokens + stats["tokens"]
    return all_reduce_sum(total, runtime) / max(all_reduce_sum(tokens, runtime), 1.0)


def run(cfg) -> dict:
    runtime, run_dir = open_run(cfg)
    sets = eval_sets(cfg)
    teacher, valid_batches = None, []

    results, rows = {}, []
    predictions = (run_dir / "predictions.jsonl").open("w", encoding="utf-8") if runtime.main else None
    with predictions or contextlib.nullcontext() as out:
        for name, source in models_to_score(cfg).items():
            sub = OmegaConf.merge(cfg, {"student_dir": source})
            tokenizer = load_tokenizer(sub, "student")
            model = load_model(sub, "student", tokenizer).to(runtime.device).eval()
            generator = make_generator(model, cfg.eval.sampling, tokenizer, max_length=cfg.data.max_length)
            fmt = record_format(cfg, tokenizer)
            results[name] = {"source": source, "sets": {}}
            started = time.perf_counter()
            for set_name, records in sets.items():
                if "sampling" not in results[name]:  # described once per model, from its first set's prompts
                    results[name]["sampling"] = generator.settings([fmt.prompt_ids(r) for r in records])
                scores, answers = score_set(cfg, generator, tokenizer, records, runtime, f"{name} on {set_name}")
                for seed, texts in answers.items():
                    for record, text in zip(records, texts if out is not None else ()):
                        out.write(json.dumps({"model": name, "set": set_name, "seed": seed,
                                              "prompt": fmt.prompt_text(record),
                                              "prediction": text, "reference": record["output"]}) + "\n")
                results[name]["sets"][set_name] = scores
            if cfg.eval.teacher:
                if teacher is None:
                    teacher_cfg = OmegaConf.merge(cfg, {"student_dir": cfg.eval.teacher})
                    teacher = LiveTeacher.on_device(load_model(teacher_cfg, "student", tokenizer), tokenizer, runtime)
                    valid = encode_split(cfg, tokenizer, cfg.data.valid_split)[: cfg.eval.kl_examples]
                    valid_batches = fixed_batches(valid, cfg.eval.batch_size, tokenizer.pad_token_id)
                results[name]["kl_to_teacher"] = kl_to_teacher(model, teacher, valid_batches, vocab_size(tokenizer),
                                                                runtime)
            results[name]["seconds"] = time.perf_counter() - started
            first = next(iter(sets))
            results[name].update(results[name]["sets"][first])  # headline: the first set
            for set_name, scores in results[name]["sets"].items():
                rows.append([name, set_name, f"{scores['rouge_l']['mean']:.2f} ± {scores['rouge_l']['std']:.2f}",
                             f"{scores['exact_match']['mean']:.1f}",
                             f"{results[name].get('kl_to_teacher', float('nan')):.4f}",
                             f"{results[name]['seconds']:.0f}s"])
    print_table(f"evaluation (seeds {list(cfg.eval.seeds)})",
                ["model", "set", "ROUGE-L", "exact match %", "KL(teacher‖model)", "time"], rows)
    return RunLog(run_dir, runtime).summary({"stage": "evaluate", "sets": {k: len(v) for k, v in sets.items()},
                                             "seeds": list(cfg.eval.seeds), "models": results})
