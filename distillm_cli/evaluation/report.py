"""`distillm report PATH [PATH ...]`: compare finished runs in a table, a markdown file and plots.

What counts as a run: a folder with summary.json. A pipeline folder (summary.json with
"stage": "pipeline") is one run: its loss curve comes from distill/metrics.jsonl and its
scores from evaluate/summary.json (mean ± std over seeds), else from its own summary.
A PATH may be a run dir, a pipeline dir, a Hydra sweep dir (numbered sub-folders 0/, 1/, ...)
or any folder above runs: folders are searched downwards, hidden folders skipped, and the
search stops at each run (so a run's sub-folders are never runs of their own).

What tells runs apart: the overrides each run was started with (.hydra/overrides.yaml),
keeping only the keys whose values differ between the runs. When a run has no
overrides.yaml, or the overrides are the same but the configs are not, the resolved
config.yaml files are compared instead (run_dir, resume and overwrite ignored). A single
run has nothing to differ from: it shows all of its overrides.

Where the report goes (report.md, report.json, loss.png and, when any run has scores,
scores.png): `--out DIR` when given; else the folder named by a single PATH (the sweep dir,
the pipeline dir, the run dir or the folder searched); else, for several PATHs, the deepest
folder that holds all the runs found.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from ..errors import UserError, report_and_exit
from .metrics import mean_std

# Keys that never tell runs apart (where the run went, how it was started).
IGNORED_KEYS = ("run_dir", "resume", "overwrite")
DPI = 100
LOSS_FIGSIZE = (9.0, 5.0)  # inches: 900 x 500 pixels at DPI
SCORES_FIGSIZE = (9.0, 5.0)
SCORE_METRICS = (("rouge_l", "ROUGE-L"), ("exact_match", "exact match %"))
MAX_LABEL = 48


# --------------------------------------------------------------------- reading runs
def _natural_key(path: Path) -> list:
    """Sort 2/ before 10/: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read '{path}' ({error}); is the run still being written?") from error


def _read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read '{path}' ({' '.join(str(error).split())})") from error


def _read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short by a killed run is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _score_entry(value) -> dict:
    """{"mean", "std"} from an evaluate entry ({"mean", "std", ...}) or a pipeline entry (a number)."""
    if isinstance(value, dict):
        return {"mean": _finite(value.get("mean")), "std": _finite(value.get("std")) or 0.0}
    return {"mean": _finite(value), "std": 0.0}


def _scores(summary: dict) -> dict:
    """model -> metric -> {"mean", "std"}, from an evaluate or a pipeline summary."""
    models = summary.get("models") if summary.get("stage") == "evaluate" else summary.get("scores")
    scores = {}
    for model, entry in (models or {}).items():
        if isinstance(entry, dict):
            metrics = {key: _score_entry(entry[key]) for key, _ in SCORE_METRICS if key in entry}
            if metrics:
                scores[model] = metrics
    return scores


def _load_run(run_dir: Path) -> dict:
    summary = _read_json(run_dir / "summary.json")
    if not isinstance(summary, dict):
        raise UserError(f"'{run_dir / 'summary.json'}' is not a stage summary (expected a JSON object)")
    pipeline = summary.get("stage") == "pipeline"
    metrics = _read_metrics(run_dir / ("distill" if pipeline else ".") / "metrics.jsonl")
    scores = _scores(summary)
    if pipeline and (run_dir / "evaluate" / "summary.json").is_file():
        scores = _scores(_read_json(run_dir / "evaluate" / "summary.json")) or scores
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = _read_yaml(overrides_file) if overrides_file.is_file() else None
    config = _read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    losses = [r for r in metrics if _finite(r.get("loss")) is not None]
    vals = [r for r in metrics if _finite(r.get("val_loss")) is not None]
    return {
        "path": run_dir,
        "stage": summary.get("stage", "?"),
        "summary": summary,
        "metrics": metrics,
        "overrides": [str(o) for o in overrides] if isinstance(overrides, list) else None,
        "config": config if isinstance(config, dict) else None,
        "steps": max((int(r["step"]) for r in metrics), default=None) if metrics else summary.get("steps"),
        "final_loss": _finite(losses[-1]["loss"]) if losses else _finite(summary.get("final_loss")),
        "final_val_loss": _finite(vals[-1]["val_loss"]) if vals else _finite(summary.get("val_loss")),
        "scores": scores,
        "train_seconds": _finite(summary.get("train_seconds")),
        "source_counts": _source_counts(summary),
    }


