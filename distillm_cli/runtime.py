"""The processes of a run: joining the process group (with or without a launcher), the
device, seeds, and sums over ranks. Every stage starts here; nothing here trains.
"""
from __future__ import annotations

import ctypes
import logging
import os
import random
import socket
from dataclasses import dataclass

import torch


@dataclass
class Runtime:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tune_cpu_allocator() -> None:
    """Keep freed blocks in the heap instead of returning them to the OS every step.

    glibc hands every freed block over 32 MB back to the kernel and faults it in again
    on the next step; on CPU that doubled step time in our measurements (DESIGN.md).
    mallopt at start-up gives users the fast setting without environment variables.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)
    libc.mallopt(m_top_pad, 64 << 20)


def setup_runtime(cfg) -> Runtime:
    """Join (or create) the process group: works with or without the deepspeed launcher."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:  # a DS_ACCELERATOR=cpu inherited from a CPU setup (the Makefile's) would keep DeepSpeed on CPU
        if os.environ.get("DS_ACCELERATOR", "cuda") != "cuda":
            os.environ["DS_ACCELERATOR"] = "cuda"
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        _tune_cpu_allocator()
    import deepspeed  # after DS_ACCELERATOR: it picks its accelerator on import

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # A plain `distillm distill` is a one-process job: give DeepSpeed the variables a launcher would.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    # DeepSpeed would JIT-compile a shared-memory allreduce op for CPU runs (~1.5 min of
    # gcc on first use); gloo's allreduce is enough for CPU, so that build is switched off.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:  # before the process group: NCCL's collectives use the current device
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", verbose=False)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return Runtime(rank=rank, world_size=world, device=device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher), before any process group."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def barrier(runtime: Runtime) -> None:
    """Wait until every rank got here (nothing to wait for with one process)."""
    if runtime.world_size > 1:
        torch.distributed.barrier()


def broadcast_from_main(value, runtime: Runtime):
    """Rank 0's `value` on every rank (any picklable object)."""
    if runtime.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_from_all(value, runtime: Runtime) -> list:
    """Every rank's `value`, in rank order, on every rank (any picklable object)."""
    if runtime.world_size == 1:
        return [value]
    values = [None] * runtime.world_size
    torch.distributed.all_gather_object(values, value)
    return values


def all_reduce_max(value: float, runtime: Runtime) -> float:
    if runtime.world_size == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64,
                          device=runtime.device if runtime.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


def all_reduce_sum(value: float, runtime: Runtime) -> float:
    if runtime.world_size == 1:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64,
                          device=runtime.device if runtime.device.type == "cuda" else "cpu")
    torch.distributed.all_reduce(tensor)
    return float(tensor.item())

