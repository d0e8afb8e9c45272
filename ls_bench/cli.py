"""The `ls-bench` command: Hydra composes the config, this module turns it into the typed
`Config`, validates it and hands it to `train.fit`. The only module that imports hydra."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from ls_bench.config import Config, ConfigError, validate

ConfigStore.instance().store(name="ls_bench_schema", node=Config)
# configs/ sits beside the package in the source tree (install with `pip install -e .`).
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


class UserError(CompactHydraException):
    """Hydra prints a CompactHydraException as its message alone: one line, no traceback."""


def to_config(cfg: DictConfig) -> Config:
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, Config)
    validate(config)
    return config


def _configure_threads() -> None:
    """Split the cores between jobs that the joblib launcher runs side by side."""
    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs") if "n_jobs" in launcher else None
    if n_jobs and n_jobs > 0:
        os.environ.setdefault("LS_BENCH_JOBS", str(n_jobs))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _run(cfg: DictConfig) -> float | None:
    from ls_bench.train import CheckpointError, Interrupted, RunFailed, fit  # torch loads after parsing

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        config = to_config(cfg)
        _configure_threads()
        final = fit(config, run_dir)
    except (ConfigError, CheckpointError) as e:
        _fail(f"ls-bench: error: {e}", hc.mode, run_dir)
    except Interrupted as e:
        _fail(f"ls-bench: interrupted ({run_dir}): {e}; rerun the same command to resume", hc.mode)
    except RunFailed as e:
        _fail(f"ls-bench: run failed ({run_dir}): {e}; see failed.json", hc.mode)
    return final.get("val/nll")  # the value a Hydra sweeper would minimise


def _fail(message: str, mode: RunMode | None, failed_dir: Path | None = None) -> NoReturn:
    """One line on stderr. A single run exits here (status 2) so Hydra adds nothing around the
    line; a sweep job records failed.json (for the report) and raises, so the launcher notes the
    failure, runs the remaining jobs and exits non-zero at the end."""
    if mode != RunMode.MULTIRUN:
        print(message, file=sys.stderr)
        sys.exit(2)
    if failed_dir is not None and failed_dir.is_dir() and not (failed_dir / "failed.json").exists():
        from ls_bench.logs import write_json

        write_json(failed_dir / "failed.json", {"reason": message, "type": "ConfigError"})
    raise UserError(message)


def main() -> None:
    if "--debug" in sys.argv:  # full Python tracebacks for every error
        sys.argv.remove("--debug")
        os.environ["HYDRA_FULL_ERROR"] = "1"
    _run()


if __name__ == "__main__":
    main()
