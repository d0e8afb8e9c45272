"""ls_bench.logs: what TensorBoard shows (read back with its own EventAccumulator): the scalars
and HParams of a run, the Custom Scalars layout, and the sections' order on opening; metrics.jsonl."""

from __future__ import annotations

import re
from itertools import groupby
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from conftest import make_config
from ls_bench.logs import LAYOUT, RunLogger, read_jsonl, tb_tag
from ls_bench.train import fit


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, EventAccumulator]:
    """A 2-epoch run on digits, and its event file read back."""
    run_dir = tmp_path_factory.mktemp("run")
    final = fit(make_config("trainer.epochs=2", "trainer.progress=false", "trainer.batch_size=64"), run_dir)
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return run_dir, final, acc


def test_tensorboard_scalars_and_hparams_in_the_run_dir(run: tuple[Path, dict, EventAccumulator]) -> None:
    """No `hparam/` duplicates, and every metric of the HParams experiment is a scalar of the run
    whose last value is final.json's (under its TensorBoard tag)."""
    run_dir, final, acc = run
    assert [p.name for p in run_dir.iterdir() if p.is_dir()] == []  # no tb/ and no hparams sub-run
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/ece", "test/nll", "zz_lr", "zz_perf/epoch_s", "test_ts/ece",
            "test_ts/temperature"} <= scalars
    assert not [t for t in scalars if t.startswith("hparam")]
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    tags = [m.name.tag for m in experiment.metric_infos]
    assert {"test/acc", "test/nll", "test/ece", "val/nll", "test_ts/ece", "test_ts/temperature"} <= set(tags)
    json_name = {tb_tag(k): k for k in final}
    for tag in tags:
        events = acc.Scalars(tag)
        assert events[-1].step == 2 and events[-1].value == pytest.approx(final[json_name[tag]], rel=1e-6), tag
    assert [e.step for e in acc.Scalars("test/acc")] == [1, 2] and len(acc.Scalars("test_ts/temperature")) == 1
    hp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert hp.hparams["epsilon"].number_value == 0 and hp.hparams["model"].string_value == "small_cnn"


def test_json_files_keep_the_metric_names(run: tuple[Path, dict, EventAccumulator]) -> None:
    run_dir, final, _ = run
    record = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert {"lr", "perf/epoch_s", "perf/eval_s", "perf/train_img_per_s", "test/acc", "val/nll"} <= set(record)
    assert "temperature" in final and "time_s" in final and not any(k.startswith("zz_") for k in record)


def tensorboard_order(a: str, b: str) -> int:
    """TensorBoard's tag order (tensorboard/webapp/util/string.ts, compareTagNames): numbers by
    value, "/" and digits before any other character, the rest by character code."""
    i = j = 0
    while True:
        if i == len(a) or j == len(b):
            return (i < len(a)) - (j < len(b))
        if a[i].isdigit() and b[j].isdigit():
            na, nb = re.match(r"\d+(\.\d+)?", a[i:]).group(), re.match(r"\d+(\.\d+)?", b[j:]).group()
            if float(na) != float(nb):
                return -1 if float(na) < float(nb) else 1
            i, j = i + len(na), j + len(nb)
            continue
        first_a, first_b = a[i] == "/" or a[i].isdigit(), b[j] == "/" or b[j].isdigit()
        if first_a != first_b:
            return -1 if first_a else 1
        if a[i] != b[j]:
            return -1 if a[i] < b[j] else 1
        i, j = i + 1, j + 1


def test_tensorboard_opens_on_the_splits_and_shows_the_bookkeeping_last(
        run: tuple[Path, dict, EventAccumulator]) -> None:
    """The Time Series and Scalars tabs sort the tags, show one section per prefix and open the
    first two: test and test_ts, with lr and perf/* (zz_) at the end."""
    from functools import cmp_to_key

    _, _, acc = run
    tags = sorted(acc.Tags()["scalars"] + acc.Tags()["images"], key=cmp_to_key(tensorboard_order))
    sections = [name for name, _ in groupby(tags, key=lambda t: t.split("/", 1)[0])]
    assert sections == ["test", "test_ts", "train", "val", "val_ts", "zz_lr", "zz_perf"]
    assert tensorboard_order("test/acc", "test_ts/acc") < 0 and tensorboard_order("epoch10", "epoch9") > 0


def layouts(acc: EventAccumulator) -> list[layout_pb2.Layout]:
    return [layout_pb2.Layout.FromString(tensor_util.make_ndarray(e.tensor_proto).item())
            for e in acc.Tensors(metadata.CONFIG_SUMMARY_TAG)]


def test_custom_scalars_put_the_splits_of_a_metric_on_one_chart(run: tuple[Path, dict, EventAccumulator]) -> None:
    """One layout in the run: accuracy, NLL and ECE with their splits, and test ECE after
    temperature scaling; each chart's regexes match exactly those tags of the run."""
    _, _, acc = run
    (layout,) = layouts(acc)
    (category,) = layout.category
    assert category.title == next(iter(LAYOUT)) and not category.closed
    scalars = acc.Tags()["scalars"]
    shown = {c.title: sorted(t for t in scalars for r in c.multiline.tag if re.fullmatch(r, t)) for c in category.chart}
    assert list(shown.values()) == [["test/acc", "train/acc", "val/acc"], ["test/nll", "train/loss", "val/nll"],
                                    ["test/ece", "val/ece"], ["test_ts/ece"]]


def test_the_layout_is_written_once_per_run_not_again_on_resume(tmp_path: Path) -> None:
    first = RunLogger(tmp_path)
    first.log_epoch(1, {"test/acc": 0.5, "lr": 0.1})
    first.close()
    resumed = RunLogger(tmp_path, purge_step=2)  # as train.start_run_files opens it after epoch 1
    resumed.log_epoch(2, {"test/acc": 0.6, "lr": 0.05})
    resumed.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert len(layouts(acc)) == 1
    assert [e.value for e in acc.Scalars("zz_lr")] == pytest.approx([0.1, 0.05])
    assert [r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0.1, 0.05]


@pytest.mark.parametrize("name,tag", [("lr", "zz_lr"), ("perf/epoch_s", "zz_perf/epoch_s"),
                                      ("temperature", "test_ts/temperature"), ("test/acc", "test/acc"),
                                      ("lr_scale", "lr_scale"), ("perfect/x", "perfect/x"),
                                      ("val_ts/ece", "val_ts/ece")])
def test_tensorboard_tags(name: str, tag: str) -> None:
    assert tb_tag(name) == tag
