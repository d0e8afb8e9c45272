"""Results written twice: TensorBoard for people, JSON for programs (reports read only the JSON).

Per run directory:
  metrics.jsonl   one JSON object per epoch: {"epoch": e, "train/loss": ..., "val/ece": ..., ...}
  final.json      the final metrics, written atomically once the run has finished
  failed.json     instead of final.json when the run failed: {"reason": ..., "epoch": ...}
  events.out.tfevents.*  TensorBoard event files (scalars, hparams, figures, the custom-scalars
                         layout), in the run directory
One metric name everywhere: `split/name` (`val/ece`, `test/nll`, `test_ts/ece`, `perf/epoch_s`).
TensorBoard alone renames the run's bookkeeping and the temperature (see tb_tag), so that it opens
on the splits' metrics.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from ls_bench.files import atomic_write_text

# TensorBoard's Time Series and Scalars tabs show a section per tag prefix (the part before the
# first "/"), sorted by character code ("/" and digits first), and open only the first two. Under
# the JSON names the run's bookkeeping (lr, perf/*) and the final-only temperature would be
# those two (TensorBoard opened on the learning rate and images per second), with test, val and
# train collapsed below them. So in TensorBoard only, the bookkeeping goes last under `zz_`
# and the temperature joins the metrics it makes (test_ts/temperature); the JSON files keep the
# names. Sections, in order: test, test_ts, train, val, val_ts, zz_lr, zz_perf.
TB_LAST = ("lr", "perf/")  # JSON names (exact, or a prefix ending in "/") moved to the end
TB_RENAMED = {"temperature": "test_ts/temperature"}


def tb_tag(name: str) -> str:
    """TensorBoard's tag of a metric: its JSON name, but for TB_LAST and TB_RENAMED."""
    if name in TB_RENAMED:
        return TB_RENAMED[name]
    last = any(name == p or (p.endswith("/") and name.startswith(p)) for p in TB_LAST)
    return f"zz_{name}" if last else name


# The Custom Scalars tab: one dashboard with the metrics a run is for, each chart one metric with
# every split (a tag regex per chart; TensorBoard draws one line per matching tag and run). Train
# has no NLL: its chart shows the training loss, the loss being minimised (soft targets under LS).
# test_ts/ece is one point (temperature scaling is fitted at the end) and has a chart of its own:
# beside the test ECE curve, TensorBoard's default "ignore outliers" (values outside the 5-95%
# quantiles set the axis) would leave that point off the chart.
LAYOUT = {"ls-bench: accuracy, NLL and ECE by split": {
    "accuracy (train, val, test)": ["Multiline", [r"^(train|val|test)/acc$"]],
    "NLL (val, test) and the training loss": ["Multiline", [r"^(val|test)/nll$", r"^train/loss$"]],
    "ECE (val, test), before temperature scaling": ["Multiline", [r"^(val|test)/ece$"]],
    "test ECE after temperature scaling (test_ts/ece, at the last epoch)": ["Multiline", [r"^test_ts/ece$"]],
}}


def _finite_or_none(v: Any) -> Any:
    return v if not isinstance(v, float) or math.isfinite(v) else None


class RunLogger:
    """Scalars to TensorBoard and metrics.jsonl with one call per epoch."""

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        self.run_dir = run_dir
        # The event files sit in the run directory itself, so `tensorboard --logdir outputs` names
        # each run after its job (sweeps/<date>/<time>/loss.epsilon=0.1,seed=2), not .../tb.
        # purge_step: on resume, TensorBoard hides events at or after this epoch from the dead run.
        with self._naming_tb():
            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
            if not purge_step or purge_step <= 1:  # once per run, not again on resume
                self.writer.add_custom_scalars(LAYOUT)
        self.jsonl = run_dir / "metrics.jsonl"

    def log_scalars(self, step: int, metrics: dict[str, Any]) -> None:
        """Numbers to TensorBoard at `step` (strings, such as fingerprints, go to the JSON only)."""
        with self._naming_tb():
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(tb_tag(k), v, step)
            self.writer.flush()

    def log_epoch(self, epoch: int, metrics: dict[str, float], images: dict[str, Any] | None = None) -> None:
        """One epoch's numbers (TensorBoard, metrics.jsonl) and pictures ([H, W] in [0, 1]; TensorBoard only)."""
        self.log_scalars(epoch, metrics)
        if images:
            with self._naming_tb():
                for tag, img in images.items():
                    self.writer.add_image(tb_tag(tag), img, epoch, dataformats="HW")
                self.writer.flush()
        line = json.dumps({"epoch": epoch, **{k: _finite_or_none(v) for k, v in metrics.items()}})
        with open(self.jsonl, "a") as f:  # one short append per epoch; a torn last line is skipped on read
            f.write(line + "\n")

    def log_hparams(self, hparam_dict: dict[str, Any], metric_tags: list[str]) -> None:
        """HParams into this run's own event file (SummaryWriter.add_hparams would make a sub-run
        and a duplicate `hparam/...` scalar per metric). The HParams tab reads each metric as the
        last value of the run's scalar with that tag, so `metric_tags` must be metrics the run logs
        (JSON names; TensorBoard's tags are tb_tag's)."""
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparam_dict.items()}
        with self._naming_tb():
            for summary in hparams(hp, dict.fromkeys(map(tb_tag, metric_tags), 0.0)):  # the values are not written
                self.writer.file_writer.add_summary(summary)
            self.writer.flush()

    @contextlib.contextmanager
    def _naming_tb(self) -> Iterator[None]:
        """TensorBoard's writer thread re-raises a failed write without a file name; add the event files'."""
        try:
            yield
        except OSError as e:
            if e.filename:
                raise
            raise OSError(e.errno, e.strerror or str(e), str(self.run_dir / "events.out.tfevents.*")) from e

    def log_figure(self, tag: str, figure: Any, step: int = 0) -> None:
        self.writer.add_figure(tag, figure, step, close=False)

    def close(self) -> None:
        self.writer.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Epoch records, skipping a torn last line left by a crash mid-write."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Drop records after `last_epoch` (used on resume so no epoch is logged twice)."""
    keep = [r for r in read_jsonl(path) if r.get("epoch", 0) <= last_epoch]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))
