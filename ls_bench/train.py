"""The training loop: train_one_epoch, predict, fit. Plain functions, read top to bottom.

fit() owns a run directory: it resumes from last.pt when one is there, skips the run when
final.json is there, logs every epoch, and writes final.json (or failed.json) at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import math
import os
import platform
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ls_bench import __version__
from ls_bench.calibration import fit_temperature
from ls_bench.config import NOT_COMPUTED, Config, ConfigError, SchedConfig, bad, first_line, flat_config
from ls_bench.data import Dataset, Normalize, Split, eval_batches, load_dataset, train_batches
from ls_bench.logs import RunLogger, read_json, truncate_jsonl, write_json
from ls_bench.losses import Criterion, as_multiclass, make_criterion
from ls_bench.metrics import compute_metrics, default_top_k
from ls_bench.models import build_model

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """The run cannot continue (non-finite loss, ...); fit() writes failed.json before raising it."""


class CheckpointError(RuntimeError):
    """last.pt exists but cannot be loaded; the message names the file."""


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT arrived (e.g. SLURM pre-emption); last.pt holds the last finished epoch."""

    def __init__(self, signum: int, when: str):
        super().__init__(f"{signal.Signals(signum).name} received {when}")
        self.signum = signum


class _StopFlag:
    """Set by the signal handler, read once per step: the step in flight finishes, then the
    epoch is abandoned and the run resumes from the last finished epoch next time. Never cleared:
    a signal that lands after a run's last step (its evaluation, its final.json) stops the next
    run of the sweep before it starts, instead of being forgotten."""

    signum: int | None = None

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        cls.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Install SIGTERM/SIGINT handlers for the duration of a run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _StopFlag.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --- environment -----------------------------------------------------------------------------


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed per named stream, so streams never share random numbers."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "little") >> 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise bad("trainer.device", name, "auto or cpu: no CUDA device is available here")
    if name.startswith("cuda:"):
        n = torch.cuda.device_count()
        index = name.split(":", 1)[1]
        if not (index.isdigit() and int(index) < n):
            raise bad("trainer.device", name, f"cuda or cuda:0 ... cuda:{n - 1} on this machine")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Native bf16 on the CPU (AVX512-BF16 or AMX); without it bf16 autocast is slower than fp32."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for fp32. auto: bf16 where native, fp16 on older GPUs, else fp32."""
    if name == "fp32":
        return None
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else None
    if name == "fp16" and device.type == "cpu":
        raise bad("trainer.precision", name, "bf16, fp32 or auto on the CPU (fp16 autocast is for CUDA)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def set_threads(n: int) -> int:
    """Threads for this process: n, or all cores divided among parallel jobs (LS_BENCH_JOBS)."""
    if n == 0:
        jobs = max(1, int(os.environ.get("LS_BENCH_JOBS", "1")))
        # The cores this process may run on (a SLURM allocation, taskset), not all of the node's.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        n = max(1, cores // jobs)
    torch.set_num_threads(n)
    return n


def tune_allocator() -> bool:
    """Keep freed activation memory in glibc's heap instead of returning it to the kernel.

    By default glibc serves blocks over 128 KiB (raised dynamically up to 32 MiB) with fresh
    mmap()s and trims the heap top back to the kernel, so every training step touches megabytes
    of new pages: ~5,000 page faults and ~20 MiB of kernel page-zeroing per ResNet-20 step at
    batch 128. A fixed 32 MiB mmap threshold, a 1 GiB trim threshold and a 64 MiB top pad reuse
    those pages (~300 faults per step) and make a CPU step ~10% faster, in bf16 and fp32 alike
    (2 cores: 92-97 -> 84-85 ms per bf16 step). The same settings as MALLOC_MMAP_THRESHOLD_
    etc. in the environment, but set in-process.
    Returns False where the C library is not glibc (macOS, musl), where nothing is changed.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(param, value) == 1 for param, value in (
        (m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20)))


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# --- schedule ----------------------------------------------------------------------------------


def lr_factor(step: int, steps_per_epoch: int, epochs: int, sched: SchedConfig) -> float:
    """The learning-rate multiplier at optimizer step `step`: a pure function of the step.

    Linear warm-up over `warmup_epochs`, then cosine to 0, or ×gamma at each milestone epoch.
    """
    total = steps_per_epoch * epochs
    warm = round(sched.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if sched.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    if sched.name == "step":
        epoch = step / steps_per_epoch
        return sched.gamma ** sum(epoch >= m for m in sched.milestones)
    return 1.0


# --- one epoch, inference --------------------------------------------------------------------


def train_one_epoch(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor, Tensor]], criterion: Criterion,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    amp: contextlib.AbstractContextManager, scaler: torch.amp.GradScaler, loss_gen: torch.Generator,
                    steps: int, progress: bool, desc: str) -> dict[str, float]:
    """One pass over the batches. Loss and accuracy accumulate on the device and are read once
    at the end (plus every `refresh` steps for the progress bar), so the device never waits."""
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    first_bad = torch.full((), -1, device=device, dtype=torch.long)  # first step with a non-finite loss
    seen, refresh, order = 0, 20, []
    bar = tqdm(batches, total=steps, desc=desc, leave=False, disable=not progress)
    for step, (x, y, idx) in enumerate(bar):
        if _StopFlag.signum is not None:
            raise Interrupted(_StopFlag.signum, f"at step {step} of the epoch")
        order.append(idx)
        with amp:
            logits = model(x)
        loss = criterion(logits, y, loss_gen)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss = loss.detach()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
        loss_sum += loss * len(y)
        correct += (as_multiclass(logits.detach()).argmax(1) == y).sum()
        seen += len(y)
        if progress and (step + 1) % refresh == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
            if first_bad.item() >= 0:
                break
    if first_bad.item() >= 0:
        raise RunFailed(f"non-finite training loss at step {first_bad.item()} of the epoch")
    # A fingerprint of the batch order: runs that differ only in the loss must show the same one.
    order_sha = hashlib.sha256(torch.cat(order).cpu().numpy().tobytes()).hexdigest()[:16]
    return {"train/loss": loss_sum.item() / seen, "train/acc": correct.item() / seen, "data/order_sha": order_sha}


@torch.inference_mode()
def predict(model: nn.Module, split: Split, batch_size: int, norm: Normalize,
            amp: contextlib.AbstractContextManager, features: bool = False) -> Tensor:
    """Logits (or penultimate features) of a whole split, float32 on the CPU, in large batches."""
    model.eval()
    fn = model.features if features else model
    out = []
    for x, _ in eval_batches(split, batch_size, norm):
        with amp:
            z = fn(x)
        out.append(z.float())
    z = torch.cat(out).cpu() if out else torch.empty(0, 0)
    return z if features else as_multiclass(z)


# --- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # cleanup must not hide the write error itself
            tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """weights_only=True: tensors and plain containers only; a pickled object is refused, not run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({first_line(e)}); delete it to restart the "
                              f"run from scratch") from None


