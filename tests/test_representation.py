"""eval.representation: class separation against scipy's pairwise cosine distances, the scatter
ratio against numpy's scatter matrices, logit spread and the k-NN vote by hand, the probe against
scikit-learn's own pipeline; tight equidistant clusters score as Müller et al. draw them; and a
digits run from the CLI writes them (held_out/ with data.classes leaving classes out)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from conftest import TINY, run_cli
from ls_bench.evaluate.representation import (
    class_separation,
    knn_accuracy,
    logit_spread,
    probe_accuracy,
    within_between,
)


def clusters(n: int, k: int, d: int, noise: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, labels, templates): k unit templates in d dimensions, samples = template + noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    y = torch.arange(n) % k
    return templates[y] + noise * torch.randn(n, d, generator=g), y, templates


def test_class_separation_is_kornblith_r2_over_every_pair_of_cosine_distances() -> None:
    f, y, _ = clusters(90, 4, 6, noise=0.8, seed=1)
    f[5] = 0  # a zero vector: cosine distance 1 to everything, itself included (scipy's pdist gives NaN)
    from sklearn.metrics.pairwise import cosine_distances

    D = cosine_distances(f.double().numpy())  # the zero vector's row and column are 1, but sklearn zeroes
    D[5, 5] = 1.0  # the whole diagonal
    yy, cls = y.numpy(), np.unique(y.numpy())
    within = np.mean([D[np.ix_(yy == c, yy == c)].mean() for c in cls])
    total = np.mean([D[np.ix_(yy == a, yy == b)].mean() for a in cls for b in cls])
    assert class_separation(f, y) == pytest.approx(1 - within / total, rel=1e-9)
    g = f[torch.arange(90) != 5]  # scipy's pdist on the nonzero rows, every pair and each with itself (0)
    D = squareform(pdist(g.double().numpy(), "cosine"))
    yy = y[torch.arange(90) != 5].numpy()
    within = np.mean([D[np.ix_(yy == c, yy == c)].mean() for c in cls])
    total = np.mean([D[np.ix_(yy == a, yy == b)].mean() for a in cls for b in cls])
    assert class_separation(g, torch.from_numpy(yy)) == pytest.approx(1 - within / total, rel=1e-9)


def test_class_separation_by_hand() -> None:
    # Two classes on orthogonal axes: within 0, total (0 + 0 + 1 + 1)/4 = 1/2 -> R² = 1.
    f = torch.tensor([[1.0, 0], [2, 0], [0, 3], [0, 1]])
    assert class_separation(f, torch.tensor([0, 0, 1, 1])) == pytest.approx(1.0)
    # Mixed labels: class 0 = {e1, e2}, class 1 = {e1, e2}: within = total = 1/2 -> 0.
    assert class_separation(f, torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-12)
    # Class 0 = {e1, e1}, class 1 = {e1, e2}: block means 0 (0-0), 1/2 (0-1, 1-0, 1-1): within
    # (0 + 1/2)/2 = 1/4, total (0 + 1/2 + 1/2 + 1/2)/4 = 3/8 -> R² = 1 - 2/3 = 1/3.
    f = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1]])
    assert class_separation(f, torch.tensor([0, 0, 1, 1])) == pytest.approx(1 / 3)


def test_within_between_is_the_trace_ratio_of_the_scatter_matrices() -> None:
    # 1-D by hand: class 0 = {0, 2}, class 1 = {10, 12}: tr S_W = 4, tr S_B = 2·5² + 2·5² = 100.
    assert within_between(torch.tensor([[0.0], [2], [10], [12]]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.04)
    f, y, _ = clusters(77, 5, 4, noise=0.7, seed=2)
    x, yy = f.double().numpy(), y.numpy()
    s_w = sum(np.cov(x[yy == c].T, bias=True) * (yy == c).sum() for c in np.unique(yy))
    s_t = np.cov(x.T, bias=True) * len(x)
    s_b = s_t - s_w  # total = within + between
    assert within_between(f, y) == pytest.approx(np.trace(s_w) / np.trace(s_b), rel=1e-9)


def test_logit_spread_by_hand_and_free_of_scale() -> None:
    # z = [3, 1, 0], y = 0: gaps z_y - z_k = 2, 3: std 0.5, mean 2.5 -> 0.2.
    assert logit_spread(torch.tensor([[3.0, 1, 0]]), torch.tensor([0])) == pytest.approx(0.2)
    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(200, 6, generator=g), torch.randint(0, 6, (200,), generator=g)
    z[torch.arange(200), y] += 4
    expected = []
    for c in range(6):
        rows = [np.delete(z[i].double().numpy(), y[i]) for i in range(200) if y[i] == c]
        gaps = [z[i, y[i]].item() - r for i, r in zip([i for i in range(200) if y[i] == c], rows)]
        expected.append(np.mean([np.std(v) for v in gaps]) / np.mean([np.mean(v) for v in gaps]))
    assert logit_spread(z, y) == pytest.approx(np.mean(expected), rel=1e-9)
    # a temperature and a constant per row change nothing; two classes have one wrong class
    shifted = z.double() / 3 + torch.randn(200, 1, generator=g, dtype=torch.float64)
    assert logit_spread(shifted, y) == pytest.approx(logit_spread(z, y), rel=1e-9)
    assert logit_spread(z[:, :2], y % 2) == 0.0
    # a class whose mean gap is not positive is left out; none left: NaN
    assert math.isnan(logit_spread(torch.tensor([[0.0, 1, 2]]), torch.tensor([0])))


def knn_by_hand(f: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Leave-one-out majority of the k most cosine-similar other samples; ties to the smallest label."""
    u = torch.nn.functional.normalize(f.double(), dim=1)
    sim = u @ u.T
    sim.fill_diagonal_(-math.inf)
    votes = torch.nn.functional.one_hot(y[sim.topk(k, dim=1).indices], int(y.max()) + 1).sum(1)
    return float((votes.argmax(1) == y).double().mean())  # argmax: the first (smallest) of tied labels


