"""What the report shows, computed without drawing it (no plotly here).

`load_run(run_dir)` reads a results directory (`run.json`, `pareto.csv`,
`configs.parquet`, optionally `validation.json`) into a `RunData`: the whole feasible
Pareto set from `pareto.csv`, and a bounded, deterministic, stratified sample of the
rest from `configs.parquet` (read in two passes, so a sweep of millions of rows never
sits in memory whole). The other functions turn a `RunData` into plain arrays and
strings for each view: scatter series per objective pair (and the 3-D view), hover
text, parallel-coordinates dimensions, table rows and the run facts. `dse.report.html`
only draws them.

It relies on nothing but the results-directory contract: configuration columns are
every column that is not a metric (`dse.schema.METRICS`) nor `is_pareto`; objectives come
from `run.json` as `[{"name": METRIC, "direction": "min"|"max"}]`.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dse.errors import DSEError
from dse.pareto import pareto_mask
from dse.schema import METRIC_INFO, METRICS, direction, metric_label

RUN_JSON, PARETO_CSV, CONFIGS_PARQUET, VALIDATION_JSON = "run.json", "pareto.csv", "configs.parquet", "validation.json"

# metrics shown on hover and in the table, in this order, after the objectives
KEY_METRICS = ("ttft_ms", "tpot_ms", "tokens_per_s_per_user", "tokens_per_s_per_gpu", "tokens_per_s",
               "usd_per_mtok", "joules_per_token", "power_w", "usd_per_hour", "memory_gb_per_gpu")
NON_CONFIG = frozenset({"feasible", "infeasible_reason", "infeasible_code", "is_pareto", "bottleneck", "meets_slo", "config_id",
                        "eval_index"})
# configuration columns shown on hover for every point, whether they vary or not
CORE_CONFIG = ("device", "mode", "tp", "pp", "ep", "dp", "weight_dtype", "kv_dtype", "batch_size")
# role-prefixed columns only mean something in their mode
ROLE_MODES = {"prefill": "disagg", "decode": "disagg", "attn": "afd", "ffn": "afd"}
GROUP_COLUMNS = ("device", "mode", "prefill_device", "decode_device", "attn_device", "ffn_device")
SCENARIO_KEYS = ("name", "description", "model", "workload", "slo", "slos", "constraints", "axes", "facility")
RUN_KEYS = ("strategy", "seed", "n_evaluated", "n_feasible", "eval_seconds", "wall_seconds", "hypervolume",
            "versions", "created", "timestamp")

MAX_DOMINATED = 8000    # feasible, dominated configurations drawn faint behind the front
MAX_INFEASIBLE = 1000   # infeasible ones (hidden until clicked in the legend)
MAX_TABLE_ROWS = 2000
TEXT_BUDGET = 3_000_000  # bytes of hover text in the page; the background is thinned to fit
MAX_GROUPS = 10         # colours; a finer grouping with more is coarsened (see choose_groups)


def _metrics() -> frozenset[str]:
    return frozenset(METRICS) | frozenset(METRIC_INFO)


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "min" | "max"

    @property
    def label(self) -> str:
        return metric_label(self.name)

    @property
    def arrow(self) -> str:
        return "↓" if self.direction == "min" else "↑"


@dataclass
class RunData:
    run_dir: Path
    run: dict[str, Any]
    objectives: list[Objective]
    pareto: pd.DataFrame       # every row of pareto.csv, with a "group" column
    background: pd.DataFrame   # sampled non-Pareto rows of configs.parquet, with "group" and "feasible"
    n_configs: int             # rows of configs.parquet (0 if absent)
    n_feasible: int
    n_dominated: int           # feasible rows that are not Pareto-optimal
    n_infeasible: int
    groups: list[str]          # colour groups, stable order (the colour index is the position)
    config_columns: list[str]  # configuration columns worth showing (core + varying)
    constant_config: dict[str, Any]  # configuration columns that never vary in this run
    validation: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PointSet:
    """Points of one role and colour group, shared by every view (the hover text and
    metrics are stored once in the page, whatever the number of plots)."""
    key: str          # unique, e.g. "pareto:b200_sxm"
    role: str         # "pareto" | "dominated" | "infeasible"
    group: str        # colour group ("" for infeasible)
    rows: pd.DataFrame
    text: np.ndarray  # hover text: the configuration (HTML line breaks)
    custom: np.ndarray  # (n, len(hover_metrics)) float32 metric values for the hover


@dataclass
class Series:
    """One trace: the coordinates of a PointSet (key) on the axes of one view, or the
    2-D front of a pair (role "front", no key)."""
    role: str
    group: str
    key: str | None
    x: np.ndarray     # float32
    y: np.ndarray
    z: np.ndarray | None = None


@dataclass
class ScatterData:
    axes: list[Objective]         # 2 or 3
    log: list[bool]               # log axis per objective
    series: list[Series]

    @property
    def title(self) -> str:
        return " vs ".join(metric_label(o.name, unit=False) for o in self.axes)


@dataclass
class ParcoordsDim:
    label: str
    values: np.ndarray           # float64
    tickvals: list[float] | None = None
    ticktext: list[str] | None = None


@dataclass
class ParcoordsData:
    dims: list[ParcoordsDim]
    color: np.ndarray            # group index per line
    groups: list[str]


@dataclass
class TableData:
    columns: list[str]           # header labels
    numeric: list[bool]
    rows: list[list[Any]]
    n_total: int


# ----------------------------------------------------------------------------- loading



def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DSEError(f"{path}: not found (is this a dse results directory?)") from None
    except (OSError, ValueError) as exc:
        raise DSEError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DSEError(f"{path}: expected a JSON object")
    return data


def parse_objectives(run: dict[str, Any], where: Path) -> list[Objective]:
    raw = run.get("objectives")
    if not isinstance(raw, list) or not raw:
        raise DSEError(f"{where}: objectives: expected a non-empty list of {{name, direction}}")
    out = []
    for i, o in enumerate(raw):
        if isinstance(o, str):
            o = {"name": o, "direction": "min"}
        if not isinstance(o, dict) or "name" not in o:
            raise DSEError(f"{where}: objectives[{i}]: expected {{name, direction}}")
        d = str(o.get("direction", "min")).lower()
        if d not in ("min", "max"):
            raise DSEError(f"{where}: objectives[{i}].direction: expected 'min' or 'max', got {d!r}")
        out.append(Objective(str(o["name"]), d))
    return out


def load_run(run_dir: str | Path, *, max_dominated: int = MAX_DOMINATED, max_infeasible: int = MAX_INFEASIBLE,
             seed: int = 0) -> RunData:
    """Read a results directory; the Pareto set whole, the rest as a bounded sample."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DSEError(f"{run_dir}: not a directory (expected a dse results directory)")
    run = _read_json(run_dir / RUN_JSON)
    objectives = parse_objectives(run, run_dir / RUN_JSON)
    obj_names = [o.name for o in objectives]

    pareto_path = run_dir / PARETO_CSV
    try:
        # "" stays "" (role columns left blank mean "inherit"), only NaN spelt out is NaN
        pareto = pd.read_csv(pareto_path, keep_default_na=False, na_values=["nan", "NaN"])
    except FileNotFoundError:
        raise DSEError(f"{pareto_path}: not found (is this a dse results directory?)") from None
    except (OSError, ValueError) as exc:
        raise DSEError(f"{pareto_path}: cannot read: {exc}") from None
    missing = [m for m in obj_names if m not in pareto.columns]
    if missing:
        raise DSEError(f"{pareto_path}: no column for objective {missing[0]!r}")
    if not len(pareto):  # a header only: no feasible configuration
        pareto = pareto.astype({m: float for m in obj_names})
    for m in obj_names:
        if not pd.api.types.is_numeric_dtype(pareto[m]):
            raise DSEError(f"{pareto_path}: column {m!r} is not numeric")
    notes: list[str] = []

    cpath = run_dir / CONFIGS_PARQUET
    if cpath.exists():
        background, counts = _sample_configs(cpath, obj_names, max_dominated=max_dominated,
                                             max_infeasible=max_infeasible, seed=seed)
    else:
        notes.append(f"{CONFIGS_PARQUET} not found: only the Pareto set is shown")
        background = pareto.iloc[:0].copy()
        background["feasible"] = pd.Series(dtype=bool)
        counts = {"n": 0, "feasible": len(pareto), "dominated": 0}
    n_configs = counts["n"]
    n_feasible = int(run.get("n_feasible", counts["feasible"])) if not n_configs else counts["feasible"]
    n_dominated = counts["dominated"]

    metrics = _metrics()
    every = [c for c in dict.fromkeys([*pareto.columns, *background.columns]) if c not in metrics
             and c not in NON_CONFIG and c not in obj_names and not c.startswith("_")]
    both = pd.concat([pareto[[c for c in every if c in pareto.columns]],
                      background[[c for c in every if c in background.columns]]], ignore_index=True)
    every = sorted(every, key=_config_order)
    constant: dict[str, Any] = {}
    config_cols = []
    for c in every:
        vals = both[c].dropna().unique() if c in both.columns else []
        if len(vals) <= 1 and c not in CORE_CONFIG:
            role_default = c.split("_", 1)[0] in ROLE_MODES and (len(vals) == 0 or _is_blank(vals[0])
                                                                 or (_is_number(vals[0]) and vals[0] == 0))
            if len(vals) == 1 and not _is_blank(vals[0]) and not role_default:
                constant[c] = _py(vals[0])
            continue
        config_cols.append(c)

    pareto = pareto.copy()
    pareto["group"], background["group"] = choose_groups(pareto, background)
    feas_bg = background["group"][background["feasible"].astype(bool)] if len(background) else []
    groups = sorted(set(pareto["group"]) | set(feas_bg))

    validation = None
    vpath = run_dir / VALIDATION_JSON
    if vpath.exists():
        validation = _read_json(vpath)

    return RunData(run_dir=run_dir, run=run, objectives=objectives, pareto=pareto.reset_index(drop=True),
                   background=background.reset_index(drop=True), n_configs=n_configs, n_feasible=n_feasible,
                   n_dominated=n_dominated, n_infeasible=max(n_configs - counts["feasible"], 0), groups=groups,
                   config_columns=config_cols, constant_config=constant, validation=validation, notes=notes)


