"""Every loss option and label-noise option run from the real config on digits (one epoch),
and bad loss / noise input stops before training with one line."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_config, run_cli
from ls_bench.errors import ConfigError
from ls_bench.run import setup
from ls_bench.train import fit

# One thread: on a shared 2-core machine thread contention, not compute, dominates a 1-epoch run.
SMALL = [*TINY, "data.val_size=100", "trainer.num_threads=1"]


def run(tmp_path: Path, caplog: pytest.LogCaptureFixture, *overrides: str) -> tuple[dict, list[float]]:
    """One epoch of `ls-bench <overrides>`; returns final.json and the logged class-0 target."""
    caplog.set_level(logging.INFO, logger="ls_bench")
    final = fit(make_config(*SMALL, *overrides), tmp_path)
    assert final == json.loads((tmp_path / "final.json").read_text())
    assert np.isfinite(final["train/loss"]) and 0 <= final["test/acc"] <= 1
    line = next(r.getMessage() for r in caplog.records if "target for class 0" in r.getMessage())
    target = [float(v) for v in re.search(r"target for class 0: \[([^\]]*)\]", line).group(1).split(",")]
    return final, target


@pytest.mark.parametrize("overrides,target", [
    (["loss.epsilon=0.1"], [0.91] + [0.01] * 9),
    (["loss.epsilon=0.1", "loss.prior=others", "loss.class_weights=balanced"], [0.9] + [0.0111] * 9),
    (["loss.epsilon=0.2", "loss.prior=[0.5,0.5,0,0,0,0,0,0,0,0]", "loss.class_weights=[1,1,1,1,1,2,2,2,2,2]"],
     [0.9, 0.1] + [0.0] * 8),
    (["loss=label_flip", "loss.epsilon=0.2", "loss.prior=others"], [0.8] + [0.0222] * 9),
    (["loss=focal", "loss.gamma=1.5", "loss.epsilon=0.1"], [0.91] + [0.01] * 9),
    (["loss=confidence_penalty", "loss.beta=0.2"], [1.0] + [0.0] * 9),
    # issue 24's variants, as a user types them
    (["loss.allow_negative=true", "loss.epsilon=-0.2"], [1.18] + [-0.02] * 9),
    (["loss=focal", "loss.gamma_schedule=flsd53"], [1.0] + [0.0] * 9),
    (["loss=label_relaxation"], [1.0] + [0.0] * 9),  # its target set is built from the prediction at each step
    (["loss=online_ls", "loss.epsilon=0.1"], [0.955] + [0.005] * 9),  # 0.5·onehot + 0.5·S_0[0], S_0 = LS 0.1
    (["loss.epsilon=[0.3,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1]"], [0.73] + [0.03] * 9),
    (["loss.epsilon_schedule=mislas"], None),  # class 0's ε depends on the split's counts: run_info's class_epsilon
], ids=["uniform", "others+balanced", "list+weights", "label_flip", "focal", "confidence_penalty", "negative_ls",
        "flsd53", "label_relaxation", "online_ls", "class_wise_list", "mislas"])
def test_loss_options_run(tmp_path, caplog, overrides, target) -> None:
    _, logged = run(tmp_path, caplog, *overrides)
    if target is None:
        eps0 = json.loads((tmp_path / "run_info.json").read_text())["class_epsilon"][0]
        target = [1 - eps0 + eps0 / 10] + [eps0 / 10] * 9
    assert logged == pytest.approx(target, abs=1e-4)


def test_class_prior_target_is_the_training_frequency(tmp_path, caplog) -> None:
    _, logged = run(tmp_path, caplog, "loss.epsilon=0.5", "loss.prior=class_prior")
    ds = setup(make_config(*SMALL)).ds
    freq = (torch.bincount(ds.train.y, minlength=10) / len(ds.train)).tolist()
    expected = [0.5 * f for f in freq]
    expected[0] += 0.5
    assert logged == pytest.approx(expected, abs=1e-4)


def test_binary_on_two_digit_classes_has_one_output(tmp_path, caplog) -> None:
    final, logged = run(tmp_path, caplog, "loss=binary", "loss.epsilon=0.1", "data.classes=[3,5]",
                        "data.val_size=60", "data.test_size=60", "trainer.batch_size=32")
    assert logged == pytest.approx([0.9, 0.1])  # binary ε: the other class gets ε
    state = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    assert list(state.values())[-1].shape == (1,)  # the last bias: one sigmoid output
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["classes"] == ["3", "5"] and info["sizes"]["test"] == 60
    with np.load(tmp_path / "predictions.npz") as p:  # evaluated as the 2-class logits [0, z]
        assert p["test_logits"].shape == (60, 2) and (p["test_logits"][:, 0] == 0).all()
        assert set(p["test_labels"].tolist()) == {0, 1}
    assert 0 <= final["test/ece"] <= 1


def test_label_noise_is_fixed_by_its_seed_whatever_epsilon(tmp_path, caplog) -> None:
    noise = ["data.label_noise.rate=0.3", "data.label_noise.seed=11"]
    finals = [run(tmp_path / f"eps{e}", caplog, *noise, f"loss.epsilon={e}")[0] for e in (0.0, 0.2)]
    idx = [np.load(tmp_path / f"eps{e}" / "noisy_indices.npy") for e in (0.0, 0.2)]
    assert np.array_equal(idx[0], idx[1]) and len(idx[0]) > 0
    info = json.loads((tmp_path / "eps0.0" / "run_info.json").read_text())
    n_train = info["sizes"]["train"]
    assert info["label_noise"]["flipped"] == len(idx[0])
    assert info["label_noise"]["rate_realised"] == pytest.approx(len(idx[0]) / n_train)
    assert abs(info["label_noise"]["rate_realised"] - 0.3) < 0.05
    for f in finals:
        assert f["data/noise_rate_realised"] == pytest.approx(len(idx[0]) / n_train)
        # a flipped sample's prediction cannot match both its noisy and its true label
        assert f["train_noisy/acc_noisy_label"] + f["train_noisy/acc_true_label"] <= 1
    assert any("label noise: symmetric" in r.getMessage() for r in caplog.records)
    # the noise seed alone decides: another top-level seed, same noise seed, same flips
    ds_a = setup(make_config(*SMALL, *noise, "seed=1")).ds
    assert np.array_equal(ds_a.noisy_idx.numpy(), idx[0])


def test_asymmetric_label_noise_runs(tmp_path, caplog) -> None:
    final, _ = run(tmp_path, caplog, "data.label_noise.rate=0.2", "data.label_noise.kind=asymmetric")
    ds = setup(make_config(*SMALL, "data.label_noise.rate=0.2", "data.label_noise.kind=asymmetric")).ds
    idx = ds.noisy_idx
    assert np.array_equal(np.load(tmp_path / "noisy_indices.npy"), idx.numpy())
    assert torch.equal(ds.train.y[idx], (ds.clean_train_y[idx] + 1) % 10)  # digits: cyclic k -> k+1
    assert "train_noisy/acc_true_label" in final


@pytest.mark.parametrize("overrides,key", [
    (["loss.epsilon=1.0"], "loss.epsilon"),
    (["loss.epsilon=-0.1"], "loss.epsilon"),
    (["loss.prior=[0.5,0.5]"], "loss.prior"),  # wrong length: K = 10
    (["loss.prior=[0.2,0.2,0.2,0.2,0.2,0.2,0,0,0,0]"], "loss.prior"),  # sums to 1.2
    (["loss.prior=[1.5,-0.5,0,0,0,0,0,0,0,0]"], "loss.prior"),
    (["loss.prior=flat"], "loss.prior"),
    (["loss.class_weights=[1,1,1]"], "loss.class_weights"),
    (["loss.class_weights=[1,1,1,1,1,1,1,1,1,-1]"], "loss.class_weights"),
    (["data.classes=[3,3]"], "data.classes"),
    (["data.classes=[3,12]"], "data.classes"),
    (["loss=binary"], "binary"),  # 10 classes
    (["data.label_noise.rate=1.0"], "data.label_noise.rate"),
    (["data.label_noise.rate=-0.1"], "data.label_noise.rate"),
    (["data.label_noise.kind=pairflip"], "data.label_noise.kind"),
])
def test_bad_input_is_one_line_before_training(tmp_path, overrides, key) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)) as e:
        setup(make_config(*SMALL, *overrides))
    assert "\n" not in str(e.value)


def test_cli_subprocess_bad_prior_is_one_line(tmp_path) -> None:
    """The console script itself: a prior of the wrong length is one line, no traceback, no training."""
    badrun = run_cli(*SMALL, "loss.prior=[0.5,0.5]", f"hydra.run.dir={tmp_path}")
    assert badrun.returncode != 0
    assert "Traceback" not in badrun.stderr
    lines = [line for line in badrun.stderr.strip().splitlines() if "loss.prior" in line]
    assert lines == ["ls-bench: error: loss.prior=[0.5, 0.5] is invalid: a list of K=10 probabilities, one per class "
                     "(got 2)"]
    assert not (tmp_path / "metrics.jsonl").exists()
