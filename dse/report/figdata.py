"""What the report shows, computed without drawing it (no plotly here): from a `RunData`
(dse.report.rundata) to plain arrays and strings for each view: scatter series per
objective pair, hover text, parallel-coordinates dimensions, table rows and the run
facts. `dse.report.html` only draws them.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dse.pareto import pareto_mask
from dse.report.rundata import (
    Objective, RunData, _config_order, _role_mask, _is_blank, _is_number, _py, ROLE_MODES, KEY_METRICS,
    CORE_CONFIG, SCENARIO_KEYS, RUN_KEYS, MAX_TABLE_ROWS, TEXT_BUDGET)
from dse.schema import METRIC_INFO, direction, metric_label

__all__ = ["axis_ticks", "tick_label", "PointSet", "Series", "ScatterData", "ParcoordsDim", "ParcoordsData",
           "TableData", "fmt_value", "hover_text", "hover_metrics", "point_sets", "objective_pairs",
           "nondominated_mask", "scatter_data", "parcoords_data", "table_data", "facts", "STANDARD_VIEW",
           "standard_view_available", "question", "why_infeasible"]

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
    # the 80 % interval (p10, p90) of x and y where the run has one (Pareto points)
    x_band: tuple[np.ndarray, np.ndarray] | None = None
    y_band: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class ScatterData:
    axes: list[Objective]         # 2 or 3
    log: list[bool]               # log axis per objective
    series: list[Series]
    ticks: list[dict] = field(default_factory=list)   # per axis: range, and tick values and labels on a log axis

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


# ----------------------------------------------------------------------------- per-point text

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


_ROW_KEYS = ("mode", "num_gpus", "device", "feasible", "infeasible_reason", "bottleneck", "meets_slo")


def hover_text(df: pd.DataFrame, config_columns: list[str]) -> np.ndarray:
    """The configuration of each row as a few HTML lines: GPUs and devices, mode,
    per-role pools, parallelism, dtypes and batch, other varying axes, what binds it.
    Built column by column on object arrays (each distinct value formatted once, one
    pass per mode), not row by row: it was the report's largest cost on a big sweep."""
    cols = [c for c in config_columns if c in df.columns]
    roles = {c: c.split("_", 1)[0] for c in cols if c.split("_", 1)[0] in ROLE_MODES}
    par = [c for c in ("tp", "pp", "ep", "dp", "replicas") if c in cols]
    dtype_batch = [c for c in ("weight_dtype", "kv_dtype", "batch_size") if c in cols]
    short = {"weight_dtype": "weights", "kv_dtype": "kv", "batch_size": "batch"}
    other = [c for c in cols if c not in roles and c not in (*par, *dtype_batch, "device", "mode")]
    keys = [c for c in dict.fromkeys([*cols, *_ROW_KEYS, *(f"{r}_device" for r in set(roles.values()))])
            if c in df.columns]
    n = len(df)
    out = np.empty(n, dtype=object)
    if not n:
        return out
    col = {c: _Column(df[c]) for c in keys}
    mode = col["mode"].map(lambda v: str(v or "")) if "mode" in col else np.full(n, "", object)
    for m in dict.fromkeys(mode.tolist()):
        rows = np.flatnonzero(mode == m)
        out[rows] = _hover_mode(m, {c: k.take(rows) for c, k in col.items()}, len(rows), roles, par,
                                dtype_batch, short, other)
    return out


class _Column:
    """A column's values as Python objects, coded by distinct value: `map(f)` applies f
    once per distinct value and returns the per-row object array."""

    def __init__(self, s: pd.Series, codes: np.ndarray | None = None, uniques: list | None = None):
        if codes is None and s.dtype != object:     # numbers, bools, categories, strings: pandas codes them
            codes, uniq = pd.factorize(s, use_na_sentinel=False)
            codes, uniques = np.asarray(codes, dtype=np.int64), list(uniq.tolist() if hasattr(uniq, "tolist")
                                                                     else uniq)
        if codes is None:
            values = s.tolist()
            index: dict = {}
            try:
                codes = np.fromiter((index.setdefault((type(v), v), len(index)) for v in values), np.int64,
                                    len(values))
                uniques = [v for _, v in index]
            except TypeError:              # unhashable values: one code per row
                codes, uniques = np.arange(len(values)), values
        self.codes, self.uniques = codes, uniques

    def take(self, rows: np.ndarray) -> "_Column":
        return _Column(None, self.codes[rows], self.uniques)

    def map(self, f) -> np.ndarray:
        table = np.empty(len(self.uniques), dtype=object)
        table[:] = [f(v) for v in self.uniques]
        return table[self.codes]


