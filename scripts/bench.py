#!/usr/bin/env python
"""ls-bench's training path against the loop a user writes by hand, side by side, in one run.

    python scripts/bench.py --quick     # ~2-5 min on 2 CPU cores: 2,048 train images, 3 epochs
    python scripts/bench.py             # ~6-12 min: 10,000 train images, 4 epochs, plus ls-bench in fp32

For small_cnn and resnet20 on CIFAR-shaped data (the shared CIFAR-10 JPEGs when present, else a
synthetic CIFAR-shaped set) it trains, from the same initial weights on the same images with the
same schedule (SGD, Nesterov 0.9, wd 5e-4, cosine lr, LS ε = 0.1, batch 128):
  reference  torchvision ImageFolder (or in-memory PIL images, --reference memory) with PIL
             RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, a DataLoader
             with workers, fp32, F.cross_entropy(label_smoothing=0.1);
  ls-bench   ls_bench.data.loader.train_batches / Normalize, train.train_one_epoch, run.predict with the
             real Criterion and resolve_precision("auto") (bf16 autocast where native), channels_last.
and prints images/s of each, their ratio, achieved GFLOP/s (model FLOPs counted with
torch.utils.flop_counter) as a fraction of this machine's measured GEMM peak (peak_gflops) in the precision
used, and both test accuracies with a check that they agree within noise.

Then it runs a real `ls-bench data=imagefolder ... model=resnet20` command in a subprocess (one
short epoch: --run-steps training steps, then the real evaluation, logging, checkpoint and final
metrics) and prints start-up time to the first training step by phase, the time spent in metric
computation and logging per epoch as a share of a full CIFAR-10 epoch, and the run's peak RSS.
Each path trains in a process of its own, as it would for real (ls-bench tunes its process's
allocator, a hand-written loop does not), and the processes run in lockstep: one epoch of the
reference, then one of ls-bench, never two at once, so a change in the machine's load hits both.
Throughput is of the epochs after the first (which warms up workers, the allocator, oneDNN kernels).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

SHARED = "/work/shared/data/cifar10-jpeg"
MODELS = ("small_cnn", "resnet20")


# --- machine ---------------------------------------------------------------------------------------


def prec_name(dtype) -> str:
    """bf16 / fp16 for an autocast dtype, fp32 for None (no autocast)."""
    import torch

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def peak_gflops(dtype, reps: int = 20) -> float:
    """The machine's practical GEMM peak in this dtype: the best of a 1024×1024 matmul (torch.mm)
    and a 1×1 convolution over 512 channels (a GEMM inside oneDNN, the library that runs the
    models' convolutions). Both are needed: on AMD CPUs torch.mm's fp32 path (MKL) reaches only
    about half of what oneDNN's does (220 against 480 GFLOP/s on the 2-core EPYC)."""
    import torch
    import torch.nn.functional as F

    n, c, pixels = 1024, 512, 32 * 16 * 16
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    x = torch.randn(32, c, 16, 16).to(dtype).to(memory_format=torch.channels_last)
    w = torch.randn(c, c, 1, 1).to(dtype).to(memory_format=torch.channels_last)
    best = 0.0
    for fn, flops in ((lambda: torch.mm(a, b), 2 * n ** 3), (lambda: F.conv2d(x, w), 2 * pixels * c * c)):
        fn()
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def train_flops_per_image(name: str, batch: int = 32) -> float:
    """Forward + backward FLOPs of one training image (convolutions and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ls_bench.models import build_model

    model = build_model(name, 3, 10, 32)
    with FlopCounterMode(display=False) as fc:
        model(torch.randn(batch, 3, 32, 32)).sum().backward()
    return fc.get_total_flops() / batch


# --- data ------------------------------------------------------------------------------------------


def synthetic(n: int, seed: int):
    """CIFAR-shaped uint8 images whose class sets a smooth colour pattern, plus noise: learnable."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    protos = F.interpolate(torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 255, size=32,
                           mode="bilinear", align_corners=False)
    y = torch.arange(n) % 10
    x = (0.6 * protos[y] + 0.4 * 255 * torch.rand(n, 3, 32, 32, generator=g)).round().clamp(0, 255).to(torch.uint8)
    return x, y


