"""Grouping a sweep's runs into settings, and the statistics over their seeds.

Runs are grouped by their whole resolved config except the seeds (`seed`, `seeds.*`) and the keys
in NOT_COMPUTED, so a group is "one setting, several seeds". Per group and metric: mean, sample std
and the 95% confidence half-width t(0.975, n-1)·s/√n (Student t). Every group is also compared with
its baseline (`--baseline KEY=VALUE`, default `loss.epsilon=0`; repeated, a baseline of several
keys): the run that differs from it only in KEY and has KEY = VALUE, on the same seed (so the same
initial weights and batches), is subtracted seed by seed, and the mean ± 95% CI of those
differences is reported; pairing removes the seed-to-seed variance that both runs share.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import yaml

from ls_bench.config import NOT_COMPUTED
from ls_bench.report.runs import RunResult

EPSILON_KEY = "loss.epsilon"  # the default baseline key, and the x axis of the plots
LEVEL = 0.95  # confidence level of every interval in the report


def is_seed_key(key: str) -> bool:
    return key == "seed" or key.startswith("seeds.")


def canonical(v: Any) -> str:
    """A hashable spelling of a config value in which 0 and 0.0 are equal."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(float(v))
    return json.dumps(v, sort_keys=True)


def value_label(v: Any) -> str:
    """A config value as the tables and plots show it (floats in %g: 0.1, 1e-05)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass
class Stats:
    n: int
    mean: float | None
    std: float | None  # sample standard deviation (n - 1); None for n < 2
    ci: float | None  # half-width of the 95% CI of the mean; None for n < 2


def summarize(values: Sequence[float]) -> Stats:
    n = len(values)
    if n == 0:
        return Stats(0, None, None, None)
    mean = statistics.fmean(values)
    if n == 1:
        return Stats(1, mean, None, None)
    std = statistics.stdev(values)
    from scipy.stats import t as student_t

    return Stats(n, mean, std, float(student_t.ppf(0.5 + LEVEL / 2, n - 1)) * std / math.sqrt(n))


@dataclass(frozen=True)
class Baseline:
    """What the paired differences are taken against: the run with `key` = `value` (and, for a
    baseline that differs in more than one key, each of `also`'s keys = its value)."""
    key: str = EPSILON_KEY
    value: Any = 0
    also: tuple[tuple[str, Any], ...] = ()

    @property
    def pairs(self) -> tuple[tuple[str, Any], ...]:
        return ((self.key, self.value), *self.also)

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.pairs]

    @property
    def label(self) -> str:
        if not self.also and (self.key, canonical(self.value)) == (EPSILON_KEY, canonical(0)):
            return "ε = 0"
        return ", ".join(f"{k}={value_label(v)}" for k, v in self.pairs)

    def matches(self, config: dict[str, Any]) -> bool:
        return has_all(config, self.pairs)


def has_all(config: dict[str, Any], pairs: Iterable[tuple[str, Any]]) -> bool:
    """Whether a run's config has every (key, value) of `pairs`, 0 and 0.0 alike. A key the run does
    not have (an unset `+` key such as model.init_select.loss.epsilon) is null; keys added to the
    schema since an older run are at their defaults already (runs.read_run)."""
    return all(canonical(config.get(k)) == canonical(v) for k, v in pairs)


def parse_baseline(text: str | Sequence[str], runs: Sequence[RunResult]) -> Baseline:
    """`KEY=VALUE` (VALUE in YAML: 0, 0.1, none, [1,2]), or several of them (each its own
    --baseline) for a baseline that differs in several keys; a config group may be named for its
    `.name` key (`mix=none` is `mix.name=none`). A KEY no run has is an error naming the keys that
    vary; a KEY given twice is an error."""
    pairs = parse_pairs("--baseline", [text] if isinstance(text, str) else text, runs)
    (key, value), *also = pairs.items()
    return Baseline(key, value, tuple(also))


