"""`ls-bench-report SWEEP_DIR`: aggregate a sweep over seeds into a table, summary.csv/.md and plots.

Reads only what programs are meant to read: each job's `.hydra/config.yaml`, `final.json` or
`failed.json`, `metrics.jsonl` (progress of unfinished runs) and `predictions.npz` (reliability
diagrams); never the TensorBoard event files.

This module holds the command and summary.md; the rest is one idea per module: runs (reading the
job directories), stats (grouping by setting, mean ± std and CI over seeds, seed-paired differences
to the baseline), tables (summary.csv and the tables), plots (the figures), robustness and ece (the
evaluation sections of summary.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ls_bench.files import atomic_write_text
from ls_bench.report.ece import ece_section
from ls_bench.report.ensembles import ensemble_section
from ls_bench.report.plots import plot_curves, plot_metrics, plot_reliability
from ls_bench.report.robustness import markdown_sections, plot_shift
from ls_bench.report.runs import RunResult, find_runs, numeric_keys, present, problems
from ls_bench.report.stats import EPSILON_KEY, LEVEL, Baseline, Group, build_groups, only, parse_baseline
from ls_bench.report.study import TITLE, study_section
from ls_bench.report.tables import csv_rows, md_table, tables, text_table, write_csv
from ls_bench.report.teacher import teacher_section

# The metrics of the report, in table order; those absent from every final.json are left out.
METRICS = ("test/acc", "test/nll", "test/ece", "test/adaece", "test/brier", "test_ts/ece", "temperature")


# --- command ------------------------------------------------------------------------------------


def choose_metrics(runs: Sequence[RunResult], wanted: Sequence[str] | None) -> list[str]:
    """The default table (METRICS present in the runs), or exactly `wanted`, each of which must be
    a number in some finished run's final.json."""
    if not wanted:
        return present(runs, METRICS)
    numeric = sorted(numeric_keys(runs))
    for m in wanted:
        if m not in numeric:
            raise ValueError(f"--metrics: {m!r} is not a number in any finished run's final.json; "
                             f"available: {', '.join(numeric) or 'none (no run has finished)'}")
    return list(dict.fromkeys(wanted))


def report(sweep_dir: Path, plots: bool = True, out: Any = sys.stdout, metrics: Sequence[str] | None = None,
           out_dir: Path | None = None, baseline: str | Sequence[str] = f"{EPSILON_KEY}=0",
           keep: Sequence[str] = ()) -> list[Group]:
    """Read, aggregate, print, and write summary.csv, summary.md and the plots into out_dir
    (default: sweep_dir). `metrics`: the final.json keys of the tables and plots (default:
    METRICS, as present); `keep`: KEY=VALUE items a run's config must have to be reported (--only)."""
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no run directories (with .hydra/config.yaml) below {sweep_dir}")
    if keep:
        runs = only(keep, runs)
    chosen = bool(metrics)
    metrics = choose_metrics(runs, metrics)
    base = parse_baseline(baseline, runs)
    groups, keys = build_groups(runs, metrics, base)
    done = sum(r.status == "done" for r in runs)
    notes = problems(runs, sweep_dir)

    # The files first, the terminal last: a closed stdout (`| head`) must not cost the report.
    out_dir = out_dir or sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "summary.csv", csv_rows(groups, keys, metrics))
    head, rows, dhead, drows = tables(groups, keys, metrics, with_ci=True, base_label=base.label)
    md = [f"# Sweep summary: {sweep_dir.name}", "",
          f"{done} of {len(runs)} runs finished. Cells: mean ± std over seeds [{LEVEL:.0%} CI, Student t].", "",
          md_table(head, rows)]
    if drows:
        md += ["", f"Paired difference to {base.label} on the same seed: mean ± {LEVEL:.0%} CI half-width.", "",
               md_table(dhead, drows)]
    sections, section_groups = markdown_sections(runs, base)  # selective, shift, OOD: when runs have them
    sections = ece_section(runs, base) + sections  # ECE's error bar: when the runs saved predictions
    sections += ensemble_section(runs, base)  # settings with >= 2 seeds and saved predictions
    distilled, teacher_warnings = teacher_section(runs, base)  # loss=distill: the teacher's information
    sections += distilled
    study = study_section(sweep_dir, runs)  # an Optuna sweep: what it found, every trial's objective
    sections = study + sections
    md += sections
    if notes:
        md += ["", "## Unfinished runs", "", *(f"- {line}" for line in notes)]
    written = ["summary.csv", "summary.md"]
    if plots and done:
        figures = write_plots(groups, metrics, chosen, section_groups, out_dir)
        written += figures
        md += ["", *(f"![{n}]({n})" for n in figures)]
    atomic_write_text(out_dir / "summary.md", "\n".join(md) + "\n")
    print_summary(out, sweep_dir, runs, groups, keys, metrics, base, sections, [*teacher_warnings, *notes])
    if study:
        print(f"\n{TITLE}: {study[3]}", file=out)  # its headline
    print(f"wrote {', '.join(written)} in {out_dir}", file=out)
    return groups


