"""ls_bench.files: atomic writes; a write error on a run file loses nothing that was finished."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

import ls_bench.files as files
import ls_bench.logs as logs
from conftest import TWO, make_config
from ls_bench.checkpoint import load_checkpoint
from ls_bench.errors import RunFailed
from ls_bench.logs import read_jsonl
from ls_bench.train import fit


@pytest.mark.parametrize("target,kept", [("metrics.jsonl", 1), ("final.json", 2)])
def test_disk_full_on_a_run_file_stops_the_run_and_the_rerun_finishes_it_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, kept: int) -> None:
    real_open, writes = open, []

    def disk_full(file, mode="r", *args, **kwargs):  # epoch 2's metrics line, or final.json, hits ENOSPC
        if target in Path(file).name and "r" not in mode:
            writes.append(file)
            if target == "final.json" or len(writes) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    for module in (logs, files):  # these modules' writes (metrics.jsonl appends, atomic rewrites), nothing else
        monkeypatch.setattr(module, "open", disk_full, raising=False)
    cfg, run = make_config(*TWO), tmp_path / "run"
    with pytest.raises(RunFailed) as failure:
        fit(cfg, run)
    assert str(failure.value) == (f"after epoch 2: cannot write {run / target} (No space left on device); "
                                  f"last.pt keeps epoch {kept}: rerun the same command to resume")
    failed = json.loads((run / "failed.json").read_text())
    assert failed["reason"] == str(failure.value) and failed["type"] == "RunFailed"
    assert load_checkpoint(run / "last.pt")["epoch"] == kept and not (run / "final.json").exists()

    monkeypatch.undo()  # space again: the same command resumes and finishes as if nothing happened
    resumed = fit(cfg, run)
    clean = fit(cfg, tmp_path / "clean")
    assert not (run / "failed.json").exists()
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    drop = ("time_s",)
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in clean.items() if k not in drop}
