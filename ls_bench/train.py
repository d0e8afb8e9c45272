"""The training loop: train_one_epoch, evaluate, fit. Plain functions, read top to bottom.

fit() owns a run directory: it resumes from last.pt when one is there, skips the run when
final.json is there, logs every epoch, and writes final.json (or failed.json) at the end.
setup() (ls_bench.run) builds the run's state; finish() (ls_bench.finish) ends it. Operational
code lives in rooms of its own: machine (device, precision, threads), signals (stopping),
checkpoint (last.pt), files (atomic writes), logs (TensorBoard + JSON).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ls_bench import __version__
from ls_bench.checkpoint import (
    CheckpointError,
    check_same_run,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from ls_bench.config import Config, epsilon_values, flat_config
from ls_bench.data.loader import train_batches
from ls_bench.errors import RunFailed, first_line
from ls_bench.evaluate.metrics import compute_metrics
from ls_bench.files import write_json
from ls_bench.finish import finish
from ls_bench.logs import RunLogger, truncate_jsonl
from ls_bench.losses import as_multiclass
from ls_bench.machine import PRECISIONS, git_commit, is_out_of_memory, precision_name
from ls_bench.run import Run, setup
from ls_bench.seeds import derive_seed
from ls_bench.signals import StopFlag, stop_on_signals

log = logging.getLogger(__name__)

NAN_CHECK_EVERY = 20  # steps between host reads of the loss (NaN check, progress bar): no per-step sync


# --- one epoch, evaluation ------------------------------------------------------------------------


def train_one_epoch(run: Run, batches: Iterable[tuple[Tensor, Tensor, Tensor]], g: torch.Generator,
                    desc: str, mix_g: torch.Generator | None = None) -> dict[str, float]:
    """One pass over the batches (g: label_flip's draws, mix_g: mixup/CutMix's, on the CPU). Loss
    and accuracy accumulate on the device and are read once every NAN_CHECK_EVERY steps (NaN check,
    progress bar) and at the end, so the device never waits."""
    model, criterion, optimizer, scaler = run.train_model, run.criterion, run.optimizer, run.scaler
    model.train()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    first_bad = torch.full((), -1, device=run.device, dtype=torch.long)  # first step with a non-finite loss
    seen, order, progress = 0, [], run.cfg.trainer.progress
    bar = tqdm(batches, total=run.steps_per_epoch, desc=desc, leave=False, disable=not progress)
    for step, (x, y, idx) in enumerate(bar):
        StopFlag.check(f"at step {step} of the epoch")
        order.append(idx)
        batch = criterion.targets(x, y, g, mix_g, idx)  # input (mixed?), target distribution [B, K], teacher
        with run.amp():
            logits = model(batch.x)
        loss = criterion.loss(logits, batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        run.scheduler.step()
        loss = loss.detach()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
        loss_sum += loss * len(y)
        correct += (as_multiclass(logits.detach()).argmax(1) == batch.acc_labels).sum()  # mixed: the dominant label
        seen += len(y)
        if (step + 1) % NAN_CHECK_EVERY == 0:
            if progress:
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}")
            if first_bad.item() >= 0:
                break
    if first_bad.item() >= 0:
        raise RunFailed(f"non-finite training loss at step {first_bad.item()} of the epoch")
    criterion.end_epoch()  # online LS: S from this epoch's correct predictions (a no-op for fixed targets)
    # A fingerprint of the batch order: runs that differ only in the loss must show the same one.
    order_sha = hashlib.sha256(torch.cat(order).cpu().numpy().tobytes()).hexdigest()[:16]
    return {"train/loss": loss_sum.item() / seen, "train/acc": correct.item() / seen, "data/order_sha": order_sha}


def evaluate(run: Run) -> tuple[dict[str, float], dict[str, Tensor]]:
    """`val/*` and `test/*` metrics of the model now, and each split's logits."""
    metrics: dict[str, float] = {}
    logits: dict[str, Tensor] = {}
    for s in ("val", "test"):
        split = getattr(run.ds, s)
        if len(split):
            z = logits[s] = run.predict(split)
            m = compute_metrics(z, split.y.cpu(), run.cfg.metrics.n_bins, run.top_k)
            metrics.update({f"{s}/{k}": v for k, v in m.items()})
    return metrics, logits


