"""`ls-bench-report SWEEP_DIR`: aggregate a sweep over seeds into a table, summary.csv/.md and plots.

Reads only what programs are meant to read: each job's `.hydra/config.yaml`, `final.json` or
`failed.json`, `metrics.jsonl` (progress of unfinished runs) and `predictions.npz` (reliability
diagrams); never the TensorBoard event files.

This module holds the command and what it writes (the tables, summary.csv, summary.md); the rest is
one idea per module: report_runs (reading the job directories), report_stats (grouping by setting,
mean ± std and CI over seeds, seed-paired differences to the baseline), report_plots (the figures),
report_robustness and report_ece (the evaluation sections of summary.md).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ls_bench.report_plots import (CURVES, PLOT_METRICS, mean_curves, plot_curves, plot_metrics, plot_reliability,
                                   pooled_bins)
from ls_bench.report_runs import Run, expected_jobs, find_runs, numeric_keys, problems, read_run
from ls_bench.report_stats import (EPS, LEVEL, Baseline, Group, Stats, _label, build_groups, canonical, is_seed_key,
                                   parse_baseline, setting_key, summarize, varying_keys)

# The names this module has always offered, wherever they live now.
__all__ = [
    "METRICS", "choose_metrics", "main", "present_metrics", "report",  # the command
    "csv_rows", "diff_cell", "md_table", "mean_cell", "tables", "text_table", "write_csv",  # tables and files
    "Run", "expected_jobs", "find_runs", "numeric_keys", "problems", "read_run",  # report_runs
    "EPS", "LEVEL", "Baseline", "Group", "Stats", "build_groups", "canonical", "is_seed_key",  # report_stats
    "parse_baseline", "setting_key", "summarize", "varying_keys",
    "CURVES", "PLOT_METRICS", "mean_curves", "plot_curves", "plot_metrics", "plot_reliability",  # report_plots
    "pooled_bins",
]

# The metrics of the report, in table order; those absent from every final.json are left out.
METRICS = ("test/acc", "test/nll", "test/ece", "test/adaece", "test/brier", "test_ts/ece", "temperature")


# --- tables -------------------------------------------------------------------------------------


def _num(x: float | None, signed: bool = False) -> str:
    return "" if x is None else (f"{x:+.4f}" if signed else f"{x:.4f}")


def csv_rows(groups: Sequence[Group], keys: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One row per setting. `m ci95` is the half-width: the interval is mean ± ci95."""
    rows = []
    for g in groups:
        row: dict[str, Any] = {k: g.labels[k] for k in keys}
        seeds = sorted({r.config.get("seed") for r in g.done}, key=lambda s: (s is None, s))
        row.update({"n": len(g.done), "seeds": " ".join(map(str, seeds)),
                    "failed": sum(r.status == "failed" for r in g.runs),
                    "missing": sum(r.status == "missing" for r in g.runs)})
        for m in metrics:
            s = g.stats[m]
            row.update({f"{m} mean": s.mean, f"{m} std": s.std, f"{m} ci95": s.ci})
        for m in metrics:
            d = g.diffs.get(m)
            row.update({f"{m} diff": d.mean if d else None, f"{m} diff ci95": d.ci if d else None,
                        f"{m} diff n": d.n if d else None})
        rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    from ls_bench.files import atomic_write_text

    atomic_write_text(path, buf.getvalue())


def mean_cell(s: Stats, with_ci: bool) -> str:
    if s.mean is None:
        return "–"
    cell = _num(s.mean) + (f" ± {_num(s.std)}" if s.std is not None else "")
    if with_ci and s.ci is not None:
        cell += f" [{_num(s.mean - s.ci)}, {_num(s.mean + s.ci)}]"
    return cell


def diff_cell(d: Stats | None, base_label: str = "ε = 0") -> str:
    if d is None:
        return f"({base_label})"
    if d.mean is None:
        return "–"
    return _num(d.mean, True) + (f" ± {_num(d.ci)}" if d.ci is not None else "")