# --- the run -----------------------------------------------------------------------------------


def setup(cfg: Config) -> tuple[Dataset, Criterion, dict[str, int]]:
    """Everything that can fail on bad input, done before any training starts."""
    seeds = {
        "init": cfg.seeds.init if cfg.seeds.init is not None else derive_seed(cfg.seed, "init"),
        "data": cfg.seeds.data if cfg.seeds.data is not None else derive_seed(cfg.seed, "data"),
        "noise": (cfg.data.label_noise.seed if cfg.data.label_noise.seed is not None
                  else derive_seed(cfg.seed, "noise")),
    }
    ds = load_dataset(cfg.data, seeds["noise"])
    if len(ds.train) < 1:
        raise bad("data.train_size", cfg.data.train_size, "leaves no training images")
    criterion = make_criterion(cfg.loss, ds.num_classes, ds.class_counts())
    top_k = cfg.metrics.top_k
    if top_k is not None and top_k > ds.num_classes:
        raise bad("metrics.top_k", top_k, f"must be <= the {ds.num_classes} classes of {cfg.data.name}")
    pc = list(cfg.metrics.penultimate_classes)
    if cfg.metrics.figures and ds.num_classes >= 3 and max(pc) >= ds.num_classes:
        raise bad("metrics.penultimate_classes", pc, f"labels must be < the {ds.num_classes} classes of "
                  f"{cfg.data.name} (after data.classes renumbering)")
    return ds, criterion, seeds


