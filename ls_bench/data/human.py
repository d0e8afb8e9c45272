"""Per-image human labels of CIFAR-10, read as data and attached to the splits.

- CIFAR-10N (Wei et al., ICLR 2022, "Learning with noisy labels revisited: a study using
  real-world human annotations"): three annotators' labels for each of the 50,000 training images,
  a torch-pickled dict of numpy int arrays (clean_label, aggre_label, worse_label,
  random_label1..3). `data.label_noise.kind=human` trains on one of these sets; `matched` draws
  synthetic noise with the same per-class transition counts.
- CIFAR-10H (Peterson et al., ICCV 2019, "Human uncertainty makes classification more robust"):
  ~50 labels for each of the 10,000 test images as a [10000, 10] distribution (or the counts).
  `eval.human` scores the model against it; `loss.prior=human` trains towards it.

Both index images in the original release's order; `Split.src` carries each image's index there
(torchvision's CIFAR10 is in that order, an ImageFolder copy needs `data.original_index`). Files are
data: the .pt is loaded with torch's weights-only unpickler allowing numpy's array reconstruction
and nothing else, the .npy/.npz files with allow_pickle=False.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ls_bench.config import HUMAN_LABELS, Config, DataConfig
from ls_bench.data.loader import Split
from ls_bench.errors import ConfigError, first_line, invalid
from ls_bench.seeds import derive_seed

FILE_KEYS = dict(zip(HUMAN_LABELS, ("aggre_label", "worse_label", "random_label1", "random_label2",
                                    "random_label3")))
HUMAN_DATASETS = ("cifar10", "imagefolder")  # whose images the files can describe
MIN_MAJORITY_AGREEMENT = 0.5  # CIFAR-10H's majority vs CIFAR-10's labels: 0.99 in order, 0.11 shuffled


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()


def _unpickler_reason(e: Exception) -> str:
    """The useful line of torch's weights-only refusal (its first lines are generic advice)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = [ln.strip() for ln in text.split(marker, 1)[1].splitlines() if ln.strip()]
        return rest[0] if rest else first_line(e)
    return first_line(e)


