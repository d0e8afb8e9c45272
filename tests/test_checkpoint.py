"""ls_bench.checkpoint: a finished run is not redone, a failed save keeps the last good checkpoint,
a folder holding another config's run is refused. (Resume after a kill: test_signals.py; pickles
refused: test_safety.py.)"""

from __future__ import annotations

import errno
import io
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import ONE, TINY, TWO, make_config, one_line, run_cli
from ls_bench.checkpoint import load_checkpoint
from ls_bench.errors import RunFailed
from ls_bench.train import fit


def test_finished_run_is_skipped(tmp_path: Path) -> None:
    from ls_bench.errors import ConfigError

    cfg = make_config(*TINY)
    final = fit(cfg, tmp_path)
    before = (tmp_path / "final.json").stat().st_mtime_ns
    shown = replace(cfg, trainer=replace(cfg.trainer, progress=True, num_threads=1))  # same computation
    assert fit(shown, tmp_path) == final  # not redone
    with pytest.raises(ConfigError, match="holds a run of another config \\(seed 0 -> 5\\)"):
        fit(replace(cfg, seed=5), tmp_path)  # another run: refused, not passed off as this one
    assert (tmp_path / "final.json").stat().st_mtime_ns == before


def test_disk_full_on_the_second_checkpoint_keeps_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finished = tmp_path / "finished"
    fit(make_config(*ONE), finished)  # a run of the same sweep that had already finished
    before = {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()}

    real_save, saved = torch.save, []

    def save_until_disk_full(obj, f, *args, **kwargs):
        if saved:  # second save: half the bytes reach the disk, then ENOSPC
            buf = io.BytesIO()
            real_save(obj, buf)
            Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        saved.append({k: v.clone() for k, v in obj["model"].items()})
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    run = tmp_path / "run"
    with pytest.raises(RunFailed, match="cannot write .*last.pt.*No space left on device.*epoch 1 is kept"):
        fit(make_config(*TWO), run)
    state = load_checkpoint(run / "last.pt")  # still loads ...
    assert state["epoch"] == 1  # ... and is epoch 1's, bit for bit
    assert state["model"].keys() == saved[0].keys()
    assert all(torch.equal(state["model"][k], saved[0][k]) for k in saved[0])
    assert not list(run.glob(".last.pt.tmp*")), "the half-written temporary file was left behind"
    assert "No space left" in json.loads((run / "failed.json").read_text())["reason"]
    assert {p: p.read_bytes() for p in finished.rglob("*") if p.is_file()} == before



def test_a_folder_holding_another_configs_run_is_refused_and_keeps_reporting_that_run(tmp_path: Path) -> None:
    """Hydra rewrites .hydra/config.yaml at every launch: a rerun with a changed ε into the same
    folder must neither inherit the old final.json nor continue the old last.pt."""
    from ls_bench.report.runs import find_runs

    done, stopped = tmp_path / "done", tmp_path / "stopped"
    for d in (done, stopped):
        assert run_cli(*TWO, f"hydra.run.dir={d}").returncode == 0
    (stopped / "final.json").unlink()  # as if killed after epoch 2's checkpoint
    before = {d: {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and ".hydra" not in p.parts}
              for d in (done, stopped)}
    for d in (done, stopped):
        line = one_line(run_cli(*TWO, "loss.epsilon=0.2", "optim.lr=0.1", f"hydra.run.dir={d}"))
        assert line == (f"ls-bench: error: {d} holds a run of another config (loss.epsilon 0.0 -> 0.2, optim.lr 0.05 "
                        f"-> 0.1); rerun it with its own config, or choose another folder (hydra.run.dir / "
                        f"hydra.sweep.dir), or delete it")
        assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and ".hydra" not in p.parts} == before[d]
    (run,) = find_runs(done)  # .hydra/config.yaml now says 0.2; the report still shows what ran
    assert run.status == "done" and run.config["loss.epsilon"] == 0.0 and run.config["optim.lr"] == 0.05
    again = run_cli(*TWO, "trainer.num_threads=1", f"hydra.run.dir={stopped}")  # same computation: resumes
    assert again.returncode == 0 and "resumed from" in again.stderr + again.stdout, again.stderr
