"""What a deployment delivers: TTFT, TPOT, throughput and power of a serving mode.

A *pool* is a set of identical workers (device, parallel layout, formats). Step times
come from `ops.forward`; this module turns them into serving behaviour.

agg: one pool, continuous batching with chunked prefill. A replica holds up to
    `batch` running requests (fewer if their KV cache does not fit; the rest queue).
    New prompts' prefill work shares steps with decode, so per output token a request
    waits one decode step plus the prefill work that arrived meanwhile:
        TPOT = t_decode / (1 - lam t_prefill),  lam = running / lifetime.
disagg: a prefill pool and a decode pool, possibly of different devices. The KV
    cache of each prompt moves from prefill to decode (scale-up fabric inside one
    domain, NICs otherwise); throughput is the lesser of the pools' rates; prefill
    queueing shows up in TTFT.
afd: attention (with the KV cache) on one pool, FFN / experts on another;
    micro-batches ping-pong between them so transfers hide behind compute when they can.

Concurrency is closed-loop: `concurrency` users each keep one request in flight, so
throughput X and lifetime L obey L = concurrency / X; when a pool saturates (KV
capacity, prefill rate), the excess appears as waiting time in TTFT.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from dse.catalog.models import Model
from dse.model import ops, power
from dse.model.ops import Dtypes, Hw, Parallel, Step

ATTN_OPS = ("attn_proj", "attn_core", "tp_comm", "lm_head", "pp_comm")
FFN_OPS = ("ffn", "moe", "ep_comm")
AFD_MICROBATCHES = 2.0


@dataclasses.dataclass
class Pool:
    """One kind of worker: hardware arrays, formats, layout and per-GPU figures."""
    hw: Hw
    dt: Dtypes
    par: Parallel
    tdp_w: np.ndarray
    idle_w: np.ndarray
    cap_w: np.ndarray              # power cap per GPU
    max_seqs: np.ndarray           # sequences one worker's KV memory holds

    @property
    def gpus(self) -> np.ndarray:
        return self.par.tp * self.par.dp * self.par.pp


@dataclasses.dataclass
class PoolReport:
    role: str
    step_ms: np.ndarray            # the pool's step (prefill of a request, or decode step)
    utilisation: np.ndarray        # busy fraction of the pool's GPUs
    power_w: np.ndarray            # average power per GPU (GPU only)
    gpus: np.ndarray               # GPUs in this role for the whole unit


@dataclasses.dataclass
class ModeResult:
    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    tokens_per_s: np.ndarray       # output tokens per second of one unit (replica)
    gpus: np.ndarray               # GPUs in one unit
    gpu_power_w: np.ndarray        # sum of average GPU power of the unit
    pools: list                    # PoolReport per role
    transfer_ms: np.ndarray        # KV (disagg) or activation (afd) transfer per request / step
    steps: dict                    # phase name -> (Step, Hw of its pool), for the breakdown


def _phase_power(pool: Pool, step: Step, time_ms, coeffs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(capped power per GPU while running this phase, time stretch from the cap)."""
    p = power.gpu_power_w(flops=step.total_flops(), nbytes=step.total_bytes(), time_ms=time_ms,
                          peak_tflops=pool.hw.peak_gemm, mem_tb_s=pool.hw.mem_tb_s,
                          tdp_w=pool.tdp_w, idle_w=pool.idle_w, **coeffs)
    share = compute_bound_share(step, pool.hw)
    capped, stretched = power.apply_cap(p, time_ms, share, cap_w=pool.cap_w)
    return capped, stretched / np.maximum(time_ms, 1e-12)


def bound_split(step: Step, hw: Hw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time of the step's operators that are compute-bound, memory-bound, communication."""
    comp = mem = 0.0
    for op, t in step.time_ms.items():
        if op in ops.COMM_OPS:
            continue
        is_c = step.flops[op] / hw.peak_gemm >= step.bytes[op] / hw.mem_tb_s
        comp = comp + np.where(is_c, t, 0.0)
        mem = mem + np.where(is_c, 0.0, t)
    return comp, mem, step.comm_ms()


def compute_bound_share(step: Step, hw: Hw) -> np.ndarray:
    comp, mem, comm = bound_split(step, hw)
    return comp / np.maximum(comp + mem + comm, 1e-12)


def _take(x, idx, n):
    if isinstance(x, dict):
        return {k: _take(v, idx, n) for k, v in x.items()}
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: _take(getattr(x, f.name), idx, n) for f in dataclasses.fields(x)})
    return np.broadcast_to(np.asarray(x, dtype=float), (n,))[idx]


