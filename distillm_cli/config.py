"""Typed configuration: every default of distillm, visible in one place.

These dataclasses are registered in Hydra's ConfigStore as the schema of the
composed config, so a misspelled key or a wrong type is refused before any work
starts. The YAML files under ``conf/`` pick values for the config groups; the
defaults below are what a group leaves unset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from .data.chat import TRAIN_ON
from .data.formats import TEMPLATES
from .data.toy import TASK_FAMILIES

STAGE_NAMES = ("sft-teacher", "sft-student", "generate-student", "cache-teacher", "distill", "evaluate", "pipeline",
               "check")
LOSS_NAMES = ("fkl", "rkl", "skew_fkl", "skew_rkl", "jsd", "tvd", "distillm2")
OFF_POLICY_MODES = ("none", "on_policy", "adaptive")
TOY_TASK_NAMES = tuple(TASK_FAMILIES)
SCHEDULES = ("decreasing", "constant", "increasing")
GENERATION_BACKENDS = ("hf", "vllm", "openai")
DATA_SOURCES = ("toy", "jsonl", "hf")
COLUMN_FIELDS = ("instruction", "input", "output", "messages", "conversations", "prompt", "response")
ATTENTION_KERNELS = ("sdpa", "eager", "flash_attention_2")


@dataclass
class ModelConfig:
    """A teacher/student pair: hub ids, local directories or built-in presets."""

    name: str = "tiny"
    teacher: str = "tiny-teacher"
    student: str = "tiny-student"
    # "" = the teacher's own tokenizer; "char" = the built-in character tokenizer.
    tokenizer: str = ""
    # Weights are kept in this dtype; loss math always runs in fp32.
    dtype: str = "float32"
    # Attention kernel of models loaded from a directory or the hub: sdpa, eager, or
    # flash_attention_2 (needs the flash-attn package). The built-in tiny presets keep their own.
    attn_implementation: str = "sdpa"
    # Run the Python code a model or tokenizer ships with (custom architectures): only for code you trust.
    trust_remote_code: bool = False


@dataclass
class TrainConfig:
    """Optimisation of the training stage being run (AdamW + cosine, METHOD.md §3)."""

    max_steps: int = 300
    micro_batch_size: int = 16
    grad_accum: int = 1
    lr: float = 5e-4
    min_lr: float = 1e-7
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_steps: int = 0
    # Validation loss every this many steps (drives the adaptive off-policy phi).
    eval_interval: int = 50
    valid_batches: int = 4
    # Recompute activations in the backward pass instead of keeping them: less memory, more compute.
    gradient_checkpointing: bool = False
    # When stderr is a log file (not a terminal): one plain progress line every this many steps.
    log_interval: int = 10
    # Write a resumable checkpoint every this many steps (0: only at the end).
    save_interval: int = 0
    keep_checkpoints: int = 2
    # A non-finite loss: stop (keeping the last good checkpoint) or skip that step (grad_accum=1 only).
    on_nonfinite: str = "stop"
    # Which weights checkpoint/ keeps, judged at every validation step: last (the final ones),
    # val_loss (the lowest validation loss) or rouge_l (the highest ROUGE-L of greedy answers,
    # eval.sampling made greedy, to the first select_examples records of data.valid_split).
    select: str = "last"
    select_examples: int = 64


# train.select: which weights a training stage keeps (train/selection.py).
SELECT_CHOICES = ("last", "val_loss", "rouge_l")

# loss.regenerate (DistiLLM-2's batched on-policy): which responses of the pairs are sampled anew each epoch.
REGENERATE_CHOICES = ("none", "student", "both")


@dataclass
class LossConfig:
    """The distillation objective: kd_ratio * divergence + (1 - kd_ratio) * CE."""

    name: str = "skew_fkl"
    alpha: float = 0.1
    beta: float = 0.5
    temperature: float = 1.0
    kd_ratio: float = 1.0
    # Weight of an extra CE term on plain pre-training text (DistiLLM's LM loss).
    lm_coef: float = 0.0
    # Treat the student inside the skew mixture as a constant (DistiLLM-2's SRKL).
    detach_mixture: bool = False
    # Positions per chunk of the fused loss: bounds the [chunk, V] temporaries.
    chunk_size: int = 1024
    # Fuse both models' output heads into the loss (losses/fused_head.py): the [N, V] logits of the
    # response rows and their gradient never exist, only one chunk at a time (a distill step's peak
    # memory 0.31x at the GPT-2 benchmark shapes, 0.76x with SmolLM2-135M, for 0.98x / 1.01x its time
    # on 2 CPU cores). false: the heads make the logit rows and the loss reads them (losses/dense.py);
    # same values and gradients; needed for a model whose head cannot be fused (one line says so).
    fused_head: bool = True
    # DistiLLM-2 (loss=distillm2): alpha is the SKL skew on teacher responses, alpha_s the
    # SRKL skew on student responses, beta the starting weight of the SRKL term.
    alpha_s: float = 0.1
    # linear: beta rises from beta to beta_max over beta_ramp_fraction of training, then stays.
    beta_schedule: str = "linear"
    beta_max: float = 1.0
    beta_ramp_fraction: float = 1.0
    # The objective times this (the authors' released trainer: (2 - b) SKL + b SRKL, i.e. 2x).
    scale: float = 1.0
    alpha_curriculum: bool = True
    alpha_min: float = 0.01
    # Batched on-policy, before each epoch after the first: none; student (new student
    # responses); both (new teacher and student responses, as the paper does).
    regenerate: str = "none"


@dataclass
class OffPolicyConfig:
    """Where each training batch comes from: dataset, fresh student samples, replay buffer."""

    name: str = "adaptive"
    # on_policy: probability of fresh student samples each step (GKD's lambda).
    lmbda: float = 0.5
    # adaptive (DistiLLM §4): starting probability, validation-loss rise that bumps it, bump size.
    phi0: float = 0.0
    eps: float = 0.1
    phi_step: float = 0.1
    capacity: int = 1000
    schedule: str = "decreasing"
    # adaptive: false trains on fresh samples wherever the schedule would replay the buffer
    # (the ablation that shows what the replay buffer saves: same decisions, no reuse).
    replay: bool = True


@dataclass
class DataConfig:
    """Instruction data: the built-in toy tasks, local jsonl files, or any Hugging Face dataset."""

    # toy, jsonl (data.path) or hf (data.hub_id: a hub name, a save_to_disk folder, parquet/json/csv files).
    name: str = "toy"
    # data=toy: which task families (distillm_cli/data/toy.py TASK_FAMILIES); empty: the default five.
    toy_tasks: list[str] = field(default_factory=list)
    # data=toy: multiplies the word counts of the word-list tasks; 3 makes answers ~3x longer
    # (scripts/bench_offpolicy.py uses it so that sampling takes the paper's share of a step).
    toy_length: int = 1
    # jsonl: the training file; records with messages, conversations (ShareGPT),
    # instruction/input/output or prompt/response.
    path: str = ""
    valid_path: str = ""
    test_path: str = ""
    # hf: the dataset, its config (subset) and split; the validation split by name, else
    # the first valid_size rows of hub_split.
    hub_id: str = ""
    hub_config: str = ""
    hub_split: str = "train"
    hub_valid_split: str = ""
    # Field -> column of the dataset, for columns named otherwise: instruction, input,
    # output, messages, conversations, prompt, response (e.g. data.columns.output=answer).
    columns: dict[str, str] = field(default_factory=dict)
    # auto: the tokenizer's chat template when it has one, else alpaca; chat, alpaca, compact.
    template: str = "auto"
    # chat: a system turn for records that have none ("" = none added).
    system_prompt: str = ""
    # chat: train on the last assistant turn only, or on every assistant turn.
    train_on: str = "last"
    max_length: int = 512
    max_prompt_length: int = 256
    # Data without a validation file or split: the first valid_size records validate.
    valid_size: int = 1000
    # Which split each stage reads (the toy data has a larger labelled pool for the teacher
    # and unlabelled prompts for teacher generation; real data uses train for both).
    teacher_split: str = "teacher_train"
    train_split: str = "train"
    generate_split: str = "unlabelled"
    valid_split: str = "valid"
    test_split: str = "test"
    # Plain pre-training text for the loss.lm_coef term (jsonl with "text", or a .txt file).
    lm_path: str = ""
    # Cap on training examples per split (0: all).
    max_examples: int = 0
    # Cap on data.train_split alone (0: all): a smaller labelled set with the same validation
    # and test sets (learning curves; several epochs over few labels, so the student overfits).
    train_examples: int = 0


@dataclass
class GenerationConfig:
    """Sampling settings for generate-student and off-policy student samples."""

    # Which generation backend samples (distillm_cli/generation/): hf = transformers `generate`;
    # vllm = a vLLM engine in this process holding the model's current weights; openai = a served
    # model (generation.url: any OpenAI-compatible completions server, e.g. `vllm serve`).
    backend: str = "hf"
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # 0: fill the room the data leaves (data.max_length minus the prompt), as the papers do.
    max_new_tokens: int = 0
    no_repeat_ngram_size: int = 0
    batch_size: int = 32
    # backend=vllm on a GPU: the share of GPU memory the engine may take (training runs beside it).
    gpu_memory_utilization: float = 0.3
    # backend=openai: the server's base URL (e.g. http://127.0.0.1:8000/v1), the model name it serves
    # ("": the first it lists), the API key's environment variable, requests in flight, tries per request.
    url: str = ""
    served_model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    retries: int = 5
    request_timeout: float = 300.0


@dataclass
class GenerateConfig:
    """The generate-student stage: who answers which prompts."""

    source: str = "student"
    # DistiLLM-2 curation: one teacher and one student response per prompt, in one record.
    pairs: bool = False
    # "" means data.generate_split.
    split: str = ""
    max_prompts: int = 0


@dataclass
class CacheConfig:
    """The cache-teacher stage: the teacher's top-k distribution at every response position, on disk."""

    # Tokens kept per position (the rest is one tail bucket); k >= the vocabulary keeps everything.
    k: int = 32
    # Response positions per shard (one shard is written, atomically, at a time).
    shard_positions: int = 262144
    # float32 (4 bytes per entry) or float16 (2 bytes: with int32 ids of a vocabulary above 65536, 6 in all).
    logprob_dtype: str = "float32"
    # Examples per teacher forward pass.
    batch_size: int = 16


