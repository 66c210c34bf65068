"""A discrete-event simulation of one deployment under open-loop arrivals, to check the
queueing model (dse.model.openloop) against: it steps the batching engine request by request
with the same step costs (the Engine's tables), the same slot limit and the same prompt
budget per step, and no queueing formula.

agg (one rank, its share of the arrivals): at each step boundary waiting requests take free
slots first-come first-served; the step carries the running decodes and prompt tokens of
admitted requests in admission order up to the step's budget; it costs d0(b) + cp(b) P
(b = occupied slots, P = prompt tokens); a request's first token comes at the end of the step
that finishes its prompt, then it decodes ceil(osl1 / per_step) steps and frees its slot.
disagg: the prefill pool's servers each take up to `full` waiting prompts per batch
(t_pre + (g - 1) p1 ms, event-driven with heapq); the KV hand-off follows; each request goes
to a decode rank drawn at random, which steps its running batch like agg without prompts.
Arrivals are Poisson (seeded) or given (a trace: arrival times in seconds).
"""
from __future__ import annotations

import heapq
from collections import deque

import numpy as np

from dse.model.openloop import Engine, interp

__all__ = ["simulate", "poisson_arrivals"]


def poisson_arrivals(rate_per_s: float, n: int, seed: int = 0) -> np.ndarray:
    """n Poisson arrival times (ms) at rate_per_s."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1e3 / rate_per_s, n))


def _table(eng: Engine, name: str) -> np.ndarray:
    """Row 0's table at running batch 0..S (0 priced as 1)."""
    s = int(eng.slots[0])
    return interp(getattr(eng, name)[:1], eng.grid[:1], np.arange(0, s + 1, dtype=float)[None, :])[0]


def _rank(eng: Engine, arrivals: np.ndarray, prompt: float) -> tuple[np.ndarray, np.ndarray]:
    """Step one rank over `arrivals` (ms, sorted): (first-token time, finish time) per request.
    prompt = prompt tokens per request (0: a decode rank, its requests arrive prefilled)."""
    s = int(eng.slots[0])
    d0, cp, budget = _table(eng, "d0"), _table(eng, "cp"), _table(eng, "budget")
    dec_steps = int(np.ceil(eng.osl1[0] / eng.per_step[0] - 1e-9))
    n = len(arrivals)
    first, finish = np.full(n, np.nan), np.full(n, np.nan)
    waiting: deque = deque()
    prefill: deque = deque()          # [request, prompt tokens left]
    ends: dict[int, list] = {}        # step index -> requests finishing at its end
    t, k, nxt, running = 0.0, 0, 0, 0
    while nxt < n or waiting or running:
        if not waiting and not running and arrivals[nxt] > t:
            t = arrivals[nxt]
        while nxt < n and arrivals[nxt] <= t:
            waiting.append(nxt)
            nxt += 1
        while waiting and running < s:
            i = waiting.popleft()
            running += 1
            if prompt > 0:
                prefill.append([i, prompt])
            else:
                first[i] = arrivals[i]
                ends.setdefault(k + dec_steps - 1, []).append(i)
        room, used, done = budget[running], 0.0, []
        while prefill and used < room:
            take = min(prefill[0][1], room - used)
            used += take
            prefill[0][1] -= take
            if prefill[0][1] <= 0:
                done.append(prefill.popleft()[0])
        t += d0[running] + cp[running] * used
        for i in done:
            first[i] = t
            ends.setdefault(k + dec_steps, []).append(i)
        for i in ends.pop(k, ()):
            finish[i] = t
            running -= 1
        k += 1
    return first, finish


def _prefill_pool(eng: Engine, arrivals: np.ndarray) -> np.ndarray:
    """Prefill completion time of each request: servers take up to `full` waiting prompts."""
    servers, full = int(max(eng.pre_servers[0], 1)), int(max(np.floor(eng.full[0]), 1))
    t_pre, p1 = float(eng.t_pre[0]), float(eng.p1[0])
    done = np.full(len(arrivals), np.nan)
    free = servers
    events: list = [(float(a), 0, i) for i, a in enumerate(arrivals)]      # (time, 0 arrival / 1 done, id)
    heapq.heapify(events)
    queue: deque = deque()
    while events:
        t, kind, i = heapq.heappop(events)
        if kind == 0:
            queue.append(i)
        else:
            free += 1
        while free and queue:
            batch = [queue.popleft() for _ in range(min(full, len(queue)))]
            end = t + t_pre + (len(batch) - 1) * p1
            done[batch] = end
            free -= 1
            heapq.heappush(events, (end, 1, -1))
    return done


def simulate(eng: Engine, *, rate_per_s: float | None = None, arrivals_s=None, requests: int = 20_000,
             warmup: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    """TTFT and TPOT (ms) of each request after the warm-up share, for row 0 of `eng` (one
    deployment unit) fed Poisson arrivals at rate_per_s (or the given arrival times, s)."""
    rng = np.random.default_rng(seed + 1)
    arr = poisson_arrivals(rate_per_s, requests, seed) if arrivals_s is None else np.sort(np.asarray(arrivals_s)) * 1e3
    ranks = int(eng.ranks[0])
    rank_of = rng.integers(0, ranks, len(arr))
    if eng.kind == "agg":
        ttft, fin = np.full(len(arr), np.nan), np.full(len(arr), np.nan)
        for r in range(ranks):
            idx = np.flatnonzero(rank_of == r)
            f, e = _rank(eng, arr[idx], float(np.ceil(eng.isl_new[0])))
            ttft[idx], fin[idx] = f - arr[idx], e
        first = ttft + arr
    else:
        ready = _prefill_pool(eng, arr) + eng.xfer[0]
        first, fin = ready.copy(), np.full(len(arr), np.nan)
        for r in range(ranks):
            idx = np.flatnonzero(rank_of == r)
            order = idx[np.argsort(ready[idx], kind="stable")]
            _, fin[order] = _rank(eng, ready[order], 0.0)
        ttft = first - arr
    keep = slice(int(warmup * len(arr)), None)
    return {"ttft_ms": (ttft + eng.request_ms[0])[keep], "tpot_ms": ((fin - first) / eng.osl1[0])[keep]}
