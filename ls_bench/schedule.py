"""The learning rate as a pure function of the optimizer step (the schedule group, configs/sched)."""

from __future__ import annotations

import math

from ls_bench.config import SchedConfig


def lr_factor(step: int, steps_per_epoch: int, epochs: int, sched: SchedConfig) -> float:
    """The learning-rate multiplier at optimizer step `step`: a pure function of the step.

    Linear warm-up over `warmup_epochs`, then cosine to 0, or ×gamma at each milestone epoch.
    """
    total = steps_per_epoch * epochs
    warm = round(sched.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    if sched.name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    if sched.name == "step":
        epoch = step / steps_per_epoch
        return sched.gamma ** sum(epoch >= m for m in sched.milestones)
    return 1.0