def _joined(parts: list[tuple[np.ndarray, np.ndarray | None]], sep: str, n: int) -> np.ndarray:
    """Per row, the present parts (mask None: always) joined by sep."""
    acc, has = np.full(n, "", dtype=object), np.zeros(n, dtype=bool)
    for text, present in parts:
        present = np.ones(n, dtype=bool) if present is None else present
        acc = np.where(present, np.where(has, acc + sep, acc) + text, acc)
        has |= present
    return acc


def _hover_mode(mode: str, col: dict[str, _Column], n: int, roles: dict, par: list, dtype_batch: list,
                short: dict, other: list) -> np.ndarray:
    """The hover text of the rows of one mode (the lines a row has depend on its mode)."""
    f = {c: k.map(fmt_value) for c, k in col.items()}
    blank = {c: k.map(_is_blank).astype(bool) for c, k in col.items()}
    split = [role for role, m in ROLE_MODES.items() if m == mode and any(v == role for v in roles.values())]
    gpus = f.get("num_gpus")
    if split:   # the devices are named per role below
        head = "<b>" + gpus + " GPUs</b>" if gpus is not None else np.full(n, "<b>split</b>", object)
    elif "device" in col:
        dev = col["device"].map(str)
        head = "<b>" + gpus + " × " + dev + "</b>" if gpus is not None else "<b>" + dev + "</b>"
    else:
        head = "<b>" + (gpus if gpus is not None else "None") + " GPUs</b>"
    lines = [head + (f" · {mode}" if mode else "")]
    for role in split:
        first, parts = None, []
        for c in (c for c, r in roles.items() if r == role):
            skip = blank[c] | col[c].map(lambda v: _is_number(v) and v == 0).astype(bool)
            if c.split("_", 1)[1] == "device":
                first = (f[c], ~skip)
            else:
                parts.append((c.split("_", 1)[1] + " " + f[c], ~skip))
        dev_blank = blank.get(f"{role}_device", np.ones(n, dtype=bool))
        if "device" in col:     # a blank role device inherits the generic one
            inherit = (f["device"], dev_blank)
            first = inherit if first is None else (np.where(first[1], first[0], f["device"]), first[1] | dev_blank)
        lines.append(f"{role}: " + _joined(([first] if first else []) + parts, " · ", n))
    if par:
        lines.append(_joined([(f"{c} " + f[c], None) for c in par], " · ", n))
    if dtype_batch:
        lines.append(_joined([(f"{short[c]} " + f[c], None) for c in dtype_batch], " · ", n))
    if other:
        lines.append(_joined([(f"{c} " + f[c], ~blank[c]) for c in other], " · ", n))
    text = lines[0]
    for line in lines[1:]:
        text = text + "<br>" + line
    feasible = col["feasible"].map(bool).astype(bool) if "feasible" in col else np.ones(n, dtype=bool)
    reason = col["infeasible_reason"].map(str) if "infeasible_reason" in col else np.full(n, "", object)
    last = [("infeasible: " + reason, ~feasible)]
    if "bottleneck" in col:
        bound = feasible & col["bottleneck"].map(bool).astype(bool)
        miss = (~blank["meets_slo"] & ~col["meets_slo"].map(bool).astype(bool)) if "meets_slo" in col \
            else np.zeros(n, dtype=bool)
        last.append(("bound by " + col["bottleneck"].map(str) + np.where(miss, " · misses SLO", ""), bound))
    for line, present in last:
        text = np.where(present, text + "<br>" + line, text)
    return text


def hover_metrics(rd: RunData) -> list[str]:
    """Metric columns shown on hover: the objectives, then the key metrics present."""
    obj = [o.name for o in rd.objectives]
    cols = set(rd.pareto.columns) | set(rd.background.columns)
    return [m for m in obj + [m for m in KEY_METRICS if m not in obj] if m in cols]


