"""Operation-level placement of a model over heterogeneous device pools (OR-Tools CP-SAT).

Every layer has two op groups in order, attention (with its KV cache) then FFN or
experts; the model adds an embedding before the first layer and an LM head after the
last. A placement puts each op group of each layer, the embedding and the head on a
pool. A pool runs the ops it owns one after the other for each micro-batch; pools work
concurrently on successive micro-batches, so the step rate is set by the slowest pool:

    stage(p)  = sum of op times on p + hops on p x hop_ms[p]
    hops      = every hand-off between consecutive ops on different pools is one activation
                transfer; it occupies the sending and the receiving pool for their own NIC
                time hop_ms (opcost), so stage = receive + compute + send (no overlap). With
                `overlap=True` transfers leave the stages and each pool's NICs become two
                resources of their own (in and out: compute fully overlapped with
                communication, as in ping-pong AFD): hops in x hop_ms <= T, hops out x hop_ms <= T.
    minimise  max_p stage(p)   s.t. per-GPU memory of each pool, pins.

`batch` is the micro-batch of one step; with k pools in use k micro-batches are in flight
(k x batch concurrent sequences), tokens/s = tokens per step / bottleneck, and a token's
step takes `latency_ms` (every op and hop of the chain once).

The CP-SAT model (symmetry-free aggregated form, Euler-trail realisation, integer
scaling) is dse.solvers.cpmodel; the float re-pricing of a placement dse.solvers.sequence.

Tokens per dollar: a pool left empty is not paid for, so tokens/$ = tokens/step /
(bottleneck x cost of the used pools). The product is not linear; instead of a
linearisation, every non-empty subset of pools (2^P - 1, P small) is solved for its
minimum bottleneck with the other pools forbidden, in order of increasing cost, skipping a
subset once (global min bottleneck) x (its cost) cannot beat the best found. That is exact
(each subset optimum is proved) and costs a handful of tiny solves.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
from ortools.sat.python import cp_model

from dse.deploy.opcost import OpCosts
from dse.errors import DSEError
from dse.solvers import time_limit_problem
from dse.solvers.cpmodel import (MEM_UNIT, SCALE, PlacementModel, euler_layers, parse_pins, pinned,
                                 rounding_bound_ms, value)
from dse.solvers.sequence import evaluate_sequence

__all__ = ["PlacementResult", "place", "score", "explain_infeasible", "evaluate_sequence", "rounding_bound_ms",
           "OBJECTIVES", "MAX_POOLS", "SCALE"]

MAX_POOLS = 5
OBJECTIVES = ("bottleneck", "tokens_per_usd")


@dataclasses.dataclass
class PlacementResult:
    status: str                       # OPTIMAL (proved) or FEASIBLE (time limit hit; see gap)
    objective: str
    pools: list[str]
    layers: list[tuple[int, int, int]]  # per layer in order: (group index, attention pool, FFN pool)
    counts: list[dict]                # per group: {(attn pool, ffn pool): layers}
    embed_pool: int
    head_pool: int
    compute_ms: np.ndarray            # per pool
    transfer_ms: np.ndarray           # per pool: (hops in + hops out) x hop_ms
    stage_ms: np.ndarray              # per pool (compute + transfers; compute only with overlap)
    crossings: np.ndarray             # (P, P) directed hop counts
    memory_gb: np.ndarray             # per GPU, per pool
    capacity_gb: np.ndarray           # per GPU usable for weights + KV
    bottleneck_ms: float
    bottleneck: str                   # pool name, or "<pool> NIC in/out" with overlap
    bound_ms: float                   # solver's proved lower bound on the bottleneck (scaled back)
    gap: float                        # (value - bound) / value of the objective; 0 when optimal
    rounding_bound_ms: float          # |integer-scaled - float| bound on any stage
    scaled_bottleneck_ms: float       # the solver's objective / SCALE
    tokens_per_s: float               # tokens per step / bottleneck: one micro-batch per used pool in flight
    latency_ms: float                 # one micro-batch through every op and hop (TPOT at this batch)
    usd_per_hour: float               # pools in use
    tokens_per_usd: float
    overlap: bool
    used: np.ndarray                  # pools that own at least one op group
    solve_s: float
    solves: int

    def as_dict(self) -> dict:
        names = self.pools
        return {
            "status": self.status, "objective": self.objective, "pools": names,
            "embed_pool": names[self.embed_pool], "head_pool": names[self.head_pool],
            "counts": [{f"{names[a]}/{names[f]}": n for (a, f), n in c.items()} for c in self.counts],
            "layers": [[g, names[a], names[f]] for g, a, f in self.layers],
            "stage_ms": dict(zip(names, self.stage_ms.tolist())),
            "compute_ms": dict(zip(names, self.compute_ms.tolist())),
            "transfer_ms": dict(zip(names, self.transfer_ms.tolist())),
            "hops": {f"{names[i]}->{names[j]}": int(self.crossings[i, j])
                     for i in range(len(names)) for j in range(len(names)) if self.crossings[i, j]},
            "memory_gb": dict(zip(names, self.memory_gb.tolist())),
            "capacity_gb": dict(zip(names, self.capacity_gb.tolist())),
            "bottleneck_ms": self.bottleneck_ms, "bottleneck": self.bottleneck, "bound_ms": self.bound_ms,
            "gap": self.gap, "rounding_bound_ms": self.rounding_bound_ms, "tokens_per_s": self.tokens_per_s,
            "latency_ms": self.latency_ms,
            "usd_per_hour": self.usd_per_hour, "tokens_per_usd": self.tokens_per_usd, "overlap": self.overlap,
            "solve_s": self.solve_s, "solves": self.solves,
        }


MAX_NOGOODS = 50   # master re-solves for unorderable groups before falling back to the explicit model


def _solve_subset(costs: OpCosts, pins: dict, allowed: list[bool], *, overlap: bool, scale: int,
                  deadline: float, tiebreak: bool) -> dict | None:
    """Min-bottleneck placement on the allowed pools: None if infeasible; raises _Timeout if
    the time ran out before any placement was found."""
    solves = 0

    def run(cp: PlacementModel, objective, hint=None, until=None):
        """Solve, then realise; no-goods until every group orders (or give up)."""
        nonlocal solves
        for _ in range(MAX_NOGOODS + 1):
            solver, status = cp.solve(time_limit=(until or deadline) - time.perf_counter(), minimize=objective,
                                      hint=hint)
            solves += 1
            if status == cp_model.MODEL_INVALID:
                raise RuntimeError(f"placement: CP-SAT model invalid: {cp.m.validate()}")
            if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                return solver, status, None
            realized, bad = cp.realize(solver)
            if not bad:
                return solver, status, realized
            for gi in bad:
                cp.forbid(solver, gi)
        return solver, "GIVE_UP", None

    t_start = time.perf_counter()
    cp = PlacementModel(costs, pins, allowed, overlap=overlap, scale=scale)
    solver, status, realized = run(cp, cp.T)
    if status == "GIVE_UP":
        cp = PlacementModel(costs, pins, allowed, overlap=overlap, scale=scale, form="full")
        solver, status, realized = run(cp, cp.T)
    if status == cp_model.INFEASIBLE:
        return None
    if realized is None:
        raise _Timeout()
    t_scaled = int(solver.objective_value)
    out = {"optimal": status == cp_model.OPTIMAL, "t_scaled": t_scaled, "bound": float(solver.best_objective_bound),
           "solver": solver, "cp": cp, "realized": realized}
    if tiebreak and time.perf_counter() < deadline:
        # keep the bottleneck, minimise the total stage time (fewer needless hops); cosmetic,
        # so it gets at most as long as the optimum took (>= 0.25 s) and may stop unproved
        hint = {v: value(solver, v) for v in cp.all_vars()}
        cp.m.add(cp.T <= t_scaled)
        budget = max(0.25, time.perf_counter() - t_start)
        s2, _, r2 = run(cp, sum(cp.stage), hint, min(deadline, time.perf_counter() + budget))
        if r2 is not None:
            out.update(solver=s2, realized=r2)
    sol = out["solver"]
    out["emb"] = next(p for p in range(costs.n_pools) if value(sol, cp.emb[p]))
    out["head"] = next(p for p in range(costs.n_pools) if value(sol, cp.head[p]))
    out["layers"] = euler_layers(costs, out["realized"])
    out["solves"] = solves
    return out


class _Timeout(Exception):
    pass


def _gb(x) -> np.ndarray:
    return np.asarray(x, dtype=float) / 1e9


def place(costs: OpCosts, *, objective: str = "bottleneck", pins: dict[str, str] | None = None,
          overlap: bool = False, time_limit: float = 10.0, scale: int = SCALE,
          tiebreak: bool = True) -> PlacementResult:
    """Optimal placement of the op groups of `costs.model` on `costs.pools`.

    objective: "bottleneck" (min max stage time: max tokens/s) or "tokens_per_usd" (pools
    left empty are not paid for). pins: {"attn": pool, "g1.moe": pool, "embed": pool, ...}.
    Infeasible inputs raise DSEError naming the binding constraint.
    """
    if objective not in OBJECTIVES:
        raise DSEError(f"place: objective: unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")
    if costs.n_pools > MAX_POOLS:
        raise DSEError(f"place: at most {MAX_POOLS} pools (got {costs.n_pools})")
    if time_limit_problem(time_limit):
        raise DSEError(f"place: --time-limit: {time_limit_problem(time_limit)}")
    pin_map = parse_pins(costs, pins)
    t0 = time.perf_counter()
    deadline = t0 + time_limit
    P = costs.n_pools
    full = tuple([True] * P)
    subsets = [full]
    if objective == "tokens_per_usd":
        # all pools first (its optimum bounds every subset's bottleneck from below), then by cost
        rest = [tuple(bool(mask >> p & 1) for p in range(P)) for mask in range(1, 2 ** P - 1)]
        subsets += sorted(rest, key=lambda s: (float(np.sum(costs.usd_per_hour[list(s)])), -sum(s)))
    best = None
    solves = 0
    all_optimal = True
    lower = None       # proved lower bound on the bottleneck with every pool available (scaled)
    bound_cost = math.inf
    for allowed in subsets:
        usd = float(np.sum(costs.usd_per_hour[list(allowed)]))
        weight = usd if objective == "tokens_per_usd" else 1.0
        if best is not None and lower is not None and lower / scale * weight >= best["score"]:
            continue   # cannot beat the best: pruned by a proved bound
        try:
            res = _solve_subset(costs, pin_map, list(allowed), overlap=overlap, scale=scale, deadline=deadline,
                                tiebreak=tiebreak and objective == "bottleneck")
        except _Timeout:
            all_optimal = False
            continue
        if res is None:
            continue
        solves += res["solves"]
        all_optimal &= res["optimal"]
        if allowed == full:
            lower = res["bound"]
        ev = evaluate_sequence(costs, res["layers"], res["emb"], res["head"], overlap=overlap)
        used_usd = float(np.sum(costs.usd_per_hour[ev["used"]]))
        score = ev["bottleneck_ms"] * (used_usd if objective == "tokens_per_usd" else 1.0)
        bound_cost = min(bound_cost, res["bound"] / scale * weight)
        if best is None or score < best["score"] - 1e-15:
            best = {**res, "score": score, "ev": ev, "usd": used_usd}
    solve_s = time.perf_counter() - t0
    if best is None:
        if not all_optimal:
            raise DSEError(f"place: no placement found within the time limit ({time_limit:g} s); raise --time-limit")
        raise DSEError(explain_infeasible(costs, pin_map))
    ev = best["ev"]
    value = best["score"]
    bound_v = min(value, bound_cost)
    gap = 0.0 if all_optimal else max(value - bound_v, 0.0) / max(value, 1e-30)
    counts = []
    for gi in range(len(costs.groups)):
        c: dict = {}
        for g, a, f in best["layers"]:
            if g == gi:
                c[(a, f)] = c.get((a, f), 0) + 1
        counts.append(c)
    tps = costs.tokens_per_step / max(ev["bottleneck_ms"], 1e-12) * 1e3
    usd = best["usd"]
    return PlacementResult(
        status="OPTIMAL" if all_optimal else "FEASIBLE", objective=objective, pools=costs.pool_names,
        layers=best["layers"], counts=counts, embed_pool=best["emb"], head_pool=best["head"],
        compute_ms=ev["compute_ms"], transfer_ms=ev["transfer_ms"], stage_ms=ev["stage_ms"],
        crossings=ev["crossings"], memory_gb=_gb(ev["memory_bytes"]), capacity_gb=_gb(costs.capacity_bytes),
        bottleneck_ms=ev["bottleneck_ms"], bottleneck=ev["bottleneck"],
        bound_ms=(lower if lower is not None else best["bound"]) / scale, gap=gap,
        rounding_bound_ms=rounding_bound_ms(costs, scale), scaled_bottleneck_ms=best["t_scaled"] / scale,
        tokens_per_s=tps, latency_ms=ev["latency_ms"], usd_per_hour=usd, tokens_per_usd=tps * 3600.0 / max(usd, 1e-12), overlap=overlap,
        used=ev["used"], solve_s=solve_s, solves=solves)


def _pin_names(costs: OpCosts, pins: dict) -> list[tuple[str, str]]:
    return [(op if g is None else f"g{g}.{op}", costs.pools[p].name) for (g, op), p in pins.items()]


def explain_infeasible(costs: OpCosts, pins: dict) -> str:
    """Which constraint makes the placement infeasible, with the numbers."""
    P = costs.n_pools
    names = costs.pool_names
    cap = costs.capacity_bytes
    where = (f"{costs.model.id} at batch {costs.batch:g}, context {costs.isl + costs.osl:g}, "
             f"{costs.phase}")
    # a single layer's op group that fits nowhere it may go
    for gc in costs.groups:
        for op in gc.ops:
            pin = pinned(pins, gc.index, op)
            cand = [pin] if pin is not None else list(range(P))
            if all(gc.mem_bytes[op][p] > cap[p] for p in cand):
                detail = ", ".join(f"{names[p]} needs {gc.mem_bytes[op][p] / 1e9:.1f} GB of {cap[p] / 1e9:.1f} GB"
                                   for p in cand)
                return (f"place: memory: one layer's {op} of group g{gc.index} ({gc.label}) fits on no allowed pool "
                        f"({detail} usable per GPU) for {where}")
    # relax memory: how much too small are the pools?
    cp = PlacementModel(costs, pins, [True] * P, overlap=False, scale=1000, soft_memory=True)
    solver, status = cp.solve(time_limit=10.0, minimize=sum(cp.over))
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) and solver.objective_value > 0:
        over = [value(solver, o) * MEM_UNIT for o in cp.over]
        worst = [p for p in range(P) if over[p] > 0]
        detail = "; ".join(f"{sum(over) / 1e9 if len(worst) == 1 else over[p] / 1e9:.1f} GB per GPU on "
                           f"{names[p]} ({costs.pools[p].count} x {costs.pools[p].device}: needs "
                           f"{(cap[p] + over[p]) / 1e9:.1f} GB, {cap[p] / 1e9:.1f} GB usable)" for p in worst)
        msg = (f"place: memory: the pools cannot hold {where}: the placement that overfills least still lacks "
               f"{sum(over) / 1e9:.1f} GB in total: {detail}")
        if pins:
            cp2 = PlacementModel(costs, {}, [True] * P, overlap=False, scale=1000, soft_memory=True)
            s2, st2 = cp2.solve(time_limit=10.0, minimize=sum(cp2.over))
            if st2 == cp_model.OPTIMAL and s2.objective_value == 0:
                return (f"place: pins: with the pins ({', '.join(f'{k}={v}' for k, v in _pin_names(costs, pins))}) "
                        f"the pools lack {sum(over) / 1e9:.1f} GB per GPU ({detail}); without the pins the model fits")
        return msg + "; add GPUs, use a smaller weight or KV dtype, or lower the batch / context"
    if pins:
        return "place: pins: the pinned op groups make it infeasible; without the pins the model fits"
    return f"place: no feasible placement for {where}"


def score(model, pools, *, objective: str = "bottleneck", time_limit: float = 10.0, **kw) -> dict:
    """Metrics of a multi-pool candidate at its optimal placement (for the search)."""
    from dse.deploy.opcost import op_costs

    costs = op_costs(model, pools, **kw)
    r = place(costs, objective=objective, time_limit=time_limit)
    return {"tokens_per_s": r.tokens_per_s, "usd_per_hour": r.usd_per_hour,
            "usd_per_mtok": r.usd_per_hour / max(r.tokens_per_s * 3600.0, 1e-30) * 1e6,
            "num_gpus": int(sum(p.count for p, u in zip(costs.pools, r.used) if u)),
            "bottleneck_ms": r.bottleneck_ms, "tpot_ms": r.latency_ms, "status": r.status, "gap": r.gap}