def check_same_run(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to skip or resume a folder that holds a run of another config. Hydra rewrites
    .hydra/config.yaml at every launch, so without this check a changed ε (or an edited YAML
    default) would silently inherit the old final.json or continue the old last.pt."""
    before = read_json(run_dir / "run_info.json").get("config")
    if not isinstance(before, dict):
        return  # from a version of ls-bench that did not record its config: nothing to compare
    now = json.loads(json.dumps(config))  # the types a JSON round trip gives (tuples as lists)
    changed = [k for k in sorted(set(before) | set(now))
               if k not in NOT_COMPUTED and (k in before, before.get(k)) != (k in now, now.get(k))]
    if changed:
        shown = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(f"{run_dir} holds a run of another config ({shown}{more}); rerun it with its own "
                          f"config, or choose another folder (hydra.run.dir / hydra.sweep.dir), or delete it")


def evaluate(model: nn.Module, ds: Dataset, cfg: Config, norm: Normalize, amp: contextlib.AbstractContextManager,
             top_k: int | None, logits_out: dict[str, Tensor]) -> dict[str, float]:
    """`val/*` and `test/*` metrics of the model now; each split's logits are left in `logits_out`."""
    m: dict[str, float] = {}
    for s in ("val", "test"):
        split = getattr(ds, s)
        if len(split):
            z = logits_out[s] = predict(model, split, cfg.trainer.eval_batch_size, norm, amp)
            m.update({f"{s}/{k}": v for k, v in compute_metrics(z, split.y.cpu(), cfg.metrics.n_bins, top_k).items()})
    return m


def resume(ckpt_path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler) -> tuple[int, list[dict]]:
    """Load last.pt into the training state; (finished epochs, their history)."""
    state = load_checkpoint(ckpt_path)
    try:  # a loadable file from another config (model, optimizer) or an older format
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {ckpt_path} does not fit this run's config ({type(e).__name__}: "
                              f"{first_line(e)}); delete it or use another run directory") from None
    log.info("resumed from %s at epoch %d", ckpt_path, start_epoch)
    return start_epoch, history


