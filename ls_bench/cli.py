"""The `ls-bench` command: Hydra composes the config, this module turns it into the typed
`Config`, validates it and hands it to `train.fit`. The only module that imports hydra."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ls_bench.config import NOT_COMPUTED, Config, validate
from ls_bench.errors import ConfigError, RunFailed, first_line, invalid
from ls_bench.signals import ctrl_c_raises

ConfigStore.instance().store(name="ls_bench_schema", node=Config)
# Optuna imports alembic (its database schemas), which logs one INFO line per plugin it sets up
# ("setup plugin alembic.autogenerate.tables", ...) at the start of every study.
logging.getLogger("alembic").setLevel(logging.WARNING)
# Job folder names leave out the keys that do not change what a run computes (config.NOT_COMPUTED,
# one list with check_same_run and the report's grouping) and the given locations (config.yaml):
# a sweep relaunched with another thread count or data folder resumes its own runs.
OmegaConf.register_new_resolver("ls_bench_exclude_keys", lambda *extra: [*extra, *sorted(NOT_COMPUTED)],
                                replace=True)


def config_dir() -> str:
    """The configs: configs/ of the source tree when this package runs from a checkout (an
    editable install, so edits to the YAML take effect at once), else the copy the wheel ships as
    ls_bench/_configs (pyproject.toml maps configs/ there)."""
    here = Path(__file__).resolve().parent
    source = here.parent / "configs"
    if (source / "config.yaml").is_file() and (here.parent / "pyproject.toml").is_file():
        return str(source)
    return str(here / "_configs")


CONFIG_DIR = config_dir()


class UserError(CompactHydraException):
    """Hydra prints a CompactHydraException as its message alone: one line, no traceback."""


def to_config(cfg: DictConfig) -> Config:
    """The typed Config with its ranges checked (config.validate); the checks that need the
    registries run in run.setup, before the data loads."""
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, Config)
    validate(config)
    return config


def compose_config(overrides: Sequence[str] = ()) -> Config:
    """The typed Config exactly as `ls-bench <overrides>` builds it, with every check that needs no
    data (run.check_config) done, without running anything (for tests, benchmarks and scripts)."""
    from hydra import compose, initialize_config_dir

    from ls_bench.run import check_config  # torch loads after parsing

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        config = to_config(compose(config_name="config", overrides=list(overrides)))
    check_config(config)
    return config


def _configure_threads() -> None:
    """Split the cores between jobs that the joblib launcher runs side by side.

    launcher.n_jobs follows joblib: n > 0 jobs, -1 (the plugin's default) = one per core, -2 = all
    cores but one, ...; joblib.effective_n_jobs resolves it exactly as the launcher does.
    """
    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs") if "n_jobs" in launcher else None
    if n_jobs:
        from joblib import effective_n_jobs  # installed with the joblib launcher, the only one with n_jobs

        os.environ.setdefault("LS_BENCH_JOBS", str(effective_n_jobs(n_jobs)))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _run(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    lock = run_dir / ".lock"
    try:  # one writer per run directory: a second `ls-bench` into the same folder is refused
        lock_fd = acquire_lock(lock)
    except LockHeld as e:
        _fail(f"ls-bench: error: {run_dir} is in use: {e}", hc.mode)
    try:
        with counting_trial():
            return _job(cfg, run_dir)
    finally:
        release_lock(lock, lock_fd)


def _job(cfg: DictConfig, run_dir: Path) -> float | None:
    """The job's run (with search.seeds, its runs) and the value a sweeper that optimises gets
    back: search.optimize, default val/nll (the mean over search.seeds). Without a finite value the
    trial fails (Optuna marks it FAIL); a sweeper that ignores values (the basic one) gets None."""
    from ls_bench.search import objective, trial_runs  # torch loads after parsing

    mode = HydraConfig.get().mode
    config = _job_config(cfg, run_dir)
    finals = [_fit(c, d, mode) for c, d in trial_runs(config, run_dir)]
    try:
        return objective(config, finals, run_dir)
    except RunFailed as e:
        if not _optimizing():
            return None
        _fail(f"ls-bench: trial failed ({run_dir}): {e}", mode)


def _optimizing() -> bool:
    """The sweeper reads the job's return value (Optuna), unlike Hydra's basic sweeper."""
    hc = HydraConfig.get()
    return hc.mode == RunMode.MULTIRUN and not str(hc.sweeper.get("_target_", "")).endswith(".BasicSweeper")


_TRIALS_WITH_A_VALUE: list[bool] = []  # this process's trials of a study (the basic launcher runs them all here)


@contextlib.contextmanager
def counting_trial() -> Iterator[None]:
    """A study whose every trial failed ends in one line: Optuna would raise "No trials are
    completed yet" with a traceback once the last trial is told. A failed trial (UserError) is
    otherwise passed on: the sweeper marks it FAIL and goes on."""
    if not _optimizing():
        yield
        return
    hc = HydraConfig.get()
    try:
        yield
        _TRIALS_WITH_A_VALUE.append(True)
    except UserError as e:
        _TRIALS_WITH_A_VALUE.append(False)
        n_trials, seen = hc.sweeper.get("n_trials"), _TRIALS_WITH_A_VALUE
        if len(seen) == n_trials and hc.job.get("num") == n_trials - 1 and not any(seen):
            _exit(f"ls-bench: error: all {n_trials} trials of the study failed, so it has no best trial (the report "
                  f"below lists why); the last: {e}")
        raise


def _job_config(cfg: DictConfig, run_dir: Path) -> Config:
    """The typed, checked Config of this job, on its device; a ConfigError ends the job here."""
    from ls_bench.machine import device_for_job
    from ls_bench.search import check_objective

    hc = HydraConfig.get()
    try:
        config = to_config(cfg)
        _configure_threads()
        config.trainer.device = device_for_job(config.trainer.device, hc.job.get("num"))
    except ConfigError as e:
        _fail(f"ls-bench: error: {e}", hc.mode, run_dir, type(e).__name__)
    if _optimizing() or config.search.seeds:
        try:
            check_objective(config)
        except ConfigError as e:  # every trial would fail alike: the study ends at its first, with nothing to report
            _SWEEPS_TO_REPORT.clear()
            _exit(f"ls-bench: error: {e}")
    return config


def _fit(config: Config, run_dir: Path, mode: RunMode | None) -> dict[str, Any]:
    """train.fit into run_dir, its failures as one line (and failed.json in a sweep)."""
    from ls_bench.checkpoint import CheckpointError  # torch loads after parsing
    from ls_bench.machine import release_failed_run
    from ls_bench.signals import Interrupted
    from ls_bench.train import fit

    try:
        return fit(config, run_dir)
    except (ConfigError, CheckpointError) as e:
        _fail(f"ls-bench: error: {e}", mode, run_dir, type(e).__name__)
    except Interrupted as e:
        # Not a failure of this run, and the end of the sweep: SystemExit is not an Exception, so
        # Hydra's launcher does not record it and go on to the next job; the process exits.
        print(f"ls-bench: interrupted ({run_dir}): {e}; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    except RunFailed as e:
        release_failed_run(e)  # Hydra keeps the exception: its frames must not keep the model on the GPU
        _fail(f"ls-bench: run failed ({run_dir}): {e}; see failed.json", mode)


def _fail(message: str, mode: RunMode | None, failed_dir: Path | None = None, kind: str = "ConfigError") -> NoReturn:
    """One line on stderr. A single run exits here (status 2) so Hydra adds nothing around the
    line; a sweep job records failed.json (for the report) and raises, so the launcher notes the
    failure, runs the remaining jobs and exits non-zero at the end. `kind` is failed.json's "type":
    the exception's class (ConfigError, CheckpointError)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and sys.exc_info()[1] is not None:
        raise  # --debug: the exception being handled, with its full traceback
    if mode != RunMode.MULTIRUN:
        print(message, file=sys.stderr)
        sys.exit(2)
    if (failed_dir is not None and failed_dir.is_dir() and not (failed_dir / "failed.json").exists()
            and not (failed_dir / "final.json").exists()):  # never mark a finished run as failed
        from ls_bench.files import write_json

        write_json(failed_dir / "failed.json", {"reason": message, "type": kind})
    raise UserError(message)


# --- locks and output folders ------------------------------------------------------------------


class LockHeld(RuntimeError):
    """Another live process holds the lock file; the message names the file and its owner."""


def acquire_lock(path: Path) -> int:
    """Hold `path` exclusively (flock) and write our pid into it; returns the fd for release_lock.

    The kernel drops a flock when its holder exits in any way (even SIGKILL), so a lock file left
    behind by a dead process is taken over without guessing from pids, and a reused pid never
    blocks anyone. Linux/macOS; NFS clients get it through fcntl byte-range locks.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that is starting"
            os.close(fd)
            raise LockHeld(f"lock file {path} is held by {owner}") from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # the holder removed the file between our open and flock: try again
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


def release_lock(path: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        path.unlink()  # while still holding the lock, so nobody locks a file that is going away
    os.close(fd)


def _exit(message: str) -> NoReturn:
    """One line and status 2, from a Hydra callback (Hydra turns a callback's exceptions into warnings)."""
    print(message, file=sys.stderr)
    sys.exit(2)


def _output_dir(key: str, value: str) -> Path:
    """Create the output folder and prove it is writable before Hydra writes into it (Hydra's own
    mkdir would fail with a traceback). A write probe, since root ignores permission bits."""
    path = Path(value).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        _exit(f"ls-bench: error: {invalid(key, value, f'must be a folder that can be created and written ({e})')}")
    return path


def slurm_lost_jobs_in_one_line() -> None:
    """A Slurm job that ends without a result (scancel, a node failure, a kill for memory) makes
    submitit's Job.results raise UncompletedJobError carrying the job's last ~40 log lines, which
    Hydra prints with a traceback, and the launcher stops collecting the other jobs. Here that job
    returns a failed result instead: the other jobs are still waited for, and the sweep ends, like
    one with a failed job, non-zero with one line naming the Slurm job, its state and its log."""
    from hydra.core.utils import JobReturn, JobStatus
    from submitit.core import core, utils

    results = core.Job.results
    if getattr(results, "one_line", False):
        return

    def one_line(job: Any) -> list:
        try:
            return results(job)
        except utils.UncompletedJobError:
            error = UserError(f"ls-bench: error: Slurm job {job.job_id} ended without a result (state {job.state}); "
                              f"rerun the same command to resume it (its log: {job.paths.stderr})")
            return [JobReturn(overrides=[f"slurm_job={job.job_id}"], status=JobStatus.FAILED, _return_value=error)]

    one_line.one_line = True  # type: ignore[attr-defined]
    core.Job.results = one_line


class OutputGuard(Callback):
    """Registered in configs/config.yaml (hydra.callbacks). Runs in the main process before any
    job: checks the output folder, and makes a sweep folder single-writer: `<sweep dir>/.sweep.lock`
    is held by the sweep's main process until it exits, whatever the launcher (basic, joblib),
    so a second sweep into the same folder is refused before it writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _output_dir("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = _output_dir("hydra.sweep.dir", config.hydra.sweep.dir)
        lock = sweep_dir / ".sweep.lock"  # not `.lock`: a job without overrides runs in the sweep folder itself
        try:
            fd = acquire_lock(lock)
        except LockHeld as e:
            _exit(f"ls-bench: error: another sweep is writing into {sweep_dir}: {e}")
        atexit.register(release_lock, lock, fd)
        if str(config.hydra.launcher.get("_target_", "")).endswith(".SlurmLauncher"):  # submitit's, on SLURM
            from ls_bench.slurm_watch import use_squeue_fallback  # no sacct: one notice, not one per poll

            use_squeue_fallback()
            slurm_lost_jobs_in_one_line()


# Sweep folders to report on when this (main) process ends; filled by SweepReport.
_SWEEPS_TO_REPORT: list[Path] = []


class SweepReport(Callback):
    """Registered in configs/config.yaml (hydra.callbacks.sweep_report): a sweep (-m) ends with
    ls-bench-report on its folder, so one command gives the runs and the summary. The report runs
    in main(), not in on_multirun_end, because Hydra skips that hook when a job has failed, and a
    sweep with failures needs its report (which lists them) the most."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.enabled:
            _SWEEPS_TO_REPORT.append(Path(config.hydra.sweep.dir))


def _report_sweep(sweep_dir: Path) -> None:
    """The sweep's report: tables on stdout; summary.csv, summary.md and plots in the folder.
    A report that cannot be made is one line on stderr and changes nothing else."""
    from ls_bench.report import report  # numpy, matplotlib: only once the sweep is over

    if next(sweep_dir.rglob(".hydra/config.yaml"), None) is None:  # no job started (a composition error)
        return
    try:
        print(f"\nls-bench: report of the sweep {sweep_dir} (again any time: ls-bench-report {sweep_dir})\n",
              flush=True)
        report(sweep_dir)
    except Exception as e:  # no finished run yet, a full disk, a closed stdout, ...
        print(f"ls-bench: warning: no sweep report ({type(e).__name__}: {first_line(e)}); the runs are unaffected",
              file=sys.stderr)


# --- Hydra's own usage errors, as one line ------------------------------------------------------

# Hydra's run modes (its arguments' names) and how they are typed; Hydra accepts one at a time.
_MODES = {"multirun": "-m", "cfg": "--cfg", "info": "--info", "run": "--run", "shell_completion": "--shell-completion"}
_DOES = {"-m": "runs a sweep", "--cfg": "prints one run's config", "--info": "prints what Hydra found",
         "--run": "runs one run", "--shell-completion": "installs shell completion"}


def check_usage(argv: Sequence[str]) -> None:
    """Hydra's own usage errors (an unknown option, two run modes such as -m with --cfg, --resolve
    without --cfg, a sweep's values without -m) as one line naming what to do, where Hydra prints
    its usage text, a traceback or a numbered list. Parsed with Hydra's own parser (hydra-core 1.3)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.error = lambda message: _exit(f"ls-bench: error: {message}; the options: ls-bench --hydra-help")
    args = parser.parse_args(argv)
    if args.help or args.hydra_help:
        return
    modes = [flag for name, flag in _MODES.items() if getattr(args, name) not in (None, False)]
    if len(modes) > 1:
        _exit(_two_modes(modes[0], modes[1], argv))
    if args.resolve and args.cfg is None:
        _exit(f"ls-bench: error: --resolve only changes what --cfg prints; add --cfg job: "
              f"ls-bench --cfg job {' '.join(argv)}")
    if not args.multirun:
        _check_single_values(args.overrides, "--cfg" if args.cfg else "--info" if args.info else "")
    _check_plugin(args.overrides)


def _two_modes(first: str, second: str, argv: Sequence[str]) -> str:
    """The one line for two run modes; with -m, the command to type instead (without -m, or
    without --run when the other is --run)."""
    line = f"ls-bench: error: {first} {_DOES[first]} and {second} {_DOES[second]}, not both"
    if first != "-m":
        return f"{line}; give one of them"
    drop = ("--run", "-r") if second == "--run" else ("-m", "--multirun")
    return f"{line}; drop {drop[0]}: ls-bench {' '.join(a for a in argv if a not in drop)}"


def _check_single_values(overrides: Sequence[str], mode: str) -> None:
    """Without -m, `key=a,b` (or range(), interval(), ...) is an error in Hydra: say what to do."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # a syntax error: Hydra's own message names it
        return
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            if mode:
                _exit(f"ls-bench: error: {o.input_line} is a sweep and {mode} shows one run: give {key} one value")
            _exit(f"ls-bench: error: {o.input_line} is a sweep: add -m to run one job per value "
                  f"(ls-bench -m ...), or give {key} one value (a list is written {key}=[a,b])")


def _check_plugin(overrides: Sequence[str]) -> None:
    """The Optuna sweeper is an extra: asked for and not installed, one line says how to get it."""
    import importlib.util

    asked = {"hydra/sweeper=optuna", "hydra/sweeper=search", "experiment=search_epsilon", "+experiment=search_epsilon"}
    if asked & set(overrides) and importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        _exit("ls-bench: error: the Optuna sweeper is not installed: pip install -e \".[optuna]\" "
              "(or pip install \"ls-bench[optuna]\")")


def main() -> None:
    if "--debug" in sys.argv:  # full Python tracebacks for every error
        sys.argv.remove("--debug")
        os.environ["HYDRA_FULL_ERROR"] = "1"
    check_usage(sys.argv[1:])
    ctrl_c_raises()
    interrupted = False
    try:
        _run()  # a sweep with a failed job ends in SystemExit(1): still reported
    except SystemExit as e:
        interrupted = isinstance(e.code, int) and e.code >= 128  # SIGTERM/SIGINT: stop now, the rerun reports
        raise
    except KeyboardInterrupt:  # Ctrl-C outside a run's training loop (start-up, data load, between jobs)
        interrupted = True
        print("ls-bench: interrupted (SIGINT); rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if _SWEEPS_TO_REPORT and not interrupted:
            _report_sweep(_SWEEPS_TO_REPORT[0])


if __name__ == "__main__":  # python -m ls_bench.cli: run the imported module, the one Hydra's
    from ls_bench.cli import main as _main  # callbacks see, not this second copy of it

    _main()