def load_data(args):
    """(train Split, test Split, reference train dataset, reference test dataset, description)."""
    import numpy as np
    import torch
    from torch.utils.data import Subset
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    from ls_bench.config import DataConfig
    from ls_bench.data import load_dataset
    from ls_bench.data.loader import Split, channel_stats
    from ls_bench.data.splits import stratified_split

    if Path(args.root, "train").is_dir():
        # ls-bench's decoded cache; the same files in torchvision's ImageFolder order (our listing
        # follows it exactly), so one index list picks the same images for both paths.
        ds = load_dataset(DataConfig(name="imagefolder", root=args.root, val_size=0, augment=True))
        keep = stratified_split(ds.train.y, args.train_size, 0)[1] if args.train_size < len(ds.train) else \
            np.arange(len(ds.train))
        keep_test = stratified_split(ds.test.y, args.test_size, 0)[1] if args.test_size < len(ds.test) else \
            np.arange(len(ds.test))
        train, test = ds.train.take(keep), ds.test.take(keep_test)
        what = f"CIFAR-10 JPEGs {args.root}"
    else:
        train, test = Split(*synthetic(args.train_size, 1)), Split(*synthetic(args.test_size, 2))
        what = "synthetic CIFAR-shaped data (no shared CIFAR-10 found)"
    mean, std = channel_stats(train.x)
    aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    plain = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    if args.reference == "imagefolder" and Path(args.root, "train").is_dir():
        ref_train = Subset(ImageFolder(f"{args.root}/train", transform=aug), keep.tolist())
        ref_test = Subset(ImageFolder(f"{args.root}/test", transform=plain), keep_test.tolist())
        assert torch.equal(torch.tensor([ref_train.dataset.targets[i] for i in keep]), train.y)
    else:
        ref_train, ref_test = InMemory(train, aug), InMemory(test, plain)
        what += ", reference on in-memory PIL images (torchvision CIFAR10-style)"
    return train, test, ref_train, ref_test, mean, std, what


class InMemory:
    """torchvision.datasets.CIFAR10's way: HWC uint8 arrays, a PIL image per __getitem__."""

    def __init__(self, split, transform):
        self.x, self.y, self.transform = split.x.permute(0, 2, 3, 1).numpy(), split.y.tolist(), transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), self.y[i]


# --- the two training paths ------------------------------------------------------------------------


def optimizer_and_schedule(model, steps: int, epochs: int, lr: float):
    import torch

    from ls_bench.config import SchedConfig
    from ls_bench.schedule import lr_factor

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, epochs, SchedConfig("cosine")))
    return opt, sched


class Reference:
    """The hand-written loop: DataLoader with workers and PIL transforms, fp32, F.cross_entropy."""

    precision = "fp32"

    def __init__(self, name: str, ref_train, ref_test, args):
        import torch
        from torch.utils.data import DataLoader

        from ls_bench.models import build_model

        torch.manual_seed(0)
        self.model = build_model(name, 3, 10, 32)
        self.loader = DataLoader(ref_train, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                 drop_last=True, persistent_workers=args.workers > 0,
                                 generator=torch.Generator().manual_seed(0))
        self.test = DataLoader(ref_test, batch_size=1000, num_workers=args.workers)
        self.opt, self.sched = optimizer_and_schedule(self.model, len(self.loader), args.epochs, args.lr)
        self.images = len(self.loader) * args.batch_size

    def epoch(self) -> float:
        import torch.nn.functional as F

        self.model.train()
        running = 0.0
        for x, y in self.loader:
            loss = F.cross_entropy(self.model(x), y, label_smoothing=0.1)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.sched.step()
            running += loss.item()
        return running / len(self.loader)

    def accuracy(self) -> float:
        import torch

        self.model.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in self.test:
                correct += (self.model(x).argmax(1) == y).sum().item()
                n += len(y)
        return correct / n


