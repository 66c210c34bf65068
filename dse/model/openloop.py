"""Open-loop serving: requests arrive at `arrival_rate` (Poisson) instead of a fixed number of
users each keeping one request in flight; TTFT and TPOT become distributions.

The engine an arrival meets is described by `Engine`: per rank (an attention data-parallel
rank of an agg worker, a decode rank of a disagg unit) its slot limit S (the batch_size
per rank, the KV slots and the engine's max_seqs, whichever is least), its step-cost
tables over the running batch -- the decode step d0(b) and the cost per prompt token a
step carries cp(b), both priced through the kernels by the serving model
(dse.model.steps.decode_phase, as the closed loop prices them) -- and, for disagg, the
prefill pool (servers, one prompt's step, the marginal prompt of a batch, the KV hand-off).
A step of b running requests carrying P prompt tokens costs d0(b) + cp(b) P; it holds at
most the engine's budget (max_num_tokens less the decodes, per pipeline micro-batch).

Which queueing model, and why (dse.model.queue has the arithmetic). A closed form per row
is what a search over millions of configurations can afford, and a continuous-batching
engine is close to a processor-sharing queue with a state-dependent speed, for which such
forms exist:
  - the mean step is the fixed point T = d0 + cp x (prompt tokens arriving per step), i.e.
    d0 / (1 - cp lambda isl_new);
  - the number in system follows a birth-death chain with completion rate n / L(n) (product
    form below the slot limit, whatever the service distribution), widened because every
    arrival's prompt also delays the n running (a pulse of J = 1 + mu delta requests);
  - a full rank completes at the fixed point where prompts enter at the completion rate; a
    slot wait has Kingman's heavy-traffic mean (exponential rate 2 (mu(S) - lambda) / J^2,
    cs^2 ~ 0 for fixed isl/osl), half of it uniform so that it starts after a departure;
  - given the state an arrival sees (the chain's law in 24 bins, fine in the tails), its
    TTFT is the rest of the step in progress (which carries a Poisson count of prompts,
    length-biased), its own prompt's steps with the Poisson count of others that arrived
    meanwhile, and, for prompts near the budget, an M/D/1-like prompt backlog; its TPOT is the
    mean step over its life (normal: the batch averages the requests present at its arrival
    and those arriving during it, plus the Poisson count of other prompts its steps carry);
  - disagg: the prefill pool is a batching queue: the birth-death chain with batch-dependent
    rates gives the chance that a prompt waits (c servers); how long it waits comes from the
    embedded chain at batch starts of the pool pooled into one server (queue.batch_chain:
    exact for one server, where a long batch gathers a long next one, which an M/D/c split
    into "first free server" and a Kingman tail missed at light load); then the KV hand-off,
    then a decode rank like agg without prompts (a decode slot wait lands in TPOT).
The mixture over states gives the p50 / p99. It is held to a discrete-event simulation of
the same engine (dse.fit.queue_sim; `python -m dse.fit.queue_check`, tests/test_openloop.py):
within 15 % at 30-85 % of capacity on a sample, but for one recorded miss (a prompt-heavy agg
rank's p99 TTFT at 85 %, where the slot wait holds the p99).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from dse.catalog.models import Model
from dse.model.queue import batch_chain, birth_death, mixture_quantiles
from dse.model.steps import decode_phase

__all__ = ["Engine", "engine_of", "latency_percentiles", "interp", "GRID_POINTS", "MAX_STATES", "PERCENTILES"]

GRID_POINTS = 9          # step-cost table points over the running batch, log-spaced from 1 to S
MAX_STATES = 4096        # states of the birth-death chain (a slot limit above it waits from here)
PERCENTILES = (0.5, 0.99)
_ROWS_PER_BLOCK = 256    # rows whose (rows, states) arrays are built at once
BATCH_GROUPS = 16        # prefill batch chain: prompts are counted in groups so that a batch is <= 16 of them


@dataclasses.dataclass
class Engine:
    """Open-loop view of one deployment unit per row (see the module docstring)."""
    kind: str                       # "agg" or "disagg"
    ranks: np.ndarray               # ranks sharing one unit's arrivals (agg dp; disagg decode ranks)
    slots: np.ndarray               # running requests one rank holds (integer >= 1)
    grid: np.ndarray                # (rows, G) running batch of the tables
    d0: np.ndarray                  # (rows, G) decode step, ms (step_ms, drafting included)
    cp: np.ndarray                  # (rows, G) ms per prompt token a step carries (agg)
    budget: np.ndarray              # (rows, G) prompt tokens one step holds (agg)
    per_step: np.ndarray            # tokens a sequence gains per decode step
    isl_new: np.ndarray
    osl1: np.ndarray                # output tokens after the first
    request_ms: np.ndarray
    pre_servers: np.ndarray = None  # disagg: prefill batches in flight (prefill ranks x pp)
    t_pre: np.ndarray = None        # disagg: one prompt's prefill batch, ms
    p1: np.ndarray = None           # disagg: each further prompt in the batch, ms
    full: np.ndarray = None         # disagg: prompts in a full batch
    xfer: np.ndarray = None         # disagg: KV hand-off, ms

    def rows(self, idx) -> "Engine":
        """The rows idx (a slice or indices; row(i) for the simulation is rows([i]))."""
        return dataclasses.replace(self, **{f.name: np.asarray(getattr(self, f.name))[idx]
                                            for f in dataclasses.fields(self) if f.name != "kind"
                                            and getattr(self, f.name) is not None})


def _slots(conc, ranks, kv_seqs, dp, max_seqs) -> np.ndarray:
    s = np.minimum(np.minimum(np.maximum(conc / ranks, 1.0), np.maximum(kv_seqs / dp, 1.0)), np.maximum(max_seqs, 1.0))
    return np.floor(s)


def engine_of(model: Model, kind: str, st: dict, conc) -> Engine:
    """The Engine of rows served by mode `kind` from their closed-loop state (ModeResult.load_state)
    at the configured concurrency `conc` (the batch_size: it is the slot limit)."""
    rt, spec = st["rt"], st.get("spec")
    conc = np.asarray(conc, dtype=float)
    per_step = np.ones_like(conc) if spec is None else spec.per_step() * np.ones_like(conc)
    q_dec = 1.0 if spec is None else 1.0 + spec.tokens
    pool = st["pool"] if kind == "agg" else st["dec_pool"]
    dp, pp = pool.par.dp * np.ones_like(conc), pool.par.pp * np.ones_like(conc)
    ranks = dp if kind == "agg" else st["d_ranks"] * np.ones_like(conc)
    slots = _slots(conc, ranks, pool.max_seqs, dp, rt.max_seqs)
    grid = np.exp(np.linspace(0.0, 1.0, GRID_POINTS)[None, :] * np.log(slots)[:, None])
    d0, cp, budget = (np.zeros_like(grid) for _ in range(3))
    isl_new = np.asarray(st.get("isl_new", 1.0), dtype=float) * np.ones_like(conc)
    for j in range(GRID_POINTS):
        b = grid[:, j]
        d0[:, j] = decode_phase(model, pool, b * dp, st)[0]
        if kind != "agg":
            continue
        room = np.maximum(rt.max_tokens - b / pp * q_dec, 1.0)       # prompt tokens per micro-batch step
        clen = np.minimum(isl_new, room)
        cctx = st["cached"] + clen + (isl_new - clen) / 2.0
        dk = decode_phase(model, pool, b * dp, st, chunk=(dp * room / clen, clen, cctx))[0]
        cp[:, j] = np.maximum(dk - d0[:, j], 0.0) / (pp * room)
        budget[:, j] = pp * room
    osl1 = np.maximum(np.asarray(st["osl"], dtype=float) - 1.0, 1.0) * np.ones_like(conc)
    eng = Engine(kind=kind, ranks=ranks, slots=slots, grid=grid, d0=d0, cp=cp, budget=budget, per_step=per_step,
                 isl_new=isl_new, osl1=osl1, request_ms=rt.request_ms * np.ones_like(conc))
    if kind == "disagg":
        full = st["full"] * np.ones_like(conc)
        t_full = st["t_pre"] + (full - 1.0) * st["p1"]
        eng = dataclasses.replace(eng, pre_servers=np.round(st["pre_rate"] * t_full / full), t_pre=st["t_pre"] + 0 * conc,
                                  p1=st["p1"] + 0 * conc, full=full, xfer=st["xfer"] + 0 * conc)
    return eng


def interp(table: np.ndarray, grid: np.ndarray, n) -> np.ndarray:
    """A (rows, G) table at running batch n (rows, K): linear in log n between the grid points."""
    n = np.maximum(np.asarray(n, dtype=float), 1.0)
    top = np.log(grid[:, -1:])
    u = np.where(top > 0, np.log(n) / np.where(top > 0, top, 1.0), 0.0) * (grid.shape[1] - 1)
    u = np.clip(u, 0.0, grid.shape[1] - 1.0)
    i = np.minimum(np.floor(u).astype(np.int64), grid.shape[1] - 2)
    f = u - i
    lo = np.take_along_axis(table, i, axis=1)
    hi = np.take_along_axis(table, i + 1, axis=1)
    return lo + f * (hi - lo)


def latency_percentiles(eng: Engine, rate_per_s, levels=PERCENTILES) -> dict[str, np.ndarray]:
    """TTFT and TPOT p50 / p99 and means (ms), the utilisation (arrival rate over capacity;
    >= 1 = saturated) and the capacity (requests/s per unit) of each row at `rate_per_s`
    requests/s per unit. Rows are done in blocks, so the (rows, states) arrays stay small.
    levels=(0.99,) computes the p99 only (the p50 columns are then NaN: the goodput search)."""
    rate = np.broadcast_to(np.asarray(rate_per_s, dtype=float), eng.slots.shape)
    n = len(rate)
    keys = ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "ttft_mean_ms", "tpot_mean_ms",
            "utilisation", "capacity_per_s")
    out = {k: np.zeros(n) for k in keys}
    for start in range(0, n, _ROWS_PER_BLOCK):
        part = slice(start, min(start + _ROWS_PER_BLOCK, n))
        sub = eng.rows(part)
        res = (_agg if eng.kind == "agg" else _disagg)(sub, rate[part] / 1e3, tuple(levels))
        for k in keys:
            out[k][part] = res[k]
    return out


def _states(slots) -> tuple[np.ndarray, np.ndarray]:
    s = np.minimum(slots, MAX_STATES).astype(np.int64)
    return s, np.arange(1, int(np.max(s)) + 1, dtype=float)[None, :] * np.ones((len(s), 1))


# cumulative levels of the number in system at which its law is cut into bins: fine in the
# tails, where the p99 comes from, coarse in the body (each bin is one state at its mean)
_BIN_LEVELS = np.array([1e-7, 1e-5, 1e-4, 1e-3, 0.005, 0.02, 0.06, 0.15, 0.3, 0.5, 0.7, 0.85, 0.94, 0.97, 0.985,
                        0.993, 0.997, 0.999, 0.9997, 0.9999, 0.99999, 1.0 - 1e-7])


def _bins(p, nn) -> tuple[np.ndarray, np.ndarray]:
    """The chain's law p over states nn (rows, W) as (weights, mean state) of bins (rows, K):
    state 1 (an idle engine for the arrival) alone, then the cuts of _BIN_LEVELS."""
    rows, w = p.shape
    cum = np.concatenate([np.zeros((rows, 1)), np.cumsum(p, axis=1)], axis=1)
    cum_n = np.concatenate([np.zeros((rows, 1)), np.cumsum(p * nn, axis=1)], axis=1)
    tot = np.maximum(cum[:, -1:], 1e-300)
    cuts = [np.zeros((rows, 1), dtype=np.int64), np.ones((rows, 1), dtype=np.int64)]
    cuts += [np.minimum(np.sum(cum[:, 1:] < lv * tot, axis=1, keepdims=True) + 1, w) for lv in _BIN_LEVELS]
    cuts.append(np.full((rows, 1), w, dtype=np.int64))
    edges = np.sort(np.minimum(np.concatenate(cuts, axis=1), w), axis=1)
    c0, c1 = np.take_along_axis(cum, edges[:, :-1], 1), np.take_along_axis(cum, edges[:, 1:], 1)
    n0, n1 = np.take_along_axis(cum_n, edges[:, :-1], 1), np.take_along_axis(cum_n, edges[:, 1:], 1)
    weight = c1 - c0
    first = np.take_along_axis(nn, np.minimum(edges[:, :-1], w - 1), 1)
    return weight, np.where(weight > 0, (n1 - n0) / np.where(weight > 0, weight, 1.0), first)


def _quantiles(levels, ue=None, nrm=None) -> tuple[np.ndarray, np.ndarray]:
    """(p50, p99) of a mixture; NaN for a level not asked for."""
    got = dict(zip(levels, mixture_quantiles(levels, ue=ue, nrm=nrm)))
    nan = np.full(len((ue or nrm)[0]), np.nan)
    return got.get(0.5, nan), got.get(0.99, nan)


def _finish(q, mean_ttft, mean_tpot, util, cap) -> dict[str, np.ndarray]:
    (t50, t99), (p50, p99) = q
    return {"ttft_p50_ms": t50, "ttft_p99_ms": t99, "tpot_p50_ms": p50, "tpot_p99_ms": p99,
            "ttft_mean_ms": mean_ttft, "tpot_mean_ms": mean_tpot, "utilisation": util, "capacity_per_s": cap * 1e3}


def _tpot_parts(eng: Engine, lam, nseen, m, dec, slope, prompt, s) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of the TPOT of an arrival that sees nseen others (rows, K). The batch over its
    life averages those (each for a uniform share of it) and the arrivals during it (m, each for a
    uniform share): variance nseen / 12 + J^2 m / 3. The other prompts its steps carry are a Poisson
    count of lam x its decode life, each costing prompt(b) ms."""
    steps = (eng.osl1 / eng.per_step)[:, None]
    b = np.minimum(1.0 + nseen / 2.0 + m[:, None] / 2.0, s[:, None])
    d, dd, cpi = dec(b), slope(b), prompt(b)
    share = np.minimum(cpi * lam[:, None], 0.999)
    life = steps * d / (1.0 - share)
    var_b = nseen / 12.0 + m[:, None] / 3.0 * (1.0 + b / life * cpi) ** 2      # arrivals are pulses J (queue.py)
    o = eng.osl1[:, None]
    return life / o, np.sqrt((steps * dd) ** 2 * var_b + cpi ** 2 * lam[:, None] * life) / o


