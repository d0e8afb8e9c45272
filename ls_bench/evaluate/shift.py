"""A finished model under dataset shift and on out-of-distribution inputs: the inputs are made
here (corrupted test images, OOD sources), the model predicts them, selective.py and metrics.py score them.

Shift (Hendrycks & Dietterich 2019; Ovadia et al. 2019): every corruption of `eval.corruptions`
at every severity of `eval.severities`, on the test split, seeded by `data.split_seed` so every
run of a sweep sees the same corrupted images. Per corruption and severity `shift/<name>/s<k>/`
acc, nll, ece and ts_ece (the ECE after the temperature fitted on the clean validation split),
and their mean over the corruptions per severity, `shift/s<k>/...`.

OOD (in-distribution = the positive class): for each source of `eval.ood`, the MSP, max-logit
and energy scores of the test split against the source, `ood/<source>/<score>/auroc|aupr_in|fpr95`.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ls_bench.config import Config, DataConfig
from ls_bench.data.loader import Split
from ls_bench.data.readers import DATASETS, load_imagefolder_split
from ls_bench.data.splits import sized, split_count, stratified_split
from ls_bench.errors import ConfigError, invalid
from ls_bench.evaluate.corruptions import check_corruptions, corrupt, resolve_corruptions
from ls_bench.evaluate.metrics import compute_metrics, confidence_correct
from ls_bench.evaluate.selective import ece_floor, ood_metrics, ood_scores

OOD_SOURCES = ("held_out", "svhn", "cifar10", "cifar100", "imagefolder", "noise")


def check_eval(cfg: Config) -> None:
    """The eval section's checks that need no data (names, severities, ood_root)."""
    e = cfg.eval
    check_corruptions(list(e.corruptions), list(e.severities))
    for source in e.ood:
        if source not in OOD_SOURCES:
            raise invalid("eval.ood", list(e.ood), f"sources must be among {list(OOD_SOURCES)}")
    if len(set(e.ood)) != len(e.ood):
        raise invalid("eval.ood", list(e.ood), "sources must not repeat")
    if "imagefolder" in e.ood and e.ood_root in (None, ""):
        raise invalid("eval.ood_root", e.ood_root, "must be set with eval.ood=[imagefolder]: an ImageFolder tree")
    if "held_out" in e.ood and cfg.data.classes is None:
        raise invalid("eval.ood", list(e.ood), "held_out needs data.classes to leave some classes out")
    if e.bootstrap < 0:
        raise invalid("eval.bootstrap", e.bootstrap, "must be >= 0 (0: no bootstrap interval)")


# --- shift ---------------------------------------------------------------------------------------


def check_eval_against_data(cfg: Config, test: Split, num_classes: int) -> None:
    """The eval settings that need the data: eval.shift_size fits in the test split, and a
    stratified sample of it can hold every class (n >= K) and leave every class out (N - n >= K)."""
    size, N, K = cfg.eval.shift_size, len(test), num_classes
    if not cfg.eval.corruptions or size is None:
        return
    n = split_count(size, N)
    if n > N:
        raise invalid("eval.shift_size", sized(size, n), f"must be <= the {N} test images")
    if n < N and not (K <= n <= N - K):
        raise invalid("eval.shift_size", sized(size, n), f"a stratified sample of the {N} test images needs between "
                                                         f"{K} and {N - K} of them (the {K} classes), or all {N}")


def shift_split(test: Split, size: float | None, seed: int) -> Split:
    """The test images that eval.shift_size keeps for corruption: all of them (null), or a
    class-stratified sample of that count or fraction, drawn with data.split_seed (the same images
    in every run of a sweep)."""
    n = len(test) if size is None else split_count(size, len(test))
    if n >= len(test):
        return test
    _, held = stratified_split(test.y.cpu(), n, seed)
    return test.take(held)


SHIFT_KEYS = ("acc", "nll", "ece", "ece_floor", "ts_ece", "ts_ece_floor")


def _shift_row(z: Tensor, y: Tensor, temperature: float | None, n_bins: int, draws: int, seed: int) -> dict[str, float]:
    """acc, nll, ece of one corrupted split; ts_ece after the clean-validation temperature; with
    draws > 0 (eval.bootstrap), each ECE's floor: what a calibrated model would score on these
    few images (selective.ece_floor), beside which a small-sample ECE is read."""
    m = compute_metrics(z, y, n_bins)
    row = {"acc": m["acc"], "nll": m["nll"], "ece": m["ece"]}
    if draws > 0:
        row["ece_floor"] = ece_floor(confidence_correct(z, y)[0], n_bins, draws, seed)
    if temperature is not None:
        row["ts_ece"] = compute_metrics(z / temperature, y, n_bins)["ece"]
        if draws > 0:
            row["ts_ece_floor"] = ece_floor(confidence_correct(z / temperature, y)[0], n_bins, draws, seed)
    return row