def test_knn_is_leave_one_out_by_hand_and_subsamples_above_its_cap() -> None:
    f, y, _ = clusters(150, 3, 5, noise=1.2, seed=4)
    assert knn_accuracy(f, y, k=7) == pytest.approx(knn_by_hand(f, y, 7))
    assert 0.4 < knn_accuracy(f, y, k=7) < 1.0  # noisy clusters: neither chance nor perfect
    keep = torch.randperm(150, generator=torch.Generator().manual_seed(5))[:60]
    assert knn_accuracy(f, y, k=7, max_n=60, seed=5) == pytest.approx(knn_by_hand(f[keep], y[keep], 7))


def test_probe_matches_scikit_learns_pipeline() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f, y, _ = clusters(300, 4, 8, noise=0.5, seed=6)
    f[:, 3] = 7.0  # a constant feature
    tr, te = slice(0, 200), slice(200, 300)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000)).fit(f[tr].numpy(), y[tr].numpy())
    expected = (pipe.predict(f[te].numpy()) == y[te].numpy()).mean()
    assert probe_accuracy(f[tr], y[tr], f[te], y[te]) == pytest.approx(expected)
    assert 0.4 < expected < 1.0


def test_tight_equidistant_clusters_score_as_mueller_draws_them() -> None:
    # Templates at the vertices of a simplex (equidistant), features tight around them: logits
    # z = f·Wᵀ put every wrong class at the same distance.
    k = 5
    templates = torch.eye(k) - 1 / k
    y = torch.arange(400) % k
    g = torch.Generator().manual_seed(7)
    f = templates[y] + 1e-3 * torch.randn(400, k, generator=g)
    assert class_separation(f, y) > 0.99
    assert within_between(f, y) < 1e-4
    assert logit_spread(f @ templates.T, y) < 1e-2
    assert knn_accuracy(f, y) == 1.0
    # the same features with shuffled labels: nothing to separate
    y_random = y[torch.randperm(400, generator=g)]
    assert abs(class_separation(f, y_random)) < 0.05 and within_between(f, y_random) > 10
    # loose clusters separate less than tight ones
    loose, y2, _ = clusters(400, k, 8, noise=1.0, seed=8)
    tight = clusters(400, k, 8, noise=0.1, seed=8)[0]
    assert class_separation(loose, y2) < class_separation(tight, y2)


@pytest.mark.slow  # two CLI runs: ~35 s on the 2-core machine
def test_a_digits_run_writes_the_representation_metrics(tmp_path) -> None:
    """From the CLI: test/repr/* in final.json, in the last metrics.jsonl record, logit_spread equal
    to the saved test logits'; no held_out/ keys when every class is kept; with data.classes
    leaving four classes out, held_out/repr/transfer_acc, a probe well above chance."""
    from ls_bench.evaluate.representation import held_out_splits

    base = [*TINY, "trainer.epochs=3", "metrics.figures=false", "eval.bootstrap=0", "eval.representation=true"]
    r = run_cli(*base, f"hydra.run.dir={tmp_path / 'all'}")
    assert r.returncode == 0, r.stderr[-2000:]
    final = json.loads((tmp_path / "all" / "final.json").read_text())
    keys = ("class_separation", "within_between", "logit_spread", "knn_acc")
    assert all(isinstance(final[f"test/repr/{k}"], float) for k in keys)
    assert 0 < final["test/repr/class_separation"] < 1 and 0 < final["test/repr/knn_acc"] <= 1
    assert not any(k.startswith("held_out/") for k in final)
    last = [json.loads(line) for line in (tmp_path / "all" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["test/repr/knn_acc"] == final["test/repr/knn_acc"]
    with np.load(tmp_path / "all" / "predictions.npz") as p:
        z, y = torch.from_numpy(p["test_logits"]), torch.from_numpy(p["test_labels"])
    assert final["test/repr/logit_spread"] == pytest.approx(logit_spread(z, y), rel=1e-6)

    r = run_cli(*base, "data.classes=[0,1,2,3,4,5]", f"hydra.run.dir={tmp_path / 'six'}")
    assert r.returncode == 0, r.stderr[-2000:]
    final = json.loads((tmp_path / "six" / "final.json").read_text())
    assert 0.5 < final["held_out/repr/transfer_acc"] <= 1  # four classes: chance is 0.25
    assert all(isinstance(final[f"held_out/repr/{k}"], float) for k in ("class_separation", "within_between",
                                                                        "knn_acc"))
    from conftest import make_config

    train, test = held_out_splits(make_config("data.classes=[0,1,2,3,4,5]"))
    assert set(train.y.tolist()) == set(test.y.tolist()) == {0, 1, 2, 3}
    assert len(test) == math.ceil(0.2 * (len(train) + len(test)))  # digits: data.test_size of the held-out images