def _unique_rows(*cols) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first row of each distinct combination of `cols`, and each row's group."""
    n = max(np.size(c) for c in cols)
    key = np.zeros(n, dtype=np.int64)
    for c in cols:
        codes, uniq = pd.factorize(np.broadcast_to(np.asarray(c, dtype=float), (n,)))
        key = pd.factorize(key * len(uniq) + codes)[0]  # stays < n: no overflow
    inverse_codes, uniq_keys = pd.factorize(key)
    first = np.zeros(len(uniq_keys), dtype=np.int64)
    first[inverse_codes[::-1]] = np.arange(n)[::-1]
    return first, inverse_codes


def _prefill_step(model: Model, pool: Pool, isl, prefix_hit, skew) -> Step:
    """Prefill of one request's uncached prompt (the cached prefix is attended, not recomputed).

    It does not depend on the batch, so a sweep's many rows share few distinct prefills:
    compute each distinct (hardware, layout, formats, prompt) once and gather."""
    n = np.broadcast(isl, pool.par.tp, pool.hw.peak_gemm).shape[0] if np.ndim(isl) or np.ndim(pool.par.tp) else 1
    isl = np.broadcast_to(np.asarray(isl, dtype=float), (n,))
    cached = np.floor(isl * prefix_hit)
    new = np.maximum(isl - cached, 1.0)
    first, inverse = _unique_rows(pool.hw.peak_gemm, pool.hw.mem_tb_s, pool.hw.scaleup_gb_s, pool.hw.domain,
                                  pool.hw.params["gemm"]["eff_compute"], pool.par.tp, pool.par.dp, pool.par.ep,
                                  pool.par.pp, pool.dt.w_bytes, pool.dt.kv_bytes, new, cached, skew)
    if len(first) == n:
        return ops.forward(model, hw=pool.hw, par=pool.par, dt=pool.dt, batch=pool.par.dp, q_len=new,
                           ctx=cached + new, skew=skew)
    sub = _take(pool, first, n)
    step = ops.forward(model, hw=sub.hw, par=sub.par, dt=sub.dt, batch=sub.par.dp, q_len=new[first],
                       ctx=(cached + new)[first], skew=np.broadcast_to(np.asarray(skew, dtype=float), (n,))[first])
    return Step(time_ms={k: v[inverse] for k, v in step.time_ms.items()},
                flops={k: v[inverse] for k, v in step.flops.items()},
                bytes={k: v[inverse] for k, v in step.bytes.items()})


def _decode_step(model: Model, pool: Pool, batch, ctx, skew) -> Step:
    """One decode step of `batch` sequences, pipelined over pp stages as pp micro-batches:
    a token's step crosses every stage once, so TPOT is one micro-batch through all layers."""
    micro = np.maximum(np.asarray(batch, dtype=float) / pool.par.pp, 1.0)
    return ops.forward(model, hw=pool.hw, par=pool.par, dt=pool.dt, batch=micro, q_len=np.ones_like(micro),
                       ctx=ctx, skew=skew)


def _chunked_mix(t_pre, t_dec, running, osl):
    """Fixed point of continuous batching with prefill sharing decode steps.
    Returns (ttft of a running request, tpot, prefill share of wall time, requests/ms)."""
    osl = np.asarray(osl, dtype=float)
    ttft, tpot = t_pre + t_dec, t_dec
    for _ in range(6):
        life = ttft + np.maximum(osl - 1.0, 0.0) * tpot
        share = np.minimum(running / life * t_pre, 0.95)
        tpot = t_dec / (1.0 - share)
        # a new prompt's chunks wait behind the prefill work already queued
        ttft = t_pre / (1.0 - share) + t_dec
    life = ttft + np.maximum(osl - 1.0, 0.0) * tpot
    return ttft, tpot, share, running / life


