"""loss=distill end to end on digits: a finished run as the teacher, rebuilt exactly; its record in
the student's files; α = 0 is the plain loss bit for bit; the teacher found in a sweep folder; and
every refusal in one line before training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, make_config
from ls_bench.errors import ConfigError
from ls_bench.run import predict, setup
from ls_bench.teacher import find_teacher, load_teacher
from ls_bench.train import fit

FAST = [*TINY, "metrics.figures=false", "eval.bootstrap=0"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep folder of three finished teachers: ε = 0 and 0.1 at seed 0, ε = 0 at seed 1."""
    sweep = tmp_path_factory.mktemp("teachers")
    for name, overrides in (("eps0_s0", ["loss.epsilon=0", "seed=0"]), ("eps0.1_s0", ["loss.epsilon=0.1", "seed=0"]),
                            ("eps0_s1", ["loss.epsilon=0", "seed=1"])):
        fit(make_config(*FAST, "trainer.epochs=2", *overrides), sweep / name)
    return sweep


def student(*overrides: str):
    return make_config(*FAST, "loss=distill", *overrides)


def test_the_rebuilt_teacher_predicts_what_it_saved(teachers: Path) -> None:
    run = setup(student(f"loss.teacher={teachers / 'eps0.1_s0'}"))
    teacher = run.criterion.teacher
    with np.load(teachers / "eps0.1_s0" / "predictions.npz") as p:
        saved = torch.from_numpy(p["test_logits"])
    # The student's own normalisation, converted to the teacher's, on the student's test split
    # (the same images: the same data config).
    z = torch.cat([teacher(x) for x, _ in _batches(run)])
    assert torch.allclose(z, saved, atol=1e-4)
    # No augmentation, no mixing: the training split's logits are cached, and equal a fresh forward.
    assert teacher.cache is not None and teacher.cache.shape == (len(run.ds.train), 10)
    x = run.norm(run.ds.train.x[:50])
    assert torch.allclose(teacher(x, torch.arange(50)), teacher.infer(x), atol=1e-5)


def _batches(run):
    from ls_bench.data.loader import eval_batches

    return eval_batches(run.ds.test, 128, run.norm)


def test_student_records_its_teacher_and_alpha_zero_is_the_plain_loss(teachers: Path, tmp_path: Path) -> None:
    t_dir = teachers / "eps0.1_s0"
    final = fit(student(f"loss.teacher={t_dir}", "loss.kd_alpha=0", "loss.epsilon=0.05"), tmp_path / "kd0")
    plain = fit(make_config(*FAST, "loss.epsilon=0.05"), tmp_path / "plain")
    t_final = json.loads((t_dir / "final.json").read_text())
    assert final["teacher/epsilon"] == 0.1 and final["teacher/test_acc"] == t_final["test/acc"]
    assert final["teacher/test_ece"] == t_final["test/ece"]
    info = json.loads((tmp_path / "kd0" / "run_info.json").read_text())
    assert info["teacher"]["dir"] == str(t_dir.resolve()) and info["teacher"]["epsilon"] == 0.1
    assert final["train/loss"] == plain["train/loss"] and final["test/nll"] == plain["test/nll"]  # bit for bit
    taught = fit(student(f"loss.teacher={t_dir}", "loss.kd_alpha=1", "loss.epsilon=0.05"), tmp_path / "kd1")
    assert taught["train/loss"] != plain["train/loss"]


def test_mixed_batches_recompute_the_teacher_on_what_the_student_sees(teachers: Path) -> None:
    run = setup(student(f"loss.teacher={teachers / 'eps0_s0'}", "mix=mixup"))
    assert run.criterion.teacher.cache is None
    x, y = run.norm(run.ds.train.x[:64]), run.ds.train.y[:64]
    batch = run.criterion.targets(x, y, None, torch.Generator().manual_seed(0), torch.arange(64))
    assert not torch.equal(batch.x, x)  # mixup at prob 1 mixed this batch
    assert torch.allclose(batch.teacher, run.criterion.teacher.infer(batch.x), atol=1e-5)


def test_a_sweep_folder_gives_the_teacher_of_the_students_seed_and_the_selected_keys(teachers: Path) -> None:
    run = setup(student(f"loss.teacher={teachers}", "seed=1"))  # only one teacher has seed 1
    assert run.criterion.teacher.run_dir == teachers / "eps0_s1"
    run = setup(student(f"loss.teacher={teachers}", "seed=0", "+loss.teacher_select.loss.epsilon=0.1"))
    assert run.criterion.teacher.run_dir == teachers / "eps0.1_s0"
    with pytest.raises(ConfigError, match=r"^loss.teacher=.*: 2 of its 3 runs are finished and have seed=0 "
                                          r"\(matching: eps0.1_s0, eps0_s0\); say which with "
                                          r"\+loss.teacher_select.KEY=VALUE$"):
        student(f"loss.teacher={teachers}", "seed=0")
    with pytest.raises(ConfigError, match=r"0 of its 3 runs are finished and have loss.epsilon=0.3, seed=1"):
        student(f"loss.teacher={teachers}", "seed=1", "+loss.teacher_select.loss.epsilon=0.3")


