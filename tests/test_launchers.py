"""Sweeps through Hydra's launchers: what happens when one job fails, how the joblib launcher
splits the cores, submitit's local executor, and the sbatch script our SLURM config produces."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli

QUICK = ["experiment=quickstart", "trainer.epochs=1", "trainer.progress=false"]


def job_dirs(sweep: Path) -> dict[str, Path]:
    """{optim.lr value: job directory} of a sweep over optim.lr."""
    return {d.name.split("optim.lr=")[1].split(",")[0]: d for d in sweep.iterdir() if (d / ".hydra").is_dir()}


def assert_failed_job_did_not_stop_the_sweep(r, sweep: Path) -> None:
    """optim.lr=1e30 (listed first) diverges; optim.lr=0.05 still runs and finishes; exit code 1."""
    assert r.returncode == 1, r.stderr
    jobs = job_dirs(sweep)
    assert sorted(jobs) == ["0.05", "1e+30"]
    good, bad = jobs["0.05"], jobs["1e+30"]
    assert (good / "final.json").exists() and not (good / "failed.json").exists()
    failed = json.loads((bad / "failed.json").read_text())
    assert failed["type"] == "RunFailed" and "non-finite training loss" in failed["reason"]
    assert not (bad / "final.json").exists()
    # Hydra names the failed job, then our one-line message (no traceback).
    assert "Error executing job with overrides" in r.stderr and "Traceback" not in r.stderr
    assert any(line.startswith("ls-bench: run failed (") and "non-finite training loss" in line
               for line in r.stderr.splitlines())
    # The sweep still ends with its report (Hydra skips on_multirun_end after a failed job).
    assert f"ls-bench: report of the sweep {sweep}" in r.stdout and "1 of 2 runs finished" in r.stdout
    assert "- failed: " in (sweep / "summary.md").read_text() and (sweep / "summary.csv").exists()


def test_basic_launcher_runs_the_rest_of_the_sweep_after_a_failure(tmp_path: Path) -> None:
    r = run_cli("-m", *QUICK, "optim.lr=1e30,0.05", f"hydra.sweep.dir={tmp_path}")
    assert_failed_job_did_not_stop_the_sweep(r, tmp_path)
    assert r.stdout.index("#0 : ") < r.stdout.index("optim.lr=1e+30") < r.stdout.index("#1 : ")


def test_joblib_launcher_splits_the_cores_and_survives_a_failure(tmp_path: Path) -> None:
    """n_jobs=-1 (the plugin's default) runs one job per core; each job then gets cores // jobs
    torch threads (2 jobs on a 2-core machine: 1 thread each, not 2 + 2 fighting for 2 cores)."""
    from joblib import effective_n_jobs

    r = run_cli("-m", "hydra/launcher=joblib", *QUICK, "optim.lr=1e30,0.05", f"hydra.sweep.dir={tmp_path}")
    assert "Joblib.Parallel(n_jobs=-1" in r.stdout
    assert_failed_job_did_not_stop_the_sweep(r, tmp_path)
    info = json.loads((job_dirs(tmp_path)["0.05"] / "run_info.json").read_text())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert info["threads"] == max(1, cores // effective_n_jobs(-1))


@pytest.mark.slow  # ~40 s: submitit starts a fresh Python (and torch) per job
def test_submitit_local_launcher_runs_a_two_job_sweep(tmp_path: Path) -> None:
    r = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", *QUICK,
                "loss.epsilon=0,0.1", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    finals = sorted(tmp_path.glob("*/final.json"))
    assert [p.parent.name.split(",")[1] for p in finals] == ["loss.epsilon=0", "loss.epsilon=0.1"]
    assert list((tmp_path / ".submitit").iterdir())  # submitit's own logs and pickles
    assert "2 of 2 runs finished" in r.stdout and (tmp_path / "summary.md").exists()  # reported in the main process


def test_slurm_config_makes_a_valid_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/hydra/launcher/slurm.yaml through submitit's SLURM executor, as the plugin does it
    (hydra_submitit_launcher BaseSubmititLauncher.launch); submitit rejects unknown parameters.
    No SLURM here: a stub `srun` on PATH only satisfies submitit's check that one exists."""
    submitit = pytest.importorskip("submitit")
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from ls_bench.cli import CONFIG_DIR

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                 f"hydra.sweep.dir={tmp_path}"])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    folder = params.pop("submitit_folder")
    executor = submitit.AutoExecutor(cluster="slurm", folder=folder,
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -c pass", "uid")
    for flag in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=240",
                 "--signal=USR2@120", "--job-name=ls-bench"):
        assert f"#SBATCH {flag}\n" in script, flag
