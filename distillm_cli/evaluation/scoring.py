"""Scoring a model on held-out prompts: answers shared out over the ranks, ROUGE-L and exact match.

Used by the evaluate stage and, with eval.after_training=true, by every training stage on
the checkpoint it keeps (so a sweep's runs carry their own test scores for `distillm report`).
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from ..data.formats import record_format, references
from ..data.sources import load_split, read_jsonl
from ..errors import UserError
from ..generation import make_generator
from ..generation.across_ranks import batched, generate_across_ranks
from ..models.loading import load_model, load_tokenizer
from ..runtime import Runtime, barrier
from ..ui import progress_bar
from .metrics import exact_match, rouge_l, summarize_scores

log = logging.getLogger(__name__)


def eval_sets(cfg) -> dict[str, list[dict]]:
    """name -> records: a split of the data config, or a jsonl file (instruction/input/output)."""
    sets = OmegaConf.to_container(cfg.eval.sets, resolve=True) or {cfg.eval.split or cfg.data.test_split: ""}
    loaded = {}
    for name, source in sets.items():
        records = read_jsonl(source) if source else load_split(cfg, name)
        if cfg.eval.max_examples:
            records = records[: cfg.eval.max_examples]
        if any(not r.get("output") for r in records):
            raise UserError(f"eval set '{name}' has records without a reference output")
        loaded[name] = records
    return loaded


def generate_texts(generator, tokenizer, prompts: list[list[int]], *, seed: int, batch_size: int,
                   runtime: Runtime, bar) -> list[str]:
    """One decoded answer per prompt; the batches are shared out over the ranks."""
    texts = []
    for _, results in generate_across_ranks(lambda batch, batch_seed: generator.generate(batch, seed=batch_seed),
                                            batched(prompts, batch_size), seed=seed, runtime=runtime):
        for responses in results:
            texts += [tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]
            bar.advance(len(responses), tokens=sum(len(r) for r in responses))
    return texts


def score_set(cfg, generator, tokenizer, records: list[dict], runtime: Runtime, label: str) -> tuple[dict, dict]:
    """(ROUGE-L and exact match, mean and std over eval.seeds; seed -> the answers) for one eval set."""
    fmt = record_format(cfg, tokenizer)
    prompts = [fmt.prompt_ids(r) for r in records]
    refs = [references(r["output"]) for r in records]  # several references: the best one counts
    per_seed, answers = [], {}
    with progress_bar(f"evaluate {label}", len(prompts) * len(cfg.eval.seeds)) as bar:
        for seed in cfg.eval.seeds:
            texts = generate_texts(generator, tokenizer, prompts, seed=seed,
                                   batch_size=cfg.eval.batch_size, runtime=runtime, bar=bar)
            per_seed.append({"rouge_l": rouge_l(texts, refs), "exact_match": 100.0 * exact_match(texts, refs)})
            answers[seed] = texts
    return summarize_scores(per_seed), answers


def after_training_scores(cfg, checkpoint: Path, runtime: Runtime) -> dict:
    """eval.after_training: {"scores": {"student": ...}} of a training stage's kept checkpoint, else {}.

    The checkpoint is read back from disk (it may be an earlier step than the weights in
    memory, train.select) once every rank knows rank 0 has finished writing it; the test
    split (eval.split, else data.test_split) is scored as the evaluate stage would score it.
    """
    if not cfg.eval.after_training:
        return {}
    barrier(runtime)
    sub = OmegaConf.merge(cfg, {"student_dir": str(checkpoint)})
    tokenizer = load_tokenizer(sub, "student")
    model = load_model(sub, "student", tokenizer).to(runtime.device).eval()
    generator = make_generator(model, cfg.eval.sampling, tokenizer, max_length=cfg.data.max_length)
    set_name, records = next(iter(eval_sets(cfg).items()))
    scores, _ = score_set(cfg, generator, tokenizer, records, runtime, f"checkpoint on {set_name}")
    log.info("after training, on %s: ROUGE-L %.2f, exact match %.1f%%", set_name, scores["rouge_l"]["mean"],
             scores["exact_match"]["mean"])
    return {"scores": {"student": {**scores, "set": set_name, "seeds": list(cfg.eval.seeds)}}}