def test_bad_teachers_are_refused_in_one_line_before_training(teachers: Path, tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(teachers / "eps0_s0", unfinished)
    (unfinished / "final.json").unlink()
    no_ckpt = tmp_path / "no_ckpt"
    shutil.copytree(teachers / "eps0_s0", no_ckpt)
    (no_ckpt / "last.pt").unlink()
    cases = [
        ([f"loss.teacher={tmp_path / 'nowhere'}"], "must be an existing folder"),
        ([f"loss.teacher={tmp_path}/empty_dir_that_is_made"], "holds no ls-bench run"),
        ([f"loss.teacher={unfinished}"], "has not finished (no final.json)"),
        ([f"loss.teacher={no_ckpt}"], "has no last.pt"),
        ([f"loss.teacher={teachers / 'eps0_s0'}", "data.classes=[0,1,2]"],
         "the teacher was trained with data.classes=None, the student has data.classes=[0, 1, 2]"),
        ([f"loss.teacher={teachers / 'eps0_s0'}", "data=cifar10", "data.root=/tmp"],
         "the teacher was trained with data.name=digits, the student has data.name=cifar10"),
        ([f"loss.teacher={teachers / 'eps0_s0'}", "loss.kd_alpha=1.5"], "loss.kd_alpha=1.5 is invalid"),
        ([f"loss.teacher={teachers / 'eps0_s0'}", "loss.kd_temperature=0"], "loss.kd_temperature=0"),
    ]
    (tmp_path / "empty_dir_that_is_made").mkdir()
    for overrides, message in cases:
        with pytest.raises(ConfigError) as e:
            student(*overrides)
        assert message in str(e.value) and "\n" not in str(e.value), (overrides, str(e.value))


def test_a_teacher_of_another_architecture_is_rebuilt_from_its_own_config(teachers: Path, tmp_path: Path) -> None:
    """The student's model is not the teacher's: the teacher is built from its recorded model.name."""
    t_dir = tmp_path / "mlp_teacher"
    fit(make_config(*FAST, "model=resnet20"), t_dir)
    run = setup(student(f"loss.teacher={t_dir}"))
    assert type(run.criterion.teacher.model).__name__ != type(run.model).__name__
    t = load_teacher(t_dir, run.cfg, run.ds, run.norm, run.device, run.amp)
    with np.load(t_dir / "predictions.npz") as p:
        saved = torch.from_numpy(p["val_logits"])
    z = predict(t.model, run.ds.val, 256, run.norm, run.amp())
    assert torch.allclose(z, saved, atol=1e-4)


def test_a_teacher_of_another_image_shape_is_refused_when_the_data_loads(teachers: Path, tmp_path: Path) -> None:
    """data.root is not compared (it says where, not what): two ImageFolder trees of one name can
    hold images of different sizes, so the recorded image shape is checked once the data is there."""
    other = tmp_path / "other_shape"
    shutil.copytree(teachers / "eps0_s0", other)
    info = json.loads((other / "run_info.json").read_text())
    assert info["image_shape"] == [1, 8, 8]
    (other / "run_info.json").write_text(json.dumps({**info, "image_shape": [3, 32, 32]}))
    with pytest.raises(ConfigError, match=r"trained on images of shape \[3, 32, 32\], the student's are \[1, 8, 8\]$"):
        setup(student(f"loss.teacher={other}"))


def test_a_one_run_sweep_folder_still_pairs_by_seed_and_unfinished_runs_are_skipped(teachers: Path,
                                                                                     tmp_path: Path) -> None:
    one = tmp_path / "one"
    shutil.copytree(teachers / "eps0_s0", one / "eps0_s0")
    with pytest.raises(ConfigError, match=r"0 of its 1 runs are finished and have seed=1"):
        student(f"loss.teacher={one}", "seed=1")
    assert find_teacher(student(f"loss.teacher={one}", "seed=1", "loss.teacher_same_seed=false")) == one / "eps0_s0"
    shutil.copytree(teachers / "eps0_s0", one / "copy_unfinished")
    (one / "copy_unfinished" / "final.json").unlink()
    assert find_teacher(student(f"loss.teacher={one}", "seed=0")) == one / "eps0_s0"


def test_teacher_select_keys_are_checked_and_groups_stand_for_their_name(teachers: Path) -> None:
    with pytest.raises(ConfigError, match=r"^loss.teacher_select.loss.epsilonn=0 is invalid: is not a config key of "
                                          r"the runs to choose from; did you mean loss.epsilon"):
        student(f"loss.teacher={teachers}", "+loss.teacher_select.loss.epsilonn=0")
    cfg = student(f"loss.teacher={teachers}", "seed=1", "+loss.teacher_select.model=small_cnn")
    assert find_teacher(cfg) == teachers / "eps0_s1"  # model=small_cnn read as model.name=small_cnn


def test_a_teacher_that_saw_the_students_held_out_images_is_refused(teachers: Path) -> None:
    for override, key in (("data.split_seed=1", "data.split_seed"), ("data.val_size=0.3", "data.val_size"),
                          ("data.test_size=0.3", "data.test_size")):
        with pytest.raises(ConfigError, match=rf"the teacher was trained with {key}=.*never its validation or test "
                                              rf"images$"):
            student(f"loss.teacher={teachers / 'eps0_s0'}", override)


def test_binary_corrupt_and_misfitting_teachers_are_one_line(tmp_path: Path, teachers: Path) -> None:
    binary = tmp_path / "binary"
    fit(make_config(*FAST, "loss=binary", "data.classes=[3,5]"), binary)
    with pytest.raises(ConfigError, match="was trained with loss=binary"):
        student(f"loss.teacher={binary}", "data.classes=[3,5]")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(teachers / "eps0_s0", corrupt)
    (corrupt / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"^loss.teacher=.*corrupt: its last.pt cannot be loaded safely") as e:
        setup(student(f"loss.teacher={corrupt}"))
    assert "delete it" not in str(e.value)  # never advise deleting a teacher


def test_the_teacher_sees_its_own_normalisation_when_its_training_split_differs(teachers: Path,
                                                                                tmp_path: Path) -> None:
    """A teacher trained on a 300-image subset has other channel statistics than a student on all
    the training images: the student's normalised input is converted, x·(s_s/s_t) + (m_s − m_t)/s_t."""
    from ls_bench.data import load_dataset
    from ls_bench.data.loader import Normalize

    t_dir = tmp_path / "subset_teacher"
    t_cfg = make_config(*FAST, "data.train_size=300")
    fit(t_cfg, t_dir)
    run = setup(student(f"loss.teacher={t_dir}"))
    t_ds = load_dataset(t_cfg.data)
    assert t_ds.mean != run.ds.mean
    own = predict(run.criterion.teacher.model, run.ds.test, 256, Normalize(t_ds.mean, t_ds.std, run.device, False),
                  run.amp())
    converted = torch.cat([run.criterion.teacher(x) for x, _ in _batches(run)])
    assert torch.allclose(converted, own, atol=1e-4)
    with np.load(t_dir / "predictions.npz") as p:
        assert torch.allclose(own, torch.from_numpy(p["test_logits"]), atol=1e-4)


def test_one_command_distils_every_teacher_epsilon_and_the_report_pairs_them(teachers: Path, tmp_path: Path) -> None:
    """The README's teacher sweep, as a user types it: job folders named by the selected teacher ε
    (never by the teacher's path), each student recording its own teacher, and the report pairing
    students by seed against the one-hot teacher's."""
    from conftest import run_cli

    sweep = tmp_path / "students"
    r = run_cli("-m", *FAST, "loss=distill", f"loss.teacher={teachers}", "+loss.teacher_select.loss.epsilon=0,0.1",
                "loss.kd_temperature=2", "seed=0", f"hydra.sweep.dir={sweep}",
                "hydra.callbacks.sweep_report.enabled=false")
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = sorted(p.parent.parent for p in sweep.rglob(".hydra/config.yaml"))
    assert [j.parent for j in jobs] == [sweep, sweep] and all("loss.teacher=" not in j.name for j in jobs)
    finals = {json.loads((j / "final.json").read_text())["teacher/epsilon"]: j for j in jobs}
    assert set(finals) == {0.0, 0.1}
    for eps, job in finals.items():
        info = json.loads((job / "run_info.json").read_text())
        assert info["teacher"]["dir"] == str((teachers / ("eps0_s0" if eps == 0 else "eps0.1_s0")).resolve())
    r = subprocess.run([sys.executable, "-m", "ls_bench.report", str(sweep), "--no-plots", "--baseline",
                        "loss.teacher_select.loss.epsilon=0", "--metrics", "test/acc,teacher/test_acc"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "loss.teacher_select.loss.epsilon" in r.stdout and "Δteacher/test_acc" in r.stdout
