"""Dataset readers: each returns (train Split, test Split or None, class names) as uint8 tensors,
and the decode cache of ImageFolder trees."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ls_bench.config import DataConfig
from ls_bench.data.loader import Split
from ls_bench.errors import ConfigError, first_line, invalid
from ls_bench.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


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
                reason = first_line(e)
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
            splits.append(Split(x, y, torch.arange(len(y))))  # torchvision keeps the original order
        return splits[0], splits[1], classes

    return load


def _list_images(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """An ImageFolder tree as (path, class index) pairs, in torchvision ImageFolder's order.

    The rules of torchvision.datasets.folder (classes = sorted sub-folder names; within a class,
    sorted os.walk roots with symlinks followed, sorted file names) without importing torchvision,
    which costs ~1.5 s of start-up; tests/test_data.py checks both give the same samples.
    """
    try:
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    except OSError as e:
        raise ConfigError(f"data.root: cannot list {folder}: {e.strerror}") from None
    files: list[tuple[str, int]] = []
    empty = []
    for i, c in enumerate(classes):
        n = len(files)
        for root, _, names in sorted(os.walk(os.path.join(folder, c), followlinks=True)):
            files += [(os.path.join(root, f), i) for f in sorted(names) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if len(files) == n:
            empty.append(c)
    if not classes or empty:
        why = f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {empty}" if classes else "no class folders"
        raise ConfigError(f"data.root: {folder} holds no images in class folders ({why})")
    return files, classes


def _reason(e: Exception) -> str:
    """First line of an I/O error, without torchvision's C++ source location prefix."""
    return re.sub(r"^\w+, \S+:\d+, ", "", first_line(e))


