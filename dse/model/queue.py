"""Queueing arithmetic for open-loop traffic: a state-dependent birth-death chain and the
quantiles of latency mixtures, vectorized over rows (one deployment per row).

Why a birth-death chain with state-dependent rates: a continuous-batching engine serves
every running request one token per step and its step time depends on how many run, so
with n requests in the system it completes them at rate mu(n) = n / L(n) (L(n): a request's
lifetime when n run). Up to the slot limit that is a symmetric (processor-sharing-like)
queue whose number-in-system law is insensitive to the service-time distribution, so the
product form p(n) ~ prod_k lambda / mu(k) holds for Poisson arrivals (Kelly, "Reversibility
and stochastic networks", 1979, ch. 3). Beyond the slots requests wait first-come first-served;
the wait is approximated by the heavy-traffic GI/G/c rule (Kingman; Whitt 1993): an
exponential tail of rate 2 (mu(S) - lambda) / (ca^2 + cs^2), ca^2 = 1 for Poisson arrivals
and cs^2 ~ 0 for lifetimes of fixed isl/osl. Pure numpy (no scipy): erf is Abramowitz &
Stegun 7.1.26 (error < 1.5e-7).
"""
from __future__ import annotations

import numpy as np

__all__ = ["birth_death", "batch_chain", "poisson_pmf", "mixture_quantiles", "norm_cdf", "QUANTILE_STEPS"]

QUANTILE_STEPS = 26     # bisection steps of a quantile: the bracket shrinks by 2^-26 (~1.5e-8)


def norm_cdf(z) -> np.ndarray:
    """Standard normal CDF (Abramowitz & Stegun 7.1.26 for erf)."""
    x = np.abs(np.asarray(z, dtype=float)) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return 0.5 * (1.0 + np.sign(z) * erf)


def birth_death(lam, mu, slots, jump=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stationary law of the number in system seen by a Poisson arrival (PASTA).

    lam: (rows,) arrival rate; mu: (rows, W) departure rate in states 1..W; slots: (rows,)
    integer S <= W from which the rate stays mu(S) and arrivals wait. Returns (p over states
    0..W-1 with p[:, n] = 0 for n >= S, the chance of waiting P(n >= S), r = lam / mu(S));
    r >= 1 is a saturated row (its p is that of r = 0.999).

    jump (rows, W), optional: an arrival that also delays every running request by delta (its
    prompt shares their steps) holds back mu delta departures for about a lifetime, a pulse of
    J = 1 + mu delta requests instead of 1; shot noise of pulses J has J^2 times the variance
    (M/G/inf: lam L J^2), so the chain's log ratios are divided by J^2 (same mode, wider law)."""
    lam = np.asarray(lam, dtype=float)[:, None]
    w = mu.shape[1]
    s = np.asarray(slots, dtype=np.int64)
    idx = np.arange(1, w + 1)[None, :]
    mu_s = np.take_along_axis(mu, (s - 1)[:, None], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        step = np.log(lam) - np.log(np.maximum(mu, 1e-300))
    if jump is not None:
        step = step / jump ** 2
    step = np.where(idx <= s[:, None] - 1, step, 0.0)         # log p(n) - log p(n-1), states 1..S-1
    logp = np.concatenate([np.zeros((len(s), 1)), np.cumsum(step[:, :-1], axis=1)], axis=1)
    inside = np.arange(w)[None, :] < s[:, None]
    top = np.max(np.where(inside, logp, -np.inf), axis=1, keepdims=True)
    p = np.where(inside, np.exp(logp - top), 0.0)
    r = (lam / mu_s)[:, 0]
    last = np.take_along_axis(p, (s - 1)[:, None], axis=1)[:, 0]
    rc = np.minimum(r, 0.999)              # a saturated row gets the law of a nearly full one (finite)
    if jump is not None:
        j_s = np.take_along_axis(jump, (s - 1)[:, None], axis=1)[:, 0]
        rc = np.exp(np.log(rc) / j_s ** 2)
    wait = last * rc / (1.0 - rc)
    total = p.sum(axis=1) + wait
    return p / total[:, None], wait / total, r


def poisson_pmf(x, count: int, group=None) -> np.ndarray:
    """P(G = 0..count-1) of G = ceil(A / group), A ~ Poisson(x): x (...,) -> (..., count), in logs
    (no overflow). group (broadcast to x's rows, integer >= 1; None = 1) counts arrivals in groups."""
    x = np.maximum(np.asarray(x, dtype=float), 1e-300)[..., None]
    if group is None:
        k = np.arange(count, dtype=float)
        return np.exp(k * np.log(x) - x - _log_fact(count))
    u = np.asarray(group, dtype=np.int64).reshape((-1,) + (1,) * (x.ndim - 1))
    span = np.arange(1, int(np.max(u)) + 1)                               # offsets inside a group
    log_fact = _log_fact(count * int(np.max(u)) + 1)
    out = [np.exp(-x[..., 0])]
    for j in range(1, count):
        a = (j - 1) * u + span                                            # A in ((j - 1) u, j u]
        terms = np.exp(a * np.log(x) - x - log_fact[np.minimum(a, len(log_fact) - 1)])
        out.append(np.sum(np.where(span <= u, terms, 0.0), axis=-1))
    return np.stack(out, axis=-1)


def _log_fact(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n, dtype=float)))])