# --- the run -----------------------------------------------------------------------------------


def build_run_info(run: Run, config: dict[str, Any]) -> dict[str, Any]:
    """run_info.json: what ran, where, with which seeds and data sizes."""
    ds, cfg = run.ds, run.cfg
    # Fingerprint of the initial weights: runs that differ only in the loss must show the same one.
    # (Taken after a resume it fingerprints the resumed weights; fit() computes it before resuming.)
    init_sha = hashlib.sha256(b"".join(v.cpu().numpy().tobytes()
                                       for v in run.model.state_dict().values())).hexdigest()[:16]
    return {
        "config": config, "version": __version__, "git_commit": git_commit(), "torch": torch.__version__,
        "python": platform.python_version(), "device": str(run.device), "precision": precision_name(run.amp_dtype),
        **run.machine, "seeds": run.seeds, "init_sha": init_sha, "classes": ds.classes,
        "sizes": {k: len(getattr(ds, k)) for k in ("train", "val", "test")},
        "class_counts": ds.true_class_counts().tolist(),  # training images per true class (data.imbalance's n_k)
        "image_shape": list(ds.train.x.shape[1:]),
        "determinism": {**run.backends, "note": "bit-identical reruns on the CPU with the same threads; on CUDA "
                        "only with trainer.deterministic=true (same GPU model, same software)"},
        "label_noise": {"rate_requested": cfg.data.label_noise.rate, "flipped": len(ds.noisy_idx),
                        "rate_realised": len(ds.noisy_idx) / len(ds.train), **ds.noise_info},
        "normalization": {"mean": list(ds.mean), "std": list(ds.std)},
        **({"teacher": teacher.info} if (teacher := run.criterion.teacher) is not None else {}),
        **({"init_from": run.init_from} if run.init_from else {}),
        # a class-wise ε (a list, or MiSLAS's schedule from the class counts): each class's, as trained
        **({"class_epsilon": eps.tolist()} if isinstance(eps := run.criterion.epsilon, Tensor) else {}),
    }


def log_start(run: Run, info: dict[str, Any]) -> None:
    ds, cfg = run.ds, run.cfg
    target = run.criterion.expected_target(torch.tensor([0], device=run.device))[0]
    log.info("%s: %d train / %d val / %d test, %d classes; %s on %s (%s, %d threads); target for class 0: %s",
             cfg.data.name, len(ds.train), len(ds.val), len(ds.test), ds.num_classes, cfg.model.name, run.device,
             info["precision"], info["threads"], [round(v, 4) for v in target.tolist()])
    if run.init_from:
        log.info("starting from the final weights of %s (loss %s, ε %s, seed %s, test acc %s)", *(
            run.init_from[k] for k in ("dir", "loss", "epsilon", "seed", "test_acc")))
    elif any(e < 0 for e in epsilon_values(cfg.loss.epsilon) or []):
        log.warning("loss.epsilon=%s < 0 from random weights: the loss rewards pushing the wrong classes' "
                    "log-probabilities down without limit and usually diverges; Wei et al. fine-tune a "
                    "cross-entropy model (model.init_from=RUN) at lr 1e-6 (docs/losses.md)", cfg.loss.epsilon)


@dataclass
class Progress:
    """How far a run got: its epoch records and the epoch last.pt holds (0: none)."""

    history: list[dict[str, Any]]
    saved_epoch: int


