"""A run directory: one writer at a time, resumable state, and results committed as a unit.

Why: a sweep can run for hours and be killed at any instant (SIGKILL, full disk, a
second writer), and whatever is left must either resume to exactly the same result or
be refused with one line saying what to do; never half a result read as a whole one.

- RUN/.dse.lock is held (fcntl.flock) by the one process writing RUN; a second writer
  is refused, naming the holder's pid.
- While the run is in progress its rows live in RUN/state/parts/ and its identity
  (scenario fingerprint, strategy, seed, ...) in RUN/state/meta.json; a rerun with the
  same identity resumes, another identity is refused without `force`.
- The results (configs.parquet, pareto.csv, run.json, report.html) are each written to a
  temporary and renamed; RUN/run_manifest.json (their sizes and sha256, the scenario
  fingerprint) is written LAST. `verify_run_dir` accepts a directory only if its files
  match the manifest. A finished run of another scenario is never replaced without `force`.
- Temporaries left by a killed process (`.NAME.*.tmp`) are removed when the lock is taken;
  an unreadable part file or checkpoint is discarded (and recomputed) with a warning.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dse import io
from dse.errors import DSEError

__all__ = ["RunStore", "verify_run_dir", "write_manifest", "read_manifest", "warn", "MANIFEST", "LOCK",
           "RESULT_FILES", "disk_error", "check_results_dir"]

MANIFEST = "run_manifest.json"
LOCK = ".dse.lock"
MEMORY_BUDGET = 256 << 20   # bytes of part tables a sweep keeps in memory after writing them
RESULT_FILES = ("configs.parquet", "pareto.csv", "recommendation.json", "run.json", "report.html")
VIEWS = ("report.html",)   # rebuilt by `dse report` at will: listed in the manifest, not hashed
MANIFEST_FORMAT = 1


def warn(msg: str) -> None:
    """A one-line notice on stderr (the CLI's style; tests read it from capsys)."""
    sys.stderr.write(f"dse: warning: {msg}\n")
    sys.stderr.flush()


def disk_error(exc: OSError, where: Path) -> DSEError | None:
    """A DSEError for a write that failed because of the disk (full, read-only, no
    permission), else None: such a failure is the user's to fix, not a traceback."""
    text = str(exc)
    if exc.errno in io.DISK_ERRNOS or "No space left" in text or "Read-only file system" in text:
        what = exc.strerror or ("No space left on device" if "No space left" in text else text.splitlines()[0])
        name = exc.filename or where
        return DSEError(f"{name}: {what} while writing the run; nothing was left half-written under a final "
                        f"name; fix the disk and rerun with the same --out to resume")
    return None


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_manifest(run_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a run directory, None if it has none (DSEError if unreadable)."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
            raise ValueError("no 'files' mapping")
    except (ValueError, OSError) as exc:
        raise DSEError(f"{path}: unreadable manifest ({exc}); rerun the sweep with --force to replace the run"
                       ) from None
    return doc


def write_manifest(run_dir: str | Path, *, files: list[str], identity: dict[str, Any]) -> dict[str, Any]:
    """Commit a run: hash its result files and write the manifest (atomically, last);
    views (report.html) are listed, not hashed, since `dse report` rebuilds them."""
    run_dir = Path(run_dir)
    entries = {}
    for name in files:
        p = run_dir / name
        if p.is_file() and name not in VIEWS:
            entries[name] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    doc = {"format": MANIFEST_FORMAT, "fingerprint": identity.get("fingerprint"), "identity": identity,
           "files": entries, "views": [f for f in files if f in VIEWS]}
    io.write_json(run_dir / MANIFEST, doc)
    return doc


def check_results_dir(run_dir: Path) -> None:
    """A sweep's directory verified (`verify_run_dir`); one assembled by hand (no manifest,
    no sweep state) passes with a notice. No results at all: left for the reader to name
    (a notice before its error would make two lines)."""
    if not run_dir.is_dir():
        return
    if (run_dir / MANIFEST).is_file() or (run_dir / "state" / "meta.json").is_file():
        verify_run_dir(run_dir)
    elif any((run_dir / name).is_file() for name in RESULT_FILES):
        warn(f"{run_dir}: no {MANIFEST} (not written by dse sweep); its files are not verified")


def verify_run_dir(path: str | Path) -> dict[str, Any]:
    """The manifest of a finished run directory whose files all match it (size and
    sha256); a one-line DSEError otherwise (not a directory, unfinished, tampered)."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise DSEError(f"{run_dir}: not a directory")
    doc = read_manifest(run_dir)
    if doc is None:
        if (run_dir / "state" / "meta.json").is_file():
            raise DSEError(f"{run_dir}: an unfinished run (no {MANIFEST}); rerun the sweep with the same --out "
                           "to resume it")
        raise DSEError(f"{run_dir}: no {MANIFEST}; not a finished dse run directory")
    for name, want in doc["files"].items():
        p = run_dir / name
        if not p.is_file():
            raise DSEError(f"{p}: listed in {MANIFEST} but missing; rerun the sweep with the same --out")
        size = p.stat().st_size
        why = f"{size:,} bytes, the manifest says {want.get('size')}" if size != want.get("size") else (
            "its sha256 differs from the manifest's" if _sha256(p) != want.get("sha256") else "")
        if why:
            raise DSEError(f"{p}: does not match {MANIFEST} ({why}): the directory mixes files of different "
                           "runs or was edited; rerun the sweep with the same --out (or --force)")
    return doc


class RunStore:
    """The state of one run directory while a sweep writes it (see the module doc)."""

    def __init__(self, path: str | Path, *, identity: dict[str, Any], force: bool = False) -> None:
        self.path = Path(path)
        self.state = self.path / "state"
        self.parts_dir = self.state / "parts"
        self.identity = identity
        self.force = force
        self.resumed = False
        self._lock_fd: int | None = None
        self._memory: dict[str, pa.Table] = {}     # parts this process wrote, as written (see read_part)
        self._memory_bytes = 0

    # -- opening ------------------------------------------------------------------
    def open(self) -> "RunStore":
        """Take the lock, clean up after a killed process, then resume this run's state,
        start a new one, or refuse (another run's state or results, without force)."""
        if self.path.exists() and not self.path.is_dir():
            raise DSEError(f"--out {self.path}: is a file, not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            self._remove_temporaries()
            self._claim()
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.close()
            err = disk_error(exc, self.path)
            if err is None:
                raise
            raise DSEError(f"--out {self.path}: cannot write there ({exc.strerror or exc})") from None
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DSEError(f"--out {self.path}: another dse process (pid {holder}) is writing this run "
                           "directory; wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would race a new locker)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _remove_temporaries(self) -> None:
        """Temporaries of atomic writes a killed process left (we hold the lock: none is live)."""
        for d in (self.path, self.state, self.parts_dir):
            if d.is_dir():
                for p in d.glob(".*.tmp"):
                    p.unlink(missing_ok=True)

    def _claim(self) -> None:
        meta = self.state / "meta.json"
        if meta.is_file():
            try:
                found = json.loads(meta.read_text())
                if not isinstance(found, dict):
                    raise ValueError("not a mapping")
            except (ValueError, OSError) as exc:
                if not self.force:
                    raise DSEError(f"{meta}: unreadable ({exc}); rerun with --force to discard the unfinished "
                                   "run in this directory") from None
                found = {}
            keys = list(self.identity) + [k for k in found if k not in self.identity]
            diff = [k for k in keys if found.get(k) != self.identity.get(k)]
            if not diff:
                self.resumed = True
            elif not self.force:
                raise DSEError(f"{self.path}: holds an unfinished run with a different {diff[0]} "
                               f"({found.get(diff[0])!r}, now {self.identity.get(diff[0])!r}); "
                               "rerun it unchanged to resume, use --force to discard it, or choose another --out")
            else:
                self._discard()
        else:
            self._check_finished_run()
        (self.path / MANIFEST).unlink(missing_ok=True)    # from here on the directory is uncommitted
        if not self.resumed:
            self.state.mkdir(parents=True, exist_ok=True)
            io.write_json(meta, self.identity)

    def _check_finished_run(self) -> None:
        """A finished run of another scenario (or results of unknown origin) stays unless forced."""
        if self.force:
            self._discard()
            return
        try:
            doc = read_manifest(self.path)
        except DSEError:
            doc = {"fingerprint": "unreadable"}
        if doc is not None:
            if doc.get("fingerprint") != self.identity.get("fingerprint"):
                raise DSEError(f"--out {self.path}: holds a finished run of another scenario (fingerprint "
                               f"{doc.get('fingerprint')}, now {self.identity.get('fingerprint')}); use --force "
                               "to replace it or choose another --out")
        elif (self.path / "run.json").is_file():
            raise DSEError(f"--out {self.path}: holds results without a {MANIFEST} (an older or unfinished "
                           "run); use --force to replace them or choose another --out")

    def _discard(self) -> None:
        """--force: forget the unfinished state and the study of this directory."""
        shutil.rmtree(self.state, ignore_errors=True)
        (self.path / "study.journal").unlink(missing_ok=True)
        self.resumed = False

    # -- parts --------------------------------------------------------------------
    def write_part(self, name: str, df: pd.DataFrame) -> Path:
        table = pa.Table.from_pandas(df, preserve_index=False)
        # dictionary pages for the columns that repeat (ids, counts, flags, strings), none for
        # the metrics: a float column of distinct values only grows a dictionary to drop it,
        # which made writing a part a quarter of a sweep (same values, ~1 % larger files); no
        # column statistics: a part is only ever read whole, and they were ~30 % of its write
        repeat = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
        path = io.atomic_write(self.parts_dir / f"{name}.parquet",
                               lambda p: pq.write_table(table, p, use_dictionary=repeat, write_statistics=False))
        self._forget(path)
        if self._memory_bytes + table.nbytes <= MEMORY_BUDGET:
            self._remember(path, table)
        return path

    def _remember(self, path: Path, table: pa.Table) -> None:
        """Keep a written part as reading the file would give it back: its types as the
        file's footer has them (a dictionary of large_string reads back as one of string)."""
        try:
            schema = pq.read_schema(path)
            if not table.schema.equals(schema, check_metadata=True):
                table = table.cast(schema)
        except (OSError, pa.ArrowException, ValueError, TypeError):
            return          # read from the file, as for a resumed part
        self._memory[path.name] = table
        self._memory_bytes += table.nbytes

    def _forget(self, part: Path) -> None:
        table = self._memory.pop(Path(part).name, None)
        if table is not None:
            self._memory_bytes -= table.nbytes

    def in_memory(self) -> bool:
        """Every part on disk is also held in memory (finalize hands the tables on)."""
        return all(p.name in self._memory for p in self.parts())

    def parts(self) -> list[Path]:
        return sorted(self.parts_dir.glob("*.parquet")) if self.parts_dir.is_dir() else []

    def remove_parts(self, names: list[Path]) -> None:
        for p in names:
            self._forget(p)
            p.unlink(missing_ok=True)

    def part_rows(self, part: Path) -> int | None:
        """Rows of a part file from its footer; None (after discarding it, with a warning)
        if the file is unreadable, so that the strategy recomputes it."""
        try:
            return pq.read_metadata(part).num_rows
        except (OSError, pa.ArrowException) as exc:
            self.discard_part(part, exc)
            return None

    def discard_part(self, part: Path, exc: BaseException) -> None:
        warn(f"{part}: unreadable part file ({str(exc).splitlines()[0]}); discarded, it will be recomputed")
        self._forget(part)
        part.unlink(missing_ok=True)

    def read_part(self, part: Path, columns: list[str] | None = None) -> pa.Table:
        """A part file, or a one-line error that names it (removed, so a rerun recomputes it).
        A part this process wrote comes from memory (the table it wrote, which reading the
        file gives back: finalize read every part twice, most of its time)."""
        table = self._memory.get(part.name)
        if table is not None and part.exists():
            return table.select(columns) if columns is not None else table
        try:
            return pq.read_table(part, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            self._forget(part)
            part.unlink(missing_ok=True)
            raise DSEError(f"{part}: corrupt part file ({str(exc).splitlines()[0]}); it has been removed: "
                           "rerun with the same --out to recompute it") from None

    # -- checkpoint -----------------------------------------------------------------
    def save_checkpoint(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        io.atomic_write(self.state / "checkpoint.pkl", lambda p: p.write_bytes(data))

    def load_checkpoint(self) -> Any | None:
        """The last checkpoint; None if there is none or it is unreadable (then discarded,
        with a warning: the strategy restarts, which gives the same result)."""
        path = self.state / "checkpoint.pkl"
        if not path.is_file():
            return None
        try:
            return pickle.loads(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same: unusable
            warn(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc}); discarded, the run restarts")
            path.unlink(missing_ok=True)
            return None

    # -- commit -----------------------------------------------------------------------
    def commit(self, files: list[str]) -> dict[str, Any]:
        """Write the manifest of the finished results (last), then drop the state."""
        doc = write_manifest(self.path, files=files, identity=self.identity)
        self.clear()
        return doc

    def clear(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
