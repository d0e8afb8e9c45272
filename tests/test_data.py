"""The data package: the tensor-resident loader, batched augmentation, ImageFolder listing and decode
cache, splits, label noise and class selection.

References are independent: torchvision's ImageFolder + PIL for decoding and file order,
torchvision.transforms.v2.functional for crops and flips, scikit-learn for stratified splits,
float64 torch reductions for channel statistics, chi-square tests for the augmentation law.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import binomtest, chisquare
from torchvision.transforms.v2 import functional as TF

from ls_bench.config import DataConfig, ImbalanceConfig, LabelNoiseConfig
from ls_bench.data import load_dataset
from ls_bench.data.loader import Normalize, Split, channel_stats, eval_batches, random_crop_flip, train_batches
from ls_bench.data.readers import _list_images
from ls_bench.data.splits import (
    CIFAR10_ASYM,
    corrupt_labels,
    long_tail,
    long_tail_counts,
    select_classes,
    stratified_split,
)
from ls_bench.errors import ConfigError

PAD = 4
# torchvision 0.29 deprecates its image decoders (in favour of TorchCodec) with a warning per call.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:torchvision.*")


# --- augmentation --------------------------------------------------------------------------------


def position_images(n: int, size: int = 32) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 holds column + 1 (0 is the zero padding), channel 2 noise."""
    r = torch.arange(1, size + 1, dtype=torch.uint8)
    x = torch.empty(n, 3, size, size, dtype=torch.uint8)
    x[:, 0] = r[:, None]
    x[:, 1] = r[None, :]
    x[:, 2] = torch.randint(0, 256, (n, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return x


def recover(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row offset, column offset, flipped) of each crop, from the centre pixels of position images.

    Output pixel (16, c) reads padded column dx + c, or dx + 31 - c when flipped; the original
    column is that minus PAD, and channel 1 stores it + 1. The centre is inside the image for
    every offset in 0..8.
    """
    row = out[:, 0, 16, 16].long() - 1  # = 16 + dy - PAD
    c16, c17 = out[:, 1, 16, 16].long() - 1, out[:, 1, 16, 17].long() - 1
    flipped = c17 < c16
    dx = torch.where(flipped, c16 - (31 - 16) + PAD, c16 - 16 + PAD)
    return row - 16 + PAD, dx, flipped


def test_crop_offsets_are_uniform_on_0_to_8_and_flip_rate_is_one_half():
    n = 18_000
    out = random_crop_flip(position_images(n), PAD, torch.Generator().manual_seed(0))
    dy, dx, flipped = recover(out)
    for off in (dy, dx):
        counts = torch.bincount(off, minlength=2 * PAD + 1)
        assert len(counts) == 2 * PAD + 1 and counts.min() > 0  # exactly the values 0..8
        assert chisquare(counts.numpy()).pvalue > 1e-3
    joint = torch.bincount(dy * 9 + dx, minlength=81)  # independent axes: uniform on the 81 pairs
    assert chisquare(joint.numpy()).pvalue > 1e-3
    assert binomtest(int(flipped.sum()), n, 0.5).pvalue > 1e-3
    # flips independent of the offsets: the flip rate is 1/2 within every row offset
    for v in range(9):
        sel = flipped[dy == v]
        assert binomtest(int(sel.sum()), len(sel), 0.5).pvalue > 1e-4


def test_each_crop_equals_torchvision_crop_of_the_padded_image():
    x = torch.randint(0, 256, (48, 3, 32, 32), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    out = random_crop_flip(x, PAD, torch.Generator().manual_seed(3))
    dy, dx, flipped = recover(random_crop_flip(position_images(48), PAD, torch.Generator().manual_seed(3)))
    seen_flip = set()
    for b in range(len(x)):
        ref = TF.crop(TF.pad(x[b], [PAD], fill=0), int(dy[b]), int(dx[b]), 32, 32)
        if flipped[b]:
            ref = TF.horizontal_flip(ref)
        assert torch.equal(out[b], ref), b
        seen_flip.add(bool(flipped[b]))
    assert seen_flip == {True, False}
    assert out.dtype == torch.uint8 and out.is_contiguous(memory_format=torch.channels_last)


def test_crop_is_the_same_from_either_memory_layout_and_odd_sizes():
    x = torch.randint(0, 256, (6, 1, 8, 13), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    a = random_crop_flip(x, 2, torch.Generator().manual_seed(5))
    b = random_crop_flip(x.contiguous(memory_format=torch.channels_last), 2, torch.Generator().manual_seed(5))
    assert a.shape == x.shape and torch.equal(a, b)


# --- normalisation and batches ---------------------------------------------------------------------


def test_normalize_matches_torchvision_normalize_in_both_layouts():
    x = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    ref = TF.normalize(x.float() / 255, list(mean), list(std))
    for cl in (True, False):
        z = Normalize(mean, std, torch.device("cpu"), channels_last=cl)(x)
        assert z.dtype == torch.float32
        torch.testing.assert_close(z, ref, rtol=1e-5, atol=1e-5)
        assert z.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def test_train_batches_cover_a_permutation_with_fixed_size_and_replay_by_seed():
    split = Split(torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8), torch.arange(70) % 7)
    norm = Normalize((0.5,) * 3, (0.25,) * 3, torch.device("cpu"), channels_last=True)
    batches = list(train_batches(split, 16, seed=9, augment=True, norm=norm))
    idx = torch.cat([i for _, _, i in batches])
    assert [len(y) for _, y, _ in batches] == [16] * 4  # drop_last: 70 // 16 full steps
    assert len(set(idx.tolist())) == 64  # no image twice in an epoch
    assert all(torch.equal(y, split.y[i]) for _, y, i in batches)
    again = list(train_batches(split, 16, seed=9, augment=True, norm=norm))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(batches, again))
    other = list(train_batches(split, 16, seed=10, augment=True, norm=norm))
    assert not torch.equal(torch.cat([i for _, _, i in other]), idx)
    ev = list(eval_batches(split, 32, norm))
    assert [len(y) for _, y in ev] == [32, 32, 6]
    torch.testing.assert_close(torch.cat([x for x, _ in ev]), norm(split.x))


# --- statistics and splits -------------------------------------------------------------------------


def test_channel_stats_equal_float64_reductions():
    x = torch.randint(0, 256, (300, 3, 7, 5), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    mean, std = channel_stats(x)
    xf = x.double() / 255
    np.testing.assert_allclose(mean, xf.mean(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(std, xf.std(dim=(0, 2, 3)).numpy(), rtol=1e-12)
    assert channel_stats(torch.full((4, 1, 3, 3), 7, dtype=torch.uint8))[1] == (1e-3,)  # constant: floored


@pytest.mark.parametrize("y, n", [
    (np.repeat(np.arange(10), 500), 500),  # CIFAR-like, balanced
    (np.repeat(np.arange(10), 500), 499),  # remainder: ties broken at random
    (np.random.RandomState(1).choice(5, 997, p=[.5, .2, .15, .1, .05]), 300),  # imbalanced
    (np.repeat(np.arange(3), [2, 50, 9]), 7),  # tiny classes
    (np.repeat(np.arange(3), [1, 50, 9]), 7),  # a class of one image: sklearn's own path
])
def test_stratified_split_is_sklearns_train_test_split(y, n):
    from sklearn.model_selection import train_test_split

    for seed in range(4):
        idx = np.arange(len(y))
        try:
            a, b = train_test_split(idx, test_size=n, stratify=y, random_state=seed)
        except ValueError:
            with pytest.raises(ValueError):
                stratified_split(torch.from_numpy(y), n, seed)
            continue
        rest, held = stratified_split(torch.from_numpy(y), n, seed)
        assert np.array_equal(rest, np.sort(a)) and np.array_equal(held, np.sort(b))


# --- ImageFolder listing and the decode cache --------------------------------------------------------


@pytest.fixture
def small_cifar(tmp_path: Path, cifar_root: Path) -> Path:
    """2 classes × 20 images per split copied from the shared CIFAR-10, in a nested layout."""
    root = tmp_path / "cifar-small"
    for split in ("train", "test"):
        for cls in ("cat", "ship"):
            files = sorted((cifar_root / split / cls).iterdir())[:20]
            for i, f in enumerate(files):
                dest = root / split / cls / ("sub" if i % 4 == 0 else "") / f.name  # os.walk order matters
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # skipped, like ImageFolder does
    return root


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def cache_files(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in cache.glob("*.pt")}


def test_listing_follows_torchvision_imagefolder_order(small_cifar: Path):
    from torchvision.datasets import ImageFolder

    for split in ("train", "test"):
        ref = ImageFolder(str(small_cifar / split))
        files, classes = _list_images(small_cifar / split)
        assert classes == ref.classes == ["cat", "ship"]
        assert files == [(p, c) for p, c in ref.samples]


def test_imagefolder_pixels_equal_pil_decoding_and_root_is_never_written(small_cifar: Path, tmp_path: Path):
    from torchvision.datasets import ImageFolder

    before = tree_state(small_cifar)
    cfg = DataConfig(name="imagefolder", root=str(small_cifar), val_size=4, augment=True,
                     cache_dir=str(tmp_path / "cache"))
    ds = load_dataset(cfg)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (36, 4, 40) and ds.classes == ["cat", "ship"]
    ref = ImageFolder(str(small_cifar / "test"))  # PIL decoding, torchvision's order
    x_ref = torch.stack([torch.from_numpy(np.array(img)).permute(2, 0, 1) for img, _ in ref])
    assert torch.equal(ds.test.x, x_ref) and torch.equal(ds.test.y, torch.tensor(ref.targets))
    load_dataset(cfg)  # and a cache hit
    assert tree_state(small_cifar) == before  # nothing created, changed or touched under data.root
    assert len(cache_files(tmp_path / "cache")) == 2  # train and test, in data.cache_dir


def test_cache_hit_stale_and_corrupt_entries(small_cifar: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    cfg = DataConfig(name="imagefolder", root=str(small_cifar), val_size=4, cache_dir=str(cache))
    first = load_dataset(cfg)
    entries = cache_files(cache)
    assert len(entries) == 2

    # Hit: the same files are read back, not decoded and rewritten (same inodes).
    again = load_dataset(cfg)
    assert cache_files(cache) == entries and torch.equal(again.test.x, first.test.x)

    # Stale: an image changes (content, size, mtime) -> a new entry replaces the old one.
    victim = sorted((small_cifar / "test" / "ship").glob("*.jpg"))[0]
    shutil.copy2(sorted((small_cifar / "test" / "cat").glob("*.jpg"))[0], victim)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    changed = load_dataset(cfg)
    now = cache_files(cache)
    assert len(now) == 2 and [k for k in now if k.startswith("imagefolder-train")] == \
        [k for k in entries if k.startswith("imagefolder-train")]
    test_entry = next(k for k in now if k.startswith("imagefolder-test"))
    assert test_entry not in entries
    pos = [i for i, (p, _) in enumerate(_list_images(small_cifar / "test")[0]) if p == str(victim)][0]
    assert not torch.equal(changed.test.x[pos], first.test.x[pos])
    decoded = torch.from_numpy(np.array(Image.open(victim).convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(changed.test.x[pos], decoded)

    # Corrupt: a flipped byte in the pixel payload, then a truncated file -> rebuilt, same pixels.
    path = cache / test_entry
    blob = bytearray(path.read_bytes())
    x = changed.test.x.clone()  # the loaded tensor maps the file we are about to damage
    start = bytes(blob).find(x.flatten()[:64].numpy().tobytes())
    assert start > 0
    blob[start + 1000] ^= 0xFF
    path.write_bytes(bytes(blob))
    ino = path.stat().st_ino
    assert torch.equal(load_dataset(cfg).test.x, x) and path.stat().st_ino != ino  # rewritten
    path.write_bytes(path.read_bytes()[:5000])
    assert torch.equal(load_dataset(cfg).test.x, x) and path.stat().st_size > 5000


# --- split sizes: counts and fractions --------------------------------------------------------


def test_digits_splits_are_fractions_of_what_is_there_and_counts_stay_counts() -> None:
    from sklearn.model_selection import train_test_split

    ds = load_dataset(DataConfig())  # digits defaults: test 0.2 of 1797, then val 0.2 of the rest
    assert (len(ds.test), len(ds.val), len(ds.train)) == (360, 288, 1797 - 360 - 288)
    # The same rounding as scikit-learn's float test_size (up): 0.2 of 1437 is 287.4 -> 288.
    held = train_test_split(np.arange(1437), test_size=0.2, random_state=0)[1]
    assert len(ds.val) == len(held)
    counts = load_dataset(DataConfig(test_size=100, val_size=250, train_size=0.5))
    assert (len(counts.test), len(counts.val), len(counts.train)) == (100, 250, 724)  # ceil(0.5 * 1447)
    two = load_dataset(DataConfig(classes=[3, 5]))  # 183 + 182 images: the fractions fit any subset
    assert (len(two.test), len(two.val), len(two.train)) == (73, 59, 233)
    assert sorted(torch.bincount(two.test.y).tolist()) == [36, 37]  # stratified


def test_binary_ls_on_two_digit_classes_trains_and_evaluates(tmp_path: Path) -> None:
    from conftest import TINY, make_config
    from ls_bench.train import fit

    final = fit(make_config(*TINY, "data.classes=[3,5]", "loss=binary", "loss.epsilon=0.1"), tmp_path)
    assert final["epochs"] == 1 and 0 <= final["test/acc"] <= 1 and final["temperature"] > 0
    with np.load(tmp_path / "predictions.npz") as p:
        assert p["test_logits"].shape == (73, 2) and (p["test_logits"][:, 0] == 0).all()  # [0, z]


@pytest.mark.parametrize("override,shown", [
    ("data.val_size=1.5", "data.val_size=1.5 is invalid: must be >= 0"),
    ("data.val_size=-0.2", "data.val_size=-0.2 is invalid: must be >= 0"),
    ("data.test_size=0", "data.test_size=0 is invalid: must be > 0"),
    ("data.test_size=-3", "data.test_size=-3 is invalid: must be > 0"),
    ("data.train_size=0", "data.train_size=0 is invalid: must be null (all) or > 0"),
    ("data.train_size=2.5", "data.train_size=2.5 is invalid: must be null (all) or > 0"),
])
def test_a_size_that_is_neither_count_nor_fraction_is_one_line(override: str, shown: str) -> None:
    from conftest import make_config
    from ls_bench.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make_config(override)
    assert str(e.value).startswith(shown) and "fraction in (0, 1)" in str(e.value) and "\n" not in str(e.value)


def test_a_fraction_too_big_for_the_data_names_what_it_resolved_to() -> None:
    from ls_bench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data.val_size=0.999 \(292 images\) is invalid: must be < the 292 "):
        load_dataset(DataConfig(classes=[3, 5], val_size=0.999))


def test_epoch_draws_made_up_front_give_the_batches_of_per_batch_draws() -> None:
    """train_batches draws the epoch's crops and flips at its start (one copy to the device);
    the batches equal those of drawing them batch by batch from the same generator."""
    from ls_bench.data.loader import random_crop_flip

    x = torch.randint(0, 256, (300, 3, 8, 8), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    split = Split(x, torch.arange(300) % 10)
    norm = Normalize((0.5,) * 3, (0.25,) * 3, torch.device("cpu"), channels_last=True)
    got = list(train_batches(split, 64, seed=11, augment=True, norm=norm))
    g = torch.Generator().manual_seed(11)
    perm = torch.randperm(300, generator=g)
    for i, (xb, yb, idx) in enumerate(got):
        ref_idx = perm[64 * i:64 * (i + 1)]
        assert torch.equal(idx, ref_idx) and torch.equal(yb, split.y[ref_idx])
        assert torch.equal(xb, norm(random_crop_flip(split.x[ref_idx], 4, g)))
    assert len(got) == 300 // 64


# --- label noise and class selection (data.label_noise, data.classes) ---------------------------------

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_symmetric_noise_rate_and_targets() -> None:
    K, N, rate = 10, 50000, 0.3
    y = torch.arange(N) % K
    noisy, idx = corrupt_labels(y, K, rate, "symmetric", seed=0)
    changed = (noisy != y).nonzero().squeeze(1)
    assert torch.equal(changed, idx)  # the flipped positions are exactly the changed ones
    assert abs(len(idx) / N - rate) < 0.01  # every flip lands on another class: realised ≈ requested
    # targets uniform over the K-1 other classes: the shift y~ - y mod K is uniform on 1..K-1
    shift = torch.bincount((noisy[idx] - y[idx]) % K, minlength=K) / len(idx)
    assert shift[0] == 0
    assert shift[1:].tolist() == pytest.approx([1 / (K - 1)] * (K - 1), abs=0.01)


def test_asymmetric_noise_uses_the_patrini_pairs_for_cifar10_names() -> None:
    K = 10
    y = torch.arange(K).repeat(2000)
    noisy, idx = corrupt_labels(y, K, 0.4, "asymmetric", seed=1, classes=CIFAR10)
    pairs = {(CIFAR10[a], CIFAR10[b]) for a, b in zip(y[idx].tolist(), noisy[idx].tolist())}
    assert pairs == set(CIFAR10_ASYM.items())
    assert pairs == {("truck", "automobile"), ("bird", "airplane"), ("deer", "horse"), ("cat", "dog"), ("dog", "cat")}
    for src in CIFAR10_ASYM:  # each source class flips with probability `rate`
        frac = (noisy[y == CIFAR10.index(src)] != CIFAR10.index(src)).float().mean()
        assert abs(frac - 0.4) < 0.04
    assert abs(len(idx) / len(y) - 0.4 * 5 / 10) < 0.02  # five of ten classes are sources


def test_asymmetric_noise_is_cyclic_otherwise() -> None:
    y = torch.arange(7).repeat(500)
    noisy, idx = corrupt_labels(y, 7, 0.5, "asymmetric", seed=2, classes=[str(i) for i in range(7)])
    assert torch.equal(noisy[idx], (y[idx] + 1) % 7)
    assert abs(len(idx) / len(y) - 0.5) < 0.05


def test_noise_is_fixed_by_its_seed_and_nested_in_the_rate() -> None:
    y = torch.arange(10).repeat(300)
    a, ia = corrupt_labels(y, 10, 0.2, "symmetric", seed=5)
    b, ib = corrupt_labels(y, 10, 0.2, "symmetric", seed=5)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    c, _ = corrupt_labels(y, 10, 0.2, "symmetric", seed=6)
    assert not torch.equal(a, c)
    d, idd = corrupt_labels(y, 10, 0.4, "symmetric", seed=5)  # same seed, higher rate: a superset
    assert set(ia.tolist()) < set(idd.tolist()) and torch.equal(d[ia], a[ia])


def test_select_classes_relabels_by_position() -> None:
    s = Split(torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1), torch.tensor([0, 5, 3, 3, 1, 5]))
    out = select_classes(s, [5, 3])
    assert out.y.tolist() == [0, 1, 1, 0] and out.x.flatten().tolist() == [1, 2, 3, 5]
    # a split that lacks the highest kept class (a small test set) still works
    assert select_classes(Split(s.x[:1], s.y[:1]), [0, 9]).y.tolist() == [0]


def _digits(**noise) -> DataConfig:
    return DataConfig(name="digits", val_size=100, label_noise=LabelNoiseConfig(**noise))


def test_load_dataset_corrupts_train_only_and_records_the_flips() -> None:
    clean = load_dataset(_digits())
    noisy = load_dataset(_digits(rate=0.25, kind="symmetric"), noise_seed=3)
    assert torch.equal(noisy.val.y, clean.val.y) and torch.equal(noisy.test.y, clean.test.y)  # clean eval
    assert torch.equal(noisy.train.x, clean.train.x) and torch.equal(noisy.clean_train_y, clean.train.y)
    changed = (noisy.train.y != clean.train.y).nonzero().squeeze(1)
    assert torch.equal(changed, noisy.noisy_idx)
    assert abs(len(changed) / len(clean.train) - 0.25) < 0.05
    again = load_dataset(_digits(rate=0.25, kind="symmetric"), noise_seed=3)
    assert torch.equal(again.train.y, noisy.train.y)
    other = load_dataset(_digits(rate=0.25, kind="symmetric"), noise_seed=4)
    assert not torch.equal(other.train.y, noisy.train.y)
    assert len(clean.noisy_idx) == 0 and clean.clean_train_y is None


def test_load_dataset_with_classes_and_asymmetric_noise() -> None:
    ds = load_dataset(DataConfig(name="digits", val_size=50, test_size=60, classes=[3, 5],
                                 label_noise=LabelNoiseConfig(rate=0.3, kind="asymmetric")), noise_seed=0)
    assert ds.classes == ["3", "5"] and ds.num_classes == 2
    assert set(ds.train.y.tolist()) == {0, 1} and set(ds.test.y.tolist()) == {0, 1}
    assert torch.equal(ds.train.y[ds.noisy_idx], 1 - ds.clean_train_y[ds.noisy_idx])  # cyclic at K=2


@pytest.mark.parametrize("classes,msg", [([3, 10], r"data\.classes"), ([-1, 2], r"data\.classes")])
def test_unknown_classes_fail(classes, msg) -> None:
    with pytest.raises(ConfigError, match=msg):
        load_dataset(DataConfig(name="digits", classes=classes))


def test_corrupt_labels_rejects_bad_rate() -> None:
    with pytest.raises(ValueError):
        corrupt_labels(torch.zeros(3, dtype=torch.long), 2, 1.0, "symmetric", seed=0)


# --- class imbalance (data.imbalance) -------------------------------------------------------------


@pytest.mark.parametrize("n_max,K,rho,total", [
    (5000, 10, 100, 12406), (5000, 10, 50, 13996), (5000, 10, 10, 20431),  # CIFAR-10-LT
    (500, 100, 100, 10847), (500, 100, 10, 19573),  # CIFAR-100-LT
])
def test_long_tail_counts_give_the_published_cifar_lt_sizes(n_max: int, K: int, rho: int, total: int) -> None:
    # The training-set sizes of Cao et al. 2019's CIFAR-LT (and the papers that reuse it) from the
    # full 5000 (500) images per class.
    counts = long_tail_counts(n_max, K, rho)
    assert sum(counts) == total and counts[0] == n_max and counts[-1] == n_max // rho
    assert counts == sorted(counts, reverse=True)
    assert long_tail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # LDAM-DRW's


def test_long_tail_keeps_random_images_per_class_nested_in_rho_and_fixed_by_seed() -> None:
    y = torch.arange(5).repeat_interleave(40)[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    small, big = long_tail_counts(40, 5, 10), long_tail_counts(40, 5, 2)
    keep10, keep2 = long_tail(y, small, seed=1), long_tail(y, big, seed=1)
    assert torch.bincount(y[keep10], minlength=5).tolist() == small
    assert set(keep10.tolist()) <= set(keep2.tolist())  # one seed: ρ = 10 keeps a subset of ρ = 2
    assert np.array_equal(keep10, long_tail(y, small, seed=1))
    assert not np.array_equal(keep10, long_tail(y, small, seed=2))
    assert np.all(np.diff(keep10) > 0)  # sorted positions: the split keeps its order


def _images(x: torch.Tensor) -> set[bytes]:
    return {bytes(img.numpy().tobytes()) for img in x}


def test_imbalance_cuts_train_after_val_and_leaves_val_and_test_balanced() -> None:
    balanced = load_dataset(DataConfig(name="digits"))
    lt = load_dataset(DataConfig(name="digits", imbalance=ImbalanceConfig(ratio=10)))
    n_max = int(torch.bincount(balanced.train.y).min())  # the smallest class after the hold-out
    expected = [int(n_max * 0.1 ** (k / 9)) for k in range(10)]
    assert torch.bincount(lt.train.y, minlength=10).tolist() == expected == lt.true_class_counts().tolist()
    assert lt.class_counts().tolist() == expected and expected[-1] == n_max // 10
    for s in ("val", "test"):
        assert torch.equal(getattr(lt, s).x, getattr(balanced, s).x) and torch.equal(getattr(lt, s).y,
                                                                                       getattr(balanced, s).y)
    assert _images(lt.train.x) <= _images(balanced.train.x)
    assert lt.mean != balanced.mean  # normalised with the statistics of the split it trains on


def test_imbalance_follows_train_size_and_classes_order_and_precedes_label_noise() -> None:
    cfg = DataConfig(name="digits", train_size=300, classes=[9, 3, 5], imbalance=ImbalanceConfig(ratio=4))
    pool = load_dataset(DataConfig(name="digits", train_size=300, classes=[9, 3, 5]))
    ds = load_dataset(cfg)
    n_max = int(torch.bincount(pool.train.y).min())  # of the train_size subset
    assert ds.true_class_counts().tolist() == [n_max, int(n_max * 0.25 ** 0.5), int(n_max / 4)]  # "9" is the head
    noisy = load_dataset(DataConfig(name="digits", train_size=300, classes=[9, 3, 5],
                                    imbalance=ImbalanceConfig(ratio=4), label_noise=LabelNoiseConfig(rate=0.3)),
                         noise_seed=0)
    assert torch.equal(noisy.clean_train_y, ds.train.y) and len(noisy.noisy_idx) > 0  # flips on the kept images
    assert noisy.true_class_counts().tolist() == ds.true_class_counts().tolist()  # counted on clean labels
    assert noisy.class_counts().tolist() != ds.class_counts().tolist()  # what class_prior sees: the labels trained on


def test_a_ratio_leaving_a_class_empty_is_one_line_naming_the_limit() -> None:
    n_max = int(torch.bincount(load_dataset(DataConfig(name="digits")).train.y).min())
    with pytest.raises(ConfigError) as e:
        load_dataset(DataConfig(name="digits", imbalance=ImbalanceConfig(ratio=10 * n_max)))
    msg = str(e.value)
    assert msg.startswith(f"data.imbalance.ratio={10 * n_max} is invalid: leaves class ") and "\n" not in msg
    assert f"must be in [1, {n_max})" in msg
    assert len(load_dataset(DataConfig(name="digits", imbalance=ImbalanceConfig(ratio=n_max - 1))).train) > 0
