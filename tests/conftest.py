"""Shared test helpers: compose the real Hydra config, shrink it, run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ls_bench.cli import compose_config
from ls_bench.config import Config

REPO = Path(__file__).resolve().parent.parent
CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg"

# A run on digits that takes about a second on one CPU core.
TINY = ["trainer.epochs=1", "trainer.progress=false", "trainer.batch_size=64"]

# Digits cut to 192 training images: 3 steps of 64 per epoch, so a fault test costs seconds.
ONE = ["trainer.epochs=1", "trainer.progress=false", "trainer.batch_size=64", "data.train_size=192"]
TWO = [*ONE, "trainer.epochs=2"]


def make_config(*overrides: str) -> Config:
    """The typed, validated Config exactly as `ls-bench <overrides>` would build it."""
    return compose_config(overrides)


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real console script in a subprocess (python -m so the venv's interpreter is used)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ls_bench.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or REPO)


@pytest.fixture
def cifar_root() -> Path:
    if not CIFAR.is_dir():
        pytest.skip(f"shared CIFAR-10 not found at {CIFAR}")
    return CIFAR


def random_logits(n: int, k: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits with a signal towards the label, float32 as predict() returns them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    z = scale * torch.randn(n, k, generator=g)
    z[torch.arange(n), y] += scale
    return z, y


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]
