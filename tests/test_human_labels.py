"""Human labels as data (ls_bench.data.human): CIFAR-10N's noisy labels (data.label_noise.kind=human,
matched), the original-index map of an ImageFolder copy, CIFAR-10H's distributions as a prior
(loss.prior=human, data.train_on=test), and the one-line refusals of bad files and settings.

The fast tests use a toy CIFAR-10: ten classes with CIFAR-10's names, 8x8 PNGs, an original order
that is a shuffle of the labels, and files in CIFAR-10N's and CIFAR-10H's formats. The tests marked
`shared` read the real files in ../shared/data and skip, with the reason, where they are absent.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_input import run_forked
from test_safety import armed
from torchvision.io import write_png

from conftest import REPO, TINY, make_config, one_line, run_cli
from ls_bench.data import load_dataset
from ls_bench.data.human import read_label_file, transition_counts
from ls_bench.data.readers import _list_images
from ls_bench.errors import ConfigError
from ls_bench.run import check_config, setup

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SETS = ("aggre_label", "worse_label", "random_label1", "random_label2", "random_label3")
SHARED = REPO.parent / "shared" / "data"


@dataclass
class Toy:
    root: Path  # ImageFolder tree
    index: Path  # original-index .npz
    n: Path  # CIFAR-10N-like .pt
    h: Path  # CIFAR-10H-like .npy
    cache: Path
    original: dict[str, np.ndarray]  # labels in the original order
    labels: dict[str, np.ndarray]  # CIFAR-10N-like sets, original order
    probs: np.ndarray  # CIFAR-10H-like, original test order

    def args(self, *more: str) -> list[str]:
        return ["data=imagefolder", f"data.root={self.root}", f"data.original_index={self.index}",
                f"data.cache_dir={self.cache}", "data.val_size=10", *more]

    def noise(self, labels: str = "worse", kind: str = "human", *more: str) -> list[str]:
        return self.args(f"data.label_noise.kind={kind}", f"data.label_noise.file={self.n}",
                         f"data.label_noise.labels={labels}", *more)


def make_toy(base: Path, n_train: int = 8, n_test: int = 4) -> Toy:
    """The toy: file j of class c in ImageFolder order is the original image index[j], the j-th
    of the stable argsort of the original labels (how the shared copy was numbered)."""
    rng = np.random.default_rng(0)
    original = {"train": rng.permutation(np.repeat(np.arange(10), n_train)),
                "test": rng.permutation(np.repeat(np.arange(10), n_test))}
    index = {s: np.argsort(y, kind="stable") for s, y in original.items()}
    g = torch.Generator().manual_seed(0)
    for split, y in original.items():
        for c in range(10):
            (base / "tree" / split / CIFAR10[c]).mkdir(parents=True)
            for i in range(int((y == c).sum())):
                img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g)
                write_png(img, str(base / "tree" / split / CIFAR10[c] / f"{i:04d}.png"))
    np.savez(base / "index.npz", **index)
    clean = original["train"]
    labels = {"clean_label": clean}
    for k, rate in zip(SETS, (0.1, 0.4, 0.2, 0.2, 0.2)):
        flip = rng.random(len(clean)) < rate
        labels[k] = np.where(flip, (clean + rng.integers(1, 10, len(clean))) % 10, clean)
    torch.save(labels, base / "human.pt")
    probs = 0.6 * np.eye(10)[original["test"]] + 0.4 * rng.dirichlet(np.ones(10), len(original["test"]))
    np.save(base / "probs.npy", probs)
    return Toy(base / "tree", base / "index.npz", base / "human.pt", base / "probs.npy", base / "cache", original,
               labels, probs)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Toy:
    return make_toy(tmp_path_factory.mktemp("toy"))


# --- the files are data ---------------------------------------------------------------------------


def test_a_pickle_payload_in_the_label_file_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for i, blob in enumerate([{"clean_label": armed(marker)},  # a pickled object in place of an array
                              {"clean_label": np.array([armed(marker)], dtype=object)}]):  # inside an array
        path = tmp_path / f"bad{i}.pt"
        torch.save(blob, path)
        with pytest.raises(ConfigError, match=r"^data.label_noise.file='.*' is invalid: cannot be loaded safely"):
            read_label_file("data.label_noise.file", str(path))
        assert not marker.exists()
    torch.load(tmp_path / "bad0.pt", weights_only=False)  # what the refusal prevents
    assert marker.exists()


def test_a_raw_pickle_and_other_contents_are_refused_in_one_line(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(armed(marker)))
    torch.save({"clean_label": torch.zeros(3)}, tmp_path / "tensor.pt")  # loads, but not CIFAR-10N's keys
    torch.save({k: np.zeros(3, np.float32) for k in ("clean_label", *SETS)}, tmp_path / "floats.pt")
    torch.save({**{k: np.zeros(3, np.int64) for k in SETS}, "clean_label": np.zeros(4, np.int64)}, tmp_path / "len.pt")
    (tmp_path / "text.pt").write_text("not a torch file")
    torch.save({k: np.full(3, -1, np.int64) for k in ("clean_label", *SETS)}, tmp_path / "negative.pt")
    expect = {"raw.pt": "cannot be loaded safely", "tensor.pt": "must hold clean_label, aggre_label",
              "floats.pt": "cannot be loaded safely", "len.pt": "1-D integer arrays of one length",
              "text.pt": "cannot be loaded safely", "missing.pt": "no such file",
              "negative.pt": "its labels must be class indices >= 0"}
    for name, text in expect.items():
        with pytest.raises(ConfigError, match=re.escape(text)) as e:
            read_label_file("data.label_noise.file", str(tmp_path / name))
        assert "\n" not in str(e.value)
    assert not marker.exists()


def test_the_cli_refuses_a_malicious_label_file_in_one_line(toy: Toy, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "human.pt"
    torch.save({"clean_label": armed(marker)}, bad)
    args = toy.args("data.label_noise.kind=human", f"data.label_noise.file={bad}", "data.label_noise.labels=worse")
    line = one_line(run_cli(*TINY, *args, f"hydra.run.dir={tmp_path / 'run'}"))
    assert "data.label_noise.file=" in line and "cannot be loaded safely" in line
    assert not marker.exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


# --- kind=human, matched ----------------------------------------------------------------------------


def test_human_noise_is_the_files_label_of_each_image(toy: Toy) -> None:
    ds = load_dataset(make_config(*toy.noise("worse")).data)
    src = ds.train.src.numpy()
    assert torch.equal(ds.train.y, torch.from_numpy(toy.labels["worse_label"][src]))
    assert torch.equal(ds.clean_train_y, torch.from_numpy(toy.original["train"][src]))
    changed = toy.labels["worse_label"][src] != toy.original["train"][src]
    assert ds.noisy_idx.tolist() == np.flatnonzero(changed).tolist()
    assert torch.equal(ds.val.y, torch.from_numpy(toy.original["train"][ds.val.src.numpy()]))  # val stays clean
    assert torch.equal(ds.test.y, torch.from_numpy(toy.original["test"][ds.test.src.numpy()]))
    assert ds.noise_info["labels"] == "worse" and ds.noise_info["val"] == "clean" and len(ds.noise_info["sha256"]) == 64
    noisy_val = load_dataset(make_config(*toy.noise("worse", "human", "data.label_noise.val=noisy")).data)
    assert torch.equal(noisy_val.val.y, torch.from_numpy(toy.labels["worse_label"][noisy_val.val.src.numpy()]))
    assert torch.equal(noisy_val.train.y, ds.train.y)


def test_matched_noise_has_the_human_transition_counts_on_other_images(toy: Toy) -> None:
    human = load_dataset(make_config(*toy.noise("worse")).data)
    matched = load_dataset(make_config(*toy.noise("worse", "matched")).data, noise_seed=1)
    again = load_dataset(make_config(*toy.noise("worse", "matched")).data, noise_seed=1)
    other = load_dataset(make_config(*toy.noise("worse", "matched")).data, noise_seed=2)
    counts = transition_counts(human.clean_train_y, human.train.y, 10)
    assert np.array_equal(transition_counts(matched.clean_train_y, matched.train.y, 10), counts)
    assert len(matched.noisy_idx) == len(human.noisy_idx)
    assert torch.equal(matched.train.y, again.train.y) and not torch.equal(matched.train.y, other.train.y)
    assert not torch.equal(matched.train.y, human.train.y)  # class-conditional, not the same images


def test_classes_and_train_size_keep_the_noise_of_the_images_kept(toy: Toy) -> None:
    full = load_dataset(make_config(*toy.noise("worse")).data)
    sub = load_dataset(make_config(*toy.noise("worse", "human", "data.classes=[5,3]", "data.val_size=2",
                                              "data.train_size=10")).data)
    keep = np.array([5, 3])
    src = sub.train.src.numpy()
    given = toy.labels["worse_label"][src]
    inside = np.isin(given, keep)
    # data.classes=[5,3] renumbers 5 -> 0, 3 -> 1; a human label outside them leaves the image's own
    expect = np.where(inside, np.array([{5: 0, 3: 1}.get(int(g), -1) for g in given]), sub.clean_train_y.numpy())
    assert len(sub.train) == 10 and sub.train.y.tolist() == expect.tolist()
    assert sub.noise_info["outside_classes"] == int((~inside).sum())
    assert set(src) <= set(full.train.src.tolist() + full.val.src.tolist())


def test_a_file_that_does_not_fit_the_data_is_refused_in_one_line(toy: Toy, tmp_path: Path) -> None:
    short = {k: v[:-1] for k, v in toy.labels.items()}
    torch.save(short, tmp_path / "short.pt")
    wrong = dict(toy.labels, clean_label=np.roll(toy.labels["clean_label"], 1))
    torch.save(wrong, tmp_path / "wrong.pt")
    torch.save(dict(toy.labels, worse_label=toy.labels["worse_label"] + 1), tmp_path / "big.pt")  # labels up to 10
    np.savez(tmp_path / "index.npz", train=np.arange(80), test=np.arange(40))  # not this folder's map
    cases = {
        "short.pt": (toy.args("data.label_noise.kind=human", f"data.label_noise.file={tmp_path / 'short.pt'}",
                              "data.label_noise.labels=aggre"), "holds 79 labels; the training split of imagefolder "
                                                                "has 80 images"),
        "wrong.pt": (toy.args("data.label_noise.kind=human", f"data.label_noise.file={tmp_path / 'wrong.pt'}",
                              "data.label_noise.labels=aggre"), "its clean_label disagrees with the training labels"),
        "big.pt": (toy.args("data.label_noise.kind=human", f"data.label_noise.file={tmp_path / 'big.pt'}",
                            "data.label_noise.labels=aggre"), "its labels go up to 10; imagefolder has 10 classes"),
        "map": ([*toy.noise("aggre"), f"data.original_index={tmp_path / 'index.npz'}"],
                "its clean_label disagrees with the training labels"),
    }
    for name, (args, text) in cases.items():
        with pytest.raises(ConfigError, match=re.escape(text)) as e:
            load_dataset(make_config(*args).data)
        assert "\n" not in str(e.value), name


# --- refused before any data loads ----------------------------------------------------------------


def bad_settings(toy: Toy, tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Case: (overrides, the start of the one line)."""
    probs = f"{toy.h}"
    return {
        "rate_with_human": ([*toy.noise(), "data.label_noise.rate=0.2"],
                            "data.label_noise.rate=0.2 is invalid: does not apply with kind=human"),
        "unknown_set": (toy.noise("worst"), "data.label_noise.labels='worst' is invalid: one of aggre, worse"),
        "no_set": (toy.args("data.label_noise.kind=human", f"data.label_noise.file={toy.n}"),
                   "data.label_noise.labels=None is invalid"),
        "missing_file": (toy.args("data.label_noise.kind=matched", f"data.label_noise.file={tmp / 'nope.pt'}",
                                  "data.label_noise.labels=worse"), "data.label_noise.file="),
        "no_file": (toy.args("data.label_noise.kind=human", "data.label_noise.labels=worse"),
                    "data.label_noise.file=None is invalid: must be set with kind=human"),
        "file_with_symmetric": ([*toy.args(), f"data.label_noise.file={toy.n}", "data.label_noise.rate=0.1"],
                                "data.label_noise.file="),
        "val_noisy_symmetric": ([*toy.args(), "data.label_noise.val=noisy"], "data.label_noise.val='noisy'"),
        "no_index": ([f"data.root={toy.root}" if a.startswith("data.root") else a for a in toy.noise()
                      if not a.startswith("data.original_index")], "data.original_index=None is invalid: must be set"),
        "index_with_cifar10": (["data=cifar10", f"data.original_index={toy.index}"], "data.original_index="),
        "eval_human_digits": ([f"eval.human={probs}"], "eval.human="),
        "eval_human_swapped": ([*toy.args("data.train_on=test"), f"eval.human={probs}"], "eval.human="),
        "prior_human_unswapped": ([*toy.args(), "loss.prior=human", f"loss.human={probs}"], "loss.human="),
        "prior_human_no_file": ([*toy.args("data.train_on=test"), "loss.prior=human"], "loss.human=None is invalid"),
        "epsilon_1_uniform": (["loss.epsilon=1"], "loss.epsilon=1.0 is invalid: must be in [0, 1)"),
        "train_on_digits": (["data.train_on=test"], "data.train_on='test' is invalid"),
        "missing_index": (toy.noise() + [f"data.original_index={tmp / 'nope.npz'}"], "data.original_index="),
    }


