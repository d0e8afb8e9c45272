"""Confidence scores for selective classification beside the max softmax probability, and the metrics
of a score's risk-coverage curve. Pure functions of logits [N, K]; a score is higher = more confident.

- msp: max_k softmax(z)_k (Hendrycks & Gimpel 2017); max_logit: max_k z_k; entropy: the negative
  predictive entropy Σ_k q_k log q_k; margin: q_(1) - q_(2), the top two probabilities.
- maxlogit_pnorm: max_k z_k / ‖z‖_p, and maxlogit_pnorm_centred: the same of z - mean_k z_k. Cattelan &
  Silva 2024 (MaxLogit-pNorm) proposed it; Xia et al. 2025 ("Towards understanding why label smoothing
  degrades selective classification and how to fix it", ICLR) use it to undo LS's damage. p is chosen
  on the validation split as their code does (search_p in their notebooks): p = 1..10, the smallest p
  of lowest AURC (here the report's AURC, with ties of the score averaged; they integrate trapezoids).
Per score: aurc, eaurc (selective.py's), augrc (Traub et al. 2024, "Overcoming common flaws in the
evaluation of selective classification systems"): the area under the generalised risk
P(error, accepted) = errors(k)/N against coverage k/N, trapezoids from (0, 0) as in their fd-shifts
RiskCoverageStats (so a perfect ranking scores their optimum err²/2 exactly), and cov_at_5risk: the
largest coverage whose selective risk is at most 5% (0 when none is).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ls_bench.config import SCORES
from ls_bench.evaluate.metrics import check_inputs
from ls_bench.evaluate.selective import optimal_risk, risk_coverage

P_RANGE = tuple(range(1, 11))  # Xia et al.'s ps = [1, ..., 10]
NORM_FLOOR = 1e-12  # torch.nn.functional.normalize's eps: an all-equal logit vector has norm 0
FITTED = ("maxlogit_pnorm", "maxlogit_pnorm_centred")  # p chosen on the validation split


def score(name: str, logits: Tensor, p: int | None = None) -> Tensor:
    """The score [N] float64 of each row of `logits`, higher = more confident."""
    z = logits.double()
    if name.startswith("maxlogit_pnorm"):
        if name.endswith("centred"):
            z = z - z.mean(1, keepdim=True)
        return (z / z.norm(p=p, dim=1, keepdim=True).clamp_min(NORM_FLOOR)).max(1).values
    if name == "max_logit":
        return z.max(1).values
    logq = torch.log_softmax(z, 1)
    if name == "msp":
        return logq.max(1).values.exp()
    if name == "entropy":
        return (logq.exp() * logq).sum(1)
    if name == "margin":
        top2 = logq.topk(2, dim=1).values.exp()
        return top2[:, 0] - top2[:, 1]
    raise ValueError(f"unknown score {name!r}; known: {', '.join(SCORES)}")


def augrc(conf: Tensor, correct: Tensor) -> float:
    """Traub et al.'s AUGRC: trapezoids of errors(k)/N over coverage k/N from (0, 0), ties averaged."""
    _, risk = risk_coverage(conf, correct)
    n = len(risk)
    gr = risk * torch.arange(1, n + 1, dtype=torch.float64) / n  # errors(k) / N
    return float(gr.sum() / n - gr[-1] / (2 * n))  # Σ_k (gr(k-1) + gr(k)) / 2N with gr(0) = 0


def selective_numbers(conf: Tensor, correct: Tensor, max_risk: float = 0.05) -> dict[str, float]:
    """aurc, eaurc, augrc and cov_at_5risk of ranking by `conf`."""
    coverage, risk = risk_coverage(conf, correct)
    aurc = float(risk.mean())
    ok = (risk <= max_risk).nonzero()
    return {"aurc": aurc, "eaurc": aurc - float(optimal_risk(len(risk), float(correct.sum())).mean()),
            "augrc": augrc(conf, correct), "cov_at_5risk": float(coverage[ok[-1, 0]]) if len(ok) else 0.0}


def choose_p(name: str, logits: Tensor, labels: Tensor) -> int:
    """The p in P_RANGE of lowest validation AURC for score `name` (the first one on ties)."""
    correct = (logits.argmax(1) == labels).double()
    aurcs = [float(risk_coverage(score(name, logits, p), correct)[1].mean()) for p in P_RANGE]
    return P_RANGE[aurcs.index(min(aurcs))]


def best_normalised(final: dict, logits: Tensor) -> dict[str, Tensor]:
    """{legend: score} of the p-normalised score with the lowest test AURC in `final` (for
    risk_coverage.png beside MSP); {} when the run computed none."""
    done = [n for n in FITTED if f"test/{n}/aurc" in final]
    if not done:
        return {}
    name = min(done, key=lambda n: final[f"test/{n}/aurc"])
    p = int(final[f"test/{name}/p"])
    return {f"{name} (p = {p})": score(name, logits, p)}


def score_metrics(names: list[str], val: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]
                  ) -> tuple[dict[str, float], dict[str, dict]]:
    """({"test/<score>/<metric>": value}, {score: {"p": p}}) for each score, p chosen on `val`."""
    z, y = test
    check_inputs(z, y)
    correct = (z.argmax(1) == y.long()).double()
    out: dict[str, float] = {}
    fitted: dict[str, dict] = {}
    for name in names:
        p = None
        if name in FITTED:
            p = choose_p(name, val[0], val[1].long())
            fitted[name] = {"p": p}
            out[f"test/{name}/p"] = float(p)
        out.update({f"test/{name}/{k}": v for k, v in selective_numbers(score(name, z, p), correct).items()})
    return out, fitted
