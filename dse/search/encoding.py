"""The integer encoding every search shares: a frozen `Space` of serving modes and axes.

Why one integer per configuration: grid chunks become index ranges (bounded memory
whatever the size of the space), NSGA-II and Optuna search integer genes that map back
to the same integers, and results of different strategies can be joined row by row on
`config_id`.

A space is a union of serving modes. Each mode is the cartesian product of the common
axes and its own (a mode's axis replaces a common one of the same name), so per-role axes
of `disagg`/`afd` never multiply the `agg` configurations. Sizes are Python integers; the
index is 64-bit, so a scenario must stay under `MAX_SIZE` configurations.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from dse import schema
from dse.errors import DSEError

__all__ = ["Axis", "Mode", "Objective", "Constraint", "Space", "MAX_SIZE", "column_kind", "as_array"]

MAX_SIZE = 2**63 - 1     # configurations a space may hold (int64 indices)


@dataclasses.dataclass(frozen=True)
class Axis:
    """A named list of values; `key` is where it was written (for error messages)."""
    name: str
    values: tuple
    key: str = ""

    @property
    def size(self) -> int:
        return len(self.values)

    def array(self) -> np.ndarray:
        return as_array(self.name, self.values)


@dataclasses.dataclass(frozen=True)
class Mode:
    """One serving mode: a mixed-radix product of axes occupying [offset, offset+size)."""
    name: str
    axes: tuple[Axis, ...]
    genes: tuple[int, ...]      # genes[j] = gene index that axis j reads
    offset: int
    size: int
    strides: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    direction: str              # "min" | "max"


@dataclasses.dataclass(frozen=True)
class Constraint:
    metric: str
    bound: str                  # "max": metric <= limit; "min": metric >= limit
    limit: float
    key: str                    # scenario key path, e.g. "slos.tpot_ms"


@dataclasses.dataclass(frozen=True)
class Space:
    name: str
    path: str
    model: str
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    fixed: tuple[tuple[str, Any], ...]          # columns held constant
    modes: tuple[Mode, ...]
    genes: tuple[Axis, ...]                     # integer genes of the optimizers
    facility: tuple[tuple[str, float], ...] = ()   # constraints.facility: overrides of facility.yaml
    reference_point: tuple[float, ...] | None = None
    search: tuple[tuple[str, Any], ...] = ()
    placement: tuple[tuple[str, Any], ...] = ()   # afd rows also scored at their optimal placement
    resolved: dict = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)
    eplb_experts: int = 0       # scenario `eplb`: the model's experts (redundant_experts filled per row)
    # per mode: its deployable rows (dse.search.deployable.ModeEnum) and structural axes; () = every row
    enum: tuple = dataclasses.field(default=(), compare=False, hash=False, repr=False)

    # -- sizes ------------------------------------------------------------------
    @property
    def size(self) -> int:
        return sum(m.size for m in self.modes)

    @property
    def gene_sizes(self) -> np.ndarray:
        return np.array([g.size for g in self.genes], dtype=np.int64)

    @property
    def axis_names(self) -> list[str]:
        """Every column some mode varies, plus `mode`, in a stable order."""
        names = ["mode"]
        for m in self.modes:
            names += [a.name for a in m.axes if a.name not in names]
        return names

    @property
    def fingerprint(self) -> str:
        """Hash of what determines the results (not the description or search settings)."""
        core = {k: v for k, v in self.resolved.items() if k not in ("description", "search", "path")}
        return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def deployable_size(self) -> int:
        """Configurations the enumeration keeps (structure and GPU budget); `size` is the raw product."""
        return sum(e.size for e, _ in self.enum) if self.enum else self.size

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, int]]:
        """Ranges of deployable positions (see `positions`)."""
        total = self.deployable_size
        for lo in range(0, total, chunk_size):
            yield lo, min(lo + chunk_size, total)

    def positions(self, lo: int, hi: int) -> np.ndarray:
        """Config ids (indices of the full product) of deployable positions [lo, hi)."""
        if not self.enum:
            return np.arange(lo, hi, dtype=np.int64)
        out, start = [], 0
        for m, (e, _) in zip(self.modes, self.enum):
            a, b = max(lo - start, 0), min(hi - start, e.size)
            if a < b:
                out.append(m.offset + e.local(np.arange(a, b, dtype=np.int64)))
            start += e.size
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def deployable(self, indices: Any) -> np.ndarray:
        """Per config id: does the enumeration keep it?"""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        ok = np.ones(idx.size, dtype=bool)
        for m, (e, s_axes) in zip(self.modes, self.enum):
            rows = np.nonzero((idx >= m.offset) & (idx < m.offset + m.size))[0]
            if e.offsets is None or not rows.size:
                continue
            s = e.structural(idx[rows] - m.offset, s_axes)
            pos = np.minimum(np.searchsorted(e.offsets, s), max(len(e.offsets) - 1, 0))
            ok[rows] = (e.offsets[pos] == s) if len(e.offsets) else False
        return ok

    def repair(self, indices: Any) -> np.ndarray:
        """Config ids with an undeployable layout moved to the nearest deployable one (same
        free axes; the structural offset at or after it, else the last): NSGA-II and Optuna
        spend no evaluation on rows the enumeration drops."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1).copy()
        for m, (e, s_axes) in zip(self.modes, self.enum):
            rows = np.nonzero((idx >= m.offset) & (idx < m.offset + m.size))[0]
            if e.offsets is None or not rows.size or not len(e.offsets):
                continue
            local = idx[rows] - m.offset
            s = e.structural(local, s_axes)
            pos = np.minimum(np.searchsorted(e.offsets, s), len(e.offsets) - 1)
            idx[rows] = m.offset + local - s + e.offsets[pos]
        return idx

    # -- index <-> columns ------------------------------------------------------
    def _digits(self, indices: Any) -> tuple[int, list]:
        """(rows, [(mode number, its rows (a slice or indices), [(axis, digit per row)])]) of
        the given indices: what `decode` and `coded` both read off a config id."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise DSEError(f"space {self.name}: index out of range [0, {self.size})")
        out = []
        for k, m in enumerate(self.modes):
            if len(self.modes) == 1:
                sel: np.ndarray | slice = slice(None)
                local = idx - m.offset
            else:
                sel = np.nonzero((idx >= m.offset) & (idx < m.offset + m.size))[0]
                if not sel.size:
                    continue
                local = idx[sel] - m.offset
            out.append((k, sel, [(axis, (local // stride) % axis.size) for axis, stride in zip(m.axes, m.strides)]))
        return idx.size, out

    def decode(self, indices: Any) -> dict[str, np.ndarray]:
        """Configuration columns (axes and `mode`) of the given indices."""
        n, modes = self._digits(indices)
        pieces: dict[str, list[tuple[np.ndarray | slice, np.ndarray]]] = {}
        mode_col = np.empty(n, dtype=object)
        for k, sel, digits in modes:
            mode_col[sel] = self.modes[k].name
            for axis, digit in digits:
                pieces.setdefault(axis.name, []).append((sel, axis.array()[digit]))
        out: dict[str, np.ndarray] = {"mode": mode_col.astype(str)}
        out.update({name: _merge(name, parts, n) for name, parts in pieces.items()})
        return out

    def facility_overrides(self):
        """The Facility this scenario evaluates under (None: the shipped default)."""
        if not self.facility:
            return None
        from dse.catalog.facility import get_facility
        return get_facility(**dict(self.facility))

    def columns(self, indices: Any) -> dict[str, Any]:
        """Keyword columns for `dse.evaluate`: decoded axes plus the fixed columns (and, with
        `eplb`, each row's fewest redundant experts that let its ep divide the experts)."""
        cols = {**dict(self.fixed), **self.decode(indices)}
        if self.eplb_experts:
            from dse.deploy.roles import fewest_redundant
            cols.update(fewest_redundant(cols, self.eplb_experts))
        return cols

    def coded(self, indices: Any) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, list]]]:
        """The engine's input for the given indices without a string per row: (numeric axes
        and fixed columns, {string column: (codes, words)}) for dse.deploy.columns.from_codes.
        Same rows as `columns`; `mode` and string axes stay the axis digits."""
        n, modes = self._digits(indices)
        num: dict[str, list] = {}
        text: dict[str, tuple[np.ndarray, list]] = {}
        mode_codes = np.zeros(n, dtype=np.int32)
        for k, sel, digits in modes:
            mode_codes[sel] = k
            for axis, digit in digits:
                if column_kind(axis.name) == "str":
                    codes, words = text.setdefault(axis.name, (self._default_codes(axis.name, n), []))
                    lut = np.array([_word(words, str(v)) for v in axis.values], dtype=np.int32)
                    codes[sel] = lut[digit]
                else:
                    num.setdefault(axis.name, []).append((sel, axis.array()[digit]))
        cols: dict[str, Any] = dict(self.fixed)
        cols.update({name: _merge(name, parts, n) for name, parts in num.items()})
        for name, (codes, words) in text.items():   # rows of modes without the axis: the default
            if (codes < 0).any():
                codes[codes < 0] = _word(words, str(_column_default(name)))
        text["mode"] = (mode_codes, [m.name for m in self.modes])
        if self.eplb_experts:
            from dse.deploy.roles import fewest_redundant
            cols.update(fewest_redundant({**cols, "mode": np.array(text["mode"][1])[mode_codes]}, self.eplb_experts))
        return cols, text

    @staticmethod
    def _default_codes(name: str, n: int) -> np.ndarray:
        return np.full(n, -1, dtype=np.int32)

    def encode(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Indices of configurations given as columns (inverse of `decode`)."""
        n = None
        for m in self.modes:
            for a in m.axes:
                if a.name in columns:
                    n = len(np.asarray(columns[a.name]).reshape(-1))
        if "mode" in columns:
            mode = np.asarray(columns["mode"]).astype(str).reshape(-1)
            n = mode.size
        elif len(self.modes) == 1:
            mode = np.full(n or 0, self.modes[0].name)
        else:
            raise DSEError(f"space {self.name}: encode needs a 'mode' column")
        out = np.full(mode.size, -1, dtype=np.int64)
        for m in self.modes:
            rows = np.nonzero(mode == m.name)[0]
            if rows.size == 0:
                continue
            local = np.zeros(rows.size, dtype=np.int64)
            for axis, stride in zip(m.axes, m.strides):
                if axis.name not in columns:
                    raise DSEError(f"space {self.name}: encode needs column {axis.name!r}")
                vals = np.asarray(columns[axis.name]).reshape(-1)[rows]
                digit = pd.Index(axis.array()).get_indexer(vals)
                if (digit < 0).any():
                    bad = vals[digit < 0][0]
                    bad = bad.item() if hasattr(bad, "item") else bad
                    raise DSEError(f"space {self.name}: {axis.name}={bad!r} is not a value of the axis")
                local += digit * stride
            out[rows] = m.offset + local
        if (out < 0).any():
            bad = str(mode[out < 0][0])
            raise DSEError(f"space {self.name}: mode {bad!r} is not in the space")
        return out

    # -- index <-> genes --------------------------------------------------------
    def index(self, genotype: Any) -> np.ndarray:
        """Space index of integer gene vectors (n x len(genes)); unused genes are ignored."""
        x = np.asarray(genotype, dtype=np.int64).reshape(-1, len(self.genes))
        x = np.clip(x, 0, self.gene_sizes - 1)
        out = np.empty(x.shape[0], dtype=np.int64)
        mode_of = x[:, 0] if len(self.modes) > 1 else np.zeros(x.shape[0], dtype=np.int64)
        for k, m in enumerate(self.modes):
            rows = mode_of == k
            local = np.zeros(int(rows.sum()), dtype=np.int64)
            for g, stride in zip(m.genes, m.strides):
                local += x[rows, g] * stride
            out[rows] = m.offset + local
        return out

    def genotype(self, indices: Any) -> np.ndarray:
        """Canonical gene vectors of indices (genes another mode uses are 0)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        x = np.zeros((idx.size, len(self.genes)), dtype=np.int64)
        for k, m in enumerate(self.modes):
            rows = np.nonzero((idx >= m.offset) & (idx < m.offset + m.size))[0]
            local = idx[rows] - m.offset
            if len(self.modes) > 1:
                x[rows, 0] = k
            for axis, g, stride in zip(m.axes, m.genes, m.strides):
                x[rows, g] = (local // stride) % axis.size
        return x

    # -- objectives -------------------------------------------------------------
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def minimized(self, frame: Mapping[str, Any]) -> np.ndarray:
        """n x k objective values, max objectives negated so that smaller is better."""
        cols = [np.asarray(frame[o.name], dtype=float) * (-1.0 if o.direction == "max" else 1.0)
                for o in self.objectives]
        return np.stack(cols, axis=1) if cols else np.empty((0, 0))



# ----------------------------------------------------------------------------- column types

def column_kind(col: str) -> str:
    """'str' | 'bool' | 'int' | 'float' for a column, from the API's declarations at run time."""
    default = schema.COLUMNS.get(col)
    if col in schema.STRING_COLUMNS or isinstance(default, str):
        return "str"
    if isinstance(default, bool):
        return "bool"
    if col in schema.INT_COLUMNS or isinstance(default, int):
        return "int"
    if default is None:
        return "str"
    return "float"


def _word(words: list, w: str) -> int:
    """Index of `w` in `words`, appended when new."""
    if w not in words:
        words.append(w)
    return words.index(w)


def _column_default(col: str) -> Any:
    return schema.COLUMNS.get(col)


def as_array(col: str, values: tuple | list) -> np.ndarray:
    kind = column_kind(col)
    if kind == "str":
        return np.array([str(v) for v in values], dtype=str)
    if kind == "bool":
        return np.array(values, dtype=bool)
    if kind == "int":
        return np.array(values, dtype=np.int64)
    return np.array(values, dtype=float)


def _merge(name: str, parts: list, n: int) -> np.ndarray:
    """One column from the values of the modes that have the axis (the others: its default)."""
    if len(parts) == 1 and isinstance(parts[0][0], slice):
        return parts[0][1]
    default = _column_default(name)
    dtype = np.result_type(*[p[1] for p in parts], as_array(name, (default,)) if default is not None
                           else np.array([], dtype=object))
    col = np.full(n, default, dtype=dtype if default is not None else object)
    for sel, vals in parts:
        col[sel] = vals
    return col
