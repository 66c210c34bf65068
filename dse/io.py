"""Atomic file writes: write to a temporary file beside the target, then rename.

An interrupted run never leaves a half-written result; the previous file, if any,
stays intact until the new one is complete.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from dse.errors import DSEError

__all__ = ["atomic_write", "write_text", "write_json", "to_json", "jsonable", "DISK_ERRNOS", "output_to"]

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
# and an output path that names a directory where a file goes, or a file where a directory goes
PATH_ERRNOS = (errno.EISDIR, errno.ENOTDIR, errno.EEXIST)


@contextlib.contextmanager
def output_to(flag: str, path: str | os.PathLike) -> Iterator[None]:
    """A write under `flag PATH` that the disk or the path refuses is the user's to fix: one
    line naming both (atomic writes leave no half-written file); other OSErrors stay bugs."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS + PATH_ERRNOS:
            raise
        raise DSEError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call write(tmp_path) and move the finished file onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results should read like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, to_json(data) + "\n")


def to_json(data: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (RFC 8259: no NaN or Infinity tokens): NaN becomes null and an infinite
    value the string "inf" / "-inf" (an SLO or limit of inf means "none")."""
    return json.dumps(jsonable(data), indent=indent, allow_nan=False)


def jsonable(obj: Any) -> Any:
    """obj with numpy scalars and arrays as Python values and non-finite floats replaced."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())          # numpy arrays and scalars (item() for 0-d)
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)
