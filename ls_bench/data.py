"""Datasets as uint8 tensors resident on the training device, and the batch loader over them.

Every dataset is decoded once into `x: uint8 [N, C, H, W]`, `y: int64 [N]`. Batches are
index-selects on the device; augmentation (random crop from a 4-pixel zero pad + horizontal
flip) and normalisation are batched tensor ops. No PIL, no DataLoader, no per-sample Python.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from ls_bench.config import ConfigError, DataConfig, bad

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


@dataclass
class Split:
    x: Tensor  # uint8 [N, C, H, W]
    y: Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: Tensor | np.ndarray) -> "Split":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return Split(self.x[idx], self.y[idx])

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


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


# --- raw sources: each returns (train Split, test Split or None, class names) -------------------


def _digits(cfg: DataConfig) -> tuple[Split, Split | None, list[str]]:
    from sklearn.datasets import load_digits

    d = load_digits()  # 1797 images, 8x8, integer intensities 0..16; ships with scikit-learn
    x = torch.from_numpy(np.rint(d.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    return Split(x, torch.from_numpy(d.target).long()), None, [str(c) for c in d.target_names]


def _torchvision(name: str) -> Callable[[DataConfig], tuple[Split, Split | None, list[str]]]:
    def load(cfg: DataConfig) -> tuple[Split, Split | None, list[str]]:
        import torchvision.datasets as tvd

        root = Path(cfg.root).expanduser()
        cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "svhn": tvd.SVHN}[name]
        splits = []
        for train in (True, False):
            kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
            try:
                # torchvision verifies the archive's MD5 after a download and before use.
                ds = cls(str(root), download=cfg.download, **kwargs)
            except (RuntimeError, OSError) as e:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(
                    f"data.root={cfg.root!r}: {name} files not found under {root.resolve()} and not downloaded "
                    f"({reason}); point data.root at the folder that holds them, or use "
                    f"data=imagefolder data.root=<folder with train/ and test/>"
                ) from None
            if name == "svhn":  # data is already [N, C, H, W]; label 10 means digit 0 in old releases
                x, y = torch.from_numpy(ds.data), torch.from_numpy(ds.labels % 10).long()
                classes = [str(i) for i in range(10)]
            else:  # CIFAR: [N, H, W, C]
                x, y = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)
                classes = list(ds.classes)
            splits.append(Split(x, y))
        return splits[0], splits[1], classes

    return load


def _list_images(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """An ImageFolder tree as (path, class index) pairs, via torchvision's own scan."""
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder), is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS))
    except (FileNotFoundError, RuntimeError) as e:
        raise ConfigError(f"data.root: {folder} holds no images in class folders ({e})") from None
    return [(Path(p), c) for p, c in ds.samples], list(ds.classes)


def _decode(paths: list[Path]) -> Tensor:
    """Decode images to one uint8 [N, C, H, W] tensor (torchvision.io, no PIL)."""
    from torchvision.io import ImageReadMode, decode_image

    images = []
    for p in paths:
        try:
            images.append(decode_image(str(p), mode=ImageReadMode.RGB))
        except RuntimeError as e:
            raise ConfigError(f"data.root: cannot decode image file {p}: {str(e).splitlines()[0]}") from None
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ConfigError(f"data.root: images differ in size {sorted(shapes)[:3]}; all must share one size")
    return torch.stack(images)


def cache_dir(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ls-bench"


def _cached_decode(cfg: DataConfig, split: str, files: list[tuple[Path, int]]) -> Split:
    """Decoded images of one ImageFolder split, cached under data.cache_dir.

    The key hashes every file's path, size and mtime, so any change to the tree makes a new
    entry. A cache file that fails to load is rebuilt; nothing is ever written into data.root.
    """
    h = hashlib.sha256()
    for p, c in files:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{c}\n".encode())
    path = cache_dir(cfg) / f"imagefolder-{split}-{h.hexdigest()[:24]}.pt"
    labels = torch.tensor([c for _, c in files], dtype=torch.long)
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            if torch.equal(blob["y"], labels) and blob["x"].dtype == torch.uint8 and len(blob["x"]) == len(files):
                return Split(blob["x"], labels)
        except Exception:  # stale or corrupt: rebuild below
            pass
    x = _decode([p for p, _ in files])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"x": x, "y": labels}, tmp)
        os.replace(tmp, path)  # atomic: a reader never sees half a cache file
    except OSError:
        pass  # a read-only cache only costs speed
    return Split(x, labels)


def _imagefolder(cfg: DataConfig) -> tuple[Split, Split | None, list[str]]:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise bad("data.root", cfg.root, "must be a directory holding train/<class>/* and test/<class>/*")
    for sub in ("train", "test"):
        if not (root / sub).is_dir():
            raise bad("data.root", cfg.root, f"missing folder {root / sub}; expected ROOT/{{train,test}}/<class>/*")
    train_files, classes = _list_images(root / "train")
    test_files, test_classes = _list_images(root / "test")
    if classes != test_classes:
        raise bad("data.root", cfg.root, f"train classes {classes} and test classes {test_classes} must match")
    return _cached_decode(cfg, "train", train_files), _cached_decode(cfg, "test", test_files), classes


DATASETS: dict[str, Callable[[DataConfig], tuple[Split, Split | None, list[str]]]] = {
    "digits": _digits,
    "cifar10": _torchvision("cifar10"),
    "cifar100": _torchvision("cifar100"),
    "svhn": _torchvision("svhn"),
    "imagefolder": _imagefolder,
}


# --- splits, subsets, label noise ----------------------------------------------------------------


