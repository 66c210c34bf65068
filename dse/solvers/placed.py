"""Score attention/FFN-disaggregated candidates at their optimal op placement, in the search.

An afd row names two device pools: `attn_device` x `attn_gpus` (tensor parallel
`attn_tp`) and `ffn_device` x `ffn_gpus`. The engine scores it with every layer's
attention on the first pool and every FFN / expert block on the second. A scenario with
a `placement:` section also solves, for each distinct candidate the search meets (pools,
batch, formats, workload), the optimal assignment of each layer's attention and FFN /
experts and of the embedding and LM head to the two pools -- the CP-SAT model of
`dse place`, op costs from the same kernels -- and adds its figures as metrics that
objectives and constraints may name:

    placed_tokens_per_s   decode tokens/s at the optimal placement
    placed_tpot_ms        one micro-batch through every op and hop (TPOT)
    placed_usd_per_mtok   $ per million tokens of the pools it uses
    placed_bottleneck_ms  the slowest pool's stage per step
    placed_num_gpus       GPUs of the pools it uses
    placed_gain           engine split's stage time / optimal stage time (>= 1: what
                          moving op groups between the pools buys; NaN when the split
                          does not fit the pools' memory)
    placement             the assignment, e.g. "h20: attn 61 + embed | h100_sxm: moe 58 + ffn 3 + head"

`extra_pools: [DEVICE:COUNT, ...]` adds fixed pools every candidate may also place op
groups on (a multi-pool candidate: at most five pools in all). The `batch_size` concurrent
sequences run as one micro-batch per pool (batch_size / 2 for two pools), each pool on a
different one at a time (ping-pong), with transfers overlapped (`overlap: true`, default)
or on the stages. A candidate whose model does not fit the pools under any assignment is
infeasible with the solver's explanation; one that the engine's split cannot hold
(memory, KV capacity) but some placement can is feasible. Solutions are cached per process, so a
candidate met again (another generation, another chunk) is not solved again.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pandas as pd

from dse.deploy import roles
from dse.errors import DSEError
from dse.schema import direction

__all__ = ["METRICS", "DEFAULTS", "SPLIT_REASONS", "KEY_COLUMNS", "settings_from", "add_metrics"]

METRICS = ("placed_tokens_per_s", "placed_tpot_ms", "placed_usd_per_mtok", "placed_bottleneck_ms",
           "placed_num_gpus", "placed_gain")
DEFAULTS = {"objective": "bottleneck", "overlap": True, "time_limit_s": 10.0, "extra_pools": ()}
SPLIT_REASONS = ("memory", "kv_capacity")   # engine verdicts that only hold for its fixed split
KEY_COLUMNS = ("model", "attn_device", "attn_gpus", "attn_tp", "ffn_device", "ffn_gpus", "batch_size", "isl",
               "osl", "weight_dtype", "kv_dtype", "routing_skew", "own")


def settings_from(spec: Any, fail) -> dict:
    """The scenario's `placement:` section: `optimal`, or a mapping of DEFAULTS' keys."""
    if spec in ("optimal", True):
        return dict(DEFAULTS)
    if not isinstance(spec, dict):
        raise fail("placement", f"expected `optimal` or a mapping with {', '.join(DEFAULTS)}, got {spec!r}")
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise fail(f"placement.{unknown[0]}", f"unknown key; allowed: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **spec}
    from dse.solvers.placement import OBJECTIVES
    if out["objective"] not in OBJECTIVES:
        raise fail("placement.objective", f"expected one of {', '.join(OBJECTIVES)}, got {out['objective']!r}")
    if not isinstance(out["overlap"], bool):
        raise fail("placement.overlap", f"expected true or false, got {out['overlap']!r}")
    from dse.solvers import time_limit_problem
    problem = time_limit_problem(out["time_limit_s"])
    if problem:
        raise fail("placement.time_limit_s", problem)
    out["time_limit_s"] = float(out["time_limit_s"])
    extra = out["extra_pools"]
    if not isinstance(extra, (list, tuple)) or not all(isinstance(x, str) for x in extra):
        raise fail("placement.extra_pools", f"expected a list of DEVICE:COUNT[,tp=N] pools, got {extra!r}")
    from dse.deploy.opcost import parse_pool
    from dse.catalog.devices import get_device
    for i, x in enumerate(extra):
        try:
            get_device(parse_pool(x).device)
        except DSEError as exc:
            msg = str(exc).removeprefix("--pool ").removeprefix("device: ")
            raise fail(f"placement.extra_pools[{i}]", msg) from None
    if len(extra) > 3:
        raise fail("placement.extra_pools", f"at most 3 (5 pools in all), got {len(extra)}")
    out["extra_pools"] = tuple(extra)
    return out


def add_metrics(df: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """df with the placed_* metrics and `placement` of its afd rows (NaN / '' elsewhere);
    rows the solver cannot place become infeasible with its reason."""
    n = len(df)
    out = {m: np.full(n, np.nan) for m in METRICS}
    text = np.full(n, "", dtype=object)
    feasible = df["feasible"].to_numpy(dtype=bool).copy()
    reason = df["infeasible_reason"].astype(str).to_numpy(dtype=object)
    code = df["infeasible_code"].astype(str).to_numpy(dtype=object)
    rows = np.flatnonzero((df["mode"].astype(str) == "afd").to_numpy())
    if rows.size:
        keys = pd.DataFrame({c: _resolved(df, c).iloc[rows].to_numpy() for c in KEY_COLUMNS})
        codes, uniq = pd.factorize(pd.MultiIndex.from_frame(keys))
        for u, key in enumerate(uniq):
            res = _solve(tuple(_plain(v) for v in key), tuple(sorted(settings.items())))
            sel = rows[codes == u]
            engine_says = ~np.isin(code[sel], SPLIT_REASONS) & ~feasible[sel]
            if isinstance(res, str):
                for m in METRICS:
                    out[m][sel] = np.inf if direction(m) == "min" else 0.0
                reason[sel] = np.where(engine_says, reason[sel], res)   # structural errors first
                code[sel] = np.where(engine_says, code[sel], "placement")
                feasible[sel] = False
                continue
            for m in METRICS:
                out[m][sel] = res[m]
            text[sel] = res["placement"]
            # the engine's memory verdicts are about its own split; the placement fits
            split_only = ~feasible[sel] & ~engine_says
            feasible[sel[split_only]] = True
            reason[sel[split_only]] = ""
            code[sel[split_only]] = ""
    df = df.copy()
    for m in METRICS:
        df[m] = out[m]
    df["placement"] = text
    df["feasible"] = feasible
    df["infeasible_reason"] = reason.astype(str)
    df["infeasible_code"] = code.astype(str)
    return df


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _resolved(df: pd.DataFrame, col: str) -> pd.Series:
    """afd's defaults as the engine applies them: a role's device '' = `device`, attn_gpus
    0 = tp x dp, ffn_gpus 0 = max(ep, tp), kv_dtype '' = bf16."""
    if col in ("attn_device", "ffn_device"):
        c = {k: df[k].astype(str).to_numpy() for k in (col, "device")}
        return pd.Series(roles.device(c, col.split("_")[0]), index=df.index)
    if col in ("attn_gpus", "ffn_gpus"):
        attn, ffn = roles.afd_gpus(df)
        return pd.Series(attn if col == "attn_gpus" else ffn, index=df.index)
    if col == "kv_dtype":
        kv = df[col].astype(str)
        return kv.where(kv != "", "bf16")
    if col in ("model", "weight_dtype"):
        return df[col].astype(str)
    return df[col]


@functools.lru_cache(maxsize=100_000)
def _solve(key: tuple, settings: tuple) -> dict | str:
    from dse.catalog.models import get_model
    from dse.deploy.opcost import Pool, op_costs
    from dse.solvers.placement import place

    k = dict(zip(KEY_COLUMNS, key))
    s = dict(settings)
    model = get_model(k["model"])
    agpus, ffn_gpus = int(k["attn_gpus"]), int(k["ffn_gpus"])
    from dse.deploy.opcost import parse_pool

    pools = [Pool(k["attn_device"], agpus, tp=int(min(k["attn_tp"], agpus)), name="attn_pool"),
             Pool(k["ffn_device"], ffn_gpus, name="ffn_pool"), *(parse_pool(x) for x in s["extra_pools"])]
    micro = max(float(k["batch_size"]) / len(pools), 1.0)     # one micro-batch per pool in flight
    try:
        costs = op_costs(model, pools, batch=micro, isl=float(k["isl"]), osl=float(k["osl"]),
                         weight_dtype=k["weight_dtype"], kv_dtype=k["kv_dtype"],
                         routing_skew=float(k["routing_skew"]), own=bool(k["own"]))
        r = place(costs, objective=s["objective"], overlap=s["overlap"], time_limit=s["time_limit_s"])
    except DSEError as exc:
        return f"placement: {str(exc).removeprefix('place: ')}"
    split = _split_stage_ms(costs, s["overlap"])
    names = [k["attn_device"], k["ffn_device"], *(p.name for p in costs.pools[2:])]
    parts = []
    for p in range(len(names)):
        ops = [f"{op} {n}" for op, n in _ops_on(costs, r, p).items() if n]
        ops += [x for x, q in (("embed", r.embed_pool), ("head", r.head_pool)) if q == p]
        if ops:
            parts.append(f"{names[p]}: {' + '.join(ops)}")
    return {"placed_tokens_per_s": r.tokens_per_s, "placed_tpot_ms": r.latency_ms,
            "placed_usd_per_mtok": r.usd_per_hour / max(r.tokens_per_s * 3600.0, 1e-30) * 1e6,
            "placed_bottleneck_ms": r.bottleneck_ms,
            "placed_num_gpus": float(sum(p.count for p, u in zip(costs.pools, r.used) if u)),
            "placed_gain": split / r.bottleneck_ms if r.bottleneck_ms > 0 else 1.0,
            "placement": " | ".join(parts)}


def _ops_on(costs, r, p: int) -> dict[str, int]:
    """Layers whose attention / FFN / experts run on pool p."""
    out: dict[str, int] = {"attn": 0, "ffn": 0, "moe": 0}
    for g, a, f in r.layers:
        first, second = costs.groups[g].ops
        out[first] += a == p
        out[second] += f == p
    return out


def _split_stage_ms(costs, overlap: bool) -> float:
    """Bottleneck of the engine's split (every attention on pool 0, every FFN / expert
    block on pool 1; embedding and head wherever best) in the placement's cost model;
    NaN when that split does not fit the pools' memory."""
    from dse.solvers.placement import evaluate_sequence

    layers = [(gc.index, 0, 1) for gc in costs.groups for _ in range(gc.count)]
    runs = [evaluate_sequence(costs, layers, e, h, overlap=overlap) for e in (0, 1) for h in (0, 1)]
    fitting = [float(r["bottleneck_ms"]) for r in runs if r["fits"]]
    return min(fitting) if fitting else float("nan")