class LsBench:
    """ls-bench's own functions, as fit() calls them: train_batches, train_one_epoch, predict."""

    def __init__(self, name: str, train, test, mean, std, args, precision: str = "auto"):
        import torch

        from ls_bench.config import Config, LossConfig
        from ls_bench.data import Dataset
        from ls_bench.data.loader import Normalize
        from ls_bench.losses import make_criterion
        from ls_bench.machine import resolve_precision
        from ls_bench.models import build_model
        from ls_bench.run import Run

        device = torch.device("cpu")
        dtype = resolve_precision(precision, device)
        self.precision = prec_name(dtype)
        criterion = make_criterion(LossConfig(epsilon=0.1), 10, torch.bincount(train.y, minlength=10))
        torch.manual_seed(0)
        model = build_model(name, 3, 10, 32).to(memory_format=torch.channels_last)
        steps = len(train) // args.batch_size
        opt, sched = optimizer_and_schedule(model, steps, args.epochs, args.lr)
        cfg = Config()
        cfg.trainer.progress = False
        ds = Dataset(train, test, test, [str(i) for i in range(10)], mean, std, augment=True)
        self.run = Run(cfg, ds, criterion, model, model, opt, sched, torch.amp.GradScaler("cpu", enabled=False),
                       Normalize(mean, std, device, channels_last=True), device, dtype, {}, steps, None)
        self.train, self.test, self.batch_size, self.n = train, test, args.batch_size, 0
        self.images = steps * args.batch_size

    def epoch(self) -> float:
        import torch

        from ls_bench.data.loader import train_batches
        from ls_bench.seeds import derive_seed
        from ls_bench.train import train_one_epoch

        batches = train_batches(self.train, self.batch_size, derive_seed(0, f"epoch{self.n}"), True, self.run.norm)
        m = train_one_epoch(self.run, batches, torch.Generator().manual_seed(self.n), f"epoch {self.n + 1}")
        self.n += 1
        return m["train/loss"]

    def accuracy(self) -> float:
        logits = self.run.predict(self.test)  # trainer.eval_batch_size: 1000
        return float((logits.argmax(1) == self.test.y).float().mean())


def path_worker(kind: str, name: str, args, conn) -> None:
    """One training path in a process of its own, driven over `conn` by train_side_by_side.

    A process per path, because a process is what each path really runs in: ls-bench tunes glibc's
    allocator for its whole process at start-up (train.tune_allocator), which the hand-written loop
    does not. In one shared process the reference would get ls-bench's allocator too, and the
    comparison would no longer be with the loop a user writes.
    """
    from ls_bench.machine import set_threads, tune_allocator

    set_threads(0)
    if kind != "reference":
        tune_allocator()  # as `ls-bench` does before it loads the data
    train, test, ref_train, ref_test, mean, std, what = load_data(args)
    if kind == "reference":
        path = Reference(name, ref_train, ref_test, args)
    else:
        path = LsBench(name, train, test, mean, std, args, precision="fp32" if kind.endswith("fp32") else "auto")
    conn.send({"images": path.images, "precision": path.precision, "train": len(train), "test": len(test),
               "data": what})
    while (cmd := conn.recv()) != "stop":
        if cmd == "epoch":
            t = time.perf_counter()
            loss = path.epoch()
            conn.send((time.perf_counter() - t, loss))
        else:
            conn.send(path.accuracy())


