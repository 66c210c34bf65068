"""Aggregated and prefill/decode-disaggregated serving (see dse.model.serving).

agg: one pool, continuous batching with chunked prefill; prompts arrive in groups that
share a step, and the other running requests' prompts are spread over a request's decode
steps. disagg: a prefill pool batches whole prompts up to `max_tokens` and hands each KV
cache to a decode pool (its transfer adds to TTFT); throughput is the least of the
closed loop, the prefill pool's and the decode pool's rates. The prefill pool and its
closed loop (`prefill_pool_state`, `pd_loop`) also serve afd with separate prefill workers.
"""
from __future__ import annotations

import numpy as np

from dse.catalog.models import Model
from dse.model.ops import Step
from dse.model.steps import (ModeResult, PhaseSteps, Pool, PoolReport, Runtime, Spec, decode_phase, mixed_latency,
                             new_tokens, pair_link, prefill_phase, scatter, take)

__all__ = ["agg", "disagg", "kv_transfer_ms", "prefill_pool_state", "pd_loop"]


def agg(model: Model, pool: Pool, *, concurrency, isl, osl, prefix_hit, skew, coeffs, rt: Runtime,
        spec: Spec | None = None) -> ModeResult:
    conc = np.maximum(np.asarray(concurrency, dtype=float), 1.0)
    osl = np.asarray(osl, dtype=float)
    isl = np.asarray(isl, dtype=float)
    isl_new = new_tokens(isl, prefix_hit)
    st = dict(pool=pool, rt=rt, skew=skew, coeffs=coeffs, osl=osl, isl_new=isl_new, cached=isl - isl_new,
              ctx=isl + osl / 2.0, spec=spec)
    ttft, tpot, x, d, dec, p_dec = _agg_at(model, st, conc, keep=True)
    rep = PoolReport("agg", d, np.ones_like(d), p_dec, pool.gpus)

    def prefill():      # a prompt's own prefill step: only a breakdown reads it (its time is in the mixed steps)
        return prefill_phase(model, pool, isl, prefix_hit, skew, coeffs)[0], pool.hw

    return ModeResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=x * osl * 1e3, gpus=pool.gpus,
                      gpu_power_w=p_dec * pool.gpus, pools=[rep], transfer_ms=np.zeros_like(ttft),
                      steps=PhaseSteps({"prefill": prefill, "decode": lambda: (dec, pool.hw)}),
                      load_fn=_agg_at, load_state=st, model=model)


def _agg_at(model: Model, st: dict, c, *, keep=False):
    """Steady state at concurrency c: every step mixes the running decodes with prompt
    chunks (steps.mixed_latency); the closed loop, the KV slots, the engine's cap on
    running sequences and the ranks' prompt capacity bound the throughput."""
    pool, rt, osl = st["pool"], st["rt"], st["osl"]
    dp = pool.par.dp
    n = np.maximum(c / dp, 1.0)
    running = np.minimum(np.minimum(n, np.maximum(pool.max_seqs / dp, 1.0)), np.maximum(rt.max_seqs, 1.0))
    ttft, tpot, capacity, d, dec, p_dec = mixed_latency(model, st, n, running)
    osl1 = np.maximum(osl - 1.0, 0.0)
    x = np.minimum(c / (ttft + osl1 * tpot), capacity * dp)                 # requests per ms, whole replica
    ttft = np.maximum(ttft, c / x - osl1 * tpot)                            # the backlog waits for a prefill
    if not keep:
        return ttft, tpot, x * osl * 1e3
    return ttft, tpot, x, d, dec, p_dec


def kv_transfer_ms(model: Model, *, isl, kv_bytes, same_domain, src: Pool, dst: Pool) -> np.ndarray:
    """Moving one prompt's KV cache from a prefill worker to a decode worker: every
    prefill GPU sends its shard in parallel over its own link (scale-up inside one
    domain, its NIC otherwise), plus a fixed handshake (runtime.yaml kv_handoff_ms)."""
    elems = model.kv_elems_per_token(1) * np.asarray(isl, dtype=float)
    nbytes = elems * kv_bytes
    link = pair_link(src, dst, same_domain)
    lanes = np.minimum(src.gpus, dst.gpus)
    return nbytes / (link * 1e9 * lanes) * 1e3 + src.hw.kv_handoff_ms


def disagg(model: Model, pre_pool: Pool, dec_pool: Pool, *, prefill_workers, decode_workers, concurrency,
           isl, osl, prefix_hit, skew, coeffs, same_domain, rt: Runtime, spec: Spec | None = None) -> ModeResult:
    """Prefill workers run batches of whole prompts (up to max_tokens) and hand each KV
    cache to a decode worker; decode steps carry no prefill. Closed loop over both."""
    osl = np.asarray(osl, dtype=float)
    pw = np.asarray(prefill_workers, dtype=float)
    dw = np.asarray(decode_workers, dtype=float)
    st, pre, p_pre = prefill_pool_state(model, pre_pool, dec_pool, prefill_workers=pw, isl=isl, prefix_hit=prefix_hit,
                                         skew=skew, coeffs=coeffs, same_domain=same_domain, rt=rt)
    t_pre, xfer = st["t_pre"], st["xfer"]
    st.update(dec_pool=dec_pool, rt=rt, skew=skew, coeffs=coeffs, osl=osl, ctx=np.asarray(isl, dtype=float) + osl / 2.0,
              d_ranks=dw * dec_pool.par.dp, spec=spec)
    conc = np.maximum(np.asarray(concurrency, dtype=float), 1.0)
    ttft, tpot, x, dec, p_dec = _disagg_at(model, st, conc, keep=True)
    util_pre = np.minimum(x / st["pre_rate"], 1.0)
    util_dec = np.ones_like(util_pre)                    # decode steps run while any sequence is running
    gp = util_pre * p_pre + (1 - util_pre) * pre_pool.idle_w
    gd = util_dec * p_dec + (1 - util_dec) * dec_pool.idle_w
    g_pre, g_dec = pre_pool.gpus * pw, dec_pool.gpus * dw
    pools = [PoolReport("prefill", t_pre, util_pre, gp, g_pre), PoolReport("decode", tpot, util_dec, gd, g_dec)]
    return ModeResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=x * osl * 1e3, gpus=g_pre + g_dec,
                      gpu_power_w=gp * g_pre + gd * g_dec, pools=pools, transfer_ms=xfer,
                      steps={"prefill": (pre, pre_pool.hw), "decode": (dec, dec_pool.hw)},
                      load_fn=_disagg_at, load_state=st, model=model)