def previous_result(run_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """final.json of a finished run of this config (then the run is skipped), else None."""
    final_path = run_dir / "final.json"
    if final_path.exists() or (run_dir / "last.pt").exists():
        check_same_run(run_dir, config)
    if final_path.exists():
        log.info("%s exists: run already finished, skipping", final_path)
        return json.loads(final_path.read_text())
    StopFlag.check("before this run started")
    return None


def fit(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate one configuration into `run_dir`; returns the final metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = flat_config(cfg)
    if (done := previous_result(run_dir, config)) is not None:
        return done
    (run_dir / "failed.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    ckpt, progress = run_dir / "last.pt", Progress([], 0)
    with recording_failure(run_dir, progress, t0, only_oom=True):  # from the first device allocation on
        run = setup(cfg)
        info = build_run_info(run, config)
        if ckpt.exists():
            run, (progress.saved_epoch, progress.history) = resume(run, ckpt)
    start_epoch, history = progress.saved_epoch, progress.history
    log_start(run, info)
    with contextlib.ExitStack() as cleanup, recording_failure(run_dir, progress, t0):
        # From here on, a failed write (disk full, quota, permissions) is a one-line RunFailed.
        logger = start_run_files(run_dir, run, info, start_epoch)
        cleanup.callback(logger.close)
        cleanup.enter_context(stop_on_signals())
        logits: dict[str, Tensor] = {}  # val/test logits of the latest evaluation, reused by finish()
        epochs = tqdm(range(start_epoch, cfg.trainer.epochs), desc="epochs", disable=not cfg.trainer.progress,
                      initial=start_epoch, total=cfg.trainer.epochs)
        for epoch in epochs:
            m, logits = run_epoch(run, epoch, logits)
            history.append({"epoch": epoch + 1, **m})
            logger.log_epoch(epoch + 1, m, run.criterion.images())  # online LS: S as a picture
            epochs.set_postfix(loss=f"{m['train/loss']:.4f}", val_acc=f"{m.get('val/acc', float('nan')):.3f}")
            if cfg.trainer.checkpoint:
                write_checkpoint(ckpt, run, epoch + 1, history)
                progress.saved_epoch = epoch + 1
        final = finish(run, history, logger, run_dir, logits)
        final["time_s"] = time.perf_counter() - t0
        write_json(run_dir / "final.json", final)
        return final


def resume(run: Run, path: Path) -> tuple[Run, tuple[int, list[dict[str, Any]]]]:
    """The run continued from last.pt, in the precision it was trained in (see adopt_precision)."""
    state = load_checkpoint(path)
    run = adopt_precision(run, state, path)
    return run, restore_training_state(state, path, run.training_state())


def adopt_precision(run: Run, state: dict[str, Any], path: Path) -> Run:
    """A run resumes in the precision its checkpoint was trained in. `auto` resolves per machine
    (bf16 on one, fp16 + GradScaler or fp32 on another) and trainer.device may change between
    launches, so with precision=auto the saved precision is reused where it runs here; otherwise a
    mismatch is refused in one line instead of mixing precisions (or failing on the scaler state)."""
    saved, now = state.get("precision"), precision_name(run.amp_dtype)
    if saved is None or saved == now:
        return run
    usable = saved in PRECISIONS and not (saved == "float16" and run.device.type != "cuda")
    if run.cfg.trainer.precision == "auto" and usable:
        log.info("resuming in %s, the precision %s was trained in (auto would pick %s here)", saved, path, now)
        dtype = PRECISIONS[saved]
        return replace(run, amp_dtype=dtype, scaler=torch.amp.GradScaler(run.device.type,
                                                                       enabled=dtype == torch.float16))
    raise CheckpointError(f"checkpoint {path} was trained in {saved} on {state.get('device_type', '?')}, this run "
                          f"would use {now} on {run.device.type} (trainer.precision={run.cfg.trainer.precision}); "
                          f"resume it where {saved} runs, or delete it to start over")


def start_run_files(run_dir: Path, run: Run, info: dict[str, Any], start_epoch: int) -> RunLogger:
    """run_info.json, noisy_indices.npy, a metrics.jsonl without the epochs to be redone, the logger."""
    if start_epoch:
        truncate_jsonl(run_dir / "metrics.jsonl", start_epoch)  # no epoch is logged twice
    else:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    write_json(run_dir / "run_info.json", info)
    if len(run.ds.noisy_idx):
        np.save(run_dir / "noisy_indices.npy", run.ds.noisy_idx.cpu().numpy())
    return RunLogger(run_dir, purge_step=start_epoch + 1)


def run_epoch(run: Run, epoch: int, logits: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Train one epoch (0-based `epoch`), evaluate when due; the epoch's record and the latest logits."""
    cfg, t_ep = run.cfg, time.perf_counter()
    batches = train_batches(run.ds.train, cfg.trainer.batch_size, derive_seed(run.seeds["data"], f"epoch{epoch}"),
                            run.ds.augment, run.norm)
    g = run.loss_generator(derive_seed(run.seeds["data"], f"flip{epoch}"))
    # mixup/CutMix draws (λ, partners, boxes) from the data seed's stream: runs that differ only in
    # the loss mix the same pairs.
    mix_g = torch.Generator().manual_seed(derive_seed(run.seeds["data"], f"mix{epoch}"))
    lr = run.optimizer.param_groups[0]["lr"]  # of the epoch's first step (the scheduler steps per batch)
    try:
        m: dict[str, Any] = train_one_epoch(run, batches, g, f"epoch {epoch + 1}", mix_g)
    except RunFailed as e:
        raise RunFailed(f"epoch {epoch + 1}: {e}") from None
    train_s = time.perf_counter() - t_ep
    if run.criterion.teacher is not None:  # what the teacher gave over the epoch: teacher/train_*
        m.update(run.criterion.teacher.epoch_numbers())
    m["lr"] = lr
    m["perf/train_img_per_s"] = min(run.steps_per_epoch * cfg.trainer.batch_size, len(run.ds.train)) / train_s
    if (epoch + 1) % cfg.trainer.eval_every == 0 or epoch + 1 == cfg.trainer.epochs:
        t_eval = time.perf_counter()
        evaluated, logits = evaluate(run)
        m.update(evaluated)
        m["perf/eval_s"] = time.perf_counter() - t_eval
    m["perf/epoch_s"] = time.perf_counter() - t_ep
    return m, logits


def write_checkpoint(path: Path, run: Run, epoch: int, history: list[dict[str, Any]]) -> None:
    state = {name: obj.state_dict() for name, obj in run.training_state().items()}
    try:
        save_checkpoint(path, {**state, "epoch": epoch, "history": history,
                               "precision": precision_name(run.amp_dtype), "device_type": run.device.type})
    except OSError as e:  # disk full, quota, read-only: the previous last.pt is untouched
        raise RunFailed(f"epoch {epoch}: cannot write {path} ({e.strerror or e}); "
                        f"the checkpoint of epoch {epoch - 1} is kept") from None


@contextlib.contextmanager
def recording_failure(run_dir: Path, progress: Progress, t0: float, only_oom: bool = False) -> Iterator[None]:
    """Turn a run's failure into failed.json and one line: a non-finite loss, a failed write,
    running out of GPU memory (also cuBLAS/cuDNN allocation failures); with `only_oom` (set-up,
    where an OSError is a data problem with its own message) just the last. Interrupts and config
    errors pass through unrecorded."""
    try:
        yield
    except (RunFailed, OSError, RuntimeError) as e:
        if not (is_out_of_memory(e) or (not only_oom and isinstance(e, (RunFailed, OSError)))):
            raise
        epochs = len(progress.history)
        if isinstance(e, OSError):
            failure = write_failure(e, epochs, progress.saved_epoch)
        elif is_out_of_memory(e):  # one line, like every other failure
            failure = RunFailed(f"epoch {epochs + 1}: out of GPU memory ({first_line(e)[:200]}); "
                                f"lower trainer.batch_size or trainer.eval_batch_size")
        else:
            failure = e
        with contextlib.suppress(OSError):  # on a full disk this fails too; the error itself must surface
            write_json(run_dir / "failed.json", {"reason": first_line(failure), "type": type(failure).__name__,
                                                 "epoch": epochs, "time_s": time.perf_counter() - t0})
        if failure is e:
            raise
        raise failure from e


def write_failure(e: OSError, epochs_done: int, saved_epoch: int) -> RunFailed:
    """A failed write of a run file (metrics.jsonl, TensorBoard events, predictions, final.json:
    disk full, quota, permissions) as the one line the CLI prints; last.pt is written separately."""
    what = f"cannot write {e.filename} ({e.strerror})" if e.filename else f"write error ({e})"
    kept = (f"last.pt keeps epoch {saved_epoch}: rerun the same command to resume" if saved_epoch
            else "no checkpoint to resume from")
    when = f"after epoch {epochs_done}" if epochs_done else "before the first epoch"
    return RunFailed(f"{when}: {what}; {kept}")
