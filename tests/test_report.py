"""ls-bench-report on a real 4-run sweep (ε ∈ {0, 0.1} × seed ∈ {0, 1}), run once per session;
every number in summary.csv is recomputed here from the final.json files with numpy."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_cli
from ls_bench.evaluate.metrics import compute_metrics
from ls_bench.report import report
from ls_bench.report.plots import mean_curves, pooled_bins
from ls_bench.report.runs import RunResult, find_runs
from ls_bench.report.stats import EPSILON_KEY

# Two-sided 95% quantiles t(0.975, df) from any statistics textbook table.
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 20: 2.0860, 30: 2.0423}
METRICS = ("test/acc", "test/nll", "test/ece", "test/adaece", "test/brier", "test_ts/ece", "temperature")


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess, dict]:
    """The sweep, its output, and the summary files exactly as the sweep itself left them."""
    d = tmp_path_factory.mktemp("report") / "sweep"
    r = run_cli("-m", "experiment=quickstart", "trainer.epochs=2", "loss.epsilon=0,0.1", "seed=0,1",
                "trainer.progress=false", f"hydra.sweep.dir={d}")
    assert r.returncode == 0, r.stderr
    return d, r, {p.name: p.read_bytes() for p in d.glob("summary.*")}


@pytest.fixture(scope="module")
def sweep(sweep_run: tuple[Path, subprocess.CompletedProcess, dict]) -> Path:
    return sweep_run[0]


@pytest.fixture(scope="module")
def summary(sweep: Path) -> list[dict[str, str]]:
    report(sweep, plots=True, out=io.StringIO())
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def finals(sweep: Path) -> dict[tuple[float, int], dict]:
    """{(ε, seed): final.json} read straight from the job directories."""
    out = {}
    for job in sweep.iterdir():
        if (job / "final.json").exists():
            cfg = yaml.safe_load((job / ".hydra/config.yaml").read_text())
            out[(float(cfg["loss"]["epsilon"]), cfg["seed"])] = json.loads((job / "final.json").read_text())
    return out


def ci95(x: np.ndarray) -> float:
    return T975[len(x) - 1] * x.std(ddof=1) / math.sqrt(len(x))


def test_the_sweep_ends_with_its_report(sweep_run: tuple[Path, subprocess.CompletedProcess, dict]) -> None:
    d, r, left = sweep_run
    printed = io.StringIO()
    report(d, plots=False, out=printed)  # the same report, made afterwards
    assert sorted(left) == ["summary.csv", "summary.md"]
    assert left["summary.csv"] == (d / "summary.csv").read_bytes()
    tables = printed.getvalue().split("\nwrote ")[0]
    assert f"ls-bench: report of the sweep {d}" in r.stdout and tables in r.stdout
    assert (d / "metrics_vs_epsilon.png").exists() and (d / "reliability_test.png").exists()


def test_the_report_after_a_sweep_can_be_switched_off(tmp_path: Path) -> None:
    r = run_cli("-m", "experiment=quickstart", "trainer.epochs=1", "loss.epsilon=0,0.1", "trainer.progress=false",
                "hydra.callbacks.sweep_report.enabled=false", f"hydra.sweep.dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert len(list(tmp_path.glob("*/final.json"))) == 2
    assert "report of the sweep" not in r.stdout and not list(tmp_path.glob("summary.*"))


def test_summary_csv_matches_final_json(sweep: Path, summary: list[dict[str, str]]) -> None:
    runs = finals(sweep)
    assert sorted(runs) == [(0.0, 0), (0.0, 1), (0.1, 0), (0.1, 1)]
    assert [float(r[EPSILON_KEY]) for r in summary] == [0.0, 0.1]
    for row in summary:
        eps = float(row[EPSILON_KEY])
        assert row["n"] == "2" and row["seeds"] == "0 1" and row["failed"] == row["missing"] == "0"
        for m in METRICS:
            x = np.array([runs[(eps, s)][m] for s in (0, 1)])
            assert float(row[f"{m} mean"]) == pytest.approx(x.mean(), rel=1e-12)
            assert float(row[f"{m} std"]) == pytest.approx(x.std(ddof=1), rel=1e-9, abs=1e-15)
            assert float(row[f"{m} ci95"]) == pytest.approx(ci95(x), rel=1e-4, abs=1e-15)
            if eps == 0:
                assert row[f"{m} diff"] == ""  # no difference of the baseline to itself
                continue
            d = np.array([runs[(eps, s)][m] - runs[(0.0, s)][m] for s in (0, 1)])  # paired on the seed
            assert float(row[f"{m} diff"]) == pytest.approx(d.mean(), rel=1e-9, abs=1e-15)
            assert float(row[f"{m} diff ci95"]) == pytest.approx(ci95(d), rel=1e-4, abs=1e-15)
            assert row[f"{m} diff n"] == "2"


def test_markdown_and_plots_are_written(sweep: Path, summary: list[dict[str, str]]) -> None:
    import matplotlib.image

    md = (sweep / "summary.md").read_text()
    assert "| loss.epsilon | n | test/acc | test/nll | test/ece |" in md
    assert "Δtest_ts/ece" in md and "temperature" in md
    for name in ("metrics_vs_epsilon.png", "reliability_test.png", "training_curves.png"):
        img = matplotlib.image.imread(sweep / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400, name
        assert f"]({name})" in md


def test_pooled_reliability_bins_agree_with_compute_metrics(sweep: Path) -> None:
    """The diagram's ECE over the pooled seeds equals metrics.compute_metrics on the same logits."""
    jobs = [j for j in sweep.iterdir() if j.is_dir() and "loss.epsilon=0.1," in j.name]
    runs = [RunResult(j, {"metrics.n_bins": 15}, "done") for j in jobs]
    bins, ece, n = pooled_bins(runs)
    assert n == 2 and sum(bins["count"]) == 2 * 360
    data = [np.load(j / "predictions.npz") for j in jobs]
    logits = torch.from_numpy(np.concatenate([f["test_logits"] for f in data]))
    labels = torch.from_numpy(np.concatenate([f["test_labels"] for f in data]))
    assert ece == pytest.approx(compute_metrics(logits, labels, 15)["ece"], abs=1e-9)