def agg(model: Model, pool: Pool, *, concurrency, isl, osl, prefix_hit, skew, coeffs) -> ModeResult:
    conc = np.asarray(concurrency, dtype=float)
    osl = np.asarray(osl, dtype=float)
    running = np.maximum(np.minimum(conc, pool.max_seqs), 1.0)
    pre = _prefill_step(model, pool, isl, prefix_hit, skew)
    dec = _decode_step(model, pool, running, isl + osl / 2.0, skew)
    p_pre, s_pre = _phase_power(pool, pre, pre.total_ms, coeffs)
    p_dec, s_dec = _phase_power(pool, dec, dec.total_ms, coeffs)
    t_pre, t_dec = pre.total_ms * s_pre, dec.total_ms * s_dec
    ttft, tpot, share, x = _chunked_mix(t_pre, t_dec, running, osl)
    ttft = np.maximum(ttft, conc / x - np.maximum(osl - 1.0, 0.0) * tpot)   # queue for a KV slot
    gpu_w = share * p_pre + (1.0 - share) * p_dec
    rep = PoolReport("agg", t_dec, np.ones_like(t_dec), gpu_w, pool.gpus)
    return ModeResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=x * osl * 1e3, gpus=pool.gpus,
                      gpu_power_w=gpu_w * pool.gpus, pools=[rep], transfer_ms=np.zeros_like(ttft),
                      steps={"prefill": (pre, pool.hw), "decode": (dec, pool.hw)})


def kv_transfer_ms(model: Model, *, isl, kv_bytes, same_domain, src: Pool, dst: Pool) -> np.ndarray:
    """Moving one prompt's KV cache from a prefill worker to a decode worker: every
    prefill GPU sends its shard in parallel over its own link (scale-up inside one
    domain, its NIC otherwise), plus a fixed handshake of 20 us."""
    elems = model.kv_elems_per_token(1) * np.asarray(isl, dtype=float)
    nbytes = elems * kv_bytes
    link = np.where(same_domain, np.minimum(src.hw.scaleup_gb_s, dst.hw.scaleup_gb_s),
                    np.minimum(src.hw.scaleout_gb_s, dst.hw.scaleout_gb_s))
    lanes = np.minimum(src.gpus, dst.gpus)
    return nbytes / (link * 1e9 * lanes) * 1e3 + 0.02


def disagg(model: Model, pre_pool: Pool, dec_pool: Pool, *, prefill_workers, decode_workers, decode_batch,
           isl, osl, prefix_hit, skew, coeffs, same_domain) -> ModeResult:
    osl = np.asarray(osl, dtype=float)
    b_dec = np.maximum(np.minimum(decode_batch, dec_pool.max_seqs), 1.0)
    conc = np.asarray(decode_batch, dtype=float) * decode_workers
    pre = _prefill_step(model, pre_pool, isl, prefix_hit, skew)
    dec = _decode_step(model, dec_pool, b_dec, isl + osl / 2.0, skew)
    p_pre, s_pre = _phase_power(pre_pool, pre, pre.total_ms, coeffs)
    p_dec, s_dec = _phase_power(dec_pool, dec, dec.total_ms, coeffs)
    t_pre, tpot = pre.total_ms * s_pre, dec.total_ms * s_dec
    xfer = kv_transfer_ms(model, isl=isl, kv_bytes=dec_pool.dt.kv_bytes, same_domain=same_domain,
                          src=pre_pool, dst=dec_pool)
    pre_rate = prefill_workers * pre_pool.par.dp / t_pre                 # requests per ms
    dec_rate = decode_workers * b_dec / (np.maximum(osl - 1.0, 1.0) * tpot)
    x = np.minimum(np.minimum(conc / (t_pre + xfer + np.maximum(osl - 1.0, 0.0) * tpot), pre_rate), dec_rate)
    rho = np.minimum(x / pre_rate, 0.99)
    wait = t_pre * rho / (2.0 * (1.0 - rho)) / np.maximum(prefill_workers, 1.0)  # M/D/c-style queueing
    ttft = np.maximum(t_pre + xfer + wait, conc / x - np.maximum(osl - 1.0, 0.0) * tpot)
    util_pre = rho
    util_dec = np.minimum(x / dec_rate, 1.0)
    gp = util_pre * p_pre + (1 - util_pre) * pre_pool.idle_w
    gd = util_dec * p_dec + (1 - util_dec) * dec_pool.idle_w
    g_pre, g_dec = pre_pool.gpus * prefill_workers, dec_pool.gpus * decode_workers
    pools = [PoolReport("prefill", t_pre, util_pre, gp, g_pre), PoolReport("decode", tpot, util_dec, gd, g_dec)]
    return ModeResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=x * osl * 1e3, gpus=g_pre + g_dec,
                      gpu_power_w=gp * g_pre + gd * g_dec, pools=pools, transfer_ms=xfer,
                      steps={"prefill": (pre, pre_pool.hw), "decode": (dec, dec_pool.hw)})