def fit(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate one configuration into `run_dir`; returns the final metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final_path, ckpt_path = run_dir / "final.json", run_dir / "last.pt"
    config = flat_config(cfg)
    if final_path.exists() or ckpt_path.exists():
        check_same_run(run_dir, config)
    if final_path.exists():
        log.info("%s exists: run already finished, skipping", final_path)
        return json.loads(final_path.read_text())
    if _StopFlag.signum is not None:
        raise Interrupted(_StopFlag.signum, "before this run started")
    (run_dir / "failed.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    threads = set_threads(cfg.trainer.num_threads)
    allocator_tuned = tune_allocator()
    device = resolve_device(cfg.trainer.device)
    amp_dtype = resolve_precision(cfg.trainer.precision, device)
    ds, criterion, seeds = setup(cfg)
    ds = ds.to(device)
    norm = Normalize(ds.mean, ds.std, device, cfg.trainer.channels_last)
    top_k = default_top_k(ds.num_classes, cfg.metrics.top_k)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(seeds["init"])  # initial weights depend on the init seed only, never on ε
    model = build_model(cfg.model.name, ds.in_channels, criterion.num_outputs, ds.image_size).to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    o = cfg.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                weight_decay=o.weight_decay)
    B = cfg.trainer.batch_size
    steps = max(1, len(ds.train) // B)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, cfg.trainer.epochs, cfg.sched))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    train_model = torch.compile(model) if cfg.trainer.compile else model
    amp = autocast(device, amp_dtype)

    # Fingerprint of the initial weights: runs that differ only in the loss must show the same one.
    init_sha = hashlib.sha256(b"".join(v.cpu().numpy().tobytes() for v in model.state_dict().values())).hexdigest()[:16]
    start_epoch, history = resume(ckpt_path, model, optimizer, scheduler, scaler) if ckpt_path.exists() else (0, [])

    info = {
        "config": config, "version": __version__, "git_commit": git_commit(), "torch": torch.__version__,
        "python": platform.python_version(), "device": str(device),
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32", "threads": threads,
        "allocator_tuned": allocator_tuned, "seeds": seeds, "init_sha": init_sha, "classes": ds.classes,
        "sizes": {k: len(getattr(ds, k)) for k in ("train", "val", "test")},
        "determinism": {"cudnn_benchmark": device.type == "cuda", "deterministic_algorithms": False,
                        "note": "bit-identical reruns on the CPU with the same threads; CUDA is close, not exact"},
        "label_noise": {"rate_requested": cfg.data.label_noise.rate, "flipped": len(ds.noisy_idx),
                        "rate_realised": len(ds.noisy_idx) / len(ds.train)},
    }
    log.info("%s: %d train / %d val / %d test, %d classes; %s on %s (%s, %d threads); target for class 0: %s",
             cfg.data.name, len(ds.train), len(ds.val), len(ds.test), ds.num_classes, cfg.model.name, device,
             info["precision"], threads, [round(v, 4) for v in criterion.targets(torch.tensor([0]))[0].tolist()])

    cleanup = contextlib.ExitStack()  # undone in `finally`, whatever happens
    saved_epoch = start_epoch  # the epoch last.pt holds (0: none)
    try:  # from here on, a failed write (disk full, quota, permissions) is a one-line RunFailed
        if start_epoch:
            truncate_jsonl(run_dir / "metrics.jsonl", start_epoch)  # no epoch is logged twice
        else:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        write_json(run_dir / "run_info.json", info)
        if len(ds.noisy_idx):
            np.save(run_dir / "noisy_indices.npy", ds.noisy_idx.cpu().numpy())
        logger = RunLogger(run_dir, purge_step=start_epoch + 1)
        cleanup.callback(logger.close)
        cleanup.enter_context(stop_on_signals())
        last_logits: dict[str, Tensor] = {}  # val/test logits of the latest evaluation, reused by finish()
        epochs_bar = tqdm(range(start_epoch, cfg.trainer.epochs), desc="epochs", disable=not cfg.trainer.progress,
                          initial=start_epoch, total=cfg.trainer.epochs)
        for epoch in epochs_bar:
            t_ep = time.perf_counter()
            data_seed = derive_seed(seeds["data"], f"epoch{epoch}")
            batches = train_batches(ds.train, B, data_seed, ds.augment, norm)
            loss_gen = torch.Generator(device).manual_seed(derive_seed(seeds["data"], f"flip{epoch}"))
            lr = optimizer.param_groups[0]["lr"]  # of the epoch's first step (the scheduler steps per batch)
            try:
                m = train_one_epoch(train_model, batches, criterion, optimizer, scheduler, amp, scaler, loss_gen,
                                    steps, cfg.trainer.progress, f"epoch {epoch + 1}")
            except RunFailed as e:
                raise RunFailed(f"epoch {epoch + 1}: {e}") from None
            train_s = time.perf_counter() - t_ep
            m["lr"] = lr
            m["perf/train_img_per_s"] = min(steps * B, len(ds.train)) / train_s  # one short batch if N < B
            if (epoch + 1) % cfg.trainer.eval_every == 0 or epoch + 1 == cfg.trainer.epochs:
                t_eval = time.perf_counter()
                m.update(evaluate(model, ds, cfg, norm, amp, top_k, last_logits))
                m["perf/eval_s"] = time.perf_counter() - t_eval
            m["perf/epoch_s"] = time.perf_counter() - t_ep
            history.append({"epoch": epoch + 1, **m})
            logger.log_epoch(epoch + 1, m)
            epochs_bar.set_postfix(loss=f"{m['train/loss']:.4f}", val_acc=f"{m.get('val/acc', float('nan')):.3f}")
            if cfg.trainer.checkpoint:
                try:
                    save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                                "epoch": epoch + 1, "history": history})
                except OSError as e:  # disk full, quota, read-only: the previous last.pt is untouched
                    raise RunFailed(f"epoch {epoch + 1}: cannot write {ckpt_path} ({e}); "
                                    f"the checkpoint of epoch {epoch} is kept") from None
                saved_epoch = epoch + 1
        final = finish(cfg, model, ds, norm, amp, top_k, history, logger, run_dir, last_logits)
        final["time_s"] = time.perf_counter() - t0
        write_json(final_path, final)
        return final
    except (RunFailed, torch.cuda.OutOfMemoryError, OSError) as e:
        if isinstance(e, OSError):
            failure = write_failure(e, len(history), saved_epoch)
        elif isinstance(e, torch.cuda.OutOfMemoryError):  # one line, like every other failure
            failure = RunFailed(f"epoch {len(history) + 1}: out of GPU memory ({first_line(e)[:200]}); "
                                f"lower trainer.batch_size or trainer.eval_batch_size")
        else:
            failure = e
        with contextlib.suppress(OSError):  # on a full disk this fails too; the error itself must surface
            write_json(run_dir / "failed.json", {"reason": first_line(failure),
                                                 "type": type(failure).__name__, "epoch": len(history),
                                                 "time_s": time.perf_counter() - t0})
        if failure is e:
            raise
        raise failure from e
    finally:
        cleanup.close()


