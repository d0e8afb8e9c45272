"""The sweep report's "ECE with its own error bar" section: is an ECE difference larger than the
estimator's own noise on this test set (Roelofs et al. 2022; Kumar et al. 2019)?

Two intervals, side by side, for each run against its baseline run of the same seed (the run that
differs only in the baseline key, `--baseline`, default ε = 0):
    seed-paired   the report's usual one: the mean over seeds of ECE(run) − ECE(baseline), with a
                  Student-t interval over the seeds (training noise);
    sample-paired a paired percentile bootstrap over the test samples of that one pair of models
                  (ls_bench.evaluate.selective.paired_bootstrap_ece_diff: one index set per resample scores
                  both models, so the sample-to-sample variation they share cancels), from the
                  saved predictions, with the run's eval.bootstrap resamples and data.split_seed
                  (test-set noise). Before and after temperature scaling (final.json's temperature).
ECE cells also show each run's own bootstrap interval (test/ece_lo, test/ece_hi), averaged over seeds.
"""

from __future__ import annotations

from typing import Sequence

from ls_bench.report.runs import RunResult, present
from ls_bench.report.stats import (
    LEVEL,
    Baseline,
    Group,
    baseline_partners,
    build_groups,
    is_seed_key,
    sort_key,
    value_label,
)
from ls_bench.report.tables import diff_cell, md_table

TITLE = "ECE with its own error bar: seed-paired and test-sample-paired differences"


def pair_intervals(run: RunResult, base: RunResult) -> dict[str, dict[str, float]]:
    """{"ece": {point, mean, lo, hi}, "ts_ece": ...}: the paired bootstrap of ECE(run) − ECE(base)
    on the test samples, before and (when both have a temperature) after temperature scaling, with
    the run's eval.bootstrap resamples (none: {}) seeded by its data.split_seed. Two runs whose saved
    test labels differ (another data.root, say) are not paired."""
    import torch

    from ls_bench.evaluate.metrics import confidence_correct  # torch: only for runs with saved predictions
    from ls_bench.evaluate.selective import paired_bootstrap_ece_diff

    resamples = int(run.config.get("eval.bootstrap", 1000))
    a, b = run.predictions(), base.predictions()
    if resamples <= 0 or a is None or b is None or not torch.equal(a[1], b[1]):
        return {}
    out: dict[str, dict[str, float]] = {}
    for key, metric, t_run, t_base in (("ece", "test/ece", 1.0, 1.0),
                                       ("ts_ece", "test_ts/ece", run.value("temperature"), base.value("temperature"))):
        point_a, point_b = run.value(metric), base.value(metric)
        if None in (t_run, t_base, point_a, point_b):
            continue
        out[key] = {"point": point_a - point_b, **paired_bootstrap_ece_diff(
            *confidence_correct(a[0] / t_run, a[1]), *confidence_correct(b[0] / t_base, b[1]),
            n_bins=int(run.config.get("metrics.n_bins", 15)), n_resamples=resamples,
            seed=int(run.config.get("data.split_seed", 0)))}
    return out


def _interval(d: dict[str, float] | None) -> str:
    if d is None:
        return "–"
    mark = "" if d["lo"] <= 0 <= d["hi"] else " *"
    return f"{d['point']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]{mark}"


def _seed_label(run: RunResult, seed_keys: Sequence[str]) -> str:
    return ", ".join(str(run.config[k]) if k == "seed" else f"{k}={run.config[k]}" for k in seed_keys
                     if k in run.config and (k == "seed" or run.config[k] is not None))


def mean_row(g: Group, keys: Sequence[str], baseline: Baseline) -> list[str]:
    """One setting: its mean ECE with the mean of its runs' bootstrap intervals, and the seed-paired Δs."""
    s = g.stats
    floor = (f"; floor {s['test/ece_floor'].mean:.4f}"
             if "test/ece_floor" in s and s["test/ece_floor"].mean is not None else "")
    boot = (f" (bootstrap [{s['test/ece_lo'].mean:.4f}, {s['test/ece_hi'].mean:.4f}]{floor})"
            if "test/ece_lo" in s and s["test/ece_lo"].mean is not None else "")
    ece = "–" if s["test/ece"].mean is None else f"{s['test/ece'].mean:.4f}"
    return [*(value_label(g.labels[k]) for k in keys), str(len(g.done)), ece + boot,
            diff_cell(g.diffs.get("test/ece"), baseline.label),
            diff_cell(g.diffs.get("test_ts/ece"), baseline.label) if "test_ts/ece" in s else "–"]


def pair_rows(runs: Sequence[RunResult], groups: Sequence[Group], keys: Sequence[str],
              baseline: Baseline) -> list[list[str]]:
    """One row per run with a baseline partner: its seed and the two test-sample-paired intervals."""
    partner = baseline_partners(runs, baseline)
    seed_keys = sorted({k for r in runs for k in r.config if is_seed_key(k)})
    rows = []
    for g in groups:
        if baseline.matches(g.labels):
            continue
        for r in sorted(g.done, key=lambda r: sort_key(r.config.get(k) for k in seed_keys)):
            if (b := partner(r)) is not None and (d := pair_intervals(r, b)):
                rows.append([*(value_label(g.labels[k]) for k in keys), _seed_label(r, seed_keys),
                             _interval(d.get("ece")), _interval(d.get("ts_ece"))])
    return rows


def ece_section(runs: Sequence[RunResult], baseline: Baseline) -> list[str]:
    """Markdown lines of the section; none when no finished pair has predictions.npz and resamples."""
    metrics = present(runs, ("test/ece", "test/ece_lo", "test/ece_hi", "test/ece_floor", "test_ts/ece"))
    if "test/ece" not in metrics:
        return []
    groups, keys = build_groups(runs, metrics, baseline)
    rows = pair_rows(runs, groups, keys, baseline)
    if not rows:
        return []
    resamples = sorted({int(r.config.get("eval.bootstrap", 1000)) for r in runs if r.status == "done"} - {0})
    return ["", f"## {TITLE}", "",
            f"ECE: mean over seeds, with each run's own {LEVEL:.0%} bootstrap interval over the test samples "
            f"(mean of test/ece_lo and test/ece_hi) and, where recorded, its floor: the ECE a perfectly calibrated "
            f"model with the same confidences would score on as many images (test/ece_floor). "
            f"Δ: the seed-paired difference to {baseline.label} "
            f"(mean ± {LEVEL:.0%} CI half-width over seeds).", "",
            md_table([*keys, "n", "test/ece", "Δtest/ece (seeds)", "Δtest_ts/ece (seeds)"],
                     [mean_row(g, keys, baseline) for g in groups]), "",
            f"Per seed: ECE(run) − ECE({baseline.label}) on the same test samples [paired percentile bootstrap, "
            f"{'/'.join(map(str, resamples))} resamples (the run's eval.bootstrap), {LEVEL:.0%}]; * marks an "
            f"interval that excludes 0. After TS each model uses its own temperature.", "",
            md_table([*keys, "seed", "ΔECE [bootstrap]", "ΔECE after TS [bootstrap]"], rows)]
