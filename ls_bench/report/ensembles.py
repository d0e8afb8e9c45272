"""The sweep report's seed-ensemble section: for each setting with >= 2 finished seeds, the mean of the
seeds' predicted probabilities is one model (a deep ensemble over seeds, Lakshminarayanan et al. 2017),
scored like any run (acc, nll, ece, aurc from ls_bench.evaluate).

Three ensembles per setting, from the saved predictions.npz:
    ensemble     q̄ = (1/S) Σ_s softmax(z_s), the members as trained;
    of TS        q̄ = (1/S) Σ_s softmax(z_s / T_s), each member after its own temperature (final.json);
    TS of it     softmax(log q̄ / T) with T fitted on the averaged validation probabilities (the same fit
                 as a run's temperature scaling, ls_bench.evaluate.calibration, on log q̄ as logits).
Averaging members that are already under-confident, as LS and mixup models tend to be, makes the
ensemble more under-confident still (Rahaman & Thiery 2021; Wen et al. 2021, "Combining ensembles and
data augmentation can harm your calibration"): compare `gap` (conf - acc, < 0 under-confident).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ls_bench.report.runs import RunResult
from ls_bench.report.stats import Baseline, build_groups, value_label
from ls_bench.report.tables import md_table

TITLE = "Seed ensembles: the mean of the seeds' test probabilities as one model"
NUMBERS = ("acc", "nll", "ece", "gap", "aurc")


def _mean_probs(runs: Sequence[RunResult], split: str, temperatures: Sequence[float]) -> tuple[Tensor, Tensor] | None:
    """(log of the mean of softmax(z_s / T_s), labels), or None when a member lacks the split or the
    members' labels differ (runs of another data.root, say)."""
    preds = [r.predictions(split) for r in runs]
    if any(p is None or len(p[1]) == 0 for p in preds) or any(not torch.equal(p[1], preds[0][1]) for p in preds):
        return None
    q = torch.stack([torch.softmax(z.double() / t, 1) for (z, _), t in zip(preds, temperatures)]).mean(0)
    # A diverged member (logit gaps beyond ~745) gives probabilities that underflow to 0 in every member:
    # log 0 = -inf would make the ensemble unscoreable. They are taken as float64's smallest normal number
    # (log = -708), so the section still has a row for it (study 8's negative-LS runs from random weights).
    return q.clamp_min(torch.finfo(torch.float64).tiny).log(), preds[0][1]


def ensemble_numbers(runs: Sequence[RunResult], n_bins: int = 15) -> dict[str, dict[str, float]]:
    """{"ensemble" | "of TS" | "TS of it": {acc, nll, ece, gap, aurc}} of the runs' seed ensemble
    ({} without the predictions; the TS variants only when every member has a temperature)."""
    from ls_bench.evaluate.calibration import fit_temperature
    from ls_bench.evaluate.metrics import compute_metrics
    from ls_bench.evaluate.selective import selective_metrics

    def numbers(logq: Tensor, y: Tensor) -> dict[str, float]:
        m = {**compute_metrics(logq, y, n_bins), **selective_metrics(logq, y)}
        return {k: m[k] for k in NUMBERS}

    test = _mean_probs(runs, "test", [1.0] * len(runs))
    if test is None:
        return {}
    out = {"ensemble": numbers(*test)}
    temps = [r.value("temperature") for r in runs]
    if None not in temps:
        out["of TS"] = numbers(*_mean_probs(runs, "test", temps))
    val = _mean_probs(runs, "val", [1.0] * len(runs))
    if val is not None and None not in temps:  # a run with temperature scaling had a validation split
        t = fit_temperature(*val)
        out["TS of it"] = {**numbers(test[0] / t, test[1]), "T": t}
    return out


def ensemble_section(runs: Sequence[RunResult], baseline: Baseline) -> list[str]:
    """Markdown lines of the section; none when no setting has 2 seeds with saved predictions."""
    groups, keys = build_groups(runs, ["test/ece"], baseline)
    rows = []
    for g in groups:
        if len(g.done) < 2:
            continue
        n_bins = int(g.done[0].config.get("metrics.n_bins", 15))
        for kind, m in ensemble_numbers(g.done, n_bins).items():
            t = f" (T = {m['T']:.3g})" if "T" in m else ""
            rows.append([*(value_label(g.labels[k]) for k in keys), str(len(g.done)), kind + t,
                         *(f"{m[k]:+.4f}" if k == "gap" else f"{m[k]:.4f}" for k in NUMBERS)])
    if not rows:
        return []
    return ["", f"## {TITLE}", "",
            "ensemble: mean of the seeds' softmax; of TS: mean after each seed's own temperature; TS of it: "
            "one temperature fitted on the ensemble's averaged validation probabilities. gap = conf - acc "
            "(< 0: under-confident; ensembles of LS or mixup members tend to be, Rahaman & Thiery 2021, "
            "Wen et al. 2021). Compare with the members' mean in the tables above.", "",
            md_table([*keys, "seeds", "ensemble", *(f"test/{k}" for k in NUMBERS)], rows)]
