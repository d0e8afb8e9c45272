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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ls_bench.config import NOT_COMPUTED, Config, DataConfig, flatten
from ls_bench.errors import ConfigError, bad
from ls_bench.files import read_json

# What a teacher must share with its student: the same inputs, the same classes.
MUST_MATCH = ("data.name", "data.classes")


def candidates(root: Path) -> list[Path]:
    """The run folders at or below `root` (those holding run_info.json), sorted."""
    if (root / "run_info.json").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("run_info.json"))


def recorded_config(run_dir: Path) -> dict[str, Any]:
    """The flat config a run recorded when it started."""
    try:
        config = read_json(run_dir / "run_info.json").get("config")
    except (OSError, json.JSONDecodeError):
        config = None
    if not isinstance(config, dict):
        raise ConfigError(f"loss.teacher: {run_dir}/run_info.json has no recorded config (not an ls-bench run, or "
                          f"one from a version before 0.1)")
    return config


def matches(config: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(k in config and config[k] == v for k, v in wanted.items())


def find_teacher(cfg: Config) -> Path:
    """loss.teacher (and teacher_select / teacher_same_seed in a sweep folder) as one run folder."""
    lo = cfg.loss
    if lo.teacher in (None, ""):
        raise bad("loss.teacher", lo.teacher, "must name a finished ls-bench run's folder (or a sweep folder of them) "
                                              "with loss=distill")
    root = Path(lo.teacher).expanduser()
    if not root.is_dir():
        raise bad("loss.teacher", lo.teacher, "must be an existing folder: a finished run's, or a sweep's")
    runs = candidates(root)
    if not runs:
        raise bad("loss.teacher", lo.teacher, "holds no ls-bench run (no run_info.json in it or below it)")
    wanted = flatten(dict(lo.teacher_select))
    if len(runs) > 1 and lo.teacher_same_seed:
        wanted.setdefault("seed", cfg.seed)
    chosen = [r for r in runs if matches(recorded_config(r), wanted)]
    if len(chosen) != 1:
        what = ", ".join(f"{k}={v}" for k, v in wanted.items()) or "no keys"
        named = ", ".join(str(r.relative_to(root)) for r in (chosen or runs)[:4])
        more = f" and {len(chosen or runs) - 4} more" if len(chosen or runs) > 4 else ""
        raise ConfigError(f"loss.teacher={lo.teacher}: {len(chosen)} of its {len(runs)} runs have {what} "
                          f"({'matching' if chosen else 'runs'}: {named}{more}); say which with "
                          f"+loss.teacher_select.KEY=VALUE")
    return chosen[0]


def check_teacher(cfg: Config) -> Path:
    """The teacher's folder, checked before any data loads: finished, with a checkpoint, trained on
    the student's dataset and classes, with a softmax head."""
    run_dir = find_teacher(cfg)
    if not (run_dir / "final.json").is_file():
        raise bad("loss.teacher", str(run_dir), "has not finished (no final.json): train the teacher first")
    if not (run_dir / "last.pt").is_file():
        raise bad("loss.teacher", str(run_dir), "has no last.pt (trainer.checkpoint=false?): it cannot be rebuilt")
    config, student = recorded_config(run_dir), flatten_config(cfg)
    for key in MUST_MATCH:
        if config.get(key) != student[key]:
            raise ConfigError(f"loss.teacher={run_dir}: the teacher was trained with {key}={config.get(key)}, the "
                              f"student has {key}={student[key]}; a teacher must see the student's inputs and classes")
    if config.get("loss.name") == "binary":
        raise bad("loss.teacher", str(run_dir), "was trained with loss=binary (one sigmoid output); distillation needs "
                                                "a softmax teacher")
    return run_dir


def flatten_config(cfg: Config) -> dict[str, Any]:
    from dataclasses import asdict

    return json.loads(json.dumps(flatten(asdict(cfg))))  # the types run_info.json holds


def teacher_config(run_dir: Path) -> Config:
    """The teacher's Config, rebuilt from its flat record (keys of other versions are an error)."""
    from omegaconf import OmegaConf

    nested: dict[str, Any] = {}
    for key, value in recorded_config(run_dir).items():
        node = nested
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), nested))
    except Exception as e:  # omegaconf's errors are several lines
        raise ConfigError(f"loss.teacher={run_dir}: its recorded config does not fit this version of ls-bench "
                          f"({str(e).splitlines()[0]})") from None


