"""ls-bench-eval upgrades a sweep made by the default config (whose outputs are those of the code before
metrics.posthoc existed) in place: every old key keeps its value, the new keys are added, the old
final.json is kept, a run without its logits is named and skipped, and the report gains the sections."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TINY, run_cli
from ls_bench.config import POSTHOC, SCORES
from ls_bench.report.eval import parse_overrides


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ls_bench.report.eval", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_eval_upgrades_a_sweep_in_place(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    r = run_cli("-m", *TINY, "trainer.num_threads=1", "data.train_size=300", "loss.epsilon=0,0.1,0.2",
                f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    runs = sorted(p.parent for p in sweep.glob("*/final.json"))
    assert len(runs) == 3
    before = {d: json.loads((d / "final.json").read_text()) for d in runs}
    skipped = runs[-1]
    (skipped / "predictions.npz").unlink()

    r = run_eval(str(sweep), "metrics.posthoc=[ts,vs,ets,hist,isotonic]")
    assert r.returncode == 0, r.stderr
    assert f"skipped {skipped.name}: no predictions.npz" in r.stdout and "2 runs evaluated, 1 skipped" in r.stdout
    for d in runs[:-1]:
        after = json.loads((d / "final.json").read_text())
        assert {k: after[k] for k in before[d]} == before[d]  # not one old number changes
        new = set(after) - set(before[d])
        assert {"test_vs/ece", "test_isotonic/nll", "test_ets/acc", "test/maxlogit_pnorm/aurc",
                "test/margin/augrc"} <= new
        assert not any(k.startswith(("test_ms_odir/", "test_dirichlet/")) for k in new)  # not chosen
        assert not any(k.startswith("test_ts/") for k in new)  # the run had ts: not fitted again
        assert json.loads((d / "final.pre-eval.json").read_text()) == before[d]
        assert {"vs", "ets", "maxlogit_pnorm"} <= set(json.loads((d / "posthoc.json").read_text()))
    assert json.loads((skipped / "final.json").read_text()) == before[skipped]
    assert not (skipped / "final.pre-eval.json").exists() and not (skipped / "posthoc.json").exists()
    summary = (sweep / "summary.md").read_text()
    assert "## Post-hoc calibration" in summary and "test_vs/ece" in summary
    assert "## Selective scores" in summary and "test/maxlogit_pnorm_centred/aurc" in summary

    again = run_eval(str(sweep), "metrics.posthoc=[vs]", "--no-report")  # nothing new: files untouched
    assert again.returncode == 0 and again.stdout.count("up to date") == 2, again.stdout


def test_overrides_choose_and_refuse_in_one_line() -> None:
    assert parse_overrides([]) == {"metrics.posthoc": list(POSTHOC), "metrics.scores": list(SCORES)}
    assert parse_overrides(["metrics.scores=[margin]"])["metrics.scores"] == ["margin"]
    with pytest.raises(ValueError, match=r"metrics.posthoc=\['platt'\] is invalid"):
        parse_overrides(["metrics.posthoc=[platt]"])
    with pytest.raises(ValueError, match="not a YAML list"):
        parse_overrides(["metrics.scores=[margin"])
    r = run_eval(str(REPO / "tests"), "eval.bootstrap=0")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "expected one of" in r.stderr
