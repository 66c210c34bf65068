"""Final results of a run: configs.parquet, pareto.csv, run.json (and report.html), committed.

Written from the part files of `RunStore` in two streaming passes (the Pareto front
first, then every row with its `is_pareto` flag), so a run of tens of millions of
configurations never needs them all in memory. Every file is written atomically, the
report (drawn by the caller's `report` writer: search does not import dse.report) next,
and the run's manifest last (RunStore.commit), so a directory is either committed whole
or refused by `verify_run_dir`.

Hypervolume: objectives are mapped to a log-like scale (asinh(v / 1e-6), i.e. ln of the
value for every positive metric; max objectives negated) so that a factor of two counts
the same on every objective whatever its unit, and the volume is divided by the box from
the front's ideal point to the reference point, giving a number in [0, 1]. The reference
point is the scenario's `reference_point`, or the front's nadir pushed out by 10 % of the
front's extent on that scale; both points are stored in run.json (metric units) so that
any other front can be measured against the same box (`hypervolume_against`).
"""
from __future__ import annotations

import dataclasses
import functools
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dse import io
from dse.pareto import log_inverse, log_transform, normalized_hypervolume, pareto_mask, reference_box
from dse.search.space import Space
from dse.search.recommend import recommend, tie_groups
from dse.search.store import RESULT_FILES, RunStore, verify_run_dir
from dse.schema import METRICS

__all__ = ["SweepResult", "finalize", "load_result", "hypervolume_reference", "hypervolume_against", "versions",
           "HV_TRANSFORM"]

HV_TRANSFORM = "asinh(value / 1e-6) (max objectives negated); volume divided by the ideal..reference box"


