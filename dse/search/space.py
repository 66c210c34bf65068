"""Scenarios: a YAML file -> a frozen `Space`, and the integer encoding every search shares.

Why one integer per configuration: grid chunks become index ranges (bounded memory
whatever the size of the space), NSGA-II and Optuna search integer genes that map back
to the same integers, and results of different strategies can be joined row by row on
`config_id`.

A space is a union of serving modes. Each mode is the cartesian product of the common
`axes:` and its own axes under `modes: {MODE: {axis: values}}` (a mode's axis replaces a
common one of the same name), so per-role axes of `disagg`/`afd` never multiply the
`agg` configurations. Axis names are whatever `dse.schema.COLUMNS` accepts at run time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
import yaml

from dse.errors import DSEError
from dse.schema import direction
from dse import schema
from dse.deploy.evaluate import evaluate

NON_NUMERIC_METRICS = ("feasible", "infeasible_reason", "bottleneck")
# Latency objective: e2e_ms (time to the whole answer) rather than tpot_ms, because it
# charges both phases: a configuration that decodes fast but prefills slowly (or a
# disaggregated one with a slow prefill pool) is not latency-optimal for the user.
# TTFT/TPOT targets are constraints under `slos:`.
DEFAULT_OBJECTIVES = ("e2e_ms", "joules_per_token", "usd_per_mtok")
TOP_KEYS = ("name", "description", "model", "workload", "slos", "objectives", "constraints", "axes", "modes",
            "search", "reference_point", "placement")
CONSTRAINT_KEYS = ("max_gpus", "max_power_kw", "budget_usd", "own", "facility", "max", "min")
SEARCH_KEYS = ("strategy", "budget", "seed", "pop_size", "sampler", "chunk_size", "tol")
STRATEGIES = ("grid", "nsga2", "optuna")
SAMPLERS = ("nsga2", "tpe")
RANGE_FORMS = ("range", "pow2", "linspace")


# ----------------------------------------------------------------------------- data

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
        return _as_array(self.name, self.values)


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

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, int]]:
        for lo in range(0, self.size, chunk_size):
            yield lo, min(lo + chunk_size, self.size)

    # -- index <-> columns ------------------------------------------------------
    def decode(self, indices: Any) -> dict[str, np.ndarray]:
        """Configuration columns (axes and `mode`) of the given indices."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise DSEError(f"space {self.name}: index out of range [0, {self.size})")
        n = idx.size
        pieces: dict[str, list[tuple[np.ndarray | slice, np.ndarray]]] = {}
        mode_col = np.empty(n, dtype=object)
        for m in self.modes:
            if len(self.modes) == 1:
                sel: np.ndarray | slice = slice(None)
                local = idx - m.offset
            else:
                mask = (idx >= m.offset) & (idx < m.offset + m.size)
                if not mask.any():
                    continue
                sel = np.nonzero(mask)[0]
                local = idx[sel] - m.offset
            mode_col[sel] = m.name
            for axis, stride in zip(m.axes, m.strides):
                digit = (local // stride) % axis.size
                pieces.setdefault(axis.name, []).append((sel, axis.array()[digit]))
        out: dict[str, np.ndarray] = {"mode": mode_col.astype(str)}
        for name, parts in pieces.items():
            if len(parts) == 1 and isinstance(parts[0][0], slice):
                out[name] = parts[0][1]
                continue
            default = _column_default(name)
            dtype = np.result_type(*[p[1] for p in parts], _as_array(name, (default,)) if default is not None
                                   else np.array([], dtype=object))
            col = np.full(n, default, dtype=dtype if default is not None else object)
            for sel, vals in parts:
                col[sel] = vals
            out[name] = col
        return out

    def facility_overrides(self):
        """The Facility this scenario evaluates under (None: the shipped default)."""
        if not self.facility:
            return None
        from dse.catalog.facility import get_facility
        return get_facility(**dict(self.facility))

    def columns(self, indices: Any) -> dict[str, Any]:
        """Keyword columns for `dse.evaluate`: decoded axes plus the fixed columns."""
        return {**dict(self.fixed), **self.decode(indices)}

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


# ----------------------------------------------------------------------------- loading

def load_space(path: str | Path) -> Space:
    """Read and validate a scenario file; every error is one line naming file and key."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DSEError(f"{where}: no such scenario file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DSEError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return space_from_dict(data, where=where, default_name=path.stem)


def space_from_dict(data: Any, *, where: str = "<scenario>", default_name: str = "scenario") -> Space:
    """Validate an already-parsed scenario mapping (see `load_space`)."""
    from dse.catalog.models import get_model

    def fail(key: str, msg: str) -> DSEError:
        return DSEError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")

    if not isinstance(data, dict):
        raise fail("", "expected a mapping of keys at the top level; allowed: " + ", ".join(TOP_KEYS))
    _unknown(data, TOP_KEYS, "", fail)

    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise fail("name", f"expected a non-empty string, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"expected a string, got {description!r}")

    if "model" not in data:
        raise fail("model", "required: a model id (`dse models list`) or a path to a config.json")
    model_ref = data["model"]
    if not isinstance(model_ref, str):
        raise fail("model", f"expected a model id string, got {model_ref!r}")
    is_path = model_ref.endswith(".json") or "/" in model_ref and Path(model_ref).exists()
    if where != "<scenario>" and not Path(model_ref).is_absolute():
        beside = Path(where).parent / model_ref  # a config.json path is relative to the scenario file
        if beside.exists() and (model_ref.endswith(".json") or beside.is_dir()):
            model_ref, is_path = str(beside), True
    try:
        model = get_model(model_ref)
    except DSEError as exc:
        raise fail("model", _strip(str(exc), "model")) from None
    model_id = model_ref if is_path else model.id

    columns = dict(schema.COLUMNS)
    metrics = [m for m in schema.METRICS if m not in NON_NUMERIC_METRICS]
    placement: dict = {}
    if "placement" in data:
        from dse.solvers import placed
        placement = placed.settings_from(data["placement"], fail)
        metrics += list(placed.METRICS)

    # -- workload: fixed columns ----------------------------------------------------
    fixed: dict[str, Any] = {"model": model_id}
    fixed_keys: dict[str, str] = {"model": "model"}
    workload = _mapping(data.get("workload", {}), "workload", fail)
    for col, val in workload.items():
        key = f"workload.{col}"
        if col not in columns or col in ("model", "mode"):
            raise fail(key, f"unknown column; allowed: {', '.join(c for c in columns if c not in ('model', 'mode'))}")
        if isinstance(val, (list, dict)):
            raise fail(key, "workload values are single values; to sweep it, list it under axes:")
        fixed[col] = _check_value(col, val, key, fail)
        fixed_keys[col] = key

    # -- objectives -----------------------------------------------------------------
    raw_obj = data.get("objectives", list(DEFAULT_OBJECTIVES))
    if not isinstance(raw_obj, list) or not raw_obj:
        raise fail("objectives", "expected a non-empty list of metrics (e.g. [e2e_ms, joules_per_token])")
    objectives: list[Objective] = []
    for i, item in enumerate(raw_obj):
        key = f"objectives[{i}]"
        if isinstance(item, str):
            oname, direction = item, _default_direction(item)
        elif isinstance(item, dict) and set(item) <= {"name", "direction"} and "name" in item:
            oname, direction = item["name"], item.get("direction", _default_direction(str(item["name"])))
        elif isinstance(item, dict) and len(item) == 1:
            (oname, direction), = item.items()
        else:
            raise fail(key, f"expected a metric name, {{name: METRIC, direction: min|max}} or {{METRIC: min|max}}, "
                            f"got {item!r}")
        if oname not in metrics:
            raise fail(key, f"unknown metric {oname!r}; allowed: {', '.join(metrics)}")
        if direction not in ("min", "max"):
            raise fail(f"{key}.direction", f"expected min or max, got {direction!r}")
        if any(o.name == oname for o in objectives):
            raise fail(key, f"metric {oname!r} is listed twice")
        objectives.append(Objective(oname, direction))
    if len(objectives) > 4:
        raise fail("objectives", f"at most 4 objectives, got {len(objectives)}")

    # -- constraints ------------------------------------------------------------------
    constraints: list[Constraint] = []
    slos = _mapping(data.get("slos", {}), "slos", fail)
    for metric, limit in slos.items():
        key = f"slos.{metric}"
        if metric not in metrics:
            raise fail(key, f"unknown metric; an SLO is an upper limit on one of: {', '.join(metrics)}")
        constraints.append(Constraint(metric, "max", _positive(limit, key, fail), key))
        slo_col = metric[:-3] + "_slo_ms" if metric.endswith("_ms") else ""
        if slo_col in columns:  # evaluate takes the target too (goodput): pass it on
            fixed[slo_col] = float(limit)
            fixed_keys[slo_col] = key

    cons = _mapping(data.get("constraints", {}), "constraints", fail)
    _unknown(cons, CONSTRAINT_KEYS, "constraints.", fail)
    if "max_gpus" in cons:
        constraints.append(Constraint("num_gpus", "max", _positive(cons["max_gpus"], "constraints.max_gpus", fail,
                                                                   integer=True), "constraints.max_gpus"))
    if "max_power_kw" in cons:
        kw = _positive(cons["max_power_kw"], "constraints.max_power_kw", fail)
        constraints.append(Constraint("power_w", "max", kw * 1000.0, "constraints.max_power_kw"))
    if "budget_usd" in cons:
        constraints.append(Constraint("capex_usd", "max", _positive(cons["budget_usd"], "constraints.budget_usd",
                                                                    fail), "constraints.budget_usd"))
    for bound in ("max", "min"):
        lims = _mapping(cons.get(bound, {}), f"constraints.{bound}", fail)
        for metric, limit in lims.items():
            key = f"constraints.{bound}.{metric}"
            if metric not in metrics:
                raise fail(key, f"unknown metric; allowed: {', '.join(metrics)}")
            if isinstance(limit, bool) or not isinstance(limit, (int, float)):
                raise fail(key, f"expected a number, got {limit!r}")
            constraints.append(Constraint(metric, bound, float(limit), key))
    if "own" in cons:
        if not isinstance(cons["own"], bool):
            raise fail("constraints.own", f"expected true (own the hardware) or false (rent it), got {cons['own']!r}")
        fixed["own"] = cons["own"]
        fixed_keys["own"] = "constraints.own"

    facility: dict[str, float] = {}
    fac = _mapping(cons.get("facility", {}), "constraints.facility", fail)
    if fac:
        from dse.catalog.facility import get_facility
        try:
            get_facility(**fac)
        except DSEError as exc:
            raise fail("constraints.facility", _strip(str(exc), "facility")) from None
        facility = {k: float(v) for k, v in fac.items()}

    # -- axes and modes ---------------------------------------------------------------
    common = _read_axes(data.get("axes", {}), "axes", columns, fixed, fail)
    raw_modes = data.get("modes", ["agg"])
    if isinstance(raw_modes, list):
        if not raw_modes:
            raise fail("modes", f"empty: list at least one of {', '.join(schema.MODES)}")
        mode_specs: dict[str, Any] = {}
        for i, m in enumerate(raw_modes):
            if not isinstance(m, str):
                raise fail(f"modes[{i}]", f"expected a mode name, got {m!r}")
            if m not in schema.MODES:
                raise fail(f"modes[{i}]", f"unknown mode {m!r}; allowed: {', '.join(schema.MODES)}")
            if m in mode_specs:
                raise fail(f"modes[{i}]", f"mode {m!r} listed twice")
            mode_specs[m] = {}
    elif isinstance(raw_modes, dict):
        if not raw_modes:
            raise fail("modes", f"empty: give at least one of {', '.join(schema.MODES)}")
        mode_specs = raw_modes
    else:
        raise fail("modes", f"expected a list of modes or a mapping mode -> axes, got {raw_modes!r}")
    per_mode: dict[str, dict[str, Axis]] = {}
    for m, spec in mode_specs.items():
        if m not in schema.MODES:
            raise fail(f"modes.{m}", f"unknown mode; allowed: {', '.join(schema.MODES)}")
        own_axes = _read_axes(spec if spec is not None else {}, f"modes.{m}", columns, fixed, fail)
        merged = dict(common)
        merged.update(own_axes)
        for col, default in columns.items():
            if default is None and col not in fixed and col not in merged:
                raise fail(f"axes.{col}", f"required: list the {col} values to search (mode {m} has none)")
        per_mode[m] = merged
    if placement and set(per_mode) != {"afd"}:
        raise fail("placement", "scores attention/FFN pools (mode afd); remove the other modes "
                                f"({', '.join(m for m in per_mode if m != 'afd')}) or the placement section")

    # -- genes: mode, then common axes, then each mode's own axes -----------------------
    genes: list[Axis] = []
    gene_of: dict[tuple[str, str], int] = {}
    if len(per_mode) > 1:
        genes.append(Axis("mode", tuple(per_mode), "modes"))
    common_gene: dict[str, int] = {}
    for aname, axis in common.items():
        common_gene[aname] = len(genes)
        genes.append(axis)
    for m, axes in per_mode.items():
        for aname, axis in axes.items():
            if aname in common and axis == common[aname]:
                gene_of[(m, aname)] = common_gene[aname]
            else:  # the mode's own axis (or its own values for a common one): a gene of its own
                gene_of[(m, aname)] = len(genes)
                genes.append(axis)

    modes: list[Mode] = []
    offset = 0
    for m, axes in per_mode.items():
        ax = tuple(axes.values())
        strides = []
        s = 1
        for a in reversed(ax):
            strides.append(s)
            s *= a.size
        size = s
        modes.append(Mode(m, ax, tuple(gene_of[(m, a.name)] for a in ax), offset, size, tuple(reversed(strides))))
        offset += size
    if offset == 0:
        raise fail("axes", "the space is empty")

    # -- reference point and search defaults ------------------------------------------
    reference = None
    if "reference_point" in data:
        ref = _mapping(data["reference_point"], "reference_point", fail)
        missing = [o.name for o in objectives if o.name not in ref]
        extra = [k for k in ref if k not in [o.name for o in objectives]]
        if missing or extra:
            raise fail("reference_point", "give one number per objective: " + ", ".join(o.name for o in objectives))
        for k, v in ref.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise fail(f"reference_point.{k}", f"expected a number, got {v!r}")
        reference = tuple(float(ref[o.name]) for o in objectives)
    search = _mapping(data.get("search", {}), "search", fail)
    _unknown(search, SEARCH_KEYS, "search.", fail)
    if "strategy" in search and search["strategy"] not in STRATEGIES:
        raise fail("search.strategy", f"expected one of {', '.join(STRATEGIES)}, got {search['strategy']!r}")
    if "sampler" in search and search["sampler"] not in SAMPLERS:
        raise fail("search.sampler", f"expected one of {', '.join(SAMPLERS)}, got {search['sampler']!r}")
    for k in ("budget", "pop_size", "chunk_size"):
        if k in search:
            _positive(search[k], f"search.{k}", fail, integer=True)
    if "tol" in search and (isinstance(search["tol"], bool) or not isinstance(search["tol"], (int, float))
                            or search["tol"] < 0):
        raise fail("search.tol", f"expected a non-negative number, got {search['tol']!r}")
    if "seed" in search and (isinstance(search["seed"], bool) or not isinstance(search["seed"], int)
                             or search["seed"] < 0):
        raise fail("search.seed", f"expected a non-negative integer, got {search['seed']!r}")

    resolved = {
        "name": name,
        "description": description,
        "path": where,
        "model": model_id,
        "fixed": {k: v for k, v in fixed.items()},
        "objectives": [{"name": o.name, "direction": o.direction} for o in objectives],
        "constraints": [{"metric": c.metric, "bound": c.bound, "limit": c.limit, "key": c.key} for c in constraints],
        "facility": {"overrides": facility},
        "axes": {a: list(ax.values) for a, ax in common.items()},
        "modes": {m.name: {a.name: list(a.values) for a in m.axes if a.name not in common or a != common[a.name]}
                  for m in modes},
        "reference_point": dict(zip([o.name for o in objectives], reference)) if reference else None,
        "search": dict(search),
        "placement": placement or None,
        "size": offset,
    }
    space = Space(name=name, path=where, model=model_id, objectives=tuple(objectives),
                  constraints=tuple(constraints), fixed=tuple(fixed.items()), modes=tuple(modes),
                  genes=tuple(genes), facility=tuple(facility.items()),
                  reference_point=reference, search=tuple(search.items()), placement=tuple(placement.items()),
                  resolved=resolved)
    sample = _dry_run(space, fixed_keys, fail)
    for i, o in enumerate(objectives):
        if o.name in sample and not _is_number(sample[o.name]):
            raise fail(f"objectives[{i}]", f"metric {o.name!r} is not a number ({sample[o.name].dtype}); "
                                           f"allowed: {', '.join(m for m in metrics if _is_number(sample[m]))}")
    for c in constraints:
        if c.metric in sample and not _is_number(sample[c.metric]):
            raise fail(c.key, f"metric {c.metric!r} is not a number and cannot be limited")
    return space


def _is_number(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


# ----------------------------------------------------------------------------- helpers

def _strip(msg: str, prefix: str) -> str:
    return msg[len(prefix) + 2:] if msg.startswith(prefix + ": ") else msg


def _unknown(d: dict, allowed: tuple[str, ...], prefix: str, fail) -> None:
    for k in d:
        if k not in allowed:
            raise fail(f"{prefix}{k}", f"unknown key; allowed: {', '.join(allowed)}")


def _mapping(val: Any, key: str, fail) -> dict:
    if val is None:
        return {}
    if not isinstance(val, dict):
        raise fail(key, f"expected a mapping, got {val!r}")
    return val


def _positive(val: Any, key: str, fail, *, integer: bool = False) -> float:
    if isinstance(val, bool) or not isinstance(val, (int, float)) or (integer and not float(val).is_integer()):
        raise fail(key, f"expected a positive {'integer' if integer else 'number'}, got {val!r}")
    if val <= 0:
        raise fail(key, f"expected a positive {'integer' if integer else 'number'}, got {val!r}")
    return int(val) if integer else float(val)


def _default_direction(metric: str) -> str:
    return direction(metric)


def _kind(col: str) -> str:
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


def _column_default(col: str) -> Any:
    return schema.COLUMNS.get(col)


def _as_array(col: str, values: tuple | list) -> np.ndarray:
    kind = _kind(col)
    if kind == "str":
        return np.array([str(v) for v in values], dtype=str)
    if kind == "bool":
        return np.array(values, dtype=bool)
    if kind == "int":
        return np.array(values, dtype=np.int64)
    return np.array(values, dtype=float)


def _check_value(col: str, val: Any, key: str, fail) -> Any:
    kind = _kind(col)
    if kind == "str":
        if not isinstance(val, str):
            raise fail(key, f"expected a string, got {val!r}")
        _check_category(col, val, key, fail)
        return val
    if kind == "bool":
        if not isinstance(val, bool):
            raise fail(key, f"expected true or false, got {val!r}")
        return val
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise fail(key, f"expected a number, got {val!r}")
    if kind == "int":
        if not float(val).is_integer():
            raise fail(key, f"expected an integer, got {val!r}")
        return int(val)
    return float(val)


def _check_category(col: str, val: str, key: str, fail) -> None:
    if col == "device" or col.endswith("_device"):
        from dse.catalog.devices import get_device
        try:
            get_device(val)
        except DSEError as exc:
            raise fail(key, _strip(str(exc), "device")) from None
    elif col.endswith("dtype") and not (col == "weight_dtype" and val == "native"):
        from dse.catalog import dtypes
        try:
            dtypes.normalize(val, field=col)
        except DSEError as exc:
            raise fail(key, _strip(str(exc), col)) from None


def _expand(spec: dict, col: str, key: str, fail) -> list:
    """{range: [a, b(, step)]} | {pow2: [a, b]} | {linspace: [a, b, n]} -> values (inclusive)."""
    if len(spec) != 1 or next(iter(spec)) not in RANGE_FORMS:
        raise fail(key, f"expected a list of values or one of {{range: [start, stop, step]}}, "
                        f"{{pow2: [lo, hi]}}, {{linspace: [lo, hi, n]}}, got {spec!r}")
    form, args = next(iter(spec.items()))
    key = f"{key}.{form}"
    if (not isinstance(args, list) or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
        raise fail(key, f"expected a list of numbers, got {args!r}")
    if form == "range":
        if len(args) not in (2, 3):
            raise fail(key, f"expected [start, stop] or [start, stop, step], got {args!r}")
        start, stop = args[0], args[1]
        step = args[2] if len(args) == 3 else 1
        if step <= 0:
            raise fail(key, f"step must be positive, got {step!r}")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        vals = [start + i * step for i in range(max(n, 0))]
        if all(isinstance(a, int) for a in args):
            vals = [int(v) for v in vals]
        else:
            vals = [round(float(v), 12) for v in vals]
    elif form == "pow2":
        if len(args) != 2 or not all(float(a).is_integer() and a >= 1 for a in args):
            raise fail(key, f"expected [lo, hi] with positive integers, got {args!r}")
        lo, hi = int(args[0]), int(args[1])
        vals, v = [], 1
        while v <= hi:
            if v >= lo:
                vals.append(v)
            v *= 2
    else:
        if len(args) != 3 or not float(args[2]).is_integer() or args[2] < 1:
            raise fail(key, f"expected [lo, hi, n] with n a positive integer, got {args!r}")
        vals = [round(float(v), 12) for v in np.linspace(args[0], args[1], int(args[2]))]
    if not vals:
        raise fail(key, f"{args!r} gives no values: the axis is empty")
    return vals


def _read_axes(spec: Any, where_key: str, columns: dict, fixed: dict, fail) -> dict[str, Axis]:
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise fail(where_key, f"expected a mapping axis -> values, got {spec!r}")
    out: dict[str, Axis] = {}
    allowed = [c for c in columns if c not in ("model", "mode")]
    for col, val in spec.items():
        key = f"{where_key}.{col}"
        if col == "mode":
            raise fail(key, "list serving modes under modes:, not as an axis")
        if col == "model":
            raise fail(key, "the scenario names one model under model:")
        if col not in columns:
            raise fail(key, f"unknown axis; allowed: {', '.join(allowed)}")
        if col in fixed and fixed[col] is not None and col != "model":
            raise fail(key, f"also fixed elsewhere in the scenario; give {col} in one place")
        if isinstance(val, dict):
            values = _expand(val, col, key, fail)
        elif isinstance(val, list):
            values = val
            if not values:
                raise fail(key, "empty list: the axis needs at least one value")
        else:
            values = [val]
        checked = []
        for i, v in enumerate(values):
            cv = _check_value(col, v, f"{key}[{i}]" if isinstance(val, list) else key, fail)
            if cv in checked:
                raise fail(key, f"value {v!r} listed twice")
            checked.append(cv)
        out[col] = Axis(col, tuple(checked), key)
    return out


def _dry_run(space: Space, fixed_keys: dict[str, str], fail) -> pd.DataFrame:
    """Evaluate every axis value once so that bad values fail at load time, with their key;
    returns one evaluated row (its dtypes tell which metrics are numbers)."""

    sample = None
    for m in space.modes:
        base = {a.name: a.values[0] for a in m.axes}
        base["mode"] = m.name
        try:
            sample = evaluate(strict=False, **dict(space.fixed), **base)
        except DSEError as exc:  # the mode itself, or a fixed (workload) value
            msg = str(exc)
            key = next((k for c, k in fixed_keys.items() if f"{c}" in msg and c != "model"), f"modes.{m.name}")
            raise fail("modes" if key == "modes.agg" and len(space.modes) == 1 else key, msg) from None
        for a in m.axes:
            if a.size == 1:
                continue
            cols = {**dict(space.fixed), **base, a.name: list(a.values)}
            try:
                evaluate(strict=False, **cols)
            except DSEError as exc:
                raise fail(a.key, str(exc)) from None
    return sample
