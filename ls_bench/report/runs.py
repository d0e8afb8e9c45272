"""Reading a sweep: a RunResult per job directory (its config, and final.json, failed.json or how far its
metrics.jsonl got), and the jobs of multirun.yaml that have not started."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ls_bench.config import flatten, with_defaults
from ls_bench.files import read_json
from ls_bench.logs import read_jsonl


@dataclass
class RunResult:
    dir: Path
    config: dict[str, Any]  # flattened: {"loss.epsilon": 0.1, ...}
    status: str  # done | failed | missing
    final: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # failed: the reason; missing: how far it got

    def value(self, metric: str) -> float | None:
        v = self.final.get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    def predictions(self, split: str = "test") -> tuple[Any, Any] | None:
        """(logits, int64 labels) of `split` from the run's predictions.npz as torch tensors, or None
        without the file. Data only: a pickled object array is refused (allow_pickle=False)."""
        import numpy as np  # numpy and torch: only for the sections that read saved predictions
        import torch

        path = self.dir / "predictions.npz"
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as f:
            return torch.from_numpy(f[f"{split}_logits"]), torch.from_numpy(f[f"{split}_labels"]).long()


def read_run(job_dir: Path, config: dict[str, Any] | None = None) -> RunResult:
    """The run in job_dir; `config` stands in for .hydra/config.yaml in a folder without one (a seed of a trial)."""
    # The config the run recorded when it started, if it did: Hydra rewrites .hydra/config.yaml at
    # every launch, even one that fit() then refuses because the folder holds another config's run.
    info = read_json(job_dir / "run_info.json")
    if isinstance(info.get("config"), dict):
        config = info["config"]
    elif config is None:
        config = flatten(yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text()) or {})
    config = with_defaults(config)  # a run from before a key existed computed its default: it pairs with today's
    if (job_dir / "final.json").exists():
        return RunResult(job_dir, config, "done", json.loads((job_dir / "final.json").read_text()))
    if (job_dir / "failed.json").exists():
        info = json.loads((job_dir / "failed.json").read_text())
        after = f" ({info['epoch']} epochs finished)" if "epoch" in info else ""
        return RunResult(job_dir, config, "failed", note=f"{info.get('reason', '?')}{after}")
    epochs = 0
    if (job_dir / "metrics.jsonl").exists():
        epochs = max((r.get("epoch", 0) for r in read_jsonl(job_dir / "metrics.jsonl")), default=0)
    return RunResult(job_dir, config, "missing",
               note=f"no final.json or failed.json; {epochs}/{config.get('trainer.epochs', '?')} epochs logged "
                    f"(still running, or killed: relaunch the sweep to resume it)")


def find_runs(sweep_dir: Path) -> list[RunResult]:
    """Every run at or below sweep_dir: each job directory (one holding .hydra/config.yaml), or,
    for a job that ran search.seeds (an Optuna trial: trial.json), each of its seeds' folders."""
    runs = []
    for p in sorted(sweep_dir.rglob(".hydra/config.yaml")):
        job = p.parent.parent
        trial = read_json(job / "trial.json")
        if not isinstance(trial.get("runs"), list):
            runs.append(read_run(job))
            continue
        config = flatten(yaml.safe_load(p.read_text()) or {})
        runs += [read_run(job / name, {**config, "seed": seed}) for name, seed in zip(trial["runs"], trial["seeds"])]
    return runs


def present(runs: Sequence[RunResult], metrics: Sequence[str]) -> list[str]:
    """The metrics, in their order, that are a number in some finished run."""
    return [m for m in metrics if any(r.value(m) is not None for r in runs if r.status == "done")]


def numeric_keys(runs: Sequence[RunResult]) -> list[str]:
    """The final.json keys that hold a number in some finished run, in first-seen order."""
    return list(dict.fromkeys(k for r in runs if r.status == "done" for k in r.final if r.value(k) is not None))


def _split_top_level(s: str) -> list[str]:
    """Split on commas outside brackets and quotes, as Hydra's sweep syntax `a,[1,2],'x,y'` does."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in s:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return parts + [cur]


def expected_jobs(sweep_dir: Path) -> int | None:
    """Job count of the sweep from multirun.yaml's overrides, when they are plain comma lists
    (None for sweep functions such as range() or glob(), whose expansion needs Hydra)."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    try:
        task = (yaml.safe_load(path.read_text()) or {})["hydra"]["overrides"]["task"]
    except (KeyError, TypeError, yaml.YAMLError):
        return None
    total = 1
    for override in task or []:
        _, _, value = str(override).partition("=")
        if any(f in value for f in ("range(", "glob(", "choice(", "interval(", "tag(", "shuffle(", "sort(")):
            return None
        total *= len(_split_top_level(value))
    return total


def problems(runs: Sequence[RunResult], sweep_dir: Path) -> list[str]:
    lines = [f"{r.status}: {r.dir.relative_to(sweep_dir) if r.dir != sweep_dir else '.'}: {r.note}"
             for r in runs if r.status != "done"]
    expected = expected_jobs(sweep_dir)
    if expected is not None and expected > len(runs):
        lines.append(f"not started: {expected - len(runs)} of the {expected} jobs in multirun.yaml have no "
                     f"directory yet")
    return lines
