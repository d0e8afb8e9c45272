"""Benchmark: python -m ls_bench.evaluate.corruptions [N] [names...]"""

import sys
import time

import torch

from ls_bench.evaluate.corruptions import CORRUPTION_NAMES, SEVERITIES, corrupt

torch.set_num_threads(2)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
wall = cpu = 0.0
for name in sys.argv[2:] or CORRUPTION_NAMES:
    t0, c0 = time.perf_counter(), time.process_time()
    for severity in SEVERITIES:
        corrupt(images, name, severity, seed=0)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    wall, cpu = wall + dt, cpu + dc
    print(f"{name:18s} {dt:6.2f} s wall {dc:6.2f} s CPU for 5 severities x {n} images")
print(f"{'total':18s} {wall:6.2f} s wall {cpu:6.2f} s CPU, {torch.get_num_threads()} threads")
