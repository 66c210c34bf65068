"""Prefix-cache hit rate from capacity, what a hit served from an offload tier costs, and the
load imbalance of routing requests over replicas.

Why analytic: a sweep prices millions of rows, so the hit rate of an LRU cache is Che's
characteristic-time approximation (Che, Tung, Wang, IEEE JSAC 2002; for reuse that is not
independent-reference, Fricker, Robert, Roberts, ITC 2012): a block stays cached for T
requests after its last access, T set by filling the capacity,
    C = sum over accessed tokens of min(gap to their next access, T),   hit = P(gap < T).
Time runs in requests of the cache (a request clock): a closed loop's gaps do not depend on
how fast it is served. A profile (`Reuse`) is the token weight of reuse pairs on a log grid
of gaps, per request, plus the tokens never reused at this cache.

Sessions (`session_reuse`): a shared system prompt (every request reuses it: gap 1) and, per
session, turns whose prompt is the previous prompt and answer plus a new message; between
two turns of a session a replica serves the other sessions' turns: `gap` requests (in
flight, plus those of thinking users). Traces: the reuse pairs of the trace itself.

Routing over R replicas: a request lands on the replica that served its prefix last with
probability `p_same` (1 prefix_affinity, 1/2 dual_hash: two candidates, 1/R random and
least_loaded); otherwise the copy there is k turns old, k geometric (a cached block
of an older visit still hits, gap k times longer; more than KMAX visits ago: a miss).
Imbalance (`load_imbalance`): the busiest replica's requests over the mean, from
balls-into-bins: random and hashing m + sqrt(2 m ln R) (Raab, Steger, RANDOM 1998), two
choices m + ln ln R / ln 2 (Berenbrink, Czumaj, Steger, Vöcking, STOC 2000), least loaded
within one request of the mean.
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["GRID", "KMAX", "ROUTINGS", "Reuse", "hit_fraction", "session_reuse", "pairs_reuse", "p_same",
           "load_imbalance", "tier_hits", "exposed_load_ms", "link_utilisation", "MAX_LINK_UTILISATION"]

PER_DECADE = 16
GRID = np.geomspace(1.0, 1e9, 9 * PER_DECADE + 1)     # gaps between accesses, requests of one cache
_LOG_STEP = np.log(GRID[1] / GRID[0])
KMAX = 6                 # older copies than this many visits of a replica are counted as misses
ROUTINGS = ("", "random", "least_loaded", "prefix_affinity", "dual_hash")   # "" = even load, no routing model


@dataclasses.dataclass
class Reuse:
    """Per request of one cache: w[:, k] tokens reused GRID[k] requests after their previous
    access, w_inf tokens accessed and never reused here, prompt tokens."""
    w: np.ndarray
    w_inf: np.ndarray
    prompt: np.ndarray


def hit_fraction(reuse: Reuse, capacity) -> np.ndarray:
    """Share of prompt tokens found in an LRU cache of `capacity` tokens (Che's approximation).

    The occupancy O(T) is piecewise linear in T between grid points, so T is found on the
    grid and the hit interpolated inside the bracketing interval."""
    w = np.asarray(reuse.w, dtype=float)
    cap = np.asarray(capacity, dtype=float).reshape(-1, 1)
    cum_w = np.cumsum(w, axis=1)
    cum_wg = np.cumsum(w * GRID, axis=1)
    total = cum_w[:, -1:] + np.asarray(reuse.w_inf, dtype=float).reshape(-1, 1)
    occ = cum_wg + GRID * (total - cum_w)                       # O(T) at T = GRID[j]
    j = np.sum(occ <= cap, axis=1) - 1                          # last grid point the cache covers
    n = occ.shape[0]
    rows = np.arange(n)
    jc = np.clip(j, 0, GRID.size - 2)
    o_lo, o_hi = occ[rows, jc], occ[rows, jc + 1]
    h_lo, h_hi = cum_w[rows, jc], cum_w[rows, jc + 1]
    frac = np.clip((cap[:, 0] - o_lo) / np.maximum(o_hi - o_lo, 1e-30), 0.0, 1.0)
    hit = h_lo + frac * (h_hi - h_lo)
    # below one request's worth the head of every prompt (reused by the very next request,
    # and touched last) is what stays
    hit = np.where(j < 0, np.minimum(cum_w[:, 0], np.maximum(cap[:, 0], 0.0)), hit)
    hit = np.where(j >= GRID.size - 1, cum_w[:, -1], hit)
    return np.clip(hit / np.maximum(np.asarray(reuse.prompt, dtype=float), 1e-30), 0.0, 1.0)


def _erlang_cdf(x, k: int, shift, scale):
    """P(shift + Erlang(k, scale) <= x); scale 0 is the point mass at shift."""
    y = np.maximum(x - shift, 0.0) / np.maximum(scale, 1e-30)
    term = np.ones_like(y)
    acc = np.ones_like(y)
    for i in range(1, k):
        term = term * y / i
        acc = acc + term
    cdf = 1.0 - np.exp(-y) * acc
    return np.where(scale > 0, np.where(x >= shift, cdf, 0.0), (x >= shift).astype(float))


def _bins(cdf: np.ndarray) -> np.ndarray:
    """Mass per grid point from a CDF on GRID (each bin's mass at its upper edge)."""
    return np.diff(cdf, axis=1, prepend=0.0)


def _visits(p) -> list[np.ndarray]:
    """Chance that the last visit of this replica by a prefix was k = 1..KMAX of its turns ago."""
    p = np.asarray(p, dtype=float)
    return [p * (1.0 - p) ** (k - 1) for k in range(1, KMAX + 1)]


def session_reuse(*, isl, osl, system, turns, gap, think_gap, p) -> Reuse:
    """Multi-turn sessions: every prompt starts with the shared `system` prompt; turn t of
    `turns` carries the session's previous prompt and answer plus new tokens, each turn the
    same growth g = 2 (isl - system) / (turns + 1) (isl is the mean prompt). A session's
    next turn comes `gap` + Exp(`think_gap`) requests later (one replica's requests)."""
    isl = np.asarray(isl, dtype=float)
    osl = np.asarray(osl, dtype=float)
    n = np.broadcast(isl, osl, system, turns, gap, think_gap, p).shape or (1,)
    isl, osl = np.broadcast_to(isl, n), np.broadcast_to(osl, n)
    t = np.broadcast_to(np.asarray(turns, dtype=float), n)
    s = np.minimum(np.broadcast_to(np.asarray(system, dtype=float), n), isl - 1.0)
    g = 2.0 * (isl - s) / (t + 1.0)
    history = (t - 1.0) / t * (g * t / 2.0 + np.minimum(osl, g))     # reused session tokens per request
    a = np.broadcast_to(np.asarray(gap, dtype=float), n)[:, None]
    b = np.broadcast_to(np.asarray(think_gap, dtype=float), n)[:, None]
    w = np.zeros((n[0], GRID.size))
    w[:, 0] = s
    kept = np.zeros(n)
    for k, share in enumerate(_visits(np.broadcast_to(p, n)), start=1):
        w += (history * share)[:, None] * _bins(_erlang_cdf(GRID, k, k * a, b))
        kept = kept + share
    accessed = isl - s + osl                                        # session tokens one request touches
    return Reuse(w=w, w_inf=accessed - history * kept, prompt=isl)


def pairs_reuse(*, cdf, accessed, prompt, replicas, p) -> Reuse:
    """A trace's reuse pairs (cdf: tokens per request reused within GRID[k] requests of the
    whole trace) seen by one of `replicas` caches: a copy from k visits ago is k gaps old,
    in that replica's requests k g / R (at least 1)."""
    r = np.asarray(replicas, dtype=float).reshape(-1)
    n = max(r.size, np.size(p))
    r = np.broadcast_to(r, (n,))
    cdf = np.asarray(cdf, dtype=float)
    w = np.zeros((n, GRID.size))
    kept = np.zeros(n)
    for k, share in enumerate(_visits(np.broadcast_to(p, (n,))), start=1):
        shift = np.log(np.maximum(k / r, 1e-30)) / _LOG_STEP          # grid steps the gaps move
        pos = np.arange(GRID.size)[None, :] - shift[:, None]          # where GRID[j] came from
        shifted = np.interp(pos.ravel(), np.arange(GRID.size), cdf).reshape(n, GRID.size)
        shifted[:, -1] = cdf[-1]
        w += share[:, None] * _bins(shifted)
        kept = kept + share
    reused = cdf[-1]
    return Reuse(w=w, w_inf=np.maximum(accessed - reused * kept, 0.0), prompt=np.broadcast_to(prompt, (n,)))


def p_same(routing_code, replicas) -> np.ndarray:
    """Chance a request reaches the replica that served its prefix last (codes into ROUTINGS)."""
    code = np.asarray(routing_code)
    r = np.maximum(np.asarray(replicas, dtype=float), 1.0)
    return np.select([code == 3, code == 4], [np.ones_like(r), np.where(r >= 2, 0.5, 1.0)], 1.0 / r)


def load_imbalance(routing_code, replicas, per_replica) -> np.ndarray:
    """Requests on the busiest replica over the mean (1 with one replica or no routing model)."""
    code = np.asarray(routing_code)
    r = np.maximum(np.asarray(replicas, dtype=float), 1.0)
    m = np.maximum(np.asarray(per_replica, dtype=float), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lnr = np.log(r)
        hashed = 1.0 + np.sqrt(2.0 * lnr / m)
        even = 1.0 + (1.0 - 1.0 / r) / m
        two = 1.0 + np.maximum(np.log(np.maximum(lnr, 1e-30)) / np.log(2.0), 1.0 - 1.0 / r) / m
    out = np.select([code == 2, code == 4, (code == 1) | (code == 3)], [even, two, hashed], 1.0)
    return np.where(r > 1, out, 1.0)


def tier_hits(*, hbm: Reuse, tier: Reuse, hbm_tokens, tier_tokens) -> tuple[np.ndarray, np.ndarray]:
    """(share of prompt tokens hit in HBM, share hit in the offload tier). The tier holds a
    copy of every block written (write-through, as LMCache and Mooncake's store do), so the
    whole cache hits as the larger of the two; `tier` is the profile the tier sees (a
    fabric pool shared by all replicas sees no routing loss)."""
    h = hit_fraction(hbm, hbm_tokens)
    t = np.where(np.asarray(tier_tokens) > 0, hit_fraction(tier, tier_tokens), 0.0)
    return h, np.maximum(t - h, 0.0)


MAX_LINK_UTILISATION = 0.99    # a saturated link: loads take 100x their time (TTFT then misses any SLO)


def exposed_load_ms(*, tokens, bytes_per_token, link_gb_s, latency_ms, compute_ms, layers,
                    utilisation=0.0) -> np.ndarray:
    """TTFT a tier hit adds: its KV moves layer by layer while the rest of the prompt is
    computed, so only the part beyond that compute, one layer's load and the tier's
    latency show. The link is shared by every request's loads: at utilisation u each
    load takes 1 / (1 - u) of its time (processor sharing, M/G/1-PS mean response)."""
    tokens = np.asarray(tokens, dtype=float)
    u = np.minimum(np.asarray(utilisation, dtype=float), MAX_LINK_UTILISATION)
    load = tokens * bytes_per_token / (np.maximum(link_gb_s, 1e-30) * 1e9) * 1e3 / (1.0 - u)
    return np.where(tokens > 0, np.maximum(load - compute_ms, 0.0) + load / layers + latency_ms, 0.0)


def link_utilisation(*, requests_per_s, tokens, bytes_per_token, link_gb_s) -> np.ndarray:
    """Busy share of a GPU's tier link when every request loads `tokens` of its shard."""
    return (np.asarray(requests_per_s, dtype=float) * np.asarray(tokens, dtype=float) * bytes_per_token
            / (np.maximum(link_gb_s, 1e-30) * 1e9))
