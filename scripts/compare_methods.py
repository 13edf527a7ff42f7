"""SFT-only vs DistiLLM vs DistiLLM-2 on the embedded default, averaged over seeds.

For every seed this runs, through the `distillm` CLI:

1. ``distillm pipeline seed=S``: teacher, SFT-only student, and the demo's distilled
   student (skew forward KL + adaptive off-policy on the teacher's answers);
2. ``distillm pipeline experiment=distillm``: DistiLLM's headline setting (skew reverse KL
   + adaptive off-policy) from the *same* teacher, SFT student and teacher answers;
3. ``distillm pipeline experiment=distillm2``: DistiLLM-2 (curated teacher/student pairs,
   contrastive loss with the beta/alpha curricula) from the same teacher and SFT student.

4. a control: the SFT-only student trained for as many more steps as distillation takes
   (``distillm sft-student student_dir=<SFT student>`` with the distill stage's steps and
   learning rate, on the same labels), so that a gain cannot be put down to extra steps.

Steps 2 to 4 start from copies of step 1's finished stages, so every method distils the
same teacher into the same SFT student and only the distillation differs. Runs that already
finished are skipped (``resume=auto``), so an interrupted comparison picks up where it
stopped. The table (ROUGE-L and exact match on the toy test split, mean ± std over seeds,
and the distill stage's wall time) is printed and written to ``<root>/results.md`` and
``<root>/results.json``.

    .venv/bin/python scripts/compare_methods.py --seeds 0 1 2 [--root runs/methods] [-- extra overrides]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillm_cli.ui import print_table  # noqa: E402

# method name -> (pipeline overrides, stages copied from the seed's base pipeline)
METHODS = {
    "demo default (skew_fkl + adaptive)": ([], ()),
    "DistiLLM (skew_rkl + adaptive)": (["experiment=distillm"], ("sft_teacher", "sft_student", "generate")),
    "DistiLLM-2 (contrastive pairs)": (["experiment=distillm2"], ("sft_teacher", "sft_student")),
}


def run_pipeline(run_dir: Path, seed: int, overrides: list[str], extra: list[str]) -> dict:
    """One `distillm pipeline` (finished stages skipped); returns its evaluate and distill summaries."""
    distillm = Path(sys.executable).with_name("distillm")
    command = [str(distillm), "pipeline", f"run_dir={run_dir}", f"seed={seed}", "resume=auto", *overrides, *extra]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    evaluate = json.loads((run_dir / "evaluate" / "summary.json").read_text())
    distill = json.loads((run_dir / "distill" / "summary.json").read_text())
    return {"models": evaluate["models"], "distill_seconds": distill.get("train_seconds", 0.0)}


def run_control(seed_dir: Path, seed: int, extra: list[str]) -> dict:
    """The SFT-only student trained on its labels for the distill stage's steps; then evaluated."""
    distillm = str(Path(sys.executable).with_name("distillm"))
    distill_train = _load_yaml(seed_dir / "base" / "distill" / "config.yaml")["train"]
    control = seed_dir / "sft_more"
    if not (control / "summary.json").exists():
        subprocess.run([distillm, "sft-student", f"run_dir={control}", f"seed={seed}", "overwrite=true",
                        f"student_dir={seed_dir / 'base' / 'sft_student' / 'checkpoint'}",
                        f"train.max_steps={distill_train['max_steps']}", f"train.lr={distill_train['lr']}",
                        f"train.micro_batch_size={distill_train['micro_batch_size']}", *extra], check=True)
    scored = seed_dir / "sft_more_eval"
    if not (scored / "summary.json").exists():
        subprocess.run([distillm, "evaluate", f"run_dir={scored}", f"seed={seed}", "overwrite=true",
                        f"+eval.models.control={control / 'checkpoint'}", *extra], check=True)
    return json.loads((scored / "summary.json").read_text())["models"]["control"]


def _load_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/methods")
    parser.add_argument("extra", nargs="*", help="Hydra overrides passed to every pipeline (after --)")
    args = parser.parse_args()
    root = Path(args.root).resolve()

    # row name -> metric -> per-seed values
    rows: dict[str, dict[str, list[float]]] = {}

    def record(name: str, scores: dict, seconds: float | None) -> None:
        row = rows.setdefault(name, {"rouge_l": [], "exact_match": [], "seconds": []})
        row["rouge_l"].append(scores["rouge_l"]["mean"])
        row["exact_match"].append(scores["exact_match"]["mean"])
        if seconds is not None:
            row["seconds"].append(seconds)

    for seed in args.seeds:
        base = root / f"seed{seed}" / "base"
        for method, (overrides, reused) in METHODS.items():
            run_dir = base if not overrides else root / f"seed{seed}" / overrides[0].split("=")[1]
            for stage in reused:  # same teacher, SFT student (and teacher answers) as the base run
                if not (run_dir / stage).exists():
                    shutil.copytree(base / stage, run_dir / stage)
            result = run_pipeline(run_dir, seed, overrides, args.extra)
            if not overrides:
                record("teacher", result["models"]["teacher"], None)
                record("SFT-only student", result["models"]["sft_student"], None)
            record(method, result["models"]["distilled"], result["distill_seconds"])
        record("control: SFT-only + as many more SFT steps", run_control(root / f"seed{seed}", seed, args.extra), None)

    table, summary = [], {}
    for name, metrics in rows.items():
        rl, em = mean_std(metrics["rouge_l"]), mean_std(metrics["exact_match"])
        seconds = f"{statistics.fmean(metrics['seconds']):.0f}s" if metrics["seconds"] else ""
        table.append([name, f"{rl[0]:.2f} ± {rl[1]:.2f}", f"{em[0]:.1f} ± {em[1]:.1f}", seconds])
        summary[name] = {**metrics, "rouge_l_mean": rl[0], "rouge_l_std": rl[1],
                         "exact_match_mean": em[0], "exact_match_std": em[1]}
    headers = ["model", "ROUGE-L", "exact match %", "distill time"]
    print_table(f"embedded default, seeds {' '.join(map(str, args.seeds))}", headers, table)
    (root / "results.json").write_text(json.dumps({"seeds": args.seeds, "rows": summary}, indent=2))
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in table]
    (root / "results.md").write_text("\n".join(lines) + "\n")
    print(f"written: {root / 'results.md'}, {root / 'results.json'}")


if __name__ == "__main__":
    main()
