"""train.select: which weights a training stage keeps in checkpoint/.

    last      the weights after the last step (no selection)
    val_loss  the lowest validation loss (how DistiLLM picks the SFT student it distils from)
    rouge_l   the highest ROUGE-L of greedy answers to the first train.select_examples
              records of data.valid_split (how DistiLLM keeps its distilled student)

The figure is read at every validation step of the shared loop (train.eval_interval, and
the last step). One that beats the best so far has the student saved, every rank joining
the gathering and rank 0 writing, as a Hugging Face model dir run_dir/best/step-N. At the
end the kept one is moved to checkpoint/, with selection.json beside the weights, and the
stage's summary says {"by", "step", "value"}.

Resume: the best figure and step are part of each rank's resume state. best/step-N folders
stay while a resume point may still need them: the newest at or before each resume point,
and the best of the run. A resumed run first drops the folders written after its resume
point (a trajectory that was lost), so it ends with the best checkpoint of the whole run.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from ..errors import UserError
from ..runtime import Runtime, barrier, broadcast_from_main
from .engine import save_model

log = logging.getLogger("distillm")

SELECTION_FILE = "selection.json"


def _steps(folder: Path) -> list[int]:
    """N of every complete step-N folder (the .tmp ones of an interrupted save are not)."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in folder.glob("step-*") if p.name[5:].isdigit())


class Selection:
    """The best validation figure so far, its step and its saved weights; resumable (state_dict)."""

    def __init__(self, cfg, engine, tokenizer, runtime: Runtime, run_dir: Path):
        self.by = str(cfg.train.select)
        self.cfg, self.engine, self.tokenizer, self.runtime = cfg, engine, tokenizer, runtime
        self.run_dir, self.root = Path(run_dir), Path(run_dir) / "best"
        self.step: int | None = None
        self.value: float | None = None
        self.seen = 0  # the last validation step observed
        self._rouge = None  # (generator, prompts, references, sharded), built at the first rouge_l check

    @property
    def active(self) -> bool:
        return self.by != "last"

    def record(self) -> dict:
        return {"by": self.by, "step": self.step, "value": self.value}

    # ------------------------------------------------------------ the figure
    def _rouge_l(self) -> float:
        """ROUGE-L of the student's greedy answers; the prompts shared out over the ranks, the same on each."""
        from ..data.formats import record_format, references
        from ..data.sources import load_split
        from ..evaluation.metrics import rouge_l
        from ..generation import make_generator
        from ..generation.across_ranks import generate_all

        cfg = self.cfg
        if self._rouge is None:
            records = [r for r in load_split(cfg, cfg.data.valid_split) if r.get("output")]
            records = records[: cfg.train.select_examples]
            if not records:
                raise UserError(f"train.select=rouge_l needs validation records with references; the split "
                                f"'{cfg.data.valid_split}' has none: use train.select=val_loss")
            fmt = record_format(cfg, self.tokenizer)
            greedy = OmegaConf.merge(cfg.eval.sampling, {"do_sample": False})  # evaluation's settings, greedy
            sharded = self.engine.zero_optimization_stage() == 3 and self.runtime.world_size > 1
            generator = make_generator(self.engine.module, greedy, self.tokenizer, max_length=cfg.data.max_length,
                                       sharded=sharded)
            self._rouge = (generator, [fmt.prompt_ids(r) for r in records],
                           [references(r["output"]) for r in records], sharded)
        generator, prompts, refs, sharded = self._rouge
        responses = generate_all(generator, prompts, seed=cfg.seed, batch_size=cfg.eval.batch_size,
                                 runtime=self.runtime, sharded=sharded)
        texts = [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]
        return rouge_l(texts, refs)

    def _better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.value is None:
            return True
        return value < self.value if self.by == "val_loss" else value > self.value

    # ------------------------------------------------------------ the loop's hook
    def observe(self, step: int, val_loss: float) -> dict:
        """At a validation step: the figure, and the weights saved when it is the best so far.

        Every rank calls it: the save gathers the weights from all of them (ZeRO-3).
        Returns the fields to log (val_rouge_l for rouge_l)."""
        if not self.active:
            return {}
        value = float(val_loss) if self.by == "val_loss" else self._rouge_l()
        self.seen = step
        if broadcast_from_main(self._better(value), self.runtime):  # every rank saves, or none does
            self.step, self.value = step, value
            save_model(self.engine, self.tokenizer, self.root / f"step-{step}", self.runtime,
                       extra_files={SELECTION_FILE: self.record()})
            self._prune()
        return {"val_rouge_l": value} if self.by == "rouge_l" else {}

    def _prune(self) -> None:
        """Keep the best, and for each resume point the newest best at or before it (rank 0 deletes)."""
        if not self.runtime.main:
            return
        saved = _steps(self.root)
        keep = {self.step}
        for point in _steps(self.run_dir / "resume"):
            before = [s for s in saved if s <= point]
            if before:
                keep.add(before[-1])
        for step in saved:
            if step not in keep:
                shutil.rmtree(self.root / f"step-{step}", ignore_errors=True)

    # ------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {"by": self.by, "step": self.step, "value": self.value, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.value, self.seen = state["step"], state["value"], state["seen"]
        if self.runtime.main:  # written after the resume point: a lost trajectory's weights
            for step in _steps(self.root):
                if step > self.seen:
                    shutil.rmtree(self.root / f"step-{step}", ignore_errors=True)
        barrier(self.runtime)

    # ------------------------------------------------------------ the end
    def finish(self, checkpoint: Path) -> dict:
        """checkpoint/ gets the selected weights (train.select=last: the weights now); the summary's record."""
        if not self.active or self.step is None:
            if self.active:
                log.warning("train.select=%s: no finite validation figure, checkpoint/ keeps the last weights",
                            self.by)
            save_model(self.engine, self.tokenizer, checkpoint, self.runtime)
            return {"by": "last", "step": self.cfg.train.max_steps, "value": None}
        source = self.root / f"step-{self.step}"
        problem = None
        if self.runtime.main:
            if source.is_dir():
                old = checkpoint.with_name(f".{checkpoint.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                if checkpoint.exists():
                    os.replace(checkpoint, old)
                os.replace(source, checkpoint)
                shutil.rmtree(old, ignore_errors=True)
                self._prune()
            elif not self._holds_selected(checkpoint):  # a finished run continued: moved there already
                problem = (f"the weights of step {self.step} ({source}) are missing, so checkpoint/ cannot hold the "
                           f"selected model; run again without resume=auto or with a new run_dir")
        problem = broadcast_from_main(problem, self.runtime)
        if problem:
            raise UserError(problem)
        log.info("checkpoint/ holds step %d, the best %s (%.4f)", self.step, self.by, self.value)
        return self.record()

    def _holds_selected(self, checkpoint: Path) -> bool:
        marker = checkpoint / SELECTION_FILE
        return marker.is_file() and json.loads(marker.read_text()).get("step") == self.step