def tables(groups: Sequence[Group], keys: Sequence[str], metrics: Sequence[str], with_ci: bool,
           base_label: str = "ε = 0") -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(header, rows) of the mean table and of the paired-difference table."""
    head = [*keys, "n", *metrics]
    rows = [[*(_label(g.labels[k]) for k in keys), str(len(g.done)), *(mean_cell(g.stats[m], with_ci) for m in metrics)]
            for g in groups]
    dhead = [*keys, "pairs", *(f"Δ{m}" for m in metrics)]
    drows = [[*(_label(g.labels[k]) for k in keys), str(max((d.n for d in g.diffs.values()), default=0)),
              *(diff_cell(g.diffs.get(m), base_label) for m in metrics)] for g in groups
             if any(d.n for d in g.diffs.values())]
    return head, rows, dhead, drows


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(head, *rows)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# --- command ------------------------------------------------------------------------------------


def present_metrics(runs: Sequence[Run]) -> list[str]:
    return [m for m in METRICS if any(r.value(m) is not None for r in runs if r.status == "done")]


def choose_metrics(runs: Sequence[Run], wanted: Sequence[str] | None) -> list[str]:
    """The default table (METRICS present in the runs), or exactly `wanted`, each of which must be
    a number in some finished run's final.json."""
    if not wanted:
        return present_metrics(runs)
    numeric = sorted(numeric_keys(runs))
    for m in wanted:
        if m not in numeric:
            raise ValueError(f"--metrics: {m!r} is not a number in any finished run's final.json; "
                             f"available: {', '.join(numeric) or 'none (no run has finished)'}")
    return list(dict.fromkeys(wanted))


def report(sweep_dir: Path, plots: bool = True, out: Any = sys.stdout, metrics: Sequence[str] | None = None,
           out_dir: Path | None = None, baseline: str | Sequence[str] = f"{EPS}=0") -> list[Group]:
    """Read, aggregate, print, and write summary.csv, summary.md and the plots into out_dir
    (default: sweep_dir). `metrics`: the final.json keys of the tables and plots (default:
    METRICS, as present)."""
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no run directories (with .hydra/config.yaml) below {sweep_dir}")
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
    from ls_bench.report_robustness import markdown_sections, plot_shift

    from ls_bench.report_ece import ece_section

    sections, section_groups = markdown_sections(runs, base)  # selective, shift, OOD: when runs have them
    sections = ece_section(runs, base) + sections  # ECE's error bar: when the runs saved predictions
    md += sections
    if notes:
        md += ["", "## Unfinished runs", "", *(f"- {line}" for line in notes)]
    written = ["summary.csv", "summary.md"]
    if plots and done:
        plot_metrics(groups, metrics, out_dir / "metrics_vs_epsilon.png", all_of_them=chosen)
        written.append("metrics_vs_epsilon.png")
        if plot_reliability(groups, out_dir / "reliability_test.png"):
            written.append("reliability_test.png")
        if plot_curves(groups, out_dir / "training_curves.png"):
            written.append("training_curves.png")
        shift = next((g for title, g in section_groups.items() if title.startswith("Shift")), None)
        if shift and plot_shift(shift, out_dir / "shift_vs_severity.png"):
            written.append("shift_vs_severity.png")
        md += ["", *(f"![{n}]({n})" for n in written[2:])]
    from ls_bench.files import atomic_write_text

    atomic_write_text(out_dir / "summary.md", "\n".join(md) + "\n")

    head, rows, dhead, drows = tables(groups, keys, metrics, with_ci=False, base_label=base.label)
    print(f"{sweep_dir}: {done} of {len(runs)} runs finished, {len(groups)} settings; mean ± std over seeds",
          file=out)
    print(text_table(head, rows), file=out)
    if drows:
        print(f"\npaired difference to {base.label} on the same seed: mean ± {LEVEL:.0%} CI half-width", file=out)
        print(text_table(dhead, drows), file=out)
    if sections:
        print(f"\nevaluation sections in summary.md: {', '.join(line[3:] for line in sections if line.startswith('## '))}",
              file=out)
    for line in notes:
        print(line, file=out)
    print(f"wrote {', '.join(written)} in {out_dir}", file=out)
    return groups


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
    parser.add_argument("--out", type=Path, help="write summary.csv, summary.md and the plots here instead of "
                                                 "into SWEEP_DIR (created if needed)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"ls-bench-report: error: {args.sweep_dir} is not a directory\n")
    try:
        report(args.sweep_dir, plots=not args.no_plots, metrics=args.metrics, out_dir=args.out,
               baseline=args.baseline or f"{EPS}=0")
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"ls-bench-report: error: {e}\n")
    except BrokenPipeError:  # `| head` closed stdout; the files were written before printing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
    except OSError as e:  # e.g. --out in a read-only place
        parser.exit(2, f"ls-bench-report: error: cannot write the report: {e}\n")


if __name__ == "__main__":
    main()
