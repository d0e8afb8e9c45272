"""The error toolkit every module may import: one-line user errors and run failures.

A `ConfigError` is a user mistake (a config value, or the data it points at); a `RunFailed` is a
run that cannot go on (non-finite loss, a full disk, out of GPU memory). The CLI prints either as
one line, without a traceback. This module imports nothing of ls-bench.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A user mistake in the config or the data it points at; printed as one line, no traceback."""


class RunFailed(RuntimeError):
    """The run cannot continue (non-finite loss, ...); fit() writes failed.json before raising it."""


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (or its type's name): for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def invalid(key: str, value: Any, allowed: str) -> ConfigError:
    """The one-line error for a bad value, to raise: the field, the value, what is allowed."""
    return ConfigError(f"{key}={value!r} is invalid: {allowed}")
