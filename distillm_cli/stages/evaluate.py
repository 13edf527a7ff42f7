"""evaluate: score models by generating answers to held-out prompts (METHOD.md §3).

Recipe: pick the models (eval.models, else the student) -> build the test prompts ->
for each model and seed: batched generation, cut at EOS -> ROUGE-L (F, stemmed, max over
references, x100) and exact match -> mean and std over seeds -> predictions.jsonl,
summary.json and a table.
"""
from __future__ import annotations

import json
import time

from omegaconf import OmegaConf

from ..data import encode_prompt, load_split, prompt_text
from ..engine import RunLog, prepare_run_dir, seed_everything, setup_runtime
from ..generation import generate
from ..metrics import exact_match, rouge_l, summarize_scores
from ..modeling import load_model, load_tokenizer, model_source
from ..ui import print_table, progress_bar


def models_to_score(cfg) -> dict[str, str]:
    models = OmegaConf.to_container(cfg.eval.models, resolve=True)
    return models or {"student": model_source(cfg, "student")}


def run(cfg) -> dict:
    runtime = setup_runtime(cfg)
    seed_everything(cfg.seed)
    run_dir = prepare_run_dir(cfg, runtime)
    split = cfg.eval.split or cfg.data.test_split
    records = load_split(cfg, split)
    if cfg.eval.max_examples:
        records = records[: cfg.eval.max_examples]
    references = [[r["output"]] for r in records]

    results, rows = {}, []
    predictions_path = run_dir / "predictions.jsonl"
    with predictions_path.open("w", encoding="utf-8") as out:
        for name, source in models_to_score(cfg).items():
            sub = OmegaConf.merge(cfg, {"student_dir": source})
            tokenizer = load_tokenizer(sub, "student")
            model = load_model(sub, "student", tokenizer).to(runtime.device)
            prompts = [encode_prompt(tokenizer, prompt_text(r, cfg.data.template), cfg.data.max_prompt_length)
                       for r in records]
            room = cfg.data.max_length - max(len(p) for p in prompts)
            started, per_seed = time.perf_counter(), []
            with progress_bar(f"evaluate {name}", len(prompts) * len(cfg.eval.seeds)) as bar:
                for seed in cfg.eval.seeds:
                    responses = generate(
                        model, prompts, cfg.eval.sampling, eos_id=tokenizer.eos_token_id,
                        pad_id=tokenizer.pad_token_id, seed=seed, batch_size=cfg.eval.batch_size,
                        max_new_tokens=max(1, min(cfg.eval.sampling.max_new_tokens, room)),
                        on_batch=lambda n, tokens: bar.advance(n, tokens=tokens))
                    texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]
                    per_seed.append({"rouge_l": rouge_l(texts, references),
                                     "exact_match": 100.0 * exact_match(texts, references)})
                    for record, text in zip(records, texts):
                        out.write(json.dumps({"model": name, "seed": seed,
                                              "prompt": prompt_text(record, cfg.data.template),
                                              "prediction": text, "reference": record["output"]}) + "\n")
            scores = summarize_scores(per_seed)
            results[name] = {**scores, "source": source, "seconds": time.perf_counter() - started}
            rows.append([name, f"{scores['rouge_l']['mean']:.2f} ± {scores['rouge_l']['std']:.2f}",
                         f"{scores['exact_match']['mean']:.1f}", f"{results[name]['seconds']:.0f}s"])
    print_table(f"evaluation on {split} ({len(records)} prompts, seeds {list(cfg.eval.seeds)})",
                ["model", "ROUGE-L", "exact match %", "time"], rows)
    return RunLog(run_dir, runtime).summary({"stage": "evaluate", "split": split, "prompts": len(records),
                                             "seeds": list(cfg.eval.seeds), "models": results})