def _source_counts(summary: dict) -> dict | None:
    """{"fresh": n, "buffer": n} of a distill run that used student samples, else None."""
    counts = summary.get("source_counts")
    if not isinstance(counts, dict) or not (counts.get("fresh") or counts.get("buffer")):
        return None
    return {source: int(counts.get(source) or 0) for source in ("fresh", "buffer")}


def find_runs(path: Path) -> tuple[list[Path], list[Path]]:
    """(runs, unfinished) under path: folders with summary.json, and folders of a run that has none yet."""
    if (path / "summary.json").is_file():
        return [path], []
    runs, unfinished = [], []
    try:
        children = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_natural_key)
    except OSError as error:
        raise UserError(f"cannot read the folder '{path}' ({error.strerror})") from error
    for child in children:
        if (child / "summary.json").is_file():
            runs.append(child)
        elif (child / "config.yaml").is_file() or (child / "metrics.jsonl").is_file():
            unfinished.append(child)
        else:
            sub_runs, sub_unfinished = find_runs(child)
            runs += sub_runs
            unfinished += sub_unfinished
    return runs, unfinished


# ------------------------------------------------------------------ telling runs apart
def _format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (str, int, float)):
        return str(value)
    return json.dumps(value)


def _parse_overrides(overrides: list[str]) -> dict[str, str]:
    parsed = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        deleted = key.startswith("~")
        key = key.lstrip("+~")
        if key in IGNORED_KEYS or key.startswith("hydra."):
            continue
        parsed[key] = "(deleted)" if deleted else (value if sep else "")
    return parsed


def _flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in config.items():
        full = f"{prefix}{key}"
        if full in IGNORED_KEYS:
            continue
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, full + "."))
        else:
            flat[full] = _format_value(value)
    return flat


def _differing(items: list[dict[str, str]]) -> list[str]:
    keys = []
    for item in items:
        keys += [k for k in item if k not in keys]
    return [k for k in keys if len({item.get(k) for item in items}) > 1]


def differing_settings(runs: list[dict]) -> tuple[str, list[dict[str, str | None]]]:
    """("overrides" | "config", one {key: value} per run of the keys that differ between runs).

    A key that differs because a run does not set it at all maps to None in that run.
    """
    if len(runs) == 1:
        run = runs[0]
        return "overrides", [_parse_overrides(run["overrides"] or [])]
    if all(run["overrides"] is not None for run in runs):
        parsed = [_parse_overrides(run["overrides"]) for run in runs]
        keys = _differing(parsed)
        if keys or not all(run["config"] for run in runs):
            return "overrides", [{k: p.get(k) for k in keys} for p in parsed]
    if all(run["config"] for run in runs):
        flat = [_flatten(run["config"]) for run in runs]
        keys = _differing(flat)
        return "config", [{k: f.get(k) for k in keys} for f in flat]
    return "overrides", [{} for _ in runs]


def _label_parts(settings: dict[str, str | None], source: str) -> list[str]:
    """key=value per differing key; a key the run does not set shows as (default), or (absent) in a config."""
    unset = "(default)" if source == "overrides" else "(absent)"
    return [f"{k}={unset if v is None else v}" for k, v in settings.items()]


