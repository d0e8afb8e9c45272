"""The loop end to end on digits: files written, schedule, paired runs, determinism, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from conftest import TINY, make_config
from ls_bench.logs import read_jsonl
from ls_bench.train import fit


def test_one_epoch_writes_everything(tmp_path: Path) -> None:
    final = fit(make_config(*TINY), tmp_path)
    assert list(tmp_path.glob("events.out.tfevents.*"))  # in the run dir: TensorBoard names the run after it
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1]
    for key in ("train/loss", "train/acc", "val/acc", "val/nll", "val/ece", "test/acc", "test/nll", "test/ece", "lr",
                "perf/train_img_per_s", "perf/epoch_s"):
        assert math.isfinite(records[0][key]), key
    on_disk = json.loads((tmp_path / "final.json").read_text())
    assert on_disk["test/acc"] == final["test/acc"] == records[0]["test/acc"]
    assert 0 < final["temperature"] and "test_ts/ece" in final
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["sizes"] == {"train": 1797 - 360 - 288, "val": 288, "test": 360}  # fractions 0.2, 0.2
    with np.load(tmp_path / "predictions.npz", allow_pickle=False) as p:
        assert p["test_logits"].shape == (360, 10) and p["test_labels"].shape == (360,)
