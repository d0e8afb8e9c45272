"""The real console script in subprocesses: a single run and a 2-point -m sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import TINY, run_cli


def test_multirun_sweep_makes_one_named_directory_per_job(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "loss.epsilon=0,0.1", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["loss.epsilon=0,trainer.batch_size=64,trainer.epochs=1",
                    "loss.epsilon=0.1,trainer.batch_size=64,trainer.epochs=1"]
    for job, eps in zip(jobs, (0.0, 0.1)):
        d = sweep / job
        assert (d / "final.json").exists() and (d / "metrics.jsonl").exists()
        assert list(d.glob("events.out.tfevents.*"))
        assert yaml.safe_load((d / ".hydra/config.yaml").read_text())["loss"]["epsilon"] == eps
        info = json.loads((d / "run_info.json").read_text())
        assert info["version"] and "git_commit" in info


def test_single_run_goes_to_outputs_runs(tmp_path: Path) -> None:
    r = run_cli(*TINY, cwd=tmp_path)  # relative outputs/ lands in the working directory
    assert r.returncode == 0, r.stderr
    finals = list(tmp_path.glob("outputs/runs/*/*/final.json"))
    assert len(finals) == 1


def test_user_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    r = run_cli("loss.epsilon=1.5", f"hydra.run.dir={tmp_path}")
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines == ["ls-bench: error: loss.epsilon=1.5 is invalid: must be in [0, 1)"]
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_sweep_that_started_no_job_prints_no_report(tmp_path: Path) -> None:
    # Hydra's typed schema refuses job 1 (loss.gamma is a float; loss.epsilon, which may be a list, is not)
    r = run_cli("-m", "loss.gamma=abc,2", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert r.returncode != 0 and "loss.gamma" in r.stderr
    assert "report" not in r.stdout + r.stderr and not list(tmp_path.glob("summary.*"))


@pytest.mark.parametrize("args,line", [
    (["-m", "experiment=quickstart", "--cfg", "job"],
     "ls-bench: error: -m runs a sweep and --cfg prints one run's config, not both; drop -m: "
     "ls-bench experiment=quickstart --cfg job"),
    (["--run", "-m", "loss.epsilon=0,0.1"],
     "ls-bench: error: -m runs a sweep and --run runs one run, not both; drop --run: ls-bench -m loss.epsilon=0,0.1"),
    (["--cfg", "job", "--info"],
     "ls-bench: error: --cfg prints one run's config and --info prints what Hydra found, not both; give one of them"),
    (["--resolve", "loss.epsilon=0.1"],
     "ls-bench: error: --resolve only changes what --cfg prints; add --cfg job: ls-bench --cfg job --resolve "
     "loss.epsilon=0.1"),
    (["loss.epsilon=0,0.1"],
     "ls-bench: error: loss.epsilon=0,0.1 is a sweep: add -m to run one job per value (ls-bench -m ...), or give "
     "loss.epsilon one value (a list is written loss.epsilon=[a,b])"),
    (["--cfg", "job", "seed=range(3)"],
     "ls-bench: error: seed=range(3) is a sweep and --cfg shows one run: give seed one value"),
    (["--cfg"], "ls-bench: error: argument --cfg/-c: expected one argument; the options: ls-bench --hydra-help"),
    (["--bogus"], "ls-bench: error: unrecognized arguments: --bogus; the options: ls-bench --hydra-help"),
])
def test_hydra_usage_errors_are_one_line_naming_what_to_do(args: list[str], line: str, tmp_path: Path) -> None:
    """Hydra's own usage errors (its usage text, a ValueError traceback, a numbered list) as one
    line, status 2, before anything is composed or written."""
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [line] and r.stdout == ""
    assert not list(tmp_path.iterdir())  # no outputs/