def _agg(eng: Engine, lam, levels=PERCENTILES) -> dict[str, np.ndarray]:
    """One agg rank (its share lam = rate / dp of the arrivals, requests/ms)."""
    lam = lam / eng.ranks
    s, nn = _states(eng.slots)
    d0 = interp(eng.d0, eng.grid, nn)
    cp, budget = interp(eng.cp, eng.grid, nn), interp(eng.budget, eng.grid, nn)
    isl = eng.isl_new[:, None]
    load = np.minimum(cp * lam[:, None] * isl, 0.999)           # share of step time spent on others' prompts
    t = d0 / (1.0 - load)                                       # mean step with n running
    k_own = np.maximum(isl / budget, 1.0)
    t_own = k_own * t + cp * isl                                # the steps that carry its prompt
    steps = (eng.osl1 / eng.per_step)[:, None]
    life = 0.5 * t + t_own + steps * t
    jump = 1.0 + nn / life * cp * isl                          # an arrival's prompt delays the n running
    p, wait, r = birth_death(lam, nn / life, s, jump)
    idx = (s - 1)[:, None]
    t_s, b_s = np.take_along_axis(t, idx, 1)[:, 0], np.take_along_axis(budget, idx, 1)[:, 0]
    # prompt capacity: the steps' budget at the slot limit, and the share of time prompts may take
    cap_prompt = np.minimum(b_s / np.maximum(eng.isl_new * t_s, 1e-12),
                            1.0 / np.maximum(np.take_along_axis(cp, idx, 1)[:, 0] * eng.isl_new, 1e-300))
    cap = np.minimum(lam / np.maximum(r, 1e-300), cap_prompt)
    util = lam / cap
    mu_s = _full_rate(eng, lam / np.maximum(r, 1e-300), s)
    rate_w = 2.0 * np.maximum(mu_s - lam, 1e-12) / np.take_along_axis(jump, idx, 1)[:, 0] ** 2   # heavy traffic
    m = np.sum(p * (nn - 1.0), axis=1) + wait * s
    p, nn = _bins(p, nn)
    ue = _agg_ttft(eng, lam, nn, p, wait, s, rate_w)
    mean_ttft = np.sum(ue[0] * (ue[1] + ue[2] / 2 + ue[3] / ue[4]), axis=1)
    # TPOT: the mean number in system m, then each arrival's life-average batch
    slope_tab = np.gradient(eng.d0, axis=1) / np.maximum(np.gradient(eng.grid, axis=1), 1e-12)
    nseen = np.concatenate([nn - 1.0, 2.0 * s[:, None]], axis=1)          # a waiting arrival runs in a full rank
    mean, sd = _tpot_parts(eng, lam, nseen, m, lambda b: interp(eng.d0, eng.grid, b),
                           lambda b: interp(slope_tab, eng.grid, b), lambda b: interp(eng.cp, eng.grid, b) * isl, s)
    nrm = (np.concatenate([p, wait[:, None]], axis=1), mean, sd)
    q = (_quantiles(levels, ue=ue), _quantiles(levels, nrm=nrm))
    return _finish(q, mean_ttft, np.sum(nrm[0] * mean, axis=1), util, cap)


