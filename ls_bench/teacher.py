"""The distillation teacher (loss=distill): a finished ls-bench run, found, checked and rebuilt.

`loss.teacher` is a run's folder, or a sweep folder that holds teachers. In a sweep folder the
teacher is the one finished run whose recorded config has every key of `loss.teacher_select` (a
partial config: `+loss.teacher_select.loss.epsilon=0.1`) and, with `loss.teacher_same_seed`, the
student's seed; anything but exactly one match is a one-line error naming the candidates. The
teacher is rebuilt from the config it recorded in run_info.json and its last.pt (weights_only),
and must have the student's dataset, classes and image size. It sees what the student sees (the
same augmented, mixed batch), renormalised with its own training split's statistics, in inference
mode; without augmentation or mixing its logits over the training split are computed once.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

from ls_bench.config import Config, flat_json, flatten, with_defaults
from ls_bench.errors import ConfigError, invalid
from ls_bench.files import read_json
from ls_bench.models import outputs_fp32_head

if TYPE_CHECKING:
    from ls_bench.data import Dataset
    from ls_bench.data.loader import Normalize

log = logging.getLogger(__name__)

# What a teacher must share with its student: the same inputs, the same classes, and the same
# held-out images (the split seed and sizes), so the teacher never trained on the student's
# validation or test images. train_size, augmentation and label noise may differ: they only shrink
# or alter the same training pool. data.test_size only cuts a test split where the dataset has none.
MUST_MATCH = ("data.name", "data.classes", "data.split_seed", "data.val_size")
MUST_MATCH_WITHOUT_TEST_SPLIT = ("data.test_size",)
NO_TEST_SPLIT = ("digits",)
# How the errors name the finished run and the one that builds on it, by the key that points at it
# (model.init_from: ls_bench.init_weights).
ROLES = {"loss.teacher": ("the teacher", "the student", "a teacher must see the student's inputs and classes"),
         "model.init_from": ("the source run", "this run", "starting weights must come from a run on this run's "
                                                           "inputs and classes")}


def recorded_config(run_dir: Path, info: dict[str, Any] | None = None, field: str = "loss.teacher") -> dict[str, Any]:
    """The flat config a run recorded when it started (in `info`, its run_info.json, read here when
    not given), keys added to the schema since then at their defaults (config.with_defaults)."""
    config = (read_json(run_dir / "run_info.json") if info is None else info).get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"{field}: {run_dir}/run_info.json has no recorded config (not an ls-bench run, or "
                          f"one from a version before 0.1)")
    return with_defaults(config)


def finished(run_dir: Path) -> bool:
    return (run_dir / "final.json").is_file() and (run_dir / "last.pt").is_file()


def wanted_keys(select: dict, select_field: str, seed: int | None, known: set[str]) -> dict[str, Any]:
    """`select` (loss.teacher_select, model.init_select) flattened (a group stands for its .name key:
    model=resnet20), plus `seed` when given. A key no candidate has is refused."""
    import difflib

    wanted: dict[str, Any] = {}
    for key, value in flatten(dict(select)).items():
        key = f"{key}.name" if key not in known and f"{key}.name" in known else key
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            raise invalid(f"{select_field}.{key}", value, "is not a config key of the runs to choose from"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))
        wanted[key] = value
    if seed is not None:
        wanted.setdefault("seed", seed)
    return wanted


def find_run(where: str, field: str, select: dict, select_field: str, seed: int | None) -> Path:
    """A finished run another run builds on (a teacher, starting weights), named by `field`: the
    folder `where` itself when it is a run, else the one finished run below it with every key of
    `select` (and, when `seed` is given, that seed); anything but exactly one is a one-line error."""
    root = Path(where).expanduser()
    if not root.is_dir():
        raise invalid(field, where, "must be an existing folder: a finished run's, or a sweep's")
    sweep = not (root / "run_info.json").is_file()
    runs = sorted(p.parent for p in root.rglob("run_info.json")) if sweep else [root]
    if not runs:
        raise invalid(field, where, "holds no ls-bench run (no run_info.json in it or below it)")
    configs = {r: recorded_config(r, field=field) for r in runs}
    wanted = wanted_keys(select, select_field, seed if sweep else None, {k for c in configs.values() for k in c})
    chosen = [r for r in runs if all(configs[r].get(k) == v for k, v in wanted.items())]
    if sweep:
        unfinished = [r for r in chosen if not finished(r)]
        chosen = [r for r in chosen if finished(r)]
    if len(chosen) != 1:
        what = ", ".join(f"{k}={v}" for k, v in wanted.items()) or "no keys"
        shown = chosen or runs
        named = ", ".join(str(r.relative_to(root)) for r in shown[:4]) + (f" and {len(shown) - 4} more"
                                                                          if len(shown) > 4 else "")
        skipped = f"; {len(unfinished)} more match but have not finished" if sweep and unfinished else ""
        raise ConfigError(f"{field}={where}: {len(chosen)} of its {len(runs)} runs are finished and have "
                          f"{what} ({'matching' if chosen else 'runs'}: {named}){skipped}; say which with "
                          f"+{select_field}.KEY=VALUE")
    return chosen[0]


def find_teacher(cfg: Config) -> Path:
    """loss.teacher as one run folder (find_run), with loss.teacher_select and teacher_same_seed."""
    lo = cfg.loss
    if lo.teacher in (None, ""):
        raise invalid("loss.teacher", lo.teacher,
                      "must name a finished ls-bench run's folder (or a sweep folder of them) with loss=distill")
    return find_run(lo.teacher, "loss.teacher", lo.teacher_select, "loss.teacher_select",
                    cfg.seed if lo.teacher_same_seed else None)


def check_source(run_dir: Path, cfg: Config, field: str) -> None:
    """What a teacher or a starting point must be: finished, with a last.pt, a softmax run of a known
    model on this run's dataset, classes and held-out splits (MUST_MATCH)."""
    from ls_bench.models import check_model

    if not (run_dir / "final.json").is_file():
        raise invalid(field, str(run_dir), "has not finished (no final.json): train it first")
    if not (run_dir / "last.pt").is_file():
        raise invalid(field, str(run_dir), "has no last.pt (trainer.checkpoint=false?): it cannot be rebuilt")
    config, this = recorded_config(run_dir, field=field), flat_json(cfg)
    keys = MUST_MATCH + (MUST_MATCH_WITHOUT_TEST_SPLIT if cfg.data.name in NO_TEST_SPLIT else ())
    source, user, rule = ROLES[field]
    for key in keys:
        if config.get(key) != this[key]:
            raise ConfigError(f"{field}={run_dir}: {source} was trained with {key}={config.get(key)}, {user} has "
                              f"{key}={this[key]}; {rule}, and never its validation or test images")
    if config.get("loss.name") == "binary":
        raise invalid(field, str(run_dir), "was trained with loss=binary (one sigmoid output); a softmax run is needed")
    try:
        check_model(config.get("model.name"))
    except ConfigError as e:
        raise ConfigError(f"{field}={run_dir}: its recorded {e}") from None


