"""A run directory while the run is in progress: evaluated rows as part files, a checkpoint.

Why: memory stays bounded (rows go to disk chunk by chunk) and an interrupted run
resumes — rerunning with the same `--out` skips finished grid chunks and restarts
NSGA-II from its last checkpoint. Every file is written atomically (dse.io), so an
interruption leaves whole files or none. The state lives in RUN/state/ and is removed
once the final results are written.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dse import io
from dse.errors import DSEError


class RunStore:
    def __init__(self, path: str | Path, *, identity: dict[str, Any]) -> None:
        self.path = Path(path)
        self.state = self.path / "state"
        self.parts_dir = self.state / "parts"
        self.identity = identity
        self.resumed = False

    def open(self) -> "RunStore":
        """Create the directory or check that the state found there is of this same run."""
        meta = self.state / "meta.json"
        if meta.is_file():
            found = json.loads(meta.read_text())
            keys = list(self.identity) + [k for k in found if k not in self.identity]
            diff = [k for k in keys if found.get(k) != self.identity.get(k)]
            if diff:
                raise DSEError(f"{self.path}: holds an unfinished run with a different {diff[0]} "
                               f"({found.get(diff[0])!r}, now {self.identity.get(diff[0])!r}); "
                               "rerun it unchanged to resume, or choose another --out")
            self.resumed = True
        else:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            io.write_json(meta, self.identity)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        return self

    # -- parts --------------------------------------------------------------------
    def write_part(self, name: str, df: pd.DataFrame) -> Path:
        table = pa.Table.from_pandas(df, preserve_index=False)
        return io.atomic_write(self.parts_dir / f"{name}.parquet", lambda p: pq.write_table(table, p))

    def parts(self) -> list[Path]:
        return sorted(self.parts_dir.glob("*.parquet")) if self.parts_dir.is_dir() else []

    def remove_parts(self, names: list[Path]) -> None:
        for p in names:
            p.unlink(missing_ok=True)

    # -- checkpoint -----------------------------------------------------------------
    def save_checkpoint(self, obj: Any) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        io.atomic_write(self.state / "checkpoint.pkl", lambda p: p.write_bytes(data))

    def load_checkpoint(self) -> Any | None:
        path = self.state / "checkpoint.pkl"
        if not path.is_file():
            return None
        return pickle.loads(path.read_bytes())

    def clear(self) -> None:
        shutil.rmtree(self.state, ignore_errors=True)