def _sum_ops(step: Step, names) -> np.ndarray:
    return sum(step.time_ms[k] for k in names)


def afd(model: Model, attn_pool: Pool, ffn_pool: Pool, *, concurrency, isl, osl, prefix_hit, skew, coeffs,
        same_domain) -> ModeResult:
    """Attention/FFN disaggregation: per layer, each micro-batch runs attention on the
    attention pool, ships its activations to the FFN pool and back. With m micro-batches
    in flight the pools overlap: a layer costs max(m t_a, m t_f, 2 m t_x) plus one
    micro-batch's pipeline fill."""
    conc = np.asarray(concurrency, dtype=float)
    osl = np.asarray(osl, dtype=float)
    running = np.maximum(np.minimum(conc, attn_pool.max_seqs), 1.0)
    m = AFD_MICROBATCHES
    h = float(model.hidden)
    link = np.where(same_domain, np.minimum(attn_pool.hw.scaleup_gb_s, ffn_pool.hw.scaleup_gb_s),
                    np.minimum(attn_pool.hw.scaleout_gb_s, ffn_pool.hw.scaleout_gb_s))
    lanes = np.minimum(attn_pool.gpus, ffn_pool.gpus)

    def pingpong(tokens, batch, q_len, ctx, micro):
        sa = ops.forward(model, hw=attn_pool.hw, par=attn_pool.par, dt=attn_pool.dt, batch=batch / micro,
                         q_len=q_len, ctx=ctx, skew=skew)
        sf = ops.forward(model, hw=ffn_pool.hw, par=ffn_pool.par, dt=ffn_pool.dt, batch=batch / micro,
                         q_len=q_len, ctx=ctx, skew=skew)
        ta, tf = _sum_ops(sa, ATTN_OPS), _sum_ops(sf, FFN_OPS)
        tx = model.num_layers * (tokens / micro * h * attn_pool.dt.a_bytes / (link * 1e9 * lanes) * 1e3 + 0.01)
        stage = np.maximum(np.maximum(micro * ta, micro * tf), 2.0 * micro * tx)
        fill = ta + tf + 2.0 * tx - np.maximum(np.maximum(ta, tf), 2.0 * tx)
        return stage + fill, micro * ta, micro * tf, micro * tx, sa, sf

    isl = np.asarray(isl, dtype=float)
    new = np.maximum(isl - np.floor(isl * prefix_hit), 1.0)
    t_pre, pa_busy, pf_busy, _, pre_a, pre_f = pingpong(new, np.ones_like(new), new, isl, 1.0)
    t_dec, da_busy, df_busy, tx, dec_a, dec_f = pingpong(running, running, np.ones_like(running),
                                                         isl + osl / 2.0, m)
    ttft, tpot, share, x = _chunked_mix(t_pre, t_dec, running, osl)
    ttft = np.maximum(ttft, conc / x - np.maximum(osl - 1.0, 0.0) * tpot)
    ua = share * pa_busy / t_pre + (1 - share) * da_busy / t_dec
    uf = share * pf_busy / t_pre + (1 - share) * df_busy / t_dec
    pa, _ = _phase_power(attn_pool, dec_a, np.maximum(t_dec, 1e-9) / m, coeffs)
    pf, _ = _phase_power(ffn_pool, dec_f, np.maximum(t_dec, 1e-9) / m, coeffs)
    ga = attn_pool.idle_w + np.minimum(ua, 1.0) * (pa - attn_pool.idle_w)
    gf = ffn_pool.idle_w + np.minimum(uf, 1.0) * (pf - ffn_pool.idle_w)
    pools = [PoolReport("attention", t_dec, ua, ga, attn_pool.gpus), PoolReport("ffn", t_dec, uf, gf, ffn_pool.gpus)]
    return ModeResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=x * osl * 1e3, gpus=attn_pool.gpus + ffn_pool.gpus,
                      gpu_power_w=ga * attn_pool.gpus + gf * ffn_pool.gpus, pools=pools, transfer_ms=tx,
                      steps={"prefill": (pre_a, attn_pool.hw), "decode": (dec_a, attn_pool.hw),
                             "decode_ffn": (dec_f, ffn_pool.hw)})
