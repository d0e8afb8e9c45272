"""Every config group option composes into a valid typed Config; the schema catches typos."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from conftest import make_config
from ls_bench.cli import CONFIG_DIR
from ls_bench.config import Config
from ls_bench.errors import ConfigError

GROUPS = ["data", "model", "loss", "mix", "optim", "sched", "trainer", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group: str, option: str) -> None:
    extra = ["data.root=/tmp"]  # required by imagefolder (and the study presets that use it), ignored by digits
    needs_teacher = (("loss", "distill"), ("experiment", "study_distill"), ("experiment", "study_distill_full"))
    if (group, option) in needs_teacher:  # needs a finished teacher run: tests/test_teacher.py
        with pytest.raises(ConfigError, match=r"^loss.teacher=None is invalid: must name a finished ls-bench run"):
            make_config(f"{group}={option}", *extra)
        return
    if (group, option) == ("experiment", "cifar10h"):  # needs CIFAR-10H's file: tests/test_human_labels.py
        with pytest.raises(ConfigError, match=r"^loss.human=None is invalid: must be set with loss.prior=human"):
            make_config(f"{group}={option}", *extra)
        return
    cfg = make_config(f"{group}={option}", *extra)
    assert isinstance(cfg, Config)
    if group not in ("trainer", "experiment"):
        node = getattr(cfg, group)
        assert node.name == option if group != "sched" or option != "constant" else node.name == "constant"


def test_every_group_has_options() -> None:
    for g in GROUPS:
        assert options(g), f"configs/{g}/ is empty"


def test_experiment_cifar100_resnet56_is_mueller_setup() -> None:
    cfg = make_config("experiment=cifar100_resnet56")
    assert (cfg.data.name, cfg.model.name) == ("cifar100", "resnet56")
    assert cfg.optim.nesterov and cfg.optim.momentum == 0.9 and cfg.optim.lr == 0.1
    assert cfg.optim.weight_decay == 1e-4 and cfg.trainer.batch_size == 128 and cfg.sched.name == "step"


def test_experiment_study_distill_full_students_have_study1s_recipe() -> None:
    """Study 4 (r): a student without a teacher is study 1's ResNet-20 recipe with the small_cnn, so
    the teacher gate (the teacher beats it) compares like with like."""
    student = make_config("experiment=study_distill_full", "loss=label_smoothing", "data.root=/tmp")
    study1 = make_config("experiment=study_full_short", "model=small_cnn", "data.root=/tmp")
    assert student == study1
    assert student.data.augment and student.data.train_size is None and student.trainer.epochs == 6


def test_misspelt_key_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException) as e:
        make_config("loss.epsilonn=0.1")
    assert "epsilonn" in str(e.value) + str(e.value.__cause__)


def test_wrong_type_fails_at_composition() -> None:
    with pytest.raises(ConfigCompositionException):
        make_config("loss.gamma=abc")
    # loss.epsilon is a number or a class-wise list (schema type Any): its check names it in one line
    with pytest.raises(ConfigError, match=r"^loss\.epsilon='abc' is invalid: a number in \[0, 1\) or a list of K"):
        make_config("loss.epsilon=abc")


@pytest.mark.parametrize("override,field", [
    ("loss.epsilon=1.5", "loss.epsilon"), ("loss.epsilon=-0.1", "loss.epsilon"),
    ("trainer.epochs=0", "trainer.epochs"), ("optim.lr=0", "optim.lr"),
    ("trainer.batch_size=0", "trainer.batch_size"), ("metrics.n_bins=0", "metrics.n_bins"),
    ("data.label_noise.rate=1.0", "data.label_noise.rate"), ("model.name=resnet7", "model.name"),
    ("data.name=mnist", "data.name"), ("trainer.precision=fp8", "trainer.precision"),
    ("data.imbalance.ratio=0.5", "data.imbalance.ratio"), ("data.imbalance.ratio=nan", "data.imbalance.ratio"),
    ("data.imbalance.ratio=inf", "data.imbalance.ratio"), ("data.imbalance.ratio=-10", "data.imbalance.ratio"),
])
def test_out_of_range_values_name_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        make_config(override)
    msg = str(e.value)
    assert msg.startswith(field + "=") and "\n" not in msg
