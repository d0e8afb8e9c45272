"""One run's state: the model, data, loss and optimiser that setup() builds from a Config, and
inference over a whole split. Everything that can fail on bad input fails here, before training."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ls_bench.config import Config
from ls_bench.data import Dataset, load_dataset
from ls_bench.data.human import check_human, human_tables
from ls_bench.data.loader import Normalize, Split, eval_batches
from ls_bench.data.mixing import check_mix_with_loss, make_mixer
from ls_bench.data.readers import check_dataset
from ls_bench.errors import invalid
from ls_bench.evaluate.metrics import default_top_k
from ls_bench.evaluate.shift import check_eval, check_eval_against_data
from ls_bench.init_weights import check_init_from, load_init_weights, source_normalization
from ls_bench.losses import Criterion, as_multiclass, check_loss, make_criterion
from ls_bench.machine import (
    autocast,
    configure_backends,
    resolve_device,
    resolve_precision,
    set_threads,
    tune_allocator,
)
from ls_bench.models import build_model, check_model, outputs_fp32_head
from ls_bench.schedule import lr_factor
from ls_bench.seeds import run_seeds
from ls_bench.teacher import check_teacher, load_teacher


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
    steps_per_epoch: int  # optimizer steps
    top_k: int | None
    machine: dict[str, Any] = field(default_factory=dict)  # threads, allocator: for run_info.json
    backends: dict[str, Any] = field(default_factory=dict)  # TF32, determinism: for run_info.json
    init_from: dict[str, Any] = field(default_factory=dict)  # model.init_from's source run: for run_info.json

    def loss_generator(self, seed: int) -> torch.Generator:
        """label_flip's random numbers: on the run's device, or the CPU for exact reruns on CUDA."""
        where = "cpu" if self.cfg.trainer.deterministic else self.device
        return torch.Generator(where).manual_seed(seed)

    def amp(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def predict(self, split: Split, features: bool = False) -> Tensor:
        """Logits (or penultimate features) of a whole split: predict() with this run's model and settings."""
        return predict(self.model, split, self.cfg.trainer.eval_batch_size, self.norm, self.amp(), features)

    def training_state(self) -> dict[str, Any]:
        """What last.pt holds besides the epoch and history, by name (load_state_dict targets)."""
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler,
                **({"criterion": self.criterion} if self.criterion.stateful else {})}  # online LS's S


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


def check_config(cfg: Config) -> Path | None:
    """Every check that needs no data, once per run (setup() calls it before the data loads; a
    typed Config from cli.to_config has passed config.validate's ranges): the names the registries
    define (model.name; loss.name with its prior and weights; eval's corruptions and OOD sources),
    the settings that go with them, data.name with the folder it needs, and the teacher
    (loss=distill), whose folder it returns. mix.* is checked by make_mixer, before anything heavy."""
    check_dataset(cfg.data)
    check_model(cfg.model.name)
    check_loss(cfg.loss)
    check_mix_with_loss(cfg.mix.name, cfg.loss.name, cfg.mix.alpha, cfg.mix.prob)
    check_eval(cfg)
    check_human(cfg)
    return check_teacher(cfg) if cfg.loss.name == "distill" else None


def setup(cfg: Config) -> Run:
    """Everything that can fail on bad input, done before any training starts."""
    teacher_dir = check_config(cfg)
    init_dir = check_init_from(cfg) if cfg.model.init_from not in (None, "") else None
    mixer = make_mixer(cfg.mix.name, cfg.mix.alpha, cfg.mix.prob) if cfg.mix.name != "none" else None
    threads = set_threads(cfg.trainer.num_threads)
    allocator_tuned = tune_allocator()
    device = resolve_device(cfg.trainer.device)
    amp_dtype = resolve_precision(cfg.trainer.precision, device)
    seeds = run_seeds(cfg)
    ds = load_dataset(cfg.data, seeds["noise"])
    if cfg.eval.human or cfg.loss.prior == "human":  # CIFAR-10H's distributions of test, or of train
        ds = replace(ds, human=human_tables(cfg, {"train": ds.train, "test": ds.test}, ds.official))
    check_metrics_against_data(cfg, ds)
    check_eval_against_data(cfg, ds.test, ds.num_classes)
    if init_dir is not None:  # its weights expect its inputs' scaling; run_info records it as this run's
        mean, std = source_normalization(init_dir, cfg)
        ds = replace(ds, mean=mean, std=std)
    backends = configure_backends(device, amp_dtype, cfg.trainer.deterministic)
    ds = ds.to(device)
    norm = Normalize(ds.mean, ds.std, device, cfg.trainer.channels_last)
    teacher = (load_teacher(teacher_dir, cfg, ds, norm, device, lambda: autocast(device, amp_dtype))
               if teacher_dir is not None else None)
    criterion = make_criterion(cfg.loss, ds.num_classes, ds.class_counts(), mixer, teacher,
                               ds.human.get("train")).to(device)

    torch.manual_seed(seeds["init"])  # initial weights depend on the init seed only, never on ε
    model = build_model(cfg.model.name, ds.in_channels, criterion.num_outputs, ds.image_size)
    init_from = load_init_weights(model, init_dir, ds) if init_dir is not None else {}
    model = model.to(device)
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
               {"threads": threads, "allocator_tuned": allocator_tuned}, backends, init_from)


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
        raise invalid("metrics.top_k", cfg.metrics.top_k, f"must be <= the {K} classes of {name}")
    pc = list(cfg.metrics.penultimate_classes)
    if cfg.metrics.figures and K >= 3 and max(pc) >= K:
        raise invalid("metrics.penultimate_classes", pc, f"labels must be < the {K} classes of {name} "
                      f"(after data.classes renumbering)")
