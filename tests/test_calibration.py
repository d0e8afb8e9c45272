"""Temperature scaling and the calibration figures: fitted T against known and brute-force
optima, real over-/under-confident models, figure contents, and the files a run writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TINY, make_config
from ls_bench.config import LossConfig
from ls_bench.errors import ConfigError
from ls_bench.evaluate import figures as cal
from ls_bench.evaluate.calibration import T_MAX, T_MIN, fit_temperature
from ls_bench.evaluate.metrics import calibration_bins, compute_metrics
from ls_bench.logs import RunLogger
from ls_bench.losses import make_criterion
from ls_bench.train import fit


def nll(z: torch.Tensor, y: torch.Tensor, t: float) -> float:
    return float(F.cross_entropy(z.double() / t, y))


def sampled(n: int, k: int, t_true: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); the logits handed out are z·t_true, so the best T is ~t_true."""
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return (z * t_true).float(), y


# --- temperature scaling -------------------------------------------------------------------------


@pytest.mark.parametrize("t_true", [0.4, 1.0, 2.5])
def test_recovers_a_known_temperature(t_true: float) -> None:
    z, y = sampled(8000, 10, t_true, seed=int(10 * t_true))
    assert fit_temperature(z, y) == pytest.approx(t_true, rel=0.06)


@pytest.mark.parametrize("seed", range(4))
def test_matches_a_dense_grid_search(seed: int) -> None:
    z, y = sampled(1000, 5, [0.7, 1.6, 3.0, 1.1][seed], seed)
    grid = torch.exp(torch.linspace(math.log(0.05), math.log(20), 3001, dtype=torch.float64))
    logp = torch.log_softmax(z.double()[None] / grid[:, None, None], dim=2)  # [T, N, K] in one go
    t_grid = float(grid[(-logp[:, torch.arange(len(y)), y].mean(1)).argmin()])
    t = fit_temperature(z, y)
    assert nll(z, y, t) <= nll(z, y, t_grid) + 1e-9
    assert abs(math.log(t) - math.log(t_grid)) < 0.01
    assert nll(z, y, t) <= nll(z, y, 1.0)


def test_degenerate_validation_sets_stay_finite_and_never_worse_than_t1() -> None:
    y = torch.arange(200) % 4
    right = F.one_hot(y, 4).float() * 5  # all correct: NLL falls towards 0 as T -> 0
    t = fit_temperature(right, y)
    assert T_MIN <= t < 1 and nll(right, y, t) < 1e-6
    wrong = F.one_hot((y + 1) % 4, 4).float() * 5  # all wrong: NLL falls towards log 4 as T -> inf
    t = fit_temperature(wrong, y)
    assert t == pytest.approx(T_MAX, rel=1e-6) and nll(wrong, y, t) < nll(wrong, y, 1.0)
    assert fit_temperature(right * 1e4, y) >= T_MIN  # the bound holds however extreme the logits


@pytest.mark.parametrize("c", [0.3, 3.0])
def test_scaling_the_logits_scales_the_temperature(c: float) -> None:
    """softmax(c z / (c T)) = softmax(z / T): the optimum moves exactly with the logits, so a fit that
    stops short of it (torch's LBFGS was 1e-5 off) fails here."""
    z, y = sampled(2000, 10, 2.0, seed=1)
    assert fit_temperature(c * z.double(), y) == pytest.approx(c * fit_temperature(z.double(), y), rel=1e-7)


def test_works_on_inference_tensors_and_under_no_grad() -> None:
    z, y = sampled(500, 5, 2.0, seed=2)
    with torch.inference_mode():
        zi = z.double() * 1.0  # predict() returns tensors created in inference mode
    with torch.no_grad():
        assert fit_temperature(zi, y) == pytest.approx(fit_temperature(z, y), rel=1e-6)


