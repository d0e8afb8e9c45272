"""model.init_from on digits: a run starts from a finished run's final weights (not random ones), the
source is found in a sweep folder by seed and init_select as a teacher is, the run records it, and
every refusal is one line before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY, make_config, one_line, run_cli
from ls_bench.checkpoint import load_checkpoint
from ls_bench.errors import ConfigError
from ls_bench.run import setup
from ls_bench.train import fit

FAST = [*TINY, "data.train_size=256", "metrics.figures=false", "eval.bootstrap=0"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder of finished runs: ε = 0 at seeds 0 and 1, ε = 0.1 at seed 0."""
    sweep = tmp_path_factory.mktemp("sources")
    for name, overrides in (("eps0_s0", ["loss.epsilon=0", "seed=0"]), ("eps0_s1", ["loss.epsilon=0", "seed=1"]),
                            ("eps0.1_s0", ["loss.epsilon=0.1", "seed=0"])):
        fit(make_config(*FAST, "trainer.epochs=2", *overrides), sweep / name)
    return sweep


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "last.pt")["model"]


def test_the_run_starts_from_the_sources_final_weights(sources: Path) -> None:
    run = setup(make_config(*FAST, f"model.init_from={sources / 'eps0.1_s0'}"))
    state, want = run.model.state_dict(), final_weights(sources / "eps0.1_s0")
    assert state.keys() == want.keys() and all(torch.equal(state[k].cpu(), want[k]) for k in want)
    fresh = setup(make_config(*FAST)).model.state_dict()  # without it: the seed's random weights
    assert not all(torch.equal(fresh[k].cpu(), want[k]) for k in want if want[k].is_floating_point())
    assert run.init_from["epsilon"] == 0.1 and run.init_from["seed"] == 0
    assert run.init_from["dir"] == str((sources / "eps0.1_s0").resolve())


def test_the_run_scales_its_inputs_as_the_source_was_trained(sources: Path) -> None:
    """A different data.train_size gives a different training mean and std; the source's weights
    expect the source's, so the fine-tune takes (and records) those."""
    source = json.loads((sources / "eps0_s0" / "run_info.json").read_text())["normalization"]
    other = [*FAST, "data.train_size=128"]
    own = setup(make_config(*other)).ds
    assert (list(own.mean), list(own.std)) != (source["mean"], source["std"])
    run = setup(make_config(*other, f"model.init_from={sources / 'eps0_s0'}"))
    assert (list(run.ds.mean), list(run.ds.std)) == (source["mean"], source["std"])


def test_in_a_sweep_folder_the_source_has_the_seed_and_the_selected_keys(sources: Path) -> None:
    run = setup(make_config(*FAST, f"model.init_from={sources}", "seed=1"))
    assert run.init_from["dir"] == str((sources / "eps0_s1").resolve())
    run = setup(make_config(*FAST, f"model.init_from={sources}", "seed=0", "+model.init_select.loss.epsilon=0.1"))
    assert run.init_from["dir"] == str((sources / "eps0.1_s0").resolve())
    with pytest.raises(ConfigError, match=r"^model.init_from=.*: 2 of its 3 runs are finished and have seed=0 .*"
                                          r"say which with \+model.init_select.KEY=VALUE$"):
        setup(make_config(*FAST, f"model.init_from={sources}", "seed=0"))


def test_a_sweep_from_the_cli_names_its_jobs_by_the_selection_and_records_the_source(sources: Path,
                                                                                    tmp_path: Path) -> None:
    """What a user types: negative LS fine-tuned from the one-hot run of each seed (Wei et al.'s protocol)."""
    out = tmp_path / "nls"
    r = run_cli("-m", *FAST, f"model.init_from={sources}", "+model.init_select.loss.epsilon=0", "seed=0,1",
                "loss.allow_negative=true", "loss.epsilon=-0.2", "optim.lr=1e-6", "sched=constant",
                f"hydra.sweep.dir={out}", "hydra.callbacks.sweep_report.enabled=false")
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = sorted(p.parent for p in out.rglob("final.json"))
    assert len(jobs) == 2 and all("model.init_select.loss.epsilon=0" in p.name and "/" not in p.name for p in jobs)
    for job in jobs:
        info = json.loads((job / "run_info.json").read_text())
        assert info["init_from"]["dir"] == str((sources / f"eps0_s{info['config']['seed']}").resolve())
        assert "starting from the final weights of" in (job / "ls-bench.log").read_text()


def test_negative_epsilon_from_random_weights_warns(tmp_path: Path) -> None:
    r = run_cli(*FAST, "loss.allow_negative=true", "loss.epsilon=-0.2", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "from random weights: the loss rewards pushing" in (tmp_path / "ls-bench.log").read_text()


def test_bad_sources_are_refused_in_one_line(sources: Path, tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(sources / "eps0_s0", unfinished)
    (unfinished / "final.json").unlink()
    one = str(sources / "eps0_s0")
    cases = [
        ([f"model.init_from={tmp_path / 'nowhere'}"], "model.init_from=", "must be an existing folder"),
        ([f"model.init_from={unfinished}"], "model.init_from=", "has not finished (no final.json)"),
        ([f"model.init_from={one}", "model=resnet20"], "model.init_from=",
         "the source run trained model.name=small_cnn, this run has model.name=resnet20"),
        ([f"model.init_from={one}", "data.classes=[0,1,2]"], "model.init_from=",
         "the source run was trained with data.classes=None, this run has data.classes=[0, 1, 2]"),
        ([f"model.init_from={one}", "data.split_seed=3"], "model.init_from=", "never its validation or test images"),
        ([f"model.init_from={one}", "loss=binary", "data.classes=[3,5]"], "model.init_from=", "loss=binary"),
        (["+model.init_select.loss.epsilon=0"], "model.init_select=", "is only read with model.init_from"),
        ([f"model.init_from={sources}", "+model.init_select.loss.epsilonn=0"], "model.init_select.loss.epsilonn=0",
         "is not a config key of the runs to choose from; did you mean loss.epsilon"),
    ]
    for overrides, start, message in cases:
        line = one_line(run_cli(*FAST, *overrides, f"hydra.run.dir={tmp_path / 'run'}"))
        assert line.startswith(f"ls-bench: error: {start}") and message in line, (overrides, line)
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before training
