"""The seed-ensemble section: the ensemble's numbers by hand from the members' saved predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import random_logits
from ls_bench.evaluate.calibration import fit_temperature
from ls_bench.evaluate.metrics import compute_metrics
from ls_bench.report.ensembles import ensemble_numbers, ensemble_section
from ls_bench.report.runs import find_runs
from ls_bench.report.stats import Baseline


def fake_run(folder, seed: int, temperature: float, labels=None) -> None:
    """A finished run folder: its recorded config, final.json and predictions.npz."""
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text("{}\n")
    config = {"seed": seed, "loss.epsilon": 0.1, "metrics.n_bins": 15}
    (folder / "run_info.json").write_text(json.dumps({"config": config}))
    (folder / "final.json").write_text(json.dumps({"test/ece": 0.1, "temperature": temperature}))
    zv, zt = random_logits(300, 5, seed=10 + seed)[0], random_logits(400, 5, seed=20 + seed)[0]
    yv, yt = random_logits(300, 5, seed=0)[1], (labels if labels is not None else random_logits(400, 5, seed=1)[1])
    np.savez(folder / "predictions.npz", val_logits=zv.numpy(), val_labels=yv.numpy(), test_logits=zt.numpy(),
             test_labels=yt.numpy())


def test_ensemble_numbers_by_hand(tmp_path) -> None:
    for seed, t in ((0, 1.5), (1, 0.8)):
        fake_run(tmp_path / f"seed={seed}", seed, t)
    runs = find_runs(tmp_path)
    out = ensemble_numbers(runs)
    preds = [r.predictions("test") for r in runs]
    y = preds[0][1]
    q = (torch.softmax(preds[0][0].double(), 1) + torch.softmax(preds[1][0].double(), 1)) / 2
    assert out["ensemble"]["ece"] == pytest.approx(compute_metrics(q.log(), y)["ece"], abs=1e-12)
    q_ts = (torch.softmax(preds[0][0].double() / 1.5, 1) + torch.softmax(preds[1][0].double() / 0.8, 1)) / 2
    assert out["of TS"]["nll"] == pytest.approx(compute_metrics(q_ts.log(), y)["nll"], abs=1e-12)
    vals = [r.predictions("val") for r in runs]
    qv = (torch.softmax(vals[0][0].double(), 1) + torch.softmax(vals[1][0].double(), 1)) / 2
    t = fit_temperature(qv.log(), vals[0][1])
    assert out["TS of it"]["T"] == t
    assert out["TS of it"]["acc"] == out["ensemble"]["acc"]  # one temperature keeps the argmax
    lines = ensemble_section(runs, Baseline())
    text = "\n".join(lines)
    assert lines[1].startswith("## Seed ensembles") and text.count("| 0.1 | 2 |") == 3 and "TS of it (T = " in text


def test_members_with_other_test_labels_are_not_averaged(tmp_path) -> None:
    fake_run(tmp_path / "a", 0, 1.0)
    fake_run(tmp_path / "b", 1, 1.0, labels=torch.zeros(400, dtype=torch.long))
    assert ensemble_numbers(find_runs(tmp_path)) == {}
    assert ensemble_section(find_runs(tmp_path), Baseline()) == []


def test_diverged_members_whose_probabilities_underflow_still_get_a_row(tmp_path) -> None:
    """Logit gaps of 1e4 (a model whose loss ran away): softmax is exactly 0 off the argmax in every member."""
    for seed in (0, 1):
        fake_run(tmp_path / f"seed={seed}", seed, 1.0)
        with np.load(tmp_path / f"seed={seed}" / "predictions.npz") as p:
            arrays = {k: p[k] * (1e4 if k.endswith("logits") else 1) for k in p.files}
        np.savez(tmp_path / f"seed={seed}" / "predictions.npz", **arrays)
    runs = find_runs(tmp_path)
    out = ensemble_numbers(runs)
    z0, y = runs[0].predictions("test")
    assert (torch.softmax(z0.double(), 1) == 0).any()  # the case: underflow to exactly 0
    assert all(np.isfinite(v) for m in out.values() for v in m.values())
    q = sum(torch.softmax(r.predictions("test")[0].double(), 1) for r in runs) / 2
    assert out["ensemble"]["acc"] == pytest.approx((q.argmax(1) == y).double().mean().item())
    assert out["ensemble"]["nll"] > 100  # confidently wrong: log of float64's smallest normal, not inf
    assert "| 0.1 | 2 |" in "\n".join(ensemble_section(runs, Baseline()))
