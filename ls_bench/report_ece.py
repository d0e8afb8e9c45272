"""The sweep report's "ECE with its own error bar" section: is an ECE difference larger than the
estimator's own noise on this test set (Roelofs et al. 2022; Kumar et al. 2019)?

Two intervals, side by side, for each run against its baseline run of the same seed (the run that
differs only in the baseline key, `--baseline`, default ε = 0):
    seed-paired   the report's usual one: the mean over seeds of ECE(run) − ECE(baseline), with a
                  Student-t interval over the seeds (training noise);
    sample-paired a paired percentile bootstrap over the test samples of that one pair of models
                  (ls_bench.evaluation.paired_bootstrap_ece_diff: one index set per resample scores
                  both models, so the sample-to-sample variation they share cancels), from the
                  saved predictions, with the run's eval.bootstrap resamples and data.split_seed
                  (test-set noise). Before and after temperature scaling (final.json's temperature).
ECE cells also show each run's own bootstrap interval (test/ece_lo, test/ece_hi), averaged over seeds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from ls_bench.report import Baseline, Run

TITLE = "ECE with its own error bar: seed-paired and test-sample-paired differences"


def _confidences(run: "Run", temperature: float) -> tuple[Any, Any] | None:
    import numpy as np
    import torch

    from ls_bench.metrics import confidence_correct

    path = run.dir / "predictions.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        z, y = torch.from_numpy(f["test_logits"]), torch.from_numpy(f["test_labels"]).long()
    return confidence_correct(z / temperature, y)


def pair_intervals(run: "Run", base: "Run") -> dict[str, dict[str, float]]:
    """{"ece": {mean, lo, hi}, "ts_ece": ...}: the paired bootstrap of ECE(run) − ECE(base) on the
    test samples, before and (when both have a temperature) after temperature scaling."""
    from ls_bench.evaluation import paired_bootstrap_ece_diff

    n_bins = int(run.config.get("metrics.n_bins", 15))
    resamples = int(run.config.get("eval.bootstrap", 1000)) or 1000
    seed = int(run.config.get("data.split_seed", 0))
    out: dict[str, dict[str, float]] = {}
    for key, t_run, t_base in (("ece", 1.0, 1.0), ("ts_ece", run.value("temperature"), base.value("temperature"))):
        if t_run is None or t_base is None:
            continue
        a, b = _confidences(run, t_run), _confidences(base, t_base)
        if a is None or b is None or len(a[0]) != len(b[0]):
            continue
        out[key] = paired_bootstrap_ece_diff(*a, *b, n_bins=n_bins, n_resamples=resamples, seed=seed)
        out[key]["point"] = (run.value("test/ece" if key == "ece" else "test_ts/ece") or 0.0) - \
            (base.value("test/ece" if key == "ece" else "test_ts/ece") or 0.0)
    return out


def _interval(d: dict[str, float] | None) -> str:
    if d is None:
        return "–"
    mark = "" if d["lo"] <= 0 <= d["hi"] else " *"
    return f"{d['point']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{mark}"


def ece_section(runs: Sequence["Run"], baseline: "Baseline") -> list[str]:
    """Markdown lines of the section; none when no finished pair has predictions.npz."""
    from ls_bench.report import LEVEL, _label, build_groups, diff_cell, is_seed_key, md_table, setting_key

    metrics = [m for m in ("test/ece", "test/ece_lo", "test/ece_hi", "test_ts/ece")
               if any(r.value(m) is not None for r in runs if r.status == "done")]
    if "test/ece" not in metrics:
        return []
    groups, keys = build_groups(runs, metrics, baseline)
    seeds = {k for r in runs for k in r.config if is_seed_key(k)}
    base = {setting_key(r.config, [baseline.key]): r for r in runs if r.status == "done" and baseline.matches(r.config)}
    mean_rows, pair_rows = [], []
    for g in groups:
        s = g.stats
        boot = (f" (bootstrap [{s['test/ece_lo'].mean:.4f}, {s['test/ece_hi'].mean:.4f}])"
                if "test/ece_lo" in s and s["test/ece_lo"].mean is not None else "")
        ece = s["test/ece"]
        mean_rows.append([*(_label(g.labels[k]) for k in keys), str(len(g.done)),
                          ("–" if ece.mean is None else f"{ece.mean:.4f}") + boot,
                          diff_cell(g.diffs.get("test/ece"), baseline.label),
                          diff_cell(g.diffs.get("test_ts/ece"), baseline.label) if "test_ts/ece" in s else "–"])
        if baseline.matches(g.labels):
            continue
        for r in sorted(g.done, key=lambda r: str([r.config.get(k) for k in sorted(seeds)])):
            b = base.get(setting_key(r.config, [baseline.key]))
            if b is None:
                continue
            d = pair_intervals(r, b)
            if d:
                seed = ", ".join(f"{k}={r.config[k]}" for k in sorted(seeds) if k in r.config
                                 and (k == "seed" or r.config[k] is not None))
                pair_rows.append([*(_label(g.labels[k]) for k in keys), seed, _interval(d.get("ece")),
                                  _interval(d.get("ts_ece"))])
    if not pair_rows:
        return []
    n_boot = int(next(r for r in runs if r.status == "done").config.get("eval.bootstrap", 1000)) or 1000
    return ["", f"## {TITLE}", "",
            f"ECE: mean over seeds, with each run's own {LEVEL:.0%} bootstrap interval over the test samples "
            f"(mean of test/ece_lo and test/ece_hi). Δ: the seed-paired difference to {baseline.label} "
            f"(mean ± {LEVEL:.0%} CI half-width over seeds).", "",
            md_table([*keys, "n", "test/ece", "Δtest/ece (seeds)", "Δtest_ts/ece (seeds)"], mean_rows), "",
            f"Per seed: ECE(run) − ECE({baseline.label}) on the same test samples [paired percentile bootstrap, "
            f"{n_boot} resamples, {LEVEL:.0%}]; * marks an interval that excludes 0. After TS each model uses "
            f"its own temperature.", "",
            md_table([*keys, "seed", "ΔECE [bootstrap]", "ΔECE after TS [bootstrap]"], pair_rows)]