def _poisson_terms(x) -> list:
    """(chance, count) of a Poisson(x) count: 0, 1 and the rest at its mean."""
    pk = [np.exp(-x), x * np.exp(-x)]
    rest = np.maximum(1.0 - sum(pk), 0.0)
    a2 = np.where(rest > 1e-12, (x - pk[1]) / np.maximum(rest, 1e-12), 2.0)
    return list(zip(pk + [rest], (0.0, 1.0, np.maximum(a2, 2.0))))


def _full_rate(eng: Engine, mu, s, iterations: int = 8) -> np.ndarray:
    """Completions per ms of a full agg rank: every completion frees a slot for a waiting
    request whose prompt then runs in the steps, so prompts enter at the completion rate, not
    at the arrival rate (a fixed point, from the chain's rate at S)."""
    sc = s[:, None].astype(float)
    d0, cp = interp(eng.d0, eng.grid, sc)[:, 0], interp(eng.cp, eng.grid, sc)[:, 0]
    budget = interp(eng.budget, eng.grid, sc)[:, 0]
    steps = eng.osl1 / eng.per_step
    for _ in range(iterations):
        t = d0 / (1.0 - np.minimum(cp * mu * eng.isl_new, 0.999))
        life = 0.5 * t + np.maximum(eng.isl_new / budget, 1.0) * t + cp * eng.isl_new + steps * t
        mu = 0.5 * (mu + s / life)
    return mu


