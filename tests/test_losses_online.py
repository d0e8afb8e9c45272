"""ls_bench.losses.online (online label smoothing, Zhang et al. TIP 2021): S by hand, the loss as the
authors' α·CE + (1-α)·soft CE, and S as run state (last.pt, a bit-identical resume, TensorBoard)."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import make_config
from ls_bench.config import LossConfig
from ls_bench.errors import ConfigError
from ls_bench.logs import read_jsonl
from ls_bench.losses import check_loss, make_criterion
from ls_bench.signals import Interrupted, StopFlag


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_first_epoch_is_label_smoothing_then_rows_are_the_mean_correct_softmax() -> None:
    c = make_criterion(LossConfig(name="online_ls", epsilon=0.3, ols_alpha=0.5), 3, torch.ones(3))
    y = torch.tensor([0, 1, 0, 0])
    s0 = [[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]  # uniform LS at ε = 0.3: 1 - 0.3 + 0.1
    assert torch.allclose(c.state_dict()["ols_matrix"], torch.tensor(s0))
    assert torch.allclose(c.expected_target(y)[1], torch.tensor([0.05, 0.9, 0.05]))  # 0.5·onehot + 0.5·S_0[1]
    # correct: samples 0, 2 (class 0) and 1 (class 1); sample 3 (class 0, predicted 2) is not counted
    z = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    c(z, y)
    c.end_epoch()
    row0 = [(a + b) / 2 for a, b in zip(softmax([2, 0, 0]), softmax([3, 0, 0]))]
    expected = torch.tensor([row0, softmax([0, 1, 0]), s0[2]])  # class 2: no correct sample, keeps S_0's row
    assert torch.allclose(c.state_dict()["ols_matrix"], expected, atol=1e-6)
    c.end_epoch()  # an epoch with no step changes nothing
    assert torch.allclose(c.state_dict()["ols_matrix"], expected, atol=1e-6)


def test_loss_is_the_authors_half_ce_plus_half_soft_ce() -> None:
    """Their step: 0.5·CrossEntropyLoss(z, y) + 0.5·Σ_k -S[y]_k log q_k / B (train_cifar_all_methods.py)."""
    g = torch.Generator().manual_seed(0)
    c = make_criterion(LossConfig(name="online_ls", ols_alpha=0.3), 10, torch.ones(10))
    for _ in range(2):  # an epoch to learn S from, then the loss with it
        z, y = torch.randn(64, 10, generator=g) * 3, torch.randint(0, 10, (64,), generator=g)
        c(z, y)
        c.end_epoch()
    S = c.state_dict()["ols_matrix"]
    assert not torch.allclose(S, torch.eye(10))
    z, y = torch.randn(64, 10, generator=g) * 3, torch.randint(0, 10, (64,), generator=g)
    ref = 0.3 * F.cross_entropy(z, y) + 0.7 * (-(S[y] * F.log_softmax(z, 1)).sum(1)).mean()
    assert c(z, y).item() == pytest.approx(ref.item(), rel=1e-6)


def test_bad_alpha_and_mixing_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^loss\.ols_alpha=1\.5 is invalid"):
        check_loss(LossConfig(name="online_ls", ols_alpha=1.5))
    with pytest.raises(ConfigError, match=r"^mix\.name='mixup' is invalid: none with loss=online_ls"):
        from ls_bench.run import check_config

        check_config(make_config("loss=online_ls", "mix=mixup"))


SMALL = ["loss=online_ls", "trainer.progress=false", "trainer.batch_size=64", "data.train_size=192",
         "trainer.epochs=4", "metrics.figures=false", "eval.bootstrap=0"]


def _same(a: Path, b: Path) -> None:
    fa, fb = (json.loads((d / "final.json").read_text()) for d in (a, b))
    assert {k: v for k, v in fa.items() if k != "time_s"} == {k: v for k, v in fb.items() if k != "time_s"}
    ra, rb = ([{k: v for k, v in r.items() if not k.startswith("perf/")} for r in read_jsonl(d / "metrics.jsonl")]
              for d in (a, b))
    assert ra == rb and [r["epoch"] for r in ra] == [1, 2, 3, 4]


def _stop_after_epoch(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """As a SIGTERM that lands just after epoch k's last.pt: the run stops at the next step."""
    import ls_bench.train as train

    real = train.write_checkpoint

    def write_then_stop(path, run, epoch, history):
        real(path, run, epoch, history)
        if epoch == k:
            monkeypatch.setattr(StopFlag, "signum", signal.SIGTERM)

    monkeypatch.setattr(train, "write_checkpoint", write_then_stop)


@pytest.mark.slow  # five 4-epoch runs on 192 digits: ~20 s idle, ~50 s under load
def test_stopping_and_resuming_gives_the_uninterrupted_run_bit_for_bit(tmp_path: Path, monkeypatch) -> None:
    from ls_bench.checkpoint import load_checkpoint
    from ls_bench.train import fit

    cfg = make_config(*SMALL)
    fit(cfg, tmp_path / "straight")
    _stop_after_epoch(monkeypatch, 2)
    with pytest.raises(Interrupted):
        fit(cfg, tmp_path / "resumed")
    monkeypatch.undo()  # no stop signal, the real write_checkpoint
    saved = load_checkpoint(tmp_path / "resumed/last.pt")
    assert saved["epoch"] == 2 and not torch.allclose(saved["criterion"]["ols_matrix"], torch.eye(10))
    fit(cfg, tmp_path / "resumed")
    _same(tmp_path / "straight", tmp_path / "resumed")
    # the check can fail: a resume that forgets S (back to S_0) trains another run
    _stop_after_epoch(monkeypatch, 2)
    with pytest.raises(Interrupted):
        fit(cfg, tmp_path / "forgot")
    monkeypatch.undo()
    monkeypatch.setattr("ls_bench.losses.online.OnlineSmoothed.load_state_dict", lambda self, state: None)
    fit(cfg, tmp_path / "forgot")
    with pytest.raises(AssertionError):
        _same(tmp_path / "straight", tmp_path / "forgot")


def test_s_is_a_tensorboard_image_every_epoch(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ls_bench.train import fit

    fit(make_config(*SMALL[:-3], "trainer.epochs=2", "metrics.figures=false", "eval.bootstrap=0"), tmp_path)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("train/ols_matrix")] == [1, 2]
