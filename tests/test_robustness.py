"""The evaluation suites of a run end to end (eval.*): selective classification and ECE's own
interval on test, shift under corruptions, OOD detection; their config checks; OOD shapes."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_config
from ls_bench.data.loader import Split
from ls_bench.errors import ConfigError
from ls_bench.evaluate.selective import ece_floor, ood_metrics, ood_scores, paired_bootstrap_ece_diff, selective_metrics
from ls_bench.evaluate.shift import fit_shape, noise_images, shift_split
from ls_bench.train import fit

SIX = "data.classes=[0,1,2,3,4,5]"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("eval") / "run"
    final = fit(make_config(*TINY, SIX, "metrics.figures=false", "eval.corruptions=[gaussian_noise,contrast]",
                            "eval.severities=[1,5]", "eval.shift_size=0.5", "eval.ood=[held_out,noise]",
                            "eval.bootstrap=200"), run)
    return run, final


def test_selective_and_ece_interval_come_from_the_saved_logits(evaluated: tuple[Path, dict]) -> None:
    run, final = evaluated
    with np.load(run / "predictions.npz") as p:
        z, y = torch.from_numpy(p["test_logits"]), torch.from_numpy(p["test_labels"])
    ref = selective_metrics(z, y)
    assert {k: final[f"test/{k}"] for k in ref} == pytest.approx(ref)
    ts = selective_metrics(z / final["temperature"], y)
    assert final["test_ts/aurc"] == pytest.approx(ts["aurc"])
    assert 0 <= final["test/ece_lo"] <= final["test/ece_hi"] <= 1
    conf = torch.softmax(z.double(), 1).max(1).values
    assert final["test/ece_floor"] == pytest.approx(ece_floor(conf, 15, 200, seed=0))  # bootstrap draws, split_seed
    assert final["test/ece_lo"] <= final["test/ece"] + 0.02 and final["test/dece"] >= 0 and final["test/smece"] >= 0


def test_shift_has_every_corruption_and_severity_and_their_means(evaluated: tuple[Path, dict]) -> None:
    _, final = evaluated
    for k in (1, 5):
        for key in ("acc", "nll", "ece", "ece_floor", "ts_ece", "ts_ece_floor"):
            per = [final[f"shift/{name}/s{k}/{key}"] for name in ("gaussian_noise", "contrast")]
            assert final[f"shift/s{k}/{key}"] == pytest.approx(statistics.fmean(per))
        # ~180 corrupted images: a calibrated model would already score several points of ECE
        assert 0.02 < final[f"shift/s{k}/ts_ece_floor"] < 0.2
    assert final["shift/contrast/s5/acc"] < final["test/acc"]  # contrast 0.05 of the original: a real shift


def test_ood_scores_against_the_saved_ood_logits(evaluated: tuple[Path, dict]) -> None:
    run, final = evaluated
    with np.load(run / "predictions.npz") as p:
        z_in = torch.from_numpy(p["test_logits"])
        z_noise, z_held = torch.from_numpy(p["ood_noise_logits"]), torch.from_numpy(p["ood_held_out_logits"])
    assert z_noise.shape == (len(z_in), 6)
    # held_out = every digits image of the classes left out (digits has no test split), counted by sklearn itself
    from sklearn.datasets import load_digits

    assert len(z_held) == int((load_digits().target >= 6).sum())
    for source, z_out in (("noise", z_noise), ("held_out", z_held)):
        s_in, s_out = ood_scores(z_in), ood_scores(z_out)
        for score in ("msp", "max_logit", "energy"):
            ref = ood_metrics(s_in[score], s_out[score])
            assert {k: final[f"ood/{source}/{score}/{k}"] for k in ref} == pytest.approx(ref)


@pytest.mark.parametrize("override,message", [
    ("eval.corruptions=[fog_of_war]", "eval.corruptions"),
    ("eval.severities=[0,6]", "eval.severities"),
    ("eval.ood=[held_out]", "held_out needs data.classes"),
    ("eval.ood=[imagefolder]", "eval.ood_root=None is invalid"),
    ("eval.ood=[mnist]", "sources must be among"),
    ("eval.bootstrap=-1", "eval.bootstrap=-1 is invalid"),
    ("eval.shift_size=0", "eval.shift_size=0 is invalid"),
    ("eval.shift_size=2.5", "eval.shift_size=2.5 is invalid"),
    ("eval.shift_size=100", "eval.shift_size=100 is invalid: is only read with eval.corruptions"),
])
def test_bad_eval_config_is_one_line_before_training(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_config(override)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_shift_size_keeps_a_stratified_seeded_subset_of_the_test_split() -> None:
    y = torch.arange(10).repeat_interleave(torch.tensor([100, 100, 100, 100, 100, 50, 50, 50, 50, 300]))
    test = Split(torch.arange(len(y), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2), y)
    assert shift_split(test, None, 0) is test and shift_split(test, len(y), 0) is test
    sub = shift_split(test, 0.1, seed=3)
    assert torch.equal(torch.bincount(sub.y, minlength=10), torch.bincount(y, minlength=10) // 10)
    again, other = shift_split(test, 100, seed=3), shift_split(test, 100, seed=4)
    assert torch.equal(again.x, sub.x) and not torch.equal(other.x, sub.x)


def test_shift_size_above_the_test_split_is_refused_before_training(tmp_path: Path) -> None:
    cfg = make_config(*TINY, "eval.corruptions=[contrast]", "eval.shift_size=361")
    with pytest.raises(ConfigError, match=r"^eval.shift_size=361 is invalid: must be <= the 360 test images$"):
        fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    for size, shown in (("5", "5"), ("0.01", "0.01 (4 images)"), ("355", "355")):  # 10 classes: 10..350, or all
        with pytest.raises(ConfigError, match=rf"^eval.shift_size={re.escape(shown)} is invalid: a stratified sample "
                                              r"of the 360 test images needs between 10 and 350 of them"):
            fit(make_config(*TINY, "eval.corruptions=[contrast]", f"eval.shift_size={size}"), tmp_path / "run")


def test_ood_images_take_the_data_shape_or_are_refused() -> None:
    like = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    grey = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    out = fit_shape(grey, like, "imagefolder")
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0], out[:, 2])  # grey copied to the three channels
    assert fit_shape(torch.zeros(2, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 1, 8, 8, dtype=torch.uint8),
                     "svhn").shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError, match="eval.ood=imagefolder: images with 2 channels"):
        fit_shape(torch.zeros(1, 2, 8, 8, dtype=torch.uint8), like, "imagefolder")
    a, b = noise_images(like, 3, seed=0), noise_images(like, 3, seed=0)
    assert torch.equal(a, b) and a.shape == (3, 3, 32, 32) and a.float().std() > 60  # uniform on 0..255: std 74


def test_the_sweep_report_has_the_evaluation_sections(tmp_path: Path) -> None:
    import json

    from conftest import run_cli

    sweep = tmp_path / "sweep"
    r = run_cli("-m", *TINY, SIX, "metrics.figures=false", "eval.corruptions=[contrast]", "eval.severities=[1,5]",
                "eval.ood=[noise]", "eval.bootstrap=100", "loss.epsilon=0,0.1", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr
    md = (sweep / "summary.md").read_text()
    for title in ("## Selective classification", "## Shift: mean over the corruptions", "## OOD detection"):
        assert title in md
    assert (sweep / "shift_vs_severity.png").exists() and "shift_vs_severity.png" in md
    runs = {(c["loss.epsilon"], c["seed"]): p.parent for p in sweep.glob("*/final.json")
            if (c := json.loads((p.parent / "run_info.json").read_text())["config"])}
    finals = {k: json.loads((d / "final.json").read_text()) for k, d in runs.items()}
    shift_part = md[md.index("## Shift"):md.index("## OOD")]
    row = next(line for line in shift_part.splitlines() if line.startswith("| 0.1 |"))
    mean = statistics.fmean(finals[(0.1, s)]["shift/s5/acc"] for s in (0, 1))
    assert f" {mean:.4f} ± " in row  # the mean over the two seeds
    ece_part = md[md.index("## ECE with its own error bar"):md.index("## Selective")]
    for seed in (0, 1):  # each seed against the ε = 0 run of its own seed, before and after TS
        a, b = (0.1, seed), (0.0, seed)
        row = next(line for line in ece_part.splitlines() if line.startswith(f"| 0.1 | {seed} |"))
        for column, t_a, t_b, key in ((2, 1.0, 1.0, "test/ece"),
                                      (3, finals[a]["temperature"], finals[b]["temperature"], "test_ts/ece")):
            ref = paired_bootstrap_ece_diff(*_conf(runs[a], t_a), *_conf(runs[b], t_b), n_bins=15, n_resamples=100,
                                            seed=0)
            point = finals[a][key] - finals[b][key]
            assert row.split(" | ")[column].startswith(f"{point:+.4f} [{ref['lo']:+.4f}, {ref['hi']:+.4f}]"), row
    mean_row = next(line for line in ece_part.splitlines() if line.startswith("| 0.1 | 2 |"))
    lo = statistics.fmean(finals[(0.1, s)]["test/ece_lo"] for s in (0, 1))
    assert f"(bootstrap [{lo:.4f}, " in mean_row


def _conf(run_dir: Path, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    from ls_bench.evaluate.metrics import confidence_correct

    with np.load(run_dir / "predictions.npz") as p:
        return confidence_correct(torch.from_numpy(p["test_logits"]) / temperature, torch.from_numpy(p["test_labels"]))


def test_an_imagefolder_ood_source_is_read_resized_and_scored(tmp_path: Path) -> None:
    from PIL import Image

    g = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "ood" / "test" / c).mkdir(parents=True)
        for i in range(20):
            image = Image.fromarray(g.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            image.save(tmp_path / "ood" / "test" / c / f"{i}.png")
    (tmp_path / "ood" / "train").mkdir()  # a tree with test/: only test/ is read
    run = tmp_path / "run"
    final = fit(make_config(*TINY, "metrics.figures=false", "eval.bootstrap=0", "eval.ood=[imagefolder]",
                            f"eval.ood_root={tmp_path / 'ood'}", f"data.cache_dir={tmp_path / 'cache'}"), run)
    with np.load(run / "predictions.npz") as p:
        z_in, z_out = torch.from_numpy(p["test_logits"]), torch.from_numpy(p["ood_imagefolder_logits"])
    assert z_out.shape == (40, 10)  # 40 RGB 16x16 images, as grey 8x8 digits
    ref = ood_metrics(ood_scores(z_in)["energy"], ood_scores(z_out)["energy"])
    assert final["ood/imagefolder/energy/auroc"] == pytest.approx(ref["auroc"])
