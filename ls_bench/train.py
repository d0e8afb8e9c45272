"""The training loop: train_one_epoch, predict, evaluate, fit. Plain functions, read top to bottom.

fit() owns a run directory: it resumes from last.pt when one is there, skips the run when
final.json is there, logs every epoch, and writes final.json (or failed.json) at the end.
Operational code lives in rooms of its own: machine (device, precision, threads), signals
(stopping), checkpoint (last.pt), files (atomic writes), logs (TensorBoard + JSON).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ls_bench import __version__
from ls_bench.calibration import fit_temperature
from ls_bench.checkpoint import CheckpointError, check_same_run, load_checkpoint, restore_training_state, save_checkpoint
from ls_bench.config import Config, SchedConfig, flat_config
from ls_bench.data import Dataset, Normalize, Split, check_dataset, eval_batches, load_dataset, train_batches
from ls_bench.errors import RunFailed, bad, first_line
from ls_bench.files import atomic_write, write_json
from ls_bench.logs import RunLogger, truncate_jsonl
from ls_bench.losses import Criterion, as_multiclass, check_loss, make_criterion
from ls_bench.machine import (PRECISIONS, autocast, configure_backends, git_commit, is_out_of_memory,
                              precision_name, resolve_device, resolve_precision, set_threads, tune_allocator)
from ls_bench.metrics import compute_metrics, default_top_k
from ls_bench.mixing import check_mix, check_mix_with_loss, make_mixer
from ls_bench.models import build_model, check_model, outputs_fp32_head
from ls_bench.robustness import check_eval, check_eval_against_data, ood_results, shift_metrics
from ls_bench.evaluation import evaluate_split
from ls_bench.seeds import derive_seed, run_seeds
from ls_bench.signals import Interrupted, StopFlag, stop_on_signals
from ls_bench.teacher import check_teacher, find_teacher, load_teacher

__all__ = ["CheckpointError", "Interrupted", "RunFailed", "fit", "lr_factor", "predict", "train_one_epoch"]

log = logging.getLogger(__name__)

NAN_CHECK_EVERY = 20  # steps between host reads of the loss (NaN check, progress bar): no per-step sync


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


# --- what a run holds ----------------------------------------------------------------------------


@dataclass
class Run:
    """One run's model, data, loss and optimiser state, built once by setup() and handed to the
    loop's functions instead of a dozen arguments each."""

    cfg: Config
    ds: Dataset
    criterion: Criterion
    model: nn.Module  # eager: evaluation, checkpoints
    train_model: nn.Module  # what the training step calls (torch.compile'd or the same module)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    norm: Normalize
    device: torch.device
    amp_dtype: torch.dtype | None  # None: fp32
    seeds: dict[str, int]
    steps: int  # optimizer steps per epoch
    top_k: int | None
    machine: dict[str, Any] = field(default_factory=dict)  # threads, allocator: for run_info.json
    backends: dict[str, Any] = field(default_factory=dict)  # TF32, determinism: for run_info.json

    def loss_generator(self, seed: int) -> torch.Generator:
        """label_flip's random numbers: on the run's device, or the CPU for exact reruns on CUDA."""
        where = "cpu" if self.cfg.trainer.deterministic else self.device
        return torch.Generator(where).manual_seed(seed)

    def amp(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def training_state(self) -> dict[str, Any]:
        """What last.pt holds besides the epoch and history, by name (load_state_dict targets)."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}


# --- one epoch, inference --------------------------------------------------------------------


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
    bar = tqdm(batches, total=run.steps, desc=desc, leave=False, disable=not progress)
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
    # A fingerprint of the batch order: runs that differ only in the loss must show the same one.
    order_sha = hashlib.sha256(torch.cat(order).cpu().numpy().tobytes()).hexdigest()[:16]
    return {"train/loss": loss_sum.item() / seen, "train/acc": correct.item() / seen, "data/order_sha": order_sha}


@torch.inference_mode()
def predict(model: nn.Module, split: Split, batch_size: int, norm: Normalize,
            amp: contextlib.AbstractContextManager, features: bool = False) -> Tensor:
    """Logits (or penultimate features) of a whole split, float32 on the CPU, in large batches.

    The body runs under `amp` (bf16/fp16 autocast), the last layer in float32 outside it: logits
    rounded to bf16 (8 bits of mantissa) would put their rounding into NLL, ECE and the fitted
    temperature."""
    model.eval()
    out = [outputs_fp32_head(model, x, amp, features) for x, _ in eval_batches(split, batch_size, norm)]
    z = torch.cat(out).cpu() if out else torch.empty(0, 0)
    return z if features else as_multiclass(z)


def evaluate(run: Run) -> tuple[dict[str, float], dict[str, Tensor]]:
    """`val/*` and `test/*` metrics of the model now, and each split's logits."""
    metrics: dict[str, float] = {}
    logits: dict[str, Tensor] = {}
    for s in ("val", "test"):
        split = getattr(run.ds, s)
        if len(split):
            z = logits[s] = predict(run.model, split, run.cfg.trainer.eval_batch_size, run.norm, run.amp())
            m = compute_metrics(z, split.y.cpu(), run.cfg.metrics.n_bins, run.top_k)
            metrics.update({f"{s}/{k}": v for k, v in m.items()})
    return metrics, logits


# --- set-up ------------------------------------------------------------------------------------


def check_names(cfg: Config) -> None:
    """The names the registries define (data.name, model.name, loss.name and its prior / weight
    syntax); the CLI calls it when it builds the config, setup() before the data loads."""
    check_dataset(cfg.data.name)
    check_model(cfg.model.name)
    check_loss(cfg.loss)
    check_mix(cfg.mix.name, cfg.mix.alpha, cfg.mix.prob)
    check_mix_with_loss(cfg.mix.name, cfg.loss.name, cfg.mix.alpha, cfg.mix.prob)
    if cfg.loss.name == "distill":
        check_teacher(cfg)
    check_eval(cfg)


def setup(cfg: Config) -> Run:
    """Everything that can fail on bad input, done before any training starts."""
    check_names(cfg)
    threads = set_threads(cfg.trainer.num_threads)
    allocator_tuned = tune_allocator()
    device = resolve_device(cfg.trainer.device)
    amp_dtype = resolve_precision(cfg.trainer.precision, device)
    seeds = run_seeds(cfg)
    ds = load_dataset(cfg.data, seeds["noise"])
    check_metrics_against_data(cfg, ds)
    check_eval_against_data(cfg, ds.test, ds.num_classes)
    backends = configure_backends(device, amp_dtype, cfg.trainer.deterministic)
    ds = ds.to(device)
    norm = Normalize(ds.mean, ds.std, device, cfg.trainer.channels_last)
    mixer = make_mixer(cfg.mix.name, cfg.mix.alpha, cfg.mix.prob) if cfg.mix.name != "none" else None
    teacher = (load_teacher(find_teacher(cfg), cfg, ds, norm, device, lambda: autocast(device, amp_dtype))
               if cfg.loss.name == "distill" else None)
    criterion = make_criterion(cfg.loss, ds.num_classes, ds.class_counts(), mixer, teacher).to(device)

    torch.manual_seed(seeds["init"])  # initial weights depend on the init seed only, never on ε
    model = build_model(cfg.model.name, ds.in_channels, criterion.num_outputs, ds.image_size).to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    o, t = cfg.optim, cfg.trainer
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                                weight_decay=o.weight_decay)
    steps = max(1, len(ds.train) // t.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, t.epochs, cfg.sched))
    return Run(cfg, ds, criterion, model, compiled(model, t.compile), optimizer, scheduler,
               torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
               norm, device, amp_dtype, seeds, steps,
               default_top_k(ds.num_classes, cfg.metrics.top_k),
               {"threads": threads, "allocator_tuned": allocator_tuned}, backends)


def compiled(model: nn.Module, mode: Any) -> nn.Module:
    """trainer.compile: false (eager), true (torch.compile's default) or a torch.compile mode;
    "reduce-overhead" captures CUDA graphs, which pays off for small models on a GPU (a ResNet-20
    step is a few hundred tiny kernels). Shapes are static: every training batch has the same size
    (drop_last). Evaluation stays eager."""
    if mode is False:
        return model
    return torch.compile(model) if mode is True else torch.compile(model, mode=mode)


def check_metrics_against_data(cfg: Config, ds: Dataset) -> None:
    """The metric settings that need K: top_k and the classes of penultimate.png."""
    K, name = ds.num_classes, cfg.data.name
    if cfg.metrics.top_k is not None and cfg.metrics.top_k > K:
        raise bad("metrics.top_k", cfg.metrics.top_k, f"must be <= the {K} classes of {name}")
    pc = list(cfg.metrics.penultimate_classes)
    if cfg.metrics.figures and K >= 3 and max(pc) >= K:
        raise bad("metrics.penultimate_classes", pc, f"labels must be < the {K} classes of {name} "
                  f"(after data.classes renumbering)")


def run_info(run: Run, config: dict[str, Any]) -> dict[str, Any]:
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
        "image_shape": list(ds.train.x.shape[1:]),
        "determinism": {**run.backends, "note": "bit-identical reruns on the CPU with the same threads; on CUDA "
                        "only with trainer.deterministic=true (same GPU model, same software)"},
        "label_noise": {"rate_requested": cfg.data.label_noise.rate, "flipped": len(ds.noisy_idx),
                        "rate_realised": len(ds.noisy_idx) / len(ds.train)},
        "normalization": {"mean": list(ds.mean), "std": list(ds.std)},
        **({"teacher": teacher.info} if (teacher := run.criterion.teacher) is not None else {}),
    }