def _chunked(fn: Callable[[list[str]], list], items: list[str], workers: int = 8) -> list:
    """fn over chunks of items in a thread pool, results in order. For file I/O and image
    decoding, which release the GIL: stat() of 60,000 files takes ~0.9 s serially here, ~0.45 s
    with 8 threads; JPEG decoding scales with the cores."""
    from concurrent.futures import ThreadPoolExecutor

    size = max(256, -(-len(items) // (4 * workers)))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    ex = ThreadPoolExecutor(min(workers, max(1, len(chunks))))
    try:
        return [r for part in ex.map(fn, chunks) for r in part]
    finally:  # on Ctrl-C (or a bad file) the queued chunks are dropped, not decoded to the end first
        ex.shutdown(wait=True, cancel_futures=True)


def _decode_some(paths: list[str]) -> list[Tensor]:
    from torchvision.io import ImageReadMode, decode_image

    images = []
    for p in paths:
        try:
            images.append(decode_image(p, mode=ImageReadMode.RGB))
        except (RuntimeError, OSError, ValueError) as e:
            raise ConfigError(f"data.root: cannot decode image file {p}: {_reason(e)}") from None
    return images


def _decode(paths: list[str]) -> Tensor:
    """Decode images to one uint8 [N, C, H, W] tensor (torchvision.io, no PIL), in threads."""
    images = _chunked(_decode_some, paths, workers=max(2, min(8, os.cpu_count() or 1)))
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise ConfigError(f"data.root: images differ in size {sorted(shapes)[:3]}; all must share one size")
    return torch.stack(images)


def cache_dir(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ls-bench"


def _stat_some(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:  # e.g. a dangling symlink
            raise ConfigError(f"data.root: cannot read image file {p}: {_reason(e)}") from None
        out.append(f"{st.st_size}\0{st.st_mtime_ns}")
    return out


def _checksum(x: Tensor) -> int:
    """CRC-32 of the pixel bytes (~0.07 s for CIFAR-10's 150 MB): catches a damaged cache file
    whose zip structure still loads, since the tensor payload itself carries no checksum."""
    import zlib

    return zlib.crc32(x.contiguous().numpy())


def _load_cache(path: Path, labels: Tensor) -> Tensor | None:
    """The cached images if the file loads and matches (labels, dtype, checksum), else None."""
    try:
        # mmap: the pages are read once, when the splits copy them, not first into a buffer.
        blob = torch.load(path, weights_only=True, mmap=True)
        x = blob["x"]
        if (isinstance(x, Tensor) and x.dtype == torch.uint8 and x.dim() == 4 and len(x) == len(labels)
                and torch.equal(blob["y"], labels) and blob["crc32"] == _checksum(x)):
            return x
    except Exception:  # missing, truncated, garbled or an older format: rebuild
        pass
    return None


def _cached_decode(cfg: DataConfig, split: str, files: list[tuple[str, int]], root: Path) -> Split:
    """Decoded images of one ImageFolder split, cached under data.cache_dir.

    The key hashes the resolved root and every file's relative path, size and mtime, so any
    change to the tree makes a new entry (older entries of the same root and split are deleted).
    A cache file that fails to load or to match is rebuilt; nothing is ever written into data.root.
    """
    n = len(str(root)) + 1  # files are os.path.join(root, ...): hash paths relative to the root
    where = str(root.resolve())
    root_key = hashlib.sha256(where.encode()).hexdigest()[:8]
    h = hashlib.sha256(f"{where}\n".encode())
    for (p, c), s in zip(files, _chunked(_stat_some, [p for p, _ in files])):
        h.update(f"{p[n:]}\0{s}\0{c}\n".encode())
    folder = cache_dir(cfg)
    path = folder / f"imagefolder-{split}-{root_key}-{h.hexdigest()[:24]}.pt"
    labels = torch.tensor([c for _, c in files], dtype=torch.long)
    x = _load_cache(path, labels)
    if x is not None:
        return Split(x, labels)
    x = _decode([p for p, _ in files])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Atomic: a reader never sees half a cache file. No fsync: a lost cache only costs a decode.
        atomic_write(path, lambda tmp: torch.save({"x": x, "y": labels, "crc32": _checksum(x)}, tmp), fsync=False)
        for old in folder.glob(f"imagefolder-{split}-{root_key}-*.pt"):
            if old != path:  # the same folder before a change: never read again
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only cache (or cache_dir a file) only costs speed
    return Split(x, labels)


def load_imagefolder_split(folder: Path, cache: str | None, name: str) -> tuple[Split, list[str]]:
    """One ImageFolder tree (class sub-folders) decoded, through the same cache as data=imagefolder;
    `name` names the split in the cache file. Its (images, labels) and class names."""
    files, classes = _list_images(folder)
    return _cached_decode(DataConfig(cache_dir=cache), name, files, folder), classes


def _imagefolder(cfg: DataConfig) -> tuple[Split, Split | None, list[str]]:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise invalid("data.root", cfg.root, "must be a directory holding train/<class>/* and test/<class>/*")
    for sub in ("train", "test"):
        if not (root / sub).is_dir():
            raise invalid("data.root", cfg.root, f"missing folder {root / sub}; expected ROOT/{{train,test}}/<class>/*")
    train_files, classes = _list_images(root / "train")
    test_files, test_classes = _list_images(root / "test")
    if classes != test_classes:
        raise invalid("data.root", cfg.root, f"train classes {classes} and test classes {test_classes} must match")
    train = _cached_decode(cfg, "train", train_files, root / "train")
    test = _cached_decode(cfg, "test", test_files, root / "test")
    if cfg.original_index:  # each file's index in the original release (per-image annotations)
        from ls_bench.data.human import read_original_index

        for split, name in ((train, "train"), (test, "test")):
            split.src = read_original_index("data.original_index", cfg.original_index, name, len(split))
    return train, test, classes


DATASETS: dict[str, Callable[[DataConfig], tuple[Split, Split | None, list[str]]]] = {
    "digits": _digits,
    "cifar10": _torchvision("cifar10"),
    "cifar100": _torchvision("cifar100"),
    "svhn": _torchvision("svhn"),
    "imagefolder": _imagefolder,
}


def check_dataset(cfg: DataConfig) -> None:
    """The name, then the folder it needs (digits is embedded)."""
    if cfg.name not in DATASETS:
        raise invalid("data.name", cfg.name, f"one of {sorted(DATASETS)}")
    if cfg.name != "digits" and cfg.root in (None, "???", ""):
        raise invalid("data.root", cfg.root, f"must be set for data={cfg.name}, e.g. data.root=path/to/data")