def _numpy_globals() -> list[Any]:
    """What a pickled numpy int array needs: np.core.multiarray._reconstruct (the name old numpy
    pickles use; numpy 2 keeps it in numpy._core), ndarray, dtype and the integer dtype classes."""
    from numpy._core.multiarray import _reconstruct

    ints = [type(np.dtype(t)) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")]
    return [(_reconstruct, "numpy.core.multiarray._reconstruct"), _reconstruct, np.ndarray, np.dtype, *ints]


def read_label_file(key: str, path: str) -> dict[str, np.ndarray]:
    """CIFAR-10N's .pt as {name: int64 [N]}, never executing a pickled object: anything but a dict
    of 1-D numpy integer arrays of one length holding clean_label and the label sets is refused."""
    p = Path(path).expanduser()
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            blob = torch.load(p, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise invalid(key, path, "no such file") from None
    except Exception as e:  # unpickling refused, not a torch file, truncated
        raise invalid(key, path, f"cannot be loaded safely as a dict of numpy integer arrays "
                                 f"({_unpickler_reason(e)[:200]})") from None
    need = ("clean_label", *FILE_KEYS.values())
    if not isinstance(blob, dict) or not all(k in blob for k in need):
        what = sorted(map(str, blob)) if isinstance(blob, dict) else type(blob).__name__
        raise invalid(key, path, f"must hold {', '.join(need)} (CIFAR-10N's keys); it holds {what}")
    arrays = {k: blob[k] for k in need}
    bad = [k for k, v in arrays.items() if not (isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iu")]
    lengths = {len(v) for v in arrays.values() if isinstance(v, np.ndarray)}
    if bad or len(lengths) != 1:
        raise invalid(key, path, f"its arrays must be 1-D integer arrays of one length (bad: {bad or sorted(lengths)})")
    if any(len(v) and v.min() < 0 for v in arrays.values()):
        raise invalid(key, path, "its labels must be class indices >= 0")
    return {k: v.astype(np.int64) for k, v in arrays.items()}


def read_original_index(key: str, path: str, split: str, n: int) -> Tensor:
    """data.original_index's array for an official split: a permutation of 0..n-1, int64 [n]."""
    try:
        with np.load(Path(path).expanduser(), allow_pickle=False) as f:
            if split not in f.files:
                raise invalid(key, path, f"has no array {split!r} (it holds {f.files})")
            idx = f[split]
    except (OSError, ValueError) as e:
        raise invalid(key, path, f"cannot be read as an .npz of integer arrays ({first_line(e)[:200]})") from None
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or len(idx) != n:
        raise invalid(key, path, f"{split!r} must be {n} integers, one per image of the {split} folder "
                                 f"(it is {idx.dtype} {list(idx.shape)})")
    if not np.array_equal(np.bincount(idx.clip(0, n - 1), minlength=n), np.ones(n)) or idx.min() < 0:
        raise invalid(key, path, f"{split!r} must be a permutation of 0..{n - 1}")
    return torch.from_numpy(idx.astype(np.int64))


def read_human_probs(key: str, path: str) -> np.ndarray:
    """CIFAR-10H's cifar10h-probs.npy (or the counts) as float64 [N, K] rows that sum to 1."""
    try:
        h = np.load(Path(path).expanduser(), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise invalid(key, path, f"cannot be read as a .npy array ({first_line(e)[:200]})") from None
    if not isinstance(h, np.ndarray) or h.ndim != 2 or h.dtype.kind not in "iuf":
        raise invalid(key, path, "must be one [N, K] numeric array (CIFAR-10H's cifar10h-probs.npy)")
    h = h.astype(np.float64)
    sums = h.sum(1, keepdims=True)
    if not np.isfinite(h).all() or (h < 0).any() or (sums <= 0).any():
        raise invalid(key, path, "its rows must be finite, non-negative and not all 0")
    if np.abs(sums - 1).max() > 1e-6:  # counts: each row over its annotators
        h = h / sums
    return h


# --- which files apply where: the checks that need no data (run.check_config) -------------------


def check_human(cfg: Config) -> None:
    """The human-label settings against the data they describe, before any data loads: the files
    exist, the dataset is CIFAR-10 in a known order, and each file describes the split it is used on
    (CIFAR-10N the official training images, CIFAR-10H the official test images)."""
    d, noise = cfg.data, cfg.data.label_noise
    # What reads a file, the file's key, our split it describes, the official split the file covers.
    uses = [(f"data.label_noise.kind={noise.kind}", "data.label_noise.file", noise.file, "train", "train")
            if noise.kind in ("human", "matched") else None,
            ("eval.human", "eval.human", cfg.eval.human, "test", "test") if cfg.eval.human else None,
            ("loss.prior=human", "loss.human", cfg.loss.human, "train", "test") if cfg.loss.prior == "human" else None]
    official = {"train": d.train_on, "test": "test" if d.train_on == "train" else "train"}
    for what, key, path, split, covers in filter(None, uses):
        name = "CIFAR-10N" if covers == "train" else "CIFAR-10H"
        if path in (None, ""):
            raise invalid(key, path, f"must be set with {what}: the path of {name}'s file")
        if not Path(path).expanduser().is_file():
            raise invalid(key, path, "no such file")
        if d.name not in HUMAN_DATASETS:
            raise invalid(key, path, f"{name} describes CIFAR-10's images (data=cifar10, or data=imagefolder with "
                                     f"data.original_index); data={d.name} has no human labels")
        if d.name == "imagefolder" and d.original_index in (None, ""):
            raise invalid("data.original_index", d.original_index, f"must be set with {what} on data=imagefolder: "
                          f"the .npz of each image's original CIFAR-10 index")
        if official[split] != covers:
            hint = ("train on them with data.train_on=test (experiment=cifar10h)" if key == "loss.human" else
                    "data.train_on=test swaps CIFAR-10's splits")
            raise invalid(key, path, f"{what} needs {name}'s images as the {split} split, but it is CIFAR-10's "
                                     f"official {official[split]} split, which {name} does not cover; {hint}")
    if d.original_index and not Path(d.original_index).expanduser().is_file():
        raise invalid("data.original_index", d.original_index, "no such file")


# --- attaching the files to the splits ----------------------------------------------------------


def _in_classes(labels: np.ndarray, keep: list[int] | None) -> np.ndarray:
    """Original labels in the split's numbering (data.classes order); -1 outside the kept classes."""
    if keep is None:
        return labels
    remap = np.full(max(int(labels.max()), max(keep)) + 1, -1, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    return remap[labels]


def _check_clean(key: str, path: str, clean: np.ndarray, s: Split, what: str) -> None:
    """The file's clean labels must be the split's labels, image by image."""
    y = s.y.cpu().numpy()
    wrong = np.flatnonzero(clean[s.src.numpy()] != y)
    if len(wrong):
        i = wrong[0]
        raise invalid(key, path, f"its clean_label disagrees with the {what} labels on {len(wrong)} of {len(y)} images "
                                 f"(first: original index {int(s.src[i])}, file {clean[s.src[i]]}, data {y[i]}); "
                                 f"is the data in the original order (data.original_index)?")


def matched_labels(y: Tensor, counts: np.ndarray, seed: int) -> Tensor:
    """Class-conditional noise with given transition counts: of the images of true class i, a
    random counts[i, j] of them get label j (the images chosen with `seed`), so the realised
    transition matrix is `counts` exactly; y int64 [N], counts [K, K] with row sums the class sizes."""
    g = torch.Generator().manual_seed(seed)
    out = y.clone()
    for i in range(len(counts)):
        members = (y == i).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=g)]
        out[members] = torch.from_numpy(np.repeat(np.arange(len(counts)), counts[i]))
    return out


def transition_counts(clean: Tensor, given: Tensor, k: int) -> np.ndarray:
    """[K, K] counts of (true class, given label)."""
    return torch.bincount(clean.cpu() * k + given.cpu(), minlength=k * k).view(k, k).numpy()


def human_noise(cfg: DataConfig, s: Split, k: int, n_official: int, seed: int, what: str) -> tuple[Tensor, dict]:
    """The labels of split `s` under data.label_noise.kind=human|matched, and the facts of run_info.json.

    human: each image's label in the chosen CIFAR-10N set. matched: synthetic noise with that set's
    transition counts on these very images (matched_labels). A human label outside data.classes
    cannot be a label of this task: that image keeps its own (counted in `outside_classes`)."""
    noise, key = cfg.label_noise, "data.label_noise.file"
    if s.src is None:
        raise invalid("data.original_index", cfg.original_index, "must be set: the images' original order is unknown")
    arrays = read_label_file(key, noise.file)
    if len(arrays["clean_label"]) != n_official:
        raise invalid(key, noise.file, f"holds {len(arrays['clean_label'])} labels; the training split of "
                                       f"{cfg.name} has {n_official} images")
    keep = None if cfg.classes is None else list(cfg.classes)
    top = max(int(v.max()) for v in arrays.values())
    if keep is None and top >= k:
        raise invalid(key, noise.file, f"its labels go up to {top}; {cfg.name} has {k} classes")
    clean = _in_classes(arrays["clean_label"], keep)
    _check_clean(key, noise.file, clean, s, what)
    given = _in_classes(arrays[FILE_KEYS[noise.labels]], keep)[s.src.numpy()]
    outside = given < 0
    given = torch.from_numpy(np.where(outside, s.y.cpu().numpy(), given))
    if noise.kind == "matched":
        given = matched_labels(s.y.cpu(), transition_counts(s.y, given, k), seed)
    info = {"kind": noise.kind, "labels": noise.labels, "file": noise.file, "sha256": sha256(noise.file),
            "outside_classes": int(outside.sum()),
            "file_rate": float((arrays[FILE_KEYS[noise.labels]] != arrays["clean_label"]).mean())}
    return given.to(s.y.device), info


def apply_human_noise(cfg: DataConfig, train: Split, val: Split, k: int, n_official: int,
                      seed: int) -> tuple[Split, Split, Tensor, dict[str, Any]]:
    """data.label_noise.kind=human|matched on train (and on val with data.label_noise.val=noisy):
    the noisy splits, the flipped positions of train and run_info.json's facts."""
    noisy_y, info = human_noise(cfg, train, k, n_official, seed, "training")
    flipped = (noisy_y != train.y).nonzero().squeeze(1)
    info["val"] = cfg.label_noise.val
    if cfg.label_noise.val == "noisy" and len(val):
        val_y, _ = human_noise(cfg, val, k, n_official, derive_seed(seed, "val"), "validation")
        info["val_flipped"] = int((val_y != val.y).sum())
        val = Split(val.x, val_y, val.src)
    return Split(train.x, noisy_y, train.src), val, flipped, info


def human_table(key: str, path: str, s: Split, n_official: int, split: str, keep: list[int] | None) -> Tensor:
    """CIFAR-10H's distribution of each image of `s`, float64 [N, K]: restricted to data.classes and
    renormalised; an image whose humans all chose classes left out takes its own label, one-hot."""
    h = read_human_probs(key, path)
    if len(h) != n_official:
        raise invalid(key, path, f"holds {len(h)} rows; the {split} split of CIFAR-10 has {n_official} images")
    if s.src is None:
        raise ConfigError(f"{key}: the images' original order is unknown (data.original_index)")
    h = h[s.src.numpy()]
    y = s.y.cpu().numpy()
    original_y = y if keep is None else np.asarray(keep)[y]
    if h.shape[1] <= original_y.max():
        raise invalid(key, path, f"has {h.shape[1]} classes per row; the data has labels up to {original_y.max()}")
    agree = float((h.argmax(1) == original_y).mean()) if len(y) else 1.0
    if agree < MIN_MAJORITY_AGREEMENT:
        raise invalid(key, path, f"its majority label agrees with the {split} labels on only {agree:.1%} of the images "
                                 f"(in order: ~99%); is the data in the original order (data.original_index)?")
    if keep is not None:
        h = h[:, keep]
        mass = h.sum(1, keepdims=True)
        h = np.where(mass > 0, h / np.where(mass > 0, mass, 1), np.eye(len(keep))[y])
    return torch.from_numpy(h)


def human_tables(cfg: Config, splits: dict[str, Split], official: dict[str, tuple[str, int]]) -> dict[str, Tensor]:
    """CIFAR-10H's distributions of the splits that use them: test (eval.human) and train (loss.prior=human)."""
    keep = None if cfg.data.classes is None else list(cfg.data.classes)
    uses = {"test": ("eval.human", cfg.eval.human), "train": ("loss.human", cfg.loss.human)}
    return {split: human_table(key, path, splits[split], official[split][1], official[split][0], keep)
            for split, (key, path) in uses.items() if path and (split == "test" or cfg.loss.prior == "human")}
