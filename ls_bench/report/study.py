"""The sweep report's "Optuna study" section, for a sweep folder of hydra/sweeper=search (or the
plugin's optuna): what the study found (optimization_results.yaml, which the sweeper writes at the
end) and every trial's objective, best first. A trial is a job folder; with search.seeds its runs
are the seeds' folders (trial.json), otherwise the job's own run. The objective is recomputed from
the runs' final.json (search.optimize, averaged over the seeds) exactly as the job returned it."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

import yaml

from ls_bench.report.runs import RunResult
from ls_bench.report.stats import value_label
from ls_bench.report.tables import md_table

RESULTS = "optimization_results.yaml"
TITLE = "Optuna study"


def trial_dir(run: RunResult) -> Path:
    """The job folder of a run: its parent for a seed of a trial (trial.json there), else its own."""
    return run.dir.parent if (run.dir.parent / "trial.json").exists() else run.dir


def trials(runs: Sequence[RunResult]) -> dict[Path, list[RunResult]]:
    """The runs of each trial (job folder), in the order found."""
    out: dict[Path, list[RunResult]] = {}
    for r in runs:
        out.setdefault(trial_dir(r), []).append(r)
    return out


def objective(runs: Sequence[RunResult]) -> float | None:
    """The trial's value, as the job returned it: the mean of search.optimize over its runs (None
    unless every run finished with a finite value)."""
    metric = runs[0].config.get("search.optimize", "val/nll")
    values = [r.value(metric) if r.status == "done" else None for r in runs]
    return statistics.fmean(values) if values and None not in values else None  # type: ignore[arg-type]


def is_study(sweep_dir: Path, runs: Sequence[RunResult]) -> bool:
    return (sweep_dir / RESULTS).exists() or any((r.dir.parent / "trial.json").exists() for r in runs)


def study_section(sweep_dir: Path, runs: Sequence[RunResult]) -> list[str]:
    """summary.md's lines (none for a sweep that is not a study): the best trial, then every trial."""
    if not is_study(sweep_dir, runs):
        return []
    found = yaml.safe_load((sweep_dir / RESULTS).read_text()) if (sweep_dir / RESULTS).exists() else {}
    params = list((found or {}).get("best_params") or {}) or ["loss.epsilon"]
    by_trial = trials(runs)
    metric = runs[0].config.get("search.optimize", "val/nll")
    rows = sorted(((objective(rs), rs) for rs in by_trial.values()),
                  key=lambda t: (t[0] is None, t[0] if t[0] is not None else math.inf))
    table = [[*(value_label(rs[0].config.get(p)) for p in params), "—" if v is None else f"{v:.4f}",
              ", ".join(str(r.config.get("seed")) for r in rs), _status(rs)] for v, rs in rows]
    return ["", f"## {TITLE}", "", headline(found, metric, by_trial), "",
            md_table([*params, f"{metric} (objective)", "seeds", "runs"], table)]


def headline(found: dict[str, Any] | None, metric: str, by_trial: dict[Path, list[RunResult]]) -> str:
    """One line: how many trials, and the best the sweeper reported (or that it has not yet)."""
    failed = sum(objective(rs) is None for rs in by_trial.values())
    counted = f"{len(by_trial)} trials, {failed} without a value (failed or unfinished)"
    if not found or "best_params" not in found:
        return f"{counted}; no {RESULTS} yet: the study is running or was stopped."
    best = ", ".join(f"{k}={value_label(v)}" for k, v in found["best_params"].items())
    return f"{counted}; best: {best}, {metric} = {found['best_value']:.4f} ({RESULTS})."


def _status(runs: Sequence[RunResult]) -> str:
    done = sum(r.status == "done" for r in runs)
    return f"{done}/{len(runs)} done" + ("" if done == len(runs) else f" ({', '.join(r.status for r in runs)})")