def test_partial_sweep_names_missing_failed_and_unstarted_runs(sweep: Path, tmp_path: Path) -> None:
    part = tmp_path / "partial"
    shutil.copytree(sweep, part,
                    ignore=shutil.ignore_patterns("events.out.tfevents.*", "*.png", "summary.*", "last.pt"))
    jobs = {(j.name.split("loss.epsilon=")[1].split(",")[0], j.name.split("seed=")[1].split(",")[0]): j
            for j in part.iterdir() if j.is_dir()}
    (jobs[("0.1", "1")] / "final.json").unlink()  # killed after its last epoch was logged
    (jobs[("0.1", "0")] / "final.json").unlink()
    (jobs[("0.1", "0")] / "failed.json").write_text(json.dumps({"reason": "non-finite training loss", "epoch": 1}))
    shutil.rmtree(jobs[("0", "1")])  # never started

    r = subprocess.run([sys.executable, "-m", "ls_bench.report", str(part), "--no-plots"], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"failed: {jobs[('0.1', '0')].name}: non-finite training loss (1 epochs finished)" in lines
    assert any(line.startswith(f"missing: {jobs[('0.1', '1')].name}: ") and "2/2 epochs logged" in line
               for line in lines)
    assert "not started: 1 of the 4 jobs in multirun.yaml have no directory yet" in lines
    assert "1 of 3 runs finished" in lines[0]
    with open(part / "summary.csv") as f:
        rows = {row[EPSILON_KEY]: row for row in csv.DictReader(f)}
    assert (rows["0.0"]["n"], rows["0.1"]["n"], rows["0.1"]["failed"], rows["0.1"]["missing"]) == ("1", "0", "1", "1")
    assert rows["0.1"]["test/acc mean"] == "" and rows["0.1"]["test/acc diff n"] == "0"
    assert "## Unfinished runs" in (part / "summary.md").read_text()


def test_report_of_an_empty_directory_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ls_bench.report", str(tmp_path)], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"ls-bench-report: error: no run directories (with .hydra/config.yaml) "
                                             f"below {tmp_path}"]


