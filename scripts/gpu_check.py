#!/usr/bin/env python
"""ls-bench on one GPU, end to end, in under 8 minutes: the checks of the GPU issue, one table.

    python scripts/gpu_check.py                                     # --device cuda, full CIFAR-10
    python scripts/gpu_check.py --quick                             # 2,000 training images, 1 epoch
    python scripts/gpu_check.py --compile-mode reduce-overhead      # trainer.compile=reduce-overhead
    python scripts/gpu_check.py --device cpu --quick                # the CPU smoke test (a few minutes)

1. quickstart  the README sweep `ls-bench -m experiment=quickstart loss.epsilon=0,0.1,0.2` on the
               device: exit 0 and 3 final.json; wall time.
2. resnet20    `data=imagefolder model=resnet20 trainer.epochs=2` on the CIFAR-10 folder, eager and
               with `trainer.compile=<--compile-mode>`: img/s of the last epoch (metrics.jsonl's
               perf/train_img_per_s), test accuracy, peak GPU memory (torch.cuda.max_memory_allocated;
               peak RSS on the CPU). --quick: data.train_size=2000 and 1 epoch, so the compiled
               figure then includes compilation. On the CPU with --quick the compiled run is skipped
               (torch.compile takes minutes on a 2-core CPU).
3. joblib      a 4-job sweep sharing the device, `hydra/launcher=joblib hydra.launcher.n_jobs=2`:
               exit 0 and 4 final.json; wall time.
4. syncs       host synchronisations per ResNet-20 training step, counted as the warnings of
               torch.cuda.set_sync_debug_mode("warn") around ls-bench's own train_one_epoch over a
               few batches of train_batches (n/a on the CPU, where the same steps still run).

Every check runs in a process of its own: the sweeps through `python -m ls_bench.cli`, the
training checks through this script's --child mode, which composes the config with Hydra's compose
API as tests/conftest.py does and calls ls_bench.train.fit, then prints one JSON line. Logs and
run directories stay in --out (a new temporary folder by default). Exit status: 0 when every check
passed, 1 when one failed, 2 when the device or the data is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn

from ls_bench.machine import cpu_features

REPO = Path(__file__).resolve().parent.parent
CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg"
RESULT = "gpu_check-result: "  # the prefix of a child's JSON line on stdout
WARMUP_STEPS = 3  # sync check: steps before counting (cudnn.benchmark autotuning, lazy CUDA init)


# --- the machine -------------------------------------------------------------------------------


def die(message: str) -> NoReturn:
    """One line on stderr and exit status 2: the device or the data is not there."""
    print(message, file=sys.stderr)
    sys.exit(2)


def machine_header(device: str) -> str:
    """'GPU: name, capability, memory; torch, CUDA, cuDNN' (or the CPU's model and flags).
    Exits with status 2 and one line when a CUDA device was asked for and is not there."""
    import torch

    if not device.startswith("cuda"):
        return f"CPU: {cpu_features()}; torch {torch.__version__} (device {device})"
    if not torch.cuda.is_available():
        die(f"gpu_check: error: --device {device}, but torch {torch.__version__} sees no CUDA device "
                 f"(torch.cuda.is_available() is False; CUDA build: {torch.version.cuda}); use --device cpu")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        die(f"gpu_check: error: --device {device}, but there are {torch.cuda.device_count()} CUDA devices")
    p = torch.cuda.get_device_properties(index)  # no allocation: this process never holds GPU memory
    return (f"GPU: {p.name}, capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
            f"{torch.cuda.device_count()} device(s); torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}\nhost CPU: {cpu_features()}")


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- children: one process per training check, one JSON line each ------------------------------


class ApiChanged(RuntimeError):
    """ls-bench's functions no longer look the way this script calls them."""


def child_train(overrides: list[str], run_dir: Path) -> dict:
    """fit() into run_dir; the last epoch's img/s, test accuracy, precision and peak memory."""
    import torch

    from ls_bench.cli import compose_config
    from ls_bench.train import fit

    cfg = compose_config(overrides)
    shutil.rmtree(run_dir, ignore_errors=True)  # fit() would skip a finished run directory
    t = time.perf_counter()
    final = fit(cfg, run_dir)
    seconds = time.perf_counter() - t
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()][-1]
    info = json.loads((run_dir / "run_info.json").read_text())
    out = {"img_per_s": last["perf/train_img_per_s"], "epoch": last["epoch"], "test_acc": final["test/acc"],
           "precision": info.get("precision"), "threads": info.get("threads"), "train": info["sizes"]["train"],
           "fit_s": seconds, "peak_rss_mib": peak_rss_mib()}
    device = str(info.get("device", ""))
    if device.startswith("cuda") and torch.cuda.is_available():  # of the run's device, not the current one
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
        out["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved(torch.device(device)) / 2**20
    return out


def checked_call(fn, *args):
    """fn(*args), after checking that fn still takes these arguments (train.py changes often)."""
    import inspect

    try:
        inspect.signature(fn).bind(*args)
    except TypeError as e:
        raise ApiChanged(f"{fn.__module__}.{fn.__qualname__}{inspect.signature(fn)} cannot be called with "
                         f"({', '.join(type(a).__name__ for a in args)}): {e}") from None
    return fn(*args)


def _loop_api() -> tuple[Callable, Callable, Callable, Any]:
    """ls-bench's setup, train_one_epoch and train_batches, and the train module; ApiChanged if they moved."""
    try:
        import ls_bench.data.loader as loader
        import ls_bench.run as run_module
        import ls_bench.train as train

        return run_module.setup, train.train_one_epoch, loader.train_batches, train
    except (ImportError, AttributeError) as e:
        raise ApiChanged(f"{e}") from None


def _syncs_during(fn: Callable[[], object], count: bool, cuda: bool) -> Counter:
    """Host syncs that fn() makes, by file:line, under torch.cuda.set_sync_debug_mode("warn")."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if count and cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            if count and cuda:
                torch.cuda.set_sync_debug_mode("default")
    return Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message).lower())


def child_syncs(overrides: list[str]) -> dict:
    """Host syncs per training step: ls-bench's train_one_epoch over k batches of train_batches,
    under torch.cuda.set_sync_debug_mode("warn"), for k = a and k = a + NAN_CHECK_EVERY. The
    difference divided by NAN_CHECK_EVERY is the per-step count (the periodic NaN check included,
    amortised); what is left at k = a is the once-per-epoch reads (loss, accuracy, batch order)."""
    import itertools

    import torch

    from ls_bench.cli import compose_config

    setup, train_one_epoch, train_batches, train = _loop_api()
    cfg = compose_config(overrides)
    cuda = cfg.trainer.device != "cpu" and torch.cuda.is_available()
    # On the CPU nothing is counted: a short second window only runs the same code path.
    every = getattr(train, "NAN_CHECK_EVERY", 20) if cuda else 2
    a, bs = 2, cfg.trainer.batch_size
    cfg.data.train_size = (a + every) * bs  # exactly enough batches for the longest window
    run = checked_call(setup, cfg)
    try:
        split, augment, norm, device = run.ds.train, run.ds.augment, run.norm, run.device
        run.steps_per_epoch  # noqa: B018  (train_one_epoch's progress bar reads it; set per window below)
    except AttributeError as e:
        raise ApiChanged(f"ls_bench.run.setup() returned a {type(run).__name__} without {e.name}") from None
    cuda = device.type == "cuda"

    def window(steps: int, seed: int, count: bool) -> Counter:
        run.steps_per_epoch = steps
        batches = itertools.islice(checked_call(train_batches, split, bs, seed, augment, norm), steps)
        g = torch.Generator(device).manual_seed(seed)
        return _syncs_during(lambda: checked_call(train_one_epoch, run, batches, g, "gpu_check"), count, cuda)

    t = time.perf_counter()
    window(WARMUP_STEPS, 1, count=False)
    short, long = window(a, 2, count=True), window(a + every, 3, count=True)
    per_step = (sum(long.values()) - sum(short.values())) / every
    where = {k: (long[k] - short[k]) / every for k in long if long[k] > short[k]}
    return {"cuda": cuda, "steps": WARMUP_STEPS + 2 * a + every, "every": every, "short": a, "per_step": per_step,
            "per_epoch": sum(short.values()) - a * per_step, "where_per_step": where,
            "where_per_epoch": dict(short),
            "precision": str(getattr(run, "amp_dtype", None) or "fp32").replace("torch.", ""),
            "seconds": time.perf_counter() - t}


def child_main(kind: str, run_dir: str, overrides: list[str]) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[%(asctime)s %(name)s] %(message)s")
    try:
        out = child_train(overrides, Path(run_dir)) if kind == "train" else child_syncs(overrides)
        code = 0
    except ApiChanged as e:
        out, code = {"error": f"ls-bench's API differs from what gpu_check.py expects: {e}; "
                              f"update child_syncs() in scripts/gpu_check.py"}, 1
    except Exception as e:  # the parent shows the reason in its table; the log has the traceback
        import traceback

        traceback.print_exc()
        text = str(e).strip()
        out, code = {"error": f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:300]}, 1
    print(RESULT + json.dumps(out), flush=True)
    return code


# --- the checks, each in a subprocess ------------------------------------------------------------


@dataclass
class Check:
    name: str
    status: str  # ok | FAIL | warn | skip
    result: str
    seconds: float = 0.0
    log: Path | None = None


def run_logged(cmd: list[str], log: Path, timeout: float) -> tuple[int | None, float, str]:
    """Run cmd with stdout+stderr into `log`; (exit status or None on timeout, seconds, stdout).
    A new session, so that a timeout ends the whole tree (joblib's workers too)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            out, _ = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            code = None
        f.write("\n--- stdout ---\n" + out)
    return code, time.perf_counter() - t, out


def last_line_of(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or lines or ["(no output)"])[-1][:200]


def check_sweep(name: str, overrides: list[str], expected: int, args: argparse.Namespace) -> Check:
    """A real `ls-bench -m ...` sweep: exit 0 and one final.json per job."""
    sweep = args.out / name
    shutil.rmtree(sweep, ignore_errors=True)
    log = args.out / f"{name}.log"
    code, seconds, _ = run_logged([sys.executable, "-m", "ls_bench.cli", "-m", *overrides,
                                   f"trainer.device={args.device}", f"hydra.sweep.dir={sweep}"], log, args.timeout)
    finals = sorted(sweep.glob("*/final.json")) if sweep.is_dir() else []
    failed = sorted(sweep.glob("*/failed.json")) if sweep.is_dir() else []
    if code == 0 and len(finals) == expected and not failed:
        return Check(name, "ok", f"exit 0, {len(finals)}/{expected} final.json", seconds, log)
    why = f"{'timed out' if code is None else f'exit {code}'}, {len(finals)}/{expected} final.json"
    if failed:  # the first failed job's reason, else the log's last error line
        why += f"; {failed[0].parent.name}: {json.loads(failed[0].read_text()).get('reason', '?')}"
    else:
        why += f"; {last_line_of(log)}"
    return Check(name, "FAIL", why, seconds, log)


def run_child(kind: str, tag: str, overrides: list[str], args: argparse.Namespace) -> tuple[dict, float, Path]:
    log = args.out / f"{tag}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--run-dir", str(args.out / tag), "--",
           *overrides]
    code, seconds, out = run_logged(cmd, log, args.timeout)
    lines = [ln[len(RESULT):] for ln in out.splitlines() if ln.startswith(RESULT)]
    if lines:
        return json.loads(lines[-1]), seconds, log
    return {"error": "timed out" if code is None else f"exit {code}: {last_line_of(log)}"}, seconds, log


def resnet_overrides(args: argparse.Namespace) -> list[str]:
    return ["data=imagefolder", f"data.root={args.cifar}", "model=resnet20", f"trainer.device={args.device}",
            "trainer.progress=false", *(["data.train_size=2000"] if args.quick else [])]


def check_resnet(compile_mode: str | None, args: argparse.Namespace,
                 eager_ips: float | None) -> tuple[Check, float | None]:
    """fit() of ResNet-20 on the CIFAR-10 folder in a child; the check and its img/s."""
    epochs = 1 if args.quick else 2
    name = f"resnet20 {'eager' if compile_mode is None else f'compile={compile_mode}'}, {epochs} ep"
    tag = "resnet20-eager" if compile_mode is None else "resnet20-compiled"
    overrides = [*resnet_overrides(args), f"trainer.epochs={epochs}",
                 *([] if compile_mode is None else [f"trainer.compile={compile_mode}"])]
    r, seconds, log = run_child("train", tag, overrides, args)
    if "error" in r:
        return Check(name, "FAIL", r["error"], seconds, log), None
    memory = (f"peak GPU {r['peak_gpu_mib']:,.0f} MiB (reserved {r['peak_gpu_reserved_mib']:,.0f})"
              if "peak_gpu_mib" in r else f"peak RSS {r['peak_rss_mib']:,.0f} MiB (no GPU)")
    speed = f"{r['img_per_s']:,.0f} img/s (epoch {r['epoch']}"
    if r["epoch"] == 1:  # the first epoch pays for warm-up: kernel selection, cudnn.benchmark, compiling
        speed += ", includes warm-up" if compile_mode is None else ", includes compilation"
    speed += ")"
    if eager_ips and r["epoch"] > 1:
        speed += f" = {r['img_per_s'] / eager_ips:.2f}x eager"
    return Check(name, "ok", f"{speed}, test acc {r['test_acc']:.3f}, {r['precision']}, {r['train']:,} train "
                             f"images; {memory}", seconds, log), r["img_per_s"]


def check_syncs(args: argparse.Namespace) -> tuple[Check, list[str]]:
    r, seconds, log = run_child("syncs", "syncs", resnet_overrides(args), args)  # the child sets train_size
    name = "host syncs per step"
    if "error" in r:
        return Check(name, "FAIL", r["error"], seconds, log), []
    if not r["cuda"]:
        return Check(name, "skip", f"n/a (no CUDA); {r['steps']} resnet20 steps of train_one_epoch ran",
                     seconds, log), []
    every, per_step = r["every"], r["per_step"]
    status = "ok" if per_step <= 1 / every + 1e-9 else "warn"  # README: none but the NaN check every N steps
    result = (f"{per_step:.2f}/step ({per_step * every:.0f} per {every} steps, of which the NaN check every "
              f"{every} steps should be 1), {r['per_epoch']:.0f} per epoch; {r['precision']}")
    notes = [f"syncs per step at {k}: {v:.2f}" for k, v in sorted(r["where_per_step"].items())]
    notes += [f"syncs in a {r['short']}-step epoch at {k}: {v}" for k, v in sorted(r["where_per_epoch"].items())]
    return Check(name, status, result, seconds, log), notes


# --- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--cifar", type=Path, default=CIFAR, help=f"CIFAR-10 ImageFolder root (default {CIFAR})")
    p.add_argument("--quick", action="store_true", help="resnet20 on 2,000 training images for 1 epoch")
    p.add_argument("--compile-mode", default="true", help="passed as trainer.compile=<mode> (default true)")
    p.add_argument("--out", type=Path, help="folder for the runs and logs (default: a new temporary folder)")
    p.add_argument("--sweep-epochs", type=int, help="trainer.epochs of the two quickstart sweeps (default: the "
                                                    "preset's 15; the CPU smoke test uses 1)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per check before it is killed (900)")
    p.add_argument("--child", choices=("train", "syncs"), help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.overrides and not args.child:
        p.error(f"unrecognized arguments: {' '.join(args.overrides)}")
    return args


def run_checks(args: argparse.Namespace) -> tuple[list[Check], list[str]]:
    """The checks in order, each printed as it ends; the notes of the sync count."""
    checks: list[Check] = []

    def done(c: Check) -> None:
        checks.append(c)
        print(f"  [{c.status:4s}] {c.name}: {c.result} ({c.seconds:.1f} s)", flush=True)

    short = [f"trainer.epochs={args.sweep_epochs}"] if args.sweep_epochs else []
    done(check_sweep("quickstart", ["experiment=quickstart", "loss.epsilon=0,0.1,0.2", *short], 3, args))
    eager, eager_ips = check_resnet(None, args, None)
    done(eager)
    if not args.device.startswith("cuda") and args.quick:
        done(Check(f"resnet20 compile={args.compile_mode}", "skip",
                   "skipped on the CPU with --quick (torch.compile takes minutes on a small CPU)"))
    else:
        done(check_resnet(args.compile_mode, args, eager_ips)[0])
    done(check_sweep("joblib", ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "experiment=quickstart",
                                "loss.epsilon=0,0.1", "seed=0,1", *short], 4, args))
    syncs, notes = check_syncs(args)
    done(syncs)
    return checks, notes


def print_summary(header: str, checks: list[Check], notes: list[str]) -> list[Check]:
    """The table of checks; returns the failed ones."""
    width = max(len(c.name) for c in checks)
    print(f"\n{header}")
    print(f"{'check':{width}s}  {'':4s}  {'time':>7s}  result")
    for c in checks:
        print(f"{c.name:{width}s}  {c.status:4s}  {c.seconds:6.1f}s  {c.result}")
    for n in notes:
        print(f"  {n}")
    failed = [c for c in checks if c.status == "FAIL"]
    for c in failed:
        print(f"  log of {c.name}: {c.log}")
    return failed


def main() -> int:
    args = parse_args()
    if args.child:
        return child_main(args.child, args.run_dir, args.overrides)
    t0 = time.perf_counter()
    header = machine_header(args.device)  # exits 2 without the CUDA device asked for
    args.cifar = args.cifar.expanduser().resolve()
    if not (args.cifar / "train").is_dir() or not (args.cifar / "test").is_dir():
        die(f"gpu_check: error: --cifar {args.cifar} is not a CIFAR-10 ImageFolder tree (train/ and test/)")
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="ls-bench-gpu-check-"))).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    print(header)
    print(f"ls-bench gpu_check{' --quick' if args.quick else ''}: device {args.device}, CIFAR-10 {args.cifar}, "
          f"runs and logs in {args.out}\n", flush=True)
    failed = print_summary(header, *run_checks(args))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; {len(failed)} failed; runs and logs in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
