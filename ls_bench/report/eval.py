"""`ls-bench-eval RUN_OR_SWEEP_DIR [metrics.posthoc=[...]] [metrics.scores=[...]]`: post-hoc calibrators
and selective scores for finished runs, from their saved predictions.npz, without retraining.

For every finished run below the folder (final.json and predictions.npz with validation logits): fit each
method and score on the validation logits (ls_bench.evaluate.posthoc, ls_bench.evaluate.scores; all of
them by default; one the run already has is skipped), score them on the test logits, and add the keys
that final.json does not have yet.
Keys already there are never rewritten, so an upgraded run keeps every number it had; the first upgrade
keeps the run's own final.json as final.pre-eval.json. final.json and posthoc.json are written
atomically; nothing else in the run folder changes (TensorBoard and metrics.jsonl keep what the run
logged). A run without the logits it needs is named and skipped. Then the sweep report is made again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from ls_bench.config import POSTHOC, SCORES
from ls_bench.files import read_json, write_json
from ls_bench.report.runs import RunResult, find_runs

KEYS = {"metrics.posthoc": POSTHOC, "metrics.scores": SCORES}  # what an override may choose, and from what


def parse_overrides(items: Sequence[str]) -> dict[str, list[str]]:
    """KEY=[names] for KEYS (YAML lists); every key not given means all of its names."""
    chosen = {key: list(names) for key, names in KEYS.items()}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise ValueError(f"{item!r}: expected one of {', '.join(f'{k}=[...]' for k in KEYS)}")
        try:
            names = yaml.safe_load(value) or []
        except yaml.YAMLError:
            raise ValueError(f"{item!r}: the value is not a YAML list such as [vs,dirichlet]") from None
        names = names if isinstance(names, list) else [names]
        bad = [n for n in names if n not in KEYS[key]]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"{key}={names!r} is invalid: a list of different names out of {', '.join(KEYS[key])}")
        chosen[key] = names
    return chosen


def missing_logits(run: RunResult) -> str | None:
    """Why the run cannot be upgraded (no file, no arrays, an empty validation split), or None."""
    import numpy as np

    path = run.dir / "predictions.npz"
    if not path.exists():
        return "no predictions.npz"
    with np.load(path, allow_pickle=False) as f:
        absent = [k for k in ("val_logits", "val_labels", "test_logits", "test_labels") if k not in f.files]
        if absent:
            return f"predictions.npz has no {', '.join(absent)}"
        if len(f["val_labels"]) == 0:
            return "no validation split (data.val_size=0): nothing to fit on"
    return None


def upgrade(run: RunResult, chosen: dict[str, list[str]]) -> list[str]:
    """Add the missing keys of the chosen methods and scores to run's final.json; the keys added."""
    from ls_bench.evaluate.posthoc import posthoc_metrics
    from ls_bench.evaluate.scores import score_metrics

    cfg, final = run.config, run.final
    # a method or score the run already has is not fitted again (ODIR's cross-validation takes minutes)
    methods = [m for m in chosen["metrics.posthoc"] if f"test_{m}/acc" not in final]
    scores = [s for s in chosen["metrics.scores"] if f"test/{s}/aurc" not in final]
    if not methods and not scores:
        return []
    val, test = run.predictions("val"), run.predictions("test")
    settings = final.get("metric_settings", {})
    new, params = posthoc_metrics(methods, val, test, int(settings.get("n_bins", 15)),
                                  settings.get("top_k"), int(cfg.get("eval.bootstrap", 1000)),
                                  int(cfg.get("data.split_seed", 0)))
    if "ts" in params:
        new["temperature"] = params["ts"]["temperature"]
    numbers, p = score_metrics(scores, val, test)
    new.update(numbers)
    added = [k for k in new if k not in final]
    if not added:
        return []
    backup = run.dir / "final.pre-eval.json"
    if not backup.exists():  # the run's own numbers, kept once: later upgrades only add keys
        shutil.copyfile(run.dir / "final.json", backup)
    write_json(run.dir / "final.json", {**final, **{k: new[k] for k in added}})
    old_params = read_json(run.dir / "posthoc.json")
    write_json(run.dir / "posthoc.json", {**params, **p, **old_params})
    return added


def evaluate(folder: Path, chosen: dict[str, list[str]], out: Any = sys.stdout) -> tuple[int, int]:
    """Upgrade every finished run below `folder`; (runs upgraded, runs skipped)."""
    done, skipped = 0, 0
    for run in find_runs(folder):
        name = run.dir.relative_to(folder) if run.dir != folder else Path(".")
        if run.status != "done":
            print(f"skipped {name}: not finished ({run.status})", file=out)
            skipped += 1
        elif (why := missing_logits(run)) is not None:
            print(f"skipped {name}: {why}", file=out)
            skipped += 1
        else:
            added = upgrade(run, chosen)
            print(f"{name}: {len(added)} keys added" if added else f"{name}: up to date", file=out)
            done += 1
    return done, skipped


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ls-bench-eval", description="post-hoc calibrators and selective "
                                     "scores for finished runs, from their predictions.npz, without retraining")
    parser.add_argument("folder", type=Path, help="a run folder, or a sweep folder (every finished run below it)")
    parser.add_argument("overrides", nargs="*", help=f"metrics.posthoc=[...] (default: all of {', '.join(POSTHOC)}) "
                                                     f"and metrics.scores=[...] (default: all of {', '.join(SCORES)})")
    parser.add_argument("--no-report", action="store_true", help="do not remake the sweep report afterwards")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.exit(2, f"ls-bench-eval: error: {args.folder} is not a directory\n")
    try:
        chosen = parse_overrides(args.overrides)
        done, skipped = evaluate(args.folder, chosen)
    except (ValueError, json.JSONDecodeError) as e:
        parser.exit(2, f"ls-bench-eval: error: {e}\n")
    except OSError as e:
        parser.exit(2, f"ls-bench-eval: error: cannot write: {e}\n")
    print(f"ls-bench-eval: {done} runs evaluated, {skipped} skipped")
    if done and not args.no_report and len(find_runs(args.folder)) > 1:
        from ls_bench.report import report

        report(args.folder)


if __name__ == "__main__":
    main()
