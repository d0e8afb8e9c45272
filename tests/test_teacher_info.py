"""What a teacher gives (issue 23 §2): teacher/train_wrong_mass and teacher/train_acc tallied over
the student's training batches against a float64 computation from the teacher's logits, per epoch
in metrics.jsonl and in final.json; a higher KD temperature gives more wrong-class mass; a teacher
weaker than its student is a warning in the run's log."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_config
from ls_bench.data.loader import train_batches
from ls_bench.run import setup
from ls_bench.teacher import checked_teacher, weaker_teacher
from ls_bench.train import fit

FAST = [*TINY, "data.train_size=256", "metrics.figures=false", "eval.bootstrap=0"]  # seconds per run


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher") / "eps0.1"
    fit(make_config(*FAST, "trainer.epochs=2", "loss.epsilon=0.1"), run_dir)
    return run_dir


def wrong_mass_by_hand(z: torch.Tensor, y: torch.Tensor, T: float) -> tuple[float, float]:
    """(mean Σ_{k≠y} softmax(z/T)_k, mean [argmax z = y]) in float64 numpy."""
    a = z.double().numpy() / T
    e = np.exp(a - a.max(1, keepdims=True))
    others = e.sum(1) - e[np.arange(len(a)), y.numpy()]
    return float((others / e.sum(1)).mean()), float((a.argmax(1) == y.numpy()).mean())


def test_the_tally_is_the_teachers_wrong_class_mass_over_the_batches(teacher: Path) -> None:
    run = setup(make_config(*FAST, "loss=distill", f"loss.teacher={teacher}", "loss.kd_temperature=4"))
    t = run.criterion.teacher
    assert t.temperature == 4.0 and t.epoch_numbers() == {}
    seen_x, seen_y = [], []
    for x, y, idx in train_batches(run.ds.train, 64, 0, False, run.norm):
        run.criterion.targets(x, y, None, None, idx)
        seen_x.append(x)
        seen_y.append(y)
    z = t.infer(torch.cat(seen_x))  # a fresh forward pass, not the cache the tally read
    mass, acc = wrong_mass_by_hand(z, torch.cat(seen_y), 4.0)
    numbers = t.epoch_numbers()
    assert numbers["teacher/train_wrong_mass"] == pytest.approx(mass, abs=1e-5)
    assert numbers["teacher/train_acc"] == pytest.approx(acc)
    assert t.epoch_numbers() == {}  # read once: the next epoch starts a new tally


def test_a_student_logs_them_every_epoch_and_temperature_raises_the_mass(teacher: Path, tmp_path: Path) -> None:
    finals = {}
    for T in (1, 4):
        d = tmp_path / f"T{T}"
        finals[T] = fit(make_config(*FAST, "trainer.epochs=2", "loss=distill", f"loss.teacher={teacher}",
                                    f"loss.kd_temperature={T}"), d)
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(0 < r["teacher/train_wrong_mass"] < 1 for r in rows)
        assert rows[-1]["teacher/train_wrong_mass"] == finals[T]["teacher/train_wrong_mass"]
    assert finals[1]["teacher/train_acc"] == finals[4]["teacher/train_acc"]  # T keeps the argmax
    assert finals[4]["teacher/train_wrong_mass"] > finals[1]["teacher/train_wrong_mass"]


def test_a_teacher_weaker_than_its_student_is_a_warning(teacher: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    assert weaker_teacher(0.9, 0.8, "x") is None and weaker_teacher(None, 0.8, "x") is None
    assert weaker_teacher(0.7, 0.8, "the no-teacher students").startswith(
        "the teacher is less accurate on the student's test split (0.7000) than the no-teacher students (0.8000)")
    with caplog.at_level(logging.WARNING, logger="ls_bench"):
        assert checked_teacher({"teacher/test_acc": 0.95}, {"test/acc": 0.9}) == {"teacher/test_acc": 0.95}
    assert not caplog.records
    # a real run: a teacher whose recorded test accuracy is 0 warns in ls-bench.log's logger
    weak = tmp_path / "weak"
    shutil.copytree(teacher, weak)
    final = json.loads((weak / "final.json").read_text())
    (weak / "final.json").write_text(json.dumps({**final, "test/acc": 0.0}))
    with caplog.at_level(logging.WARNING, logger="ls_bench"):
        fit(make_config(*FAST, "loss=distill", f"loss.teacher={weak}"), tmp_path / "student")
    assert any("the teacher is less accurate on the student's test split (0.0000) than this distilled student"
               in r.getMessage() for r in caplog.records)