def log_start(run: Run, info: dict[str, Any]) -> None:
    ds, cfg = run.ds, run.cfg
    target = run.criterion.expected_target(torch.tensor([0], device=run.device))[0]
    log.info("%s: %d train / %d val / %d test, %d classes; %s on %s (%s, %d threads); target for class 0: %s",
             cfg.data.name, len(ds.train), len(ds.val), len(ds.test), ds.num_classes, cfg.model.name, run.device,
             info["precision"], info["threads"], [round(v, 4) for v in target.tolist()])


# --- the run -----------------------------------------------------------------------------------


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
        info = run_info(run, config)
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
            logger.log_epoch(epoch + 1, m)
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
    m["lr"] = lr
    m["perf/train_img_per_s"] = min(run.steps * cfg.trainer.batch_size, len(run.ds.train)) / train_s
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


# --- the end of a run ----------------------------------------------------------------------------


def finish(run: Run, history: list[dict[str, Any]], logger: RunLogger, run_dir: Path,
           last_logits: dict[str, Tensor]) -> dict[str, Any]:
    """Final metrics: the last epoch's, temperature scaling on val, predictions saved for later.

    `last_logits` are the final epoch's val/test logits when this process computed them (not
    after a resume past the last epoch); reusing them saves a second pass over val and test."""
    cfg, ds = run.cfg, run.ds
    final: dict[str, Any] = {k: v for k, v in history[-1].items() if not k.startswith("perf/")}
    logits = {s: last_logits[s] if s in last_logits else
              predict(run.model, getattr(ds, s), cfg.trainer.eval_batch_size, run.norm, run.amp())
              for s in ("val", "test")}
    labels = {s: getattr(ds, s).y.cpu() for s in ("val", "test")}
    if cfg.metrics.temperature_scaling:
        t = final["temperature"] = fit_temperature(logits["val"], labels["val"])
        for s in ("val", "test"):
            m = compute_metrics(logits[s] / t, labels[s], cfg.metrics.n_bins, run.top_k)
            final.update({f"{s}_ts/{k}": v for k, v in m.items()})
    extra_logits = final_evaluations(run, final, logits["test"], labels["test"], final.get("temperature"))
    if len(ds.noisy_idx):
        final.update(memorisation(run))
    if run.criterion.teacher is not None:
        final.update(run.criterion.teacher.numbers)
    final["epochs"] = len(history)
    final["metric_settings"] = {"n_bins": cfg.metrics.n_bins, "top_k": run.top_k, "softmax": "float64",
                                "binning": "equal-width ((m-1)/M, m/M], 0 in the first bin, 1 in the last",
                                "adaece_binning": "equal-mass: bin floor(M * #{j: conf_j < conf_i} / N)",
                                "temperature_applied_to": "*_ts/ only"}
    save_predictions(run_dir / "predictions.npz", logits, labels, extra_logits)
    if cfg.metrics.figures:
        write_run_figures(run, logits, labels, final.get("temperature"), logger, run_dir)
    log_final_to_tensorboard(logger, cfg, final, history[-1])
    return final


