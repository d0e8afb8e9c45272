"""ls_bench.report.runs: reading a sweep folder (the finished/failed/missing bookkeeping is tested
through the command in test_report.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ls_bench.report.runs import expected_jobs


def test_expected_jobs_counts_comma_lists_outside_brackets_and_quotes(tmp_path: Path) -> None:
    task = ["loss.epsilon=0,0.1,0.2", "data.classes=[0,1],[2,3]", "model=resnet20", "+tag='a,b',c"]
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    assert expected_jobs(tmp_path) == 3 * 2 * 1 * 2
    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["seed=range(5)"]}}}))
    assert expected_jobs(tmp_path) is None
