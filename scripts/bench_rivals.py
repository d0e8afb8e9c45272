#!/usr/bin/env python
"""What LS's rivals and its later variants add to a training step, measured side by side in one process.

    python scripts/bench_rivals.py              # ~8-15 min on 2 CPU cores
    python scripts/bench_rivals.py --rounds 3 --steps 5 --model small_cnn

For each variant, ls-bench's own setup() builds the run (the real Criterion, mixer and teacher),
then train.train_one_epoch runs `--steps` steps of train_batches on CIFAR-10 (the shared JPEGs
when present, else digits), batch 128, augmentation on, precision auto. The variants take turns,
one window of steps each per round (`--rounds`), so a change in the machine's load hits all of
them; the first round warms up and is dropped. Printed: the median ms per step of each variant
and its ratio to plain label smoothing (ε = 0.1). The distillation teacher is a ResNet-20 run made
here first (one short epoch: its accuracy does not matter for timing); with augmentation it runs
one inference forward per step, without augmentation (`distill cached`) its training-split logits
are computed once at set-up. Issue 24's label-smoothing variants run beside them: negative LS
(ε = -0.2), FLSD-53, label relaxation, online LS (its per-step bookkeeping of S included) and
class-wise ε (a list; MiSLAS's schedule), all augmented, each against LS ε = 0.1.

    python scripts/bench_rivals.py --ls-only    # LS and its variants only (no teacher, no rivals)
    python scripts/bench_rivals.py --loss-only  # the loss alone: what a variant adds to a step, in µs

--loss-only times what differs between the variants and nothing else: the criterion's targets, its
loss and the backward pass to the logits (batch 128, K = 10, fp32 logits, one thread), 50 calls
per window, the variants taking turns over 31 rounds, medians. On a
machine shared with other jobs the whole-step timings swing by tens of percent; these do not
depend on the model.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "cifar10-jpeg"


def variants(teacher: Path) -> dict[str, list[str]]:
    return {
        "label smoothing 0.1": ["loss.epsilon=0.1", "data.augment=true"],
        "mixup": ["loss.epsilon=0.1", "mix=mixup", "data.augment=true"],
        "cutmix (prob 1)": ["loss.epsilon=0.1", "mix=cutmix", "mix.prob=1", "data.augment=true"],
        "margin (MbLS)": ["loss=margin", "data.augment=true"],
        "logit_norm": ["loss=logit_norm", "data.augment=true"],
        "distill (teacher per step)": ["loss=distill", f"loss.teacher={teacher}", "data.augment=true"],
        "distill cached, no augment": ["loss=distill", f"loss.teacher={teacher}", "data.augment=false"],
        "label smoothing, no augment": ["loss.epsilon=0.1", "data.augment=false"],
        **LS_VARIANTS,
    }


CLASS_WISE = "[0.05,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.2]"
LS_VARIANTS = {  # issue 24: the later forms of label smoothing
    "negative LS (eps -0.2)": ["loss.epsilon=-0.2", "loss.allow_negative=true", "data.augment=true"],
    "FLSD-53": ["loss=focal", "loss.gamma_schedule=flsd53", "data.augment=true"],
    "label relaxation": ["loss=label_relaxation", "data.augment=true"],
    "online LS": ["loss=online_ls", "data.augment=true"],
    "class-wise eps (list)": [f"loss.epsilon={CLASS_WISE}", "data.augment=true"],
    "class-wise eps (mislas)": ["loss.epsilon_schedule=mislas", "data.augment=true"],
}


def loss_times(overrides: dict[str, list[str]], rounds: int = 31, calls: int = 50) -> dict[str, list[float]]:
    """µs per call of targets + loss + backward to the logits, per variant, the variants taking turns;
    one thread (the tensors are tiny)."""
    import torch

    torch.set_num_threads(1)
    from ls_bench.cli import compose_config
    from ls_bench.losses import make_criterion

    counts = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])  # CIFAR-10-LT, ρ = 100
    crits = {name: make_criterion(compose_config(o).loss, 10, counts) for name, o in overrides.items()}
    g = torch.Generator().manual_seed(0)
    z0, y = torch.randn(128, 10, generator=g) * 3, torch.randint(0, 10, (128,), generator=g)
    times: dict[str, list[float]] = {name: [] for name in crits}
    for r in range(rounds):
        for name, c in crits.items():
            t = time.perf_counter()
            for _ in range(calls):
                z = z0.clone().requires_grad_(True)
                c.loss(z, c.targets(z, y, g)).backward()
            if r:
                times[name].append((time.perf_counter() - t) / calls * 1e6)
    return times


def step_times(runs: dict, bs: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """ms per training step of each run, the runs taking turns one window each per round (first dropped)."""
    import torch

    from ls_bench.data.loader import train_batches
    from ls_bench.train import train_one_epoch

    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            run.steps_per_epoch = steps
            batches = train_batches(run.ds.train, bs, r, run.ds.augment, run.norm)
            mix_g = torch.Generator().manual_seed(r)
            t = time.perf_counter()
            train_one_epoch(run, batches, run.loss_generator(r), name, mix_g)
            if r:
                times[name].append((time.perf_counter() - t) / steps * 1000)
    return times


def print_times(times: dict[str, list[float]], unit: str = "ms/step") -> None:
    stat = statistics.median
    base = stat(times["label smoothing 0.1"])
    base_plain = stat(times.get("label smoothing, no augment", [base]))
    print(f"\n{'variant':30s} {unit:>8s} {'vs LS':>8s}")
    for name, ts in times.items():
        ref = base_plain if "no augment" in name else base
        print(f"{name:30s} {stat(ts):8.1f} {stat(ts) / ref:8.3f}"
              f"{'   (vs LS, no augment)' if 'no augment' in name and name != 'label smoothing, no augment' else ''}")
    sys.stdout.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--steps", type=int, default=8, help="training steps per window")
    p.add_argument("--rounds", type=int, default=5, help="windows per variant (the first is dropped)")
    p.add_argument("--root", default=str(SHARED))
    p.add_argument("--ls-only", action="store_true", help="LS and its issue-24 variants only (no teacher, no rivals)")
    p.add_argument("--loss-only", action="store_true", help="time the loss alone (targets, loss, backward), in µs")
    args = p.parse_args()
    if args.loss_only:
        from ls_bench.machine import cpu_features

        print(f"CPU: {cpu_features()}; the loss alone, batch 128, K = 10", flush=True)
        times = loss_times({"label smoothing 0.1": ["loss.epsilon=0.1"], **LS_VARIANTS})
        print_times(times, unit="µs/call")
        return

    import torch

    from ls_bench.cli import compose_config
    from ls_bench.machine import cpu_features
    from ls_bench.run import setup
    from ls_bench.train import fit

    bs = 128
    n = bs * args.steps
    data = ["data=imagefolder", f"data.root={args.root}", f"data.train_size={n}", "data.val_size=500"] \
        if Path(args.root).is_dir() else ["data.val_size=100"]
    common = [*data, f"model={args.model}", "trainer.progress=false", f"trainer.batch_size={bs}",
              "metrics.figures=false", "eval.bootstrap=0"]
    tmp = Path(tempfile.mkdtemp(prefix="bench_rivals_"))
    print(f"CPU: {cpu_features()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.model}, batch {bs}, {args.steps} steps x {args.rounds} rounds", flush=True)
    teacher = tmp / "teacher"
    t0 = time.perf_counter()
    if not args.ls_only:
        fit(compose_config([*data, "model=resnet20", "trainer.progress=false", "trainer.epochs=1",
                            "metrics.figures=false", "eval.bootstrap=0", f"trainer.batch_size={bs}"]), teacher)
        print(f"teacher (resnet20, 1 epoch on {n} images): {time.perf_counter() - t0:.0f} s", flush=True)
    chosen = {"label smoothing 0.1": variants(teacher)["label smoothing 0.1"], **LS_VARIANTS} if args.ls_only \
        else variants(teacher)
    runs = {name: setup(compose_config([*common, *o])) for name, o in chosen.items()}
    print_times(step_times(runs, bs, args.steps, args.rounds))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
