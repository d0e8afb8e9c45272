"""eval.human (ls_bench.evaluate.human): the model's predictive distribution against CIFAR-10H's,
by hand and through a real run; the transition-matrix outputs of kind=human; the report's section."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_human_labels import SHARED, Toy, make_toy

from conftest import make_config
from ls_bench.data.human import human_table, transition_counts
from ls_bench.data.loader import Split
from ls_bench.errors import ConfigError
from ls_bench.evaluate.human import human_evaluation, human_metrics
from ls_bench.report import report
from ls_bench.train import fit

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Toy:
    return make_toy(tmp_path_factory.mktemp("toy"))


def test_human_metrics_by_hand() -> None:
    """Three images, q chosen so that log q is exact: q1 = (1/2, 1/4, 1/4), q2 = (1/5, 3/10, 1/2),
    q3 = (1/4, 1/2, 1/4); h1 = (0.6, 0.4, 0), h2 = (0, 0, 1), h3 = (1/2, 1/2, 0)."""
    q = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.25, 0.5, 0.25]], dtype=torch.float64)
    h = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    m = human_metrics(q.log(), h)
    ln2 = math.log(2)
    # H(h, q): 0.6 ln 2 + 0.4 ln 4 = 1.4 ln 2; ln 2; (ln 4 + ln 2) / 2 = 1.5 ln 2
    assert m["human/nll"] == pytest.approx((1.4 + 1 + 1.5) * ln2 / 3, rel=1e-12)
    h_ent = [-(0.6 * math.log(0.6) + 0.4 * math.log(0.4)), 0.0, ln2]
    assert m["human/kl"] == pytest.approx(((1.4 + 1 + 1.5) * ln2 - sum(h_ent)) / 3, rel=1e-12)
    # model entropies: 1.5 ln 2 = 1.0397, 1.0297, 1.5 ln 2 (a tie: ranks 2.5, 1, 2.5); human ranks 3, 1, 2
    # Spearman = Pearson of the ranks: x = (2.5, 1, 2.5), y = (3, 1, 2): centred (0.5, -1, 0.5), (1, -1, 0)
    assert m["human/entropy_corr"] == pytest.approx(1.5 / math.sqrt(1.5 * 2), rel=1e-12)
    # argmax 0 (humans' majority 0), 2 (majority 2), 1 (tied majority {0, 1}): all agree
    assert m["human/top1_agree"] == 1.0
    assert human_metrics(torch.zeros(3, 3), h)["human/nll"] == pytest.approx(math.log(3))


def test_one_hot_humans_make_human_nll_the_test_nll() -> None:
    from ls_bench.evaluate.metrics import compute_metrics

    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(1))
    out = human_evaluation(z, torch.nn.functional.one_hot(y, 4).double(), temperature=2.0)
    assert out["test/human/nll"] == pytest.approx(compute_metrics(z, y, 15, None)["nll"], rel=1e-6)
    assert out["test/human/kl"] == pytest.approx(out["test/human/nll"])  # H(h) = 0
    assert out["test_ts/human/nll"] == pytest.approx(compute_metrics(z / 2, y, 15, None)["nll"], rel=1e-6)


def test_data_classes_restrict_and_renormalise_the_human_distribution(toy: Toy) -> None:
    src = torch.tensor([0, 1, 2, 3])
    labels = toy.original["test"][src.numpy()]
    keep = sorted({int(c) for c in labels})
    y = torch.tensor([keep.index(int(c)) for c in labels])
    h = human_table("eval.human", str(toy.h), Split(torch.zeros(4, 3, 8, 8), y, src), 40, "test", keep).numpy()
    rows = toy.probs[src.numpy()][:, keep]
    assert np.allclose(h, rows / rows.sum(1, keepdims=True), rtol=0, atol=1e-15)


def test_a_distribution_file_that_does_not_fit_is_refused_in_one_line(toy: Toy, tmp_path: Path) -> None:
    np.save(tmp_path / "short.npy", toy.probs[:-1])
    np.save(tmp_path / "shuffled.npy", toy.probs[np.random.default_rng(1).permutation(len(toy.probs))])
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "negative.npy", -toy.probs)
    split = Split(torch.zeros(40, 3, 8, 8), torch.from_numpy(toy.original["test"]), torch.arange(40))
    expect = {"short.npy": "holds 39 rows; the test split of CIFAR-10 has 40 images",
              "shuffled.npy": "its majority label agrees with the test labels on only",
              "objects.npy": "cannot be read as a .npy array", "negative.npy": "non-negative"}
    for name, text in expect.items():
        with pytest.raises(ConfigError, match=re.escape(text)) as e:
            human_table("eval.human", str(tmp_path / name), split, 40, "test", None)
        assert "\n" not in str(e.value), name


def test_a_run_with_eval_human_and_human_noise(toy: Toy, tmp_path: Path) -> None:
    """fit() end to end on the toy: final.json's test/human/* are human_metrics of the saved test
    logits against the file's rows; the figures and the transition matrix are written."""
    cfg = make_config(*toy.noise("worse"), f"eval.human={toy.h}", "model=small_cnn", "trainer.epochs=1",
                      "trainer.progress=false", "trainer.batch_size=16", "data.augment=false")
    final = fit(cfg, tmp_path / "run")
    run = tmp_path / "run"
    with np.load(run / "predictions.npz") as f:
        z = torch.from_numpy(f["test_logits"])
    from ls_bench.data import load_dataset

    ds = load_dataset(cfg.data)
    h = torch.from_numpy(toy.probs[ds.test.src.numpy()])
    expect = {f"test/{k}": v for k, v in human_metrics(z, h).items()}
    assert {k: final[k] for k in final if k.startswith("test/human/")} == expect != {}
    assert final["test_ts/human/nll"] == pytest.approx(human_metrics(z / final["temperature"], h)["human/nll"])
    info = json.loads((run / "run_info.json").read_text())["label_noise"]
    assert info["kind"] == "human" and info["labels"] == "worse" and info["flipped"] == len(ds.noisy_idx)
    rows = [line.split(",") for line in (run / "label_noise_matrix.csv").read_text().splitlines()]
    counts = transition_counts(ds.clean_train_y, ds.train.y, 10)
    assert rows[0][2:] == list(ds.classes)
    assert [int(r[1]) for r in rows[1:]] == counts.sum(1).tolist()
    assert np.allclose([[float(v) for v in r[2:]] for r in rows[1:]], counts / counts.sum(1, keepdims=True), atol=1e-6)
    assert (run / "human_agreement.png").stat().st_size > 0 and (run / "label_noise_matrix.png").stat().st_size > 0
    assert final["train_noisy/acc_noisy_label"] >= 0 and "test/human/nll" in (run / "final.json").read_text()