def _agg_ttft(eng: Engine, lam, nn, p, wait, s, rate_w) -> tuple:
    """TTFT components of an agg arrival that sees n = nn - 1 running (or waits for a slot).

    It waits for the rest of the step in progress (uniform), a step that carries the j prompts
    that arrived during the one before it (Poisson, weighted by the time such steps take),
    then its prompt runs with the A others that arrived during that step (Poisson), in steps
    of up to the budget; long prompts may also wait for a prompt backlog (M/D/1). A slot wait
    (heavy-traffic mean 1 / rate_w) is a uniform part and an exponential, half the mean each,
    so that it starts after a departure rather than at once."""
    rows, w = nn.shape
    isl, lam2 = eng.isl_new[:, None], lam[:, None]
    n = nn - 1.0
    d_cur = np.where(n > 0, interp(eng.d0, eng.grid, np.maximum(n, 1.0)), 0.0)
    cp_cur = interp(eng.cp, eng.grid, np.maximum(n, 1.0))
    t_cur = d_cur / (1.0 - np.minimum(cp_cur * lam2 * isl, 0.999))
    delta = cp_cur * isl                                              # what one prompt adds to a step
    d_own, cp_own = interp(eng.d0, eng.grid, nn), interp(eng.cp, eng.grid, nn)
    budget = interp(eng.budget, eng.grid, nn)
    kinds = [(pj, d_cur + delta * j) for pj, j in _poisson_terms(lam2 * t_cur)]
    total = sum(pj * tj for pj, tj in kinds)
    comps = []
    for pj, tc in kinds:            # the step in progress carries j prompts (length-biased: pj tj)
        kind_w = np.where(n > 0, pj * tc / np.maximum(total, 1e-12), 1.0 / len(kinds))
        tc = np.where(n > 0, tc, 0.0)
        for wk, others in _poisson_terms(lam2 * tc):
            k_own = np.maximum((1.0 + others / 2.0) * isl / budget, 1.0)
            own = k_own * d_own + cp_own * isl * (1.0 + others)
            comps.append((p * kind_w * wk, eng.request_ms[:, None] + own, tc))
    rho_p = np.minimum(lam2 * isl * t_cur / budget, 0.999)
    q_p = rho_p ** np.maximum(budget / isl, 1.0)
    rate_p = 2.0 * (1.0 - rho_p) / (np.maximum(isl / budget, 1.0) * np.maximum(d_own, 1e-9))
    sc = s[:, None].astype(float)
    b_s = interp(eng.budget, eng.grid, sc)
    own_s = (np.maximum(isl / b_s, 1.0) * interp(eng.d0, eng.grid, sc) + interp(eng.cp, eng.grid, sc) * isl)[:, 0]
    ws = [np.concatenate([c[0] for c in comps] + [wait[:, None]], axis=1),
          np.concatenate([c[1] for c in comps] + [(eng.request_ms + own_s)[:, None]], axis=1),
          np.concatenate([c[2] for c in comps] + [1.0 / rate_w[:, None]], axis=1),
          np.concatenate([q_p] * len(comps) + [np.ones((rows, 1))], axis=1),
          np.concatenate([rate_p] * len(comps) + [2.0 * rate_w[:, None]], axis=1)]
    return tuple(ws)


