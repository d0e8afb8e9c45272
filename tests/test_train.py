"""The loop end to end on digits: files written, schedule, paired runs, determinism, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

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


def test_tensorboard_scalars_and_hparams_in_the_run_dir(tmp_path: Path) -> None:
    """Read back with TensorBoard's own reader: no `hparam/` duplicates, and every metric of the
    HParams experiment is a scalar of the run whose last value is final.json's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    final = fit(make_config("trainer.epochs=2", "trainer.progress=false", "trainer.batch_size=64"), tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no tb/ and no hparams sub-run
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/ece", "test/nll", "lr", "perf/epoch_s", "test_ts/ece", "temperature"} <= scalars
    assert not [t for t in scalars if t.startswith("hparam")]
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    tags = [m.name.tag for m in experiment.metric_infos]
    assert {"test/acc", "test/nll", "test/ece", "val/nll", "test_ts/ece", "temperature"} <= set(tags)
    for tag in tags:
        events = acc.Scalars(tag)
        assert events[-1].step == 2 and events[-1].value == pytest.approx(final[tag], rel=1e-6), tag
    assert [e.step for e in acc.Scalars("test/acc")] == [1, 2] and len(acc.Scalars("temperature")) == 1
    hp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert hp.hparams["epsilon"].number_value == 0 and hp.hparams["model"].string_value == "small_cnn"