def check_teacher(cfg: Config) -> Path:
    """The teacher's folder, checked before any data loads (check_source)."""
    run_dir = find_teacher(cfg)
    check_source(run_dir, cfg, "loss.teacher")
    return run_dir


def teacher_config(run_dir: Path, info: dict[str, Any], field: str = "loss.teacher") -> Config:
    """The teacher's Config, rebuilt from the flat record in its run_info (keys of other versions
    are an error)."""
    from omegaconf import OmegaConf

    nested: dict[str, Any] = {}
    for key, value in recorded_config(run_dir, info, field).items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), nested))
    except Exception as e:  # omegaconf's errors are several lines
        raise ConfigError(f"{field}={run_dir}: its recorded config does not fit this version of ls-bench "
                          f"({str(e).splitlines()[0]})") from None


@dataclass
class Teacher:
    """`teacher(x, idx) -> logits [B, K]` on the student's normalised input x. x·scale + shift turns
    the student's normalisation into the teacher's; `cache` holds the logits of the whole training
    split (no augmentation, no mixing), indexed by idx, the samples' positions in it. `info` and
    `numbers` are what the student records of it (teacher_record), read once at set-up."""

    model: nn.Module
    scale: Tensor  # [1, C, 1, 1]
    shift: Tensor
    amp: Callable[[], contextlib.AbstractContextManager]  # the student's autocast
    run_dir: Path
    info: dict[str, Any]  # for the student's run_info.json: {dir, loss, epsilon, ...}
    numbers: dict[str, float]  # for the student's final.json: {teacher/epsilon, teacher/test_acc, ...}
    cache: Tensor | None = None
    temperature: float = 1.0  # loss.kd_temperature: the T of the soft targets the student sees
    # Σ wrong-class mass, Σ correct, count over the batches since the last epoch_numbers(), on the
    # device (read once per epoch: no per-step sync)
    tally: Tensor | None = None

    @torch.inference_mode()
    def infer(self, x: Tensor) -> Tensor:
        """The teacher's logits on the student's input x, head in float32 (as predict computes them)."""
        return outputs_fp32_head(self.model, torch.addcmul(self.shift, x, self.scale), self.amp())

    def __call__(self, x: Tensor, idx: Tensor | None = None, labels: Tensor | None = None) -> Tensor:
        """The teacher's logits on x; with `labels`, the batch is added to the epoch's tally."""
        z = self.cache[idx] if self.cache is not None and idx is not None else self.infer(x).clone()
        if labels is not None:  # clone(): out of inference mode, usable in the student's autograd graph
            self.observe(z, labels)
        return z

    @torch.no_grad()
    def observe(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch to the tally: the mass softmax(z_t/T) puts on classes other than the label,
        1 - p_T(y), and whether the teacher's argmax is the label."""
        p_y = torch.softmax(logits.float() / self.temperature, dim=1).gather(1, labels[:, None]).squeeze(1)
        batch = torch.stack([(1 - p_y).sum(), (logits.argmax(1) == labels).sum().float(),
                             torch.tensor(float(len(labels)), device=logits.device)])
        self.tally = batch if self.tally is None else self.tally + batch

    def epoch_numbers(self) -> dict[str, float]:
        """teacher/train_wrong_mass (Müller et al. 2019 §5's measure of what a teacher passes on:
        mean 1 - p_T(y) over the student's training batches, at the KD temperature) and
        teacher/train_acc since the last call, which starts a new tally; {} if nothing was seen."""
        if self.tally is None:
            return {}
        wrong, correct, n = self.tally.tolist()
        self.tally = None
        return {"teacher/train_wrong_mass": wrong / n, "teacher/train_acc": correct / n}


def teacher_stats(info: dict[str, Any], tcfg: Config, cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The teacher's normalisation (its training split's channel mean and std): as its run_info
    recorded it, or, for runs that did not record it, recomputed from its training split (images
    only: label noise never changes them)."""
    recorded = info.get("normalization")
    if isinstance(recorded, dict):
        return tuple(recorded["mean"]), tuple(recorded["std"])
    from dataclasses import replace

    from ls_bench.config import LabelNoiseConfig
    from ls_bench.data import load_dataset

    root = tcfg.data.root if tcfg.data.root and Path(tcfg.data.root).is_dir() else cfg.data.root
    data = replace(tcfg.data, root=root, cache_dir=cfg.data.cache_dir, label_noise=LabelNoiseConfig())
    ds = load_dataset(data)
    return ds.mean, ds.std


def rebuild_model(run_dir: Path, info: dict[str, Any], tcfg: Config, ds: "Dataset",
                  field: str = "loss.teacher") -> nn.Module:
    """The recorded architecture with its last.pt weights (weights_only); one-line errors naming `field`."""
    from ls_bench.checkpoint import CheckpointError, load_checkpoint
    from ls_bench.models import build_model

    source, user, _ = ROLES[field]
    shape = info.get("image_shape")  # absent from the records of older runs
    if shape is not None and list(shape) != list(ds.train.x.shape[1:]):
        raise ConfigError(f"{field}={run_dir}: {source} was trained on images of shape {list(shape)}, {user}'s "
                          f"are {list(ds.train.x.shape[1:])}")
    if "classes" in info and list(info["classes"]) != list(ds.classes):
        raise ConfigError(f"{field}={run_dir}: {source}'s classes {info['classes']} are not {user}'s "
                          f"{list(ds.classes)}")
    model = build_model(tcfg.model.name, ds.in_channels, ds.num_classes, ds.image_size)
    try:
        model.load_state_dict(load_checkpoint(run_dir / "last.pt")["model"])
    except CheckpointError as e:
        raise ConfigError(f"{field}={run_dir}: its last.pt cannot be loaded safely "
                          f"({str(e).split('(', 1)[-1].split(';')[0]}") from None
    except (KeyError, RuntimeError) as e:
        raise ConfigError(f"{field}={run_dir}: its last.pt does not fit a {tcfg.model.name} for "
                          f"{ds.num_classes} classes of {ds.image_size}x{ds.image_size} images "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return model


def load_teacher(run_dir: Path, cfg: Config, ds: "Dataset", norm: "Normalize", device: torch.device,
                 amp: Callable[[], contextlib.AbstractContextManager]) -> Teacher:
    """The teacher in run_dir (as check_teacher returned it), rebuilt, on the device, in eval mode;
    its training-split logits cached when the student neither augments nor mixes."""
    from ls_bench.data.loader import eval_batches

    info = read_json(run_dir / "run_info.json")
    tcfg = teacher_config(run_dir, info)
    model = rebuild_model(run_dir, info, tcfg, ds).to(device).eval().requires_grad_(False)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    t_mean, t_std = teacher_stats(info, tcfg, cfg)
    s_mean, s_std, t_mean, t_std = (torch.tensor(v, device=device).view(1, -1, 1, 1)
                                    for v in (ds.mean, ds.std, t_mean, t_std))
    # (x_raw/255 - m_t)/s_t = x_s · (s_s/s_t) + (m_s - m_t)/s_t, with x_s = (x_raw/255 - m_s)/s_s
    teacher = Teacher(model, s_std / t_std, (s_mean - t_mean) / t_std, amp, run_dir, *teacher_record(run_dir, info),
                      temperature=float(cfg.loss.kd_temperature))
    if not ds.augment and cfg.mix.name == "none":
        batches = eval_batches(ds.train, cfg.trainer.eval_batch_size, norm)
        teacher.cache = torch.cat([teacher.infer(x) for x, _ in batches]).clone()
    return teacher


def weaker_teacher(teacher_acc: float | None, student_acc: float | None, student: str) -> str | None:
    """The warning when a teacher is less accurate on the student's test split than `student` (a
    description of the student it is compared with), else None. A teacher that a student can beat
    without it has little to pass on: distillation from it cannot test Müller et al. 2019 §5."""
    if teacher_acc is None or student_acc is None or teacher_acc >= student_acc:
        return None
    return (f"the teacher is less accurate on the student's test split ({teacher_acc:.4f}) than {student} "
            f"({student_acc:.4f}): it has little to teach")


def checked_teacher(numbers: dict[str, float], final: dict[str, Any]) -> dict[str, float]:
    """The teacher's numbers for the student's final.json, after a warning in the log when the
    teacher's recorded test accuracy is below this student's own. (The same test images: a teacher
    must share the student's data, classes and held-out splits, MUST_MATCH. A single run has no
    student without a teacher to compare with; the sweep report compares with those of a sweep.)"""
    warning = weaker_teacher(numbers.get("teacher/test_acc"), final.get("test/acc"), "this distilled student")
    if warning:
        log.warning(warning)
    return numbers


def teacher_record(run_dir: Path, info: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """({dir, loss, ...} for run_info.json, {teacher/epsilon, teacher/test_acc, ...} for final.json),
    from the teacher's run_info (`info`) and its final.json."""
    config, final = recorded_config(run_dir, info), read_json(run_dir / "final.json")
    info = {"dir": str(run_dir.resolve()), "loss": config.get("loss.name"), "epsilon": config.get("loss.epsilon"),
            "model": config.get("model.name"), "seed": config.get("seed"), "mix": config.get("mix.name", "none")}
    eps = config.get("loss.epsilon", 0.0)  # a class-wise list (issue 24): its mean, a number for final.json
    numbers = {"teacher/epsilon": float(sum(eps) / len(eps) if isinstance(eps, list) else eps)}
    for key in ("test/acc", "test/nll", "test/ece", "test_ts/ece", "temperature"):
        if isinstance(final.get(key), (int, float)):
            numbers[f"teacher/{key.replace('/', '_')}"] = float(final[key])
    return info, numbers

