"""What a replica delivers: TTFT, TPOT and throughput of a serving mode from step times.

agg: one pool, continuous batching with chunked prefill. In steady state a replica
holding `batch` concurrent requests admits new ones at the rate old ones finish; each
admitted prompt's prefill work is spread over the steps that also decode the running
batch. Per output token a request therefore waits for one decode step plus its share
of the prefill work that arrived meanwhile:
    TPOT = t_decode / (1 - lam * t_prefill),   lam = batch / lifetime
and a new request waits for its own prefill chunks, each sharing a step with decode.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dse.catalog.models import Model
from dse.model import ops
from dse.model.ops import Dtypes, Hw, Parallel, Step


@dataclasses.dataclass
class PhaseResult:
    step: Step
    time_ms: np.ndarray        # wall time of the phase's step on one GPU


@dataclasses.dataclass
class AggResult:
    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    tokens_per_s: np.ndarray   # one replica, output tokens
    prefill: PhaseResult       # one request's whole prompt
    decode: PhaseResult        # one decode step of the running batch
    prefill_share: np.ndarray  # fraction of wall time spent on prefill work


def prefill_phase(model: Model, *, hw: Hw, par: Parallel, dt: Dtypes, isl, prefix_hit, skew) -> PhaseResult:
    """Prefill of one request's uncached prompt tokens (the cached prefix is attended, not recomputed)."""
    cached = np.floor(np.asarray(isl, dtype=float) * prefix_hit)
    new = np.maximum(isl - cached, 1.0)
    step = ops.forward(model, hw=hw, par=par, dt=dt, batch=np.ones_like(new) * par.dp, q_len=new, ctx=cached + new,
                       skew=skew)
    return PhaseResult(step=step, time_ms=step.total_ms)


def decode_phase(model: Model, *, hw: Hw, par: Parallel, dt: Dtypes, batch, ctx, skew) -> PhaseResult:
    """One decode step of `batch` sequences at average context `ctx`, pipelined over pp stages:
    pp micro-batches of batch/pp each; a token's step crosses every stage once."""
    micro = np.maximum(batch / par.pp, 1.0)
    step = ops.forward(model, hw=hw, par=par, dt=dt, batch=micro, q_len=np.ones_like(micro), ctx=ctx, skew=skew)
    return PhaseResult(step=step, time_ms=step.total_ms)


def agg(model: Model, *, hw: Hw, par: Parallel, dt: Dtypes, batch, isl, osl, prefix_hit, skew) -> AggResult:
    batch = np.asarray(batch, dtype=float)
    osl = np.asarray(osl, dtype=float)
    pre = prefill_phase(model, hw=hw, par=par, dt=dt, isl=isl, prefix_hit=prefix_hit, skew=skew)
    dec = decode_phase(model, hw=hw, par=par, dt=dt, batch=batch, ctx=isl + osl / 2.0, skew=skew)
    t_pre, t_dec = pre.time_ms, dec.time_ms
    # Fixed point of lifetime L = TTFT + (osl-1) TPOT, TPOT = t_dec / (1 - lam t_pre), lam = batch / L.
    ttft = t_pre + t_dec
    tpot = t_dec
    for _ in range(4):
        life = ttft + np.maximum(osl - 1.0, 0.0) * tpot
        lam = batch / life
        share = np.minimum(lam * t_pre, 0.95)
        tpot = t_dec / (1.0 - share)
        ttft = t_pre / (1.0 - share) * (1.0 + share) + t_dec
    life = ttft + np.maximum(osl - 1.0, 0.0) * tpot
    tokens_per_s = batch * osl / life * 1e3
    return AggResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=tokens_per_s, prefill=pre, decode=dec,
                     prefill_share=share)
