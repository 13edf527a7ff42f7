"""generate-student: sample responses for a prompt set into generations.jsonl.

Recipe: load the model that answers (the student, or the teacher with generate=teacher)
-> build the prompts of the chosen split -> skip prompts already answered in this run
dir -> batched sampling with a progress bar -> append one JSON line per prompt.
With the teacher as source the file is SeqKD data: `distill generations=<this run>`
trains on it. With generate.pairs=true (DistiLLM-2 curation) both models answer and
each line holds the pair: teacher_response and student_response.
"""
from __future__ import annotations

import json

from omegaconf import OmegaConf

from ..data.formats import record_format
from ..data.sources import load_split
from ..generation import make_generator
from ..models.loading import load_model, load_tokenizer, model_source
from ..run_dir import RunLog, open_run
from ..ui import progress_bar


def run(cfg) -> dict:
    runtime, run_dir = open_run(cfg, allow_existing=True)
    role = cfg.generate.source
    roles = ("teacher", "student") if cfg.generate.pairs else (role,)
    tokenizer = load_tokenizer(cfg, roles[0])
    fmt = record_format(cfg, tokenizer)
    generators = {r: make_generator(load_model(cfg, r, tokenizer).to(runtime.device), cfg.generation, tokenizer,
                                    max_length=cfg.data.max_length) for r in roles}

    split = cfg.generate.split or cfg.data.generate_split
    records = load_split(cfg, split, need_responses=False)
    if cfg.generate.max_prompts:
        records = records[: cfg.generate.max_prompts]
    out_path = run_dir / "generations.jsonl"
    done = set()
    if out_path.exists():  # a re-run continues where the last one stopped
        done = {json.loads(line)["prompt"] for line in out_path.read_text().splitlines() if line.strip()}
    todo = [r for r in records if fmt.prompt_text(r) not in done]
    config = OmegaConf.to_container(cfg.generation, resolve=True)
    written = 0
    if runtime.main and todo:
        size = cfg.generation.batch_size
        bar_context = progress_bar(f"generate ({' + '.join(roles)})", len(todo))
        with bar_context as bar, out_path.open("a", encoding="utf-8") as out:
            for start in range(0, len(todo), size):
                chunk = todo[start:start + size]
                texts = [fmt.prompt_text(r) for r in chunk]
                prompts = [fmt.prompt_ids(r) for r in chunk]
                if start == 0:  # the exact settings transformers is given, beside the outputs
                    write_settings(run_dir, {r: generators[r].settings(prompts) for r in roles}, config)
                answers = {r: generators[r].generate(prompts, seed=cfg.seed * 100_003 + start) for r in roles}
                for i, (record, text) in enumerate(zip(chunk, texts)):
                    line = {"prompt": text, "reference": record.get("output"), "sampling": config, "seed": cfg.seed}
                    # truncated: the length limit cut the response; it is trained on without an end token.
                    for r in roles:
                        key = f"{r}_" if cfg.generate.pairs else ""
                        line[f"{key}response"] = tokenizer.decode(answers[r][i], skip_special_tokens=True)
                        line[f"{key}truncated"] = not generators[r].finished(answers[r][i])
                    if cfg.generate.pairs:
                        line.update(teacher=model_source(cfg, "teacher"), student=model_source(cfg, "student"))
                    else:
                        line.update(model=model_source(cfg, role), source=role)
                    out.write(json.dumps(line) + "\n")
                out.flush()
                written += len(chunk)
                bar.advance(len(chunk), tokens=sum(len(a) for r in roles for a in answers[r]))
    return RunLog(run_dir, runtime).summary({
        "stage": "generate-student", "source": "pairs" if cfg.generate.pairs else role,
        "model": model_source(cfg, role), "split": split, "template": fmt.describe(),
        "prompts": len(records), "generated": written, "skipped": len(records) - len(todo),
        "generations": str(out_path)})


def write_settings(run_dir, settings: dict, config: dict) -> None:
    """sampling.json: the generation config as given, and the settings each model generated with."""
    path = run_dir / "sampling.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"generation": config, "transformers": settings}, indent=2))
    tmp.replace(path)