def write_failure(e: OSError, epochs_done: int, saved_epoch: int) -> RunFailed:
    """A failed write of a run file (metrics.jsonl, TensorBoard events, predictions, final.json:
    disk full, quota, permissions) as the one line the CLI prints; last.pt is written separately."""
    what = f"cannot write {e.filename} ({e.strerror})" if e.filename else f"write error ({e})"
    kept = (f"last.pt keeps epoch {saved_epoch}: rerun the same command to resume" if saved_epoch
            else "no checkpoint to resume from")
    when = f"after epoch {epochs_done}" if epochs_done else "before the first epoch"
    return RunFailed(f"{when}: {what}; {kept}")


def finish(cfg: Config, model: nn.Module, ds: Dataset, norm: Normalize, amp: contextlib.AbstractContextManager,
           top_k: int | None, history: list[dict[str, Any]], logger: RunLogger, run_dir: Path,
           last_logits: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """Final metrics: the last epoch's, temperature scaling on val, predictions saved for later.

    `last_logits` are the final epoch's val/test logits when this process computed them (not
    after a resume past the last epoch); reusing them saves a second pass over val and test."""
    eb = cfg.trainer.eval_batch_size
    final: dict[str, Any] = {k: v for k, v in history[-1].items() if not k.startswith("perf/")}
    last_logits = last_logits or {}
    logits = {s: last_logits[s] if s in last_logits else predict(model, getattr(ds, s), eb, norm, amp)
              for s in ("val", "test")}
    labels = {s: getattr(ds, s).y.cpu() for s in ("val", "test")}
    if cfg.metrics.temperature_scaling:
        t = fit_temperature(logits["val"], labels["val"])
        final["temperature"] = t
        for s in ("val", "test"):
            final.update({f"{s}_ts/{k}": v for k, v in
                          compute_metrics(logits[s] / t, labels[s], cfg.metrics.n_bins, top_k).items()})
    if len(ds.noisy_idx):
        # Memorisation of the flipped training labels (Zhang et al. 2017; Lukasik et al. 2020).
        z = predict(model, ds.train.take(ds.noisy_idx.cpu()).to(ds.train.y.device), eb, norm, amp)
        pred = z.argmax(1)
        final["train_noisy/acc_noisy_label"] = float((pred == ds.train.y.cpu()[ds.noisy_idx.cpu()]).float().mean())
        final["train_noisy/acc_true_label"] = float((pred == ds.clean_train_y[ds.noisy_idx.cpu()].cpu()).float().mean())
        final["data/noise_rate_realised"] = len(ds.noisy_idx) / len(ds.train)
    final["epochs"] = len(history)
    final["metric_settings"] = {"n_bins": cfg.metrics.n_bins, "top_k": top_k, "softmax": "float64",
                                "binning": "equal-width ((m-1)/M, m/M], 0 in the first bin, 1 in the last",
                                "adaece_binning": "equal-mass: bin floor(M * #{j: conf_j < conf_i} / N)",
                                "temperature_applied_to": "*_ts/ only"}
    # Saved predictions: float32 logits and int64 labels, untempered; recompute any metric later
    # with ls_bench.metrics.compute_metrics(torch.from_numpy(f["test_logits"]), ...).
    np.savez_compressed(run_dir / "predictions.npz", **{f"{s}_{k}": v for s in ("val", "test") for k, v in
                                                        (("logits", logits[s].numpy()), ("labels", labels[s].numpy()))})
    if cfg.metrics.figures:
        write_run_figures(cfg, model, ds, norm, amp, logits, labels, final.get("temperature"), logger, run_dir)
    hp = {"loss": cfg.loss.name, "epsilon": cfg.loss.epsilon, "prior": str(cfg.loss.prior), "model": cfg.model.name,
          "data": cfg.data.name, "seed": cfg.seed, "noise_rate": cfg.data.label_noise.rate,
          "epochs": cfg.trainer.epochs, "lr": cfg.optim.lr, "batch_size": cfg.trainer.batch_size}
    logger.log_hparams(hp, {f"hparam/{k}": v for k, v in final.items()
                            if isinstance(v, float) and k.split("/")[0] in ("test", "test_ts", "val", "temperature")})
    return final


def write_run_figures(cfg: Config, model: nn.Module, ds: Dataset, norm: Normalize,
                      amp: contextlib.AbstractContextManager, logits: dict[str, Tensor], labels: dict[str, Tensor],
                      temperature: float | None, logger: RunLogger, run_dir: Path) -> None:
    """The test split's figures, once per run: PNGs in run_dir, images in TensorBoard.
    A plotting failure is logged and never loses the run's metrics."""
    t_fig, cpu_fig = time.perf_counter(), time.process_time()
    try:
        from ls_bench.calibration import select_per_class, write_figures  # imports matplotlib lazily

        pen = None
        if model.head.out_features >= 3:  # Müller et al. Fig. 1 needs three class templates
            classes = tuple(cfg.metrics.penultimate_classes)
            idx = select_per_class(labels["test"], classes, per_class=100)
            feats = predict(model, ds.test.take(idx).to(ds.test.y.device), cfg.trainer.eval_batch_size, norm, amp,
                            features=True)
            pen = (feats, labels["test"][idx], model.head.weight.detach().float().cpu(), classes)
        write_figures(logger, run_dir, logits["test"], labels["test"], cfg.metrics.n_bins, temperature,
                      pen, ds.classes, f"{cfg.model.name}, {cfg.loss.name} eps={cfg.loss.epsilon:g}")
    except Exception as e:  # a plotting failure must not lose the run's metrics
        log.warning("calibration figures failed (%s: %s); metrics are unaffected", type(e).__name__, e)
    log.info("calibration figures: %.2f s (%.2f s CPU)", time.perf_counter() - t_fig, time.process_time() - cpu_fig)
