"""Optional experiment trackers next to metrics.jsonl: logger=none (default), tensorboard or wandb.

make_logger(cfg.logger, run_dir) -> Logger with log(record, step) and close(). Only the
numeric fields of a record are sent (strings such as data_source stay in metrics.jsonl).
Only rank 0 logs: on other ranks every kind is the no-op logger. Importing this module
imports neither torch nor wandb; each kind imports its package when it is made.
"""
from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

from .errors import UserError

LOGGER_NAMES = ("none", "tensorboard", "wandb")


def scalars(record: Mapping) -> dict[str, float]:
    """The finite numeric fields of a record, as floats; `step` is the x axis, not a value."""
    values = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        value = float(value)
        if math.isfinite(value):
            values[str(key)] = value
    return values


class Logger:
    """The no-op logger (logger=none): metrics.jsonl is the record of the run."""

    def log(self, record: Mapping, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(Logger):
    """Scalars into run_dir/tensorboard (`tensorboard --logdir RUN_DIR/tensorboard`)."""

    def __init__(self, run_dir: Path, start_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise UserError("logger=tensorboard needs the tensorboard package: pip install tensorboard "
                            "(or choose logger=none)") from error
        self.log_dir = Path(run_dir) / "tensorboard"
        # purge_step: a resumed run hides the events its earlier attempt logged after the resume point
        # (the loop logs step N+1 first when it resumes from step N).
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=start_step + 1 if start_step else None)

    def log(self, record: Mapping, step: int) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger(Logger):
    """A Weights & Biases run in run_dir/wandb; offline unless WANDB_MODE says otherwise."""

    def __init__(self, run_dir: Path, project: str, config: Mapping | None = None):
        try:
            import wandb
        except ImportError as error:
            raise UserError("logger=wandb needs the wandb package: pip install wandb "
                            "(or choose logger=tensorboard or logger=none)") from error
        run_dir = Path(run_dir)
        self.run = wandb.init(project=project, name=run_dir.name, dir=str(run_dir),
                              mode=os.environ.get("WANDB_MODE", "offline"),
                              config=dict(config) if config else None)

    def log(self, record: Mapping, step: int) -> None:
        values = scalars(record)
        if values:
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def make_logger(cfg_logger: Mapping | None, run_dir, *, start_step: int = 0,
                config: Mapping | None = None) -> Logger:
    """The logger named by cfg_logger["name"] (a dict or the cfg.logger DictConfig).

    start_step: the step a resumed run continues from (TensorBoard drops later events).
    config: the resolved run config, recorded by wandb.
    """
    cfg_logger = cfg_logger or {}
    name = str(cfg_logger.get("name", "none") or "none")
    if name not in LOGGER_NAMES:
        raise UserError(f"unknown logger '{name}'; choose logger= one of {', '.join(LOGGER_NAMES)}")
    if name == "none" or int(os.environ.get("RANK", "0")) != 0:
        return Logger()
    if name == "tensorboard":
        return TensorBoardLogger(Path(run_dir), start_step=start_step)
    return WandbLogger(Path(run_dir), str(cfg_logger.get("project", "distillm") or "distillm"), config=config)