def batch_chain(lam, serve, k, states: int, group=None) -> tuple[np.ndarray, np.ndarray]:
    """Stationary law of the queue a batching server finds when it starts a batch.

    Why an embedded chain and not the birth-death chain: a server that takes up to k waiting
    requests per batch, for a deterministic time serve[g - 1] that grows with the batch g, has a
    wait made of whole batches whose lengths are correlated (a long batch gathers a long next
    one); the chain at batch starts (bulk service M/G^(1,k)/1, Bailey 1954) is exact for it.
    lam: (rows,) arrivals per unit time; serve: (rows, >= max k); k: (rows,) integer. From Q
    waiting the batch is g = min(Q, k), the next start finds Q - g + A (A ~ Poisson(lam
    serve[g - 1])), or 1 after an idle spell; queues beyond `states` are lumped into the last.
    group (rows,): Q and k count arrivals in groups of that many (poisson_pmf).
    Returns (pi over Q = 1..states, pmf (rows, states, states + 1) of A from each Q)."""
    lam = np.asarray(lam, dtype=float)
    q = np.arange(1, states + 1)[None, :]
    g = np.minimum(q, np.asarray(k, dtype=np.int64)[:, None])
    pmf = poisson_pmf(lam[:, None] * np.take_along_axis(serve, g - 1, axis=1), states + 1, group)
    left = (q - g)[:, :, None]
    a = np.arange(states)[None, None, :] + 1 - left                       # A that lands on Q' = index + 1
    trans = np.where(a >= 0, np.take_along_axis(pmf, np.clip(a, 0, states), axis=2), 0.0)
    trans[:, :, 0] += np.where(left[:, :, 0] == 0, pmf[:, :, 0], 0.0)     # A = 0: idle, then one arrival
    trans[:, :, -1] += np.maximum(1.0 - trans.sum(axis=2), 0.0)           # the lumped tail
    m = np.swapaxes(trans, 1, 2) - np.eye(states)[None]
    m[:, -1, :] = 1.0                                                     # sum pi = 1 replaces one balance
    rhs = np.zeros((len(lam), states, 1))
    rhs[:, -1, 0] = 1.0
    pi = np.maximum(np.linalg.solve(m, rhs)[:, :, 0], 0.0)
    return pi / pi.sum(axis=1, keepdims=True), pmf