def fake_run(folder: Path, seed: int, epsilon: float, human: bool) -> None:
    folder.mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text("{}\n")
    (folder / "run_info.json").write_text(json.dumps({"config": {"seed": seed, "loss.epsilon": epsilon}}))
    final = {"test/acc": 0.9, "test/nll": 0.3 + epsilon}
    if human:
        final.update({"test/human/nll": 1.0 + epsilon + seed / 10, "test/human/kl": 0.5, "test/human/entropy_corr": 0.2,
                      "test/human/top1_agree": 0.9, "test_ts/human/nll": 0.9, "test_ts/human/kl": 0.4,
                      "test_ts/human/entropy_corr": 0.2})
    (folder / "final.json").write_text(json.dumps(final))


def test_the_report_has_a_human_section_only_when_runs_have_the_metrics(tmp_path: Path) -> None:
    for human in (True, False):
        sweep = tmp_path / f"sweep{human}"
        for seed in (0, 1):
            for eps in (0.0, 0.1):
                fake_run(sweep / f"e{eps}s{seed}", seed, eps, human)
        report(sweep, plots=False, out=io.StringIO())
        md = (sweep / "summary.md").read_text()
        assert ("## Human uncertainty" in md) is human
    section = md_section((tmp_path / "sweepTrue" / "summary.md").read_text(), "## Human uncertainty")
    assert "test/human/nll" in section and "test_ts/human/kl" in section and "test_ts/human/top1_agree" not in section
    assert "Paired difference" in section and "+0.1000" in section  # ε = 0.1 adds 0.1 to human/nll on each seed


def md_section(md: str, title: str) -> str:
    start = md.index(title)
    end = md.find("\n## ", start + 1)
    return md[start:end if end > 0 else None]


def test_a_hand_computed_human_nll_on_the_shared_cifar10h(tmp_path: Path) -> None:
    """CIFAR-10H's first test image (a cat): 1 of 51 annotators each said automobile, bird, dog,
    48 cat. A model with q = 0.775 on cat and 0.025 elsewhere has
    H(h, q) = -(3/51) ln 0.025 - (48/51) ln 0.775."""
    path = SHARED / "cifar10h" / "cifar10h-probs.npy"
    if not path.exists():
        pytest.skip(f"shared CIFAR-10H not found at {path}")
    h = np.load(path)[:1]
    assert np.allclose(h[0] * 51, [0, 1, 1, 48, 0, 1, 0, 0, 0, 0], atol=1e-9)
    q = torch.full((1, 10), 0.025, dtype=torch.float64)
    q[0, 3] = 0.775
    m = human_metrics(q.log(), torch.from_numpy(h))
    assert m["human/nll"] == pytest.approx(-(3 / 51) * math.log(0.025) - (48 / 51) * math.log(0.775), rel=1e-12)
    h_ent = -(3 / 51) * math.log(1 / 51) - (48 / 51) * math.log(48 / 51)
    assert m["human/kl"] == pytest.approx(m["human/nll"] - h_ent, rel=1e-12)
    assert m["human/top1_agree"] == 1.0
