"""Open-loop rows in `evaluate`: rows with arrival_rate > 0 get their latencies, throughput,
SLO check and goodput from the queueing model (dse.model.openloop) instead of the closed
loop; every row gets the percentile columns (closed loop: p50 = p99 = the mean model, since
that model has one latency per configuration).

Rules, so that a row reads the same in every report:
  - batch_size is the running-request limit per replica (with the KV slots and max_seqs);
  - tokens_per_s is what the deployment serves, arrival_rate x osl; power and cost per hour
    stay those of the configured batch (an upper bound on the power of a lighter load), so
    energy and cost per token are what serving that rate costs;
  - a row at or above its capacity is infeasible ("saturated"), as its queue would grow
    without bound;
  - goodput is the highest arrival rate (up to the capacity) at which every SLO holds (mean
    TTFT/TPOT, with slo_confidence as in the closed loop, and the p99 ones), found by a
    vectorized bisection, x osl.
afd rows are not modelled open-loop (they are flagged "structure").
"""
from __future__ import annotations

import numpy as np

from dse.catalog.models import Model
from dse.deploy import intervals
from dse.deploy.reasons import Reasons
from dse.model import cost, serving
from dse.model.openloop import engine_of, latency_percentiles
from dse.schema import PERCENTILE_METRICS

__all__ = ["with_percentile_slos", "apply", "engine_for_rows", "GOODPUT_STEPS", "SATURATED"]

GOODPUT_STEPS = 8        # bisection steps over the arrival rate: within 2^-8 of the capacity
SATURATED = "saturated: the arrival rate is at or above what the deployment serves (the queue grows without bound)"


def with_percentile_slos(c: dict) -> dict:
    """Columns whose closed-loop rows take the p99 SLOs as mean SLOs too (their p99 is the mean);
    the same columns when no p99 SLO is set."""
    fin = [k for k in ("ttft", "tpot") if np.any(np.isfinite(c[f"{k}_p99_slo_ms"]))]
    if not fin:
        return c
    closed = np.asarray(c["arrival_rate"]) <= 0
    c = dict(c)
    for k in fin:
        c[f"{k}_slo_ms"] = np.where(closed, np.minimum(c[f"{k}_slo_ms"], c[f"{k}_p99_slo_ms"]), c[f"{k}_slo_ms"])
    return c


def engine_for_rows(model: Model, mode: str, res: serving.ModeResult, load, idx):
    """The queueing Engine of rows idx of a mode's result."""
    sub = serving.rows_of(res, idx)
    return engine_of(model, mode, sub.load_state, np.asarray(load, dtype=float)[idx])


