"""Stopping on SIGTERM/SIGINT (a SLURM pre-emption, Ctrl-C) without losing a finished epoch.

The handler only sets a flag; the training loop reads it once per step, so the step in flight
finishes, the partial epoch is abandoned, and `last.pt` holds the last finished epoch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT arrived (e.g. SLURM pre-emption); last.pt holds the last finished epoch."""

    def __init__(self, signum: int, when: str):
        super().__init__(f"{signal.Signals(signum).name} received {when}")
        self.signum = signum


class StopFlag:
    """Set by the signal handler, read once per step. Never cleared: a signal that lands after a
    run's last step (its evaluation, its final.json) stops the next run of the sweep before it
    starts, instead of being forgotten."""

    signum: int | None = None

    @classmethod
    def handler(cls, signum: int, frame: Any) -> None:
        cls.signum = signum

    @classmethod
    def check(cls, when: str) -> None:
        """Raise Interrupted if a stop signal has arrived."""
        if cls.signum is not None:
            raise Interrupted(cls.signum, when)


class CtrlC(KeyboardInterrupt):
    """What Ctrl-C raises outside a run's training loop (ctrl_c_raises). A subclass on purpose:
    when a plain KeyboardInterrupt passes through an `exec` of a string (dataclasses does that for
    every class it builds, many times while torch imports), CPython 3.11 marks it unhandled by its
    exact type, and `python -m ls_bench.cli` then dies by SIGINT (status -2 to a parent process)
    even though main() caught it and exits with 130; a subclass does not match that check."""


def raise_ctrl_c(signum: int, frame: Any) -> None:
    raise CtrlC


def ctrl_c_raises() -> None:
    """SIGINT raises CtrlC (a KeyboardInterrupt) from now on; main thread only."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, raise_ctrl_c)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Install SIGTERM/SIGINT handlers for the duration of a run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, StopFlag.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