def _train_mlp(epsilon: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A real over-parameterised model: an MLP memorises 150 noisy-blob samples with the project's
    loss, then is evaluated on 2000 fresh samples (logits, labels)."""
    k, d = 5, 10
    g = torch.Generator().manual_seed(seed)
    mu = 1.2 * torch.randn(k, d, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, k, (n,), generator=g)
        return mu[y] + torch.randn(n, d, generator=g), y

    (xt, yt), (xv, yv) = sample(150), sample(2000)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, k))
    criterion = make_criterion(LossConfig(epsilon=epsilon), k, torch.bincount(yt, minlength=k))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        criterion(model(xt), yt).backward()
        opt.step()
    with torch.no_grad():
        return model(xv), yv


def test_one_hot_model_gets_t_above_1_and_smoothed_model_below_1() -> None:
    z0, y0 = _train_mlp(0.0)
    z3, y3 = _train_mlp(0.3)
    m0, m3 = compute_metrics(z0, y0), compute_metrics(z3, y3)
    assert m0["gap"] > 0 and fit_temperature(z0, y0) > 1.5  # over-confident: soften
    assert m3["gap"] < 0 and fit_temperature(z3, y3) < 0.8  # under-confident: sharpen


@pytest.mark.slow
def test_digits_one_hot_t_above_1_label_smoothing_t_below_1(tmp_path: Path) -> None:
    # 30% flipped labels make the one-hot CNN memorise noise and become over-confident on val.
    args = ["trainer.epochs=20", "trainer.progress=false", "data.train_size=400", "optim.weight_decay=0",
            "trainer.batch_size=32", "data.label_noise.rate=0.3"]
    one_hot = fit(make_config(*args, "loss.epsilon=0"), tmp_path / "a")
    smoothed = fit(make_config(*args, "loss.epsilon=0.3"), tmp_path / "b")
    assert one_hot["temperature"] > 1 > smoothed["temperature"]
    for f in (one_hot, smoothed):
        assert f["val_ts/nll"] <= f["val/nll"] and f["test_ts/acc"] == f["test/acc"]


def test_empty_validation_split_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="non-empty validation split.*data.val_size"):
        fit_temperature(torch.empty(0, 10), torch.empty(0, dtype=torch.long))
    with pytest.raises(ConfigError, match="data.val_size=0 .*metrics.temperature_scaling=true"):
        make_config("data.val_size=0")
    make_config("data.val_size=0", "metrics.temperature_scaling=false")  # fine without TS


def test_non_finite_validation_logits_are_a_clear_error() -> None:
    z, y = sampled(50, 3, 1.0, seed=0)
    z[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit_temperature(z, y)


# --- figures --------------------------------------------------------------------------------------


def test_reliability_diagram_shows_the_bins() -> None:
    z, y = sampled(400, 10, 3.0, seed=3)
    fig = cal.reliability_diagram(z, y, 10, "test")
    (ax,) = fig.axes
    conf, pred = z.double().softmax(1).max(1)
    bins = calibration_bins(conf, (pred == y).double(), 10)
    filled = [m for m in range(10) if bins["count"][m]]
    acc_bars, gap_bars = ax.containers
    assert [b.get_height() for b in acc_bars] == pytest.approx([bins["acc"][m] for m in filled])
    assert [b.get_y() + b.get_height() for b in gap_bars] == pytest.approx([bins["conf"][m] for m in filled])
    assert [b.get_x() for b in acc_bars] == pytest.approx([m / 10 for m in filled])
    assert [int(t.get_text()) for t in ax.texts] == [int(bins["count"][m]) for m in filled]
    assert f"ECE {compute_metrics(z, y, 10)['ece']:.4f}" in ax.get_title()


def test_confidence_histogram_before_and_after_ts() -> None:
    z, y = sampled(400, 10, 3.0, seed=4)
    fig = cal.confidence_histogram(z, y, 15, temperature=3.0)
    (ax,) = fig.axes
    outlines = [p for p in ax.patches if not p.get_fill()]
    assert len(outlines) == 2  # before / after
    for outline in outlines:
        heights = outline.get_data().values
        assert heights.sum() == pytest.approx(1.0)
    mean_conf = [compute_metrics(z / t, y)["conf"] for t in (1.0, 3.0)]
    lines = [ln.get_xdata()[0] for ln in ax.lines]  # mean conf before, after, then accuracy
    assert lines == pytest.approx([*mean_conf, compute_metrics(z, y)["acc"]])


def test_risk_coverage_curve_draws_the_curves_whose_areas_are_the_aurc() -> None:
    from ls_bench.evaluate.selective import selective_metrics

    z, y = sampled(500, 10, 2.0, seed=6)
    fig = cal.risk_coverage_curve(z, y, temperature=2.0)
    (ax,) = fig.axes
    before, after, perfect = ax.lines
    assert before.get_ydata().mean() == pytest.approx(selective_metrics(z, y)["aurc"], rel=1e-12)
    assert after.get_ydata().mean() == pytest.approx(selective_metrics(z / 2.0, y)["aurc"], rel=1e-12)
    m = selective_metrics(z, y)
    assert perfect.get_ydata().mean() == pytest.approx(m["aurc"] - m["eaurc"], rel=1e-12)
    assert before.get_xdata()[-1] == 1.0 and before.get_ydata()[-1] == pytest.approx(1 - compute_metrics(z, y)["acc"])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == f"before TS: AURC {m['aurc']:.4f}" and legend[1].startswith("after TS (T = 2)")


def test_template_plane_geometry() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 16, generator=g, dtype=torch.float64)
    origin, basis = cal.template_plane(w)
    assert torch.allclose(basis @ basis.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    xy = cal.project_onto_plane(w, origin, basis)  # templates lie in the plane: distances kept
    assert torch.allclose(torch.cdist(xy, xy), torch.cdist(w, w), atol=1e-10)
    point = w[0] + 0.3 * (w[1] - w[0]) + 0.5 * (w[2] - w[0])
    off = torch.randn(16, generator=g, dtype=torch.float64)
    normal = off - basis.T @ (basis @ off)  # a direction orthogonal to the plane
    both = cal.project_onto_plane(torch.stack([point, point + 7 * normal]), origin, basis)
    assert torch.allclose(both[0], both[1], atol=1e-10)  # the orthogonal component is dropped
    with pytest.raises(ValueError, match="collinear"):
        cal.template_plane(torch.stack([w[0], 2 * w[0], 3 * w[0]]))


def test_penultimate_projection_draws_three_classes() -> None:
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 1, 2, 5] * 30)
    feats = torch.randn(120, 8, generator=g)
    idx = cal.select_per_class(labels, (0, 1, 2), per_class=25)
    assert torch.equal(torch.bincount(labels[idx], minlength=6), torch.tensor([25, 25, 25, 0, 0, 0]))
    fig = cal.penultimate_projection(feats[idx], labels[idx], torch.randn(6, 8, generator=g), (0, 1, 2),
                                     [f"c{i}" for i in range(6)])
    (ax,) = fig.axes
    sizes = [len(c.get_offsets()) for c in ax.collections]
    assert sizes == [25, 1, 25, 1, 25, 1]  # points then the template star, per class
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["c0 (25)", "c1 (25)", "c2 (25)"]
    with pytest.raises(ValueError, match="three distinct classes"):
        cal.penultimate_projection(feats, labels, torch.randn(6, 8), (0, 1, 1))


def test_figures_leave_no_pyplot_state_and_png_matches_the_canvas(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from PIL import Image

    z, y = sampled(300, 10, 2.0, seed=5)
    logger = RunLogger(tmp_path)
    names = cal.write_figures(logger, tmp_path, cal.SplitFigures(z, y, 15, 2.0))
    logger.close()
    assert plt.get_fignums() == []
    assert names == ["reliability_test.png", "confidence_hist.png", "risk_coverage.png", "reliability_test_ts.png"]
    with Image.open(tmp_path / "reliability_test.png") as im:
        assert im.format == "PNG" and im.size == (420, 460)  # 4.2 x 4.6 in at 100 dpi


# --- what a run writes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("run")
    return run_dir, fit(make_config(*TINY), run_dir)


def test_run_writes_pngs_and_tensorboard_images(tiny_run: tuple[Path, dict]) -> None:
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tiny_run
    for name in ("reliability_test", "reliability_test_ts", "confidence_hist", "risk_coverage", "penultimate"):
        with Image.open(run_dir / f"{name}.png") as im:
            assert im.format == "PNG" and min(im.size) > 200, name
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    acc.Reload()
    assert set(acc.Tags()["images"]) == {"test/reliability", "test_ts/reliability", "test/confidence_hist",
                                         "test/risk_coverage", "test/penultimate"}
    assert "test_ts/temperature" in acc.Tags()["scalars"]  # TensorBoard's tag of final.json's temperature (logs.tb_tag)


def test_predictions_npz_reproduces_final_metrics(tiny_run: tuple[Path, dict]) -> None:
    run_dir, final = tiny_run
    on_disk = json.loads((run_dir / "final.json").read_text())
    settings = on_disk["metric_settings"]
    assert settings["n_bins"] == 15 and settings["top_k"] == 5 and "((m-1)/M, m/M]" in settings["binning"]
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as p:
        assert sorted(p.files) == ["test_labels", "test_logits", "val_labels", "val_logits"]
        assert p["test_logits"].dtype == np.float32 and p["test_labels"].dtype == np.int64
        assert p["val_logits"].shape == (288, 10) and p["test_logits"].shape == (360, 10)
        data = {k: torch.from_numpy(p[k]) for k in p.files}
    t = on_disk["temperature"]
    for split in ("val", "test"):
        z, y = data[f"{split}_logits"], data[f"{split}_labels"]
        for prefix, zz in ((split, z), (f"{split}_ts", z / t)):
            again = compute_metrics(zz, y, settings["n_bins"], settings["top_k"])
            for k, v in again.items():
                assert on_disk[f"{prefix}/{k}"] == pytest.approx(v, rel=1e-12, abs=1e-15), f"{prefix}/{k}"


def test_binary_run_without_ts_skips_penultimate_and_ts_figures(tmp_path: Path) -> None:
    final = fit(make_config(*TINY, "loss=binary", "data.classes=[3,8]", "data.val_size=100",
                            "data.test_size=100", "metrics.temperature_scaling=false"), tmp_path)
    assert "temperature" not in final and not any(k.startswith("test_ts/") for k in final)
    written = {p.name for p in tmp_path.glob("*.png")}
    assert written == {"reliability_test.png", "confidence_hist.png", "risk_coverage.png"}


def test_figures_can_be_switched_off_and_the_penultimate_classes_chosen(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    off = fit(make_config(*TINY, "metrics.figures=false"), tmp_path / "off")
    assert not list((tmp_path / "off").glob("*.png")) and "test/ece" in off
    acc = EventAccumulator(str(tmp_path / "off"), size_guidance={"images": 0})
    acc.Reload()
    assert acc.Tags()["images"] == [] and "test_ts/ece" in acc.Tags()["scalars"]

    drawn, real = [], cal.penultimate_projection

    def spy(features, labels, templates, classes, *args, **kwargs):  # the real drawing, arguments noted
        drawn.append((sorted(set(labels.tolist())), list(classes)))
        return real(features, labels, templates, classes, *args, **kwargs)

    monkeypatch.setattr(cal, "penultimate_projection", spy)
    fit(make_config(*TINY, "metrics.penultimate_classes=[7,3,9]"), tmp_path / "on")
    assert drawn == [([3, 7, 9], [7, 3, 9])] and (tmp_path / "on/penultimate.png").exists()
