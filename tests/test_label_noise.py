"""Label noise in the training data: symmetric and asymmetric flips, fixed per noise seed,
train only; and class selection (data.classes)."""

from __future__ import annotations

import pytest
import torch

from ls_bench.config import DataConfig, LabelNoiseConfig
from ls_bench.data import load_dataset
from ls_bench.data.loader import Split
from ls_bench.data.splits import CIFAR10_ASYM, corrupt_labels, select_classes
from ls_bench.errors import ConfigError

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