class _Uniform:
    """Components a + U width + (with chance q) Exp(rate), their invariants computed once for
    the many CDF evaluations of a bisection."""

    def __init__(self, w, a, width, q, rate):
        self.w, self.a, self.width, self.q, self.rate = w, a, width, q, rate
        self.pos = width > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            self.inv_w = np.where(self.pos, 1.0 / np.where(self.pos, width, 1.0), 0.0)
            self.inv_tr = np.where(self.pos, self.inv_w / np.maximum(rate, 1e-300), 0.0)
        # only the components some row gives an exponential part (q > 1e-12) pay for it
        self.cols = np.flatnonzero(np.max(np.where(w > 0, q, 0.0), axis=0) > 1e-12)
        self.sub = tuple(x[:, self.cols] for x in (w, a, width, q, rate, self.pos, self.inv_w, self.inv_tr))

    def cdf(self, t) -> np.ndarray:
        s = t[:, None] - self.a
        out = np.sum(self.w * np.where(self.pos, np.clip(s * self.inv_w, 0.0, 1.0), s >= 0), axis=1)
        if not len(self.cols):
            return out
        w, a, width, q, rate, pos, inv_w, inv_tr = self.sub
        s = t[:, None] - a
        uni = np.where(pos, np.clip(s * inv_w, 0.0, 1.0), s >= 0)
        with np.errstate(over="ignore", invalid="ignore"):
            e_s = np.exp(-rate * np.maximum(s, 0.0))
            inner = np.where(s < width, s * inv_w - (1.0 - e_s) * inv_tr,
                             1.0 - (np.exp(-rate * np.maximum(s - width, 0.0)) - e_s) * inv_tr)
            conv = np.where(s < 0, 0.0, np.clip(np.where(pos, inner, 1.0 - e_s), 0.0, 1.0))
        return out + np.sum(w * q * (conv - uni), axis=1)


def _mixture_cdf(t, ue, nrm) -> np.ndarray:
    out = 0.0
    if ue is not None:
        out = out + ue.cdf(t)
    if nrm is not None:
        w, m, sd = nrm
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sd > 0, (t[:, None] - m) / np.where(sd > 0, sd, 1.0), np.where(t[:, None] >= m, 50.0, -50.0))
        out = out + np.sum(w * norm_cdf(z), axis=1)
    return out


def _bracket(ue, nrm) -> tuple[np.ndarray, np.ndarray]:
    los, his = [], []
    if ue is not None:
        w, a, width, q, rate = ue
        tail = np.where(q > 0, 40.0 / np.maximum(rate, 1e-300), 0.0)
        live = w > 0
        los.append(np.min(np.where(live, a, np.inf), axis=1))
        his.append(np.max(np.where(live, a + width + tail, -np.inf), axis=1))
    if nrm is not None:
        w, m, sd = nrm
        live = w > 0
        los.append(np.min(np.where(live, m - 9.0 * sd, np.inf), axis=1))
        his.append(np.max(np.where(live, m + 9.0 * sd, -np.inf), axis=1))
    return np.minimum.reduce(los), np.maximum.reduce(his)


def mixture_quantiles(levels, *, ue=None, nrm=None) -> list[np.ndarray]:
    """Per-row quantiles of a mixture (component weights per row sum to 1) by bisection.

    ue = (weight, a, width, q, rate): components a + U width + Bernoulli(q) Exp(rate);
    nrm = (weight, mean, sd): normal components. Each array is (rows, K)."""
    lo0, hi0 = _bracket(ue, nrm)
    atoms = None
    if ue is not None:        # a quantile on an atom (a component of no width) is the atom itself
        atoms = np.where((ue[0] > 0) & (ue[2] <= 0) & (ue[3] <= 0), ue[1], np.nan)
    ue = None if ue is None else _Uniform(*ue)
    out = []
    for level in levels:
        lo, hi = lo0.copy(), hi0.copy()
        for _ in range(QUANTILE_STEPS):
            mid = 0.5 * (lo + hi)
            below = _mixture_cdf(mid, ue, nrm) < level
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        if atoms is not None:
            near = (atoms <= hi[:, None]) & (atoms >= lo[:, None])
            hi = np.where(near.any(axis=1), np.nanmax(np.where(near, atoms, np.nan), axis=1, initial=-np.inf), hi)
        out.append(hi)
    return out
