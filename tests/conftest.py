"""Shared test helpers: compose the real configs, run the real CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900, env: dict | None = None):
    """Run `distillm ARGS` as a user would (module form, so no console script is needed)."""
    full_env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "distillm_cli.cli", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def compose_cfg():
    """compose_cfg(stage, *overrides) -> the composed, validated DictConfig."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from distillm_cli.config import register_configs, validate

    register_configs()

    def _compose(stage: str, *overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="distillm_cli.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"stage={stage.replace('-', '_')}", *overrides])
        validate(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def runtime():
    """A one-process gloo group for in-process DeepSpeed engines, with the launcher variables set for the
    module that asks for it. The group itself lives for the whole session: DeepSpeed keeps the first group
    it sees, so one destroyed and made again in a later module would be unknown to it."""
    import socket
    from types import SimpleNamespace

    from distillm_cli.runtime import setup_runtime

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
            mp.setenv(key, value)
        yield setup_runtime(SimpleNamespace(device="cpu", threads=0))  # the two keys it reads


@pytest.fixture(scope="session", autouse=True)
def _process_group_at_the_end():
    yield
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
