"""A per-user cache of arrays derived from shipped data files, so a process does not parse
the same tables again (the interval tables' CSVs cost ~0.2 s a process in pandas).

An entry is named by the sha256 of its source files' bytes and of a `key` string the
caller builds from everything else the arrays depend on; a changed file is a new entry.
Entries are .npz files (arrays) or .json files (parsed documents), no pickles, written
atomically; a missing, unreadable or corrupt entry, or one that fails the caller's check,
is rebuilt, and a cache directory that cannot be written is ignored. Callers name the code
that derives an entry among its sources or in its name, so new code makes new entries. Location: $DSE_CACHE_DIR, else $XDG_CACHE_HOME/dse, else
~/.cache/dse; DSE_CACHE_DIR=off turns the cache off.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["cache_dir", "cached_arrays", "cached_document"]

Arrays = dict[str, np.ndarray]


def cache_dir() -> Path | None:
    """Where entries live, or None when the cache is off."""
    given = os.environ.get("DSE_CACHE_DIR")
    if given is not None:
        return None if given.strip().lower() in ("", "off", "0", "no") else Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dse"


def _entry(name: str, sources: list[Path], key: str) -> Path | None:
    root = cache_dir()
    if root is None:
        return None
    h = hashlib.sha256(key.encode())
    for src in sources:
        h.update(b"\0" + Path(src).read_bytes())
    return root / f"{name}-{h.hexdigest()[:32]}.npz"


def _read(path: Path) -> Arrays | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception:       # missing, truncated, not a zip, a pickle: rebuild
        return None


def _write(path: Path, arrays: Arrays | None = None, text: str | None = None) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                if text is not None:
                    f.write(text.encode())
                else:
                    np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:         # a read-only or full cache directory only costs the rebuild
        pass


def cached_arrays(name: str, sources: list[Path], key: str, build: Callable[[], Arrays],
                  check: Callable[[Arrays], bool] = lambda a: True) -> Arrays:
    """The arrays `build()` returns for these source files and key, from the cache when an
    entry exists and passes `check`, else built (errors of `build` propagate) and stored."""
    path = _entry(name, sources, key)
    if path is not None:
        got = _read(path)
        if got is not None and check(got):
            return got
    arrays = build()
    if path is not None:
        _write(path, arrays)
    return arrays


def cached_document(name: str, source: Path, parse: Callable[[str], Any]) -> Any:
    """`parse(text)` of a data file, through a JSON entry keyed by the file's bytes (YAML's
    Python-side scalar resolution cost ~60 ms a process for serving_runtime.yaml). A
    document JSON does not give back exactly (non-string keys, tuples, NaN, dates) is
    parsed every time; errors of `parse` propagate."""
    data = Path(source).read_bytes()
    root = cache_dir()
    path = None if root is None else root / f"{name}-{hashlib.sha256(data).hexdigest()[:32]}.json"
    if path is not None:
        try:
            return json.loads(path.read_text())
        except Exception:       # missing or corrupt: parse again
            pass
    doc = parse(data.decode())
    if path is not None:
        try:
            text = json.dumps(doc, allow_nan=False)
            if json.loads(text) == doc:
                _write(path, text=text)
        except (TypeError, ValueError, OverflowError):
            pass
    return doc
