"""ε by Optuna (hydra/sweeper=search, experiment=search_epsilon; ls_bench.search): real studies
through the console script, the objective's checks, and the report of a study's folder."""

from __future__ import annotations

import io
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from conftest import TINY, make_config, run_cli
from ls_bench.errors import ConfigError, RunFailed
from ls_bench.report import report
from ls_bench.report.runs import find_runs
from ls_bench.search import check_objective, objective

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra is not installed")

# A trial's runs as small as they go: one epoch on digits, no figures, no ECE bootstrap.
FAST = [*TINY, "metrics.figures=false", "eval.bootstrap=0"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The preset's study, shrunk: 4 trials of 2 seeds each (8 runs of one epoch)."""
    sweep = tmp_path_factory.mktemp("study")
    r = run_cli("-m", "experiment=search_epsilon", "hydra.sweeper.n_trials=4", "search.seeds=[0,1]", *FAST,
                f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    return sweep, r.stdout


def trial_dirs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/trial.json"))


def test_a_study_runs_4_trials_each_the_mean_of_its_seeds(study: tuple[Path, str]) -> None:
    sweep, _ = study
    trials = trial_dirs(sweep)
    assert len(trials) == 4
    for t in trials:
        record = json.loads((t / "trial.json").read_text())
        finals = [json.loads((t / f"seed={s}" / "final.json").read_text()) for s in (0, 1)]
        assert record["seeds"] == [0, 1] and record["optimize"] == "val/nll"
        assert record["values"] == [f["val/nll"] for f in finals]
        assert record["objective"] == pytest.approx(statistics.fmean(record["values"]), rel=1e-12)
        eps = yaml.safe_load((t / ".hydra/config.yaml").read_text())["loss"]["epsilon"]
        assert 0 <= eps <= 0.3
        for s in (0, 1):  # each seed is a run of its own, with that seed and the trial's ε
            config = json.loads((t / f"seed={s}" / "run_info.json").read_text())["config"]
            assert config["seed"] == s and config["loss.epsilon"] == eps


def test_the_best_trial_is_the_tried_one_with_the_least_objective(study: tuple[Path, str]) -> None:
    sweep, _ = study
    tried = {yaml.safe_load((t / ".hydra/config.yaml").read_text())["loss"]["epsilon"]:
             json.loads((t / "trial.json").read_text())["objective"] for t in trial_dirs(sweep)}
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = found["best_params"]["loss.epsilon"]
    assert best in tried and tried[best] == min(tried.values())
    assert found["best_value"] == pytest.approx(min(tried.values()), rel=1e-12)


def test_the_report_reads_a_study_folder(study: tuple[Path, str]) -> None:
    """The seeds' folders are the runs, each trial a setting of 2 seeds; the study section names
    the best trial (also in the report that ends the sweep)."""
    sweep, stdout = study
    runs = find_runs(sweep)
    assert len(runs) == 8 and all(r.status == "done" for r in runs)
    out = io.StringIO()
    groups = report(sweep, plots=False, out=out, out_dir=sweep / "again")
    assert len(groups) == 4 and all(g.stats["test/acc"].n == 2 for g in groups)
    assert "Optuna study: 4 trials, 0 without a value" in out.getvalue()
    assert "Optuna study: 4 trials" in stdout
    md = (sweep / "again" / "summary.md").read_text()
    assert "## Optuna study" in md and "val/nll (objective)" in md and "not started" not in md


def test_a_failed_trial_is_marked_failed_and_the_study_goes_on(tmp_path: Path) -> None:
    """optim.lr=1e30 makes the training loss non-finite: those trials fail (failed.json), Optuna
    marks them FAIL, and the study finishes with the trials that have a value (exit 0)."""
    r = run_cli("-m", "hydra/sweeper=search", "hydra.sweeper.sampler.seed=0", "hydra.sweeper.n_trials=3",
                "optim.lr=choice(0.05,1e30)", *FAST, f"hydra.sweep.dir={tmp_path}")  # draws 1e30, 0.05, 1e30
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and r.stdout.count("Failed experiment: ls-bench: run failed") == 2
    found = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert found["best_params"] == {"optim.lr": 0.05} and math.isfinite(found["best_value"])
    failed = [p.parent for p in tmp_path.glob("*/failed.json")]
    assert len(failed) == 1 and "non-finite training loss" in (failed[0] / "failed.json").read_text()
    assert "failed: " in r.stdout  # the report that ends the sweep lists it


def test_a_study_where_every_trial_fails_ends_in_one_line(tmp_path: Path) -> None:
    r = run_cli("-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=2", "optim.lr=1e30", *FAST,
                f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("ls-bench: error: all 2 trials of the study failed")


def test_an_objective_the_runs_do_not_produce_is_refused_before_training(tmp_path: Path) -> None:
    r = run_cli("-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=3", "search.optimize=val/accuracy", *FAST,
                f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("ls-bench: error: search.optimize='val/accuracy' is invalid: not a metric these runs "
                           "produce; e.g. val/acc, val/nll")
    assert not list(tmp_path.rglob("metrics.jsonl")) and "report" not in r.stdout


def test_objective_metrics_follow_the_config() -> None:
    check_objective(make_config("search.optimize=test_ts/ece"))
    check_objective(make_config("search.optimize=temperature"))
    with pytest.raises(ConfigError, match="search.optimize='val/nll' is invalid"):
        check_objective(make_config("data.val_size=0", "metrics.temperature_scaling=false"))
    with pytest.raises(ConfigError, match="search.optimize='test_ts/ece' is invalid"):
        check_objective(make_config("search.optimize=test_ts/ece", "metrics.temperature_scaling=false"))


def test_a_trial_without_a_finite_value_fails(tmp_path: Path) -> None:
    cfg = make_config("search.seeds=[0,1]")
    (tmp_path / "trial.json").write_text(json.dumps({"seeds": [0, 1], "runs": ["seed=0", "seed=1"]}))
    assert objective(cfg, [{"val/nll": 0.5}, {"val/nll": 0.25}], tmp_path) == 0.375
    for bad in (float("nan"), float("inf"), None):
        with pytest.raises(RunFailed, match="val/nll of seed 1 is .*not a finite number"):
            objective(cfg, [{"val/nll": 0.5}, {"val/nll": bad}], tmp_path)
    assert json.loads((tmp_path / "trial.json").read_text())["objective"] is None


@pytest.mark.parametrize("overrides,message", [
    (["search.seeds=[0,0]"], "search.seeds=[0, 0] is invalid: seeds >= 0 that do not repeat"),
    (["search.seeds=[0,1]", "seeds.init=3"], "would give every seed the same seeds.init"),
])
def test_search_seeds_are_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", "\\[").replace("]", "\\]")):
        make_config(*overrides)
