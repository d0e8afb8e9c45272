"""Selective scores and their risk-coverage numbers: hand-computed cases and independent transcriptions of
the references (Traub et al.'s fd-shifts AUGRC, Xia et al.'s norm_logits and search_p)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_logits
from ls_bench.evaluate.scores import P_RANGE, augrc, choose_p, score, score_metrics, selective_numbers


def test_scores_by_hand() -> None:
    z = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    q = torch.softmax(z.double(), 1)
    assert score("maxlogit_pnorm", z, 2)[0].item() == pytest.approx(0.8)  # 4 / 5
    assert score("maxlogit_pnorm", z, 1)[0].item() == pytest.approx(4 / 7)
    assert score("maxlogit_pnorm_centred", z, 2)[0].item() == pytest.approx(0.5 / 0.5 ** 0.5)  # [-.5, .5]
    assert score("maxlogit_pnorm_centred", z, 2)[1].item() == 0.0  # all equal: norm 0, floored, no NaN
    assert score("max_logit", z).tolist() == [4.0, 1.0]
    assert score("msp", z).tolist() == pytest.approx(q.max(1).values.tolist())
    assert score("margin", z)[0].item() == pytest.approx((q[0, 1] - q[0, 0]).item())
    assert score("entropy", z)[1].item() == pytest.approx(-np.log(2))  # minus the entropy of [.5, .5]
    with pytest.raises(ValueError, match="unknown score 'doctor'"):
        score("doctor", z)


def test_augrc_and_coverage_at_risk_by_hand() -> None:
    conf, correct = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    # errors among the k most confident: 0, 1, 1, 2 -> generalised risk 0, .25, .25, .5 at coverage .25 .. 1;
    # trapezoids from (0, 0): .25 * (0 + .125 + .25 + .375) = .1875
    assert augrc(conf, correct) == pytest.approx(0.1875, abs=1e-15)
    out = selective_numbers(conf, correct)
    assert out["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert out["cov_at_5risk"] == 0.25  # only the first sample is kept at risk 0
    assert selective_numbers(conf, torch.ones(4))["cov_at_5risk"] == 1.0
    assert selective_numbers(conf, torch.zeros(4))["cov_at_5risk"] == 0.0


def test_augrc_of_a_perfect_ranking_is_traubs_optimum() -> None:
    """Their augrc_optimal for binary residuals: err² / 2, exactly."""
    correct = torch.tensor([1.0] * 70 + [0.0] * 30)
    conf = torch.linspace(1, 0, 100)
    assert augrc(conf, correct) == pytest.approx(0.5 * 0.3 ** 2, abs=1e-15)


def fd_shifts_augrc(confids: np.ndarray, residuals: np.ndarray) -> float:
    """Traub et al.'s generalized_risk_stats + evaluate_auc, transcribed: one RC point per distinct
    threshold (ties enter together), coverage descending from 1 to 0, trapezoids."""
    n = len(confids)
    order = np.argsort(confids, kind="stable")
    c, r = confids[order], residuals[order]
    thresholds = np.unique(c)
    cov = [(c >= t).sum() / n for t in thresholds] + [0.0]
    gr = [r[c >= t].sum() / n for t in thresholds] + [0.0]
    return float(-np.trapezoid(gr, cov))  # coverage runs downwards


def test_augrc_matches_fd_shifts_with_ties() -> None:
    z, y = random_logits(500, 5, seed=4)
    conf = score("msp", z).round(decimals=2)  # many ties
    correct = (z.argmax(1) == y).double()
    assert augrc(conf, correct) == pytest.approx(fd_shifts_augrc(conf.numpy(), 1 - correct.numpy()), abs=1e-12)


def xia_search_p(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Xia et al.'s search_p with their norm_logits(add_unit="mean") and trapezoid AURC from (0, 0)."""
    correct = logits.argmax(-1) == labels
    best, best_p = 1.0, None
    for p in range(1, 11):
        x = logits.T.double()
        x = x - x.mean(0)
        s = (x / x.norm(p=p, dim=0)).T.max(-1).values
        idx = s.argsort(descending=True)
        risk = torch.cat([torch.zeros(1), (~correct[idx]).cumsum(0) / torch.arange(1, len(s) + 1)])
        aurc = torch.trapezoid(risk.double(), torch.linspace(0, 1, len(s) + 1, dtype=torch.float64))
        if aurc < best:
            best, best_p = aurc, p
    return best_p


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_p_is_chosen_as_xia_et_al_choose_it(seed: int) -> None:
    z, y = random_logits(800, 10, seed=seed)
    z = z + torch.randn(800, 1, generator=torch.Generator().manual_seed(seed)) * 3  # a norm unrelated to errors
    assert choose_p("maxlogit_pnorm_centred", z, y) == xia_search_p(z, y)


def test_score_metrics_names_and_p() -> None:
    val, test = random_logits(300, 10, seed=5), random_logits(300, 10, seed=6)
    out, params = score_metrics(["msp", "maxlogit_pnorm"], val, test)
    assert params["maxlogit_pnorm"]["p"] in P_RANGE and out["test/maxlogit_pnorm/p"] == params["maxlogit_pnorm"]["p"]
    assert set(out) == {f"test/{s}/{k}" for s in ("msp", "maxlogit_pnorm") for k in
                        ("aurc", "eaurc", "augrc", "cov_at_5risk")} | {"test/maxlogit_pnorm/p"}


def test_risk_coverage_figure_gets_the_best_normalised_score() -> None:
    from ls_bench.evaluate.figures import risk_coverage_curve
    from ls_bench.evaluate.scores import best_normalised

    z, y = random_logits(200, 10, seed=7)
    final = {"test/maxlogit_pnorm/aurc": 0.2, "test/maxlogit_pnorm/p": 3.0,
             "test/maxlogit_pnorm_centred/aurc": 0.1, "test/maxlogit_pnorm_centred/p": 2.0}
    best = best_normalised(final, z)
    assert list(best) == ["maxlogit_pnorm_centred (p = 2)"]
    assert torch.equal(best["maxlogit_pnorm_centred (p = 2)"], score("maxlogit_pnorm_centred", z, 2))
    assert best_normalised({}, z) == {}
    labels = [ln.get_label() for ln in risk_coverage_curve(z, y, 1.5, scores=best).axes[0].get_lines()]
    assert labels[0].startswith("before TS") and labels[2].startswith("maxlogit_pnorm_centred (p = 2): AURC")