def _prefill_wait(eng: Engine, lam, c) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How long a prompt that finds the prefill pool busy waits, as components (weight, extra
    TTFT a, width of a uniform part) over the batch it arrived in and the batch it joins.

    The c servers are pooled into one that runs a batch of g prompts in (t_pre + (g - 1) p1) / c
    (once all are busy, FCFS over c servers drains like one c times faster) and takes up to
    `full` waiting prompts (counted in groups of u, the last one partial, so that a batch is at
    most BATCH_GROUPS groups: a batch of g groups holds (g - 1) u + (u + 1) / 2 prompts on average). queue.batch_chain gives the queue Q at batch
    starts. A prompt arriving during a batch (weight pi(Q) P(A) per arrival of its A) waits
    for the rest of it (uniform over its length), then, if fewer than `full` are ahead (Q - g
    left over and the arrivals before it), for its own batch of min(Q - g + A, full) prompts
    (t_pre + (g' - 1) p1, less the t_pre already in the base); else for m full batches first."""
    k_full = np.maximum(np.floor(eng.full), 1.0)
    u = np.ceil(k_full / BATCH_GROUPS)
    k = np.maximum(np.round(k_full / u), 1.0).astype(np.int64)
    kmax = int(np.max(k))
    states = 3 * kmax + 16
    g = np.arange(1, kmax + 1)[None, :]
    own = ((np.minimum(g, k[:, None]) - 1.0) * u[:, None] + (u[:, None] - 1.0) / 2.0) * eng.p1[:, None]   # less t_pre
    serve = (eng.t_pre[:, None] + own) / c[:, None]
    pi, pmf = batch_chain(lam, serve, k, states, u)
    rows = len(k)
    q = np.arange(1, states + 1)[None, :]
    gq = np.minimum(q, k[:, None])
    left = (q - gq)[:, :, None]                                                 # (rows, Q, 1)
    a = np.arange(states + 1)[None, None, :]
    w = pi[:, :, None] * pmf                                                    # per arrival of the A
    kk = k[:, None, None]
    mmax = int(np.ceil(2.0 * states / np.min(k)))
    # m = 0: the positions left + 1 .. min(left + A, k) join the next batch, of min(left + A, k)
    n0 = np.clip(kk - left, 0, a)
    nxt = np.minimum(left + a, kk)
    ncls = kmax * (kmax + mmax)
    base_cls = (gq - 1)[:, :, None] * (kmax + mmax)
    # m >= 1: position left + j (j = 1..states) carries the arrivals with A >= j; m = ceil(pos / k) - 1
    tail = np.cumsum(w[:, :, ::-1], axis=2)[:, :, ::-1][:, :, 1:]
    m = np.minimum(np.ceil((left + a[:, :, 1:]) / kk) - 1, mmax).astype(np.int64)
    cls = np.concatenate([base_cls + np.maximum(nxt, 1) - 1, base_cls + kmax + np.maximum(m, 1) - 1], axis=2)
    wt = np.concatenate([w * n0, np.where(m >= 1, tail, 0.0)], axis=2)
    flat = (np.arange(rows)[:, None, None] * ncls + cls).ravel()
    weight = np.bincount(flat, wt.ravel(), minlength=rows * ncls).reshape(rows, ncls)
    full_t = serve[np.arange(rows), k - 1]
    own_full = own[np.arange(rows), k - 1]
    later = np.arange(1, mmax + 1)[None, :] * full_t[:, None] + own_full[:, None]   # m full batches, then its own
    value = np.broadcast_to(np.concatenate([own, later], axis=1)[:, None, :], (rows, kmax, kmax + mmax))
    weight = weight / np.maximum(weight.sum(axis=1, keepdims=True), 1e-300)
    widths = np.repeat(serve, kmax + mmax, axis=1)
    keep = np.flatnonzero(np.max(weight, axis=0) > 1e-9)
    return weight[:, keep], value.reshape(rows, -1)[:, keep], widths[:, keep]


def _disagg(eng: Engine, lam, levels=PERCENTILES) -> dict[str, np.ndarray]:
    """A disagg unit: the prefill pool (batches of waiting prompts on pre_servers servers),
    the KV hand-off, then a decode rank (its share lam / ranks of the arrivals)."""
    c = np.maximum(eng.pre_servers, 1.0)
    s_pre = np.maximum(np.ceil(c * eng.full), 1.0)
    sp, npre = _states(s_pre)
    g = np.clip(npre / c[:, None], 1.0, eng.full[:, None])                   # prompts per batch in state n
    t_g = eng.t_pre[:, None] + (g - 1.0) * eng.p1[:, None]
    mu_pre = np.minimum(npre, c[:, None]) * g / t_g
    p_pre, wait_pre, r_pre = birth_death(lam, mu_pre, sp)
    # the chain's law gives the chance of waiting (c servers, batching included); how long a
    # waiting prompt waits comes from the batch-start chain of the pool (_prefill_wait)
    p_wait = np.sum(np.where(npre - 1.0 >= c[:, None], p_pre, 0.0), axis=1) + wait_pre
    t_full = eng.t_pre + (eng.full - 1.0) * eng.p1
    base = eng.request_ms + eng.xfer + eng.t_pre
    w_q, v_q, width_q = _prefill_wait(eng, lam, c)
    zero = np.zeros_like(w_q)
    ue = (np.concatenate([(1.0 - p_wait)[:, None], p_wait[:, None] * w_q], axis=1),
          base[:, None] + np.concatenate([np.zeros((len(c), 1)), v_q], axis=1),
          np.concatenate([np.zeros((len(c), 1)), width_q], axis=1), np.concatenate([zero[:, :1], zero], axis=1),
          np.ones((len(c), w_q.shape[1] + 1)))
    mean_ttft = np.sum(ue[0] * (ue[1] + ue[2] / 2.0), axis=1)
    cap_pre = c * eng.full / t_full
    # decode rank
    lam_d = lam / eng.ranks
    s, nn = _states(eng.slots)
    d = interp(eng.d0, eng.grid, nn)
    steps = (eng.osl1 / eng.per_step)[:, None]
    p, wait, r = birth_death(lam_d, nn / (steps * d), s)
    mu_s = lam_d / np.maximum(r, 1e-300)
    m = np.sum(p * (nn - 1.0), axis=1) + wait * s
    p, nn = _bins(p, nn)
    slope_tab = np.gradient(eng.d0, axis=1) / np.maximum(np.gradient(eng.grid, axis=1), 1e-12)
    mean, sd = _tpot_parts(eng, lam_d, nn - 1.0, m, lambda b: interp(eng.d0, eng.grid, b),
                           lambda b: interp(slope_tab, eng.grid, b), lambda b: 0.0 * b, s)
    d_s = interp(eng.d0, eng.grid, s[:, None].astype(float))[:, 0]
    nrm = (p, mean, sd)
    ue_w = tuple(x[:, None] for x in (wait, steps[:, 0] * d_s / eng.osl1, np.zeros_like(wait), np.ones_like(wait),
                                      2.0 * np.maximum(mu_s - lam_d, 1e-12) * eng.osl1))
    mean_tpot = np.sum(p * mean, axis=1) + wait * (ue_w[1][:, 0] + 1.0 / ue_w[4][:, 0])
    q = (_quantiles(levels, ue=ue), _quantiles(levels, ue=ue_w, nrm=nrm))
    cap = np.minimum(cap_pre, mu_s * eng.ranks)
    return _finish(q, mean_ttft, mean_tpot, lam / cap, cap)