@dataclass
class EvalConfig:
    """The evaluate stage: decoding, seeds, which split, which metrics."""

    split: str = ""
    max_examples: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])
    # name -> model dir, run dir or hub id; empty: the student (student_dir, else model.student).
    models: dict[str, str] = field(default_factory=dict)
    # name -> jsonl file, or "" for the data config's split of that name; empty: the test split.
    sets: dict[str, str] = field(default_factory=dict)
    # A teacher model: adds KL(teacher || model) on validation responses to each model's scores.
    teacher: str = ""
    kl_examples: int = 128
    batch_size: int = 64
    sampling: GenerationConfig = field(default_factory=GenerationConfig)
    # Training stages: score the kept checkpoint on the test split (eval.sampling, eval.seeds)
    # and put the scores in summary.json, so a sweep (`-m`) can be compared by `distillm report`.
    after_training: bool = False


@dataclass
class LoraConfig:
    """LoRA adapters on the student through peft (r=0: off); merged into the saved checkpoint."""

    r: int = 0
    alpha: int = 32
    dropout: float = 0.05
    # Module names to adapt; ["all-linear"] adapts every linear layer but the output head.
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])


@dataclass
class StudentConfig:
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class LoggerConfig:
    """Optional experiment tracker next to metrics.jsonl: none, tensorboard (run_dir/tensorboard) or wandb."""

    name: str = "none"
    project: str = "distillm"