def apply(out: dict, model: Model, mode: str, res: serving.ModeResult, load, c: dict, reasons: Reasons,
          factors, ctx) -> None:
    """Fill the percentile columns of every row and redo the open-loop rows' metrics in `out`."""
    for m in PERCENTILE_METRICS:
        out[m] = out["ttft_ms" if m.startswith("ttft") else "tpot_ms"].copy()
    rate = np.asarray(c["arrival_rate"], dtype=float) * np.ones(len(out["ttft_ms"]))
    open_rows = rate > 0
    if not open_rows.any():
        return
    if mode not in ("agg", "disagg"):
        reasons.flag(open_rows, "structure", f"structure: arrival_rate > 0 is modelled for agg and disagg, not {mode}")
        return
    idx = np.flatnonzero(open_rows)
    eng = engine_for_rows(model, mode, res, load, idx)
    reps = np.asarray(c["replicas"], dtype=float) * np.ones(len(rate))
    unit_rate = rate[idx] / reps[idx]
    lat = latency_percentiles(eng, unit_rate)
    sat = ~(lat["utilisation"] < 1.0)
    flag = np.zeros(len(rate), dtype=bool)
    flag[idx[sat]] = True
    reasons.flag(flag, "saturated", SATURATED)
    osl = np.asarray(c["osl"], dtype=float) * np.ones(len(rate))
    sub = {k: v[idx] if np.ndim(v) else v for k, v in c.items()}
    ttft, tpot = lat["ttft_mean_ms"], lat["tpot_mean_ms"]
    tokens = rate[idx] * osl[idx]
    for m in PERCENTILE_METRICS:
        out[m][idx] = lat[m]
    out["ttft_ms"][idx], out["tpot_ms"][idx] = ttft, tpot
    out["e2e_ms"][idx] = ttft + np.maximum(osl[idx] - 1.0, 0.0) * tpot
    out["tokens_per_s"][idx] = tokens
    out["tokens_per_s_per_gpu"][idx] = tokens / out["num_gpus"][idx]
    out["tokens_per_s_per_user"][idx] = 1e3 / tpot
    out["joules_per_token"][idx] = out["power_w"][idx] * ctx.facility.pue / tokens
    out["usd_per_mtok"][idx] = cost.usd_per_mtok(out["usd_per_hour"][idx], tokens)
    fac = _rows(factors, idx)
    ok = reasons.codes[idx] == 0
    meets, prob = _meets(lat, ttft, tpot, sub, fac)
    meets &= ok
    out["meets_slo_prob"][idx] = prob
    out["meets_slo"][idx] = meets
    good = _goodput(eng, lat, sub, unit_rate, meets, fac) * osl[idx] * reps[idx]
    good = np.where(ok, good, 0.0)
    out["goodput_tokens_per_s"][idx] = good
    out["usd_per_mtok_at_slo"][idx] = np.where(good > 0, cost.usd_per_mtok(out["usd_per_hour"][idx], good), np.inf)
    for m in PERCENTILE_METRICS + ("ttft_ms", "tpot_ms", "e2e_ms"):       # no steady state: the queue grows
        out[m][idx[sat]] = np.inf
    out["tokens_per_s_per_user"][idx[sat]] = 0.0


def _rows(factors, idx):
    """The interval factors of rows idx."""
    return type(factors)(*(np.asarray(v)[idx] if np.ndim(v) else v for v in factors))


def _meets(lat: dict, ttft, tpot, sub: dict, fac) -> np.ndarray:
    """Every SLO at these latencies: the mean ones (the point prediction, or with
    slo_confidence > 0 the calibrated chance, as in the closed loop) and the p99 ones."""
    mean_ok, prob = intervals.slo_verdict(ttft, tpot, sub["ttft_slo_ms"], sub["tpot_slo_ms"],
                                          np.asarray(sub["slo_confidence"], dtype=float) * np.ones(len(ttft)), fac)
    return mean_ok & (lat["ttft_p99_ms"] <= sub["ttft_p99_slo_ms"]) & (lat["tpot_p99_ms"] <= sub["tpot_p99_slo_ms"]) \
        & (lat["utilisation"] < 1.0), prob


def _goodput(eng, lat: dict, sub: dict, unit_rate, meets, fac) -> np.ndarray:
    """Requests/s per unit: the highest arrival rate up to the capacity meeting every SLO
    (rows without a finite SLO: the rate they serve when they meet none)."""
    finite = np.zeros(len(unit_rate), dtype=bool)
    for k in ("ttft_slo_ms", "tpot_slo_ms", "ttft_p99_slo_ms", "tpot_p99_slo_ms"):
        finite |= np.isfinite(np.asarray(sub[k], dtype=float) * np.ones(len(unit_rate)))
    best = np.where(meets, unit_rate, 0.0)
    if not finite.any():
        return best
    j = np.flatnonzero(finite)
    sub_j = {k: v[j] if np.ndim(v) else v for k, v in sub.items()}
    e = eng.rows(j)
    fj = _rows(fac, j)
    lo, hi = np.zeros(len(j)), np.asarray(lat["capacity_per_s"], dtype=float)[j]
    found = np.zeros(len(j))
    for _ in range(GOODPUT_STEPS):
        mid = 0.5 * (lo + hi)
        got = latency_percentiles(e, mid, levels=(0.99,))
        ok, _ = _meets(got, got["ttft_mean_ms"], got["tpot_mean_ms"], sub_j, fj)
        found = np.where(ok, mid, found)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    best[j] = np.maximum(found, best[j])
    return best
