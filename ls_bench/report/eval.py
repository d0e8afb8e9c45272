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

With --representation, also eval.representation's test/repr/* and held_out/repr/*
(ls_bench.evaluate.representation) for runs that lack them: the model is rebuilt from the run's last.pt
(the final weights) and its recorded config, the data reloaded as the run loaded it (data.root as
recorded, relative to where the command runs), the features computed on the recorded trainer.device
(auto: a GPU if there is one) in the precision the run recorded; logit_spread reads the saved test
logits. A run whose data or checkpoint cannot be loaded is named and skipped.
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
from ls_bench.errors import ConfigError
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


def representation_upgrade(run: RunResult) -> dict[str, float]:
    """test/repr/* (and held_out/repr/*) of a finished run from its last.pt and recorded config, through
    the runner's own loading (load_dataset, rebuild_model, predict); {} when it has them already."""
    import torch

    from ls_bench.data import load_dataset
    from ls_bench.data.loader import Normalize
    from ls_bench.evaluate.representation import representation_results
    from ls_bench.machine import PRECISIONS, autocast, resolve_device, resolve_precision
    from ls_bench.run import predict
    from ls_bench.seeds import run_seeds
    from ls_bench.teacher import rebuild_model, teacher_config

    if "test/repr/class_separation" in run.final:
        return {}
    info = read_json(run.dir / "run_info.json")
    cfg = teacher_config(run.dir, info)
    device = resolve_device(cfg.trainer.device)
    ds = load_dataset(cfg.data, run_seeds(cfg)["noise"])
    z, y = run.predictions("test")
    if not torch.equal(y, ds.test.y):
        raise ConfigError(f"{run.dir}: the reloaded test split's labels are not the saved ones (data.root "
                          f"{cfg.data.root} changed, or a run of another version?)")
    model = rebuild_model(run.dir, info, cfg, ds).to(device).eval()
    norm = Normalize(ds.mean, ds.std, device, False)
    # the precision the run evaluated in (run_info's; bf16 autocast on CPUs with AVX512-BF16 under auto)
    name = info.get("precision")
    dtype = PRECISIONS[name] if name in PRECISIONS else resolve_precision(cfg.trainer.precision, device)
    return representation_results(cfg, ds.test.to(device), z, lambda s: predict(
        model, s, cfg.trainer.eval_batch_size, norm, autocast(device, dtype), features=True))


def posthoc_upgrade(run: RunResult, chosen: dict[str, list[str]]) -> tuple[dict[str, float], dict[str, Any]]:
    """(numbers, parameters) of the chosen methods and scores the run lacks."""
    from ls_bench.evaluate.posthoc import posthoc_metrics
    from ls_bench.evaluate.scores import score_metrics

    cfg, final = run.config, run.final
    # a method or score the run already has is not fitted again (ODIR's cross-validation takes minutes)
    methods = [m for m in chosen["metrics.posthoc"] if f"test_{m}/acc" not in final]
    scores = [s for s in chosen["metrics.scores"] if f"test/{s}/aurc" not in final]
    if not methods and not scores:
        return {}, {}
    val, test = run.predictions("val"), run.predictions("test")
    settings = final.get("metric_settings", {})
    new, params = posthoc_metrics(methods, val, test, int(settings.get("n_bins", 15)),
                                  settings.get("top_k"), int(cfg.get("eval.bootstrap", 1000)),
                                  int(cfg.get("data.split_seed", 0)))
    if "ts" in params:
        new["temperature"] = params["ts"]["temperature"]
    numbers, p = score_metrics(scores, val, test)
    return {**new, **numbers}, {**params, **p}


def upgrade(run: RunResult, chosen: dict[str, list[str]], representation: bool = False) -> list[str]:
    """Add the missing keys of the chosen methods and scores (and of eval.representation) to run's
    final.json; the keys added."""
    final = run.final
    new, params = posthoc_upgrade(run, chosen)
    if representation:
        new.update(representation_upgrade(run))
    added = [k for k in new if k not in final]
    if not added:
        return []
    backup = run.dir / "final.pre-eval.json"
    if not backup.exists():  # the run's own numbers, kept once: later upgrades only add keys
        shutil.copyfile(run.dir / "final.json", backup)
    write_json(run.dir / "final.json", {**final, **{k: new[k] for k in added}})
    if params:
        write_json(run.dir / "posthoc.json", {**params, **read_json(run.dir / "posthoc.json")})
    return added


def evaluate(folder: Path, chosen: dict[str, list[str]], out: Any = sys.stdout,
             representation: bool = False) -> tuple[int, int]:
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
            try:
                added = upgrade(run, chosen, representation)
            except (ConfigError, FileNotFoundError) as e:  # the data or last.pt of --representation
                print(f"skipped {name}: {str(e).replace('loss.teacher=', '', 1)}", file=out)  # rebuild's words
                skipped += 1
                continue
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
    parser.add_argument("--representation", action="store_true",
                        help="also eval.representation's test/repr/* and held_out/repr/*: rebuilds each model from "
                             "its last.pt and reloads its data (metrics.posthoc=[] metrics.scores=[] for these alone)")
    args = parser.parse_intermixed_args(argv)  # flags before or after the overrides
    if not args.folder.is_dir():
        parser.exit(2, f"ls-bench-eval: error: {args.folder} is not a directory\n")
    try:
        chosen = parse_overrides(args.overrides)
        done, skipped = evaluate(args.folder, chosen, representation=args.representation)
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