def _short(text: str, limit: int = MAX_LABEL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------ runs that differ only in seed
def _mean_curve(group: list[dict]) -> list[dict]:
    """The loss and val_loss curves averaged over a group's runs, at the steps all of them logged."""
    by_run = [{int(r["step"]): r for r in entry["metrics"]} for entry in group]
    steps = sorted(set.intersection(*(set(run) for run in by_run)))
    curve = []
    for step in steps:
        point = {"step": step}
        for key in ("loss", "val_loss"):
            values = [_finite(run[step].get(key)) for run in by_run]
            if all(v is not None for v in values):
                point[key] = sum(values) / len(values)
        curve.append(point)
    return curve


def _seed_group(group: list[dict]) -> dict:
    """One entry for runs that differ only in seed: every figure is the mean ± std over the runs.

    A run's score is already its mean over evaluation seeds; the std here is the spread over
    training seeds, the noise a reader needs to tell two settings apart.
    """
    first = group[0]
    scores, models = {}, []
    for entry in group:
        models += [m for m in entry["scores"] if m not in models]
    for model in models:
        for metric, _ in SCORE_METRICS:
            values = [entry["scores"].get(model, {}).get(metric, {}).get("mean") for entry in group]
            values = [v for v in values if v is not None]
            if values:
                mean, std = mean_std(values)
                scores.setdefault(model, {})[metric] = {"mean": mean, "std": std, "n": len(values)}

    def spread(key: str) -> tuple[float | None, float | None]:
        values = [entry[key] for entry in group if entry[key] is not None]
        return mean_std(values) if values else (None, None)

    counts = [entry["source_counts"] for entry in group if entry["source_counts"]]
    settings = {k: v for k, v in first["settings"].items() if k != "seed"}
    parts = [part for part in first["label_parts"] if not part.startswith("seed=")]
    (loss, loss_std), (val, val_std), (seconds, _) = spread("final_loss"), spread("final_val_loss"), spread(
        "train_seconds")
    # the first run's name stands for the group (the rest are listed in report.json)
    return {**first, "name": f"{first['name']} (+{len(group) - 1})", "settings": settings,
            "label_parts": parts, "label": " ".join(parts), "metrics": _mean_curve(group),
            "final_loss": loss, "final_loss_std": loss_std, "final_val_loss": val, "final_val_loss_std": val_std,
            "train_seconds": seconds, "scores": scores,
            "seeds": [entry["settings"].get("seed") for entry in group], "runs": [str(e["path"]) for e in group],
            "source_counts": ({s: sum(c[s] for c in counts) / len(counts) for s in ("fresh", "buffer")}
                              if counts else None),
            "steps": first["steps"] if len({entry["steps"] for entry in group}) == 1 else None}


def group_seeds(entries: list[dict]) -> list[dict]:
    """Runs whose differing settings are the same but for `seed` become one entry (in first-seen order)."""
    groups: dict[tuple, list[dict]] = {}
    for entry in entries:
        key = tuple((k, v) for k, v in entry["settings"].items() if k != "seed")
        groups.setdefault(key, []).append(entry)
    return [_seed_group(group) if len(group) > 1 else group[0] for group in groups.values()]


# ------------------------------------------------------------------------- outputs
def _fmt(value) -> str:
    """Five significant digits: small KD losses (0.03381) keep as much detail as large ones (2.4519)."""
    return "—" if value is None else f"{value:.5g}"


def _fmt_spread(value, std) -> str:
    """A value, or mean ± std over training seeds for a group of runs."""
    return _fmt(value) if std is None or value is None else f"{_fmt(value)} ± {std:.2g}"


def _fmt_seconds(seconds) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f}s" if seconds < 600 else f"{seconds / 60:.1f}min"


