"""Datasets as uint8 tensors resident on the training device, and the batch loader over them.

Every dataset is decoded once into `x: uint8 [N, C, H, W]`, `y: int64 [N]` (readers), split and
subset with the split seed, its labels optionally corrupted (splits), then served as batches on the
device (loader). mixing holds mixup and CutMix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ls_bench.config import DataConfig
from ls_bench.data.loader import Split, channel_stats
from ls_bench.data.readers import DATASETS
from ls_bench.data.splits import corrupt_labels, select_classes, sized, split_count, stratified_split
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
        return torch.bincount(self.train.y.cpu(), minlength=self.num_classes)

    def to(self, device: torch.device) -> "Dataset":
        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))



def load_dataset(cfg: DataConfig, noise_seed: int = 0) -> Dataset:
    """Load `cfg.name`, carve val (and test, for digits) out of train, subset, corrupt labels."""
    train, test, classes = DATASETS[cfg.name](cfg)
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
    noisy_idx, clean = torch.empty(0, dtype=torch.long), None
    if cfg.label_noise.rate > 0:
        clean = train.y
        noisy_y, noisy_idx = corrupt_labels(train.y, len(classes), cfg.label_noise.rate, cfg.label_noise.kind,
                                            noise_seed, classes)
        train = Split(train.x, noisy_y)
        log.info("label noise: %s, rate %.3g requested, %d of %d training labels flipped (realised rate %.4f); "
                 "val and test stay clean", cfg.label_noise.kind, cfg.label_noise.rate, len(noisy_idx), len(train),
                 len(noisy_idx) / max(1, len(train)))
    if len(train) < 1:
        raise invalid("data.train_size", cfg.train_size, "leaves no training images")
    mean, std = channel_stats(train.x)
    return Dataset(train, val, test, classes, mean, std, cfg.augment, noisy_idx, clean)