HPARAM_SECTIONS = ("test", "test_ts", "val", "temperature")  # the metrics of TensorBoard's HParams tab


def log_final_to_tensorboard(logger: RunLogger, cfg: Config, final: dict[str, Any], last: dict[str, Any]) -> None:
    """The final-only values (test_ts/*, temperature, ...) as ordinary scalars at the last epoch's
    step, then the HParams entry, whose metrics are scalars the run logs: an epoch metric's last
    value is the final epoch's, so test/acc in the HParams tab is final.json's test/acc."""
    numbers = {k: v for k, v in final.items() if isinstance(v, float)}
    logger.log_scalars(last["epoch"], {k: v for k, v in numbers.items() if k not in last})
    logger.log_hparams(hparams_of(cfg), [k for k in numbers if k.split("/")[0] in HPARAM_SECTIONS])


def hparams_of(cfg: Config) -> dict[str, Any]:
    """The config keys shown as columns in TensorBoard's HParams tab."""
    return {"loss": cfg.loss.name, "epsilon": cfg.loss.epsilon, "prior": str(cfg.loss.prior), "mix": cfg.mix.name,
            "model": cfg.model.name, "data": cfg.data.name, "seed": cfg.seed, "noise_rate": cfg.data.label_noise.rate,
            "epochs": cfg.trainer.epochs, "lr": cfg.optim.lr, "batch_size": cfg.trainer.batch_size}


