"""From a front to a decision: the recommended deployments of a finished sweep.

For each objective, the best configuration of the Pareto set (every row there already meets
the SLOs and the scenario's limits); and one balanced choice, the knee: the front point
closest to the ideal point once each objective is put on a log scale (costs, latencies and
rates span orders of magnitude) and normalised to [0, 1] over the front. Rows that tie on
every objective are one choice: the simplest of them (fewest GPUs, then the plainest mode,
the smallest parallel layout) stands for the group, which reports how many it holds.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from dse.deploy import roles
from dse.schema import METRIC_INFO, MODES

__all__ = ["tie_groups", "representatives", "recommend", "describe", "format_recommendation"]

# the plainest configuration first: fewer GPUs, one pool before two, smaller layouts
_SIMPLE = ("num_gpus", "mode_rank", "tp", "pp", "dp", "ep", "replicas", "batch_size")
_ROLE_LAYOUT = ("tp", "dp", "ep", "pp")
_KNOBS = ("weight_dtype", "kv_dtype", "batch_size", "power_cap", "backend", "spec_tokens", "replicas", "isl", "osl",
          "kv_tier", "kv_tier_gb", "routing")
_SHOWN_METRICS = ("ttft_ms", "tpot_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
                  "usd_per_mtok", "joules_per_token", "power_w", "num_gpus", "memory_gb_per_gpu", "quality_loss",
                  "quality_loss_p90", "meets_slo_prob", "cache_hit_rate", "load_imbalance",
                  *(f"{m}_{q}" for m in ("ttft_ms", "tpot_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
                                         "usd_per_mtok", "joules_per_token") for q in ("p10", "p90")))


def _simplicity_order(df: pd.DataFrame) -> np.ndarray:
    keys = []
    for c in reversed(_SIMPLE):
        if c == "mode_rank":
            mode = df["mode"].astype(str) if "mode" in df.columns else pd.Series("agg", index=df.index)
            keys.append(mode.map({m: i for i, m in enumerate(MODES)}).fillna(len(MODES)).to_numpy())
        elif c in df.columns:
            keys.append(pd.to_numeric(df[c], errors="coerce").fillna(0).to_numpy(float))
    return np.lexsort(keys) if keys else np.arange(len(df))


def tie_groups(pareto: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    """A group id per row: rows with the same value of every objective share one (ids
    numbered in the frame's order of first appearance)."""
    if not len(pareto):
        return np.zeros(0, dtype=np.int64)
    vals = pareto[list(objectives)].to_numpy(float)
    codes, _ = pd.factorize(pd.MultiIndex.from_arrays([np.round(v, 12) for v in vals.T]) if vals.shape[1] > 1
                            else np.round(vals[:, 0], 12))
    return codes.astype(np.int64)


def representatives(pareto: pd.DataFrame, groups: np.ndarray) -> pd.DataFrame:
    """One row per tie group, the simplest, with the group's size in `n_equivalent`."""
    order = _simplicity_order(pareto)
    first = pd.Series(groups[order]).drop_duplicates().index.to_numpy()
    rep = pareto.iloc[order[first]].copy()
    rep["n_equivalent"] = np.bincount(groups)[groups[order[first]]]
    return rep


def _knee(values: np.ndarray, directions: Sequence[str]) -> int:
    """Index of the front point nearest the ideal in normalised log objective space."""
    v = np.log(np.maximum(np.abs(values), 1e-300)) * np.where(np.array(directions) == "max", -1.0, 1.0)
    lo, hi = v.min(axis=0), v.max(axis=0)
    z = (v - lo) / np.where(hi > lo, hi - lo, 1.0)
    return int(np.argmin(np.sqrt((z ** 2).sum(axis=1))))


def _value(row: pd.Series, col: str) -> Any:
    """A cell as a Python value; a blank role column (NaN once read back from CSV) is ""/0."""
    v = row.get(col)
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and np.isnan(v) and (col.endswith("device") or col == "backend"):
        return ""
    if isinstance(v, float) and np.isnan(v) and col.split("_", 1)[0] in roles.ROLES:
        return 0
    return v


def _whole(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def describe(row: pd.Series) -> dict[str, Any]:
    """A configuration as a person deploys it: mode, and per role its device, GPUs and
    parallel layout (role defaults resolved), then the formats and runtime knobs."""
    mode = str(row.get("mode", "agg"))
    c = {k: np.asarray([_value(row, k)]) for k in row.index}
    pools = []
    if mode == "disagg":
        for role in ("prefill", "decode"):
            lay = {k: int(roles.layout(c, role, k)[0]) for k in _ROLE_LAYOUT}
            workers = int(_value(row, f"{role}_workers") or 1)
            gpus = lay["tp"] * lay["dp"] * lay["pp"]
            pools.append({"role": role, "device": str(roles.device(c, role)[0]), "workers": workers,
                          "gpus_per_worker": gpus, "gpus": gpus * workers, **lay})
    elif mode == "afd":
        attn, ffn = (int(x[0]) for x in roles.afd_gpus(c))
        pools.append({"role": "attention", "device": str(roles.device(c, "attn")[0]), "gpus": attn,
                      "tp": int(roles.attn_tp(c, np.asarray([attn]))[0]), "pp": int(_value(row, "pp") or 1)})
        pools.append({"role": "ffn", "device": str(roles.device(c, "ffn")[0]), "gpus": ffn,
                      "pp": int(_value(row, "pp") or 1)})
    else:
        lay = {k: int(_value(row, k) or 1) for k in _ROLE_LAYOUT}
        pools.append({"role": "agg", "device": str(_value(row, "device")), "gpus": lay["tp"] * lay["dp"] * lay["pp"],
                      **lay})
    knobs = {k: _whole(_value(row, k)) for k in _KNOBS if k in row.index}
    return {"mode": mode, "pools": pools, **knobs}


def _binding(row: pd.Series, limits: Sequence[dict]) -> list[str]:
    """The limits this configuration sits closest to (within 10 % of the limit)."""
    out = []
    for lim in limits:
        m, bound, limit = lim.get("metric"), lim.get("bound"), lim.get("limit")
        if m not in row.index or limit in (None, 0) or not np.isfinite(float(limit)):
            continue
        v = float(row[m])
        slack = (limit - v) / abs(limit) if bound == "max" else (v - limit) / abs(limit)
        if 0 <= slack <= 0.1:
            out.append(f"{lim.get('key', m)}: {m} {v:,.4g} against {'≤' if bound == 'max' else '≥'} {limit:,.4g}")
    if "bottleneck" in row.index and str(row["bottleneck"]):
        out.append(f"decode step bound by {row['bottleneck']}")
    return out


def _pick(rep: pd.Series, why: str, limits) -> dict[str, Any]:
    return {"why": why, "config_id": int(rep["config_id"]) if "config_id" in rep.index else None,
            "n_equivalent": int(rep.get("n_equivalent", 1)), "configuration": describe(rep),
            "metrics": {m: _value(rep, m) for m in _SHOWN_METRICS if m in rep.index},
            "binds": _binding(rep, limits)}


def recommend(pareto: pd.DataFrame, objectives: Sequence[dict], limits: Sequence[dict] = ()) -> dict[str, Any]:
    """{"best": {objective: pick}, "balanced": pick or None, "n_choices": distinct front points}.

    `objectives` are [{"name", "direction"}] as in run.json; `limits` the scenario's
    constraints [{"key", "metric", "bound", "limit"}] (for what binds each pick)."""
    names = [o["name"] for o in objectives]
    if not len(pareto):
        return {"best": {}, "balanced": None, "n_choices": 0, "objectives": list(objectives)}
    groups = tie_groups(pareto, names)
    rep = representatives(pareto, groups).reset_index(drop=True)
    best = {}
    for o in objectives:
        col = rep[o["name"]].to_numpy(float)
        i = int(np.argmax(col) if o["direction"] == "max" else np.argmin(col))
        label = METRIC_INFO[o["name"]].label if o["name"] in METRIC_INFO else o["name"]
        best[o["name"]] = _pick(rep.iloc[i], f"best {label}", limits)
    balanced = None
    if len(names) > 1 and len(rep) > 2:
        i = _knee(rep[names].to_numpy(float), [o["direction"] for o in objectives])
        balanced = _pick(rep.iloc[i], "balanced: nearest the ideal point on normalised log objectives", limits)
    return {"best": best, "balanced": balanced, "n_choices": int(len(rep)), "objectives": list(objectives)}


def _pool_text(p: dict) -> str:
    lay = " ".join(f"{k}{p[k]}" for k in ("tp", "pp", "dp", "ep") if k in p and p[k] != 1)
    lay = f" ({lay})" if lay else ""
    if p.get("workers", 1) != 1:
        return f"{p['role']}: {p['workers']} workers of {p['gpus_per_worker']} x {p['device']}{lay}"
    return f"{p['role']}: {p['gpus']} x {p['device']}{lay}"


def _band_text(m: dict, k: str) -> str:
    lo, hi = m.get(f"{k}_p10"), m.get(f"{k}_p90")
    return f" [{lo:,.3g}-{hi:,.3g}]" if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) else ""


def format_recommendation(rec: dict[str, Any]) -> str:
    """The Recommended block of the console."""
    if not rec["best"]:
        return "Recommended: nothing meets the SLOs and limits (see the report's Why infeasible)."
    lines = [f"Recommended ({rec['n_choices']} distinct choices on the front; [p10-p90] = the 80 % interval):"]
    picks = [(k, v) for k, v in rec["best"].items()] + ([("balanced", rec["balanced"])] if rec["balanced"] else [])
    for _, p in picks:
        c = p["configuration"]
        pools = "; ".join(_pool_text(x) for x in c["pools"])
        fmt = f"weights {c.get('weight_dtype')}, KV {c.get('kv_dtype')}, batch {c.get('batch_size')}"
        m = p["metrics"]
        tier = c.get("kv_tier")
        if isinstance(tier, str) and (tier != "hbm" or (m.get("cache_hit_rate") or 0) > 0):
            fmt += (", prefix cache in HBM only" if tier == "hbm" else
                    f", prefix cache in HBM + {tier} {c.get('kv_tier_gb', 0):,.4g} GB/GPU")
        eq = f"  [{p['n_equivalent']} equivalent]" if p["n_equivalent"] > 1 else ""
        shown = ("ttft_ms", "tpot_ms", "tokens_per_s_per_gpu", "usd_per_mtok", "joules_per_token", "quality_loss",
                 "cache_hit_rate")
        figs = ", ".join(f"{k} {m[k]:,.4g}{_band_text(m, k)}" for k in shown if k in m and m[k] is not None
                         and (k != "cache_hit_rate" or m[k] > 0))
        lines.append(f"  {p['why']}: {c['mode']} | {pools} | {fmt}{eq}")
        lines.append(f"      {figs}")
        if p["binds"]:
            lines.append(f"      binds: {'; '.join(p['binds'])}")
    return "\n".join(lines)
