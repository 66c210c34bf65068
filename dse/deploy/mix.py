"""`evaluate_mix`: configurations serving a workload histogram of request shapes."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dse.catalog.facility import get_facility
from dse.deploy.columns import broadcast
from dse.deploy.evaluate import evaluate
from dse.errors import DSEError
from dse.model import cost

__all__ = ["evaluate_mix"]


def evaluate_mix(mix: Any, *, strict: bool = True, facility=None, **columns: Any) -> pd.DataFrame:
    """Evaluate configurations serving a mix of request shapes (a workload histogram).

    `mix` is a table (DataFrame, list of dicts or of (isl, osl, weight) tuples) of request
    classes with columns isl, osl, weight (share of requests; normalised) and optionally
    prefix_hit. Each class is evaluated on the configuration at its full concurrency, in
    one vectorized call, and the classes are combined as a closed loop in which every
    user's next request is drawn from the mix: the mean request cycle is the
    weight-averaged one, so tokens/s = sum(w osl) / sum(w osl / tokens_per_s_k); TTFT
    and e2e are request-weighted, TPOT is token-weighted, power is time-weighted. A
    configuration meets its SLOs when every class does; its goodput is the load at which
    the tightest class still does. Exact when the classes' step times are alike (an
    approximation of truly mixed batches otherwise). Returns one row per configuration.
    """
    cls = pd.DataFrame(list(mix) if not isinstance(mix, pd.DataFrame) else mix)
    if cls.shape[1] == 3 and list(cls.columns) == [0, 1, 2]:
        cls.columns = ["isl", "osl", "weight"]
    for need in ("isl", "osl", "weight"):
        if need not in cls.columns:
            raise DSEError(f"evaluate_mix: mix needs columns isl, osl, weight; missing {need!r}")
    if (cls.weight < 0).any() or cls.weight.sum() <= 0:
        raise DSEError("evaluate_mix: weights must be >= 0 and not all zero")
    for k in ("isl", "osl", "prefix_hit"):
        if k in columns and k in cls.columns:
            raise DSEError(f"evaluate_mix: {k} comes from the mix, not from the columns")
    w = cls.weight.to_numpy(float) / cls.weight.sum()
    kk = len(cls)
    _, n, _ = broadcast(dict(columns))
    base = {}
    for k, v in columns.items():
        arr = np.asarray(v.to_numpy() if isinstance(v, (pd.Series, pd.Index)) else v)
        base[k] = np.repeat(arr, kk) if arr.ndim == 1 and arr.size > 1 else (arr.reshape(-1)[0] if arr.ndim else v)
    base.update(isl=np.tile(cls.isl.to_numpy(), n), osl=np.tile(cls.osl.to_numpy(), n))
    if "prefix_hit" in cls.columns:
        base["prefix_hit"] = np.tile(cls.prefix_hit.to_numpy(float), n)
    df = evaluate(strict=strict, facility=facility, **base)
    shape = (n, kk)
    def g(metric):
        return df[metric].to_numpy(float).reshape(shape)

    osl = g("osl")
    tps = np.maximum(g("tokens_per_s"), 1e-30)
    time_share = w * osl / tps                                   # time per request of each class, weighted
    t_tot = time_share.sum(axis=1)
    tokens = (w * osl).sum(axis=1) / t_tot
    tw = time_share / t_tot[:, None]
    watts = (tw * g("power_w")).sum(axis=1)
    usd_hour = (tw * g("usd_per_hour")).sum(axis=1)
    fac = facility if facility is not None else get_facility()
    ttft = (w * g("ttft_ms")).sum(axis=1)
    osl1 = np.maximum(osl - 1.0, 1.0)
    tpot = (w * osl1 * g("tpot_ms")).sum(axis=1) / (w * osl1).sum(axis=1)
    feasible = df["feasible"].to_numpy().reshape(shape).all(axis=1)
    meets = df["meets_slo"].to_numpy().reshape(shape).all(axis=1) & feasible
    good_frac = np.min(g("goodput_tokens_per_s") / tps, axis=1)
    goodput = np.where(feasible, tokens * np.minimum(good_frac, 1.0), 0.0)
    first = df.iloc[::kk].reset_index(drop=True)
    reasons = df["infeasible_reason"].astype(str).to_numpy().reshape(shape)
    reason = np.array([next((r for r in row if r), "") for row in reasons], dtype=object)
    out = first.drop(columns=["isl", "osl"] + (["prefix_hit"] if "prefix_hit" in cls.columns else []))
    out.insert(0, "mix_classes", kk)
    out["ttft_ms"] = ttft
    out["tpot_ms"] = tpot
    out["e2e_ms"] = (w * g("e2e_ms")).sum(axis=1)
    out["tokens_per_s"] = tokens
    out["tokens_per_s_per_gpu"] = tokens / first["num_gpus"].to_numpy(float)
    out["tokens_per_s_per_user"] = 1e3 / tpot
    out["power_w"] = watts
    out["joules_per_token"] = watts * fac.pue / tokens
    out["usd_per_hour"] = usd_hour
    out["usd_per_mtok"] = cost.usd_per_mtok(usd_hour, tokens)
    out["memory_gb_per_gpu"] = g("memory_gb_per_gpu").max(axis=1)
    out["meets_slo"] = meets
    out["goodput_tokens_per_s"] = goodput
    out["usd_per_mtok_at_slo"] = np.where(goodput > 0, cost.usd_per_mtok(usd_hour, goodput), np.inf)
    out["feasible"] = feasible
    out["infeasible_reason"] = pd.Categorical(reason)
    return out
