"""ls_bench.seeds: runs that differ only in the loss share init and batches; a config and seed give
the same bits twice; named streams never share seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import make_config
from ls_bench.logs import read_jsonl
from ls_bench.seeds import derive_seed, run_seeds
from ls_bench.train import fit


def fingerprints(run_dir: Path) -> tuple[str, list[str]]:
    info = json.loads((run_dir / "run_info.json").read_text())
    return info["init_sha"], [r["data/order_sha"] for r in read_jsonl(run_dir / "metrics.jsonl")]


def test_runs_differing_only_in_the_loss_see_same_init_and_batches(tmp_path: Path) -> None:
    args = ["trainer.epochs=2", "trainer.progress=false", "data.augment=true"]
    fit(make_config(*args, "loss.epsilon=0"), tmp_path / "a")
    fit(make_config(*args, "loss.epsilon=0.2", "loss=label_flip"), tmp_path / "b")
    fit(make_config(*args, "seed=1"), tmp_path / "c")
    a, b, c = (fingerprints(tmp_path / x) for x in "abc")
    assert a == b
    assert len(set(a[1])) == 2  # a new order every epoch
    assert a[0] != c[0] and not set(a[1]) & set(c[1])  # another seed: other weights, other batches


def test_same_config_and_seed_is_bit_identical_on_cpu(tmp_path: Path) -> None:
    cfg = make_config("trainer.epochs=2", "trainer.progress=false", "data.augment=true")
    f1, f2 = fit(cfg, tmp_path / "a"), fit(cfg, tmp_path / "b")
    drop = ("time_s",)
    assert {k: v for k, v in f1.items() if k not in drop} == {k: v for k, v in f2.items() if k not in drop}
    with np.load(tmp_path / "a/predictions.npz") as p, np.load(tmp_path / "b/predictions.npz") as q:
        assert np.array_equal(p["test_logits"], q["test_logits"])


def test_named_streams_get_distinct_reproducible_63_bit_seeds() -> None:
    seeds = {(s, name): derive_seed(s, name) for s in range(50) for name in ("init", "data", "noise")}
    assert len(set(seeds.values())) == len(seeds)  # no two (seed, stream) pairs share a seed
    assert all(0 <= v < 2**63 for v in seeds.values())
    assert derive_seed(3, "data") == derive_seed(3, "data")


def test_a_given_stream_seed_overrides_the_derived_one() -> None:
    cfg = make_config("seed=4", "seeds.init=123")
    assert run_seeds(cfg) == {"init": 123, "data": derive_seed(4, "data"), "noise": derive_seed(4, "noise")}

