"""A non-editable install runs anywhere: the wheel carries configs/, and `ls-bench`,
`ls-bench --config-dir` and `ls-bench-report` work from a folder outside the checkout, in a fresh
virtual environment whose only ls_bench is the wheel's (no editable finder, no source tree)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # builds a wheel and a venv: ~1 min


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env={**env, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, f"{args}: {r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the fresh venv's bin/, the wheel): the wheel built in a temporary folder, installed with
    --no-deps; the dependencies come from this environment's site-packages through a plain path
    line in a .pth file, which does not run this environment's own .pth files (the editable
    install's finder), so the only ls_bench the venv can import is the wheel's."""
    tmp = tmp_path_factory.mktemp("install")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", REPO, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("ls_bench-*.whl")
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    bin_dir = venv / "bin"
    site = Path(_run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=tmp).stdout.strip())
    (site / "deps_from_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "--no-deps", "--no-index", wheel,
         cwd=tmp)
    return bin_dir, wheel


def test_the_wheel_carries_every_config_file(installed: tuple[Path, Path]) -> None:
    _, wheel = installed
    with zipfile.ZipFile(wheel) as z:
        shipped = {n.removeprefix("ls_bench/_configs/") for n in z.namelist() if n.startswith("ls_bench/_configs/")}
    in_repo = {str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml")}
    assert in_repo and shipped == in_repo


def test_installed_ls_bench_runs_outside_the_checkout(installed: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, _ = installed
    where = _run(bin_dir / "python", "-c", "import ls_bench.cli as c; print(c.__file__); print(c.CONFIG_DIR)",
                 cwd=tmp_path).stdout.split()
    assert all(str(bin_dir.parent) in p for p in where), where  # the wheel's package and its own configs
    _run(bin_dir / "ls-bench", "experiment=quickstart", "trainer.epochs=1", "trainer.progress=false",
         "hydra.run.dir=out/run", cwd=tmp_path)
    final = json.loads((tmp_path / "out/run/final.json").read_text())
    assert final["epochs"] == 1 and final["test/acc"] > 0.2

    # A user's own experiment beside the installed package, on Hydra's search path.
    exp = tmp_path / "my_configs" / "experiment"
    exp.mkdir(parents=True)
    (exp / "my_study.yaml").write_text("# @package _global_\ndefaults:\n  - override /model: small_cnn\n"
                                       "trainer:\n  epochs: 1\n  progress: false\nloss:\n  epsilon: 0.05\n")
    _run(bin_dir / "ls-bench", "-m", "--config-dir", "my_configs", "experiment=my_study", "seed=0,1",
         "hydra.sweep.dir=out/sweep", cwd=tmp_path)
    configs = [json.loads(p.read_text())["config"] for p in (tmp_path / "out/sweep").glob("*/run_info.json")]
    assert sorted(c["seed"] for c in configs) == [0, 1] and {c["loss.epsilon"] for c in configs} == {0.05}
    report = _run(bin_dir / "ls-bench-report", "out/sweep", "--no-plots", cwd=tmp_path)
    assert "2 of 2 runs finished" in report.stdout and (tmp_path / "out/sweep/summary.csv").exists()
