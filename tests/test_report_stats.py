"""ls_bench.report.stats: grouping runs by setting, means over seeds, baselines paired seed by seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ls_bench.report.runs import RunResult
from ls_bench.report.stats import EPSILON_KEY, Baseline, build_groups, parse_baseline, varying_keys


def _run(eps: float, seed: int, model: str = "small_cnn", acc: float | None = None, **extra: object) -> RunResult:
    config = {"model.name": model, "loss.epsilon": eps, "seed": seed, "seeds.init": None,
              "trainer.progress": True, "trainer.device": "auto", **extra}
    return RunResult(Path(f"/x/{model}-{eps}-{seed}"), config, "done" if acc is not None else "missing",
               {"test/acc": acc} if acc is not None else {})


def test_grouping_ignores_seeds_and_where_keys_and_pairs_on_the_seed() -> None:
    runs = [_run(0, 0, acc=0.90, **{"trainer.progress": False}), _run(0, 1, acc=0.80, **{"trainer.device": "cpu"}),
            _run(0.1, 0, acc=0.95), _run(0.1, 1, acc=0.81), _run(0.1, 2, acc=0.99),  # seed 2 has no baseline
            _run(0.1, 0, model="resnet20", acc=0.5), _run(0, 0, model="resnet20")]  # baseline not finished
    assert varying_keys(runs) == ["model.name", EPSILON_KEY]
    groups, keys = build_groups(runs, ["test/acc"])
    assert [tuple(g.labels.values()) for g in groups] == [("resnet20", 0), ("resnet20", 0.1), ("small_cnn", 0),
                                                          ("small_cnn", 0.1)]
    s = groups[3].stats["test/acc"]
    assert (s.n, s.mean) == (3, pytest.approx((0.95 + 0.81 + 0.99) / 3))
    d = groups[3].diffs["test/acc"]
    assert (d.n, d.mean) == (2, pytest.approx(((0.95 - 0.90) + (0.81 - 0.80)) / 2))
    assert groups[2].stats["test/acc"].std == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert groups[1].diffs["test/acc"].n == 0 and groups[0].stats["test/acc"].n == 0


def test_baseline_pairs_on_any_key_by_seed() -> None:
    """--baseline mix=none: each run is paired with the run of its seed that differs only in mix.name
    (whatever its ε), not with ε = 0."""
    accs = {("none", 0, 0): 0.80, ("none", 0, 1): 0.70, ("mixup", 0, 0): 0.83, ("mixup", 0, 1): 0.74,
            ("none", 0.1, 0): 0.90, ("mixup", 0.1, 0): 0.85}
    runs = [_run(eps, seed, acc=acc, **{"mix.name": mix}) for (mix, eps, seed), acc in accs.items()]
    base = parse_baseline("mix=none", runs)
    assert base == Baseline("mix.name", "none") and base.label == "mix.name=none"
    groups, keys = build_groups(runs, ["test/acc"], base)
    assert keys == ["mix.name", EPSILON_KEY]
    by = {(g.labels["mix.name"], g.labels[EPSILON_KEY]): g for g in groups}
    d = by[("mixup", 0)].diffs["test/acc"]
    assert (d.n, d.mean) == (2, pytest.approx(((0.83 - 0.80) + (0.74 - 0.70)) / 2))
    assert by[("mixup", 0.1)].diffs["test/acc"].mean == pytest.approx(0.85 - 0.90)  # its own ε's baseline
    assert by[("none", 0.1)].diffs == {}  # a baseline itself
    default = build_groups(runs, ["test/acc"])[0]  # loss.epsilon=0: as before
    assert {(g.labels["mix.name"], g.labels[EPSILON_KEY]): g.diffs["test/acc"].mean for g in default if g.diffs} == \
        {("mixup", 0.1): pytest.approx(0.85 - 0.83), ("none", 0.1): pytest.approx(0.90 - 0.80)}
    with pytest.raises(ValueError, match="'mixx' is not a config key"):
        parse_baseline("mixx=none", runs)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_baseline("mix", runs)


def test_a_baseline_of_two_keys_pairs_each_setting_with_that_one_run_by_seed() -> None:
    """--baseline mix=none --baseline loss.epsilon=0.1 (mixup alone against LS alone): every run is
    paired with the (none, 0.1) run of its seed, whatever its own mix and ε."""
    accs = {("none", 0, 0): 0.80, ("none", 0, 1): 0.70, ("mixup", 0, 0): 0.83, ("mixup", 0, 1): 0.74,
            ("none", 0.1, 0): 0.90, ("none", 0.1, 1): 0.60, ("mixup", 0.1, 0): 0.85}
    runs = [_run(eps, seed, acc=acc, **{"mix.name": mix}) for (mix, eps, seed), acc in accs.items()]
    base = parse_baseline(["mix=none", "loss.epsilon=0.1"], runs)
    assert base.keys == ["mix.name", EPSILON_KEY] and base.label == "mix.name=none, loss.epsilon=0.1"
    groups, keys = build_groups(runs, ["test/acc"], base)
    assert keys == ["mix.name", EPSILON_KEY]
    by = {(g.labels["mix.name"], g.labels[EPSILON_KEY]): g for g in groups}
    d = by[("mixup", 0)].diffs["test/acc"]
    assert (d.n, d.mean) == (2, pytest.approx(((0.83 - 0.90) + (0.74 - 0.60)) / 2))
    assert by[("none", 0)].diffs["test/acc"].mean == pytest.approx(((0.80 - 0.90) + (0.70 - 0.60)) / 2)
    assert by[("mixup", 0.1)].diffs["test/acc"].n == 1  # seed 1 of (mixup, 0.1) did not run
    assert by[("none", 0.1)].diffs == {}  # the baseline itself
    with pytest.raises(ValueError, match="'mix.name' is given twice"):
        parse_baseline(["mix=none", "mix.name=mixup"], runs)


def test_a_fine_tune_pairs_with_runs_recorded_before_its_keys_existed(tmp_path: Path) -> None:
    """Study 8's case: one-hot runs recorded before model.init_* existed, and negative-LS fine-tunes
    started from them, which record model.init_from, model.init_same_seed and the `+` key
    model.init_select.loss.epsilon. The old runs read with today's defaults for the keys added
    since (init_same_seed does not vary), an unset `+` key counts as null, and each fine-tune pairs
    with its seed's old run."""
    import json

    from ls_bench.config import Config, flat_json
    from ls_bench.report.runs import read_run

    today = flat_json(Config())
    old = {k: v for k, v in today.items() if not k.startswith("model.init_")}

    def run(name: str, config: dict, acc: float) -> RunResult:
        (tmp_path / name).mkdir()
        (tmp_path / name / "run_info.json").write_text(json.dumps({"config": config}))
        (tmp_path / name / "final.json").write_text(json.dumps({"test/acc": acc}))
        return read_run(tmp_path / name)

    tuned = {**today, "loss.epsilon": -0.1, "loss.allow_negative": True, "model.init_from": "/x/ls",
             "model.init_select.loss.epsilon": 0}
    runs = [run(f"old{s}", {**old, "seed": s}, a) for s, a in [(0, 0.80), (1, 0.70)]]
    runs += [run(f"nls{s}", {**tuned, "seed": s}, a) for s, a in [(0, 0.85), (1, 0.71)]]
    base = parse_baseline(["loss.epsilon=0", "loss.allow_negative=false", "model.init_from=null",
                           "model.init_select.loss.epsilon=null"], runs)
    assert base.matches(runs[0].config) and not base.matches(runs[2].config)
    groups, keys = build_groups(runs, ["test/acc"], base)
    assert "model.init_same_seed" not in keys
    d = {g.labels[EPSILON_KEY]: g for g in groups}[-0.1].diffs["test/acc"]
    assert (d.n, d.mean) == (2, pytest.approx(((0.85 - 0.80) + (0.71 - 0.70)) / 2))