def test_bad_settings_are_refused_before_the_data_loads(toy: Toy, tmp_path: Path) -> None:
    for name, (args, start) in bad_settings(toy, tmp_path).items():
        with pytest.raises(ConfigError) as e:
            check_config(make_config(*args))
        assert str(e.value).startswith(start) and "\n" not in str(e.value), (name, str(e.value))


def test_through_the_cli_each_is_one_line(toy: Toy, tmp_path: Path) -> None:
    cases = bad_settings(toy, tmp_path)
    names = ["rate_with_human", "unknown_set", "missing_file", "no_index", "eval_human_digits", "prior_human_unswapped"]
    procs = run_forked([[*TINY, *cases[n][0], f"hydra.run.dir={tmp_path / n}"] for n in names], tmp_path / "io")
    for name, proc in zip(names, procs):
        line = one_line(proc)
        assert line.startswith(f"ls-bench: error: {cases[name][1]}"), (name, line)
        assert not (tmp_path / name / "metrics.jsonl").exists()


# --- CIFAR-10H as the prior -------------------------------------------------------------------------


def test_epsilon_1_with_the_human_prior_is_the_human_distribution_exactly(toy: Toy) -> None:
    args = toy.args("data.train_on=test", "data.val_size=10", "loss.prior=human", f"loss.human={toy.h}",
                    "model=small_cnn", "trainer.device=cpu")
    run = setup(make_config(*args, "loss.epsilon=1"))
    idx = torch.tensor([3, 0, 7, 7, len(run.ds.train) - 1])
    x, y = run.ds.train.x[idx], run.ds.train.y[idx]
    p = run.criterion.targets(x, y, None, None, idx).p
    h = torch.from_numpy(toy.probs[run.ds.train.src[idx].numpy()])
    assert torch.equal(p, h.float())
    half = setup(make_config(*args, "loss.epsilon=0.5")).criterion.targets(x, y, None, None, idx).p
    assert torch.allclose(half, 0.5 * torch.nn.functional.one_hot(y, 10).float() + 0.5 * h.float(), atol=1e-7)


