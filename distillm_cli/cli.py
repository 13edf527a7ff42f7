"""`distillm STAGE [hydra overrides]`: argv[1] names the stage, the rest go to Hydra.

Runs as a console script and as a module (`python -m distillm_cli.cli`), so that the
`deepspeed` launcher can start it with `--module distillm_cli.cli`.
"""
from __future__ import annotations

import difflib
import os
import sys
import warnings
from importlib import resources

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .config import STAGE_NAMES, check_paths, register_configs, validate
from .errors import UserError, report_and_exit

STAGE_HELP = {
    "sft-teacher": "fine-tune the teacher on the instruction data (CE on response tokens)",
    "sft-student": "fine-tune the student's starting point (the SFT-only baseline)",
    "generate-student": "sample responses from the student (or teacher: generate=teacher) into generations.jsonl",
    "cache-teacher": "run the teacher once, keep its top-k distributions on disk (distill teacher_cache=DIR)",
    "distill": "train the student to imitate the teacher (loss=..., off_policy=...)",
    "evaluate": "score teacher and students: ROUGE-L and exact match on held-out prompts",
    "pipeline": "sft-teacher -> sft-student -> generate-student -> distill -> evaluate, one run dir each",
    "check": "check models and data before a run: vocabulary, chat template, lengths, one example with its mask",
}
# Hydra flags that take a value of their own (not an override).
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                    "--config-dir", "-cd", "--experimental-rerun"}

register_configs()


