"""The sweep report's distillation and representation sections on hand-made runs: a teacher weaker
than the no-teacher students of the same recipe is a warning (in summary.md and on the terminal), one
stronger is not, a sweep without such students compares with the distilled students and says so; the
Representation section lists eval.representation's keys."""

from __future__ import annotations

import io
import json
from pathlib import Path

import yaml

from ls_bench.report import report
from ls_bench.report.runs import find_runs
from ls_bench.report.teacher import recipe, teacher_warnings


def make_run(root: Path, name: str, config: dict, final: dict) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    nested: dict = {}
    for key, value in config.items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(nested))
    (job / "final.json").write_text(json.dumps(final))


BASE = {"model.name": "small_cnn", "loss.epsilon": 0.0, "loss.teacher": None, "loss.kd_temperature": 1.0,
        "loss.kd_alpha": 0.5}


def distilled(teacher_acc: float, student_acc: float, temperature: float) -> tuple[dict, dict]:
    config = {**BASE, "loss.name": "distill", "loss.teacher": "/teachers", "loss.kd_temperature": temperature}
    final = {"test/acc": student_acc, "test/ece": 0.05, "teacher/test_acc": teacher_acc, "teacher/train_acc": 1.0,
             "teacher/train_wrong_mass": 0.01 * temperature}
    return config, final


def test_a_teacher_weaker_than_the_no_teacher_students_is_a_warning(tmp_path: Path) -> None:
    for seed, acc in ((0, 0.70), (1, 0.72)):
        make_run(tmp_path, f"plain_s{seed}", {**BASE, "loss.name": "label_smoothing", "seed": seed},
                 {"test/acc": acc, "test/ece": 0.09})
        config, final = distilled(0.65, 0.69 + seed / 100, temperature=2.0)  # weaker than 0.71
        make_run(tmp_path, f"weak_s{seed}", {**config, "seed": seed}, final)
        config, final = distilled(0.80, 0.73, temperature=4.0)  # a strong teacher
        make_run(tmp_path, f"strong_s{seed}", {**config, "loss.teacher": "/strong", "seed": seed}, final)
    runs = find_runs(tmp_path)
    assert len({recipe(r.config) for r in runs}) == 1  # the students share the no-teacher runs' recipe
    lines = teacher_warnings(runs)
    assert len(lines) == 1
    # the keys that vary among the students, then those naming the teacher and the distillation
    assert lines[0].startswith("warning: loss.kd_temperature=2, loss.teacher=/teachers, loss.epsilon=0, "
                               "loss.kd_alpha=0.5: ")
    assert lines[0].endswith("the teacher is less accurate on the student's test split (0.6500) than the 2 "
                             "no-teacher run(s) of the same recipe (0.7100): it has little to teach")
    out = io.StringIO()
    report(tmp_path, plots=False, out=out)
    md = (tmp_path / "summary.md").read_text()
    assert "## Distillation: what the teacher gives" in md and f"- {lines[0]}" in md
    assert lines[0] in out.getvalue()
    section = md.split("## Distillation")[1]
    assert "teacher/train_wrong_mass" in section and "0.0200" in section and "0.0400" in section


def test_without_no_teacher_runs_the_teacher_is_compared_with_its_students(tmp_path: Path) -> None:
    make_run(tmp_path, "other_model", {**BASE, "model.name": "resnet20", "loss.name": "label_smoothing", "seed": 0},
             {"test/acc": 0.99})  # another recipe: not a comparison
    config, final = distilled(0.60, 0.70, temperature=1.0)
    make_run(tmp_path, "student", {**config, "seed": 0}, final)
    (line,) = teacher_warnings(find_runs(tmp_path))
    assert "than its own distilled students (this sweep has no run of the same recipe without a teacher) " \
           "(0.7000)" in line
    config, final = distilled(0.75, 0.70, temperature=1.0)
    make_run(tmp_path / "fine", "student", {**config, "seed": 0}, final)
    assert teacher_warnings(find_runs(tmp_path / "fine")) == []


def test_the_representation_section_lists_its_keys(tmp_path: Path) -> None:
    for seed in (0, 1):
        make_run(tmp_path, f"s{seed}", {**BASE, "loss.name": "label_smoothing", "seed": seed},
                 {"test/acc": 0.7, "test/repr/class_separation": 0.4 + seed / 10, "test/repr/knn_acc": 0.8,
                  "held_out/repr/transfer_acc": 0.6})
    report(tmp_path, plots=False, out=io.StringIO())
    md = (tmp_path / "summary.md").read_text()
    section = md.split("## Representation (eval.representation: the penultimate features)")[1]
    assert "test/repr/class_separation" in section and "0.4500" in section
    assert "held_out/repr/transfer_acc" in section and "Distillation" not in md
