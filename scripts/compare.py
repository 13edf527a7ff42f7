"""`make compare`: the evidence for DistiLLM's two claims on the embedded task, over training seeds.

Part 1, the loss comparison (DistiLLM's Table 2 question: does skew KL distil better?). One
teacher and its answers to the unlabelled prompts; per training seed one SFT student
(train.select=val_loss, as the pipeline picks it); then, from that student and at equal
steps (the distill stage's 300 x 32 at its learning rate):

  distill, one sweep per seed   distillm distill -m loss=fkl,rkl,jsd,tvd,skew_fkl,skew_rkl
                                (off_policy=none: the loss is the only thing that differs)
                                teacher_cache=<root>/cache: the teacher's distributions on the
                                labels and answers, cached once (cache-teacher) with cache.k at
                                least the vocabulary (99 tokens), so every entry is kept and each
                                loss is the dense one exactly; no job of the sweeps runs the teacher
  SeqKD                         sft-student on the labels + the teacher's answers
  control                       sft-student on the labels only (what the extra steps alone give)

and a capacity reference, how far this student gets with every label the teacher had: the
student trained as the teacher is (1000 steps x 32 on the 4000 labels, from its random init,
kept at its lowest validation loss). "gap closed" is (method - SFT-only) / (capacity - SFT-only),
per seed, in ROUGE-L.

Part 2, adaptive off-policy sampling (the claim: on-policy quality, faster). A setting where the
student's validation loss does rise, so that phi moves: distillation on 100 of the labels alone
(no teacher answers), 24 epochs in 150 steps of 16, with eps scaled to the toy's loss (below).
none, on_policy and adaptive at equal steps, plus adaptive with every buffer replay answered by
fresh samples instead (off_policy.replay=false).

Every run scores its kept checkpoint on the test split (eval.after_training=true), so
`distillm report` on the sweep folders gives the mean +- std tables and plots; this script
prints the two tables with the references and writes <root>/results.md and results.json.
Finished runs are skipped, so an interrupted comparison continues where it stopped.
--jobs 2 runs two of them side by side, one CPU thread each.

    .venv/bin/python scripts/compare.py [--seeds 0 1 2] [--root runs/compare] [--jobs 2] [--part 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillm_cli.ui import mean_std, print_table  # noqa: E402

LOSSES = ("fkl", "rkl", "jsd", "tvd", "skew_fkl", "skew_rkl")
# cache.k at or above the toy vocabulary (99): the cache keeps every token, so the cached losses are the
# dense ones exactly (tests/test_topk_losses.py checks k = V against the dense objective).
EXACT_CACHE_K = 128
# The distill stage's schedule, given to every run that starts from the SFT student (equal steps).
EQUAL_STEPS = ["train.max_steps=300", "train.micro_batch_size=32", "train.lr=1e-3"]
SCORED = ["eval.after_training=true"]
# Part 2: distil on 100 of the labels alone (no teacher answers), 24 epochs in 150 steps of 16,
# so the validation loss turns up. Measured here: it rises by 0.02-0.05 above its step-0 value
# and never by the paper's eps of 0.1 (the toy's KD loss is about 1 nat), so eps is 0.02.
OFF_POLICY_SETTING = ["data.train_examples=100", "off_policy.eps=0.02", "train.max_steps=150",
                      "train.micro_batch_size=16", "train.eval_interval=25"]
OFF_POLICY = {
    "none": ["off_policy=none"],
    "on_policy": ["off_policy=on_policy"],
    "adaptive": ["off_policy=adaptive"],
    "adaptive, fresh samples instead of replay": ["off_policy=adaptive", "off_policy.replay=false"],
}


class Runner:
    """Runs `distillm` commands whose summaries are not there yet, each with its output in a log file."""

    def __init__(self, root: Path, threads: int):
        self.root, self.threads = root, threads
        self.lock = threading.Lock()  # one whole line at a time from the workers
        self.distillm = str(Path(sys.executable).with_name("distillm"))
        (root / "logs").mkdir(parents=True, exist_ok=True)

    def run(self, name: str, args: list[str], produces: list[Path]) -> None:
        if all((path / "summary.json").exists() for path in produces):
            self.say(f"done already: {name}")
            return
        command = [self.distillm, *args, f"threads={self.threads}"]
        log = self.root / "logs" / f"{name.replace('/', '_')}.log"
        self.say(f"start {name}: {' '.join(command[1:])}  (log: {log})")
        started = time.perf_counter()
        with log.open("w") as handle:
            result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": str(self.threads)})
        if result.returncode:
            raise SystemExit(f"{name} failed (exit {result.returncode}); see {log}")
        self.say(f"finished {name} in {time.perf_counter() - started:.0f}s")

    def say(self, line: str) -> None:
        with self.lock:
            print(f"  {line}", flush=True)


def shared_stages(runner: Runner, root: Path, parts: list[int]) -> None:
    """The teacher (scored too), its greedy answers to the unlabelled prompts and, for part 1, its
    distributions on the labels and answers (the sweeps' cache): once for all seeds."""
    teacher = f"teacher_dir={root / 'teacher' / 'checkpoint'}"
    runner.run("teacher", ["sft-teacher", f"run_dir={root / 'teacher'}", *SCORED], [root / "teacher"])
    runner.run("answers", ["generate-student", "generate=teacher", "generation=greedy", teacher,
                           f"run_dir={root / 'answers'}"], [root / "answers"])
    if 1 in parts:
        runner.run("cache", ["cache-teacher", teacher, f"generations={root / 'answers'}", f"cache.k={EXACT_CACHE_K}",
                             f"run_dir={root / 'cache'}"], [root / "cache"])


def sft_student(runner: Runner, root: Path, seed: int) -> None:
    """The SFT-only student of one seed, kept at its lowest validation loss as the pipeline keeps it."""
    sft = root / "sft" / f"seed{seed}"
    runner.run(f"seed{seed}/sft", ["sft-student", f"seed={seed}", f"run_dir={sft}", "train.select=val_loss",
                                   *SCORED], [sft])


def capacity(root: Path, seed: int) -> tuple[str, list[str], list[Path]]:
    """The student trained as the teacher is: the teacher's labels and steps, from the student's init."""
    run_dir = root / "capacity" / f"seed{seed}"
    return (f"seed{seed}/capacity", ["sft-student", f"seed={seed}", "data.train_split=teacher_train",
                                     "train.max_steps=1000", "train.select=val_loss", *SCORED,
                                     f"run_dir={run_dir}"], [run_dir])


def from_sft_student(root: Path, seed: int, parts: list[int]) -> list[tuple[str, list[str], list[Path]]]:
    """(name, distillm arguments, run dirs) of every run that starts from the seed's SFT student."""
    teacher, answers = f"teacher_dir={root / 'teacher' / 'checkpoint'}", f"generations={root / 'answers'}"
    # ${seed} rather than the number: the runs of one setting then differ in `seed` alone, and
    # `distillm report` folds them into one row (mean ± std over the seeds).
    start = [f"seed={seed}", f"student_dir={root / 'sft'}/seed${{seed}}/checkpoint", *SCORED]
    runs = []
    if 1 in parts:
        sweep = root / "losses" / f"seed{seed}"
        runs.append((f"seed{seed}/losses", ["distill", "-m", f"loss={','.join(LOSSES)}", "off_policy=none",
                                            f"teacher_cache={root / 'cache'}", answers, *start, *EQUAL_STEPS,
                                            f"run_dir={sweep}"],
                     [sweep / str(job) for job in range(len(LOSSES))]))
        for name, extra in (("seqkd", [answers]), ("control", [])):
            run_dir = root / name / f"seed{seed}"
            runs.append((f"seed{seed}/{name}", ["sft-student", *start, *EQUAL_STEPS, *extra, f"run_dir={run_dir}"],
                         [run_dir]))
    if 2 in parts:
        for number, (mode, extra) in enumerate(OFF_POLICY.items()):
            run_dir = root / "off_policy" / f"seed{seed}" / str(number)
            runs.append((f"seed{seed}/off_policy {mode}", ["distill", "loss=skew_rkl", teacher, *start,
                                                           *OFF_POLICY_SETTING, *extra, f"run_dir={run_dir}"],
                         [run_dir]))
    return runs


# ------------------------------------------------------------------------------- tables
def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def rouge(run_dir: Path) -> float:
    return summary(run_dir)["scores"]["student"]["rouge_l"]["mean"]


def loss_table(root: Path, seeds: list[int]) -> tuple[list[str], list[list[str]], dict]:
    rows: dict[str, dict[int, Path]] = {"teacher": {s: root / "teacher" for s in seeds},
                                        "SFT-only student (start of every row below)":
                                            {s: root / "sft" / f"seed{s}" for s in seeds},
                                        "control: + 300 SFT steps on the 600 labels":
                                            {s: root / "control" / f"seed{s}" for s in seeds},
                                        "SeqKD: + 300 SFT steps on labels + teacher answers":
                                            {s: root / "seqkd" / f"seed{s}" for s in seeds}}
    for job, loss in enumerate(LOSSES):
        rows[f"distill loss={loss}"] = {s: root / "losses" / f"seed{s}" / str(job) for s in seeds}
    rows["capacity: the student trained as the teacher (1000 steps on the 4000 labels)"] = {
        s: root / "capacity" / f"seed{s}" for s in seeds}
    start = {s: rouge(root / "sft" / f"seed{s}") for s in seeds}
    reach = {s: rouge(root / "capacity" / f"seed{s}") for s in seeds}
    seqkd = {s: rouge(root / "seqkd" / f"seed{s}") for s in seeds}
    table, figures = [], {}
    for name, runs in rows.items():
        scores = [rouge(runs[s]) for s in seeds]
        em = [summary(runs[s])["scores"]["student"]["exact_match"]["mean"] for s in seeds]
        seconds = [summary(runs[s]).get("train_seconds", 0.0) for s in seeds]
        gap = [100.0 * (rouge(runs[s]) - start[s]) / (reach[s] - start[s]) for s in seeds]
        # paired by seed: the same SFT student under both, so its own seed noise cancels
        versus_seqkd = [rouge(runs[s]) - seqkd[s] for s in seeds]
        shared = name == "teacher" or name.startswith(("SFT-only", "capacity"))
        wins = f"{mean_std(versus_seqkd)} (above on {sum(d > 0 for d in versus_seqkd)}/{len(seeds)} seeds)"
        table.append([name, mean_std(scores), mean_std(em, 1), "" if shared else mean_std(gap, 0) + " %",
                      "" if shared or name.startswith("SeqKD") else wins, f"{statistics.fmean(seconds):.0f}s"])
        figures[name] = {"rouge_l": scores, "exact_match": em, "gap_closed_percent": gap,
                         "minus_seqkd": versus_seqkd, "train_seconds": seconds}
    return ["model", "ROUGE-L", "exact match %", "gap closed", "minus SeqKD, same seed", "train time"], table, figures


def off_policy_table(root: Path, seeds: list[int]) -> tuple[list[str], list[list[str]], dict]:
    table, figures = [], {}
    for number, mode in enumerate(OFF_POLICY):
        runs = [summary(root / "off_policy" / f"seed{s}" / str(number)) for s in seeds]
        scores = [run["scores"]["student"]["rouge_l"]["mean"] for run in runs]
        seconds = [run["train_seconds"] for run in runs]
        fresh = [run["source_counts"]["fresh"] for run in runs]
        buffer = [run["source_counts"]["buffer"] for run in runs]
        phi = [run["final_phi"] for run in runs]
        table.append([mode, mean_std(scores), f"{statistics.fmean(seconds):.0f}s ± {statistics.pstdev(seconds):.0f}",
                      f"{statistics.fmean(fresh):.0f} / {statistics.fmean(buffer):.0f}", mean_std(phi)])
        figures[mode] = {"rouge_l": scores, "train_seconds": seconds, "fresh_steps": fresh, "buffer_steps": buffer,
                         "final_phi": phi}
    return ["off_policy", "ROUGE-L", "train time", "fresh / buffer steps", "final phi"], table, figures


def markdown(title: str, headers: list[str], rows: list[list[str]]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", default="runs/compare")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (the CPU threads split over them)")
    parser.add_argument("--part", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    args = parser.parse_args()
    root = Path(args.root).resolve()
    started = time.perf_counter()
    shared_stages(Runner(root, threads=max(1, os.cpu_count() or 1)), root, args.part)
    # Independent runs go to --jobs workers, each with its share of the CPU threads: first the
    # SFT students, then every run that starts from one (longest first, so the workers end together).
    runner = Runner(root, threads=max(1, (os.cpu_count() or 1) // args.jobs))
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done in [pool.submit(sft_student, runner, root, seed) for seed in args.seeds]:
            done.result()
        runs = [capacity(root, seed) for seed in args.seeds if 1 in args.part]
        runs += [run for seed in args.seeds for run in from_sft_student(root, seed, args.part)]
        runs.sort(key=lambda run: -len(run[2]))
        for done in [pool.submit(runner.run, *run) for run in runs]:
            done.result()

    text, results = [], {"seeds": args.seeds, "wall_seconds": time.perf_counter() - started}
    seeds = " ".join(map(str, args.seeds))
    if 1 in args.part:
        headers, rows, results["losses"] = loss_table(root, args.seeds)
        title = f"Part 1, losses at equal steps (ROUGE-L on the test split, mean ± std over training seeds {seeds})"
        print_table(title, headers, rows)
        text.append(markdown(title, headers, rows))
    if 2 in args.part:
        headers, rows, results["off_policy"] = off_policy_table(root, args.seeds)
        title = f"Part 2, off-policy sampling on 100 labels alone (skew_rkl, 150 steps, training seeds {seeds})"
        print_table(title, headers, rows)
        text.append(markdown(title, headers, rows))
    # The sweeps' own tables and plots (scores.png: mean ± std over the training seeds).
    for part, folder in ((1, "losses"), (2, "off_policy")):
        if part in args.part:
            subprocess.run([str(Path(sys.executable).with_name("distillm")), "report", str(root / folder)], check=True)
    (root / "results.md").write_text("\n".join(text))
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(f"written: {root / 'results.md'}, {root / 'results.json'} ({results['wall_seconds'] / 60:.1f} min wall); "
          f"plots: {root / 'losses' / 'scores.png'}, {root / 'off_policy' / 'scores.png'}")


if __name__ == "__main__":
    main()