def train_side_by_side(kinds: list[str], name: str, args) -> dict[str, dict]:
    """Each path in its own process (path_worker), run in lockstep: one epoch of the reference,
    one of ls-bench, ..., never two at once, so a change in the machine's load hits all paths."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a fresh interpreter: nothing inherited from this process's heap
    workers = {}
    for kind in kinds:
        here, there = ctx.Pipe()
        proc = ctx.Process(target=path_worker, args=(kind, name, args, there), daemon=False)
        proc.start()
        workers[kind] = (proc, here)
    try:
        out = {k: {"epoch_s": [], **conn.recv()} for k, (_, conn) in workers.items()}
        for _ in range(args.epochs):
            for k, (_, conn) in workers.items():
                conn.send("epoch")
                seconds, out[k]["loss"] = conn.recv()
                out[k]["epoch_s"].append(seconds)
        for k, (_, conn) in workers.items():
            conn.send("accuracy")
            out[k]["acc"] = conn.recv()
            conn.send("stop")
    finally:
        for proc, _ in workers.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    return out


def img_per_s(r: dict) -> float:
    """Throughput of the epochs after the first (the first warms up workers and kernels)."""
    times = r["epoch_s"][1:] or r["epoch_s"]
    return r["images"] * len(times) / sum(times)


def comparable(a: float, b: float, n: int) -> tuple[bool, float]:
    """|a - b| within 3 standard errors of a difference of two accuracies on n test images, and
    at least 3 points: short schedules also vary from seed to seed, not only by test sampling."""
    se = math.sqrt((a * (1 - a) + b * (1 - b)) / n)
    tol = max(3 * se, 0.03)
    return abs(a - b) <= tol, tol


# --- a real `ls-bench` run in a subprocess: start-up, metrics/logging time, peak memory ---------------


def _timed_imports(t0: float) -> tuple[dict[str, float], Any, Any, Any]:
    """Import the CLI, torch and the package one layer at a time; marks[layer] = seconds since t0."""
    marks = {"python": time.time() - t0}
    import ls_bench.cli as cli  # hydra, omegaconf

    marks["hydra_import"] = time.time() - t0
    import torch  # noqa: F401  (the CLI imports torch and ls_bench.train after parsing arguments)

    marks["torch"] = time.time() - t0
    import torch._dynamo  # noqa: F401  (torch.optim imports it when the optimizer is built, ~1 s)

    marks["dynamo"] = time.time() - t0
    import ls_bench.run as run_module
    import ls_bench.train as train  # tensorboard, tqdm, the package

    marks["torch_import"] = time.time() - t0
    return marks, cli, run_module, train


def _timed(fn: Callable, key: str, spent: dict[str, float]) -> Callable:
    """fn, adding its wall time to spent[key]."""
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            spent[key] += time.perf_counter() - t
    return wrapper


def _instrument(train: Any, run_module: Any, t0: float, k: int, marks: dict, spent: dict, info: dict) -> None:
    """Wrap the loop's phases in timers and stop the training epoch after k steps."""
    import itertools

    orig_fit, orig_setup, orig_epoch, orig_batches = train.fit, train.setup, train.train_one_epoch, train.train_batches
    batch_size = [0]

    def fit(cfg, run_dir):
        marks["config"] = time.time() - t0
        return orig_fit(cfg, run_dir)

    def setup(cfg):
        marks["setup_start"] = time.time() - t0
        out = orig_setup(cfg)
        marks["data_loaded"] = time.time() - t0
        info["train_images"] = len(out.ds.train)
        return out

    def first_marked(batches):
        it = iter(batches)
        first = next(it)
        marks["first_step"] = time.time() - t0
        yield first
        yield from it

    def train_one_epoch(run, batches, *a, **kw):
        t = time.perf_counter()
        run.steps_per_epoch = k  # for the progress bar
        out = orig_epoch(run, itertools.islice(first_marked(batches), k), *a, **kw)
        info["img_per_s"] = k * batch_size[0] / (time.perf_counter() - t)
        return out

    def train_batches(split, size, *a, **kw):
        batch_size[0] = size
        return orig_batches(split, size, *a, **kw)

    train.fit, train.setup, train.train_one_epoch, train.train_batches = fit, setup, train_one_epoch, train_batches
    train.compute_metrics = _timed(train.compute_metrics, "metrics", spent)
    run_module.predict = _timed(run_module.predict, "predict", spent)  # Run.predict calls it: every split's inference
    train.save_checkpoint = _timed(train.save_checkpoint, "checkpoint", spent)
    train.RunLogger.log_epoch = _timed(train.RunLogger.log_epoch, "logging", spent)


