"""Datasets as uint8 tensors resident on the training device, and the batch loader over them.

Every dataset is decoded once into `x: uint8 [N, C, H, W]`, `y: int64 [N]` (readers), split and
subset with the split seed, its labels optionally corrupted (splits), then served as batches on the
device (loader). mixing holds mixup and CutMix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from ls_bench.config import DataConfig
from ls_bench.data.loader import Split, channel_stats
from ls_bench.data.readers import DATASETS
from ls_bench.data.splits import (
    corrupt_labels,
    long_tail,
    long_tail_counts,
    select_classes,
    sized,
    split_count,
    stratified_split,
)
from ls_bench.errors import invalid

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]  # per channel, of train images scaled to [0, 1]
    std: tuple[float, ...]
    augment: bool
    # Label noise bookkeeping (empty when data.label_noise.rate == 0): positions in `train`
    # whose label was flipped, and the clean labels of the whole train split.
    noisy_idx: Tensor = torch.empty(0, dtype=torch.long)
    clean_train_y: Tensor | None = None
    noise_info: dict[str, Any] = field(default_factory=dict)  # kind=human|matched: file, sha256, label set
    # Each split's official source and that source's size: {"train": ("train", 50000), "val": ...,
    # "test": ("test", 10000)} (data.train_on=test swaps them); per-image annotations index these.
    official: dict[str, tuple[str, int]] = field(default_factory=dict)
    human: dict[str, Tensor] = field(default_factory=dict)  # split -> CIFAR-10H's [N, K] (with_human)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.x.shape[2]

    def class_counts(self) -> Tensor:
        """Training images per label as trained on (after any label noise): loss.prior=class_prior."""
        return torch.bincount(self.train.y.cpu(), minlength=self.num_classes)

    def true_class_counts(self) -> Tensor:
        """Training images per true class (before label noise): run_info's class_counts, the
        head / medium / tail groups; with data.imbalance, the long tail's n_k."""
        y = self.train.y if self.clean_train_y is None else self.clean_train_y
        return torch.bincount(y.cpu(), minlength=self.num_classes)

    def to(self, device: torch.device) -> "Dataset":
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))



def load_dataset(cfg: DataConfig, noise_seed: int = 0) -> Dataset:
    """Load `cfg.name`, carve val (and test, for digits) out of train, subset, corrupt labels."""
    train, test, classes = DATASETS[cfg.name](cfg)
    official = _official(len(train), None if test is None else len(test), cfg.train_on)
    if cfg.train_on == "test":  # Peterson et al.'s protocol: fit the 10,000 CIFAR-10H images, test on the 50,000
        train, test = test, train
    if cfg.classes is not None:
        unknown = [c for c in cfg.classes if not 0 <= c < len(classes)]
        if unknown:
            raise invalid("data.classes", list(cfg.classes), f"labels must be in [0, {len(classes)})")
        train = select_classes(train, list(cfg.classes))
        test = select_classes(test, list(cfg.classes)) if test is not None else None
        classes = [classes[c] for c in cfg.classes]
    if test is None:  # no official test split: hold one out first, with the same split seed
        n_test = split_count(cfg.test_size, len(train))
        if n_test >= len(train):
            raise invalid("data.test_size", sized(cfg.test_size, n_test),
                          f"must be < the {len(train)} images of {cfg.name}")
        rest, held = stratified_split(train.y, n_test, cfg.split_seed)
        train, test = train.take(rest), train.take(held)
    n_val = split_count(cfg.val_size, len(train))
    if not n_val < len(train):
        raise invalid("data.val_size", sized(cfg.val_size, n_val), f"must be < the {len(train)} training images of "
                                                                    f"{cfg.name}")
    rest, held = stratified_split(train.y, n_val, cfg.split_seed)
    train, val = train.take(rest), train.take(held)
    if cfg.train_size is not None:
        n_train = split_count(cfg.train_size, len(train))
        if n_train > len(train):
            raise invalid("data.train_size", sized(cfg.train_size, n_train),
                          f"must be <= {len(train)} (training images after val)")
        if n_train < len(train):
            _, keep = stratified_split(train.y, n_train, cfg.split_seed)
            train = train.take(keep)
    if len(train) < 1:
        raise invalid("data.train_size", cfg.train_size, "leaves no training images")
    if cfg.imbalance.ratio is not None:  # on the clean labels, before any label noise
        train = _long_tail(cfg, train, classes)
    train, val, noisy_idx, clean, facts = _corrupt(cfg, train, val, classes, noise_seed, official["train"][1])
    mean, std = channel_stats(train.x)
    return Dataset(train, val, test, classes, mean, std, cfg.augment, noisy_idx, clean, facts, official)


def _long_tail(cfg: DataConfig, train: Split, classes: list[str]) -> Split:
    """data.imbalance: the exponential long tail cut from the training split (val and test stay
    balanced); n_max is the smallest class's count here, so every class has its n_k images."""
    rho, K = cfg.imbalance.ratio, len(classes)
    n_max = int(torch.bincount(train.y.cpu(), minlength=K).min())
    counts = long_tail_counts(n_max, K, rho)
    if min(counts) < 1:
        k = counts.index(0)
        after = "the validation hold-out" + (" and data.train_size" if cfg.train_size is not None else "")
        raise invalid("data.imbalance.ratio", rho, f"leaves class {k} ({classes[k]}) with 0 training images: "
                      f"the smallest class has n_max={n_max} images after {after}, so ρ must be in [1, {n_max}) here")
    keep = long_tail(train.y, counts, cfg.split_seed)
    log.info("class imbalance: ρ=%g, %d of %d training images kept, per class %s", rho, len(keep), len(train), counts)
    return train.take(keep)


def _official(n_train: int, n_test: int | None, train_on: str) -> dict[str, tuple[str, int]]:
    """Each split's official source and that source's size (digits: all from its one split)."""
    if n_test is None:
        return dict.fromkeys(("train", "val", "test"), ("train", n_train))
    a, b = ("train", n_train), ("test", n_test)
    fit, other = (a, b) if train_on == "train" else (b, a)
    return {"train": fit, "val": fit, "test": other}


def _corrupt(cfg: DataConfig, train: Split, val: Split, classes: list[str], seed: int,
             n_official: int) -> tuple[Split, Split, Tensor, Tensor | None, dict[str, Any]]:
    """data.label_noise on the training split (val too with kind=human|matched and val=noisy):
    the splits, the flipped positions in train, train's clean labels (None without noise) and, for
    kind=human|matched, the facts for run_info.json."""
    noise, clean = cfg.label_noise, train.y
    if noise.kind in ("human", "matched"):
        from ls_bench.data.human import apply_human_noise

        train, val, noisy_idx, facts = apply_human_noise(cfg, train, val, len(classes), n_official, seed)
        log.info("label noise: %s (%s labels of %s), %d of %d training labels changed (realised rate %.4f); "
                 "val %s, test clean", noise.kind, noise.labels, noise.file, len(noisy_idx), len(train),
                 len(noisy_idx) / len(train), noise.val)
        return train, val, noisy_idx, clean, facts
    if noise.rate == 0:
        return train, val, torch.empty(0, dtype=torch.long), None, {}
    noisy_y, noisy_idx = corrupt_labels(train.y, len(classes), noise.rate, noise.kind, seed, classes)
    log.info("label noise: %s, rate %.3g requested, %d of %d training labels flipped (realised rate %.4f); "
             "val and test stay clean", noise.kind, noise.rate, len(noisy_idx), len(train),
             len(noisy_idx) / max(1, len(train)))
    return Split(train.x, noisy_y, train.src), val, noisy_idx, clean, {}
