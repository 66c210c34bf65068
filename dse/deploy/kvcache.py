"""Reuse workloads, KV-cache tiers and routing in a deployment: per row, the prefix-cache hit
rate from the HBM a pool has left and the offload tier it is given (dse.model.kvcache), the
TTFT a tier hit costs, the busiest replica's load, and the tier's price and power.

Rows that use none of it (kv_tier hbm, no sessions, no trace, no routing) take the old path
untouched: their prefix_hit is the fixed fraction they give. Modelled for agg, whose pool
holds the cache; disagg and afd rows that ask for it are flagged infeasible.

How it enters the serving model: the hit rate replaces prefix_hit (so prefill computes only
the missed tokens); a tier hit's exposed load time is added to the request's latency outside
the GPU (runtime request_ms: the KV moves by DMA while other requests run); the busiest
replica serves concurrency x load_imbalance, it sets TTFT and TPOT, and the deployment's
tokens/s are the replicas' at that latency (Little's law: replicas x its rate / imbalance).
With think time the gap between a session's turns depends on the request's lifetime, so the
hit rate is solved with one fixed-point step (a first pass without think time gives it).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from dse.catalog.kv_tiers import TIERS, tier_of
from dse.catalog.traces import read_trace, reuse_cdf
from dse.model import kvcache as kv
from dse.model import memory
from dse.model.steps import ModeResult, Pool, prefill_phase

__all__ = ["asks", "active", "serve", "metrics", "FEATURE_COLUMNS"]

FEATURE_COLUMNS = ("kv_tier", "kv_tier_gb", "kv_tier_gb_s", "routing", "turns", "system_prompt", "think_time_s", "trace")


def asks(c: dict, vocab: dict) -> np.ndarray:
    """Per row: does it use a reuse workload, an offload tier or a routing model?"""
    def on(name, word_on):
        return np.array([word_on(str(w)) for w in vocab[name]], dtype=bool)[np.asarray(c[name])]
    return (on("kv_tier", lambda w: w != "hbm") | on("trace", bool) | on("routing", bool) | (c["turns"] > 1)
            | (c["system_prompt"] > 0) | (c["kv_tier_gb"] > 0))


def active(c: dict, vocab: dict) -> bool:
    """Does any row use a reuse workload, an offload tier or a routing model?"""
    return bool(np.any(asks(c, vocab)))


def _codes(c: dict, vocab: dict, name: str, words) -> np.ndarray:
    """The column as indices into `words` (the engine's codes index the vocabulary)."""
    lut = np.array([list(words).index(str(w)) if str(w) in words else 0 for w in vocab[name]])
    return lut[np.asarray(c[name])]


def _tier_arrays(c: dict, vocab: dict, reasons) -> dict:
    """Per row: the offload tier's figures (zero where the row has none), and flags."""
    tier = _codes(c, vocab, "kv_tier", TIERS)
    dev = np.asarray(c["device"], dtype=np.int64)
    names = ("gb_per_gpu", "link_gb_s", "latency_ms", "usd_per_gb", "w_per_gb", "rent_usd_per_gb_hour", "pooled")
    out = {k: np.zeros(len(dev)) for k in names}
    missing = np.zeros(len(dev), dtype=bool)
    key = dev * len(TIERS) + tier
    for k in np.unique(key[tier > 0]):
        rows = key == k
        t = tier_of(str(vocab["device"][k // len(TIERS)]), TIERS[k % len(TIERS)])
        if t is None:
            missing |= rows
            continue
        for f in names:
            out[f][rows] = float(getattr(t, f))
    gb = np.asarray(c["kv_tier_gb"], dtype=float)
    reasons.flag((tier == 0) & (gb > 0), "structure", "structure: kv_tier_gb needs a kv_tier beyond hbm")
    reasons.flag((tier > 0) & (gb <= 0), "structure", "structure: a kv_tier beyond hbm needs kv_tier_gb > 0")
    reasons.flag(missing, "structure", "structure: the device's system has no such kv_tier (hardware/kv_tiers.yaml)")
    reasons.flag(~missing & (tier > 0) & (gb > out["gb_per_gpu"]), "memory",
                 "memory: kv_tier_gb exceeds the tier's capacity per GPU (hardware/kv_tiers.yaml)")
    out["gb"] = np.where(missing | (tier == 0), 0.0, np.minimum(gb, out["gb_per_gpu"]))
    own = np.asarray(c["kv_tier_gb_s"], dtype=float)
    out["link_gb_s"] = np.where(own > 0, own, out["link_gb_s"])
    return out


def _trace_profiles(c: dict, vocab: dict, replicas, p, rows_of_trace) -> dict:
    """Per trace code: (rows, the profile a replica's HBM sees, the profile of a pool shared by all)."""
    out = {}
    for code, rows in rows_of_trace.items():
        tr = read_trace(str(vocab["trace"][code]))
        cdf, prompt, accessed = reuse_cdf(tr, kv.GRID)
        prof = kv.pairs_reuse(cdf=cdf, accessed=accessed, prompt=prompt, replicas=replicas[rows], p=p[rows])
        pooled = kv.pairs_reuse(cdf=cdf, accessed=accessed, prompt=prompt, replicas=replicas[rows],
                                p=np.ones(rows.sum()))
        out[code] = (rows, prof, pooled)
    return out


def _hits(c, st, gap, think_gap) -> tuple[np.ndarray, np.ndarray]:
    """(HBM hit share, tier hit share) of every row at the given session gaps."""
    n = len(gap)
    h_hbm, h_tier = np.zeros(n), np.zeros(n)
    sess = st["session_rows"]
    if sess.any():
        idx = np.flatnonzero(sess)
        args = dict(isl=c["isl"][idx], osl=c["osl"][idx], system=c["system_prompt"][idx], turns=c["turns"][idx],
                    gap=gap[idx], think_gap=think_gap[idx])
        prof = kv.session_reuse(p=st["p"][idx], **args)
        pooled = kv.session_reuse(p=np.where(st["pooled"][idx] > 0, 1.0, st["p"][idx]), **args)
        a, b = kv.tier_hits(hbm=prof, tier=pooled, hbm_tokens=st["hbm_tokens"][idx], tier_tokens=st["tier_tokens"][idx])
        h_hbm[idx], h_tier[idx] = a, b
    for rows, prof, pooled in st["traces"].values():
        tier_prof = pooled if np.all(st["pooled"][rows] > 0) else prof
        a, b = kv.tier_hits(hbm=prof, tier=tier_prof, hbm_tokens=st["hbm_tokens"][rows],
                            tier_tokens=st["tier_tokens"][rows])
        h_hbm[rows], h_tier[rows] = a, b
    return h_hbm, h_tier


def _tier_tokens(c, st, h_tier) -> np.ndarray:
    return np.where(st["reuse_rows"], h_tier, 0.0) * np.asarray(c["isl"], dtype=float)


def _common_at(model, pool: Pool, c, common: dict, st: dict, h_hbm, h_tier, util=0.0) -> dict:
    """The serving inputs with the computed hit rate and the tier loads' exposed time (at
    link utilisation `util`)."""
    reuse = st["reuse_rows"]
    hit = np.where(reuse, np.minimum(h_hbm + h_tier, 0.999), np.asarray(c["prefix_hit"], dtype=float))
    _, t_pre, _, _ = prefill_phase(model, pool, c["isl"], hit, common["skew"], common["coeffs"])
    exposed = kv.exposed_load_ms(tokens=_tier_tokens(c, st, h_tier), bytes_per_token=st["bpt"],
                                 link_gb_s=st["tier"]["link_gb_s"], latency_ms=st["tier"]["latency_ms"],
                                 compute_ms=t_pre, layers=float(model.num_layers), utilisation=util)
    rt = dataclasses.replace(common["rt"], request_ms=common["rt"].request_ms + exposed)
    return {**common, "prefix_hit": hit, "rt": rt}, hit


def _scaled(inner: Callable) -> Callable:
    """load_fn of the busiest replica: concurrency x imbalance, tokens/s per mean replica."""
    def load_fn(model, st, conc):
        t, p, tok = inner(model, st["inner"], conc * st["imb"])
        return t, p, tok / st["imb"]
    return load_fn


def serve(model, pools, pool: Pool, hwc: dict, c: dict, common: dict, conc,
          run: Callable[[dict, np.ndarray], ModeResult]) -> ModeResult:
    """run(common, concurrency) with the reuse workload, tier and routing of the rows applied."""
    vocab = pools.vocab
    if not active(c, vocab):
        return run(common, conc)
    reasons = pools.reasons
    n = len(np.asarray(c["tp"]))
    conc = np.broadcast_to(np.asarray(conc, dtype=float), (n,))
    tier = _tier_arrays(c, vocab, reasons)
    trace = np.asarray(c["trace"])
    has_trace = np.array([bool(str(w)) for w in vocab["trace"]])[trace]
    sessions = ~has_trace & ((c["turns"] > 1) | (c["system_prompt"] > 0))
    reuse = sessions | has_trace
    reasons.flag(reuse & (c["prefix_hit"] > 0), "structure",
                 "structure: prefix_hit is computed from the reuse workload (turns, system_prompt, trace); leave it 0")
    reasons.flag(has_trace & ((c["turns"] > 1) | (c["system_prompt"] > 0)), "structure",
                 "structure: give turns / system_prompt or a trace, not both")
    reasons.flag(c["system_prompt"] >= c["isl"], "structure", "structure: system_prompt must be shorter than isl")
    routing = _codes(c, vocab, "routing", kv.ROUTINGS)
    replicas = np.asarray(c["replicas"], dtype=float)
    imb = kv.load_imbalance(routing, replicas, conc)
    busy = conc * imb
    ctx = np.asarray(c["isl"] + c["osl"], dtype=float)
    bpt = memory.kv_bytes_per_seq(model, pool.par, pool.dt.kv_bytes, ctx) / ctx     # KV bytes per token per GPU
    dp = pool.par.dp
    st = dict(p=kv.p_same(routing, replicas), pooled=tier["pooled"], tier=tier, bpt=bpt, reuse_rows=reuse,
              session_rows=sessions, hbm_tokens=pool.cache_bytes / bpt * dp,
              tier_tokens=tier["gb"] * memory.GB / bpt * dp)
    codes = {int(k): trace == k for k in np.unique(trace[has_trace])}
    st["traces"] = _trace_profiles(c, vocab, replicas, st["p"], codes) if codes else {}
    h_hbm, h_tier = _hits(c, st, busy, np.zeros(n))
    com, hit = _common_at(model, pool, c, common, st, h_hbm, h_tier)
    res = run(com, busy)
    # one fixed-point step: the first pass's lifetime sets the think-time gap, its request
    # rate the tier link's utilisation
    think = np.asarray(c["think_time_s"], dtype=float) * 1e3
    loads = np.any(_tier_tokens(c, st, h_tier) > 0)
    if loads or np.any(sessions & (think > 0)):
        osl = np.asarray(c["osl"], dtype=float)
        life = res.ttft_ms + np.maximum(osl - 1.0, 0.0) * res.tpot_ms
        h_hbm, h_tier = _hits(c, st, busy, busy * think / np.maximum(life, 1e-9))
        util = kv.link_utilisation(requests_per_s=res.tokens_per_s / np.maximum(osl, 1.0),
                                   tokens=_tier_tokens(c, st, h_tier), bytes_per_token=st["bpt"],
                                   link_gb_s=st["tier"]["link_gb_s"])
        com, hit = _common_at(model, pool, c, common, st, h_hbm, h_tier, util)
        res = run(com, busy)
    for k, extra in (("price_usd", tier["usd_per_gb"]), ("host_w_per_gpu", tier["w_per_gb"]),
                     ("rent_usd_per_hour", tier["rent_usd_per_gb_hour"])):
        hwc[k] = hwc[k] + tier["gb"] * extra
    return dataclasses.replace(res, tokens_per_s=res.tokens_per_s / imb, load_fn=_scaled(res.load_fn),
                               load_state={"inner": res.load_state, "imb": imb},
                               cache={"cache_hit_rate": hit, "load_imbalance": imb})


def metrics(res: ModeResult, c: dict, vocab: dict, mode: str, reasons) -> dict:
    """cache_hit_rate and load_imbalance of the rows (the fixed prefix_hit and 1 on the old path);
    rows of another mode than agg that ask for reuse, tiers or routing are flagged."""
    if res.cache is not None:
        return dict(res.cache)
    if mode != "agg":
        reasons.flag(asks(c, vocab), "structure", f"structure: kv tiers, reuse workloads and routing are modelled "
                                                  f"for agg, not {mode}")
    n = len(np.asarray(c["tp"]))
    return {"cache_hit_rate": np.broadcast_to(np.asarray(c["prefix_hit"], dtype=float), (n,)).copy(),
            "load_imbalance": np.ones(n)}