def point_sets(rd: RunData, *, text_budget: int = TEXT_BUDGET) -> list[PointSet]:
    """The Pareto set per colour group, the sampled dominated rest per group and the
    infeasible sample, each with its hover text and metrics. Both are per row: they are
    built once per frame and cut per set (built per set, their fixed cost was paid a
    dozen times)."""
    hm = hover_metrics(rd)

    def per_row(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        custom = np.column_stack([df[m].to_numpy(dtype=np.float32) if m in df else
                                  np.full(len(df), np.nan, np.float32) for m in hm]) if hm else \
            np.zeros((len(df), 0), np.float32)
        return hover_text(df, rd.config_columns), custom

    def make(role: str, group: str, df: pd.DataFrame, mask: np.ndarray, rows: tuple) -> PointSet:
        return PointSet(key=f"{role}:{group}", role=role, group=group, rows=df[mask], text=rows[0][mask],
                        custom=rows[1][mask])

    out = []
    bg = rd.background
    feas = bg["feasible"].astype(bool).to_numpy() if len(bg) else np.zeros(0, bool)
    bg_rows = per_row(bg) if len(bg) else None
    for g in rd.groups:
        mask = feas & (bg["group"] == g).to_numpy() if len(bg) else feas
        if mask.any():
            out.append(make("dominated", g, bg, mask, bg_rows))
    if (~feas).any():
        out.append(make("infeasible", "", bg, ~feas, bg_rows))
    par_rows = per_row(rd.pareto) if len(rd.pareto) else None
    for g in rd.groups:
        mask = (rd.pareto["group"] == g).to_numpy() if len(rd.pareto) else np.zeros(0, bool)
        if mask.any():
            out.append(make("pareto", g, rd.pareto, mask, par_rows))
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


def _band(rows: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    lo, hi = f"{metric}_p10", f"{metric}_p90"
    if lo not in rows.columns or hi not in rows.columns:
        return None
    return rows[lo].to_numpy(dtype=np.float32), rows[hi].to_numpy(dtype=np.float32)


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
        bands = [_band(ps.rows, m) if ps.role == "pareto" else None for m in names[:2]]
        out.append(Series(role=ps.role, group=ps.group, key=ps.key, x=xyz[0], y=xyz[1],
                          z=xyz[2] if len(xyz) > 2 else None, x_band=bands[0], y_band=bands[1]))
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
    feas = bg[bg["feasible"].astype(bool)] if len(bg) else bg      # infeasible points start hidden
    cols = [[par[m].to_numpy(float), feas[m].to_numpy(float) if len(feas) else np.empty(0)] for m in names]
    logs = [_use_log(*c) for c in cols]
    ticks = [axis_ticks(np.concatenate(c), log, METRIC_INFO[m].unit if m in METRIC_INFO else "")
             for c, log, m in zip(cols, logs, names)]
    return ScatterData(axes=axes, log=logs, series=out, ticks=ticks)


def tick_label(v: float, unit: str = "") -> str:
    """A tick value in full (20, 500, 2k, 0.05), never a bare mantissa, with its unit."""
    a = abs(v)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            text = f"{v / scale:g}{suffix}"
            break
    else:
        text = f"{v:g}"
    return f"{text} {unit}" if unit else text


def axis_ticks(values: np.ndarray, log: bool, unit: str = "") -> dict:
    """The axis range (log10 units on a log axis) and, on a log axis, ticks at 1-2-5 of
    every decade (decades only when that would crowd the axis), each labelled in full.
    A single value still gets a readable span around it."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & ((v > 0) if log else True)]
    if not v.size:
        return {}
    lo, hi = float(v.min()), float(v.max())
    if not log:
        if hi == lo:
            pad = abs(lo) * 0.1 if lo else 1.0
            return {"range": [lo - pad, hi + pad]}
        pad = (hi - lo) * 0.05
        return {"range": [lo - pad, hi + pad]}
    if hi <= lo * 1.5:
        lo, hi = lo / 2.0, hi * 2.0
    lo, hi = lo / 1.15, hi * 1.15
    mant = (1.0, 2.0, 5.0) if hi / lo <= 1e5 else (1.0,)
    vals = [m * 10.0 ** k for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
            for m in mant if lo <= m * 10.0 ** k <= hi]
    return {"range": [float(np.log10(lo)), float(np.log10(hi))], "tickvals": vals,
            "ticktext": [tick_label(x, unit) for x in vals]}


# drawn after the objectives where a run has them and they vary: what the choice costs in quality
# and how sure it is to meet its SLOs
PARCOORDS_METRICS = ("quality_loss", "meets_slo_prob")


def parcoords_data(rd: RunData) -> ParcoordsData:
    """The Pareto set over its varying configuration axes and the objectives; a
    categorical axis becomes integer codes with its labels as ticks, a numeric one
    spanning decades is drawn on log10 with its real values as ticks."""
    df = rd.pareto
    dims: list[ParcoordsDim] = []
    cols = [c for c in rd.config_columns if c in df.columns and df[c].nunique(dropna=False) > 1
            and _role_mask(df, c).all()]  # a role column is a line only where every row has that role
    objectives = [o.name for o in rd.objectives]
    extra = [m for m in PARCOORDS_METRICS if m in df.columns and m not in objectives and df[m].nunique() > 1]
    for c in cols + objectives + extra:
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


STANDARD_VIEW = (Objective("tokens_per_s_per_user", "max"), Objective("tokens_per_s_per_gpu", "max"))


def standard_view_available(rd: RunData) -> bool:
    """Throughput per GPU against speed per user (the industry's standard view) needs both."""
    return all(o.name in rd.pareto.columns for o in STANDARD_VIEW)


def _limit_text(c: dict) -> str:
    m, lim = c.get("metric", ""), c.get("limit")
    info = METRIC_INFO.get(m)
    unit = f" {info.unit}" if info and info.unit else ""
    return f"{metric_label(m, unit=False)} {'≤' if c.get('bound') == 'max' else '≥'} {_num(lim)}{unit}"


def _num(v: Any) -> str:
    return fmt_value(v) if isinstance(v, (int, float)) else str(v)


def question(rd: RunData) -> list[tuple[str, str]]:
    """The scenario as the question it asks: model, workload, SLOs, limits, what is searched."""
    scen = rd.run.get("scenario") if isinstance(rd.run.get("scenario"), dict) else {}
    fixed = scen.get("fixed", {})
    out = [("Question", str(scen.get("description") or scen.get("name") or "")),
           ("Model", str(scen.get("model", fixed.get("model", ""))))]
    work = [f"{k} {_num(fixed[k])}" for k in ("isl", "osl", "prefix_hit") if k in fixed]
    if work:
        out.append(("Workload", ", ".join(work) + " tokens" if "prefix_hit" not in fixed else ", ".join(work)))
    cons = scen.get("constraints") or rd.run.get("constraints") or []
    if isinstance(cons, dict):          # a scenario as written rather than as resolved
        cons = [{"key": f"constraints.{k}", "metric": k, "bound": "max", "limit": v} for k, v in cons.items()]
    cons = [c for c in cons if isinstance(c, dict)]
    slos = [_limit_text(c) for c in cons if str(c.get("key", "")).startswith("slo")]
    slos += [f"{k} ≤ {_num(v)}" for k, v in (scen.get("slos") or {}).items() if not cons]
    limits = [_limit_text(c) for c in cons if not str(c.get("key", "")).startswith("slo")]
    out.append(("Service levels", "; ".join(slos) if slos else "none"))
    if "own" in fixed:
        limits.append("owned hardware (capex + energy + facility)" if fixed["own"] else "rented at $/GPU-hour")
    fac = (scen.get("facility") or {}).get("overrides") or {}
    limits += [f"facility {k} = {_num(v)}" for k, v in fac.items()]
    out.append(("Limits", "; ".join(limits) if limits else "none"))
    out.append(("Optimising", ", ".join(f"{o.label} {o.arrow}" for o in rd.objectives)))
    axes = [f"{k} ({len(v)}: {', '.join(map(_num, v[:6]))}{', …' if len(v) > 6 else ''})"
            for k, v in (scen.get("axes") or {}).items() if isinstance(v, list)]
    if axes:
        out.append(("Searched, every mode", "; ".join(axes)))
    for mode, spec in (scen.get("modes") or {}).items():
        items = [f"{k} ({len(v)})" if isinstance(v, list) else f"{k} = {_num(v)}" for k, v in (spec or {}).items()]
        out.append((f"Mode {mode}", "; ".join(items) if items else "the shared axes"))
    if scen.get("size"):
        out.append(("Space", f"{int(scen['size']):,} configurations"))
    return out


def why_infeasible(rd: RunData) -> dict[str, list[tuple[str, int]]]:
    """Infeasible configurations per reason code and the most frequent reasons in full."""
    by_code = sorted((rd.reasons.get("by_code") or {}).items(), key=lambda kv: -kv[1])
    return {"by_code": [(k, int(v)) for k, v in by_code], "by_text": list(rd.reasons.get("by_text") or [])}
