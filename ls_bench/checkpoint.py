"""last.pt: save after every epoch, load safely, resume the training state, and refuse to resume
(or skip) a folder that holds a run of another config."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from ls_bench.config import NOT_COMPUTED, with_defaults
from ls_bench.errors import ConfigError, first_line
from ls_bench.files import atomic_write, read_json

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """last.pt exists but cannot be loaded; the message names the file."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """weights_only=True: tensors and plain containers only; a pickled object is refused, not run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be loaded safely ({first_line(e)}); delete it to restart the "
                              f"run from scratch") from None


def restore_training_state(state: dict[str, Any], path: Path, targets: dict[str, Any]) -> tuple[int, list[dict]]:
    """Load a checkpoint's `state` into `targets` (name -> object with load_state_dict: model,
    optimizer, ...); returns (finished epochs, their history)."""
    try:  # a loadable file from another config (model, optimizer) or an older format
        for name, obj in targets.items():
            obj.load_state_dict(state[name])
        start_epoch, history = int(state["epoch"]), list(state["history"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this run's config ({type(e).__name__}: "
                              f"{first_line(e)}); delete it or use another run directory") from None
    log.info("resumed from %s at epoch %d", path, start_epoch)
    return start_epoch, history


def check_same_run(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to skip or resume a folder that holds a run of another config. Hydra rewrites
    .hydra/config.yaml at every launch, so without this check a changed ε (or an edited YAML
    default) would silently inherit the old final.json or continue the old last.pt."""
    before = read_json(run_dir / "run_info.json").get("config")
    if not isinstance(before, dict):
        return  # from a version of ls-bench that did not record its config: nothing to compare
    now = json.loads(json.dumps(config))  # the types a JSON round trip gives (tuples as lists)
    before = with_defaults(before)
    changed = [k for k in sorted(set(before) | set(now))
               if k not in NOT_COMPUTED and (k in before, before.get(k)) != (k in now, now.get(k))]
    if changed:
        shown = ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        raise ConfigError(f"{run_dir} holds a run of another config ({shown}{more}); rerun it with its own "
                          f"config, or choose another folder (hydra.run.dir / hydra.sweep.dir), or delete it")
