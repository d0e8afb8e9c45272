"""ls-bench-eval --representation adds eval.representation's metrics to finished runs from their last.pt
(issue 23 §4: old runs, no retraining): the same numbers as a run that computed them at its end, every
old key unchanged, and a run whose checkpoint is gone named and skipped."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from conftest import TINY, make_config
from ls_bench.report.eval import evaluate, main, parse_overrides
from ls_bench.train import fit

FAST = [*TINY, "trainer.epochs=2", "data.train_size=256", "metrics.figures=false", "eval.bootstrap=0",
        "data.classes=[0,1,2,3,4,5]"]


def test_eval_adds_the_representation_metrics_a_run_would_have_computed(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    reference = fit(make_config(*FAST, "eval.representation=true"), tmp_path / "reference")
    sweep = tmp_path / "old"
    for seed in (0, 1):
        fit(make_config(*FAST, f"seed={seed}"), sweep / f"s{seed}")
        (sweep / f"s{seed}" / ".hydra").mkdir()  # a job folder, as Hydra leaves it (the config: run_info.json's)
        (sweep / f"s{seed}" / ".hydra" / "config.yaml").write_text("{}\n")
    (sweep / "s1" / "last.pt").unlink()
    before = json.loads((sweep / "s0" / "final.json").read_text())
    assert not any("repr/" in k for k in before)

    main([str(sweep), "--representation", "metrics.posthoc=[]", "metrics.scores=[]", "--no-report"])  # as typed
    assert "ls-bench-eval: 1 runs evaluated, 1 skipped" in capsys.readouterr().out
    after = json.loads((sweep / "s0" / "final.json").read_text())
    assert {k: after[k] for k in before} == before
    added = {k: v for k, v in after.items() if k not in before}
    assert added == pytest.approx({k: reference[k] for k in added}, rel=1e-5)  # seed 0 is the reference's run
    assert "held_out/repr/transfer_acc" in added and "test/repr/logit_spread" in added
    chosen = parse_overrides(["metrics.posthoc=[]", "metrics.scores=[]"])
    out = io.StringIO()
    assert evaluate(sweep, chosen, out, representation=True) == (1, 1)
    assert out.getvalue().startswith("s0: up to date\nskipped s1: ")  # nothing computed again; s1 named
    assert "last.pt" in out.getvalue()
