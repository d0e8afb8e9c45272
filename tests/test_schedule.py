"""ls_bench.schedule: the learning rate is a pure function of the step, and the logged rate is the
rate of each epoch's first step."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, make_config
from ls_bench.config import SchedConfig
from ls_bench.logs import read_jsonl
from ls_bench.schedule import lr_factor
from ls_bench.train import fit


def test_lr_schedule_is_a_pure_function_of_the_step() -> None:
    cos = SchedConfig(name="cosine", warmup_epochs=1)
    assert lr_factor(0, 10, 5, cos) == pytest.approx(0.1)  # warm-up: (step+1)/warm
    assert lr_factor(9, 10, 5, cos) == pytest.approx(1.0)
    assert lr_factor(10, 10, 5, cos) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_factor(30, 10, 5, cos) == pytest.approx(0.5)  # half-way through the cosine part
    step = SchedConfig(name="step", milestones=[2, 4], gamma=0.1)
    assert [lr_factor(s, 10, 5, step) for s in (19, 20, 39, 40)] == pytest.approx([1, 0.1, 0.1, 0.01])



def test_logged_lr_is_the_rate_of_each_epochs_first_step(tmp_path: Path) -> None:
    cfg = make_config(*TINY, "trainer.epochs=2", "metrics.figures=false")
    fit(cfg, tmp_path)
    steps = (1797 - 360 - 288) // 64
    lrs = [r["lr"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert lrs == pytest.approx([cfg.optim.lr * lr_factor(e * steps, steps, 2, cfg.sched) for e in (0, 1)])
