"""The report's tables: summary.csv rows, mean and paired-difference cells, text and markdown tables."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from ls_bench.files import atomic_write_text
from ls_bench.report.stats import Group, Stats, value_label


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
    rows = [[*(value_label(g.labels[k]) for k in keys), str(len(g.done)),
             *(mean_cell(g.stats[m], with_ci) for m in metrics)]
            for g in groups]
    dhead = [*keys, "pairs", *(f"Δ{m}" for m in metrics)]
    drows = [[*(value_label(g.labels[k]) for k in keys), str(max((d.n for d in g.diffs.values()), default=0)),
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
