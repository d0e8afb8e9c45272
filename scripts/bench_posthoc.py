"""Fit time of every post-hoc calibrator and selective score on a 5,000 x 100 validation split, one thread.

    python scripts/bench_posthoc.py                    # ~3-10 minutes on 2 shared CPU cores (ODIR's CV)
    python scripts/bench_posthoc.py --classes 10 --methods vs,ms_odir

Logits: float32 as predict() returns them, a signal towards the label plus a per-class bias (what vector
scaling corrects). One fit per method (the fits are deterministic, and the slow ones take minutes), then
applying it to a 10,000-row test split. Wall-clock and CPU seconds; the load average is printed because
on a shared machine the wall clock also counts the time other processes held the cores.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads its BLAS
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402

from ls_bench.config import POSTHOC, SCORES  # noqa: E402
from ls_bench.evaluate import posthoc  # noqa: E402
from ls_bench.evaluate.scores import FITTED, choose_p  # noqa: E402
from ls_bench.machine import cpu_features  # noqa: E402


def logits(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    z = 2 * torch.randn(n, k, generator=g) + torch.randn(k, generator=torch.Generator().manual_seed(99))
    z[torch.arange(n), y] += 4
    return z, y


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """fn()'s result, wall-clock and CPU seconds (one call: the slow fits take minutes)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--val", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--methods", default=",".join(POSTHOC))
    args = parser.parse_args()
    torch.set_num_threads(1)
    val, test = logits(args.val, args.classes, 0), logits(10_000, args.classes, 1)
    print(f"{args.val} x {args.classes} validation logits, 10,000 test rows, 1 thread; CPU: {cpu_features()}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for m in args.methods.split(","):
        params, wall, cpu = timed(lambda: posthoc.fit(m, *val))
        _, wall_a, _ = timed(lambda: posthoc.apply(m, params, test[0]))
        extra = f" (λ={params['lambda']:g}, μ={params['mu']:g})" if "lambda" in params else ""
        print(f"{m:>10}: fit {wall:7.2f} s wall, {cpu:7.2f} s CPU; apply {wall_a * 1e3:7.1f} ms{extra}")
    for s in FITTED:
        p, wall, cpu = timed(lambda: choose_p(s, *val))
        print(f"{s:>10}: p = {p} chosen in {wall:.2f} s wall, {cpu:.2f} s CPU (other scores: no fit; {SCORES})")


if __name__ == "__main__":
    main()
