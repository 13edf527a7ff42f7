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

from ..data.formats import encode_prompt, prompt_text
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
    todo = [r for r in records if prompt_text(r, cfg.data.template) not in done]
    sampling = OmegaConf.to_container(cfg.generation, resolve=True)
    written = 0
    if runtime.main and todo:
        size = cfg.generation.batch_size
        bar_context = progress_bar(f"generate ({' + '.join(roles)})", len(todo))
        with bar_context as bar, out_path.open("a", encoding="utf-8") as out:
            for start in range(0, len(todo), size):
                chunk = todo[start:start + size]
                texts = [prompt_text(r, cfg.data.template) for r in chunk]
                prompts = [encode_prompt(tokenizer, t, cfg.data.max_prompt_length) for t in texts]
                answers = {r: generators[r].generate(prompts, seed=cfg.seed * 100_003 + start) for r in roles}
                for i, (record, text) in enumerate(zip(chunk, texts)):
                    line = {"prompt": text, "reference": record.get("output"), "sampling": sampling, "seed": cfg.seed}
                    if cfg.generate.pairs:
                        line.update({f"{r}_response": tokenizer.decode(answers[r][i], skip_special_tokens=True)
                                     for r in roles}, teacher=model_source(cfg, "teacher"),
                                    student=model_source(cfg, "student"))
                    else:
                        line.update(response=tokenizer.decode(answers[role][i], skip_special_tokens=True),
                                    model=model_source(cfg, role), source=role)
                    out.write(json.dumps(line) + "\n")
                out.flush()
                written += len(chunk)
                bar.advance(len(chunk), tokens=sum(len(a) for r in roles for a in answers[r]))
    return RunLog(run_dir, runtime).summary({
        "stage": "generate-student", "source": "pairs" if cfg.generate.pairs else role,
        "model": model_source(cfg, role), "split": split,
        "prompts": len(records), "generated": written, "skipped": len(records) - len(todo),
        "generations": str(out_path)})
