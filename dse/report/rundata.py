"""A results directory read back for the report: run.json, pareto.csv and a bounded,
deterministic, stratified sample of configs.parquet (read in two passes, so a sweep of
millions of rows never sits in memory whole), as a `RunData`.

It relies on nothing but the results-directory contract: configuration columns are
every column that is not a metric (`dse.schema.METRICS`) nor `is_pareto`; objectives come
from `run.json` as `[{"name": METRIC, "direction": "min"|"max"}]`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dse.errors import DSEError
from dse.deploy import roles
from dse.deploy.roles import ROLE_MODE as ROLE_MODES
from dse.schema import METRIC_INFO, METRICS, metric_label

__all__ = ["Objective", "RunData", "parse_objectives", "load_run", "stratified_sample", "allocate",
           "group_labels", "choose_groups", "shipped_accuracy"]

RUN_JSON, PARETO_CSV, CONFIGS_PARQUET, VALIDATION_JSON = "run.json", "pareto.csv", "configs.parquet", "validation.json"
RECOMMENDATION_JSON = "recommendation.json"

# metrics shown on hover and in the table, in this order, after the objectives
KEY_METRICS = ("ttft_ms", "tpot_ms", "tokens_per_s_per_user", "tokens_per_s_per_gpu", "tokens_per_s",
               "usd_per_mtok", "joules_per_token", "power_w", "usd_per_hour", "memory_gb_per_gpu", "quality_loss",
               "meets_slo_prob", "tpot_ms_p10", "tpot_ms_p90", "ttft_ms_p10", "ttft_ms_p90")
NON_CONFIG = frozenset({"feasible", "infeasible_reason", "infeasible_code", "is_pareto", "bottleneck", "meets_slo",
                        "config_id", "eval_index", "tie_group", "n_equivalent"})
# configuration columns shown on hover for every point, whether they vary or not
CORE_CONFIG = ("device", "mode", "tp", "pp", "ep", "dp", "weight_dtype", "kv_dtype", "batch_size")
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
    reasons: dict[str, Any] = field(default_factory=dict)   # infeasible rows per reason code and text
    recommendation: dict[str, Any] | None = None          # recommendation.json, when the run wrote one


# ----------------------------------------------------------------------------- loading



def read_json(path: Path) -> dict[str, Any]:
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
             seed: int = 0, configs: Any = None) -> RunData:
    """Read a results directory; the Pareto set whole, the rest as a bounded sample.
    configs: the pyarrow Table configs.parquet holds, if the caller has it in memory (read
    from the file otherwise; the same sample either way)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DSEError(f"{run_dir}: not a directory (expected a dse results directory)")
    run = read_json(run_dir / RUN_JSON)
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
    if configs is not None or cpath.exists():
        background, counts = _sample_configs(cpath, obj_names, max_dominated=max_dominated,
                                             max_infeasible=max_infeasible, seed=seed, table=configs)
    else:
        notes.append(f"{CONFIGS_PARQUET} not found: only the Pareto set is shown")
        background = pareto.iloc[:0].copy()
        background["feasible"] = pd.Series(dtype=bool)
        counts = {"n": 0, "feasible": len(pareto), "dominated": 0, "reasons": {}}
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
    feas_bg = background["group"][background["feasible"].astype(bool)].unique() if len(background) else []
    groups = sorted(set(pareto["group"].unique()) | set(feas_bg))

    validation = read_json(run_dir / VALIDATION_JSON) if (run_dir / VALIDATION_JSON).exists() else None
    rec = read_json(run_dir / RECOMMENDATION_JSON) if (run_dir / RECOMMENDATION_JSON).exists() else None

    return RunData(run_dir=run_dir, run=run, objectives=objectives, pareto=pareto.reset_index(drop=True),
                   background=background.reset_index(drop=True), n_configs=n_configs, n_feasible=n_feasible,
                   n_dominated=n_dominated, n_infeasible=max(n_configs - counts["feasible"], 0), groups=groups,
                   config_columns=config_cols, constant_config=constant, validation=validation, notes=notes,
                   reasons=counts["reasons"], recommendation=rec)


