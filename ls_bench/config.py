"""The config schema: typed dataclasses, registered in Hydra's ConfigStore by the CLI.

YAML files under configs/ hold values; these dataclasses hold the types, so an override
with a misspelt key or a wrong type fails when Hydra composes the config, before training.
`validate` adds the range checks a type cannot express; names that registries define (data.name,
model.name, loss.name) are checked by their registries (data, models, losses) in run.setup,
before the data loads. This module imports neither hydra nor any other ls-bench module but errors.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Dict, List, Optional

from ls_bench.errors import invalid


@dataclass
class LabelNoiseConfig:
    rate: float = 0.0  # fraction of training labels flipped once, before training (symmetric, asymmetric)
    kind: str = "symmetric"  # symmetric | asymmetric | human (CIFAR-10N's labels) | matched (their transitions)
    seed: Optional[int] = None  # default: derived from the top-level seed
    file: Optional[str] = None  # human, matched: CIFAR-10N's CIFAR-10_human.pt
    labels: Optional[str] = None  # human, matched: aggre | worse | random1 | random2 | random3 (HUMAN_LABELS)
    val: str = "clean"  # clean | noisy (human, matched: the validation split gets the same kind of labels)


@dataclass
class ImbalanceConfig:
    # ρ = n_max / n_min of an exponential long tail cut from the training split (Cao et al. 2019's
    # CIFAR-10-LT): n_k = int(n_max · ρ^(-k/(K-1))), class 0 the head; null: the split as it is
    ratio: Optional[float] = None


@dataclass
class DataConfig:
    name: str = "digits"  # digits | cifar10 | cifar100 | svhn | imagefolder
    root: Optional[str] = None  # required except for digits; the torchvision datasets' YAML says ./data
    download: bool = True
    # Split sizes: a count (a whole number >= 1), or a fraction in (0, 1) of the images there
    # (rounded up, like scikit-learn's train_test_split). The defaults are digits' (configs/data).
    val_size: float = 0.2  # held out from the training set (stratified, split_seed); 0: none
    test_size: float = 0.2  # of all images; only for datasets without an official test split (digits)
    train_size: Optional[float] = None  # stratified subset of what remains after val
    split_seed: int = 0
    augment: bool = False  # random crop (pad 4) + horizontal flip, on the device
    classes: Optional[List[int]] = None  # keep only these labels, renumbered 0..len-1
    cache_dir: Optional[str] = None  # decoded-image cache; default ~/.cache/ls-bench
    original_index: Optional[str] = None  # imagefolder: .npz of each image's original CIFAR-10 index (train, test)
    train_on: str = "train"  # test: train (and validate) on the official test split, test on the training split
    label_noise: LabelNoiseConfig = field(default_factory=LabelNoiseConfig)
    imbalance: ImbalanceConfig = field(default_factory=ImbalanceConfig)


@dataclass
class ModelConfig:
    name: str = "small_cnn"
    # Start from a finished run's final weights instead of random ones (ls_bench.init_weights): its
    # folder, or a sweep folder where the one finished run with every key of init_select (and, with
    # init_same_seed, this run's seed) is chosen, as loss.teacher chooses a teacher.
    init_from: Optional[str] = None
    init_select: Dict[str, Any] = field(default_factory=dict)
    init_same_seed: bool = True


@dataclass
class LossConfig:
    name: str = "label_smoothing"  # see ls_bench.losses.LOSSES
    # smoothing mass; 0 is one-hot cross-entropy. Or a list of K values, each class's own ε, applied by
    # the sample's true class (Any: a number or a list; config.validate checks which)
    epsilon: Any = 0.0
    epsilon_schedule: Optional[str] = None  # null | mislas: ε per class from its training count (Zhong et al. 2021)
    epsilon_head: float = 0.3  # mislas: ε of the most frequent class (MiSLAS's CIFAR smooth_head)
    epsilon_tail: float = 0.0  # mislas: ε of the least frequent class (MiSLAS's smooth_tail)
    allow_negative: bool = False  # epsilon < 0: negative label smoothing (Wei et al., ICML 2022), down to -8
    prior: Any = "uniform"  # uniform | others | class_prior | human (per image, loss.human) | list of K probabilities
    # loss.prior=human reads it (other priors ignore it, so one sweep can compare priors): per-image
    # label distributions, CIFAR-10H's cifar10h-probs.npy
    human: Optional[str] = None
    class_weights: Any = None  # None | balanced | list of K non-negative weights
    gamma: float = 2.0  # focal loss exponent
    gamma_schedule: Optional[str] = None  # loss=focal: null (the fixed gamma) | flsd53 (Mukhoti et al. 2020)
    ols_alpha: float = 0.5  # loss=online_ls: α of α·CE(onehot) + (1-α)·CE(S[y]) (Zhang et al. 2021)
    relax_alpha: float = 0.1  # loss=label_relaxation: α, the slack 1 - α on the true class (Lienen & Hüllermeier 2021)
    beta: float = 0.1  # confidence-penalty weight
    margin: float = 10.0  # loss=margin: the logit distance m beyond which gaps are penalised
    margin_weight: float = 0.1  # loss=margin: λ of the margin term
    tau: float = 0.04  # loss=logit_norm: the temperature τ of z / (τ·‖z‖₂)
    teacher: Optional[str] = None  # loss=distill: a finished run's folder, or a sweep folder holding teachers
    teacher_select: Dict[str, Any] = field(default_factory=dict)  # config keys the teacher must have (in a sweep)
    teacher_same_seed: bool = True  # in a sweep folder, pick the teacher with the student's seed
    kd_alpha: float = 1.0  # loss=distill: weight α of the soft (teacher) term; 1 - α goes to the labels
    kd_temperature: float = 4.0  # loss=distill: the temperature T of both softmaxes in the soft term

    def __post_init__(self) -> None:
        # Numbers in epsilon are floats, as when it was typed float: 0 -> 0.0 in run_info.json, the
        # report's columns and the same-config check (a list's entries too). Anything else is validate's.
        def as_float(v: Any) -> Any:
            return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

        self.epsilon = [as_float(v) for v in self.epsilon] if isinstance(self.epsilon, list) else as_float(self.epsilon)


@dataclass
class MixConfig:
    """mixup / CutMix of training batches (ls_bench.data.mixing); evaluation never mixes."""

    name: str = "none"  # none | mixup | cutmix
    alpha: float = 1.0  # λ ~ Beta(α, α)
    # probability a batch is mixed; null: mixup 1, cutmix 0.5 (the authors' CIFAR settings)
    prob: Optional[float] = None


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.05  # peak learning rate, per batch of trainer.batch_size
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


@dataclass
class SchedConfig:
    name: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.0  # linear warm-up from 0, in epochs
    milestones: List[int] = field(default_factory=list)  # step: epochs where lr *= gamma
    gamma: float = 0.1


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    eval_every: int = 1  # evaluate val and test every N epochs (and always after the last)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | bf16 | fp16 | fp32
    channels_last: bool = True
    compile: Any = False  # false | true | a torch.compile mode: default, reduce-overhead, max-autotune
    deterministic: bool = False  # deterministic algorithms, no cudnn.benchmark, CPU draws: exact CUDA reruns
    num_threads: int = 0  # CPU threads per run; 0 = all cores, split across parallel jobs
    progress: bool = True  # tqdm bars
    checkpoint: bool = True  # last.pt after every epoch (resume)


@dataclass
class MetricsConfig:
    n_bins: int = 15  # calibration bins (ECE family)
    temperature_scaling: bool = True  # fit T on val at the end; report test_ts/*
    top_k: Optional[int] = None  # extra top-k accuracy; default 5 when K >= 10
    figures: bool = True  # calibration PNGs + TensorBoard images at the end of each run (~0.3-1.8 s)
    penultimate_classes: List[int] = field(default_factory=lambda: [0, 1, 2])  # the 3 classes of penultimate.png
    # post-hoc calibrators fitted on val, each scored as test_<name>/* (ls_bench.evaluate.posthoc): POSTHOC
    posthoc: List[str] = field(default_factory=lambda: ["ts"])
    scores: List[str] = field(default_factory=list)  # selective scores beside MSP, test/<score>/*: SCORES


@dataclass
class EvalConfig:
    """Evaluations beyond the clean test split (ls_bench.evaluate.selective, ls_bench.evaluate.shift)."""

    corruptions: List[str] = field(default_factory=list)  # CIFAR-10-C names, or [all]; [] = none
    severities: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    shift_size: Optional[float] = None  # test images corrupted: null = all, a count or a fraction (stratified)
    ood: List[str] = field(default_factory=list)  # held_out | svhn | cifar10 | cifar100 | imagefolder | noise
    ood_root: Optional[str] = None  # the folder of eval.ood's svhn/cifar files or of its imagefolder tree
    bootstrap: int = 1000  # resamples of the test/ece_lo, test/ece_hi interval; 0 = none
    human: Optional[str] = None  # CIFAR-10H's cifar10h-probs.npy: test/human/* (ls_bench.evaluate.human)
    representation: bool = False  # test/repr/*, held_out/repr/* of the penultimate features (evaluate.representation)


@dataclass
class SeedsConfig:
    """Independent random streams; each defaults to one derived from the top-level seed."""

    init: Optional[int] = None  # model initialisation
    data: Optional[int] = None  # batch order and augmentation


@dataclass
class SearchConfig:
    """What a run returns to a Hydra sweeper that optimises (hydra/sweeper=optuna, experiment=search_epsilon)."""

    optimize: str = "val/nll"  # the final.json metric returned as the objective (a split/name metric, or temperature)
    # [] = the run's own seed; [0, 1, 2]: the job runs these seeds in sequence, each in its folder
    # seed=N (written like any run), and returns the objective's mean over them
    seeds: List[int] = field(default_factory=list)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


# Keys that change where or how visibly a run executes, not what it computes: the report groups
# runs across them, and a run directory resumes across them.
NOT_COMPUTED = frozenset({"trainer.progress", "trainer.device", "trainer.num_threads", "trainer.checkpoint",
                          "data.root", "data.cache_dir", "data.download", "metrics.figures",
                          "metrics.penultimate_classes", "eval.ood_root", "data.original_index",
                          "data.label_noise.file", "eval.human", "loss.human",
                          "search.optimize", "search.seeds"})


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"loss": {"epsilon": 0.1}} -> {"loss.epsilon": 0.1}: the keys of command-line overrides."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def flat_config(cfg: Config) -> dict[str, Any]:
    return flatten(asdict(cfg))


def flat_json(cfg: Config) -> dict[str, Any]:
    """flat_config with the types a JSON round trip gives (tuples as lists), as run_info.json holds it."""
    return json.loads(json.dumps(flat_config(cfg)))


def with_defaults(recorded: dict[str, Any]) -> dict[str, Any]:
    """A flat config recorded in a run_info.json, with the keys added to the schema since that run
    at their defaults: the old run computed exactly what the default computes. The recorded keys keep
    their order (the report's columns follow it); the added ones come after them."""
    return {**recorded, **{k: v for k, v in flat_json(Config()).items() if k not in recorded}}


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise invalid(key, value, allowed)


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


POSTHOC = ("ts", "vs", "ms_odir", "dirichlet", "ets", "hist", "isotonic")  # metrics.posthoc's names
SCORES = ("msp", "max_logit", "entropy", "margin", "maxlogit_pnorm", "maxlogit_pnorm_centred")  # metrics.scores'
HUMAN_LABELS = ("aggre", "worse", "random1", "random2", "random3")  # data.label_noise.labels: CIFAR-10N's sets
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SIZE_HELP = "a count (a whole number >= 1) or a fraction in (0, 1) of the images there"


def _split_size(x: Any) -> bool:
    """A count (a whole number >= 1) or a fraction strictly between 0 and 1."""
    return _finite(x) and (0 < x < 1 or (x >= 1 and float(x).is_integer()))


def _shown(x: Any) -> Any:
    """A whole float as the int it stands for (data.val_size=5000, not 5000.0) in messages."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def _unknown_fields(obj: Any, prefix: str = "") -> list[tuple[str, Any, list[str]]]:
    """(key, value, known names) for attributes no dataclass field declares. OmegaConf.to_object
    keeps keys added with `+key=value`, so `+loss.epsilonn=0.1` or `+loss._target_=...` would
    otherwise be accepted and silently ignored."""
    if not is_dataclass(obj):
        return []
    known = [f.name for f in fields(obj)]
    out = [(prefix + k, v, known) for k, v in vars(obj).items() if k not in known]
    for name in known:
        out += _unknown_fields(getattr(obj, name), f"{prefix}{name}.")
    return out


def validate(cfg: Config) -> None:
    """Range checks that need no data, section by section; the registries check their names
    (run.check_config) and data-dependent checks live where the data is."""
    for key, value, known in _unknown_fields(cfg)[:1]:
        raise invalid(key, value, f"not a field of the schema; known here: {', '.join(known)}")
    _validate_loss(cfg.loss)
    _check(cfg.model.init_from not in (None, "") or not cfg.model.init_select, "model.init_select",
           dict(cfg.model.init_select), "is only read with model.init_from (a sweep folder to select from)")
    _validate_data(cfg.data)
    _validate_optim_sched(cfg.optim, cfg.sched, cfg.trainer.epochs)
    _validate_trainer(cfg.trainer)
    _validate_metrics_eval(cfg)
    _validate_search(cfg)


# Negative label smoothing (Wei et al., ICML 2022): the authors' smooth rates run from 0.8 down to
# -8.0 (their code's candidates 0.8, 0.6, ..., -1.0, -2.0, -4.0, -6.0, -8.0); below that is unstudied.
NEGATIVE_EPSILON_MIN = -8.0


EPSILON_HELP = "a number in [0, 1) or a list of K numbers in [0, 1), one per class"


def epsilon_values(eps: Any) -> list[float] | None:
    """loss.epsilon as a list of its numbers (one for a scalar, K for a class-wise list); None if it is neither."""
    if _finite(eps) and not isinstance(eps, bool):
        return [eps]
    if isinstance(eps, (list, tuple)) and eps and all(_finite(v) and not isinstance(v, bool) for v in eps):
        return list(eps)
    return None


def _validate_epsilon(lo: LossConfig) -> None:
    eps, values = lo.epsilon, epsilon_values(lo.epsilon)
    shown = list(eps) if isinstance(eps, (list, tuple)) else eps
    _check(values is not None, "loss.epsilon", shown, EPSILON_HELP)
    if lo.allow_negative:
        _check(lo.name == "label_smoothing", "loss.allow_negative", lo.allow_negative,
               f"only with loss=label_smoothing (loss={lo.name} has no negative smoothing)")
        _check(all(NEGATIVE_EPSILON_MIN <= v < 1 for v in values), "loss.epsilon", shown,
               "must be in [-8, 1) with loss.allow_negative=true (Wei et al. 2022 studied smooth rates -8 to 0.8)")
    elif isinstance(eps, (list, tuple)):
        _check(all(0 <= v < 1 for v in values), "loss.epsilon", shown, "every class's ε must be in [0, 1) (below 0: "
               "loss.allow_negative=true)")
    else:  # ε = 1 is the human distribution itself (Peterson et al. 2019); with a fixed prior it would learn nothing.
        _check(0 <= eps < 1 or (eps == 1 and lo.prior == "human"),
               "loss.epsilon", eps, "must be in [0, 1] with loss.prior=human" if lo.prior == "human" else
               "must be in [0, 1)" + (" (below 0 is negative label smoothing: add loss.allow_negative=true)"
                                      if NEGATIVE_EPSILON_MIN <= eps < 0 else ""))
    if lo.epsilon_schedule is not None:  # the name is checked with the loss's (losses.check_loss)
        _check(values == [0], "loss.epsilon", shown, f"must be 0 with loss.epsilon_schedule={lo.epsilon_schedule}, "
               f"which sets each class's ε (loss.epsilon_head, loss.epsilon_tail)")
        for key, v in (("loss.epsilon_head", lo.epsilon_head), ("loss.epsilon_tail", lo.epsilon_tail)):
            _check(_finite(v) and 0 <= v < 1, key, v, "must be in [0, 1)")


def _validate_loss(lo: LossConfig) -> None:
    _validate_epsilon(lo)
    _check(_finite(lo.gamma) and lo.gamma >= 0, "loss.gamma", lo.gamma, "must be >= 0")
    _check(_finite(lo.beta) and lo.beta >= 0, "loss.beta", lo.beta, "must be >= 0")
    _check(_finite(lo.margin) and lo.margin >= 0, "loss.margin", lo.margin, "must be >= 0")
    _check(_finite(lo.margin_weight) and lo.margin_weight >= 0, "loss.margin_weight", lo.margin_weight, "must be >= 0")
    _check(_finite(lo.tau) and lo.tau > 0, "loss.tau", lo.tau, "must be > 0")
    _check(_finite(lo.kd_alpha) and 0 <= lo.kd_alpha <= 1, "loss.kd_alpha", lo.kd_alpha, "must be in [0, 1]")
    _check(_finite(lo.kd_temperature) and lo.kd_temperature > 0, "loss.kd_temperature", lo.kd_temperature,
           "must be > 0")
    _check(lo.name == "distill" or lo.teacher in (None, ""), "loss.teacher", lo.teacher,
           f"is only read with loss=distill (loss={lo.name} would ignore it)")
    _check(lo.name == "distill" or not lo.teacher_select, "loss.teacher_select", dict(lo.teacher_select),
           f"is only read with loss=distill (loss={lo.name} would ignore it)")


def _validate_data(d: DataConfig) -> None:
    _check(_split_size(d.val_size) or d.val_size == 0, "data.val_size", _shown(d.val_size), f"must be >= 0: 0 (no "
           f"validation split), {SIZE_HELP}")
    _check(_split_size(d.test_size), "data.test_size", _shown(d.test_size), f"must be > 0: {SIZE_HELP}")
    _check(d.train_size is None or _split_size(d.train_size), "data.train_size", _shown(d.train_size),
           f"must be null (all) or > 0: {SIZE_HELP}")
    if d.classes is not None:
        _check(len(d.classes) >= 2, "data.classes", d.classes, "must name at least 2 labels")
        _check(len(set(d.classes)) == len(d.classes), "data.classes", d.classes, "labels must not repeat")
    _check(d.train_on in ("train", "test"), "data.train_on", d.train_on, "train or test")
    _check(d.train_on == "train" or d.name != "digits", "data.train_on", d.train_on,
           "test needs an official test split; digits has none")
    _check(d.name == "imagefolder" or d.original_index in (None, ""), "data.original_index", d.original_index,
           f"is only read with data=imagefolder (data={d.name} is in its original order)")
    _validate_noise(d.label_noise)
    rho = d.imbalance.ratio
    _check(rho is None or (_finite(rho) and rho >= 1), "data.imbalance.ratio", rho,
           "must be null (no long tail) or a finite number >= 1 (n_max / n_min, e.g. 10 or 100)")


def _validate_noise(noise: LabelNoiseConfig) -> None:
    _check(_finite(noise.rate) and 0 <= noise.rate < 1, "data.label_noise.rate", noise.rate, "must be in [0, 1)")
    _check(noise.kind in ("symmetric", "asymmetric", "human", "matched"), "data.label_noise.kind", noise.kind,
           "symmetric, asymmetric, human or matched")
    human = noise.kind in ("human", "matched")
    _check(not human or noise.rate == 0, "data.label_noise.rate", noise.rate,
           f"does not apply with kind={noise.kind}: the file's labels set the rate; leave it 0")
    _check(human or noise.file in (None, ""), "data.label_noise.file", noise.file,
           f"is only read with kind=human or matched (kind={noise.kind} would ignore it)")
    _check(not human or noise.file not in (None, ""), "data.label_noise.file", noise.file,
           f"must be set with kind={noise.kind}: the path of CIFAR-10N's CIFAR-10_human.pt")
    _check(not human or noise.labels in HUMAN_LABELS, "data.label_noise.labels", noise.labels,
           f"one of {', '.join(HUMAN_LABELS)} with kind={noise.kind}")
    _check(human or noise.labels is None, "data.label_noise.labels", noise.labels,
           f"is only read with kind=human or matched (kind={noise.kind} would ignore it)")
    _check(noise.val in ("clean", "noisy"), "data.label_noise.val", noise.val, "clean or noisy")
    _check(human or noise.val == "clean", "data.label_noise.val", noise.val,
           f"noisy is only for kind=human or matched (kind={noise.kind} leaves val clean)")


def _validate_optim_sched(o: OptimConfig, s: SchedConfig, epochs: int) -> None:
    _check(o.name == "sgd", "optim.name", o.name, "sgd")
    _check(_finite(o.lr) and o.lr > 0, "optim.lr", o.lr, "must be > 0")
    _check(_finite(o.momentum) and 0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    _check(not o.nesterov or o.momentum > 0, "optim.nesterov", o.nesterov, "needs optim.momentum > 0")
    _check(_finite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be >= 0")
    _check(epochs >= 1, "trainer.epochs", epochs, "must be >= 1")
    _check(s.name in ("cosine", "step", "constant"), "sched.name", s.name, "cosine, step or constant")
    _check(_finite(s.warmup_epochs) and 0 <= s.warmup_epochs < epochs, "sched.warmup_epochs", s.warmup_epochs,
           f"must be in [0, trainer.epochs={epochs})")
    _check(_finite(s.gamma) and 0 < s.gamma <= 1, "sched.gamma", s.gamma, "must be in (0, 1]")
    _check(all(0 < m for m in s.milestones), "sched.milestones", list(s.milestones), "epochs must be > 0")


def _validate_trainer(t: TrainerConfig) -> None:
    _check(t.batch_size >= 1, "trainer.batch_size", t.batch_size, "must be >= 1")
    _check(t.eval_every >= 1, "trainer.eval_every", t.eval_every, "must be >= 1")
    _check(t.eval_batch_size >= 1, "trainer.eval_batch_size", t.eval_batch_size, "must be >= 1")
    _check(t.device == "auto" or t.device == "cpu" or t.device.split(":")[0] == "cuda", "trainer.device",
           t.device, "auto, cpu, cuda or cuda:N")
    _check(t.precision in ("auto", "bf16", "fp16", "fp32"), "trainer.precision", t.precision,
           "auto, bf16, fp16 or fp32")
    _check(t.compile in COMPILE_MODES, "trainer.compile", t.compile,
           "false, true, default, reduce-overhead, max-autotune or max-autotune-no-cudagraphs")
    _check(t.num_threads >= 0, "trainer.num_threads", t.num_threads, "must be >= 0 (0 = automatic)")


def _validate_metrics_eval(cfg: Config) -> None:
    d = cfg.data
    _check(cfg.metrics.n_bins >= 1, "metrics.n_bins", cfg.metrics.n_bins, "must be >= 1")
    _check(cfg.metrics.top_k is None or cfg.metrics.top_k >= 1, "metrics.top_k", cfg.metrics.top_k,
           "must be >= 1 or null")
    pc = list(cfg.metrics.penultimate_classes)
    _check(len(pc) == 3 and len(set(pc)) == 3 and min(pc) >= 0, "metrics.penultimate_classes", pc,
           "three different labels >= 0, e.g. [0,1,2]")
    _check(cfg.eval.shift_size is None or _split_size(cfg.eval.shift_size), "eval.shift_size",
           _shown(cfg.eval.shift_size), f"must be null (the whole test split) or > 0: {SIZE_HELP}")
    _check(cfg.eval.shift_size is None or bool(cfg.eval.corruptions), "eval.shift_size", _shown(cfg.eval.shift_size),
           "is only read with eval.corruptions (no corruption is asked for)")
    m = cfg.metrics
    for key, names, known in (("metrics.posthoc", list(m.posthoc), POSTHOC),
                              ("metrics.scores", list(m.scores), SCORES)):
        _check(set(names) <= set(known) and len(set(names)) == len(names), key, names,
               f"a list of different names out of {', '.join(known)}")
    if m.temperature_scaling and "ts" in m.posthoc:  # temperature_scaling=false: the older way to leave ts out
        _check(d.val_size > 0, "data.val_size", _shown(d.val_size), "must be > 0 when metrics.temperature_scaling=true")
    fitted = [x for x in m.posthoc if x != "ts"] + [x for x in m.scores if x.startswith("maxlogit_pnorm")]
    _check(d.val_size > 0 or not fitted, "data.val_size", _shown(d.val_size),
           f"must be > 0 for {fitted[0] if fitted else ''} (metrics.posthoc, metrics.scores: fitted on val)")


def _validate_search(cfg: Config) -> None:
    seeds = list(cfg.search.seeds)
    _check(len(set(seeds)) == len(seeds) and all(s >= 0 for s in seeds), "search.seeds", seeds,
           "seeds >= 0 that do not repeat, e.g. [0,1,2]")
    fixed = [k for k in ("init", "data") if getattr(cfg.seeds, k) is not None]
    _check(not seeds or not fixed, "search.seeds", seeds,
           f"would give every seed the same seeds.{fixed[0] if fixed else ''}: leave seeds.* unset")