def _score_text(entry: dict | None, digits: int) -> str:
    if not entry or entry.get("mean") is None:
        return "—"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def _table(entries: list[dict], models: list[str]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows: one row per run, or, when several models were scored, one row per run and model.

    The stage and steps columns only appear when they differ between runs (the title names them otherwise).
    """
    with_stage = len({entry["stage"] for entry in entries}) > 1
    with_steps = len({entry["steps"] for entry in entries}) > 1
    with_seeds = any("seeds" in entry for entry in entries)
    with_time = any(entry["train_seconds"] is not None for entry in entries)
    with_sources = any(entry["source_counts"] for entry in entries)
    columns = ["run", "overrides", *(["seeds"] if with_seeds else []), *(["stage"] if with_stage else []),
               *(["steps"] if with_steps else []), "loss", "val_loss", *(["train time"] if with_time else []),
               *(["fresh / buffer steps"] if with_sources else [])]
    columns += (["model"] if len(models) > 1 else []) + (["ROUGE-L", "EM %"] if models else [])
    rows = []
    for entry in entries:
        seeds = ",".join(str(seed) for seed in entry.get("seeds", [])) or entry["settings"].get("seed") or "—"
        counts = entry["source_counts"]
        run = [entry["name"], entry["label"] or "—", *([seeds] if with_seeds else []),
               *([entry["stage"]] if with_stage else []),
               *(["—" if entry["steps"] is None else str(entry["steps"])] if with_steps else []),
               _fmt_spread(entry["final_loss"], entry.get("final_loss_std")),
               _fmt_spread(entry["final_val_loss"], entry.get("final_val_loss_std")),
               *([_fmt_seconds(entry["train_seconds"])] if with_time else []),
               *([f"{counts['fresh']:.0f} / {counts['buffer']:.0f}" if counts else "—"] if with_sources else [])]
        if len(models) <= 1:
            scores = entry["scores"].get(models[0], {}) if models else {}
            rows.append(run + ([_score_text(scores.get("rouge_l"), 2), _score_text(scores.get("exact_match"), 1)]
                               if models else []))
            continue
        scored = [model for model in models if model in entry["scores"]] or ["—"]
        for i, model in enumerate(scored):
            scores = entry["scores"].get(model, {})
            rows.append((run if i == 0 else [""] * len(run))
                        + [model, _score_text(scores.get("rouge_l"), 2), _score_text(scores.get("exact_match"), 1)])
    return columns, rows


def _title(entries: list[dict], models: list[str]) -> str:
    notes = []
    stages, steps = {e["stage"] for e in entries}, {e["steps"] for e in entries}
    if len(stages) == 1:
        notes.append(f"stage {stages.pop()}")
    if len(steps) == 1 and None not in steps:
        notes.append(f"{steps.pop()} steps")
    notes.append("loss and val_loss at the last step")
    if any("seeds" in e for e in entries):
        notes.append("runs that differ only in seed: mean ± std over them")
    if len(models) == 1:
        notes.append(f"scores of {models[0]}")
    return f"distillm report: {len(entries)} run{'s' if len(entries) != 1 else ''} ({', '.join(notes)})"


def _print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """Like ui.print_table, but a narrow terminal folds the overrides instead of cutting them short."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    widths = [max(len(column), *(len(row[i]) for row in rows)) + 3 for i, column in enumerate(columns)]
    table = Table(title=title)
    for i, column in enumerate(columns):
        if column == "overrides":
            # As wide as the terminal leaves once the other columns fit, so it folds rather than squeezes.
            room = console.width - (sum(widths) - widths[i]) - 4
            # (a min_width the terminal cannot give would crop the table's right side instead).
            table.add_column(column, overflow="fold", min_width=min(widths[i] - 3, room) if room >= 12 else None)
        else:
            table.add_column(column, justify="left" if column in ("run", "stage", "model") else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _markdown(title: str, columns: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [f"# {title}", "", "| " + " | ".join(cell(c) for c in columns) + " |",
             "|" + "|".join("---" if c in ("run", "overrides", "stage", "model") else "---:" for c in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _plot_labels(entries: list[dict]) -> list[str]:
    labels = [entry["label"] or entry["name"] for entry in entries]
    if len(set(labels)) < len(labels):
        labels = [f"{entry['name']}: {entry['label']}" if entry["label"] else entry["name"] for entry in entries]
    return [_short(label) for label in labels]


def _plot_loss(entries: list[dict], labels: list[str], path: Path) -> bool:
    from matplotlib.figure import Figure  # the object API draws with Agg; no pyplot, no global backend

    fig = Figure(figsize=LOSS_FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for entry, label in zip(entries, labels, strict=True):
        points = [(int(r["step"]), float(r["loss"])) for r in entry["metrics"] if _finite(r.get("loss")) is not None]
        if not points:
            continue
        (line,) = ax.plot(*zip(*points, strict=True), label=label, linewidth=1.2)
        vals = [(int(r["step"]), float(r["val_loss"])) for r in entry["metrics"]
                if _finite(r.get("val_loss")) is not None]
        if vals:
            ax.plot(*zip(*vals, strict=True), linestyle="none", marker="o", markersize=4, color=line.get_color())
        drawn = True
    if not drawn:
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (dots: val_loss)")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=DPI, format="png")
    return True


def _tick_labels(entries: list[dict]) -> list[str]:
    """One override per line under each bar group; the run name when that is not unique."""
    ticks = ["\n".join(_short(part, 28) for part in entry["label_parts"]) for entry in entries]
    if len(set(ticks)) < len(ticks) or not all(ticks):
        ticks = [f"{entry['name']}\n{tick}" if tick else entry["name"]
                 for entry, tick in zip(entries, ticks, strict=True)]
    return ticks


def _plot_scores(entries: list[dict], models: list[str], path: Path) -> None:
    from matplotlib.figure import Figure

    scored = [entry for entry in entries if entry["scores"]]
    ticks = _tick_labels(scored)
    fig = Figure(figsize=SCORES_FIGSIZE, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(SCORE_METRICS))
    width = 0.8 / max(len(models), 1)
    for ax, (metric, title) in zip(axes, SCORE_METRICS, strict=True):
        for m, model in enumerate(models):
            xs, means, stds = [], [], []
            for i, entry in enumerate(scored):
                value = entry["scores"].get(model, {}).get(metric)
                if value and value["mean"] is not None:
                    xs.append(i + (m - (len(models) - 1) / 2) * width)
                    means.append(value["mean"])
                    stds.append(value["std"])
            if xs:
                ax.bar(xs, means, width=width, yerr=stds, capsize=3, label=model)
        many = len(scored) > 4
        ax.set_xticks(range(len(scored)), ticks, rotation=30 if many else 0, ha="right" if many else "center",
                      fontsize="small")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    if len(models) > 1:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=len(models),
                   fontsize="small")
    fig.suptitle(f"scores{'' if len(models) > 1 else ' of ' + models[0]}: mean over seeds, error bars = std")
    fig.savefig(path, dpi=DPI, format="png")


def _output_dir(paths: list[Path], run_dirs: list[Path], out: str | None) -> Path:
    if out:
        return Path(out)
    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath([str(p) for p in run_dirs]))


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# ---------------------------------------------------------------------------- entry
def report(paths: list[str], out: str | None = None, per_seed: bool = False) -> dict:
    """Collect the runs under `paths`, print a table, write report.md/report.json/loss.png/scores.png.

    Returns what report.json holds. Raises UserError (one line) for a missing path or no runs.
    """
    if not paths:
        raise UserError("name at least one run dir, pipeline dir or sweep dir: distillm report PATH [PATH ...]")
    roots, run_dirs, unfinished = [], [], []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(f"'{raw}' does not exist; name a run dir, a pipeline dir or a sweep dir")
        if path.is_file():
            if path.name != "summary.json":
                raise UserError(f"'{raw}' is a file; name the run dir that holds summary.json")
            path = path.parent
        path = path.resolve()
        found, not_done = find_runs(path)
        if not found:
            hint = f" ({len(not_done)} unfinished: no summary.json yet)" if not_done else ""
            raise UserError(f"no runs under '{raw}'{hint}; a run is a folder with summary.json "
                            "(written when a stage finishes)")
        roots.append(path)
        run_dirs += [r for r in found if r not in run_dirs]
        unfinished += [u for u in not_done if u not in unfinished]

    runs = [_load_run(run_dir) for run_dir in run_dirs]
    out_dir = _output_dir(roots, run_dirs, out)
    base = Path(os.path.commonpath([str(r) for r in run_dirs])) if len(run_dirs) > 1 else run_dirs[0].parent
    source, settings = differing_settings(runs)
    entries = []
    for run, setting in zip(runs, settings, strict=True):
        name = os.path.relpath(run["path"], base) if len(run_dirs) > 1 else run["path"].name
        if name == "." or name.startswith(".."):
            name = run["path"].name
        parts = _label_parts(setting, source)
        entries.append({**run, "name": name, "label": " ".join(parts), "label_parts": parts, "settings": setting})
    if not per_seed:
        entries = group_seeds(entries)
    models = []
    for entry in entries:
        models += [m for m in entry["scores"] if m not in models]

    columns, rows = _table(entries, models)
    title = _title(entries, models)
    _print_table(title, columns, rows)

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {"markdown": out_dir / "report.md", "json": out_dir / "report.json"}
        labels = _plot_labels(entries)
        if _plot_loss(entries, labels, out_dir / "loss.png"):
            files["loss_plot"] = out_dir / "loss.png"
        if models:
            _plot_scores(entries, models, out_dir / "scores.png")
            files["scores_plot"] = out_dir / "scores.png"
        files["markdown"].write_text(_markdown(title, columns, rows), encoding="utf-8")
        result = _json_safe({
            "runs": [{"name": e["name"], "path": str(e["path"]), "stage": e["stage"], "label": e["label"],
                      "differing": e["settings"], "overrides": e["overrides"], "steps": e["steps"],
                      "final_loss": e["final_loss"], "final_val_loss": e["final_val_loss"], "scores": e["scores"],
                      "train_seconds": e["train_seconds"], "source_counts": e["source_counts"],
                      **({"seeds": e["seeds"], "seed_runs": e["runs"], "final_loss_std": e["final_loss_std"],
                          "final_val_loss_std": e["final_val_loss_std"]} if "seeds" in e else {})}
                     for e in entries],
            "differing_keys": _differing([e["settings"] for e in entries]) if len(entries) > 1 else [],
            "compared_by": source,
            "unfinished": [str(u) for u in unfinished],
            "out_dir": str(out_dir),
            "files": {kind: str(path) for kind, path in files.items()},
        })
        files["json"].write_text(json.dumps(result, indent=2), encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot write the report to '{out_dir}' ({error.strerror or error}); "
                        "pass --out DIR to write it elsewhere") from error
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillm report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare finished runs: the overrides that differ between them, final loss, final val_loss\n"
                    "and scores (ROUGE-L and exact match, mean ± std over seeds). Prints a table and writes\n"
                    "report.md, report.json, loss.png (training loss per run) and scores.png (when any run\n"
                    "was evaluated).",
        epilog="PATH: a run dir (a folder with summary.json), a pipeline dir (one run: the distill loss\n"
               "curve and the evaluate scores), a sweep dir (numbered sub-folders from `distillm STAGE -m`)\n"
               "or any folder above runs (searched downwards).\n\n"
               "Runs that differ only in `seed` (`-m seed=0,1,2`) share one row: loss, val_loss, train\n"
               "time and scores are the mean ± std over those training seeds (--per-seed: a row each).\n\n"
               "Output: --out DIR when given, else the single PATH named, else the deepest folder that\n"
               "holds all the runs found.\n\n"
               "examples:\n"
               "  distillm report runs/sweep\n"
               "  distillm report runs/pipeline_a runs/pipeline_b --out runs/compare\n",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run dir, pipeline dir, sweep dir or a folder of runs")
    parser.add_argument("--out", metavar="DIR", help="write report.md, report.json and the plots here")
    parser.add_argument("--per-seed", action="store_true",
                        help="one row per run even where runs differ only in seed (default: one row, mean ± std)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = report(args.paths, out=args.out, per_seed=args.per_seed)
    except UserError as error:
        report_and_exit(error)
    if result["unfinished"]:
        print(f"note: skipped {len(result['unfinished'])} folder(s) without summary.json (unfinished or failed): "
              + ", ".join(result["unfinished"]), file=sys.stderr)
    names = ", ".join(Path(p).name for p in result["files"].values())
    print(f"report: wrote {names} in {result['out_dir']}", file=sys.stderr)


if __name__ == "__main__":
    main()