def memorisation(run: Run) -> dict[str, float]:
    """Memorisation of the flipped training labels (Zhang et al. 2017; Lukasik et al. 2020)."""
    ds = run.ds
    noisy = ds.noisy_idx.cpu()
    z = predict(run.model, ds.train.take(noisy).to(ds.train.y.device), run.cfg.trainer.eval_batch_size, run.norm,
                run.amp())
    pred = z.argmax(1)
    return {"train_noisy/acc_noisy_label": float((pred == ds.train.y.cpu()[noisy]).float().mean()),
            "train_noisy/acc_true_label": float((pred == ds.clean_train_y[noisy].cpu()).float().mean()),
            "data/noise_rate_realised": len(ds.noisy_idx) / len(ds.train)}


def final_evaluations(run: Run, final: dict[str, Any], z: Tensor, y: Tensor, temperature: float | None) -> dict:
    """Selective classification and ECE's own uncertainty on test (and test_ts), then shift and
    OOD when eval.* asks for them; adds to `final`, returns the OOD logits to save."""
    cfg, t0 = run.cfg, time.perf_counter()
    seed, n_bins = cfg.data.split_seed, cfg.metrics.n_bins
    final.update({f"test/{k}": v for k, v in evaluate_split(z, y, n_bins, cfg.eval.bootstrap, seed).items()})
    if temperature is not None:
        m = evaluate_split(z / temperature, y, n_bins, cfg.eval.bootstrap, seed)
        final.update({f"test_ts/{k}": v for k, v in m.items()})

    def predict_split(split: Split) -> Tensor:
        return predict(run.model, split, cfg.trainer.eval_batch_size, run.norm, run.amp())

    extra: dict[str, Any] = {}
    if cfg.eval.corruptions:
        final.update(shift_metrics(run, temperature, predict_split))
    if cfg.eval.ood:
        m, extra = ood_results(run, z, predict_split)
        final.update(m)
    log.info("final evaluations (selective, bootstrap, shift, OOD): %.2f s", time.perf_counter() - t0)
    return extra


def save_predictions(path: Path, logits: dict[str, Tensor], labels: dict[str, Tensor],
                     extra: dict[str, Any] | None = None) -> None:
    """float32 logits and int64 labels, untempered (and eval.ood's `ood_<source>_logits`); recompute
    any metric later with ls_bench.metrics.compute_metrics(torch.from_numpy(f["test_logits"]), ...)."""
    arrays = {f"{s}_{k}": v for s in logits for k, v in (("logits", logits[s].numpy()), ("labels", labels[s].numpy()))}
    arrays.update(extra or {})
    # np.savez adds ".npz" to a name without it: write to an open file instead of the temporary's name.
    atomic_write(path, lambda tmp: _savez(tmp, arrays))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def write_run_figures(run: Run, logits: dict[str, Tensor], labels: dict[str, Tensor], temperature: float | None,
                      logger: RunLogger, run_dir: Path) -> None:
    """The test split's figures, once per run: PNGs in run_dir, images in TensorBoard.
    A plotting failure is logged and never loses the run's metrics."""
    cfg, model = run.cfg, run.model
    t_fig, cpu_fig = time.perf_counter(), time.process_time()
    try:
        from ls_bench.calibration import SplitFigures, select_per_class, write_figures  # matplotlib lazily

        pen = None
        if model.head.out_features >= 3:  # Müller et al. Fig. 1 needs three class templates
            classes = tuple(cfg.metrics.penultimate_classes)
            idx = select_per_class(labels["test"], classes, per_class=100)
            feats = predict(model, run.ds.test.take(idx).to(run.ds.test.y.device), cfg.trainer.eval_batch_size,
                            run.norm, run.amp(), features=True)
            pen = (feats, labels["test"][idx], model.head.weight.detach().float().cpu(), classes)
        write_figures(logger, run_dir, SplitFigures(logits["test"], labels["test"], cfg.metrics.n_bins, temperature, pen,
                                                    run.ds.classes, f"{cfg.model.name}, {cfg.loss.name} "
                                                                    f"eps={cfg.loss.epsilon:g}"))
    except Exception as e:  # a plotting failure must not lose the run's metrics
        log.warning("calibration figures failed (%s: %s); metrics are unaffected", type(e).__name__, e)
    log.info("calibration figures: %.2f s (%.2f s CPU)", time.perf_counter() - t_fig, time.process_time() - cpu_fig)
