"""Class imbalance end to end (data.imbalance): the long-tailed prior of loss.prior=class_prior,
class_counts in run_info.json, the head / medium / tail metrics of final.json from the real CLI,
and the report's "Class imbalance" section."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_config, run_cli
from ls_bench.config import flat_config
from ls_bench.evaluate.classwise import group_metrics
from ls_bench.report import report
from ls_bench.run import setup
from ls_bench.train import build_run_info


def lt_counts(n_max: int, K: int, rho: float) -> list[int]:
    """n_k = n_max · ρ^(-k/(K-1)), truncated (Cao et al. 2019)."""
    return [int(n_max * (1 / rho) ** (k / (K - 1))) for k in range(K)]


def test_class_prior_is_the_long_tailed_prior_and_run_info_has_class_counts() -> None:
    cfg = make_config("data.imbalance.ratio=10", "loss.prior=class_prior", "loss.epsilon=0.2", "trainer.device=cpu")
    run = setup(cfg)
    counts = torch.bincount(run.ds.train.y.cpu(), minlength=10).double()
    assert counts[0] / counts[-1] >= 9.5  # the long tail, not the balanced digits
    eps, prior = 0.2, counts / counts.sum()
    for k in (0, 9):
        expected = eps * prior
        expected[k] += 1 - eps  # (1 - ε)·onehot + ε·π, π the training split's class frequencies
        assert run.criterion.expected_target(torch.tensor([k]))[0].double().tolist() == pytest.approx(
            expected.tolist(), abs=1e-6)
    info = build_run_info(run, flat_config(cfg))
    assert info["class_counts"] == counts.long().tolist() and sum(info["class_counts"]) == info["sizes"]["train"]


def test_a_balanced_run_records_class_counts_too() -> None:
    run = setup(make_config("trainer.device=cpu"))
    info = build_run_info(run, flat_config(run.cfg))
    assert len(info["class_counts"]) == 10 and sum(info["class_counts"]) == info["sizes"]["train"] == 1149
    assert max(info["class_counts"]) < 2 * min(info["class_counts"])


@pytest.fixture(scope="module")
def lt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ls-bench data.imbalance.ratio=10 on digits for 2 epochs, as a user types it."""
    run_dir = tmp_path_factory.mktemp("lt") / "run"
    r = run_cli(*TINY, "trainer.epochs=2", "data.imbalance.ratio=10", "metrics.figures=false",
                f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr
    return run_dir


def test_cli_run_records_the_long_tail_and_its_head_medium_tail_metrics(lt_run: Path) -> None:
    info = json.loads((lt_run / "run_info.json").read_text())
    balanced_train = setup(make_config("trainer.device=cpu")).ds.train.y
    n_max = int(torch.bincount(balanced_train).min())  # the smallest class after the validation hold-out
    assert info["class_counts"] == lt_counts(n_max, 10, 10) and info["sizes"]["train"] == sum(info["class_counts"])
    assert info["sizes"]["val"] == 288 and info["sizes"]["test"] == 360  # val and test stay balanced
    final = json.loads((lt_run / "final.json").read_text())
    with np.load(lt_run / "predictions.npz") as p:
        z, y = torch.from_numpy(p["test_logits"]), torch.from_numpy(p["test_labels"])
    counts = torch.tensor(info["class_counts"])
    for split, t in (("test", 1.0), ("test_ts", final["temperature"])):
        ref = group_metrics(z / t, y, counts, 15)
        assert set(ref) == {f"{g}_{m}" for g in ("head", "medium", "tail") for m in ("acc", "cwece")}
        assert {k: final[f"{split}/{k}"] for k in ref} == pytest.approx(ref, abs=1e-9)
    assert final["per_class"]["class_counts"] == info["class_counts"]
    per = final["per_class"]
    assert np.mean(per["test/acc"][:3]) == pytest.approx(final["test/head_acc"])  # counts fall: head = 0, 1, 2
    assert np.mean(per["test_ts/cwece"][7:]) == pytest.approx(final["test_ts/tail_cwece"])


def test_report_has_a_class_imbalance_section_only_for_runs_with_it(lt_run: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    report(lt_run, plots=False, out=out, out_dir=tmp_path / "lt")
    md = (tmp_path / "lt" / "summary.md").read_text()
    assert "## Class imbalance" in md and "Class imbalance" in out.getvalue()
    section = md.split("## Class imbalance")[1].split("\n## ")[0]
    final = json.loads((lt_run / "final.json").read_text())
    for key in ("test/head_acc", "test/tail_acc", "test/medium_cwece", "test_ts/tail_cwece"):
        assert key in section
    assert f"{final['test/tail_cwece']:.4f}" in section  # one seed: the mean is the run's value
    balanced = tmp_path / "balanced"
    shutil.copytree(lt_run, balanced)
    stripped = {k: v for k, v in final.items() if "head" not in k and "medium" not in k and "tail" not in k}
    (balanced / "final.json").write_text(json.dumps(stripped))
    report(balanced, plots=False, out=io.StringIO(), out_dir=tmp_path / "b")
    assert "Class imbalance" not in (tmp_path / "b" / "summary.md").read_text()