def write_plots(groups: Sequence[Group], metrics: Sequence[str], all_metrics: bool,
                section_groups: dict[str, list[Group]], out_dir: Path) -> list[str]:
    """The report's figures in out_dir; the names of those written (a figure without data is skipped)."""
    plot_metrics(groups, metrics, out_dir / "metrics_vs_epsilon.png", all_of_them=all_metrics)
    written = ["metrics_vs_epsilon.png"]
    if plot_reliability(groups, out_dir / "reliability_test.png"):
        written.append("reliability_test.png")
    if plot_curves(groups, out_dir / "training_curves.png"):
        written.append("training_curves.png")
    shift = next((g for title, g in section_groups.items() if title.startswith("Shift")), None)
    if shift and plot_shift(shift, out_dir / "shift_vs_severity.png"):
        written.append("shift_vs_severity.png")
    return written


def print_summary(out: Any, sweep_dir: Path, runs: Sequence[RunResult], groups: Sequence[Group],
                  keys: Sequence[str], metrics: Sequence[str], base: Baseline, sections: Sequence[str],
                  notes: Sequence[str]) -> None:
    """The terminal's tables: mean ± std (no CI, to fit a terminal), the paired differences, the
    names of summary.md's evaluation sections and the unfinished runs."""
    head, rows, dhead, drows = tables(groups, keys, metrics, with_ci=False, base_label=base.label)
    print(f"{sweep_dir}: {sum(r.status == 'done' for r in runs)} of {len(runs)} runs finished, {len(groups)} "
          f"settings; mean ± std over seeds", file=out)
    print(text_table(head, rows), file=out)
    if drows:
        print(f"\npaired difference to {base.label} on the same seed: mean ± {LEVEL:.0%} CI half-width", file=out)
        print(text_table(dhead, drows), file=out)
    if sections:
        titles = ", ".join(line[3:] for line in sections if line.startswith("## "))
        print(f"\nevaluation sections in summary.md: {titles}", file=out)
    for line in notes:
        print(line, file=out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ls-bench-report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory (hydra.sweep.dir) or any folder of runs")
    parser.add_argument("--no-plots", action="store_true", help="tables only (no PNG files)")
    parser.add_argument("--metrics", type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
                        help="comma-separated final.json keys for the tables and the metrics plot, e.g. "
                             "test/acc,test/ece,test/conf,train/loss (default: " + ",".join(METRICS) + ")")
    parser.add_argument("--baseline", action="append", metavar="KEY=VALUE",
                        help="pair every run with the run of the same seed that differs only in KEY and has KEY=VALUE "
                             "(default: loss.epsilon=0; e.g. mix=none, loss=label_smoothing, loss.kd_temperature=1); "
                             "repeat it for a baseline that differs in several keys: --baseline mix=none "
                             "--baseline loss.epsilon=0.1")
    parser.add_argument("--only", action="append", metavar="KEY=VALUE", default=[],
                        help="report only the runs whose config has KEY=VALUE (repeatable; e.g. seed=0 for the "
                             "seed a hyperparameter is chosen on, loss=focal)")
    parser.add_argument("--out", type=Path, help="write summary.csv, summary.md and the plots here instead of "
                                                 "into SWEEP_DIR (created if needed)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"ls-bench-report: error: {args.sweep_dir} is not a directory\n")
    try:
        report(args.sweep_dir, plots=not args.no_plots, metrics=args.metrics, out_dir=args.out,
               baseline=args.baseline or f"{EPSILON_KEY}=0", keep=args.only)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"ls-bench-report: error: {e}\n")
    except BrokenPipeError:  # `| head` closed stdout; the files were written before printing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
    except OSError as e:  # e.g. --out in a read-only place
        parser.exit(2, f"ls-bench-report: error: cannot write the report: {e}\n")