def shift_metrics(cfg: Config, test: Split, temperature: float | None,
                  predict_split: Callable[[Split], Tensor]) -> dict[str, float]:
    """`shift/<name>/s<k>/{acc,nll,ece,ts_ece,...}` (_shift_row) and the per-severity means `shift/s<k>/...`, from the
    model's `predict_split` on the corrupted (eval.shift_size) test images."""
    test = shift_split(test, cfg.eval.shift_size, cfg.data.split_seed)
    names, y = resolve_corruptions(list(cfg.eval.corruptions)), test.y.cpu()
    out: dict[str, float] = {}
    for k in cfg.eval.severities:
        for name in names:
            x = corrupt(test.x, name, k, seed=cfg.data.split_seed, batch_size=cfg.trainer.eval_batch_size)
            z = predict_split(Split(x, test.y))
            row = _shift_row(z, y, temperature, cfg.metrics.n_bins, cfg.eval.bootstrap, cfg.data.split_seed)
            out.update({f"shift/{name}/s{k}/{key}": v for key, v in row.items()})
        for key in SHIFT_KEYS:
            values = [out[f"shift/{name}/s{k}/{key}"] for name in names if f"shift/{name}/s{k}/{key}" in out]
            if values:
                out[f"shift/s{k}/{key}"] = statistics.fmean(values)
    return out


# --- OOD sources -----------------------------------------------------------------------------------


def held_out_images(cfg: Config) -> Tensor:
    """The test images of the classes data.classes left out (for digits, which has no test split,
    every image of those classes: none of them was seen in training)."""
    train, test, classes = DATASETS[cfg.data.name](cfg.data)
    left_out = [c for c in range(len(classes)) if c not in cfg.data.classes]
    source = test if test is not None else train
    return source.x[torch.isin(source.y, torch.tensor(left_out))]


def _dataset_images(name: str, root: str | None, cfg: Config) -> Tensor:
    """The test split of a torchvision dataset or ImageFolder tree (for a tree without test/, all of it)."""
    if name == "imagefolder":
        tree = Path(root).expanduser()
        folder = tree / "test" if (tree / "test").is_dir() else tree
        if not folder.is_dir():
            raise invalid("eval.ood_root", root,
                          "must be a directory: an ImageFolder tree (its test/ split if present)")
        return load_imagefolder_split(folder, cfg.data.cache_dir, "ood")[0].x
    data = DataConfig(name=name, root=root or cfg.data.root or "./data", download=cfg.data.download,
                      cache_dir=cfg.data.cache_dir)
    train, test, _ = DATASETS[name](data)
    return (test if test is not None else train).x


def noise_images(like: Tensor, n: int, seed: int) -> Tensor:
    """Uniform-noise uint8 images of the data's shape, seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *like.shape[1:]), generator=g, dtype=torch.uint8)


def fit_shape(x: Tensor, like: Tensor, source: str) -> Tensor:
    """OOD images in the in-distribution shape: channels converted (grey <-> RGB), then resized
    (antialiased bilinear on uint8, torchvision). Anything else is refused in one line."""
    from torchvision.transforms.v2 import functional as TF

    c, h, w = like.shape[1:]
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and c == 1:
            x = TF.rgb_to_grayscale(x)
        else:
            raise ConfigError(f"eval.ood={source}: images with {x.shape[1]} channels cannot be compared with "
                              f"{c}-channel data")
    if tuple(x.shape[2:]) != (h, w):
        x = TF.resize(x, [h, w], antialias=True)
    return x.contiguous()


def ood_inputs(cfg: Config, like: Tensor, source: str) -> Tensor:
    """The OOD images of `source` in the shape of the in-distribution test images `like`."""
    if source == "noise":
        return noise_images(like, len(like), seed=cfg.data.split_seed)
    if source == "held_out":
        return fit_shape(held_out_images(cfg), like, source)
    return fit_shape(_dataset_images(source, cfg.eval.ood_root, cfg), like, source)


def ood_results(cfg: Config, test_x: Tensor, test_logits: Tensor,
                predict_split: Callable[[Split], Tensor]) -> tuple[dict[str, float], dict[str, Any]]:
    """(`ood/<source>/<score>/...` metrics, {`ood_<source>_logits`: array} for predictions.npz): the
    model's `predict_split` on each eval.ood source against its `test_logits` on `test_x`."""
    scores_in = ood_scores(test_logits)
    metrics: dict[str, float] = {}
    arrays: dict[str, Any] = {}
    for source in cfg.eval.ood:
        x = ood_inputs(cfg, test_x, source).to(test_x.device)
        z = predict_split(Split(x, torch.zeros(len(x), dtype=torch.long, device=x.device)))
        arrays[f"ood_{source}_logits"] = z.numpy()
        for score, s_out in ood_scores(z).items():
            for k, v in ood_metrics(scores_in[score], s_out).items():
                metrics[f"ood/{source}/{score}/{k}"] = v
    return metrics, arrays