def _disagg_at(model: Model, st: dict, c, *, keep=False):
    pool = st["dec_pool"]
    running = np.minimum(np.minimum(np.maximum(c / st["d_ranks"], 1.0), np.maximum(pool.max_seqs / pool.par.dp, 1.0)),
                         np.maximum(st["rt"].max_seqs, 1.0))

    n = np.size(running)

    def decode(batch, rows=None):
        p, s = pool, st
        if rows is not None:
            p, s = take(pool, rows, n), {k: take(st.get(k), rows, n) for k in ("spec", "ctx", "skew", "coeffs", "rt")}
        d, per_step, dec, p_dec = decode_phase(model, p, batch * p.par.dp, s)
        return d / per_step, dec, p_dec

    ttft, tpot, x, (_, dec, p_dec) = pd_loop(st, c, running, decode)
    if not keep:
        return ttft, tpot, x * st["osl"] * 1e3
    return ttft, tpot, x, dec, p_dec


def prefill_pool_state(model: Model, pre_pool: Pool, dst: Pool, *, prefill_workers, isl, prefix_hit, skew, coeffs,
                        same_domain, rt: Runtime) -> tuple[dict, Step, np.ndarray]:
    """What a separate prefill pool contributes: its step, batching, KV hand-off and rate.

    A prefill batch of g prompts takes the chord between one prompt's step and a full
    batch's (max_tokens of prompt), both priced through the kernels; its pp stages work on
    different batches at once, so the pool's rate is pp full batches per full-batch time."""
    isl_new = new_tokens(isl, prefix_hit)
    full = np.maximum(rt.max_tokens / isl_new, 1.0)      # prompts in a full prefill batch
    pre, t_pre, p_pre, t_full = prefill_phase(model, pre_pool, isl, prefix_hit, skew, coeffs, full=full)
    t_pre, t_full = t_pre + rt.step_ms, t_full + rt.step_ms
    slope = np.where(full > 1.0, (t_full - t_pre) / np.maximum(full - 1.0, 1e-9), 0.0)
    xfer = kv_transfer_ms(model, isl=isl, kv_bytes=dst.dt.kv_bytes, same_domain=same_domain, src=pre_pool, dst=dst)
    p_ranks = np.asarray(prefill_workers, dtype=float) * pre_pool.par.dp
    st = dict(t_pre=t_pre, p1=slope, xfer=xfer, full=full, p_ranks=p_ranks,
              pre_rate=p_ranks * pre_pool.par.pp * full / t_full)   # requests per ms the prefill pool sustains
    return st, pre, p_pre


def pd_loop(st: dict, c, running, decode):
    """Closed loop over a prefill pool and decode ranks whose time per output token at a
    given batch per rank is decode(batch)[0]: (TTFT, TPOT, requests per ms, decode(...) at
    the served load). decode(batch, rows) prices the rows `rows` only (batch: theirs)."""
    rt, osl = st["rt"], st["osl"]
    osl1 = np.maximum(osl - 1.0, 0.0)
    p_ranks, d_ranks, full, p1, t_pre = st["p_ranks"], st["d_ranks"], st["full"], st["p1"], st["t_pre"]
    out = decode(running)
    tpot = out[0]
    # prompts come back in groups (one decode step finishes them together) and share a batch
    group = np.clip(c / p_ranks, 1.0, full)
    ttft = rt.request_ms + t_pre + (group - 1.0) * p1 + st["xfer"]
    steps_first = np.maximum(c / p_ranks / full, 1.0)
    first = (rt.request_ms + (steps_first + 1.0) / 2.0 * (t_pre + (np.minimum(c / p_ranks, full) - 1.0) * p1)
             + st["xfer"])
    ttft = ttft + np.maximum(first - ttft, 0.0) / rt.rounds
    loop = c / (ttft + osl1 * tpot)
    dec_rate = d_ranks * running / np.maximum(osl1 * tpot, 1e-9)
    x = np.minimum(np.minimum(loop, st["pre_rate"]), dec_rate)
    starved = x < np.minimum(loop, dec_rate) * 0.999
    if np.any(starved):
        # prefill-bound: fewer sequences decode at once (Little: x * decode time), so steps are
        # shorter; only those rows are priced again
        fewer = np.clip(x * osl1 * tpot / d_ranks, 1.0, running)
        if np.all(starved):
            out = decode(fewer)
        else:
            rows = np.flatnonzero(starved)
            again = decode(np.broadcast_to(fewer, starved.shape)[rows], rows)
            out = tuple(scatter(a, rows, b, starved.size) for a, b in zip(out, again))
        tpot = out[0]
    ttft = np.maximum(ttft, c / x - osl1 * tpot)          # the backlog waits for prefill or a decode slot
    return ttft, tpot, x, out