def test_the_report_command_takes_baseline_more_than_once(sweep: Path, tmp_path: Path) -> None:
    """ls-bench-report --baseline KEY=VALUE --baseline KEY2=VALUE2: one baseline of both keys."""
    model = yaml.safe_load((next(sweep.glob("*/.hydra/config.yaml"))).read_text())["model"]["name"]
    r = subprocess.run([sys.executable, "-m", "ls_bench.report", str(sweep), "--no-plots", "--out", str(tmp_path),
                        "--baseline", "loss.epsilon=0.1", "--baseline", f"model={model}"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    acc = {}
    for job in sweep.glob("*/final.json"):
        cfg = yaml.safe_load((job.parent / ".hydra" / "config.yaml").read_text())
        acc[(cfg["loss"]["epsilon"], cfg["seed"])] = json.loads(job.read_text())["test/acc"]
    want = np.mean([acc[(0, s)] - acc[(0.1, s)] for s in (0, 1)])
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert float(next(row for row in rows if float(row[EPSILON_KEY]) == 0)["test/acc diff"]) == pytest.approx(want)
    assert f"Paired difference to loss.epsilon=0.1, model.name={model} on the same seed" in \
        (tmp_path / "summary.md").read_text()


def test_metrics_option_chooses_the_columns_and_rejects_unknown_keys(sweep: Path, tmp_path: Path) -> None:
    """--metrics picks the columns; --out writes the files elsewhere, leaving the sweep untouched."""
    copy = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in sweep.glob("summary*")}
    cmd = [sys.executable, "-m", "ls_bench.report", str(sweep), "--out", str(copy)]
    r = subprocess.run([*cmd, "--metrics", "train/loss,test/conf"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("summary*")} == before
    assert (copy / "metrics_vs_epsilon.png").exists() and (copy / "reliability_test.png").exists()
    with open(copy / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert not any(k.startswith(("test/acc", "test/ece")) for k in rows[0])
    runs = finals(sweep)
    for row in rows:
        eps = float(row[EPSILON_KEY])
        for m in ("train/loss", "test/conf"):
            assert float(row[f"{m} mean"]) == pytest.approx(np.mean([runs[(eps, s)][m] for s in (0, 1)]), rel=1e-12)
    assert "| loss.epsilon | n | train/loss | test/conf |" in (copy / "summary.md").read_text()
    bad = subprocess.run([*cmd, "--metrics", "test/acc,test/accuracy"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "'test/accuracy'" in bad.stderr and "test/nll" in bad.stderr


def test_only_reports_the_runs_with_the_given_config(sweep: Path, tmp_path: Path) -> None:
    """--only seed=1: the table holds seed 1's runs alone (each cell its final.json value, n = 1);
    a key no run has, or a value none has, is one line."""
    cmd = [sys.executable, "-m", "ls_bench.report", str(sweep), "--no-plots", "--out", str(tmp_path)]
    r = subprocess.run([*cmd, "--only", "seed=1", "--only", "loss=label_smoothing"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    runs = finals(sweep)
    assert sorted(float(row[EPSILON_KEY]) for row in rows) == [0.0, 0.1]
    for row in rows:
        assert (row["n"], row["seeds"]) == ("1", "1")
        assert float(row["test/acc mean"]) == runs[(float(row[EPSILON_KEY]), 1)]["test/acc"]
    for bad, says in ((["--only", "seed=7"], "--only seed=7: none of the 4 runs has seed=7"),
                      (["--only", "sead=1"], "--only: 'sead' is not a config key of these runs")):
        out = subprocess.run([*cmd, *bad], capture_output=True, text=True)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and says in out.stderr, out.stderr


def test_a_closed_terminal_does_not_cost_the_report_files(sweep: Path, tmp_path: Path) -> None:
    """`ls-bench-report SWEEP | head -3`: the pipe closes early; the files are written anyway."""
    proc = subprocess.Popen([sys.executable, "-m", "ls_bench.report", str(sweep), "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the report prints anything: every write to stdout fails (EPIPE)
    proc.wait(timeout=120)
    assert proc.stderr.read() == b""  # a closed pipe is not reported as a failure to write the report
    for name in ("summary.csv", "summary.md", "metrics_vs_epsilon.png", "reliability_test.png"):
        assert (tmp_path / name).exists(), name


def test_training_curves_average_metrics_jsonl_over_seeds(sweep: Path) -> None:
    runs = [r for r in find_runs(sweep) if r.config[EPSILON_KEY] == 0.1]
    curves = mean_curves(runs, ["train/loss", "train/acc", "no/such_key"])
    by_seed = [[json.loads(line) for line in (r.dir / "metrics.jsonl").read_text().splitlines()] for r in runs]
    assert len(runs) == 2 and sorted(curves) == ["train/acc", "train/loss"]
    for key, (epochs, values) in curves.items():
        assert epochs == [1, 2]
        assert values == pytest.approx([np.mean([rows[e - 1][key] for rows in by_seed]) for e in epochs], rel=1e-12)
