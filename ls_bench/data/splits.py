"""Splits, class subsets and synthetic label noise: pure functions of labels and seeds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ls_bench.data.loader import Split


def stratified_split(y: Tensor, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held) with `held` a class-stratified sample of size n.

    Exactly sklearn's train_test_split(idx, test_size=n, stratify=y, random_state=seed), sorted:
    the same random draws as its StratifiedShuffleSplit, ported to numpy because importing
    scikit-learn costs ~1.2 s of every run's start-up (tests/test_data.py checks the two agree).
    Corner cases (a class with one image, n below the number of classes) go to sklearn itself,
    for its checks and messages.
    """
    idx = np.arange(len(y))
    if n == 0:
        return idx, idx[:0]
    classes, y_indices, counts = np.unique(y.numpy(), return_inverse=True, return_counts=True)
    if not len(classes) <= n <= len(y) - len(classes) or counts.min() < 2:
        from sklearn.model_selection import train_test_split

        rest, held = train_test_split(idx, test_size=n, stratify=y.numpy(), random_state=seed)
        return np.sort(rest), np.sort(held)
    rng = np.random.RandomState(seed)
    n_rest = _approximate_mode(counts, len(y) - n, rng)
    n_held = _approximate_mode(counts - n_rest, n, rng)
    by_class = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(counts)[:-1])
    rest, held = [], []
    for i, members in enumerate(by_class):
        perm = members.take(rng.permutation(counts[i]), mode="clip")
        rest.append(perm[:n_rest[i]])
        held.append(perm[n_rest[i]:n_rest[i] + n_held[i]])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """sklearn.utils.extmath._approximate_mode: per-class draws proportional to counts, the
    remainder given to the largest fractional parts, ties broken with rng."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add = min(len(inds), need)
            floored[rng.choice(inds, size=add, replace=False)] += 1
            need -= add
            if need == 0:
                break
    return floored.astype(int)


def select_classes(s: Split, keep: list[int]) -> Split:
    """Keep the images whose label is in `keep`, relabelled by position: keep[j] -> j."""
    size = max(int(s.y.max()) if len(s.y) else 0, max(keep)) + 1  # a split may lack some kept class
    remap = torch.full((size,), -1, dtype=torch.long)
    remap[torch.tensor(keep)] = torch.arange(len(keep))
    mask = remap[s.y] >= 0
    return Split(s.x[mask], remap[s.y[mask]], None if s.src is None else s.src[mask])


def long_tail_counts(n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Images per class of an exponential long tail: n_k = int(n_max · (1/ρ)^(k/(K-1))), k = 0..K-1.

    Cao et al. 2019 (LDAM-DRW), CIFAR-10-LT: kaidic/LDAM-DRW imbalance_cifar.py's
    get_img_num_per_cls, written the same way (imb_factor = 1/ρ, int() truncates), so n_max = 5000
    and ρ = 100 give its 5000, 2997, ..., 50 (12,406 images). Class 0 is the head, K-1 the tail.
    """
    imb_factor = 1 / ratio
    return [int(n_max * imb_factor ** (k / max(num_classes - 1.0, 1.0))) for k in range(num_classes)]


def long_tail(y: Tensor, counts: list[int], seed: int) -> np.ndarray:
    """Sorted positions keeping counts[k] images of each class k, drawn at random with `seed`.

    Each class's images are permuted once by a generator seeded with `seed` alone and its first
    counts[k] kept (LDAM-DRW shuffles and slices the same way), so with one seed a larger ρ keeps a
    subset of what a smaller ρ keeps."""
    rng = np.random.RandomState(seed)
    labels = y.cpu().numpy()
    keep = []
    for k, n in enumerate(counts):
        members = np.flatnonzero(labels == k)
        keep.append(members[rng.permutation(len(members))[:n]])
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


# CIFAR-10 asymmetric noise of Patrini et al. 2017: truck->automobile, bird->airplane,
# deer->horse, cat<->dog (by class name, so it holds for any folder with these classes).
CIFAR10_ASYM = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}


def corrupt_labels(y: Tensor, num_classes: int, rate: float, kind: str, seed: int,
                   classes: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """Flip a `rate` fraction of labels once; returns (noisy labels, flipped positions).

    symmetric: each label flips with probability `rate` to a uniformly chosen *other* class.
    asymmetric: each label flips with probability `rate` through a fixed class map (CIFAR-10
    pairs of Patrini et al. 2017 when the class names match, else k -> k+1 mod K); classes the
    map leaves alone never flip.
    """
    if not 0 <= rate < 1 or kind not in ("symmetric", "asymmetric"):
        raise ValueError(f"label noise needs rate in [0, 1) and kind symmetric|asymmetric, got {rate!r}, {kind!r}")
    # The flip decisions use the first N uniforms of the generator whatever `rate` is, so with one
    # seed a higher rate flips a superset of the samples a lower rate flips (same targets too).
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < rate
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (len(y),), generator=g)  # 1..K-1: never the same class
        target = (y + shift) % num_classes
    else:
        names = classes or []
        if set(CIFAR10_ASYM) | set(CIFAR10_ASYM.values()) <= set(names):
            mapping = torch.arange(num_classes)
            for src, dst in CIFAR10_ASYM.items():
                mapping[names.index(src)] = names.index(dst)
        else:
            mapping = (torch.arange(num_classes) + 1) % num_classes
        target = mapping[y]
    flip &= target != y
    noisy = torch.where(flip, target, y)
    return noisy, flip.nonzero().squeeze(1)


def split_count(size: float, n: int) -> int:
    """A split size as a count: a fraction in (0, 1) of the n images there, rounded up (as
    scikit-learn's train_test_split rounds a float test_size), or a whole number as it is."""
    return math.ceil(size * n) if 0 < size < 1 else int(size)


class _Verbatim(str):
    """Text that a one-line error shows without quotes."""

    def __repr__(self) -> str:
        return str(self)


def sized(size: float, count: int) -> Any:
    """How a size appears in a message: the count, and for a fraction what it resolved to."""
    return _Verbatim(f"{size:g} ({count} images)") if 0 < size < 1 else count