@dataclass
class Config:
    stage: str = "distill"
    run_dir: str = "runs/${stage}/${now:%Y%m%d-%H%M%S}"
    seed: int = 0
    # never: refuse a run_dir that already holds a run; auto: continue from its newest checkpoint.
    resume: str = "never"
    overwrite: bool = False
    # Where a stage finds models written by an earlier stage ("" = the model preset / hub id).
    teacher_dir: str = ""
    student_dir: str = ""
    # distill: extra training data, a generations.jsonl written by generate-student.
    generations: str = ""
    # distill loss=distillm2: response pairs curated for the validation prompts (its validation loss).
    valid_generations: str = ""
    # distill: the teacher from a cache written by cache-teacher (its run dir); no teacher model is loaded.
    teacher_cache: str = ""
    device: str = "auto"
    # CPU threads for torch (0: leave torch's default).
    threads: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    off_policy: OffPolicyConfig = field(default_factory=OffPolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # DeepSpeed's own config, with DeepSpeed's own keys (conf/deepspeed/*.yaml).
    deepspeed: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


def validate(cfg) -> None:
    """Refuse values no stage can work with, before any work starts (one clear line each)."""
    from .errors import UserError

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    need(cfg.stage in STAGE_NAMES, f"unknown stage '{cfg.stage}'; choose one of {', '.join(STAGE_NAMES)}")
    need(cfg.loss.name in LOSS_NAMES, f"unknown loss '{cfg.loss.name}'; choose loss= one of {', '.join(LOSS_NAMES)}")
    need(0.0 <= cfg.loss.alpha < 1.0, f"loss.alpha={cfg.loss.alpha} is outside [0, 1); the papers use 0.1")
    need(0.0 < cfg.loss.beta < 1.0, f"loss.beta={cfg.loss.beta} is outside (0, 1); use e.g. loss.beta=0.5")
    need(0.0 <= cfg.loss.kd_ratio <= 1.0, f"loss.kd_ratio={cfg.loss.kd_ratio} is outside [0, 1]")
    need(cfg.data.train_examples >= 0 and cfg.data.max_examples >= 0,
         f"data.train_examples={cfg.data.train_examples} / data.max_examples={cfg.data.max_examples} must be >= 0 "
         "(0: all records)")
    need(0.0 <= cfg.loss.alpha_s < 1.0, f"loss.alpha_s={cfg.loss.alpha_s} is outside [0, 1); the paper uses 0.1")
    need(cfg.loss.beta_schedule in ("linear", "constant"),
         f"loss.beta_schedule='{cfg.loss.beta_schedule}'; choose linear or constant")
    need(0.0 < cfg.loss.beta_max <= 1.0, f"loss.beta_max={cfg.loss.beta_max} is outside (0, 1]; the paper uses 1.0")
    need(0.0 < cfg.loss.beta_ramp_fraction <= 1.0,
         f"loss.beta_ramp_fraction={cfg.loss.beta_ramp_fraction} is outside (0, 1]; 1.0 ramps over all of training")
    need(cfg.loss.scale > 0, f"loss.scale={cfg.loss.scale} must be positive (1.0: the paper; 2.0: the released code)")
    need(str(cfg.loss.regenerate) in REGENERATE_CHOICES,
         f"loss.regenerate={cfg.loss.regenerate}; choose none, student (new student responses each epoch) or both "
         "(new teacher and student responses, as the paper does)")
    need(cfg.student.lora.r >= 0, f"student.lora.r={cfg.student.lora.r} must be 0 (off) or positive")
    need(cfg.loss.lm_coef >= 0, f"loss.lm_coef={cfg.loss.lm_coef} must be 0 or positive")
    need(cfg.loss.lm_coef == 0 or cfg.data.lm_path or cfg.stage != "distill",
         "loss.lm_coef > 0 adds CE on pre-training text: set data.lm_path to a .txt or jsonl ({\"text\": ...}) file")
    unknown_tasks = sorted(set(cfg.data.toy_tasks) - set(TOY_TASK_NAMES))
    need(not unknown_tasks, f"unknown toy task(s) {', '.join(unknown_tasks)}; choose data.toy_tasks from "
         f"{', '.join(TOY_TASK_NAMES)}")
    need(cfg.data.toy_length >= 1, f"data.toy_length={cfg.data.toy_length} must be 1 or more")
    need(cfg.loss.temperature > 0, f"loss.temperature={cfg.loss.temperature} must be positive")
    need(cfg.loss.chunk_size > 0, f"loss.chunk_size={cfg.loss.chunk_size} must be positive")
    need(cfg.off_policy.name in OFF_POLICY_MODES,
         f"unknown off_policy '{cfg.off_policy.name}'; choose off_policy= one of {', '.join(OFF_POLICY_MODES)}")
    need(cfg.off_policy.schedule in SCHEDULES,
         f"unknown off_policy.schedule '{cfg.off_policy.schedule}'; choose one of {', '.join(SCHEDULES)}")
    need(0.0 <= cfg.off_policy.phi0 <= 1.0, f"off_policy.phi0={cfg.off_policy.phi0} is outside [0, 1]")
    need(0.0 <= cfg.off_policy.lmbda <= 1.0, f"off_policy.lmbda={cfg.off_policy.lmbda} is outside [0, 1]")
    need(cfg.off_policy.capacity > 0, f"off_policy.capacity={cfg.off_policy.capacity} must be positive")
    for key in ("max_steps", "micro_batch_size", "grad_accum", "log_interval"):
        value = cfg.train[key]
        need(value > 0, f"train.{key}={value} must be a positive integer")
    need(cfg.train.on_nonfinite in ("stop", "skip"),
         f"train.on_nonfinite='{cfg.train.on_nonfinite}'; choose stop or skip")
    need(cfg.train.on_nonfinite == "stop" or cfg.train.grad_accum == 1,
         "train.on_nonfinite=skip needs train.grad_accum=1 (a half-accumulated step cannot be undone)")
    need(cfg.train.keep_checkpoints > 0, "train.keep_checkpoints must be at least 1")
    need(cfg.train.select in SELECT_CHOICES,
         f"train.select='{cfg.train.select}'; choose last, val_loss (lowest validation loss) or rouge_l "
         "(highest validation ROUGE-L)")
    need(cfg.train.select_examples > 0, f"train.select_examples={cfg.train.select_examples} must be positive")
    need(cfg.train.select == "last" or cfg.train.eval_interval > 0,
         f"train.select={cfg.train.select} picks among the validation steps, and train.eval_interval=0 has none; "
         "set train.eval_interval=N or train.select=last")
    need(cfg.train.lr > 0, f"train.lr={cfg.train.lr} must be positive")
    need(cfg.data.max_prompt_length > 0 and cfg.data.max_length > cfg.data.max_prompt_length,
         f"data.max_length={cfg.data.max_length} must be longer than data.max_prompt_length="
         f"{cfg.data.max_prompt_length}, or no response token fits")
    for key, sampling in (("generation", cfg.generation), ("eval.sampling", cfg.eval.sampling)):
        need(sampling.max_new_tokens >= 0, f"{key}.max_new_tokens={sampling.max_new_tokens} must be 0 "
             "(fill data.max_length) or positive")
        need(sampling.backend in GENERATION_BACKENDS,
             f"unknown {key}.backend '{sampling.backend}'; choose one of {', '.join(GENERATION_BACKENDS)}")
    need(cfg.generation.batch_size > 0 and cfg.eval.batch_size > 0, "generation/eval batch_size must be positive")
    need(cfg.generate.source in ("student", "teacher"),
         f"generate.source='{cfg.generate.source}'; choose student or teacher")
    need(cfg.resume in ("never", "auto"), f"resume='{cfg.resume}'; choose never or auto")
    need(cfg.model.attn_implementation in ATTENTION_KERNELS, f"model.attn_implementation="
         f"'{cfg.model.attn_implementation}'; choose one of {', '.join(ATTENTION_KERNELS)}")
    need(cfg.model.dtype in ("float32", "bfloat16", "float16"),
         f"model.dtype='{cfg.model.dtype}'; choose float32, bfloat16 or float16")
    need(cfg.data.name in DATA_SOURCES, f"unknown data.name '{cfg.data.name}'; choose data= toy, jsonl, hf "
         "(or a preset such as dolly)")
    need(cfg.data.template in TEMPLATES, f"unknown data.template '{cfg.data.template}'; choose one of "
         f"{', '.join(TEMPLATES)}")
    need(cfg.data.train_on in TRAIN_ON, f"data.train_on='{cfg.data.train_on}'; choose last or all")
    need(cfg.data.name != "hf" or cfg.data.hub_id, "data=hf needs data.hub_id: a hub dataset name, a folder "
         "written by save_to_disk, or parquet/json/jsonl/csv files")
    unknown_fields = sorted(set(cfg.data.columns) - set(COLUMN_FIELDS))
    need(not unknown_fields, f"data.columns maps unknown field(s) {', '.join(unknown_fields)}; fields are "
         f"{', '.join(COLUMN_FIELDS)}")
    from .loggers import LOGGER_NAMES

    need(cfg.logger.name in LOGGER_NAMES, f"unknown logger '{cfg.logger.name}'; choose logger= one of "
         f"{', '.join(LOGGER_NAMES)}")
    need(cfg.cache.k > 0 and cfg.cache.shard_positions > 0 and cfg.cache.batch_size > 0,
         "cache.k, cache.shard_positions and cache.batch_size must be positive")
    need(cfg.cache.logprob_dtype in ("float32", "float16"),
         f"cache.logprob_dtype='{cfg.cache.logprob_dtype}'; choose float32 or float16")
    if cfg.teacher_cache and cfg.stage == "distill":
        need(cfg.off_policy.name == "none",
             f"off_policy={cfg.off_policy.name} trains on fresh student samples, which need a live teacher; distil "
             "from teacher_cache with off_policy=none (or drop teacher_cache)")
        need(cfg.loss.name != "distillm2",
             "loss=distillm2 reads full teacher logits on response pairs; teacher_cache serves loss=fkl, rkl, "
             "skew_fkl, skew_rkl, jsd or tvd (or drop teacher_cache)")
    zero = cfg.deepspeed.get("zero_optimization", {}).get("stage", 0)
    need(zero in (0, 1, 2, 3), f"unknown ZeRO stage {zero}; choose deepspeed=zero0, zero1, zero2 or zero3")


def check_paths(cfg) -> None:
    """Paths the user gave must exist (inputs) or be creatable (run_dir) before any work starts."""
    import os
    from pathlib import Path

    from omegaconf import OmegaConf

    from .errors import UserError

    if cfg.data.name == "jsonl" and cfg.stage != "pipeline":
        for key in ("path", "valid_path", "test_path"):
            value = cfg.data[key]
            if value and not Path(value).is_file():
                raise UserError(f"data.{key}='{value}' does not exist; point it at a jsonl file")
    if cfg.data.name == "hf" and cfg.stage != "pipeline":
        from .data.sources import looks_local

        hub_id = cfg.data.hub_id
        if looks_local(hub_id) and not Path(hub_id).expanduser().exists():
            raise UserError(f"data.hub_id='{hub_id}' does not exist; point it at a dataset folder (save_to_disk, "
                            "or parquet/json/jsonl/csv files) or name a hub dataset")
    if cfg.data.lm_path and not Path(cfg.data.lm_path).is_file():
        raise UserError(f"data.lm_path='{cfg.data.lm_path}' does not exist; point it at a .txt or jsonl file")
    if cfg.teacher_cache and cfg.stage == "distill" and not Path(cfg.teacher_cache).is_dir():
        raise UserError(f"teacher_cache='{cfg.teacher_cache}' does not exist; write it first with "
                        f"`distillm cache-teacher run_dir={cfg.teacher_cache}`")
    for key in ("teacher_dir", "student_dir"):
        value = cfg[key]
        if key == "teacher_dir" and cfg.teacher_cache and cfg.stage == "distill":
            continue  # distilling from a cache loads no teacher
        if value and cfg.stage != "pipeline":
            if not Path(value).exists():
                if value.startswith((".", "/", "~")) or value.count("/") != 1:
                    raise UserError(f"{key}='{value}' does not exist; point it at a checkpoint/ folder of an "
                                    "earlier run or at a Hugging Face model dir")
            elif not (Path(value) / "config.json").exists():
                raise UserError(f"{key}='{value}' holds no Hugging Face model (no config.json); use the "
                                "checkpoint/ folder inside a run directory")
    for key in ("generations", "valid_generations"):
        if cfg[key] and cfg.stage in ("distill", "sft-student", "cache-teacher") and not Path(cfg[key]).exists():
            raise UserError(f"{key}='{cfg[key]}' does not exist; run generate-student first and pass "
                            "its generations.jsonl (or run dir)")
    run_dir = OmegaConf.to_container(cfg, resolve=False)["run_dir"]
    if "${" not in run_dir:
        ancestor = Path(run_dir).absolute()
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
            raise UserError(f"cannot create run_dir '{run_dir}': '{ancestor}' is not a writable directory; "
                            "choose a writable run_dir")
