"""Attention/FFN-disaggregated serving (see dse.model.serving): attention with the KV
cache on one pool, FFN / experts on another, micro-batches ping-ponging between them;
prompts prefilled through the same pools (chunked) or on separate prefill workers.
"""
from __future__ import annotations

import numpy as np

from dse.catalog.models import Model
from dse.model.ops import Step
from dse.model.pd import pd_loop, prefill_pool_state
from dse.model.steps import (ModeResult, Pool, PoolReport, Runtime, Spec, chunked_latency, draft_ms, new_tokens,
                             pair_link, phase_power, pool_forward, scatter, take,
                             where_step)

__all__ = ["afd", "ATTN_OPS", "FFN_OPS", "AFD_MICROBATCHES"]

ATTN_OPS = ("attn_proj", "attn_core", "tp_comm", "lm_head", "pp_comm")
FFN_OPS = ("ffn", "moe")   # AFD: the dispatch to the experts is the pools' transfer, not an all-to-all
AFD_MICROBATCHES = (1, 2, 3)   # micro-batches in flight: 1 = take turns, 2-3 = ping-pong (MegaScale-Infer, Step-3)


def _sum_ops(step: Step, names) -> np.ndarray:
    return sum(step.time_ms[k] for k in names)


def _ops_of(step: Step, names) -> Step:
    """`step` with only the ops `names` (the others zero)."""
    zero = np.zeros(np.shape(step.time_ms[names[0]]))
    return Step(**{part: {k: (v[k] if k in names else zero) for k in v}
                   for part, v in (("time_ms", step.time_ms), ("flops", step.flops), ("bytes", step.bytes))}, zero=zero)


