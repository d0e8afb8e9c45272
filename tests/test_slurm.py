"""The SLURM path on a real Slurm: scripts/slurm_local.sh starts a single-node cluster (root,
Debian's packages; .ci/run installs them), and a digits sweep goes through hydra/launcher=slurm.
Checked: a job pre-empted with USR2 is requeued by submitit, resumes from last.pt and ends with the
final.json of an uninterrupted run; a job killed outright (scancel) keeps last.pt and the same
command resumes it; ls-bench-report lists finished, failed and missing runs; the cluster has no
accounting, and the sweep says so once (ls_bench/slurm_watch.py), not at every poll."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import REPO, run_cli
from ls_bench.checkpoint import load_checkpoint
from ls_bench.logs import read_jsonl

SCRIPT = REPO / "scripts" / "slurm_local.sh"
EPOCHS = 60  # ~0.15 s each on one core: time to signal a job mid-training
RUN = ["experiment=quickstart", f"trainer.epochs={EPOCHS}", "trainer.num_threads=1", "trainer.progress=false",
       "metrics.figures=false"]
# ε = 1.5 is out of range: that job fails at its start (failed.json), as a bad value only one job has.
SWEEP = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=30", *RUN,
         "loss.epsilon=0,0.1,1.5", "hydra.callbacks.sweep_report.enabled=false"]  # the test runs the report
NOTICE = "ls-bench: note: sacct does not answer on this cluster"


def script(action: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment (SLURM_CONF) of a fresh single-node Slurm in its own folder; stopped and
    removed afterwards. Skips, with the reason, where it cannot start."""
    if os.geteuid() != 0:
        pytest.skip("a local Slurm needs root (slurmd starts the jobs)")
    if shutil.which("slurmd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
        pytest.skip("Slurm is not installed (scripts/slurm_local.sh install, as .ci/run does)")
    local = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(local), "SLURM_CONF": str(local / "slurm.conf")}
    started = script("start", env)
    if started.returncode != 0:
        script("stop", env)  # whatever did start
        shutil.rmtree(local, ignore_errors=True)
        pytest.skip(f"the local Slurm did not start: {started.stderr.strip()}")
    yield env
    stopped = script("stop", env)
    shutil.rmtree(local, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    assert script("status", env).returncode != 0  # no daemon left


def wait_for(what: str, ready: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    t0 = time.time()
    while not ready():
        assert proc is None or proc.poll() is None, f"the sweep ended before {what}"
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def epochs(run: Path) -> list[int]:
    return [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] if (run / "metrics.jsonl").exists() else []


def job_id(sweep: Path, num: int) -> str:
    """The Slurm id of job `num` of the sweep (one array; submitit's folder .submitit/<array>_<num>)."""
    (folder,) = (sweep / ".submitit").glob(f"*_{num}")
    return folder.name


def slurm(env: dict[str, str], *args: str) -> str:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60, check=True).stdout


def resumed_at(run: Path) -> list[int]:
    """The epochs the run's log says it resumed at (checkpoint.restore_training_state)."""
    return [int(e) for e in re.findall(r"resumed from \S+ at epoch (\d+)", (run / "ls-bench.log").read_text())]


def comparable(final: dict) -> dict:
    return {k: v for k, v in final.items() if k != "time_s" and not k.startswith("perf/")}


def report(sweep: Path, env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-m", "ls_bench.report", "--no-plots", str(sweep)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_squeue_states_are_read_as_sacct_states() -> None:
    """The fallback's reading of squeue (no Slurm needed): a job squeue no longer lists has ended,
    one that squeue shows configuring or suspended has not, whatever submitit's sacct list says."""
    pytest.importorskip("submitit")
    from ls_bench.slurm_watch import ENDED, SqueueFallbackWatcher

    watcher = SqueueFallbackWatcher()
    watcher.squeue = True
    for job in ("7_0", "7_1", "7_2", "7_3", "8"):
        watcher.register_job(job)
    watcher._info_dict.update(watcher.read_info(b"7_0|RUNNING\n7_1|CONFIGURING\n7_3|CANCELLED\n8|PENDING\n9|RUNNING\n"))
    assert {j: watcher.get_state(j, "cache") for j in ("7_0", "7_1", "7_2", "7_3", "8")} == {
        "7_0": "RUNNING", "7_1": "CONFIGURING", "7_2": ENDED, "7_3": "CANCELLED", "8": "PENDING"}
    assert [j for j in ("7_0", "7_1", "7_2", "7_3", "8") if watcher.is_done(j, "cache")] == ["7_2", "7_3"]
    assert "9" not in watcher._info_dict  # another sweep's job: not kept


def sweep_in_background(sweep: Path, env: dict[str, str], logs: Path) -> subprocess.Popen:
    """`ls-bench <SWEEP>` launched into `sweep`; its stdout and stderr go to logs.out and logs.err."""
    with open(logs.with_suffix(".out"), "w") as out, open(logs.with_suffix(".err"), "w") as err:
        return subprocess.Popen([sys.executable, "-m", "ls_bench.cli", *SWEEP, f"hydra.sweep.dir={sweep}"], cwd=REPO,
                                env={**env, "PYTHONWARNINGS": "ignore"}, stdout=out, stderr=err, text=True)


def check_first_launch(runs: list[Path], sweep: Path, err: str, env: dict[str, str]) -> int:
    """After the launch in which job 0 was pre-empted and job 1 killed; returns job 1's last epoch."""
    assert (runs[0] / "final.json").exists(), err
    log = (runs[0] / "ls-bench.log").read_text()
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log  # submitit's handler, in the job
    assert len(resumed_at(runs[0])) == 1 and resumed_at(runs[0])[0] >= 2, log
    assert epochs(runs[0]) == list(range(1, EPOCHS + 1))  # each epoch logged once across the two starts
    killed_at = load_checkpoint(runs[1] / "last.pt")["epoch"]
    assert 2 <= killed_at < EPOCHS and epochs(runs[1]) == list(range(1, killed_at + 1))
    assert not (runs[1] / "final.json").exists() and not (runs[1] / "failed.json").exists()
    assert json.loads((runs[2] / "failed.json").read_text())["type"] == "ConfigError"
    text = report(sweep, env)
    assert "1 of 3 runs finished" in text, text
    assert f"missing: {runs[1].name}: no final.json or failed.json; {killed_at}/{EPOCHS} epochs logged" in text, text
    assert f"failed: {runs[2].name}: ls-bench: error: loss.epsilon" in text, text
    return killed_at


@pytest.mark.slow  # 2-3 min on 2 cores
def test_a_slurm_sweep_survives_preemption_and_a_kill(slurm_env: dict[str, str], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    runs = [sweep / f"experiment=quickstart,loss.epsilon={e},trainer.epochs={EPOCHS}" for e in ("0", "0.1", "1.5")]
    first = sweep_in_background(sweep, slurm_env, tmp_path / "first")
    wait_for("two jobs training", lambda: len(epochs(runs[0])) >= 2 and len(epochs(runs[1])) >= 2, first)
    slurm(slurm_env, "scancel", "--signal=USR2", job_id(sweep, 0))  # what Slurm sends before pre-emption
    slurm(slurm_env, "scancel", job_id(sweep, 1))  # killed outright (SIGTERM, then SIGKILL)
    assert first.wait(timeout=600) == 1  # submitit's error: job 1 ended without a result
    err = (tmp_path / "first.err").read_text()
    assert err.count(NOTICE) == 1 and "Bypassing sacct error" not in err, err
    # the killed job is one line (cli.slurm_lost_jobs_in_one_line), not submitit's traceback and log tail
    lost = f"ls-bench: error: Slurm job {job_id(sweep, 1)} ended without a result"
    assert lost in err and "Traceback" not in err, err
    killed_at = check_first_launch(runs, sweep, err, slurm_env)

    wait_for("no job left in squeue", lambda: not slurm(slurm_env, "squeue", "--noheader").strip())
    done = (runs[0] / "final.json").read_bytes()
    with open(tmp_path / "ref.err", "w") as ref_err:  # job 0's config, uninterrupted, without Slurm
        ref = subprocess.Popen([sys.executable, "-m", "ls_bench.cli", *RUN, "loss.epsilon=0",
                                f"hydra.run.dir={tmp_path / 'ref'}"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=ref_err, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    again = run_cli(*SWEEP, f"hydra.sweep.dir={sweep}", env=slurm_env, timeout=600)
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr  # job 2 fails again
    assert again.stderr.count(NOTICE) <= 1 and "Bypassing sacct error" not in again.stderr, again.stderr
    assert resumed_at(runs[1]) == [killed_at] and epochs(runs[1]) == list(range(1, EPOCHS + 1))
    assert (runs[0] / "final.json").read_bytes() == done  # finished: not run again
    text = report(sweep, slurm_env)
    assert "2 of 3 runs finished" in text and f"failed: {runs[2].name}" in text and "missing:" not in text, text

    assert ref.wait(timeout=600) == 0, (tmp_path / "ref.err").read_text()
    final = json.loads((runs[0] / "final.json").read_text())
    assert comparable(final) == comparable(json.loads((tmp_path / "ref" / "final.json").read_text()))
