"""`ls-bench-report SWEEP_DIR`: aggregate a sweep over seeds into a table, summary.csv/.md and plots.

Reads only what programs are meant to read: each job's `.hydra/config.yaml`, `final.json` or
`failed.json`, `metrics.jsonl` (progress of unfinished runs) and `predictions.npz` (reliability
diagrams); never the TensorBoard event files.

Runs are grouped by their whole resolved config except the seeds (`seed`, `seeds.*`) and the keys
in NOT_COMPUTED, so a group is "one setting, several seeds". Per group and metric: mean, sample std
and the 95% confidence half-width t(0.975, n-1)·s/√n (Student t). Every group is also compared with
its baseline (`--baseline KEY=VALUE`, default `loss.epsilon=0`): the run that differs from it only in
KEY and has KEY = VALUE, on the same seed (so the same initial weights and batches), is subtracted
seed by seed, and the mean ± 95% CI of those differences is reported; pairing removes the
seed-to-seed variance that both runs share.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from ls_bench.config import NOT_COMPUTED, flatten

# The metrics of the report, in table order; those absent from every final.json are left out.
METRICS = ("test/acc", "test/nll", "test/ece", "test/adaece", "test/brier", "test_ts/ece", "temperature")
PLOT_METRICS = ("test/acc", "test/nll", "test/ece", "test_ts/ece")
CURVES = ("train/loss", "train/acc", "val/acc")  # per-epoch keys of metrics.jsonl for training_curves.png
EPS = "loss.epsilon"


@dataclass(frozen=True)
class Baseline:
    """What the paired differences are taken against: the run with `key` = `value`."""

    key: str = EPS
    value: Any = 0

    @property
    def label(self) -> str:
        return "ε = 0" if (self.key, canonical(self.value)) == (EPS, canonical(0)) else f"{self.key}={_label(self.value)}"

    def matches(self, config: dict[str, Any]) -> bool:
        return self.key in config and canonical(config[self.key]) == canonical(self.value)


def parse_baseline(text: str, runs: Sequence["Run"]) -> Baseline:
    """`KEY=VALUE` (VALUE in YAML: 0, 0.1, none, [1,2]); a config group may be named for its `.name`
    key (`mix=none` is `mix.name=none`). A KEY no run has is an error naming the keys that vary."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"--baseline {text!r}: expected KEY=VALUE, e.g. loss.epsilon=0 or loss=label_smoothing")
    keys = {k for r in runs for k in r.config}
    if key not in keys and f"{key}.name" in keys:
        key = f"{key}.name"
    if key not in keys:
        raise ValueError(f"--baseline: {key!r} is not a config key of these runs; keys that vary: "
                         f"{', '.join(varying_keys(runs)) or 'none'}")
    return Baseline(key, yaml.safe_load(value))
LEVEL = 0.95  # confidence level of every interval in the report


@dataclass
class Stats:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation (n - 1); None for n < 2
    ci: float | None  # half-width of the 95% CI of the mean; None for n < 2


