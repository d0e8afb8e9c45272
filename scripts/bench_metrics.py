"""Cost of the calibration work: metrics, temperature scaling, end-of-run figures.

    python scripts/bench_metrics.py            # ~1 minute on 2 CPU cores
    python scripts/bench_metrics.py --epochs 8 --repeats 50

1. A tiny run (1 epoch of digits, as in the tests) in this fresh process: the figures block of
   finish.finish, read from its log line, includes importing matplotlib.
2. The default digits / small_cnn config for --epochs epochs: compute_metrics on the val and test
   splits against the measured epoch time (perf/epoch_s); temperature fit; the figures block warm.
3. compute_metrics on 10,000 x 100 float32 logits (every metric incl. top-5), 1 thread and all threads.
Times: median and min wall-clock and median CPU seconds. The load average is printed because on a
shared machine the wall clock also counts time other processes held the cores; CPU time does not.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """(median, min) wall-clock seconds and median CPU seconds of fn() over `repeats` calls, after
    one warm-up call. CPU time is what the process itself used: on a shared, oversubscribed machine
    the wall clock also counts the time other processes held the cores."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def ms(t: tuple[float, float, float]) -> str:
    return f"{t[0] * 1e3:8.2f} ms wall (min {t[1] * 1e3:.2f}), {t[2] * 1e3:.2f} ms CPU"


def bench_large(repeats: int) -> None:
    from ls_bench.evaluate.metrics import compute_metrics

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 100, (10_000,), generator=g)
    z = 3 * torch.randn(10_000, 100, generator=g)
    z[torch.arange(10_000), y] += 3
    threads = torch.get_num_threads()
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        t = timed(lambda: compute_metrics(z, y, 15, 5), repeats)
        print(f"compute_metrics 10,000 x 100, {n} thread(s): {ms(t)}")
    torch.set_num_threads(threads)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def bench_digits(epochs: int, repeats: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import TINY, make_config
    from ls_bench.evaluate.calibration import fit_temperature
    from ls_bench.evaluate.metrics import compute_metrics
    from ls_bench.logs import read_jsonl
    from ls_bench.train import fit

    cap = _Capture()
    train_log = logging.getLogger("ls_bench.train")
    train_log.addHandler(cap)
    train_log.setLevel(logging.INFO)

    def figures_s() -> tuple[float, float]:
        """(wall, CPU) seconds of the figures block, from finish.finish's log line."""
        pattern = r"calibration figures: ([\d.]+) s \(([\d.]+) s CPU"
        found = [m for msg in cap.messages for m in re.findall(pattern, msg)]
        assert found, "finish.finish did not log the figures time"
        cap.messages.clear()
        return float(found[-1][0]), float(found[-1][1])

    with tempfile.TemporaryDirectory() as tmp:
        # A tiny run first, in this fresh process: its figures block includes importing matplotlib.
        c0 = time.process_time()
        tiny = fit(make_config(*TINY), Path(tmp) / "tiny")
        tiny_cpu = time.process_time() - c0
        wall, cpu = figures_s()
        print(f"tiny run ({' '.join(TINY)}): {tiny['time_s']:.2f} s wall, {tiny_cpu:.2f} s CPU")
        print(f"  figures block (4 PNGs + TensorBoard, first in the process, with the matplotlib import): "
              f"{wall:.2f} s wall = {100 * wall / tiny['time_s']:.0f}%, {cpu:.2f} s CPU = {100 * cpu / tiny_cpu:.0f}%")

        run_dir = Path(tmp) / "run"
        final = fit(make_config(f"trainer.epochs={epochs}", "trainer.progress=false"), run_dir)
        wall, cpu = figures_s()
        records = read_jsonl(run_dir / "metrics.jsonl")
        with np.load(run_dir / "predictions.npz") as p:
            data = {k: torch.from_numpy(p[k]) for k in p.files}
        epoch_s = statistics.median(r["perf/epoch_s"] for r in records[1:] or records)  # epoch 1 warms up
        eval_s = statistics.median(r["perf/eval_s"] for r in records[1:] or records)
        per_epoch = timed(lambda: [compute_metrics(data[f"{s}_logits"], data[f"{s}_labels"], 15, 5)
                                   for s in ("val", "test")], repeats)
        print(f"digits small_cnn, default config, {len(records)} epochs: median epoch {epoch_s * 1e3:.0f} ms wall "
              f"(inference + metrics on val/test {eval_s * 1e3:.0f} ms), run {final['time_s']:.2f} s")
        print(f"  metrics on val (300x10) + test (360x10), every epoch: {ms(per_epoch)} "
              f"= {100 * per_epoch[0] / epoch_s:.2f}% of an epoch")
        ts = timed(lambda: fit_temperature(data["val_logits"], data["val_labels"]), repeats)
        print(f"  temperature fit on val, once per run: {ms(ts)}")
        print(f"  figures block, matplotlib already imported: {wall:.2f} s wall, {cpu:.2f} s CPU "
              f"= {100 * wall / final['time_s']:.1f}% of this run")
    train_log.removeHandler(cap)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    bench_digits(args.epochs, args.repeats)  # first: the tiny run must import matplotlib itself
    bench_large(args.repeats)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