def afd(model: Model, attn_pool: Pool, ffn_pool: Pool, *, concurrency, isl, osl, prefix_hit, skew, coeffs,
        same_domain, rt: Runtime, pre_pool: Pool | None = None, prefill_workers=1,
        pre_same_domain=False, spec: Spec | None = None) -> ModeResult:
    """Attention/FFN disaggregation: per layer, each micro-batch runs attention on the
    attention pool, ships its activations to the FFN pool and back. With m micro-batches
    in flight the pools overlap: a layer costs max(m t_a, m t_f, m t_x) plus one
    micro-batch's pipeline fill (MegaScale-Infer's ping-pong pipeline); memory-bound
    experts are streamed once per micro-batch, so m is chosen per step (1 = take turns).
    Prompts are prefilled through the same pools (chunked, as in agg), or, given
    `pre_pool`, on separate prefill workers that hand the KV cache to the attention pool
    (prefill/decode disaggregation in front of an attention/FFN-disaggregated decode)."""
    conc = np.maximum(np.asarray(concurrency, dtype=float), 1.0)
    osl = np.asarray(osl, dtype=float)
    isl = np.asarray(isl, dtype=float)
    link = pair_link(attn_pool, ffn_pool, same_domain)
    if model.is_moe:
        # a token goes once to every distinct FFN GPU among its top-k experts inside one
        # scale-up domain; across the network once per FFN node (forwarded on over NVLink,
        # as DeepEP's internode dispatch does), the node's NICs sharing the traffic
        k = float(max(g.ffn.top_k for g in model.groups if g.ffn.kind == "moe"))
        targets = np.where(same_domain, ffn_pool.gpus, np.maximum(ffn_pool.gpus / ffn_pool.hw.domain, 1.0))
        copies = np.where(targets > 1, targets * -np.expm1(k * np.log1p(-1.0 / np.maximum(targets, 1.0 + 1e-9))), 1.0)
    else:
        copies = np.ones_like(np.asarray(ffn_pool.gpus, dtype=float))
    st = dict(attn_pool=attn_pool, ffn_pool=ffn_pool, link=link, rt=rt, skew=skew, coeffs=coeffs, osl=osl,
              isl_new=new_tokens(isl, prefix_hit), ctx=isl + osl / 2.0, copies=copies, spec=spec)
    dp = attn_pool.par.dp
    pools = []
    if pre_pool is not None:
        pst, pre_step, p_pre = prefill_pool_state(model, pre_pool, attn_pool, prefill_workers=prefill_workers, isl=isl,
                                                   prefix_hit=prefix_hit, skew=skew, coeffs=coeffs,
                                                   same_domain=pre_same_domain, rt=rt)
        st.update(pst, pd=True, d_ranks=dp)
        prefill = (pre_step, pre_pool.hw)
    else:
        one = np.ones_like(st["isl_new"])
        t_pre, pa_busy, pf_busy, _, pre_a, pre_f = _pingpong(model, st, dp * one, st["isl_new"], isl, one)
        # a prompt costs its share of a full-budget prefill step through both pools (priced
        # whole, so never less than the kernels say; the decode step's weight stream is not
        # credited to it)
        full = np.maximum(rt.max_tokens / st["isl_new"], 1.0)
        st["p1"] = _pingpong(model, st, dp * full, st["isl_new"], isl, one)[0] / full
        prefill = (pre_a, attn_pool.hw)
    ttft, tpot, x, d, da_busy, df_busy, tx, dec_a, dec_f, micro = _afd_at(model, st, conc, keep=True)
    if pre_pool is not None:
        share = np.zeros_like(ttft)
        ua, uf = da_busy / d, df_busy / d
        util_pre = np.minimum(x / st["pre_rate"], 1.0)
        gp = util_pre * p_pre + (1 - util_pre) * pre_pool.idle_w
        g_pre = pre_pool.gpus * np.asarray(prefill_workers, dtype=float)
        pools.append(PoolReport("prefill", st["t_pre"], util_pre, gp, g_pre, transfer_ms=st["xfer"]))
    else:
        share = np.minimum(x / dp * st["p1"], 1.0)
        ua = share * pa_busy / np.maximum(t_pre, 1e-9) + (1 - share) * da_busy / d
        uf = share * pf_busy / np.maximum(t_pre, 1e-9) + (1 - share) * df_busy / d
        gp, g_pre = 0.0, 0.0
    # each pool's power and breakdown are of the ops it runs
    dec_a, dec_f = _ops_of(dec_a, ATTN_OPS), _ops_of(dec_f, FFN_OPS)
    pa, _ = phase_power(attn_pool, dec_a, np.maximum(da_busy / micro, 1e-9), coeffs)
    pf, _ = phase_power(ffn_pool, dec_f, np.maximum(df_busy / micro, 1e-9), coeffs)
    ga = attn_pool.idle_w + np.minimum(ua, 1.0) * (pa - attn_pool.idle_w)
    gf = ffn_pool.idle_w + np.minimum(uf, 1.0) * (pf - ffn_pool.idle_w)
    pools += [PoolReport("attention", d, np.minimum(ua, 1.0), ga, attn_pool.gpus),
              PoolReport("ffn", d, np.minimum(uf, 1.0), gf, ffn_pool.gpus)]
    return ModeResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=x * osl * 1e3,
                      gpus=attn_pool.gpus + ffn_pool.gpus + g_pre,
                      gpu_power_w=ga * attn_pool.gpus + gf * ffn_pool.gpus + gp * g_pre, pools=pools, transfer_ms=tx,
                      steps={"prefill": prefill, "decode": (dec_a, attn_pool.hw), "decode_ffn": (dec_f, ffn_pool.hw)},
                      load_fn=_afd_at, load_state=st, model=model)


def _pingpong(model: Model, st: dict, batch, q_len, ctx, micro, verify: bool = False):
    """One step of `batch` sequences through both pools in `micro` micro-batches:
    (step time, attention busy, FFN busy, transfer busy, attention Step, FFN Step).

    The attention pool sends each token's activations straight to the FFN GPUs that hold
    its experts (the dispatch replaces the expert-parallel all-to-all) and gets the
    weighted sum back: a token crosses to every distinct FFN GPU among its top-k experts."""
    ap, fp = st["attn_pool"], st["ffn_pool"]
    # each pool prices the ops it runs; the attention pool all of them when it drafts (the
    # draft head is a whole layer)
    sa = pool_forward(model, ap, batch=batch / micro, q_len=q_len, ctx=ctx, skew=st["skew"], verify=verify,
                      part="all" if verify else "attention")
    sf = pool_forward(model, fp, batch=batch / micro, q_len=q_len, ctx=ctx, skew=st["skew"], verify=verify,
                      part="ffn")
    ta, tf = _sum_ops(sa, ATTN_OPS), _sum_ops(sf, FFN_OPS)
    tokens = batch / micro * q_len
    per_gpu = tokens * st["copies"] * float(model.hidden) / np.minimum(ap.gpus, fp.gpus)
    layers = float(model.num_layers)
    hop = ap.hw.hop_ms                  # fixed latency of one hop (RDMA / NVLink send + completion)
    t_out = layers * (per_gpu * ap.dt.a_bytes / (st["link"] * 1e9) * 1e3 + hop)   # dispatch
    t_back = layers * (per_gpu * 2.0 / (st["link"] * 1e9) * 1e3 + hop)            # combine (bf16)
    tx = t_out + t_back
    # per layer a micro-batch goes attention -> link -> FFN -> link; with m in flight each
    # resource serves m of them per layer (links are full duplex), and no micro-batch can
    # go round faster than its own round trip
    busy = micro * np.maximum(np.maximum(ta, tf), np.maximum(t_out, t_back))
    t = np.maximum(busy, ta + tf + tx)
    return t, micro * ta, micro * tf, micro * tx, sa, sf


