"""submitit's Slurm job watcher on a cluster without accounting: squeue instead of sacct.

The launching process learns that a job ended from the job's result file, or else from submitit's
watcher (submitit/slurm/slurm.py, SlurmInfoWatcher), which asks `sacct` for the jobs' states. On a
cluster with accounting off (AccountingStorageType=accounting_storage/none: small and local
clusters), sacct fails at every poll, submitit logs "Bypassing sacct error" each time (every few
seconds at first), and never learns that a job was killed outright (scancel, out of memory): the
sweep then waits forever for a result file that nobody writes. `use_squeue_fallback()` swaps the
watcher for one that asks sacct once and, if sacct fails, prints one notice and reads the states
from squeue from then on; a job that squeue no longer lists has ended.
"""

from __future__ import annotations

import os
import subprocess
import sys

from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob

# States squeue shows for a job that is not over (its job_state_string values), which submitit's
# list in InfoWatcher.is_done, written for sacct, does not name: a requeued or configuring job
# must not count as ended.
ALIVE = frozenset({"CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED", "REQUEUE_FED",
                   "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD", "POWER_UP_NODE"})
ENDED = "ENDED"  # the state of a job that squeue no longer lists (finished longer than MinJobAge ago)


def sacct_error() -> str | None:
    """None when sacct answers; else its first line of error (e.g. accounting storage is disabled)."""
    try:
        r = subprocess.run(["sacct", "--noheader", "-o", "JobID", "-j", "1"], capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    lines = (r.stderr or r.stdout).strip().splitlines()
    return None if r.returncode == 0 else (lines[0] if lines else f"exit status {r.returncode}")


class SqueueFallbackWatcher(SlurmInfoWatcher):
    """SlurmInfoWatcher that reads squeue once sacct has failed (decided at the first poll)."""

    squeue: bool | None = None  # None: sacct not asked yet

    def update(self) -> None:
        if self.squeue is None:
            error = sacct_error()
            self.squeue = error is not None
            if error is not None:
                print(f"ls-bench: note: sacct does not answer on this cluster ({error}); job states come from "
                      f"squeue instead", file=sys.stderr, flush=True)
        super().update()

    def _make_command(self) -> list[str] | None:
        command = super()._make_command()  # None when no job is left to watch
        if command is None or not self.squeue:
            return command
        # This user's jobs in all states (ended ones stay listed for MinJobAge), one line per array
        # task; not `squeue -j ids`, which fails once every one of them has been purged.
        return ["squeue", "--noheader", "--array", "--states=all", f"--user={os.getuid()}", "--format=%i|%T"]

    def read_info(self, string: bytes | str) -> dict[str, dict[str, str]]:
        if not self.squeue:
            return super().read_info(string)
        text = string.decode() if isinstance(string, bytes) else string
        listed = super().read_info("JobID|State\n" + text)  # sacct's table, the same columns
        watched = self._registered - self._finished
        return {job_id: listed.get(job_id, {"JobID": job_id, "State": ENDED}) for job_id in watched}

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        return super().is_done(job_id, mode) and not (self.squeue and self.get_state(job_id, "cache") in ALIVE)


def use_squeue_fallback() -> None:
    """Install the watcher for every SlurmJob of this process (once; before any job is submitted)."""
    if not isinstance(SlurmJob.watcher, SqueueFallbackWatcher):
        SlurmJob.watcher = SqueueFallbackWatcher(delay_s=SlurmJob.watcher._delay_s)
