"""scripts/gpu_check.py on the CPU: its refusals, its API guard, and one end-to-end --quick run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"


def _gpu_check(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # its dataclass looks its module up there
    spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_cuda_is_one_line_and_status_2() -> None:
    r = _gpu_check("--device", "cuda")
    assert r.returncode == 2
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [r.stderr.strip()]
    assert "no CUDA device" in r.stderr and not r.stdout


def test_missing_cifar_folder_is_one_line_and_status_2(tmp_path: Path) -> None:
    r = _gpu_check("--device", "cpu", "--cifar", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "is not a CIFAR-10 ImageFolder tree" in r.stderr


def test_a_changed_signature_is_named_before_the_call() -> None:
    gc = _module()

    def train_one_epoch(run, batches, g, desc, extra):  # a parameter this script does not pass
        raise AssertionError("must not be called")

    with pytest.raises(gc.ApiChanged, match=r"train_one_epoch\(run, batches, g, desc, extra\)"):
        gc.checked_call(train_one_epoch, 1, 2, 3, "x")


# ~1-5 min on 2 CPU cores (5 min when they are shared): two sweeps, a ResNet-20 run and the sync-check steps
@pytest.mark.slow
def test_quick_cpu_run_passes_every_check(tmp_path: Path, cifar_root: Path) -> None:
    r = _gpu_check("--device", "cpu", "--quick", "--sweep-epochs", "1", "--cifar", str(cifar_root),
                   "--out", str(tmp_path), timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    table = r.stdout.split("\ncheck ", 1)[1]
    assert "FAIL" not in table
    assert len(list((tmp_path / "quickstart").glob("*/final.json"))) == 3
    assert len(list((tmp_path / "joblib").glob("*/final.json"))) == 4
    assert (tmp_path / "resnet20-eager" / "final.json").exists()
    assert "n/a (no CUDA)" in table and "skipped on the CPU with --quick" in table
    assert r.stdout.startswith("CPU: ")
