"""Faults during a run: non-finite loss, a write error while saving, a damaged last.pt, two
writers on one folder. Nothing that was finished may be lost, and every failure is one line.

The loop is driven in-process where a fault has to be injected at an exact moment (a NaN batch
in epoch 2, ENOSPC on the second checkpoint); everything a user would see goes through the CLI.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_bad_input import run_forked

import ls_bench.train as train
from conftest import ONE, REPO, TWO, make_config, one_line, run_cli
from ls_bench.checkpoint import load_checkpoint
from ls_bench.cli import acquire_lock, release_lock
from ls_bench.errors import RunFailed
from ls_bench.logs import read_jsonl
from ls_bench.train import fit


def finite_weights(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# --- non-finite loss ---------------------------------------------------------------------------


def test_nan_in_epoch_2_stops_keeps_epoch_1_and_resumes_to_the_same_result(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real_batches, calls = train.train_batches, []

    def poisoned(*args, **kwargs):  # the second epoch's batch at step 1 becomes NaN
        calls.append(1)
        for step, (x, y, idx) in enumerate(real_batches(*args, **kwargs)):
            yield (torch.full_like(x, float("nan")) if len(calls) == 2 and step == 1 else x), y, idx

    monkeypatch.setattr(train, "train_batches", poisoned)
    cfg = make_config(*TWO)
    with pytest.raises(RunFailed, match="epoch 2: non-finite training loss at step 1"):
        fit(cfg, tmp_path / "run")
    failed = json.loads((tmp_path / "run/failed.json").read_text())
    assert "step 1" in failed["reason"] and failed["epoch"] == 1 and failed["type"] == "RunFailed"
    assert not (tmp_path / "run/final.json").exists()
    state = load_checkpoint(tmp_path / "run/last.pt")
    assert state["epoch"] == 1 and finite_weights(state)  # the last good checkpoint, not the NaN weights
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run/metrics.jsonl")] == [1]

    monkeypatch.setattr(train, "train_batches", real_batches)  # the fault is gone: rerun resumes
    resumed = fit(cfg, tmp_path / "run")
    clean = fit(cfg, tmp_path / "clean")
    assert not (tmp_path / "run/failed.json").exists()
    drop = ("time_s",)
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in clean.items() if k not in drop}


# --- write error while saving -------------------------------------------------------------------


# --- damaged checkpoints, held locks, NaN: what the user sees ----------------------------------


@pytest.fixture(scope="module")
def cli_faults(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """One finished 1-epoch run, copied and damaged in several ways, then all rerun via the CLI."""
    import shutil

    tmp = tmp_path_factory.mktemp("faults")
    base = tmp / "base"
    fit(make_config(*ONE), base)
    dirs = {}
    for name in ("truncated", "garbage", "not_a_checkpoint", "other_model", "lock_held", "stale_lock"):
        dirs[name] = tmp / name
        shutil.copytree(base, dirs[name])
        (dirs[name] / "final.json").unlink()  # unfinished: the rerun resumes from last.pt
    ckpt = base / "last.pt"
    (dirs["truncated"] / "last.pt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    (dirs["garbage"] / "last.pt").write_bytes(os.urandom(4096))
    torch.save({"weights": torch.zeros(3)}, dirs["not_a_checkpoint"] / "last.pt")  # loads, lacks the keys
    torch.save({"model": {"conv.weight": torch.zeros(2, 2)}, "optimizer": {}, "scheduler": {}, "scaler": {},
                "epoch": 1, "history": []}, dirs["other_model"] / "last.pt")
    (dirs["stale_lock"] / ".lock").write_text("pid 999999 on a-dead-run\n")  # left by a killed run
    dirs["nan"] = tmp / "nan"
    args = {name: [*ONE, f"hydra.run.dir={d}"] for name, d in dirs.items()}
    args["nan"] = [*ONE, "optim.lr=1e30", f"hydra.run.dir={dirs['nan']}"]
    lock = dirs["lock_held"] / ".lock"
    fd = acquire_lock(lock)  # this test process is the other writer
    try:
        procs = run_forked(list(args.values()), tmp / "io")
    finally:
        release_lock(lock, fd)
    return {name: (p, dirs[name]) for name, p in zip(args, procs)}


@pytest.mark.parametrize("name,expect", [
    ("truncated", "cannot be loaded safely"), ("garbage", "cannot be loaded safely"),
    ("not_a_checkpoint", "does not fit this run's config (KeyError: 'model')"),
    ("other_model", "does not fit this run's config (RuntimeError: Error(s) in loading state_dict"),
])
def test_damaged_checkpoint_is_refused_naming_the_file(cli_faults: dict, name: str, expect: str) -> None:
    proc, run_dir = cli_faults[name]
    line = one_line(proc)
    assert line.startswith("ls-bench: error: checkpoint ") and str(run_dir / "last.pt") in line and expect in line
    assert not (run_dir / "final.json").exists()


def test_non_finite_loss_through_the_cli(cli_faults: dict) -> None:
    proc, run_dir = cli_faults["nan"]
    line = one_line(proc)
    assert "run failed" in line and "non-finite training loss at step" in line and "failed.json" in line
    failed = json.loads((run_dir / "failed.json").read_text())
    assert "non-finite training loss at step" in failed["reason"] and failed["epoch"] == 0
    assert not (run_dir / "final.json").exists() and not (run_dir / "last.pt").exists()


# The writer thread dies, as it would.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_tensorboard_write_is_one_line_naming_the_event_files(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The event files' disk fills up: TensorBoard's writer thread fails without a file name; the
    run stops with one RunFailed line that names them, and failed.json says so."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    def disk_full(self, data):  # every record write of the event file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(RecordWriter, "write", disk_full)
    run = tmp_path / "run"
    with pytest.raises(RunFailed) as failure:
        fit(make_config(*TWO), run)
    line = str(failure.value)
    assert f"cannot write {run / 'events.out.tfevents.*'} (No space left on device)" in line and "\n" not in line
    assert json.loads((run / "failed.json").read_text())["reason"] == line
    assert not (run / "final.json").exists()


def test_a_second_writer_into_a_run_dir_is_refused(cli_faults: dict) -> None:
    proc, run_dir = cli_faults["lock_held"]
    line = one_line(proc)
    assert f"lock file {run_dir / '.lock'} is held by pid {os.getpid()}" in line
    assert not (run_dir / "final.json").exists()
    assert [r["epoch"] for r in read_jsonl(run_dir / "metrics.jsonl")] == [1]  # untouched


def test_a_stale_lock_is_taken_over_and_released(cli_faults: dict) -> None:
    proc, run_dir = cli_faults["stale_lock"]
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "final.json").exists() and not (run_dir / ".lock").exists()


def test_two_sweeps_into_one_folder_the_second_refuses(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", *TWO, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen([sys.executable, "-m", "ls_bench.cli", *args], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = sweep / ".sweep.lock"
    t0 = time.time()
    while not (lock.exists() and lock.read_text()):
        assert first.poll() is None and time.time() - t0 < 120, first.communicate()
        time.sleep(0.05)
    second = run_cli(*args)
    line = one_line(second)
    assert f"lock file {lock} is held by pid {first.pid}" in line and "another sweep" in line
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    jobs = sorted(p.parent.name for p in sweep.glob("*/final.json"))
    assert len(jobs) == 2 and "seed=0," in jobs[0] and "seed=1," in jobs[1]
    for job in jobs:  # each job written once, by the first sweep: two epochs, no interleaving
        assert [r["epoch"] for r in read_jsonl(sweep / job / "metrics.jsonl")] == [1, 2]
    assert not lock.exists()  # released when the first sweep exited


# --- a folder that holds another config's run --------------------------------------------------


