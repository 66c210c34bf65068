"""Two runs side by side: what entered and left the Pareto front, how each recommendation and
its metrics moved, and both fronts' hypervolume in one common box — the what-if of a
procurement analyst (another electricity price, a hypothetical device, a new SLO).

Configurations are matched across runs by their configuration columns (a space index means
nothing in another run's space); objectives must be the same in both runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dse.errors import DSEError
from dse.pareto import log_transform, normalized_hypervolume, pareto_mask, reference_box
from dse.report.rundata import PARETO_CSV, RECOMMENDATION_JSON, RUN_JSON, read_json
from dse.schema import COLUMNS, metric_label

__all__ = ["compare_runs", "format_comparison"]

_IGNORED = ("model",)     # one question, one model (whose id may be spelt differently between runs)


def _read(run_dir: Path) -> tuple[dict, pd.DataFrame, dict | None]:
    if not Path(run_dir).is_dir():
        raise DSEError(f"{run_dir}: not a directory (expected a dse results directory)")
    run = read_json(Path(run_dir) / RUN_JSON)
    try:
        pareto = pd.read_csv(Path(run_dir) / PARETO_CSV, keep_default_na=False, na_values=["nan", "NaN"])
    except (OSError, ValueError) as exc:
        raise DSEError(f"{Path(run_dir) / PARETO_CSV}: cannot read: {exc}") from None
    rec_path = Path(run_dir) / RECOMMENDATION_JSON
    return run, pareto, read_json(rec_path) if rec_path.exists() else None


def _keys(df: pd.DataFrame, cols: list[str]) -> pd.Series:
    if not len(df):
        return pd.Series([], dtype=object)
    parts = [df[c].astype(str).where(df[c].astype(str) != "nan", "") for c in cols]
    return pd.Series(list(zip(*parts)), index=df.index)


def _common_hypervolume(fronts: list[np.ndarray], dirs: list[str]) -> list[float]:
    t = [log_transform(f, dirs) for f in fronts]
    both = np.vstack([x for x in t if len(x)]) if any(len(x) for x in t) else np.empty((0, len(dirs)))
    if not len(both):
        return [0.0 for _ in t]
    ideal, ref = reference_box(both[pareto_mask(both)])
    return [normalized_hypervolume(x[pareto_mask(x)], ideal, ref) if len(x) else 0.0 for x in t]


def _moved(a: dict | None, b: dict | None) -> list[dict[str, Any]]:
    """Each recommendation of either run: its configuration and metrics before and after."""
    out = []
    for key in list(dict.fromkeys([*((a or {}).get("best") or {}), *((b or {}).get("best") or {}), "balanced"])):
        pa = (a or {}).get("best", {}).get(key) if key != "balanced" else (a or {}).get("balanced")
        pb = (b or {}).get("best", {}).get(key) if key != "balanced" else (b or {}).get("balanced")
        if not pa and not pb:
            continue
        same = bool(pa and pb and pa.get("configuration") == pb.get("configuration"))
        deltas = {}
        for m in set((pa or {}).get("metrics", {})) & set((pb or {}).get("metrics", {})):
            va, vb = pa["metrics"][m], pb["metrics"][m]
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and va:
                deltas[m] = (va, vb, (vb - va) / abs(va))
        out.append({"pick": key, "changed": not same, "before": pa, "after": pb, "deltas": deltas})
    return out


def compare_runs(run_a: str | Path, run_b: str | Path) -> dict[str, Any]:
    """The comparison of run_b against run_a (see the module docstring)."""
    (ra, pa, reca), (rb, pb, recb) = _read(Path(run_a)), _read(Path(run_b))
    oa, ob = ra.get("objectives") or [], rb.get("objectives") or []
    if [o["name"] for o in oa] != [o["name"] for o in ob]:
        raise DSEError(f"{run_b}: objectives {[o['name'] for o in ob]} differ from {run_a}'s "
                       f"{[o['name'] for o in oa]}; compare runs that answer the same question")
    names, dirs = [o["name"] for o in oa], [o["direction"] for o in oa]
    cols = [c for c in COLUMNS if c in pa.columns and c in pb.columns and c not in _IGNORED]
    ka, kb = _keys(pa, cols), _keys(pb, cols)
    entered = pb[~kb.isin(set(ka))] if len(pb) else pb
    left = pa[~ka.isin(set(kb))] if len(pa) else pa
    fa = pa[names].to_numpy(float) if len(pa) else np.empty((0, len(names)))
    fb = pb[names].to_numpy(float) if len(pb) else np.empty((0, len(names)))
    hv_a, hv_b = _common_hypervolume([fa, fb], dirs)
    return {"run_a": str(run_a), "run_b": str(run_b), "objectives": oa, "key_columns": cols,
            "n_front": [len(pa), len(pb)], "entered": entered, "left": left,
            "n_stayed": int(kb.isin(set(ka)).sum()) if len(pb) else 0,
            "hypervolume_common": [hv_a, hv_b], "recommendations": _moved(reca, recb)}


def _pick_text(p: dict | None) -> str:
    if not p:
        return "(none)"
    c = p["configuration"]
    pools = "; ".join(f"{x['role']} {x['gpus']} x {x['device']}" for x in c.get("pools", []))
    cap = f" power cap {c['power_cap']:g}" if c.get("power_cap") not in (None, 1, 1.0) else ""
    return f"{c.get('mode')} | {pools} | {c.get('weight_dtype')}/{c.get('kv_dtype')} batch {c.get('batch_size')}{cap}"


def format_comparison(cmp: dict[str, Any], rows: int = 8) -> str:
    """The console text of a comparison."""
    a, b = cmp["n_front"]
    hv_a, hv_b = cmp["hypervolume_common"]
    lines = [f"B = {cmp['run_b']}  against  A = {cmp['run_a']}",
             f"front: {a} -> {b} configurations; {len(cmp['entered'])} entered, {len(cmp['left'])} left, "
             f"{cmp['n_stayed']} stayed",
             f"hypervolume in a common box: A {hv_a:.4f}, B {hv_b:.4f} ({'+' if hv_b >= hv_a else ''}"
             f"{(hv_b - hv_a):.4f})"]
    for r in cmp["recommendations"]:
        head = f"{r['pick']}: {'moved' if r['changed'] else 'same configuration'}"
        lines.append(head)
        if r["changed"]:
            lines.append(f"    A: {_pick_text(r['before'])}")
            lines.append(f"    B: {_pick_text(r['after'])}")
        for m, (va, vb, rel) in sorted(r["deltas"].items()):
            if abs(rel) > 1e-9:
                lines.append(f"    {metric_label(m)}: {va:,.4g} -> {vb:,.4g} ({rel:+.1%})")
    for title, df in (("entered the front", cmp["entered"]), ("left the front", cmp["left"])):
        if len(df):
            show = [c for c in cmp["key_columns"] if df[c].astype(str).nunique() > 1][:8]
            names = [o["name"] for o in cmp["objectives"]]
            lines.append(f"{title} (first {min(rows, len(df))} of {len(df)}):")
            lines.append(df[show + names].head(rows).to_string(index=False, float_format=lambda x: f"{x:,.4g}"))
    return "\n".join(lines)
