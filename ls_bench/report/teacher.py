"""The sweep report's distillation section (loss=distill): what each teacher gave its students
(teacher/test_acc from the teacher's own final.json; teacher/train_acc and teacher/train_wrong_mass
tallied over the students' training batches at the KD temperature) beside the students' accuracy
and ECE, and the runs of the sweep without a teacher for comparison.

A warning line for every distillation setting whose teacher is less accurate on the test split (the
students' own: a teacher shares their data, classes and held-out splits) than the students of the
same recipe trained without a teacher: the finished runs whose config equals the setting's except for
the distillation keys (loss.name, loss.teacher*, loss.kd_*) and the seeds, all seeds pooled. A sweep
with no such run compares the teacher with its own distilled students instead, and says so.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from ls_bench.report.runs import RunResult, present
from ls_bench.report.stats import LEVEL, Baseline, build_groups, is_seed_key, setting_key, value_label
from ls_bench.report.tables import md_table, tables
from ls_bench.teacher import weaker_teacher

TITLE = "Distillation: what the teacher gives"
METRICS = ("teacher/test_acc", "teacher/train_acc", "teacher/train_wrong_mass", "test/acc", "test/ece", "test_ts/ece")


def distillation_key(key: str) -> bool:
    """A config key that only says how (or whether) a run is distilled."""
    return key == "loss.name" or key.startswith(("loss.teacher", "loss.kd_"))


def recipe(config: dict[str, Any]) -> tuple:
    """A run's recipe: what it computes, without its seeds and its distillation keys."""
    return setting_key(config, [k for k in config if distillation_key(k) or is_seed_key(k)])


def _mean(runs: Sequence[RunResult], metric: str) -> float | None:
    values = [v for r in runs if (v := r.value(metric)) is not None]
    return statistics.fmean(values) if values else None


def teacher_warnings(runs: Sequence[RunResult], baseline: Baseline = Baseline()) -> list[str]:
    """One line per distillation setting whose teacher is weaker than the students it is compared with."""
    done = [r for r in runs if r.status == "done"]
    plain: dict[tuple, list[RunResult]] = {}
    for r in done:
        if r.config.get("loss.name") != "distill":
            plain.setdefault(recipe(r.config), []).append(r)
    lines = []
    groups, _ = build_groups([r for r in done if r.config.get("loss.name") == "distill"], ["test/acc"], baseline)
    for g in groups:
        alone = plain.get(recipe(g.runs[0].config), [])
        who = (f"the {len(alone)} no-teacher run(s) of the same recipe" if alone else
               "its own distilled students (this sweep has no run of the same recipe without a teacher)")
        warning = weaker_teacher(_mean(g.runs, "teacher/test_acc"), _mean(alone or g.runs, "test/acc"), who)
        if warning:
            lines.append(f"warning: {setting_label(g.labels, g.runs[0].config)}: {warning}")
    return lines


def setting_label(labels: dict[str, Any], config: dict[str, Any]) -> str:
    """The group's varying keys, then the distillation keys that name its teacher and how it is
    distilled (teacher_select's keys, else loss.teacher; kd_alpha, kd_temperature)."""
    select = {k: v for k, v in config.items() if k.startswith("loss.teacher_select.")}
    named = {**labels, **(select or {"loss.teacher": config.get("loss.teacher")}),
             **{k: config.get(k) for k in ("loss.kd_alpha", "loss.kd_temperature")}}
    return ", ".join(f"{k}={value_label(v)}" for k, v in named.items())


def teacher_section(runs: Sequence[RunResult], baseline: Baseline = Baseline()) -> tuple[list[str], list[str]]:
    """(summary.md lines, warning lines) when some finished run was distilled, else ([], [])."""
    if not any(r.status == "done" and r.value("teacher/test_acc") is not None for r in runs):
        return [], []
    metrics = present(runs, METRICS)
    groups, keys = build_groups(runs, metrics, baseline)
    head, rows, _, _ = tables(groups, keys, metrics, with_ci=True, base_label=baseline.label)
    warnings = teacher_warnings(runs, baseline)
    lines = ["", f"## {TITLE}", "",
             f"teacher/* of the runs with loss=distill, beside every run's test/acc and ECE (runs without a "
             f"teacher have no teacher/*). Cells: mean ± std over seeds [{LEVEL:.0%} CI]. "
             f"teacher/train_wrong_mass: the mean probability the teacher puts on classes other than the "
             f"label over the student's training batches, at the KD temperature.", "", md_table(head, rows)]
    if warnings:
        lines += ["", *(f"- {w}" for w in warnings)]
    return lines, warnings
