"""generate-student: sample responses for a prompt set into generations.jsonl.

Recipe: load the model that answers (the student, or the teacher with generate=teacher)
-> build the prompts of the chosen split -> skip prompts already answered in this run
dir -> batched sampling, the batches dealt to the ranks (generation/across_ranks.py: the
same file from 1 or N processes) -> rank 0 appends one JSON line per prompt.
With the teacher as source the file is SeqKD data: `distill generations=<this run>`
trains on it. With generate.pairs=true (DistiLLM-2 curation) both models answer and
each line holds the pair: teacher_response and student_response.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from ..data.formats import record_format
from ..data.sources import load_split
from ..generation import make_generator
from ..generation.across_ranks import batched, generate_across_ranks
from ..models.loading import load_model, load_tokenizer, model_source
from ..run_dir import RunLog, open_run
from ..runtime import broadcast_from_main
from ..ui import progress_bar


def run(cfg) -> dict:
    runtime, run_dir = open_run(cfg, allow_existing=True)
    role = cfg.generate.source
    roles = ("teacher", "student") if cfg.generate.pairs else (role,)
    tokenizer = load_tokenizer(cfg, roles[0])
    fmt = record_format(cfg, tokenizer)
    # Each model is loaded by the backend that runs it (a served model's weights never are).
    generators = {r: make_generator(lambda r=r: load_model(cfg, r, tokenizer).to(runtime.device), cfg.generation,
                                    tokenizer, max_length=cfg.data.max_length) for r in roles}

    split = cfg.generate.split or cfg.data.generate_split
    records = load_split(cfg, split, need_responses=False)
    if cfg.generate.max_prompts:
        records = records[: cfg.generate.max_prompts]
    out_path = run_dir / "generations.jsonl"
    # A re-run continues where the last one stopped: the batches still to do keep their seeds.
    done = broadcast_from_main(answered_prompts(out_path) if runtime.main else None, runtime)
    batches = [[r for r in batch if fmt.prompt_text(r) not in done]
               for batch in batched(records, cfg.generation.batch_size)]
    todo = [k for k, batch in enumerate(batches) if batch]
    todo_batches = [[fmt.prompt_ids(r) for r in batches[k]] for k in todo]
    config = OmegaConf.to_container(cfg.generation, resolve=True)
    if runtime.main and todo:  # the exact settings the backend is given, beside the outputs
        write_settings(run_dir, {r: generators[r].settings(todo_batches[0]) for r in roles}, config)

    def answer(prompts: list[list[int]], seed: int) -> dict:
        return {r: generators[r].generate(prompts, seed=seed, batch_size=len(prompts)) for r in roles}

    written = 0
    pending = sum(len(batches[k]) for k in todo)
    with progress_bar(f"generate ({' + '.join(roles)})", pending) as bar, \
            (out_path.open("a", encoding="utf-8") if runtime.main else contextlib.nullcontext()) as out:
        for positions, results in generate_across_ranks(answer, todo_batches, seed=cfg.seed, runtime=runtime,
                                                        batch_ids=todo):
            lines = []
            for position, answers in zip(positions, results):
                for i, record in enumerate(batches[todo[position]]):
                    line = {"prompt": fmt.prompt_text(record), "reference": record.get("output"),
                            "sampling": config, "seed": cfg.seed}
                    # truncated: the length limit cut the response; it is trained on without an end token.
                    for r in roles:
                        key = f"{r}_" if cfg.generate.pairs else ""
                        line[f"{key}response"] = tokenizer.decode(answers[r][i], skip_special_tokens=True)
                        line[f"{key}truncated"] = not generators[r].finished(answers[r][i])
                    if cfg.generate.pairs:
                        line.update(teacher=model_source(cfg, "teacher"), student=model_source(cfg, "student"))
                    else:
                        line.update(model=model_source(cfg, role), source=role)
                    lines.append(json.dumps(line) + "\n")
            if out is not None:  # rank 0 writes a whole round at once
                out.write("".join(lines))
                out.flush()
            written += len(lines)
            bar.advance(len(lines), tokens=sum(len(a) for answers in results for r in roles for a in answers[r]))
    return RunLog(run_dir, runtime).summary({
        "stage": "generate-student", "source": "pairs" if cfg.generate.pairs else role,
        "model": model_source(cfg, role), "split": split, "template": fmt.describe(),
        "prompts": len(records), "generated": written, "skipped": len(records) - pending,
        "generations": str(out_path)})


def answered_prompts(path: Path) -> set[str]:
    """The prompts an earlier run of this stage answered; a line cut by a kill is dropped."""
    if not path.exists():
        return set()
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    if complete != text:  # the last write was interrupted: drop its unfinished line
        path.write_text(complete, encoding="utf-8")
    return {json.loads(line)["prompt"] for line in complete.splitlines() if line.strip()}


def write_settings(run_dir, settings: dict, config: dict) -> None:
    """sampling.json: the generation config as given, and the settings each model generated with."""
    path = run_dir / "sampling.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"generation": config, "transformers": settings}, indent=2))
    tmp.replace(path)