def summarize(values: Sequence[float]) -> Stats:
    n = len(values)
    if n == 0:
        return Stats(0, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Stats(1, mean, None, None)
    std = statistics.stdev(values)
    from scipy.stats import t as student_t

    return Stats(n, mean, std, float(student_t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n))


# --- reading a sweep ----------------------------------------------------------------------------


@dataclass
class Run:
    dir: Path
    config: dict[str, Any]  # flattened: {"loss.epsilon": 0.1, ...}
    status: str  # done | failed | missing
    final: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # failed: the reason; missing: how far it got

    def value(self, metric: str) -> float | None:
        v = self.final.get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def is_seed_key(key: str) -> bool:
    return key == "seed" or key.startswith("seeds.")


def canonical(v: Any) -> str:
    """A hashable spelling of a config value in which 0 and 0.0 are equal."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v))
    return json.dumps(v, sort_keys=True)


def read_run(job_dir: Path) -> Run:
    from ls_bench.files import read_json
    from ls_bench.logs import read_jsonl

    # The config the run recorded when it started, if it did: Hydra rewrites .hydra/config.yaml at
    # every launch, even one that fit() then refuses because the folder holds another config's run.
    info = read_json(job_dir / "run_info.json")
    config = info["config"] if isinstance(info.get("config"), dict) else \
        flatten(yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text()) or {})
    if (job_dir / "final.json").exists():
        return Run(job_dir, config, "done", json.loads((job_dir / "final.json").read_text()))
    if (job_dir / "failed.json").exists():
        info = json.loads((job_dir / "failed.json").read_text())
        after = f" ({info['epoch']} epochs finished)" if "epoch" in info else ""
        return Run(job_dir, config, "failed", note=f"{info.get('reason', '?')}{after}")
    epochs = 0
    if (job_dir / "metrics.jsonl").exists():
        epochs = max((r.get("epoch", 0) for r in read_jsonl(job_dir / "metrics.jsonl")), default=0)
    return Run(job_dir, config, "missing",
               note=f"no final.json or failed.json; {epochs}/{config.get('trainer.epochs', '?')} epochs logged "
                    f"(still running, or killed: relaunch the sweep to resume it)")


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every job directory (one holding .hydra/config.yaml) at or below sweep_dir."""
    return [read_run(p.parent.parent) for p in sorted(sweep_dir.rglob(".hydra/config.yaml"))]


def _split_top_level(s: str) -> list[str]:
    """Split on commas outside brackets and quotes, as Hydra's sweep syntax `a,[1,2],'x,y'` does."""
    parts, depth, quote, cur = [], 0, "", ""
    for ch in s:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    return parts + [cur]


def expected_jobs(sweep_dir: Path) -> int | None:
    """Job count of the sweep from multirun.yaml's overrides, when they are plain comma lists
    (None for sweep functions such as range() or glob(), whose expansion needs Hydra)."""
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    try:
        task = (yaml.safe_load(path.read_text()) or {})["hydra"]["overrides"]["task"]
    except (KeyError, TypeError, yaml.YAMLError):
        return None
    total = 1
    for override in task or []:
        _, _, value = str(override).partition("=")
        if any(f in value for f in ("range(", "glob(", "choice(", "interval(", "tag(", "shuffle(", "sort(")):
            return None
        total *= len(_split_top_level(value))
    return total


# --- grouping and statistics --------------------------------------------------------------------


@dataclass
class Group:
    labels: dict[str, Any]  # the varying config keys and their values in this group
    runs: list[Run]  # all of its runs, whatever their status
    stats: dict[str, Stats] = field(default_factory=dict)
    diffs: dict[str, Stats] = field(default_factory=dict)  # paired difference to the baseline, same seed

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.status == "done"]