def stratified_split(y: Tensor, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held) with `held` a class-stratified sample of size n."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if n == 0:
        return idx, idx[:0]
    rest, held = train_test_split(idx, test_size=n, stratify=y.numpy(), random_state=seed)
    return np.sort(rest), np.sort(held)


def _select_classes(s: Split, keep: list[int]) -> Split:
    remap = torch.full((int(s.y.max()) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(keep)] = torch.arange(len(keep))
    mask = remap[s.y] >= 0
    return Split(s.x[mask], remap[s.y[mask]])


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
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < rate
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (len(y),), generator=g)  # 1..K-1: never the same class
        target = (y + shift) % num_classes
    else:
        names = classes or []
        if set(CIFAR10_ASYM) <= set(names):
            mapping = torch.arange(num_classes)
            for src, dst in CIFAR10_ASYM.items():
                mapping[names.index(src)] = names.index(dst)
        else:
            mapping = (torch.arange(num_classes) + 1) % num_classes
        target = mapping[y]
    flip &= target != y
    noisy = torch.where(flip, target, y)
    return noisy, flip.nonzero().squeeze(1)


def load_dataset(cfg: DataConfig, noise_seed: int = 0) -> Dataset:
    """Load `cfg.name`, carve val (and test, for digits) out of train, subset, corrupt labels."""
    if cfg.name not in DATASETS:
        raise bad("data.name", cfg.name, f"one of {sorted(DATASETS)}")
    train, test, classes = DATASETS[cfg.name](cfg)
    if cfg.classes is not None:
        unknown = [c for c in cfg.classes if not 0 <= c < len(classes)]
        if unknown:
            raise bad("data.classes", list(cfg.classes), f"labels must be in [0, {len(classes)})")
        train = _select_classes(train, list(cfg.classes))
        test = _select_classes(test, list(cfg.classes)) if test is not None else None
        classes = [classes[c] for c in cfg.classes]
    if test is None:  # no official test split: hold one out first, with the same split seed
        if cfg.test_size >= len(train):
            raise bad("data.test_size", cfg.test_size, f"must be < the {len(train)} images of {cfg.name}")
        rest, held = stratified_split(train.y, cfg.test_size, cfg.split_seed)
        train, test = train.take(rest), train.take(held)
    if not cfg.val_size < len(train):
        raise bad("data.val_size", cfg.val_size, f"must be < the {len(train)} training images of {cfg.name}")
    rest, held = stratified_split(train.y, cfg.val_size, cfg.split_seed)
    train, val = train.take(rest), train.take(held)
    if cfg.train_size is not None:
        if cfg.train_size > len(train):
            raise bad("data.train_size", cfg.train_size, f"must be <= {len(train)} (training images after val)")
        if cfg.train_size < len(train):
            _, keep = stratified_split(train.y, cfg.train_size, cfg.split_seed)
            train = train.take(keep)
    noisy_idx, clean = torch.empty(0, dtype=torch.long), None
    if cfg.label_noise.rate > 0:
        clean = train.y
        noisy_y, noisy_idx = corrupt_labels(train.y, len(classes), cfg.label_noise.rate, cfg.label_noise.kind,
                                            noise_seed, classes)
        train = Split(train.x, noisy_y)
    xf = train.x.float().div_(255)
    mean = tuple(xf.mean(dim=(0, 2, 3)).tolist())
    std = tuple(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    return Dataset(train, val, test, classes, mean, std, cfg.augment, noisy_idx, clean)


# --- the loader ----------------------------------------------------------------------------------


def random_crop_flip(x: Tensor, pad: int, g: torch.Generator) -> Tensor:
    """Per-sample random crop of the zero-padded batch plus horizontal flip with p = 1/2.

    Distributionally torchvision's RandomCrop(H, padding=pad) + RandomHorizontalFlip(): each
    offset is uniform on {0, ..., 2*pad} independently per axis and per sample. x: [B, C, H, W].
    """
    B, C, H, W = x.shape
    dev = x.device
    off = torch.randint(0, 2 * pad + 1, (2, B), generator=g).to(dev, non_blocking=True)
    flip = (torch.rand(B, generator=g) < 0.5).to(dev, non_blocking=True)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (off[0, :, None] + torch.arange(H, device=dev))[:, None, :, None]  # [B, 1, H, 1]
    cols = off[1, :, None] + torch.arange(W, device=dev)  # [B, W]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]  # flip = read columns backwards
    b = torch.arange(B, device=dev)[:, None, None, None]
    c = torch.arange(C, device=dev)[None, :, None, None]
    return xp[b, c, rows, cols]


class Normalize:
    """uint8 [B, C, H, W] -> float (x/255 - mean)/std in one fused multiply-add."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device,
                 channels_last: bool):
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1 / (255 * std_t)
        self.shift = -torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=self.memory_format)
        return torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=self.memory_format)


def train_batches(split: Split, batch_size: int, seed: int, augment: bool,
                  norm: Normalize) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """One epoch of shuffled (x, y, idx) batches; drop_last keeps every step the same size.

    All randomness comes from a CPU generator seeded with `seed`, so the batches depend only
    on (seed, data), never on the device, the model or the loss: runs that differ only in the
    loss see identical batches, and a resumed epoch replays exactly.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(split)
    perm = torch.randperm(n, generator=g).to(split.y.device, non_blocking=True)
    for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
        idx = perm[i:i + batch_size]
        x = split.x[idx]
        if augment:
            x = random_crop_flip(x, 4, g)
        yield norm(x), split.y[idx], idx


def eval_batches(split: Split, batch_size: int, norm: Normalize) -> Iterator[tuple[Tensor, Tensor]]:
    for i in range(0, len(split), batch_size):
        yield norm(split.x[i:i + batch_size]), split.y[i:i + batch_size]