def child(argv: list[str]) -> None:
    """Run `ls-bench argv` with timers around its phases; print one JSON line on stdout at exit.

    The training epoch stops after LS_BENCH_BENCH_STEPS steps (the rest of fit() runs as usual:
    evaluation, metrics, TensorBoard + metrics.jsonl, checkpoint, temperature scaling, final.json).
    """
    t0 = float(os.environ["LS_BENCH_BENCH_T0"])
    marks, cli, run_module, train = _timed_imports(t0)
    spent = {"metrics": 0.0, "logging": 0.0, "checkpoint": 0.0, "predict": 0.0}
    info: dict = {}
    _instrument(train, run_module, t0, int(os.environ["LS_BENCH_BENCH_STEPS"]), marks, spent, info)
    sys.argv = ["ls-bench", *argv]
    try:
        cli.main()
    finally:
        print(json.dumps({"marks": marks, "spent": spent, "info": info, "peak_rss_mib": peak_rss_mib()}), flush=True)


def real_run(args, tag: str) -> dict:
    import shutil

    run_dir = Path(args.out) / f"run-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a finished run directory would be skipped, not rerun
    cmd = [sys.executable, __file__, "--child", "--", "data=imagefolder", f"data.root={args.root}", "model=resnet20",
           "trainer.epochs=1", "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    env = dict(os.environ, LS_BENCH_BENCH_STEPS=str(args.run_steps), LS_BENCH_BENCH_T0=repr(time.time()))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"bench: the ls-bench run failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def report_run(r: dict, tag: str) -> None:
    m, s, i = r["marks"], r["spent"], r["info"]
    print(f"  run {tag}: first training step after {m['first_step']:.2f} s  "
          f"[python {m['python']:.2f} | hydra import {m['hydra_import'] - m['python']:.2f} | "
          f"torch {m['torch'] - m['hydra_import']:.2f} | torch._dynamo {m['dynamo'] - m['torch']:.2f} | "
          f"ls_bench.train+tensorboard {m['torch_import'] - m['dynamo']:.2f} | "
          f"Hydra compose+validate {m['config'] - m['torch_import']:.2f} | "
          f"data load {m['data_loaded'] - m['setup_start']:.2f} | "
          f"model, optimizer, logger {m['first_step'] - m['data_loaded']:.2f}]")
    own = m["first_step"] - m["python"] - (m["dynamo"] - m["hydra_import"])
    print(f"  run {tag}: without the interpreter, torch and torch._dynamo imports (Hydra, config, data, "
          f"model, logger): {own:.2f} s")
    epoch_train = i["train_images"] / i["img_per_s"]
    epoch = epoch_train + s["predict"] / 2  # predict ran twice: the epoch's eval and finish()'s
    overhead = s["metrics"] / 2 + s["logging"]
    print(f"  run {tag}: metrics {s['metrics'] / 2:.3f} s + logging {s['logging']:.3f} s per epoch = "
          f"{100 * overhead / epoch:.2f}% of a full epoch (est. {epoch:.0f} s: {i['train_images']} images at "
          f"{i['img_per_s']:.0f} img/s + eval {s['predict'] / 2:.1f} s); checkpoint {s['checkpoint']:.3f} s; "
          f"peak RSS {r['peak_rss_mib']:.0f} MiB")


# --- main ------------------------------------------------------------------------------------------


def parse_args() -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2,048 train / 2,000 test images, 3 epochs, one real run")
    p.add_argument("--root", default=SHARED, help="CIFAR-style ImageFolder root (train/, test/)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--train-size", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--reference", choices=("imagefolder", "memory"), default="imagefolder")
    p.add_argument("--fp32", action="store_true", help="also run ls-bench with trainer.precision=fp32")
    p.add_argument("--run-steps", type=int, default=20, help="training steps of the real ls-bench run")
    p.add_argument("--runs", type=int, help="real ls-bench runs (start-up, memory); default 1 quick, 2 full")
    p.add_argument("--no-run", action="store_true", help="skip the real ls-bench run (start-up, memory)")
    p.add_argument("--out", default="/tmp/ls-bench-bench")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    args.train_size = args.train_size or (2048 if args.quick else 10000)
    args.test_size = args.test_size or (2000 if args.quick else 10000)
    args.epochs = args.epochs or (3 if args.quick else 4)
    args.runs = args.runs or (1 if args.quick else 2)
    args.fp32 = args.fp32 or not args.quick
    return args, rest


def measure_models(args: argparse.Namespace) -> list[tuple]:
    """Each model trained by every path side by side: (model, path, precision, img/s, ratio to the
    reference, GFLOP/s, test acc, accuracy check) per path."""
    rows = []
    for i, name in enumerate(args.models.split(",")):
        flops = train_flops_per_image(name)
        runs = train_side_by_side(["reference", "ls-bench", *(["ls-bench fp32"] if args.fp32 else [])], name, args)
        ref = runs["reference"]
        if i == 0:  # the data as the paths loaded it (this process never holds a copy)
            print(f"data: {ref['data']}; {ref['train']} train / {ref['test']} test images, {args.epochs} epochs, "
                  f"batch {args.batch_size}, lr {args.lr}; reference DataLoader workers {args.workers}\n")
        base = img_per_s(ref)
        for path, r in runs.items():
            ips = img_per_s(r)
            ok, tol = comparable(r["acc"], ref["acc"], ref["test"])
            rows.append((name, path, r["precision"], ips, ips / base, flops * ips / 1e9, r["acc"],
                         "" if path == "reference" else (f"ok (|Δ| <= {tol:.3f})" if ok else f"DIFFERS (> {tol:.3f})")))
        print(f"{name}: {flops / 1e6:.1f} MFLOP per training image (fwd+bwd)", flush=True)
    return rows


def print_table(rows: list[tuple], peak: dict[str, float]) -> None:
    print(f"\n{'model':10s} {'path':14s} {'prec':5s} {'img/s':>7s} {'ratio':>6s} {'GFLOP/s':>8s} {'% peak':>7s} "
          f"{'test acc':>8s}  accuracy vs reference")
    for name, path, prec, ips, ratio, gf, acc, check in rows:
        pct = 100 * gf / peak[prec]
        print(f"{name:10s} {path:14s} {prec:5s} {ips:7.0f} {ratio:5.2f}x {gf:8.1f} {pct:6.1f}% {acc:8.3f}  {check}")


def main() -> None:
    args, rest = parse_args()
    if args.child:
        return child([a for a in rest if a != "--"])
    import torch

    from ls_bench.machine import cpu_features, resolve_precision, set_threads

    threads = set_threads(0)
    lowp = resolve_precision("auto", torch.device("cpu"))
    peak = {"fp32": peak_gflops(torch.float32)}
    if lowp is not None:
        peak[prec_name(lowp)] = peak_gflops(lowp)
    print(f"CPU: {cpu_features()}")
    print(f"torch {torch.__version__}, {threads} threads, CPU bf16 autocast: {lowp is not None}; load average "
          f"{os.getloadavg()[0]:.1f}; GEMM peak " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))
    rows = measure_models(args)
    for k in peak:  # best of the measurements before and after: other processes only ever lower it
        peak[k] = max(peak[k], peak_gflops(torch.float32 if k == "fp32" else lowp))
    print(f"\nload average {os.getloadavg()[0]:.1f}; GEMM peak (best of start and end) "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))
    print_table(rows, peak)
    if not args.no_run and Path(args.root, "train").is_dir():
        print(f"\nreal run: ls-bench data=imagefolder data.root={args.root} model=resnet20 trainer.epochs=1 "
              f"({args.run_steps} training steps, then the real eval/logging/checkpoint/final)")
        for tag in "abcdefgh"[:args.runs]:
            report_run(real_run(args, tag), tag)
    print(f"\ncoordinating process peak RSS {peak_rss_mib():.0f} MiB (the paths train in processes of their own; "
          f"a real run's peak RSS is above)")


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM of its own address space. (getrusage's ru_maxrss
    would also count the forking parent's pages: Linux carries the maximum across exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