def parse_pairs(option: str, items: Sequence[str], runs: Sequence[RunResult]) -> dict[str, Any]:
    """`KEY=VALUE` items of a command-line option (VALUE in YAML; a config group may be named for its
    `.name` key) as {key: value}; a KEY no run has, or one given twice, is a one-line error."""
    known = {k for r in runs for k in r.config}
    pairs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected KEY=VALUE, e.g. loss.epsilon=0 or loss=label_smoothing")
        if key not in known and f"{key}.name" in known:
            key = f"{key}.name"
        if key not in known:
            raise ValueError(f"{option}: {key!r} is not a config key of these runs; keys that vary: "
                             f"{', '.join(varying_keys(runs)) or 'none'}")
        if key in pairs:
            raise ValueError(f"{option}: {key!r} is given twice")
        pairs[key] = yaml.safe_load(value)
    return pairs


def only(items: Sequence[str], runs: Sequence[RunResult]) -> list[RunResult]:
    """The runs whose config has every `KEY=VALUE` of `items` (--only: a report of part of a folder,
    e.g. the seed a hyperparameter is chosen on); none left is an error."""
    pairs = parse_pairs("--only", items, runs)
    kept = [r for r in runs if has_all(r.config, pairs.items())]
    if not kept:
        raise ValueError(f"--only {' '.join(items)}: none of the {len(runs)} runs has "
                         f"{', '.join(f'{k}={v}' for k, v in pairs.items())}")
    return kept


@dataclass
class Group:
    labels: dict[str, Any]  # the varying config keys and their values in this group
    runs: list[RunResult]  # all of its runs, whatever their status
    stats: dict[str, Stats] = field(default_factory=dict)
    diffs: dict[str, Stats] = field(default_factory=dict)  # paired difference to the baseline, same seed

    @property
    def done(self) -> list[RunResult]:
        return [r for r in self.runs if r.status == "done"]


def setting_key(config: dict[str, Any], drop: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    """What a run computes: its config without the ignored keys (and without `drop`)."""
    skip = NOT_COMPUTED | set(drop)
    return tuple(sorted((k, canonical(v)) for k, v in config.items() if k not in skip))


def varying_keys(runs: Sequence[RunResult], always: Sequence[str] = (EPSILON_KEY,)) -> list[str]:
    """Config keys (not seeds, not ignored) that take more than one value, then `always`."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r.config if k not in keys]
    out = [k for k in keys if k not in NOT_COMPUTED and not is_seed_key(k)
           and len({canonical(r.config.get(k)) for r in runs}) > 1]
    return [k for k in out if k not in always] + list(dict.fromkeys(always))


def sort_key(values: Iterable[Any]) -> tuple:
    return tuple((0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))
                 for v in values)


def baseline_partners(runs: Sequence[RunResult], baseline: Baseline) -> Callable[[RunResult], RunResult | None]:
    """run -> its baseline run: the finished run of the same setting and seeds with each KEY = VALUE."""
    base = {setting_key(r.config, baseline.keys): r for r in runs if r.status == "done" and baseline.matches(r.config)}
    return lambda r: base.get(setting_key(r.config, baseline.keys))


def build_groups(runs: Sequence[RunResult], metrics: Sequence[str],
                 baseline: Baseline = Baseline()) -> tuple[list[Group], list[str]]:
    keys = varying_keys(runs, always=(*baseline.keys, EPSILON_KEY))
    seeds = {k for r in runs for k in r.config if is_seed_key(k)}
    by_setting: dict[tuple, Group] = {}
    for r in runs:
        g = by_setting.setdefault(setting_key(r.config, seeds), Group({k: r.config.get(k) for k in keys}, []))
        g.runs.append(r)
    partner = baseline_partners(runs, baseline)
    for g in by_setting.values():
        for m in metrics:
            g.stats[m] = summarize([v for r in g.done if (v := r.value(m)) is not None])
            if baseline.matches(g.labels):
                continue
            pairs = [(r.value(m), b.value(m)) for r in g.done if (b := partner(r))]
            g.diffs[m] = summarize([a - b for a, b in pairs if a is not None and b is not None])
    groups = sorted(by_setting.values(), key=lambda g: sort_key(g.labels.values()))
    return groups, keys
