"""Load: a 24-run sweep through the joblib launcher (2 jobs at a time) finishes every run, and
every run directory holds exactly its own output, nothing interleaved, nothing lost."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from conftest import run_cli
from ls_bench.logs import read_jsonl

EPSILONS = ["0", "0.05", "0.1", "0.15", "0.2", "0.3"]
SEEDS = ["0", "1", "2", "3"]


@pytest.mark.slow  # ~1 min on 2 CPU cores (52 s measured)
def test_24_run_joblib_sweep_loses_nothing(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    t0 = time.perf_counter()
    r = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "trainer.epochs=1", "trainer.progress=false",
                f"loss.epsilon={','.join(EPSILONS)}", f"seed={','.join(SEEDS)}", f"hydra.sweep.dir={sweep}",
                timeout=1800)
    wall = time.perf_counter() - t0
    print(f"24-run joblib sweep (n_jobs=2): {wall:.1f} s wall")
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert len(jobs) == 24 and len(list(sweep.glob("*/final.json"))) == 24
    init_seeds: dict[int, set[int]] = {}
    for d in jobs:
        cfg = yaml.safe_load((d / ".hydra/config.yaml").read_text())
        named = dict(kv.split("=") for kv in d.name.split(","))
        # The directory holds the config it is named after.
        assert (float(named["loss.epsilon"]), int(named["seed"])) == (cfg["loss"]["epsilon"], cfg["seed"])
        records = read_jsonl(d / "metrics.jsonl")
        assert len((d / "metrics.jsonl").read_text().splitlines()) == 1  # one whole line: nothing torn or foreign
        assert len(records) == 1 and records[0]["epoch"] == 1
        final = json.loads((d / "final.json").read_text())
        assert final["epochs"] == 1 and final["test/acc"] == records[0]["test/acc"]
        info = json.loads((d / "run_info.json").read_text())
        init_seeds.setdefault(cfg["seed"], set()).add(info["seeds"]["init"])
        log = (d / "ls-bench.log").read_text()
        assert log.count("digits: ") == 1, log  # this run's start line only, none from its neighbours
        assert not (d / "failed.json").exists() and not list(d.glob(".*.tmp*")) and not (d / ".lock").exists()
    assert sorted(init_seeds) == [0, 1, 2, 3]  # 6 ε per seed, all with that seed's initialisation
    assert all(len(v) == 1 for v in init_seeds.values()) and len(set.union(*init_seeds.values())) == 4
    assert not (sweep / ".sweep.lock").exists()
