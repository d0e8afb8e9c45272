"""Atomic file writes: a temporary file in the same folder, then a rename, so a reader (or a
resumed run) never sees half a file and a crash never replaces a good file with a torn one.

The one place for it: run files (final.json, metrics.jsonl rewrites, predictions.npz),
checkpoints (last.pt) and the decoded-image cache all write through `atomic_write`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Path], None], fsync: bool = True) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, fsync it, rename it over `path`.

    An OSError names `path`, not its temporary; the temporary is removed whatever happens.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as e:  # name the file being written, not its temporary
        if e.filename == str(path):
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    finally:
        with contextlib.suppress(OSError):  # cleanup must not hide the write error itself
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file such as run_info.json; {} if it is missing, unreadable or not an object."""
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}
