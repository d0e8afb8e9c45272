"""model.init_from: start a run from a finished run's final weights instead of random ones.

Wei et al. (ICML 2022, "To smooth or not?") train negative label smoothing this way: a model trained
with cross-entropy first (their main_warmup.py), then the GLS loss from those weights at a learning
rate of 1e-6 for 100 epochs (main_GLS_load.py). From random weights a negative ε diverges: its loss
has the wrong classes' log-probabilities with negative weights, so it is unbounded below
(docs/losses.md). Fine-tuning any other loss from a trained model works the same way.

`model.init_from` is a finished run's folder, or a sweep folder: there the source is the one
finished run with every key of `model.init_select` and, with `model.init_same_seed` (default), this
run's seed; the rules and one-line errors are the distillation teacher's (teacher.find_run,
teacher.check_source): same model, dataset, classes and held-out splits, so the source never saw
this run's validation or test images. Only the model's state (its parameters and BatchNorm
statistics) is taken, and the source's input normalisation with it (the weights were trained on
inputs scaled by its training split's mean and std, which differ when data.train_size or
data.imbalance do); the optimiser, the schedule and the epoch count start afresh. A run that resumes
from its own last.pt continues from its own weights, but the source is found, checked and read
again, as a distillation teacher is: it must still be where it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ls_bench.config import Config
from ls_bench.errors import ConfigError
from ls_bench.files import read_json
from ls_bench.teacher import check_source, find_run, rebuild_model, recorded_config, teacher_config, teacher_stats

if TYPE_CHECKING:
    from ls_bench.data import Dataset

FIELD = "model.init_from"


def check_init_from(cfg: Config) -> Path:
    """The source run's folder, checked before any data loads."""
    m = cfg.model
    if cfg.loss.name == "binary":
        raise ConfigError(f"{FIELD}={m.init_from}: loss=binary has one sigmoid output; starting weights come from "
                          f"a softmax run of the same K classes")
    run_dir = find_run(m.init_from, FIELD, m.init_select, "model.init_select", cfg.seed if m.init_same_seed else None)
    check_source(run_dir, cfg, FIELD)
    source_model = recorded_config(run_dir, field=FIELD).get("model.name")
    if source_model != m.name:
        raise ConfigError(f"{FIELD}={run_dir}: the source run trained model.name={source_model}, this run has "
                          f"model.name={m.name}; starting weights must be of the same architecture")
    return run_dir


def source_normalization(run_dir: Path, cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The channel mean and std the source's weights were trained with (teacher.teacher_stats)."""
    info = read_json(run_dir / "run_info.json")
    return teacher_stats(info, teacher_config(run_dir, info, FIELD), cfg)


def load_init_weights(model: nn.Module, run_dir: Path, ds: "Dataset") -> dict[str, Any]:
    """Copy the source's final weights into `model` (weights_only loading); returns what run_info.json
    records of the source (the loaded weights' own fingerprint is run_info's init_sha)."""
    info = read_json(run_dir / "run_info.json")
    source = rebuild_model(run_dir, info, teacher_config(run_dir, info, FIELD), ds, field=FIELD)
    model.load_state_dict(source.state_dict())
    config, final = recorded_config(run_dir, info, FIELD), read_json(run_dir / "final.json")
    return {"dir": str(run_dir.resolve()), "seed": config.get("seed"),
            "loss": config.get("loss.name"), "epsilon": config.get("loss.epsilon"),
            "epochs": config.get("trainer.epochs"), "test_acc": final.get("test/acc")}