def config_groups() -> dict[str, list[str]]:
    conf = resources.files("distillm_cli.conf")
    groups = {}
    for entry in sorted(conf.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("_") and entry.name != "stage":
            groups[entry.name] = sorted(f.name[:-5] for f in entry.iterdir() if f.name.endswith(".yaml"))
    return groups


def print_help() -> None:
    print("usage: distillm STAGE [key=value ...] [hydra flags]\n")
    print("Distil a large language model into a small one (DistiLLM, DistiLLM-2).\n")
    print("stages:")
    for name in STAGE_NAMES:
        print(f"  {name:<18}{STAGE_HELP[name]}")
    print(f"  {'report':<18}compare finished runs or a sweep: table, report.md/json, loss.png, scores.png")
    print("\nconfig groups (pick with group=option):")
    for group, options in config_groups().items():
        print(f"  {group:<18}{', '.join(options) if options else '(none yet)'}")
    print("\ncommon keys: run_dir seed resume teacher_dir student_dir train.max_steps train.lr")
    print("             train.micro_batch_size train.grad_accum loss.alpha off_policy.phi0")
    print("\nexamples:")
    print("  distillm pipeline                                  # the embedded demo, CPU, minutes")
    print("  distillm distill model=gpt2 loss=skew_rkl data=dolly")
    print("  distillm check model=smollm2 data=hf data.hub_id=./my_chats   # preflight: a table, no run dir")
    print("  distillm distill --cfg job                         # print the composed config")
    print("  distillm distill -m loss=fkl,rkl,skew_rkl          # a sweep, one run dir each")
    print("  deepspeed --num_gpus 2 --no_local_rank --module distillm_cli.cli distill ...")
    print("\n`distillm STAGE --help` shows Hydra's help and the full config of that stage.")


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Separate Hydra's flags (with their values) from key=value overrides."""
    flags, overrides, takes_value = [], [], False
    for arg in args:
        if takes_value:
            flags.append(arg)
            takes_value = False
        elif arg.startswith("-"):
            flags.append(arg)
            takes_value = arg in FLAGS_WITH_VALUE
        else:
            overrides.append(arg)
    return flags, overrides


def implied_overrides(stage: str, overrides: list[str]) -> list[str]:
    """Overrides a run's own choices imply. Distilling from teacher_cache with no off_policy named:
    the default schedule (adaptive) trains on fresh student samples, which need a live teacher, so
    the run takes off_policy=none and says so. An off_policy (or experiment) the user named is
    kept, and refused by validate() if it needs samples."""
    named = [override.partition("=") for override in overrides]  # (key, "=", value)
    keys = {key.lstrip("+~") for key, _, _ in named}
    cached = any(key.lstrip("+") == "teacher_cache" and value for key, _, value in named)
    if stage != "distill" or not cached or keys & {"off_policy", "experiment"}:
        return []
    from .runtime import launched_rank  # (imports torch: only on this path)

    if launched_rank() == 0:
        print("distillm: teacher_cache given without off_policy: using off_policy=none (fresh student samples "
              "need a live teacher)", file=sys.stderr, flush=True)
    return ["off_policy=none"]


def _explain(error: Exception) -> str:
    """Turn a Hydra/OmegaConf composition error into one line that names the fix."""
    text = str(error)
    cause = str(error.__cause__ or "")
    full_key = next((line.split(":", 1)[1].strip() for line in cause.splitlines()
                     if line.strip().startswith("full_key:")), "")
    if "Could not find '" in text and "Available options" in text:
        group, _, option = text.split("Could not find '")[1].split("'")[0].rpartition("/")
        options = [line.strip() for line in text.split("Available options")[1].splitlines()[1:]
                   if line.startswith("\t") and "provider=" not in line]
        return f"unknown option '{option}' for {group}; choose {group}= one of {', '.join(options)}"
    if text.startswith("Could not override") and "not in" in cause:
        close = difflib.get_close_matches(full_key, _known_keys(), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "`distillm STAGE --cfg job` lists every key"
        return f"unknown config key '{full_key}'; {hint}"
    if cause:
        detail = cause.splitlines()[0].strip()
        return f"{full_key}: {detail}" if full_key else detail
    return text.splitlines()[0] if text else repr(error)


def _known_keys() -> list[str]:
    from .config import Config

    base = OmegaConf.structured(Config)
    keys = []

    def walk(node, prefix):
        for key in node:
            value = node._get_node(key)
            full = f"{prefix}{key}"
            keys.append(full)
            if isinstance(value, DictConfig):
                walk(value, full + ".")

    walk(base, "")
    return keys + list(config_groups())


def preflight(stage_override: str, args: list[str]) -> None:
    """Compose the config for every value of a sweep before Hydra starts any job."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    _, overrides = split_args(args)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as error:  # noqa: BLE001 - a parse error is the user's to fix
        report_and_exit(f"cannot read the overrides: {_explain(error)}")
    choices = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    # Each value of each sweep once (not the full product): enough to catch every bad value.
    width = max((len(c) for c in choices), default=1)
    combos = [[c[min(i, len(c) - 1)] for c in choices] for i in range(width)]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="distillm_cli.conf", version_base="1.3"):
        for combo in combos:
            try:
                cfg = compose(config_name="config", overrides=[stage_override, *combo])
                OmegaConf.resolve(_without_hydra_resolvers(cfg))
                validate(cfg)
                check_paths(cfg)
            except UserError as error:
                report_and_exit(error)
            except Exception as error:  # noqa: BLE001 - every composition error is the user's
                report_and_exit(_explain(error))
    GlobalHydra.instance().clear()


def _without_hydra_resolvers(cfg: DictConfig) -> DictConfig:
    copy = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("run_dir", "hydra")])
    return copy


@hydra.main(config_path="pkg://distillm_cli.conf", config_name="config", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> None:
    from .run_dir import agree_on_run_dir
    from .runtime import launched_rank, launched_world_size
    from .stages import STAGES
    from .train.preemption import EXIT_PREEMPTED, Preempted

    # Hydra decided the output dir (a sweep gives each job its own); that is the run dir.
    cfg.run_dir = HydraConfig.get().runtime.output_dir
    try:
        validate(cfg)
        if launched_world_size() > 1:  # under a launcher every rank takes rank 0's run dir
            agree_on_run_dir(cfg)
        STAGES[cfg.stage](cfg)
    except UserError as error:
        report_and_exit(error)
    except Preempted as stop:  # a scheduler's SIGTERM: a resume point was written, nothing is lost
        if launched_rank() == 0:
            print(f"distillm: preempted: {stop}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PREEMPTED)


def main(argv: list[str] | None = None):
    try:
        return _main(argv)
    except BrokenPipeError:  # `distillm --help | head`: the reader left; no traceback for that
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


def _main(argv: list[str] | None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print_help()
        return
    if argv[0] == "report":
        from .evaluation.report import main as report_main

        return report_main(argv[1:])
    stage, rest = argv[0], argv[1:]
    if stage not in STAGE_NAMES:
        close = difflib.get_close_matches(stage, STAGE_NAMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        report_and_exit(f"unknown stage '{stage}'{hint}; choose one of {', '.join(STAGE_NAMES)}")
    stage_override = f"stage={stage.replace('-', '_')}"
    rest += implied_overrides(stage, split_args(rest)[1])
    hydra_only = any(a in ("--help", "-h", "--hydra-help", "--info", "-i") for a in rest)
    if not hydra_only:
        preflight(stage_override, rest)
    # Library deprecation chatter (torch.distributed, DeepSpeed) is not the user's business.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="deepspeed")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    import logging

    for noisy in ("absl", "compilers", "DeepSpeed"):  # DeepSpeed's import-time compiler probe, rouge's absl
        logging.getLogger(noisy).setLevel(logging.WARNING)
    flags, overrides = split_args(rest)
    # Flags first: Hydra's argument parser wants every override after the last flag.
    if stage == "check":  # a preflight writes nothing: no run dir, no .hydra, no log file
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    elif int(os.environ.get("RANK", "0")) != 0:  # only rank 0 writes: no .hydra or log file, only warnings shown
        overrides += ["hydra.output_subdir=null", "hydra/job_logging=stdout", "hydra.job_logging.root.level=WARNING"]
    sys.argv = ["distillm", *flags, stage_override, *overrides]
    hydra_entry()


if __name__ == "__main__":
    main()