def setting_key(config: dict[str, Any], drop: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """What a run computes: its config without the ignored keys (and without `drop`)."""
    skip = NOT_COMPUTED | set(drop)
    return tuple(sorted((k, canonical(v)) for k, v in config.items() if k not in skip))


def varying_keys(runs: Sequence[Run], always: Sequence[str] = (EPS,)) -> list[str]:
    """Config keys (not seeds, not ignored) that take more than one value, then `always`."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.config if k not in keys]
    out = [k for k in keys if k not in NOT_COMPUTED and not is_seed_key(k)
           and len({canonical(r.config.get(k)) for r in runs}) > 1]
    return [k for k in out if k not in always] + list(dict.fromkeys(always))


def _sort_key(values: Iterable[Any]) -> tuple:
    return tuple((0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))
                 for v in values)


def build_groups(runs: Sequence[Run], metrics: Sequence[str],
                 baseline: Baseline = Baseline()) -> tuple[list[Group], list[str]]:
    keys = varying_keys(runs, always=(baseline.key, EPS))
    seeds = {k for r in runs for k in r.config if is_seed_key(k)}
    by_setting: dict[tuple, Group] = {}
    for r in runs:
        g = by_setting.setdefault(setting_key(r.config, seeds), Group({k: r.config.get(k) for k in keys}, []))
        g.runs.append(r)
    # Baselines for the paired differences: the run of the same setting and seeds with KEY = VALUE.
    base = {setting_key(r.config, [baseline.key]): r for r in runs if r.status == "done" and baseline.matches(r.config)}
    for g in by_setting.values():
        for m in metrics:
            g.stats[m] = summarize([v for r in g.done if (v := r.value(m)) is not None])
            if baseline.matches(g.labels):
                continue
            pairs = [(r.value(m), b.value(m)) for r in g.done if (b := base.get(setting_key(r.config, [baseline.key])))]
            g.diffs[m] = summarize([a - b for a, b in pairs if a is not None and b is not None])
    groups = sorted(by_setting.values(), key=lambda g: _sort_key(g.labels.values()))
    return groups, keys


def numeric_keys(runs: Sequence[Run]) -> list[str]:
    """The final.json keys that hold a number in some finished run, in first-seen order."""
    return list(dict.fromkeys(k for r in runs if r.status == "done" for k in r.final if r.value(k) is not None))


def present_metrics(runs: Sequence[Run]) -> list[str]:
    return [m for m in METRICS if any(r.value(m) is not None for r in runs if r.status == "done")]


# --- tables -------------------------------------------------------------------------------------


def _num(x: float | None, signed: bool = False) -> str:
    return "" if x is None else (f"{x:+.4f}" if signed else f"{x:.4f}")


def _label(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


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


def problems(runs: Sequence[Run], sweep_dir: Path) -> list[str]:
    lines = [f"{r.status}: {r.dir.relative_to(sweep_dir) if r.dir != sweep_dir else '.'}: {r.note}"
             for r in runs if r.status != "done"]
    expected = expected_jobs(sweep_dir)
    if expected is not None and expected > len(runs):
        lines.append(f"not started: {expected - len(runs)} of the {expected} jobs in multirun.yaml have no "
                     f"directory yet")
    return lines


# --- plots --------------------------------------------------------------------------------------


def _other_label(labels: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_label(v)}" for k, v in labels.items() if k != EPS)


def plot_metrics(groups: Sequence[Group], metrics: Sequence[str], path: Path, all_of_them: bool = False) -> None:
    """Each metric against ε, one line per setting of the other varying keys; bars: 95% CI.
    Plots PLOT_METRICS out of `metrics`, or every one of them with `all_of_them`."""
    from matplotlib.figure import Figure

    metrics = list(metrics) if all_of_them else [m for m in PLOT_METRICS if m in metrics] or list(metrics)
    fig = Figure(figsize=(4 * len(metrics), 3.4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    lines: dict[str, list[Group]] = {}
    for g in groups:
        lines.setdefault(_other_label(g.labels), []).append(g)
    for ax, m in zip(axes, metrics):
        for label, gs in lines.items():
            pts = [(float(g.labels[EPS]), g.stats[m]) for g in gs if g.stats[m].mean is not None]
            if pts:
                ax.errorbar([x for x, _ in pts], [s.mean for _, s in pts], yerr=[s.ci or 0.0 for _, s in pts],
                            marker="o", capsize=3, label=label or None)
        ax.set(xlabel="ε (loss.epsilon)", ylabel=m, title=m)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    if names:  # only when something besides ε varies
        fig.legend(handles, names, loc="outside lower center", fontsize="small")
    fig.suptitle(f"mean over seeds, error bars: {LEVEL:.0%} CI (Student t)")
    fig.savefig(path, dpi=110)


def pooled_bins(runs: Sequence[Run], split: str = "test") -> tuple[dict[str, list[float]], float, int] | None:
    """Reliability-diagram bins of the runs' saved predictions pooled together; also the pooled ECE."""
    import numpy as np
    import torch

    from ls_bench.metrics import calibration_bins, confidence_correct, ece

    logits, labels = [], []
    for r in runs:
        p = r.dir / "predictions.npz"
        if p.exists():
            with np.load(p, allow_pickle=False) as f:  # data only: a pickled object array is refused
                logits.append(torch.from_numpy(f[f"{split}_logits"]))
                labels.append(torch.from_numpy(f[f"{split}_labels"]).long())
    if not logits:
        return None
    conf, correct = confidence_correct(torch.cat(logits), torch.cat(labels))
    n_bins = int(runs[0].config.get("metrics.n_bins", 15))
    return calibration_bins(conf, correct, n_bins), ece(conf, correct, n_bins), len(logits)


def plot_reliability(groups: Sequence[Group], path: Path) -> bool:
    """Grid of reliability diagrams on the test split: a row per other setting, a column per ε."""
    from matplotlib.figure import Figure

    from ls_bench.calibration import draw_reliability

    rows: dict[str, dict[float, Group]] = {}
    for g in groups:
        if g.done:
            rows.setdefault(_other_label(g.labels), {})[float(g.labels[EPS])] = g
    eps = sorted({e for r in rows.values() for e in r})
    if not eps:
        return False
    fig = Figure(figsize=(max(6.0, 2.8 * len(eps)), 2.9 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), len(eps), squeeze=False, sharex=True, sharey=True)
    for i, (label, by_eps) in enumerate(rows.items()):
        for j, e in enumerate(eps):
            ax = axes[i][j]
            got = pooled_bins(by_eps[e].done) if e in by_eps else None
            if got is None:
                ax.set_axis_off()
                continue
            bins, ece, n = got
            draw_reliability(ax, bins, counts=False)
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
            ax.set_title(f"ε={e:g}: ECE {ece:.4f}\n{n} seed{'s' * (n > 1)} pooled", fontsize="small")
            if j == 0 and label:  # the row's setting, one key per line
                ax.set_ylabel(label.replace(", ", "\n") + "\naccuracy", fontsize="small")
    fig.suptitle("test reliability: seeds pooled, before temperature scaling", fontsize="medium")
    fig.savefig(path, dpi=110)
    return True


def mean_curves(runs: Sequence[Run], keys: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """Each key per epoch from the runs' metrics.jsonl (each file read once), averaged over the
    runs at the epochs all of them logged; keys that no run logged are left out."""
    from ls_bench.logs import read_jsonl

    logs = [read_jsonl(r.dir / "metrics.jsonl") if (r.dir / "metrics.jsonl").exists() else [] for r in runs]
    out = {}
    for key in keys:
        per_run = [c for rows in logs
                   if (c := {row["epoch"]: float(row[key]) for row in rows if isinstance(row.get(key), (int, float))})]
        if per_run:
            epochs = sorted(set.intersection(*(set(c) for c in per_run)))
            out[key] = (epochs, [statistics.fmean(c[e] for c in per_run) for e in epochs])
    return out


def plot_curves(groups: Sequence[Group], path: Path, keys: Sequence[str] = CURVES) -> bool:
    """Training curves from metrics.jsonl: a row per other setting, a column per key, a line per
    ε (mean over the finished seeds). Shows whether a schedule trained to a plateau."""
    from matplotlib.figure import Figure

    rows: dict[str, list[Group]] = {}
    for g in groups:
        if g.done:
            rows.setdefault(_other_label(g.labels), []).append(g)
    if not rows:
        return False
    fig = Figure(figsize=(4.2 * len(keys), 3.0 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(keys), squeeze=False)
    for i, (label, gs) in enumerate(rows.items()):
        curves = [(g, mean_curves(g.done, keys)) for g in gs]
        for j, key in enumerate(keys):
            ax = axes[i][j]
            for g, by_key in curves:
                if key in by_key:
                    ax.plot(*by_key[key], label=f"ε={float(g.labels[EPS]):g}")
            if key.endswith("loss"):
                ax.set_yscale("log")
            ax.set(xlabel="epoch", title=f"{key}\n{label}" if label else key)
            ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    if names:
        fig.legend(handles, names, loc="outside lower center", ncols=len(names), fontsize="small")
    fig.suptitle("training curves (metrics.jsonl), mean over seeds", fontsize="medium")
    fig.savefig(path, dpi=110)
    return True


# --- command ------------------------------------------------------------------------------------


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
           out_dir: Path | None = None, baseline: str = f"{EPS}=0") -> list[Group]:
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
    parser.add_argument("--baseline", default=f"{EPS}=0", metavar="KEY=VALUE",
                        help="pair every run with the run of the same seed that differs only in KEY and has KEY=VALUE "
                             "(default: loss.epsilon=0; e.g. mix=none, loss=label_smoothing, loss.kd_temperature=1)")
    parser.add_argument("--out", type=Path, help="write summary.csv, summary.md and the plots here instead of "
                                                 "into SWEEP_DIR (created if needed)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"ls-bench-report: error: {args.sweep_dir} is not a directory\n")
    try:
        report(args.sweep_dir, plots=not args.no_plots, metrics=args.metrics, out_dir=args.out, baseline=args.baseline)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"ls-bench-report: error: {e}\n")
    except BrokenPipeError:  # `| head` closed stdout; the files were written before printing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)
    except OSError as e:  # e.g. --out in a read-only place
        parser.exit(2, f"ls-bench-report: error: cannot write the report: {e}\n")


if __name__ == "__main__":
    main()