_ORDER = ("device", "mode", "num_gpus", "tp", "pp", "ep", "dp", "replicas", "weight_dtype", "kv_dtype", "batch_size")


def _config_order(c: str) -> tuple[int, int]:
    """Canonical column order: the core axes, then role columns by role, then the rest."""
    if c in _ORDER:
        return (0, _ORDER.index(c))
    role = c.split("_", 1)[0]
    if role in ROLE_MODES:
        return (1, list(ROLE_MODES).index(role))
    return (2, 0)


def _role_mask(df: pd.DataFrame, column: str) -> np.ndarray:
    """Rows where a role column means something (its mode); True for other columns."""
    role = column.split("_", 1)[0]
    if role not in ROLE_MODES:
        return np.ones(len(df), bool)
    return (_str(_col(df, "mode", "agg"), "agg") == ROLE_MODES[role]).to_numpy()


def _col(df: pd.DataFrame, name: str, default: Any) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([default] * len(df), index=df.index, dtype=object)


def _str(s: pd.Series, blank: str = "") -> pd.Series:
    return s.astype(object).where(s.notna(), blank).astype(str)


def _is_blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v == "") or (isinstance(v, float) and math.isnan(v))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _sample_configs(path: Path, objectives: list[str], *, max_dominated: int, max_infeasible: int, seed: int
                    ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Pass 1 reads the few columns that decide the sample; pass 2 streams the file and
    keeps only the chosen rows, so memory stays bounded for any size of sweep."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise DSEError(f"{path}: not a readable parquet file: {exc}") from None
    names = pf.schema_arrow.names
    missing = [m for m in objectives if m not in names]
    if missing:
        raise DSEError(f"{path}: no column for objective {missing[0]!r}")
    n = pf.metadata.num_rows
    strata_cols = [c for c in GROUP_COLUMNS if c in names]
    light = pf.read(columns=[c for c in ("is_pareto", "feasible", *objectives, *strata_cols) if c in names])

    flags = {name: light.column(name).to_numpy(zero_copy_only=False).astype(bool) if name in light.column_names
             else np.full(n, default) for name, default in (("feasible", True), ("is_pareto", False))}
    feasible, is_pareto = flags["feasible"], flags["is_pareto"]
    finite = np.ones(n, dtype=bool)
    for m in objectives:
        finite &= np.isfinite(light.column(m).to_numpy(zero_copy_only=False).astype(float))
    codes = np.zeros(n, dtype=np.int64)
    for c in strata_cols:
        col = light.column(c)
        if pa.types.is_dictionary(col.type):  # row groups may carry different dictionaries
            col = col.cast(col.type.value_type)
        enc = pc.dictionary_encode(col).combine_chunks()
        idx = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        codes = codes * (len(enc.dictionary) + 1) + idx
    counts = {"n": n, "feasible": int(feasible.sum()), "dominated": int((feasible & ~is_pareto).sum())}
    del light

    rng = np.random.default_rng(seed)
    chosen = []
    for want, cap in ((feasible & ~is_pareto & finite, max_dominated), (~feasible & finite, max_infeasible)):
        chosen.append(stratified_sample(codes, want, cap, rng))
    sel = np.sort(np.concatenate(chosen))
    if sel.size == 0:
        return _plain(pf.schema_arrow.empty_table().to_pandas()), counts

    parts = []
    offset = 0
    for batch in pf.iter_batches(batch_size=1 << 20):
        lo, hi = np.searchsorted(sel, [offset, offset + batch.num_rows])
        if hi > lo:
            parts.append(batch.take(pa.array(sel[lo:hi] - offset)))
        offset += batch.num_rows
        if hi >= sel.size:
            break
    df = _plain(pa.Table.from_batches(parts).to_pandas())
    if "feasible" not in df.columns:
        df["feasible"] = True
    df["feasible"] = df["feasible"].astype(bool)
    return df, counts


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns (parquet dictionaries) as plain strings, blanks as ""."""
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(object).where(df[c].notna(), "").astype(str)
    return df


def stratified_sample(codes: np.ndarray, mask: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most `cap` rows where `mask`, spread evenly over the strata `codes`:
    small strata are kept whole and the rest share what is left (water-filling), so
    every device / mode stays visible however lopsided the sweep."""
    idx = np.nonzero(mask)[0]
    if idx.size <= cap:
        return idx
    strata, inverse, sizes = np.unique(codes[idx], return_inverse=True, return_counts=True)
    quota = allocate(sizes, cap)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for s in range(len(strata)):
        members = idx[order[starts[s]:starts[s + 1]]]
        k = int(quota[s])
        if k >= members.size:
            out.append(members)
        elif k > 0:
            out.append(members[rng.choice(members.size, size=k, replace=False)])
    return np.sort(np.concatenate(out)) if out else idx[:0]


def allocate(sizes: np.ndarray, cap: int) -> np.ndarray:
    """Split `cap` over strata of `sizes`: equal shares, small strata capped at their size."""
    sizes = np.asarray(sizes, dtype=np.int64)
    quota = np.zeros_like(sizes)
    left = int(cap)
    open_ = sizes > 0
    while left > 0 and open_.any():
        share = max(left // int(open_.sum()), 1)
        give = np.where(open_, np.minimum(sizes - quota, share), 0)
        if give.sum() > left:  # hand out the last few one by one, in order
            give = np.where(open_ & (np.cumsum(open_) <= left), 1, 0)
        quota += give
        left -= int(give.sum())
        open_ = sizes > quota
    return quota


# ----------------------------------------------------------------------------- per-point text

def group_labels(df: pd.DataFrame, level: str = "roles") -> np.ndarray:
    """Colour group of each row at one level of detail: "roles" = its device, or its
    role devices (prefill+decode, attn+ffn) when its mode splits the work over
    different ones; "device" = its device column (else its first role device);
    "mode" = its serving mode."""
    n = len(df)
    if not n:
        return np.empty(0, dtype=object)
    mode = _str(_col(df, "mode", "agg"), "agg")
    if level == "mode":
        return mode.to_numpy(dtype=object)
    dev = _str(_col(df, "device", ""))
    for c in GROUP_COLUMNS[2:]:  # a blank device column falls back to the first role device
        if c in df.columns:
            dev = dev.where(dev != "", _str(df[c]))
    dev = dev.where(dev != "", "?")
    out = dev.copy()
    if level == "roles":
        for m, (a, b) in (("disagg", ("prefill_device", "decode_device")), ("afd", ("attn_device", "ffn_device"))):
            if a not in df.columns and b not in df.columns:
                continue
            ra, rb = _str(_col(df, a, "")), _str(_col(df, b, ""))
            ra = ra.where(ra != "", dev)
            rb = rb.where(rb != "", dev)
            split = (mode == m) & (ra != rb)
            out = out.where(~split, ra + "+" + rb)
    return out.to_numpy(dtype=object)


def choose_groups(pareto: pd.DataFrame, background: pd.DataFrame, max_groups: int = MAX_GROUPS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The finest colouring with at most `max_groups` colours over the Pareto set and the
    feasible sample: role devices (+ mode when several), then device (+ mode), then
    device, then mode."""
    feas = background["feasible"].astype(bool).to_numpy() if len(background) else np.zeros(0, bool)
    modes = set(_str(_col(pareto, "mode", "agg"), "agg")) | set(_str(_col(background, "mode", "agg"), "agg"))
    best = None
    for level, with_mode in (("roles", True), ("device", True), ("device", False), ("mode", False)):
        if with_mode and len(modes) < 2:
            continue
        labels = []
        for df in (pareto, background):
            g = group_labels(df, level)
            if with_mode and len(df):
                g = g + " · " + _str(_col(df, "mode", "agg"), "agg").to_numpy(dtype=object)
            labels.append(g)
        best = labels
        if len(set(labels[0]) | set(labels[1][feas])) <= max_groups:
            break
    return best[0], best[1]


def fmt_value(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return ""
        if math.isinf(f):
            return "∞" if f > 0 else "-∞"
        if f == round(f) and abs(f) < 1e15:
            return str(int(round(f)))
        return f"{f:.4g}"
    return str(v)


def hover_text(df: pd.DataFrame, config_columns: list[str]) -> np.ndarray:
    """The configuration of each row as a few HTML lines: GPUs and devices, mode,
    per-role pools, parallelism, dtypes and batch, other varying axes, what binds it."""
    cols = [c for c in config_columns if c in df.columns]
    roles = {c: c.split("_", 1)[0] for c in cols if c.split("_", 1)[0] in ROLE_MODES}
    par = [c for c in ("tp", "pp", "ep", "dp", "replicas") if c in cols]
    dtype_batch = [c for c in ("weight_dtype", "kv_dtype", "batch_size") if c in cols]
    short = {"weight_dtype": "weights", "kv_dtype": "kv", "batch_size": "batch"}
    other = [c for c in cols if c not in roles and c not in (*par, *dtype_batch, "device", "mode")]
    recs = df.to_dict("records")
    out = np.empty(len(recs), dtype=object)
    for i, r in enumerate(recs):
        mode = str(r.get("mode", "") or "")
        gpus = r.get("num_gpus")
        split = [role for role, m in ROLE_MODES.items() if m == mode and any(v == role for v in roles.values())]
        if split:  # the devices are named per role below
            head = f"<b>{fmt_value(gpus)} GPUs</b>" if gpus is not None else "<b>split</b>"
        elif "device" in r:
            head = f"<b>{fmt_value(gpus)} × {r['device']}</b>" if gpus is not None else f"<b>{r['device']}</b>"
        else:
            head = f"<b>{fmt_value(gpus)} GPUs</b>"
        lines = [head + (f" · {mode}" if mode else "")]
        by_role: dict[str, list[str]] = {role: [] for role in split}
        for c, role in roles.items():
            if ROLE_MODES[role] != mode:
                continue
            v = r[c]
            if _is_blank(v) or (_is_number(v) and v == 0):
                continue  # "" / 0 = inherits the generic column
            name = c.split("_", 1)[1]
            parts = by_role.setdefault(role, [])
            if name == "device":
                parts.insert(0, fmt_value(v))
            else:
                parts.append(f"{name} {fmt_value(v)}")
        for role, parts in by_role.items():
            if _is_blank(r.get(f"{role}_device", "")) and "device" in r:
                parts.insert(0, fmt_value(r["device"]))  # a blank role device inherits the generic one
            lines.append(f"{role}: " + " · ".join(parts))
        if par:
            lines.append(" · ".join(f"{c} {fmt_value(r[c])}" for c in par))
        if dtype_batch:
            lines.append(" · ".join(f"{short[c]} {fmt_value(r[c])}" for c in dtype_batch))
        if other:
            lines.append(" · ".join(f"{c} {fmt_value(r[c])}" for c in other if not _is_blank(r[c])))
        feasible = bool(r.get("feasible", True))
        if not feasible:
            lines.append(f"infeasible: {r.get('infeasible_reason', '')}")
        elif r.get("bottleneck"):
            miss = "meets_slo" in r and not _is_blank(r["meets_slo"]) and not bool(r["meets_slo"])
            lines.append(f"bound by {r['bottleneck']}" + (" · misses SLO" if miss else ""))
        out[i] = "<br>".join(lines)
    return out


def hover_metrics(rd: RunData) -> list[str]:
    """Metric columns shown on hover: the objectives, then the key metrics present."""
    obj = [o.name for o in rd.objectives]
    cols = set(rd.pareto.columns) | set(rd.background.columns)
    return [m for m in obj + [m for m in KEY_METRICS if m not in obj] if m in cols]


def point_sets(rd: RunData, *, text_budget: int = TEXT_BUDGET) -> list[PointSet]:
    """The Pareto set per colour group, the sampled dominated rest per group and the
    infeasible sample, each with its hover text and metrics (computed once)."""
    hm = hover_metrics(rd)

    def make(role: str, group: str, df: pd.DataFrame) -> PointSet:
        custom = np.column_stack([df[m].to_numpy(dtype=np.float32) if m in df else
                                  np.full(len(df), np.nan, np.float32) for m in hm]) if hm else \
            np.zeros((len(df), 0), np.float32)
        return PointSet(key=f"{role}:{group}", role=role, group=group, rows=df,
                        text=hover_text(df, rd.config_columns), custom=custom)

    out = []
    bg = rd.background
    feas = bg["feasible"].astype(bool).to_numpy() if len(bg) else np.zeros(0, bool)
    for g in rd.groups:
        d = bg[feas & (bg["group"] == g).to_numpy()] if len(bg) else bg
        if len(d):
            out.append(make("dominated", g, d))
    if (~feas).any():
        out.append(make("infeasible", "", bg[~feas]))
    for g in rd.groups:
        p = rd.pareto[rd.pareto["group"] == g]
        if len(p):
            out.append(make("pareto", g, p))
    return _within_budget(out, text_budget)


def _within_budget(sets: list[PointSet], budget: int) -> list[PointSet]:
    """Thin the background sets evenly until all hover text fits in `budget` bytes (the
    Pareto sets are never thinned), so long configurations cannot blow up the page."""
    size = {ps.key: sum(len(t.encode()) for t in ps.text) for ps in sets}
    fixed = sum(size[ps.key] for ps in sets if ps.role == "pareto")
    flexible = sum(size[ps.key] for ps in sets if ps.role != "pareto")
    if flexible <= max(budget - fixed, 0) or not flexible:
        return sets
    keep = max(budget - fixed, 0) / flexible
    out = []
    for ps in sets:
        if ps.role != "pareto":
            n = int(len(ps.rows) * keep)
            idx = np.unique(np.linspace(0, len(ps.rows) - 1, n).round().astype(int)) if n else np.zeros(0, int)
            ps = PointSet(ps.key, ps.role, ps.group, ps.rows.iloc[idx], ps.text[idx], ps.custom[idx])
            if not len(ps.rows):
                continue
        out.append(ps)
    return out


# ----------------------------------------------------------------------------- views

def objective_pairs(objectives: list[Objective], available: Any = None) -> list[tuple[Objective, Objective]]:
    """Every pair of objectives; a single objective is set against the first of
    throughput per GPU, TPOT, $/Mtok that the data has (`available` columns)."""
    if len(objectives) == 1:
        cands = [m for m in ("tokens_per_s_per_gpu", "tpot_ms", "usd_per_mtok") if m != objectives[0].name
                 and (available is None or m in available)]
        if not cands:
            return []
        return [(objectives[0], Objective(cands[0], direction(cands[0])))]
    return list(itertools.combinations(objectives, 2))


def nondominated_mask(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """True where a row of `values` (n, k) is not dominated by another row."""
    sign = np.array([1.0 if d == "min" else -1.0 for d in directions])
    return pareto_mask(np.asarray(values, dtype=float) * sign)


def _use_log(*arrays: np.ndarray) -> bool:
    v = np.concatenate([np.asarray(a, dtype=float) for a in arrays if len(a)]) if any(len(a) for a in arrays) else []
    v = np.asarray(v)
    v = v[np.isfinite(v)]
    return bool(v.size and v.min() > 0 and v.max() / v.min() > 30)


def scatter_data(rd: RunData, axes: tuple[Objective, ...] | list[Objective],
                 sets: list[PointSet] | None = None) -> ScatterData:
    """Series for one objective pair (2 axes) or the 3-D view (3 axes): every point set
    on these axes and, for a pair, its 2-D front (the Pareto points that no other
    Pareto point beats on both), sorted along x."""
    axes = list(axes)
    names = [a.name for a in axes]
    sets = point_sets(rd) if sets is None else sets
    out: list[Series] = []
    for ps in sets:
        xyz = [ps.rows[m].to_numpy(dtype=np.float32) for m in names]
        out.append(Series(role=ps.role, group=ps.group, key=ps.key, x=xyz[0], y=xyz[1],
                          z=xyz[2] if len(xyz) > 2 else None))
    par = rd.pareto
    if len(axes) == 2 and len(par):
        vals = par[names].to_numpy(dtype=float)
        ok = np.isfinite(vals).all(axis=1)
        m = np.zeros(len(par), bool)
        m[ok] = nondominated_mask(vals[ok], [a.direction for a in axes])
        front = par[m].sort_values(names)
        out.append(Series(role="front", group="", key=None, x=front[names[0]].to_numpy(np.float32),
                          y=front[names[1]].to_numpy(np.float32)))
    bg = rd.background
    logs = [_use_log(par[m].to_numpy(float), bg[m].to_numpy(float) if len(bg) else np.empty(0)) for m in names]
    return ScatterData(axes=axes, log=logs, series=out)


def parcoords_data(rd: RunData) -> ParcoordsData:
    """The Pareto set over its varying configuration axes and the objectives; a
    categorical axis becomes integer codes with its labels as ticks, a numeric one
    spanning decades is drawn on log10 with its real values as ticks."""
    df = rd.pareto
    dims: list[ParcoordsDim] = []
    cols = [c for c in rd.config_columns if c in df.columns and df[c].nunique(dropna=False) > 1
            and _role_mask(df, c).all()]  # a role column is a line only where every row has that role
    for c in cols + [o.name for o in rd.objectives]:
        s = df[c]
        label = metric_label(c) if c in METRIC_INFO else c
        if c in [o.name for o in rd.objectives]:
            o = next(o for o in rd.objectives if o.name == c)
            label = f"{metric_label(c)} {o.arrow}"
        if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
            s = s.astype(str).fillna("")
            cats = sorted(s.unique().tolist())
            code = {v: i for i, v in enumerate(cats)}
            dims.append(ParcoordsDim(label, s.map(code).to_numpy(dtype=float), list(map(float, range(len(cats)))),
                                     cats))
            continue
        v = s.to_numpy(dtype=float)
        uniq = np.unique(v[np.isfinite(v)])
        if _use_log(v):
            lv = np.log10(v)
            if uniq.size <= 12:
                ticks, text = np.log10(uniq).tolist(), [fmt_value(u) for u in uniq]
            else:
                lo, hi = math.floor(np.nanmin(lv)), math.ceil(np.nanmax(lv))
                ticks = [float(e) for e in range(lo, hi + 1)]
                text = [fmt_value(10.0 ** e) for e in range(lo, hi + 1)]
            dims.append(ParcoordsDim(label + " (log)", lv, ticks, text))
        elif uniq.size <= 12:
            dims.append(ParcoordsDim(label, v, uniq.tolist(), [fmt_value(u) for u in uniq]))
        else:
            dims.append(ParcoordsDim(label, v))
    color = df["group"].map({g: i for i, g in enumerate(rd.groups)}).fillna(0).to_numpy(dtype=float)
    return ParcoordsData(dims=dims, color=color, groups=rd.groups)


def table_data(rd: RunData, *, max_rows: int = MAX_TABLE_ROWS) -> TableData:
    """The Pareto set, sorted by the first objective (best first), at most `max_rows`."""
    first = rd.objectives[0]
    df = rd.pareto.sort_values(first.name, ascending=first.direction == "min", kind="stable")
    obj = [o.name for o in rd.objectives]
    cols = [c for c in rd.config_columns if c in df.columns and not _blank_column(df[c])]
    if "num_gpus" in df.columns:
        cols = sorted(cols + ["num_gpus"], key=_config_order)
    metrics = obj + [m for m in KEY_METRICS if m in df.columns and m not in obj]
    extra = [c for c in ("bottleneck",) if c in df.columns]
    show = cols + metrics + extra
    sub = df[show].head(max_rows)
    headers = [(f"{metric_label(c)} {next(o.arrow for o in rd.objectives if o.name == c)}" if c in obj else
                metric_label(c) if c in METRIC_INFO else c) for c in show]
    numeric = [pd.api.types.is_numeric_dtype(sub[c]) and not pd.api.types.is_bool_dtype(sub[c]) for c in show]
    head = df.head(max_rows)
    sub = sub.astype(object).copy()
    for c in show:
        m = _role_mask(head, c)
        if not m.all():
            sub.loc[~m, c] = ""  # prefill_* means nothing in an agg row
    rows = [[_py(v) for v in rec] for rec in sub.itertuples(index=False, name=None)]
    return TableData(columns=headers, numeric=numeric, rows=rows, n_total=len(df))


def _blank_column(s: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        return bool((s.fillna(0) == 0).all()) and s.name not in CORE_CONFIG
    return bool((s.fillna("").astype(str) == "").all())


def facts(rd: RunData) -> dict[str, dict[str, Any]]:
    """The scenario, the run facts and the validation figures, as nested plain dicts."""
    run = rd.run
    scen_src = run["scenario"] if isinstance(run.get("scenario"), dict) else run
    scenario = {k: scen_src[k] for k in SCENARIO_KEYS if k in scen_src}
    if scen_src is not run:
        scenario.update({k: v for k, v in scen_src.items() if k not in scenario})
    if rd.constant_config:
        scenario["fixed in every configuration"] = rd.constant_config
    facts_run: dict[str, Any] = {k: run[k] for k in RUN_KEYS if k in run}
    facts_run["objectives"] = ", ".join(f"{metric_label(o.name)} {o.arrow}" for o in rd.objectives)
    facts_run["configurations in configs.parquet"] = rd.n_configs
    facts_run["feasible"] = rd.n_feasible
    facts_run["Pareto-optimal"] = len(rd.pareto)
    feas = rd.background["feasible"].astype(bool) if len(rd.background) else pd.Series([], dtype=bool)
    facts_run["dominated (sampled for the plots)"] = f"{rd.n_dominated:,} ({int(feas.sum()):,})"
    facts_run["infeasible (sampled for the plots)"] = f"{rd.n_infeasible:,} ({int((~feas).sum()):,})"
    used = set(SCENARIO_KEYS) | set(RUN_KEYS) | {"objectives", "scenario"}
    other = {k: v for k, v in run.items() if k not in used}
    out = {"scenario": scenario, "run": facts_run}
    if other:
        out["more"] = other
    if rd.validation is not None:
        out["validation"] = rd.validation.get("summary", rd.validation)
    return out