_ORDER = ("device", "mode", "num_gpus", "tp", "pp", "ep", "dp", "replicas", "weight_dtype", "kv_dtype", "batch_size",
          "kv_tier", "kv_tier_gb", "routing")


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


def _sample_configs(path: Path, objectives: list[str], *, max_dominated: int, max_infeasible: int, seed: int,
                    table: Any = None) -> tuple[pd.DataFrame, dict[str, int]]:
    """Pass 1 reads the few columns that decide the sample; pass 2 streams the file and
    keeps only the chosen rows, so memory stays bounded for any size of sweep. `table`:
    the file's contents already in memory (then nothing is read)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if table is not None:
        schema, n = table.schema, table.num_rows
    else:
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise DSEError(f"{path}: not a readable parquet file: {exc}") from None
        schema, n = pf.schema_arrow, pf.metadata.num_rows
    names = schema.names
    missing = [m for m in objectives if m not in names]
    if missing:
        raise DSEError(f"{path}: no column for objective {missing[0]!r}")
    strata_cols = [c for c in GROUP_COLUMNS if c in names]
    light_cols = [c for c in ("is_pareto", "feasible", *objectives, *strata_cols, *REASON_COLUMNS) if c in names]
    light = table.select(light_cols) if table is not None else pf.read(columns=light_cols)

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
    counts = {"n": n, "feasible": int(feasible.sum()), "dominated": int((feasible & ~is_pareto).sum()),
              "reasons": _reason_counts(light, ~feasible)}
    del light

    rng = np.random.default_rng(seed)
    chosen = []
    for want, cap in ((feasible & ~is_pareto & finite, max_dominated), (~feasible & finite, max_infeasible)):
        chosen.append(stratified_sample(codes, want, cap, rng))
    sel = np.sort(np.concatenate(chosen))
    if sel.size == 0:
        return _plain(schema.empty_table()), counts
    if table is not None:
        df = _plain(table.take(pa.array(sel)))
    else:
        parts = []
        offset = 0
        for batch in pf.iter_batches(batch_size=1 << 20):
            lo, hi = np.searchsorted(sel, [offset, offset + batch.num_rows])
            if hi > lo:
                parts.append(batch.take(pa.array(sel[lo:hi] - offset)))
            offset += batch.num_rows
            if hi >= sel.size:
                break
        df = _plain(pa.Table.from_batches(parts))
    if "feasible" not in df.columns:
        df["feasible"] = True
    df["feasible"] = df["feasible"].astype(bool)
    return df, counts


REASON_COLUMNS = ("infeasible_code", "infeasible_reason")
MAX_REASONS = 12


def _reason_counts(light, infeasible: np.ndarray) -> dict[str, Any]:
    """Infeasible rows counted per reason code and per reason text (the most frequent)."""
    import pyarrow as pa

    out: dict[str, Any] = {"by_code": {}, "by_text": []}
    for col, key in (("infeasible_code", "by_code"), ("infeasible_reason", "by_text")):
        if col not in light.column_names or not infeasible.any():
            continue
        rows = light.column(col).filter(pa.array(infeasible))     # the infeasible rows only, decoded by
        if pa.types.is_dictionary(rows.type):                      # pyarrow: pandas' astype of the whole
            rows = rows.cast(rows.type.value_type)                 # categorical was most of the counting
        vals = pd.Series(rows.to_pandas().astype(str).to_numpy())
        vc = vals.where(vals != "", "(unspecified)").value_counts()
        out[key] = ({str(k): int(v) for k, v in vc.items()} if key == "by_code"
                    else [(str(k), int(v)) for k, v in vc.head(MAX_REASONS).items()])
    return out


def _plain(table) -> pd.DataFrame:
    """A pyarrow Table as a DataFrame with its dictionary (categorical) columns as plain
    strings, blanks as "": string dictionaries decoded by pyarrow before the conversion
    (the same frame as pandas' astype of the categoricals, at half the cost), others by pandas."""
    import pyarrow as pa
    import pyarrow.compute as pc

    strings = [i for i, f in enumerate(table.schema) if pa.types.is_dictionary(f.type)
               and (pa.types.is_string(f.type.value_type) or pa.types.is_large_string(f.type.value_type))]
    for i in strings:
        col = table.column(i)
        table = table.set_column(i, table.field(i).name, pc.fill_null(col.cast(col.type.value_type), ""))
    df = table.to_pandas()
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


def _role_device(df: pd.DataFrame, role: str, dev: pd.Series) -> pd.Series:
    """A role's device as the engine resolves it (blank = the generic device)."""
    c = {f"{role}_device": _str(_col(df, f"{role}_device", "")).to_numpy(dtype=object),
         "device": dev.to_numpy(dtype=object)}
    return pd.Series(roles.device(c, role), index=df.index, dtype=object)


def group_labels(df: pd.DataFrame, level: str = "roles", parts: tuple | None = None) -> np.ndarray:
    """Colour group of each row at one level of detail: "roles" = its device, or its
    role devices (prefill→decode, attn+ffn) when its mode splits the work over different
    ones; "device" = the device that serves its tokens (decode pool for disagg, attention
    pool for afd: never the placeholder `device` column of a split mode); "mode" = its
    serving mode. parts: `_label_parts(df)` when the caller asks for several levels."""
    n = len(df)
    if not n:
        return np.empty(0, dtype=object)
    mode, dev, splits = parts or _label_parts(df)
    if level == "mode":
        return mode.to_numpy(dtype=object)
    out = dev.copy()
    for m, sep, ra, rb in splits:
        here = mode == m
        out = out.where(~here, ra if m == "afd" else rb)        # the device that serves the tokens
        if level == "roles":
            split = here & (ra != rb)
            out = out.where(~split, ra + sep + rb)
    return out.to_numpy(dtype=object)


def _label_parts(df: pd.DataFrame) -> tuple:
    """What every level of `group_labels` reads: the mode, the device (a blank one falls
    back to the first role device), and per split mode its two role devices."""
    mode = _str(_col(df, "mode", "agg"), "agg")
    dev = _str(_col(df, "device", ""))
    for c in GROUP_COLUMNS[2:]:
        if c in df.columns:
            dev = dev.where(dev != "", _str(df[c]))
    dev = dev.where(dev != "", "?")
    splits = [(m, sep, _role_device(df, a, dev), _role_device(df, b, dev))
              for m, (a, b), sep in (("disagg", ("prefill", "decode"), "→"), ("afd", ("attn", "ffn"), "+"))
              if f"{a}_device" in df.columns or f"{b}_device" in df.columns]
    return mode, dev, splits


def choose_groups(pareto: pd.DataFrame, background: pd.DataFrame, max_groups: int = MAX_GROUPS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The finest colouring with at most `max_groups` colours over the Pareto set and the
    feasible sample: role devices (+ mode when several), then device (+ mode), then
    device, then mode."""
    feas = background["feasible"].astype(bool).to_numpy() if len(background) else np.zeros(0, bool)
    frames = (pareto, background)
    parts = [_label_parts(df) if len(df) else None for df in frames]
    modes = {m for p in parts if p is not None for m in p[0].unique()}   # set(Series) walks it in Python
    best, memo = None, {}
    for level, with_mode in (("roles", True), ("device", True), ("device", False), ("mode", False)):
        if with_mode and len(modes) < 2:
            continue
        labels = []
        for i, df in enumerate(frames):
            if (i, level) not in memo:
                memo[i, level] = group_labels(df, level, parts[i])
            g = memo[i, level]
            if with_mode and len(df):
                g = g + " · " + parts[i][0].to_numpy(dtype=object)
            labels.append(g)
        best = labels
        if len(set(labels[0]) | set(labels[1][feas])) <= max_groups:
            break
    return best[0], best[1]


def shipped_accuracy() -> dict[str, dict[str, Any]]:
    """The engine's out-of-sample error against measured deployments, as the serving fit
    recorded it (hardware/serving_runtime.yaml: fitted on one system, scored on the other),
    keyed "<system>/<mode>" -> {n, ttft_median_ape, tpot_median_ape}."""
    from dse.catalog.runtime import serving_cross_system

    out = {}
    for run in serving_cross_system().values():
        for group, e in (run.get("errors") or {}).items():
            if group.count("/") == 1 and isinstance(e, dict):
                out[group] = {k: e.get(k) for k in ("n", "ttft_median_ape", "tpot_median_ape")}
    return out