@dataclasses.dataclass
class SweepResult:
    """What `sweep` returns: the run directory, run.json as a dict and the Pareto set."""
    run_dir: Path
    run: dict[str, Any]
    pareto: pd.DataFrame

    def configs(self, columns: list[str] | None = None) -> pd.DataFrame:
        """Every evaluated configuration (reads configs.parquet)."""
        return pd.read_parquet(self.run_dir / "configs.parquet", columns=columns)

    @property
    def hypervolume(self) -> float:
        return float(self.run["hypervolume"])


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("dse", "numpy", "pandas", "pyarrow", "pymoo", "moocore", "optuna", "joblib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = ""
    return out


def hypervolume_reference(space: Space, front: np.ndarray) -> dict[str, Any]:
    """The HV box of a run: ideal and reference points in metric units (see module doc)."""
    names = space.objective_names()
    dirs = [o.direction for o in space.objectives]
    if front.shape[0] == 0:
        return {"reference_point": None, "ideal_point": None, "transform": HV_TRANSFORM, "source": "empty front"}
    t = log_transform(front, dirs)
    ideal, ref = reference_box(t)
    source = "front nadir + 10% of the front's extent"
    if space.reference_point is not None:
        ref = log_transform(np.array([space.reference_point]), dirs)[0]
        source = "scenario reference_point"
    return {"reference_point": dict(zip(names, log_inverse(ref, dirs).tolist())),
            "ideal_point": dict(zip(names, log_inverse(ideal, dirs).tolist())),
            "transform": HV_TRANSFORM, "source": source}


def hypervolume_against(values: np.ndarray, objectives: list[dict[str, str]], reference: dict[str, Any]) -> float:
    """Normalised hypervolume of points (n x k, metric units, columns in objective order)
    in the box stored in a run.json's `hypervolume_reference`; dominated points are harmless."""
    if not reference.get("reference_point") or len(values) == 0:
        return 0.0
    names = [o["name"] for o in objectives]
    dirs = [o["direction"] for o in objectives]
    ref = log_transform(np.array([[reference["reference_point"][n] for n in names]]), dirs)[0]
    ideal = log_transform(np.array([[reference["ideal_point"][n] for n in names]]), dirs)[0]
    t = log_transform(np.asarray(values, dtype=float), dirs)
    t = t[pareto_mask(t)]
    return normalized_hypervolume(t, ideal, ref)


def _front(store: RunStore, space: Space) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pass 1: the feasible non-dominated config ids, merged part by part."""
    names = space.objective_names()
    k = len(names)
    front_F, front_ids = np.empty((0, k)), np.empty(0, dtype=np.int64)
    n_rows = n_feasible = 0
    for part in store.parts():
        t = store.read_part(part, columns=["config_id", "feasible", *names]).to_pandas()
        n_rows += len(t)
        ok = t["feasible"].to_numpy(dtype=bool)
        n_feasible += int(ok.sum())
        if not ok.any():
            continue
        F = np.vstack([front_F, space.minimized(t[ok])])
        ids = np.concatenate([front_ids, t["config_id"].to_numpy(dtype=np.int64)[ok]])
        keep = pareto_mask(F)
        front_F, front_ids = F[keep], ids[keep]
    return front_F, front_ids, n_rows, n_feasible


def _order_columns(df: pd.DataFrame, space: Space) -> pd.DataFrame:

    names = space.objective_names()
    axes = [c for c in space.axis_names if c in df.columns]
    metrics = [m for m in METRICS if m in df.columns and m not in names
               and m not in ("feasible", "infeasible_reason")]
    first = ["config_id", *axes, *names, *metrics]
    rest = [c for c in df.columns if c not in first and c not in ("feasible", "infeasible_reason", "is_pareto")]
    return df[first + rest]


def finalize(store: RunStore, space: Space, *, meta: dict[str, Any], t_start: float,
             report: Callable[[Path], Any] | None = None) -> SweepResult:
    """Write configs.parquet, pareto.csv, run.json, then report.html with `report(run_dir)`
    (if given; with `configs=` the table configs.parquet holds, when every part is still in
    memory and the writer takes it), then the manifest; the state is dropped once the run
    is committed."""
    run_dir = store.path
    front_F, front_ids, n_rows, n_feasible = _front(store, space)
    pareto_parts: list[pd.DataFrame] = []
    written: list[pa.Table] | None = None      # handed to the report when every part is in memory
    configs = run_dir / "configs.parquet"
    pending = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        if not store.in_memory():       # streamed part by part: memory stays one part
            io.atomic_write(configs, lambda tmp: _write_tables(_marked_parts(store, front_ids, pareto_parts), tmp))
        else:
            written = list(_marked_parts(store, front_ids, pareto_parts))
            write = functools.partial(_write_tables, written)
            # when nothing reads the file back it is written on a thread beside the rest
            # (pyarrow's encoder releases the GIL), and waited for before the commit
            if written and (report is None or _takes_configs(report)):
                pending = pool.submit(io.atomic_write, configs, write)
            else:
                io.atomic_write(configs, write)
        run, pareto = _write_results(store, space, meta, t_start, report, pareto_parts, written, n_rows, n_feasible)
        if pending is not None:
            pending.result()
    store.commit(run["files"])
    return SweepResult(run_dir=run_dir, run=run, pareto=pareto)


def _marked_parts(store: RunStore, front_ids, pareto_parts: list):
    """The parts in order, each with its is_pareto column and the first part's types; the
    Pareto rows are appended to pareto_parts on the way."""
    schema = None
    for part in store.parts():
        table = store.read_part(part)
        mask = np.isin(table["config_id"].to_numpy(), front_ids)
        table = table.append_column("is_pareto", pa.array(mask))
        if schema is None:
            schema = table.schema
        else:
            table = table.cast(schema)
        if mask.any():
            pareto_parts.append(table.filter(pa.array(mask)).to_pandas())
        yield table


def _write_tables(tables, tmp: Path) -> None:
    """configs.parquet: the tables one after another (an empty run: its two id columns)."""
    writer = None
    try:
        for table in tables:
            if writer is None:
                repeat = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
                writer = pq.ParquetWriter(tmp, table.schema, use_dictionary=repeat)   # see RunStore.write_part
            writer.write_table(table)
        if writer is None:
            pq.write_table(pa.table({"config_id": pa.array([], pa.int64()), "is_pareto": pa.array([], pa.bool_())}), tmp)
    finally:
        if writer is not None:
            writer.close()


def _write_results(store: RunStore, space: Space, meta: dict[str, Any], t_start: float, report, pareto_parts: list,
                   written: list | None, n_rows: int, n_feasible: int) -> tuple[dict[str, Any], pd.DataFrame]:
    """pareto.csv, recommendation.json, run.json and the report: (run.json's dict, the Pareto rows)."""
    run_dir = store.path
    names = space.objective_names()
    if pareto_parts:
        pareto = pd.concat(pareto_parts, ignore_index=True)
        F = space.minimized(pareto)
        pareto = pareto.iloc[np.lexsort(F.T[::-1])].reset_index(drop=True)
        pareto = _order_columns(pareto, space)
    else:
        pareto = pd.DataFrame(columns=["config_id", *space.axis_names, *names])
    pareto["tie_group"] = tie_groups(pareto, names)      # rows alike on every objective share a group
    io.write_text(run_dir / "pareto.csv", pareto.to_csv(index=False))

    values = pareto[names].to_numpy(dtype=float) if len(pareto) else np.empty((0, len(names)))
    hv_ref = hypervolume_reference(space, values)
    objectives = [{"name": o.name, "direction": o.direction} for o in space.objectives]
    hv = hypervolume_against(values, objectives, hv_ref)
    eval_seconds = float(meta.get("eval_seconds", 0.0))
    run = {
        "scenario": space.resolved,
        "fingerprint": space.fingerprint,
        "strategy": meta.get("strategy"),
        "seed": meta.get("seed"),
        "objectives": objectives,
        "constraints": space.resolved.get("constraints", []),
        "space_size": space.size,
        "deployable_size": space.deployable_size,
        "budget": meta.get("budget"),
        "n_evaluated": int(meta.get("n_evaluated", n_rows)),
        "n_configs": n_rows,
        "n_feasible": n_feasible,
        "n_pareto": int(len(pareto)),
        "eval_seconds": round(eval_seconds, 4),
        "evals_per_second": round(meta.get("n_evaluated", n_rows) / eval_seconds, 1) if eval_seconds > 0 else None,
        "hypervolume": hv,
        "hypervolume_reference": hv_ref,
        "settings": meta.get("settings", {}),
        "resumed": bool(meta.get("resumed", False)),
        "versions": versions(),
        "started_at": meta.get("started_at"),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": [f for f in RESULT_FILES if report is not None or f != "report.html"],
    }
    io.write_json(run_dir / "recommendation.json", recommend(pareto, objectives, run["constraints"]))
    run["wall_seconds"] = round(time.perf_counter() - t_start, 4)
    io.write_json(run_dir / "run.json", run)
    if report is not None:
        if written and _takes_configs(report):    # the rows just written, not read back from the file
            report(run_dir, configs=pa.concat_tables(written))
        else:
            report(run_dir)
    return run, pareto


def _takes_configs(report: Callable[..., Any]) -> bool:
    """Whether a report writer accepts `configs=` (configs.parquet's table, in memory)."""
    import inspect

    try:
        params = inspect.signature(report).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "configs" or p.kind is p.VAR_KEYWORD for p in params)


def load_result(run_dir: str | Path) -> SweepResult:
    """A finished run read back from its directory (verified against its manifest)."""
    import json

    run_dir = Path(run_dir)
    verify_run_dir(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    return SweepResult(run_dir=run_dir, run=run, pareto=pd.read_csv(run_dir / "pareto.csv"))