def test_label_flip_with_the_human_prior_draws_from_each_images_distribution(toy: Toy) -> None:
    args = toy.args("data.train_on=test", "data.val_size=10", "loss.prior=human", f"loss.human={toy.h}",
                    "loss=label_flip", "loss.epsilon=1", "model=small_cnn", "trainer.device=cpu")
    run = setup(make_config(*args))
    idx = torch.zeros(20000, dtype=torch.long)  # one image, many draws
    y = run.ds.train.y[idx]
    p = run.criterion.targets(run.ds.train.x[:1].expand(20000, -1, -1, -1), y, torch.Generator().manual_seed(0),
                              None, idx).p
    h = torch.from_numpy(toy.probs[int(run.ds.train.src[0])]).float()
    assert torch.allclose(p.mean(0), h, atol=0.015)


# --- the real files ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared() -> Path:
    need = [SHARED / "cifar10-jpeg", SHARED / "cifar10-jpeg-original-index.npz", SHARED / "cifar10n" /
            "CIFAR-10_human.pt", SHARED / "cifar10h" / "cifar10h-probs.npy"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        pytest.skip(f"shared data not found: {', '.join(missing)}")
    return SHARED


def test_the_shared_map_gives_cifar10n_clean_labels_and_cifar10h_majorities(shared: Path) -> None:
    """The JPEG tree's labels, mapped through the original index, are CIFAR-10N's clean labels
    exactly; CIFAR-10H's majority agrees with the test labels on 99% of the images (11% shuffled)."""
    index = np.load(shared / "cifar10-jpeg-original-index.npz")
    clean = read_label_file("k", str(shared / "cifar10n" / "CIFAR-10_human.pt"))["clean_label"]
    files, classes = _list_images(shared / "cifar10-jpeg" / "train")
    assert classes == list(CIFAR10)
    tree_labels = np.array([c for _, c in files])
    assert np.array_equal(clean[index["train"]], tree_labels)
    test_labels = np.array([c for _, c in _list_images(shared / "cifar10-jpeg" / "test")[0]])
    majority = np.load(shared / "cifar10h" / "cifar10h-probs.npy").argmax(1)
    assert (majority[index["test"]] == test_labels).mean() > 0.99
    assert (majority == test_labels).mean() < 0.2  # the map matters


@pytest.mark.parametrize("labels, rate", [("aggre", 0.0901), ("random1", 0.17234), ("worse", 0.40208)])
def test_the_realised_rates_on_the_shared_files(shared: Path, labels: str, rate: float) -> None:
    """All 50,000 training images (data.val_size=0): run_info.json's label_noise, as the runner
    builds it (setup, build_run_info), gives CIFAR-10N's 9.01%, 17.23%, 40.21%."""
    from ls_bench.config import flat_config
    from ls_bench.train import build_run_info

    cfg = make_config(*shared_noise(shared, labels), "model=small_cnn", "trainer.device=cpu")
    noise = build_run_info(setup(cfg), flat_config(cfg))["label_noise"]
    assert noise["rate_realised"] == noise["file_rate"] == rate and noise["flipped"] == round(50000 * rate)
    assert noise["labels"] == labels and noise["sha256"] == SHA256_CIFAR10N


SHA256_CIFAR10N = "873e69c39cb9b5e97fb6bae2d60bb59b38a5cbc31d2b868f7903dcb2b9dd2310"  # the shared copy's


def shared_noise(shared: Path, labels: str) -> list[str]:
    return ["data=imagefolder", f"data.root={shared / 'cifar10-jpeg'}", "data.val_size=0",
            f"data.original_index={shared / 'cifar10-jpeg-original-index.npz'}", "data.label_noise.kind=human",
            f"data.label_noise.file={shared / 'cifar10n' / 'CIFAR-10_human.pt'}", f"data.label_noise.labels={labels}",
            "metrics.temperature_scaling=false"]


@pytest.mark.slow
def test_the_cli_reports_the_realised_rates(shared: Path, tmp_path: Path) -> None:
    """The CLI as a user types it, one epoch of a small CNN per label set on all 50,000 images
    (~1 min per run on 2 idle cores): run_info.json's rate_realised is 9.01% / 17.23% / 40.21%."""
    proc = run_cli("-m", *shared_noise(shared, "aggre,random1,worse"), "model=small_cnn", "trainer.epochs=1",
                   "trainer.batch_size=500", "trainer.progress=false", "metrics.figures=false", "eval.bootstrap=0",
                   "data.augment=false",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.callbacks.sweep_report.enabled=false",
                   timeout=3 * 3600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rates = {}
    for info in (tmp_path / "sweep").rglob("run_info.json"):
        noise = json.loads(info.read_text())["label_noise"]
        rates[noise["labels"]] = round(100 * noise["rate_realised"], 2)
    assert rates == {"aggre": 9.01, "random1": 17.23, "worse": 40.21}


def test_epsilon_1_on_the_shared_files_is_cifar10h_exactly(shared: Path) -> None:
    run = setup(make_config("experiment=cifar10h", f"data.root={shared / 'cifar10-jpeg'}",
                            f"data.original_index={shared / 'cifar10-jpeg-original-index.npz'}",
                            f"loss.human={shared / 'cifar10h' / 'cifar10h-probs.npy'}", "loss.epsilon=1",
                            "model=small_cnn", "trainer.device=cpu"))
    assert (len(run.ds.train), len(run.ds.val), len(run.ds.test)) == (9000, 1000, 50000)
    idx = torch.arange(0, 9000, 7)
    p = run.criterion.targets(run.ds.train.x[idx], run.ds.train.y[idx], None, None, idx).p
    h = np.load(shared / "cifar10h" / "cifar10h-probs.npy")[run.ds.train.src[idx].numpy()]
    assert torch.equal(p, torch.from_numpy(h).float())


def test_data_cifar10_needs_no_map_its_order_is_the_original(toy: Toy, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision's CIFAR10 (absent here) is read in the original order, with Split.src = 0..N-1:
    a stand-in reader giving the toy's images in that order gets each image its own human label.
    (The validation draw is by position, so it holds out other images than the ImageFolder order.)"""
    from ls_bench import data
    from ls_bench.data.loader import Split

    folder_train = data.DATASETS["imagefolder"](make_config(*toy.args()).data)[0]
    by_src = folder_train.x[folder_train.src.argsort()]  # image of each original index

    def original_order(cfg):  # the ImageFolder copy put back in the original order, as torchvision reads it
        train, test, classes = data.DATASETS["imagefolder"](make_config(*toy.args()).data)
        back = [Split(s.x[s.src.argsort()], s.y[s.src.argsort()], torch.arange(len(s))) for s in (train, test)]
        return back[0], back[1], classes

    monkeypatch.setitem(data.DATASETS, "cifar10", original_order)
    args = ["data=cifar10", "data.val_size=10", "data.label_noise.kind=human", f"data.label_noise.file={toy.n}",
            "data.label_noise.labels=worse"]
    check_config(make_config(*args))
    ds = load_dataset(make_config(*args).data)
    src = ds.train.src.numpy()
    assert torch.equal(ds.train.x, by_src[src])
    assert ds.train.y.tolist() == toy.labels["worse_label"][src].tolist()
    assert ds.clean_train_y.tolist() == toy.original["train"][src].tolist()