@dataclass
class Teacher:
    """`teacher(x, idx) -> logits [B, K]` on the student's normalised input x. x·scale + shift turns
    the student's normalisation into the teacher's; `cache` holds the logits of the whole training
    split (no augmentation), indexed by idx, the samples' positions in it."""

    model: nn.Module
    scale: Tensor  # [1, C, 1, 1]
    shift: Tensor
    amp: Any  # a callable returning the student's autocast context
    cache: Tensor | None = None
    run_dir: Path | None = None

    @torch.inference_mode()
    def forward(self, x: Tensor) -> Tensor:
        with self.amp():
            f = self.model.features(torch.addcmul(self.shift, x, self.scale))
        return self.model.head(f.float())  # the head in float32, as ls_bench.train.predict does

    def __call__(self, x: Tensor, idx: Tensor | None = None) -> Tensor:
        if self.cache is not None and idx is not None:
            return self.cache[idx]
        return self.forward(x).clone()  # out of inference mode: usable in the student's autograd graph


def train_stats(tcfg: Config, cfg: Config, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple, tuple]:
    """The teacher's normalisation: the student's when both used the same training images (the
    same data config), else recomputed from the teacher's own training split."""
    from ls_bench.data import load_dataset

    def data_keys(c: Config) -> dict[str, Any]:
        return {k: v for k, v in flatten_config(c).items()
                if k.startswith("data.") and k not in NOT_COMPUTED and not k.startswith("data.label_noise")}

    if data_keys(tcfg) == data_keys(cfg):
        return mean, std
    ds = load_dataset(DataConfig(**{**tcfg.data.__dict__, "root": cfg.data.root, "cache_dir": cfg.data.cache_dir}))
    return ds.mean, ds.std


def load_teacher(cfg: Config, ds: Any, norm: Any, device: torch.device, amp: Any) -> Teacher:
    """The checked teacher, rebuilt, on the device, in eval mode; its training-split logits cached
    when the student neither augments nor mixes."""
    from ls_bench.checkpoint import load_checkpoint
    from ls_bench.data import eval_batches
    from ls_bench.models import build_model

    run_dir = check_teacher(cfg)
    tcfg = teacher_config(run_dir)
    shape = read_json(run_dir / "run_info.json").get("image_shape")  # recorded since 0.1's rivals
    if shape is not None and list(shape) != list(ds.train.x.shape[1:]):
        raise ConfigError(f"loss.teacher={run_dir}: the teacher was trained on images of shape {list(shape)}, the "
                          f"student's are {list(ds.train.x.shape[1:])}")
    model = build_model(tcfg.model.name, ds.in_channels, ds.num_classes, ds.image_size)
    state = load_checkpoint(run_dir / "last.pt")
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as e:
        raise ConfigError(f"loss.teacher={run_dir}: its last.pt does not fit a {tcfg.model.name} for "
                          f"{ds.num_classes} classes of {ds.image_size}x{ds.image_size} images "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    model = model.to(device).eval().requires_grad_(False)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean_t, std_t = train_stats(tcfg, cfg, ds.mean, ds.std)
    s_mean, s_std, t_mean, t_std = (torch.tensor(v, device=device).view(1, -1, 1, 1)
                                    for v in (ds.mean, ds.std, mean_t, std_t))
    teacher = Teacher(model, s_std / t_std, (s_mean - t_mean) / t_std, amp, run_dir=run_dir)
    if not ds.augment and cfg.mix.name == "none":
        teacher.cache = torch.cat([teacher.forward(x) for x, _ in eval_batches(ds.train, cfg.trainer.eval_batch_size,
                                                                               norm)])
    return teacher


def teacher_record(run_dir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """({dir, loss, ...} for run_info.json, {teacher/epsilon, teacher/test_acc, ...} for final.json)."""
    config, final = recorded_config(run_dir), read_json(run_dir / "final.json")
    info = {"dir": str(run_dir.resolve()), "loss": config.get("loss.name"), "epsilon": config.get("loss.epsilon"),
            "model": config.get("model.name"), "seed": config.get("seed"), "mix": config.get("mix.name", "none")}
    numbers = {"teacher/epsilon": float(config.get("loss.epsilon", 0.0))}
    for key in ("test/acc", "test/nll", "test/ece", "test_ts/ece", "temperature"):
        if isinstance(final.get(key), (int, float)):
            numbers[f"teacher/{key.replace('/', '_')}"] = float(final[key])
    return info, numbers