def _afd_at(model: Model, st: dict, c, *, keep=False):
    """Decode steps at concurrency c; the number of micro-batches (1 = the pools take
    turns, 2-3 = ping-pong) is whichever gives the shortest step."""
    ap, rt, osl = st["attn_pool"], st["rt"], st["osl"]
    dp = ap.par.dp
    n = np.maximum(c / dp, 1.0)
    running = np.minimum(np.minimum(n, np.maximum(ap.max_seqs / dp, 1.0)), np.maximum(rt.max_seqs, 1.0))
    if st.get("pd"):
        n = np.size(running)
        ttft, tpot, x, (_, d, da, df, tx, dec_a, dec_f, micro) = pd_loop(
            st, c, running, lambda b, rows=None: _afd_token(model, st if rows is None else take(st, rows, n), b))
        if not keep:
            return ttft, tpot, x * osl * 1e3
        return ttft, tpot, x, d, da, df, tx, dec_a, dec_f, micro
    d, da, df, tx, dec_a, dec_f, micro = _afd_step(model, st, running)
    ttft, tpot = chunked_latency(n=n, running=running, d=d, p1=st["p1"], isl_new=st["isl_new"], osl=osl, rt=rt,
                                 per_step=_per_step(st))
    x = c / (ttft + np.maximum(osl - 1.0, 0.0) * tpot)
    if not keep:
        return ttft, tpot, x * osl * 1e3
    return ttft, tpot, x, d, da, df, tx, dec_a, dec_f, micro


def _per_step(st: dict):
    spec = st.get("spec")
    return 1.0 if spec is None else spec.per_step()


def _afd_token(model: Model, st: dict, running):
    """_afd_step with the time per output token in front (for pd_loop)."""
    out = _afd_step(model, st, running)
    return (out[0] / _per_step(st),) + out


def _afd_step(model: Model, st: dict, running):
    """The best of 1-3 micro-batches for a decode step of `running` sequences per
    attention rank: (step incl. step_ms and drafting, attn busy, FFN busy, transfer,
    Steps, micro). A count m is priced only on the rows with more than m-1 sequences in
    the step: elsewhere it is the same micro-batching as m-1, and the same step."""
    dp = st["attn_pool"].par.dp
    spec = st.get("spec")
    q = np.ones_like(running) if spec is None else (1.0 + spec.tokens) * np.ones_like(running)
    n, seqs = np.size(running), running * dp
    best = None
    for m in AFD_MICROBATCHES:
        micro = np.minimum(float(m), np.maximum(seqs, 1.0))
        if best is None:
            best = _micro_step(model, st, seqs, q, micro) + [micro]
            continue
        rows = np.flatnonzero(seqs > m - 1)
        if rows.size == 0:
            continue
        if rows.size == n:
            out = _micro_step(model, st, seqs, q, micro)
        else:
            out = _micro_step(model, take(st, rows, n), seqs[rows], q[rows], micro[rows])
            out = [scatter(b, rows, o, n) for o, b in zip(out, best)]
        better = out[0] < best[0]          # the micro-batch count is chosen on the whole step, drafting included
        best[:4] = [np.where(better, o, b) for o, b in zip(out[:4], best[:4])]
        best[4], best[5] = (where_step(better, out[4], best[4]), where_step(better, out[5], best[5]))
        best[6] = np.where(better, micro, best[6])
    best[0] = best[0] + st["rt"].step_ms
    return tuple(best)


def _micro_step(model: Model, st: dict, seqs, q, micro) -> list:
    """_pingpong of one micro-batch count, drafting included."""
    spec = st.get("spec")
    out = list(_pingpong(model, st, seqs, q, st["ctx"], micro, verify=spec is not None))
    if spec is not None:   # the draft head (attention and FFN of one layer) runs on the attention pool
        out[0] = out[0] + draft_ms(model, out[4], spec.tokens)
    return out
