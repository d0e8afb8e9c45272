"""Finishing a run: the final metrics (last epoch, temperature scaling on val, the evaluation
suites), predictions.npz, the calibration figures and TensorBoard's HParams entry."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ls_bench.config import Config
from ls_bench.evaluate.calibration import fit_temperature
from ls_bench.evaluate.classwise import class_results, group_metrics, is_long_tailed
from ls_bench.evaluate.figures import SplitFigures, select_per_class, write_figures
from ls_bench.evaluate.human import human_results, noise_outputs
from ls_bench.evaluate.metrics import compute_metrics
from ls_bench.evaluate.posthoc import posthoc_metrics
from ls_bench.evaluate.representation import representation_results
from ls_bench.evaluate.scores import best_normalised, score_metrics
from ls_bench.evaluate.selective import evaluate_split
from ls_bench.evaluate.shift import ood_results, shift_metrics
from ls_bench.files import atomic_write, atomic_write_text, write_json
from ls_bench.logs import RunLogger, read_jsonl
from ls_bench.run import Run
from ls_bench.teacher import checked_teacher

log = logging.getLogger(__name__)


def finish(run: Run, history: list[dict[str, Any]], logger: RunLogger, run_dir: Path,
           last_logits: dict[str, Tensor]) -> dict[str, Any]:
    """Final metrics: the last epoch's, temperature scaling on val, predictions saved for later.

    `last_logits` are the final epoch's val/test logits when this process computed them (not
    after a resume past the last epoch); reusing them saves a second pass over val and test."""
    cfg, ds = run.cfg, run.ds
    final: dict[str, Any] = {k: v for k, v in history[-1].items() if not k.startswith("perf/")}
    logits = {s: last_logits[s] if s in last_logits else
              run.predict(getattr(ds, s))
              for s in ("val", "test")}
    labels = {s: getattr(ds, s).y.cpu() for s in ("val", "test")}
    if cfg.metrics.temperature_scaling and "ts" in cfg.metrics.posthoc:
        t = final["temperature"] = fit_temperature(logits["val"], labels["val"])
        for s in ("val", "test"):
            m = compute_metrics(logits[s] / t, labels[s], cfg.metrics.n_bins, run.top_k)
            final.update({f"{s}_ts/{k}": v for k, v in m.items()})
    final.update(imbalance_results(run, logits["test"], labels["test"], final.get("temperature")))
    extra_logits = final_evaluations(run, final, logits["test"], labels["test"], final.get("temperature"))
    final.update(posthoc_results(cfg, logits, labels, run.top_k, run_dir))
    if cfg.eval.representation:  # the penultimate features' geometry, and a linear probe on left-out classes
        final.update(representation(run, logits["test"], run_dir))
    if len(ds.noisy_idx):
        final.update(memorisation(run))
    if "test" in ds.human:  # eval.human: the model against CIFAR-10H's distributions
        final.update(human_results(logits["test"], labels["test"], ds.human["test"], final.get("temperature"),
                                   cfg.metrics.n_bins, cfg.metrics.figures, logger, run_dir))
    if ds.noise_info:  # data.label_noise.kind=human|matched: the transition matrix
        noise_outputs(ds.clean_train_y, ds.train.y, ds.classes, ds.noise_info, cfg.metrics.figures, logger, run_dir)
    if run.criterion.teacher is not None:
        final.update(checked_teacher(run.criterion.teacher.numbers, final))  # warns of a weaker teacher
    final["epochs"] = len(history)
    final["metric_settings"] = {"n_bins": cfg.metrics.n_bins, "top_k": run.top_k, "softmax": "float64",
                                "binning": "equal-width ((m-1)/M, m/M], 0 in the first bin, 1 in the last",
                                "adaece_binning": "equal-mass: bin floor(M * #{j: conf_j < conf_i} / N)",
                                "temperature_applied_to": "*_ts/ only"}
    save_predictions(run_dir / "predictions.npz", logits, labels, extra_logits)
    if cfg.metrics.figures:
        write_run_figures(run, logits, labels, final.get("temperature"), logger, run_dir,
                          best_normalised(final, logits["test"]))
    log_final_to_tensorboard(logger, cfg, final, history[-1])
    return final


def posthoc_results(cfg: Config, logits: dict[str, Tensor], labels: dict[str, Tensor], top_k: int | None,
                    run_dir: Path) -> dict[str, float]:
    """metrics.posthoc's methods besides ts (test_<m>/*) and metrics.scores (test/<score>/*), fitted on val;
    their parameters go to posthoc.json and their numbers into the last epoch's metrics.jsonl record too.
    None asked for (the default): nothing is computed or written."""
    methods = [m for m in cfg.metrics.posthoc if m != "ts"]
    if not methods and not cfg.metrics.scores:
        return {}
    t0 = time.perf_counter()
    val, test = (logits["val"], labels["val"]), (logits["test"], labels["test"])
    out, params = posthoc_metrics(methods, val, test, cfg.metrics.n_bins, top_k, cfg.eval.bootstrap,
                                  cfg.data.split_seed)
    numbers, p = score_metrics(list(cfg.metrics.scores), val, test)
    out.update(numbers)
    write_json(run_dir / "posthoc.json", {**params, **p})
    merge_last_record(run_dir / "metrics.jsonl", out)
    log.info("post-hoc calibration and scores (%s): %.2f s", ", ".join([*methods, *cfg.metrics.scores]),
             time.perf_counter() - t0)
    return out


def representation(run: Run, test_logits: Tensor, run_dir: Path) -> dict[str, float]:
    """eval.representation: test/repr/* and held_out/repr/* (ls_bench.evaluate.representation), also
    in the last epoch's metrics.jsonl record."""
    out = representation_results(run.cfg, run.ds.test, test_logits, lambda s: run.predict(s, features=True))
    merge_last_record(run_dir / "metrics.jsonl", out)
    return out


def merge_last_record(path: Path, values: dict[str, float]) -> None:
    """Add `values` to the last epoch's record of metrics.jsonl (rewritten atomically)."""
    rows = read_jsonl(path)
    if rows:
        rows[-1].update(values)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


HPARAM_SECTIONS = ("test", "test_ts", "val", "temperature")  # the metrics of TensorBoard's HParams tab


def log_final_to_tensorboard(logger: RunLogger, cfg: Config, final: dict[str, Any], last: dict[str, Any]) -> None:
    """The final-only values (test_ts/*, temperature, ...) as ordinary scalars at the last epoch's
    step, then the HParams entry, whose metrics are scalars the run logs: an epoch metric's last
    value is the final epoch's, so test/acc in the HParams tab is final.json's test/acc."""
    numbers = {k: v for k, v in final.items() if isinstance(v, float)}
    logger.log_scalars(last["epoch"], {k: v for k, v in numbers.items() if k not in last})
    logger.log_hparams(hparams_of(cfg), [k for k in numbers if k.split("/")[0] in HPARAM_SECTIONS])


def epsilon_text(loss: Any) -> str:
    """ε for a figure's title: a number, a class-wise list (issue 24) or its schedule's name."""
    if loss.epsilon_schedule is not None:
        return loss.epsilon_schedule
    eps = loss.epsilon
    return "[" + ",".join(f"{v:g}" for v in eps) + "]" if isinstance(eps, (list, tuple)) else f"{eps:g}"


def hparams_of(cfg: Config) -> dict[str, Any]:
    """The config keys shown as columns in TensorBoard's HParams tab."""
    return {"loss": cfg.loss.name, "epsilon": cfg.loss.epsilon, "prior": str(cfg.loss.prior), "mix": cfg.mix.name,
            "model": cfg.model.name, "data": cfg.data.name, "seed": cfg.seed, "noise_rate": cfg.data.label_noise.rate,
            "epochs": cfg.trainer.epochs, "lr": cfg.optim.lr, "batch_size": cfg.trainer.batch_size}


def imbalance_results(run: Run, z: Tensor, y: Tensor, temperature: float | None) -> dict[str, Any]:
    """Head / medium / tail accuracy and class-wise ECE on test (and test_ts), and each class's
    numbers under `per_class`, when the training split is long-tailed (evaluate.classwise)."""
    counts = run.ds.true_class_counts()
    if not is_long_tailed(counts, run.cfg.data.imbalance.ratio):
        return {}
    n_bins = run.cfg.metrics.n_bins
    out: dict[str, Any] = {}
    per_class: dict[str, list] = {"class_counts": counts.tolist()}
    for split, t in (("test", 1.0), ("test_ts", temperature)):
        if t is None:
            continue
        out.update({f"{split}/{k}": v for k, v in group_metrics(z / t, y, counts, n_bins).items()})
        per_class.update({f"{split}/{k}": [None if v != v else v for v in values.tolist()]  # NaN: no test image
                          for k, values in class_results(z / t, y, n_bins).items()})
    return {**out, "per_class": per_class}


def memorisation(run: Run) -> dict[str, float]:
    """Memorisation of the flipped training labels (Zhang et al. 2017; Lukasik et al. 2020)."""
    ds = run.ds
    noisy = ds.noisy_idx.cpu()
    z = run.predict(ds.train.take(noisy).to(ds.train.y.device))
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
    extra: dict[str, Any] = {}
    if cfg.eval.corruptions:
        final.update(shift_metrics(cfg, run.ds.test, temperature, run.predict))
    if cfg.eval.ood:
        m, extra = ood_results(cfg, run.ds.test.x, z, run.predict)
        final.update(m)
    log.info("final evaluations (selective, bootstrap, shift, OOD): %.2f s", time.perf_counter() - t0)
    return extra


def save_predictions(path: Path, logits: dict[str, Tensor], labels: dict[str, Tensor],
                     extra: dict[str, Any] | None = None) -> None:
    """float32 logits and int64 labels, untempered (and eval.ood's `ood_<source>_logits`); recompute
    any metric later with ls_bench.evaluate.metrics.compute_metrics(torch.from_numpy(f["test_logits"]), ...)."""
    arrays = {f"{s}_{k}": v for s in logits for k, v in (("logits", logits[s].numpy()), ("labels", labels[s].numpy()))}
    arrays.update(extra or {})
    # np.savez adds ".npz" to a name without it: write to an open file instead of the temporary's name.
    atomic_write(path, lambda tmp: _savez(tmp, arrays))


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def write_run_figures(run: Run, logits: dict[str, Tensor], labels: dict[str, Tensor], temperature: float | None,
                      logger: RunLogger, run_dir: Path, scores: dict[str, Tensor] | None = None) -> None:
    """The test split's figures, once per run: PNGs in run_dir, images in TensorBoard.
    A plotting failure is logged and never loses the run's metrics."""
    cfg, model = run.cfg, run.model
    t_fig, cpu_fig = time.perf_counter(), time.process_time()
    try:
        pen = None
        if model.head.out_features >= 3:  # Müller et al. Fig. 1 needs three class templates
            classes = tuple(cfg.metrics.penultimate_classes)
            idx = select_per_class(labels["test"], classes, per_class=100)
            feats = run.predict(run.ds.test.take(idx).to(run.ds.test.y.device), features=True)
            pen = (feats, labels["test"][idx], model.head.weight.detach().float().cpu(), classes)
        write_figures(logger, run_dir, SplitFigures(logits["test"], labels["test"], cfg.metrics.n_bins, temperature,
                                                    pen,
                                                    run.ds.classes, f"{cfg.model.name}, {cfg.loss.name} "
                                                                    f"eps={epsilon_text(cfg.loss)}", scores))
    except Exception as e:  # a plotting failure must not lose the run's metrics
        log.warning("calibration figures failed (%s: %s); metrics are unaffected", type(e).__name__, e)
    log.info("calibration figures: %.2f s (%.2f s CPU)", time.perf_counter() - t_fig, time.process_time() - cpu_fig)
