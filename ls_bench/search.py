"""A job of a Hydra sweeper that optimises (Optuna): the runs of one trial and the value it returns.

A trial is one run, or with `search.seeds` one run per seed, trained in sequence, each in its own
folder `<job>/seed=N` with the files of any run (final.json, metrics.jsonl, ...), so that the
report reads them as runs of one setting over seeds. The job folder then holds `trial.json`: the
metric, the seeds, their values and their mean, the objective returned to the sweeper. Averaging
over seeds makes the objective of a trial less of a single noisy run (seed-to-seed std of val NLL
is of the size of the ε effects being searched for).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ls_bench.config import Config
from ls_bench.errors import RunFailed, invalid
from ls_bench.evaluate.metrics import compute_metrics
from ls_bench.files import read_json, write_json

TRIAL_FILE = "trial.json"


def objective_metrics(cfg: Config) -> list[str]:
    """The final.json numbers that every run of this config writes, whatever its data: the
    epoch's train/loss and train/acc, every compute_metrics name on val (when there is a val
    split) and test, and with temperature scaling val_ts/*, test_ts/* and temperature."""
    names = list(compute_metrics(torch.eye(2), torch.arange(2), cfg.metrics.n_bins))  # the names, not the values
    splits = (["val"] if cfg.data.val_size else []) + ["test"]
    if cfg.metrics.temperature_scaling:
        splits += [f"{s}_ts" for s in splits]
    return ["train/loss", "train/acc", *(f"{s}/{n}" for s in splits for n in names),
            *(["temperature"] if cfg.metrics.temperature_scaling else [])]


def check_objective(cfg: Config) -> None:
    """search.optimize names a metric that every run of cfg produces (before anything trains)."""
    allowed = objective_metrics(cfg)
    if cfg.search.optimize not in allowed:
        val = [m for m in allowed if m.startswith("val/")]
        raise invalid("search.optimize", cfg.search.optimize,
                      f"not a metric these runs produce; e.g. {', '.join(val or allowed[:8])}, or the same under "
                      f"{', '.join(sorted({m.split('/')[0] for m in allowed if '/' in m} - {'val'}))}")


def trial_runs(cfg: Config, job_dir: Path) -> Iterator[tuple[Config, Path]]:
    """(config, folder) of each run of the job: itself, or one per search.seeds in job_dir/seed=N,
    announced in trial.json before the first starts (so the report reads the seeds, not the job)."""
    if not cfg.search.seeds:
        yield cfg, job_dir
        return
    seeds = list(cfg.search.seeds)
    write_json(job_dir / TRIAL_FILE, {"optimize": cfg.search.optimize, "seeds": seeds,
                                      "runs": [f"seed={s}" for s in seeds]})
    for s in seeds:
        yield replace(cfg, seed=s), job_dir / f"seed={s}"


def objective(cfg: Config, finals: Sequence[dict[str, Any]], job_dir: Path) -> float:
    """The mean of search.optimize over the job's runs, recorded in trial.json when there are
    seeds; RunFailed when a run lacks it or it is not finite (the trial has no value)."""
    metric = cfg.search.optimize
    values = [f.get(metric) for f in finals]
    if cfg.search.seeds:
        write_json(job_dir / TRIAL_FILE, {**read_json(job_dir / TRIAL_FILE), "values": values,
                                          "objective": _mean(values)})
    for s, v in zip(cfg.search.seeds or [cfg.seed], values):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise RunFailed(f"{metric} of seed {s} is {v!r}, not a finite number: the trial has no value")
    return _mean(values)


def _mean(values: Sequence[Any]) -> float | None:
    ok = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(ok) / len(ok) if len(ok) == len(values) and all(math.isfinite(v) for v in ok) else None
