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

Formulation (symmetry-free): identical layers of a layer group are not told apart. A
group's layers, in model order, form a walk A F A F ... over "attention on pool a" and
"FFN on pool f" nodes: layer edges A_a -> F_f and hop edges F_f -> A_a (one layer's FFN to
the next layer's attention), used once each: an Euler trail from the run's first to its
last node. Every cost is a function of a few counts per group and pool: ua[p] / uf[p]
(layers with attention / FFN on p: compute and memory), yd[p] (layers with both on p) and
zd[p] (hops staying on p), since hops into p = (uf - yd) + (ua - first - zd) and hops out
of p = (ua - yd) + (uf - last - zd). The master model has only these integers, the
one-hot first / last pool of each run and the one-hot embedding / head pools with the
hops between runs (one-hot products), O(G P) variables whatever the layer count. Which
layer pairs the off-diagonal counts connect is left implicit: Hall's condition for a
zero-diagonal transportation matrix (row_p + col_p <= total, for layers and for hops)
guarantees one exists, and necessary connectivity conditions (a used pool is entered
unless the run starts there, left unless it ends there) prune most disconnected
choices. The master's optimum is then realised group by group: a tiny feasibility model
with explicit counts y[a][f], z[f][a], degree balance and the Euler cuts (for every node
set S without the start and every used node in S, some edge enters S; 2^(2P) sets)
finds the trail, ordered by Hierholzer's algorithm. A group that cannot be ordered gets a
no-good on its counts and the master is solved again (exact: the master is a relaxation
and every accepted solution is realised), falling back after MAX_NOGOODS rounds to the
explicit y / z model with every cut. Groups are contiguous runs in the order of
`Model.groups` (exact for dense models and DeepSeek-style dense-then-MoE stacks; for
interleaved hybrids the group order stands in for the true layer order). Why the master:
the explicit model has many count matrices per cost (every off-diagonal rearrangement),
which CP-SAT has to refute one by one when proving; the master has none, and proves a
61-layer MoE on 3 pools in ~0.1 s. After the optimum a second solve keeps the bottleneck
and minimises the total stage time (fewer needless hops on non-bottleneck pools); it
never changes the bottleneck.

Integer scaling: times become integers in units of 1/SCALE ms (SCALE = 1e6: nanoseconds),
each coefficient rounded to nearest. A pool's stage is a sum of at most 4L+3 terms (2L+2
op instances and up to 2L+1 hops) for L layers, so |scaled stage - float stage| <=
(4L+3) * 0.5 / SCALE ms for any placement; `PlacementResult.rounding_bound_ms` carries
it and the reported times are recomputed in floats from the concrete layer sequence.
Memory becomes integers in kB, each term rounded up and the capacity down, so a placement
the solver accepts always fits in float arithmetic too.

Tokens per dollar: a pool left empty is not paid for, so tokens/$ = tokens/step /
(bottleneck x cost of the used pools). The product is not linear; instead of a
linearisation, every non-empty subset of pools (2^P - 1, P small) is solved for its
minimum bottleneck with the other pools forbidden, in order of increasing cost, skipping a
subset once (global min bottleneck) x (its cost) cannot beat the best found. That is exact
(each subset optimum is proved) and costs a handful of tiny solves.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time

import numpy as np
from ortools.sat.python import cp_model

from dse.errors import DSEError
from dse.deploy.opcost import OpCosts

SCALE = 1_000_000      # integer time units per ms
MEM_UNIT = 1_000.0     # bytes per integer memory unit
MAX_POOLS = 5
OBJECTIVES = ("bottleneck", "tokens_per_usd")
OP_NAMES = ("attn", "ffn", "moe", "embed", "lm_head")


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


# ----------------------------------------------------------------------------- evaluation


def evaluate_sequence(costs: OpCosts, layers: list[tuple[int, int, int]], embed: int, head: int, *,
                      overlap: bool = False) -> dict:
    """Float stage times, transfers and memory of a concrete placement.

    `layers` lists every layer in model order as (group index, attention pool, FFN pool);
    groups must appear as contiguous runs in `costs.groups` order. The reference the
    solver is checked against (brute force in the tests uses it directly).
    """
    n_p = costs.n_pools
    comp = np.zeros(n_p)
    mem = np.zeros(n_p)
    terms = np.zeros(n_p, dtype=int)
    chain = [embed]
    comp[embed] += costs.embed_time_ms[embed]
    mem[embed] += costs.embed_mem_bytes[embed]
    terms[embed] += 1
    for g, a, f in layers:
        gc = costs.groups[g]
        o1, o2 = gc.ops
        comp[a] += gc.time_ms[o1][a]
        comp[f] += gc.time_ms[o2][f]
        mem[a] += gc.mem_bytes[o1][a]
        mem[f] += gc.mem_bytes[o2][f]
        terms[a] += 1
        terms[f] += 1
        chain += [a, f]
    chain.append(head)
    comp[head] += costs.head_time_ms[head]
    mem[head] += costs.head_mem_bytes[head]
    terms[head] += 1
    if costs.tied_embeddings and head == embed:
        mem[head] -= costs.embed_mem_bytes[embed]
    cross = np.zeros((n_p, n_p), dtype=int)
    for s, d in itertools.pairwise(chain):
        if s != d:
            cross[s, d] += 1
    hops_in, hops_out = cross.sum(axis=0), cross.sum(axis=1)
    # one micro-batch's trip through every op and hop (each hop at its slower side)
    latency = float(comp.sum() + sum(cross[i, j] * max(costs.hop_ms[i], costs.hop_ms[j])
                                     for i in range(n_p) for j in range(n_p) if cross[i, j]))
    xfer = (hops_in + hops_out) * costs.hop_ms
    names = [p.name for p in costs.pools]
    if overlap:
        stage = comp.copy()
        cands = [(float(stage[p]), names[p]) for p in range(n_p)]
        cands += [(float(hops_in[p] * costs.hop_ms[p]), f"{names[p]} NIC in") for p in range(n_p)]
        cands += [(float(hops_out[p] * costs.hop_ms[p]), f"{names[p]} NIC out") for p in range(n_p)]
        terms = np.maximum(np.maximum(terms, hops_in), hops_out)
    else:
        stage = comp + xfer
        cands = [(float(stage[p]), names[p]) for p in range(n_p)]
        terms = terms + hops_in + hops_out
    worst, name = max(cands, key=lambda c: c[0])
    used = np.zeros(n_p, dtype=bool)
    used[list(set(chain))] = True
    return {"compute_ms": comp, "transfer_ms": xfer, "stage_ms": stage, "crossings": cross,
            "memory_bytes": mem, "fits": bool(np.all(mem <= costs.capacity_bytes)), "bottleneck_ms": worst,
            "bottleneck": name, "used": used, "terms": terms, "latency_ms": latency}


def rounding_bound_ms(costs: OpCosts, scale: int = SCALE) -> float:
    """Bound on |integer-scaled stage - float stage| for any placement (4L+3 rounded terms)."""
    n_layers = sum(g.count for g in costs.groups)
    return (4 * n_layers + 3) * 0.5 / scale


# ----------------------------------------------------------------------------- CP-SAT model


def _parse_pins(costs: OpCosts, pins: dict[str, str] | None) -> dict[tuple[int | None, str], int]:
    """{'attn': 'h100_sxm', 'g1.moe': 'h20', 'embed': ...} -> {(group or None, op): pool index}."""
    out: dict[tuple[int | None, str], int] = {}
    for sel, pool in (pins or {}).items():
        g: int | None = None
        op = sel
        if "." in sel:
            gs, op = sel.split(".", 1)
            if not (gs.startswith("g") and gs[1:].isdigit()) or int(gs[1:]) >= len(costs.groups):
                raise DSEError(f"pin {sel!r}: group must be g0..g{len(costs.groups) - 1}")
            g = int(gs[1:])
        if op not in OP_NAMES:
            raise DSEError(f"pin {sel!r}: unknown op group {op!r}; allowed: {', '.join(OP_NAMES)} "
                           "(optionally prefixed gN. for one layer group)")
        groups = [costs.groups[g]] if g is not None else costs.groups
        if op not in ("embed", "lm_head") and not any(op in gc.ops for gc in groups):
            raise DSEError(f"pin {sel!r}: the model has no {op!r} op group there")
        out[(g, op)] = costs.pool_index(pool)
    return out


def _pinned(pins: dict, g: int | None, op: str) -> int | None:
    if (g, op) in pins:
        return pins[(g, op)]
    return pins.get((None, op))


class _Cp:
    """The CP-SAT model for one set of allowed pools.

    form="agg" (the default) keeps per group only the quantities the costs depend on:
    ua[p] / uf[p] layers with attention / FFN on p, yd[p] layers with both on p, zd[p]
    hops from an FFN on p to the next attention on p, and the run's first / last pool;
    the off-diagonal layer and hop counts are left implicit, constrained by Hall's
    condition for a zero-diagonal transportation matrix (row_p + col_p <= total) and by
    necessary connectivity conditions. `realize` then orders each group's layers (a tiny
    feasibility model with the Euler cuts); a group that cannot be realised gets a no-good
    and the master is solved again. form="full" is the explicit y / z model with every cut.
    """

    def __init__(self, costs: OpCosts, pins: dict, allowed: list[bool], *, overlap: bool, scale: int,
                 soft_memory: bool = False, form: str = "agg"):
        self.costs, self.scale, self.overlap, self.form, self.pins = costs, scale, overlap, form, pins
        P = costs.n_pools
        self.P = P
        m = cp_model.CpModel()
        self.m = m
        T_int = lambda x: round(float(x) * scale)
        M_int = lambda x: math.ceil(float(x) / MEM_UNIT)

        def ok(g: int | None, op: str) -> list[bool]:
            pin = _pinned(pins, g, op)
            return [allowed[p] and (pin is None or pin == p) for p in range(P)]

        self.ok = ok
        comp = [[] for _ in range(P)]      # (coef, var) terms of compute per pool
        memt = [[] for _ in range(P)]
        hin = [[] for _ in range(P)]       # expressions counting hops into / out of each pool
        hout = [[] for _ in range(P)]
        # embedding and head
        e_ok, h_ok = ok(None, "embed"), ok(None, "lm_head")
        self.emb = [m.new_bool_var(f"emb{p}") if e_ok[p] else 0 for p in range(P)]
        self.head = [m.new_bool_var(f"head{p}") if h_ok[p] else 0 for p in range(P)]
        m.add(sum(self.emb) == 1)
        m.add(sum(self.head) == 1)
        for p in range(P):
            comp[p] += [(T_int(costs.embed_time_ms[p]), self.emb[p]), (T_int(costs.head_time_ms[p]), self.head[p])]
            memt[p] += [(M_int(costs.embed_mem_bytes[p]), self.emb[p]), (M_int(costs.head_mem_bytes[p]), self.head[p])]
            if costs.tied_embeddings and e_ok[p] and h_ok[p]:
                both = m.new_bool_var(f"both{p}")
                m.add_implication(both, self.emb[p])
                m.add_implication(both, self.head[p])
                memt[p].append((-M_int(costs.embed_mem_bytes[p]), both))
        self.first, self.last, self.groups = [], [], []
        for gc in costs.groups:
            g, n = gc.index, gc.count
            o1, o2 = gc.ops
            a_ok, f_ok = ok(g, o1), ok(g, o2)
            first = [m.new_bool_var(f"first{g}_{a}") if a_ok[a] else 0 for a in range(P)]
            last = [m.new_bool_var(f"last{g}_{f}") if f_ok[f] else 0 for f in range(P)]
            m.add(sum(first) == 1)
            m.add(sum(last) == 1)
            if form == "agg":
                ua, uf = self._agg_group(g, n, a_ok, f_ok, first, last, hin, hout)
            else:
                ua, uf = self._full_group(g, n, a_ok, f_ok, first, last, hin, hout)
            for p in range(P):
                if not isinstance(ua[p], int):
                    comp[p].append((T_int(gc.time_ms[o1][p]), ua[p]))
                    memt[p].append((M_int(gc.mem_bytes[o1][p]), ua[p]))
                if not isinstance(uf[p], int):
                    comp[p].append((T_int(gc.time_ms[o2][p]), uf[p]))
                    memt[p].append((M_int(gc.mem_bytes[o2][p]), uf[p]))
            self.first.append(first)
            self.last.append(last)
        # hops between runs: embed -> group 0 -> group 1 ... -> head (one-hot products)
        srcs = [self.emb] + self.last
        dsts = self.first + [self.head]
        for k, (src, dst) in enumerate(zip(srcs, dsts)):
            b = [[m.new_bool_var(f"b{k}_{q}_{p}") if not (isinstance(src[q], int) or isinstance(dst[p], int)) else 0
                  for p in range(P)] for q in range(P)]
            for q in range(P):
                m.add(sum(b[q]) == src[q])
            for p in range(P):
                m.add(sum(b[q][p] for q in range(P)) == dst[p])
            for q in range(P):
                for p in range(P):
                    if q != p and not isinstance(b[q][p], int):
                        hout[q].append(b[q][p])
                        hin[p].append(b[q][p])
        hop = [T_int(costs.hop_ms[p]) for p in range(P)]
        self.hops_in = [sum(h) if h else 0 for h in hin]
        self.hops_out = [sum(h) if h else 0 for h in hout]
        self.stage = []
        for p in range(P):
            expr = sum(c * v for c, v in comp[p] if not isinstance(v, int))
            if not overlap:
                expr = expr + hop[p] * (self.hops_in[p] + self.hops_out[p])
            self.stage.append(expr)
        n_layers = sum(gc.count for gc in costs.groups)
        horizon = (sum(gc.count * sum(T_int(np.max(gc.time_ms[o])) for o in gc.ops) for gc in costs.groups)
                   + T_int(np.max(costs.head_time_ms)) + T_int(np.max(costs.embed_time_ms))
                   + 2 * (2 * n_layers + 1) * T_int(np.max(costs.hop_ms)) + 1)
        self.T = m.new_int_var(0, horizon, "bottleneck")
        for p in range(P):
            m.add(self.stage[p] <= self.T)
        if overlap:
            for p in range(P):
                for h in (self.hops_in[p], self.hops_out[p]):
                    if not isinstance(h, int):
                        m.add(hop[p] * h <= self.T)
        # memory (kB, terms rounded up, capacity down)
        self.over = []
        for p in range(P):
            cap = math.floor(max(float(costs.capacity_bytes[p]), 0.0) / MEM_UNIT)
            expr = sum(c * v for c, v in memt[p] if not isinstance(v, int))
            if soft_memory:
                o = m.new_int_var(0, 10**12, f"over{p}")
                self.over.append(o)
                m.add(expr <= cap + o)
            elif not isinstance(expr, int):
                m.add(expr <= cap)

    # ---- aggregated group: ua, uf, yd, zd
    def _agg_group(self, g, n, a_ok, f_ok, first, last, hin, hout):
        m, P = self.m, self.P
        ua = [m.new_int_var(0, n, f"ua{g}_{p}") if a_ok[p] else 0 for p in range(P)]
        uf = [m.new_int_var(0, n, f"uf{g}_{p}") if f_ok[p] else 0 for p in range(P)]
        both = [a_ok[p] and f_ok[p] for p in range(P)]
        yd = [m.new_int_var(0, n, f"yd{g}_{p}") if both[p] else 0 for p in range(P)]
        zd = [m.new_int_var(0, n - 1, f"zd{g}_{p}") if both[p] and n > 1 else 0 for p in range(P)]
        m.add(sum(ua) == n)
        m.add(sum(uf) == n)
        r = [ua[p] - yd[p] for p in range(P)]                  # layers A_p -> F_q, q != p
        c = [uf[p] - yd[p] for p in range(P)]                  # layers A_q -> F_p, q != p
        s = [uf[p] - last[p] - zd[p] for p in range(P)]        # hops F_p -> A_q, q != p
        t = [ua[p] - first[p] - zd[p] for p in range(P)]       # hops F_q -> A_p, q != p
        big_r = n - sum(yd)
        big_z = n - 1 - sum(zd)
        used = [m.new_bool_var(f"used{g}_{p}") if (a_ok[p] or f_ok[p]) else 0 for p in range(P)]
        multi = m.new_bool_var(f"multi{g}")
        m.add(sum(used) <= 1 + P * multi)
        for p in range(P):
            for e in (r[p], c[p], s[p], t[p]):
                if not isinstance(e, int):
                    m.add(e >= 0)
            if P > 1:
                m.add(r[p] + c[p] <= big_r)                    # Hall: a zero-diagonal matrix exists
                m.add(s[p] + t[p] <= big_z)
            if isinstance(used[p], int):
                continue
            m.add(ua[p] + uf[p] <= 2 * n * used[p])
            if P > 1:
                m.add(c[p] + t[p] >= used[p] - first[p])       # entered unless the run starts here
                m.add(r[p] + s[p] >= used[p] - last[p])        # left unless the run ends here
                m.add(r[p] + s[p] >= first[p] + multi - 1)     # the start pool is left if others are used
                m.add(c[p] + t[p] >= last[p] + multi - 1)      # the end pool is entered if others are used
            hin[p].append(c[p] + t[p])
            hout[p].append(r[p] + s[p])
        self.groups.append({"ua": ua, "uf": uf, "yd": yd, "zd": zd})
        return ua, uf

    # ---- explicit group: y[a][f], z[f][a] with the Euler cuts
    def _full_group(self, g, n, a_ok, f_ok, first, last, hin, hout):
        m, P = self.m, self.P
        y, z = _trail_vars(m, g, n, P, a_ok, f_ok, first, last)
        for a in range(P):
            for f in range(P):
                if a != f and not isinstance(y[a][f], int):
                    hout[a].append(y[a][f])
                    hin[f].append(y[a][f])
                if a != f and not isinstance(z[f][a], int):
                    hout[f].append(z[f][a])
                    hin[a].append(z[f][a])
        ua = [sum(y[a][f] for f in range(P)) for a in range(P)]
        uf = [sum(y[a][f] for a in range(P)) for f in range(P)]
        self.groups.append({"y": y, "z": z})
        return ua, uf

    def solve(self, *, time_limit: float, minimize, hint: dict | None = None):
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = 0
        solver.parameters.max_time_in_seconds = max(time_limit, 0.01)
        self.m.clear_objective()
        self.m.minimize(minimize)
        if hint:
            self.m.clear_hints()
            for var, val in hint.items():
                self.m.add_hint(var, val)
        status = solver.solve(self.m)
        return solver, status

    def all_vars(self) -> list:
        out = [v for v in self.emb + self.head if not isinstance(v, int)]
        for grp, fi, la in zip(self.groups, self.first, self.last):
            for vec in grp.values():
                flat = [v for row in vec for v in (row if isinstance(row, list) else [row])]
                out += [v for v in flat if not isinstance(v, int)]
            out += [v for v in fi + la if not isinstance(v, int)]
        return out + [self.T]

    def realize(self, solver) -> tuple[list, list[int]]:
        """Per group (y, z) count matrices, or the indices of groups that cannot be ordered."""
        P = self.P
        out, bad = [], []
        for gi, (grp, fi, la) in enumerate(zip(self.groups, self.first, self.last)):
            first = [_value(solver, v) for v in fi]
            last = [_value(solver, v) for v in la]
            if self.form == "full":
                out.append(([[_value(solver, v) for v in row] for row in grp["y"]],
                            [[_value(solver, v) for v in row] for row in grp["z"]], first, last))
                continue
            vals = {k: [_value(solver, v) for v in vec] for k, vec in grp.items()}
            yz = _realize_group(self.costs.groups[gi].count, P, vals, first, last)
            if yz is None:
                bad.append(gi)
                out.append(None)
            else:
                out.append((*yz, first, last))
        return out, bad

    def forbid(self, solver, gi: int) -> None:
        """No-good: group gi may not take its current aggregate values again."""
        grp = self.groups[gi]
        lits = []
        for v in [x for vec in grp.values() for x in vec] + self.first[gi] + self.last[gi]:
            if isinstance(v, int):
                continue
            d = self.m.new_bool_var("")
            self.m.add(v != _value(solver, v)).only_enforce_if(d)
            lits.append(d)
        self.m.add_bool_or(lits)


def _trail_vars(m, g, n, P, a_ok, f_ok, first, last):
    """y[a][f] layers, z[f][a] hops of one group forming an Euler trail from `first` to `last`."""
    y = [[m.new_int_var(0, n, f"y{g}_{a}_{f}") if a_ok[a] and f_ok[f] else 0 for f in range(P)]
         for a in range(P)]
    z = [[m.new_int_var(0, n - 1, f"z{g}_{f}_{a}") if (f_ok[f] and a_ok[a] and n > 1) else 0
          for a in range(P)] for f in range(P)]
    m.add(sum(v for row in y for v in row) == n)
    for a in range(P):   # A_a: in (hops + start) = out (layers)
        m.add(sum(z[f][a] for f in range(P)) + first[a] == sum(y[a][f] for f in range(P)))
    for f in range(P):   # F_f: in (layers) = out (hops + end)
        m.add(sum(y[a][f] for a in range(P)) == sum(z[f][a] for a in range(P)) + last[f])
    if n > 1 and P > 1:
        _euler_cuts(m, g, n, P, y, z, first, a_ok, f_ok)
    return y, z


def _euler_cuts(m, g, n, P, y, z, first, a_ok, f_ok):
    """Reachability from the run's start for every node the counts use: for every node set S
    and used node v in S, an edge enters S or the start is in S."""
    nodes = [("A", a) for a in range(P) if a_ok[a]] + [("F", f) for f in range(P) if f_ok[f]]
    used = {}
    for kind, i in nodes:
        deg = sum(y[i][f] for f in range(P)) if kind == "A" else sum(y[a][i] for a in range(P))
        if isinstance(deg, int):
            continue
        u = m.new_bool_var(f"used{g}_{kind}{i}")
        m.add(deg <= n * u)
        used[(kind, i)] = u
    nodes = [v for v in nodes if v in used]
    for r in range(1, len(nodes)):
        for S in itertools.combinations(nodes, r):
            sA = {i for k, i in S if k == "A"}
            sF = {i for k, i in S if k == "F"}
            enter = ([y[a][f] for a in range(P) if a not in sA for f in sF]
                     + [z[f][a] for f in range(P) if f not in sF for a in sA]
                     + [first[a] for a in sA])
            const = sum(v for v in enter if isinstance(v, int))
            enter = [v for v in enter if not isinstance(v, int)]
            if const >= 1:
                continue   # the start is in S
            for v in S:
                m.add(sum(enter) >= used[v]) if enter else m.add(used[v] == 0)


def _realize_group(n: int, P: int, vals: dict, first: list[int], last: list[int]):
    """Explicit y, z for given aggregates that form one Euler trail, or None."""
    m = cp_model.CpModel()
    a_ok = [True] * P
    y, z = _trail_vars(m, 0, n, P, a_ok, a_ok, first, last)
    for p in range(P):
        m.add(sum(y[p][f] for f in range(P)) == vals["ua"][p])
        m.add(sum(y[a][p] for a in range(P)) == vals["uf"][p])
        m.add(y[p][p] == vals["yd"][p])
        if not isinstance(z[p][p], int):
            m.add(z[p][p] == vals["zd"][p])
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.max_time_in_seconds = 5.0
    if solver.solve(m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return ([[_value(solver, v) for v in row] for row in y], [[_value(solver, v) for v in row] for row in z])


def _value(solver, v) -> int:
    return int(v) if isinstance(v, int) else int(solver.value(v))


def _euler_layers(costs: OpCosts, realized: list) -> list[tuple[int, int, int]]:
    """Order each group's counted layers into an Euler trail (Hierholzer) -> concrete layer list."""
    P = costs.n_pools
    layers: list[tuple[int, int, int]] = []
    for gi, gc in enumerate(costs.groups):
        y, z, first, _ = realized[gi]
        start = first.index(1)
        # adjacency with counts: A-nodes 0..P-1, F-nodes P..2P-1; prefer staying on the same pool
        adj = {}
        for a in range(P):
            adj[a] = [[P + f, y[a][f]] for f in sorted(range(P), key=lambda f: (f != a, f))]
        for f in range(P):
            adj[P + f] = [[a, z[f][a]] for a in sorted(range(P), key=lambda a: (a != f, a))]
        stack, path = [start], []
        while stack:
            v = stack[-1]
            nxt = next((e for e in adj[v] if e[1] > 0), None)
            if nxt is None:
                path.append(stack.pop())
            else:
                nxt[1] -= 1
                stack.append(nxt[0])
        path.reverse()
        if len(path) != 2 * gc.count or any(e[1] for es in adj.values() for e in es):
            raise RuntimeError(f"placement: group {gi}: counts do not form one trail (internal error)")
        layers += [(gi, path[2 * i], path[2 * i + 1] - P) for i in range(gc.count)]
    return layers


MAX_NOGOODS = 50   # master re-solves for unorderable groups before falling back to the explicit model


def _solve_subset(costs: OpCosts, pins: dict, allowed: list[bool], *, overlap: bool, scale: int,
                  deadline: float, tiebreak: bool) -> dict | None:
    """Min-bottleneck placement on the allowed pools: None if infeasible; raises _Timeout if
    the time ran out before any placement was found."""
    solves = 0

    def run(cp: _Cp, objective, hint=None, until=None):
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
    cp = _Cp(costs, pins, allowed, overlap=overlap, scale=scale)
    solver, status, realized = run(cp, cp.T)
    if status == "GIVE_UP":
        cp = _Cp(costs, pins, allowed, overlap=overlap, scale=scale, form="full")
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
        hint = {v: _value(solver, v) for v in cp.all_vars()}
        cp.m.add(cp.T <= t_scaled)
        budget = max(0.25, time.perf_counter() - t_start)
        s2, _, r2 = run(cp, sum(cp.stage), hint, min(deadline, time.perf_counter() + budget))
        if r2 is not None:
            out.update(solver=s2, realized=r2)
    sol = out["solver"]
    out["emb"] = next(p for p in range(costs.n_pools) if _value(sol, cp.emb[p]))
    out["head"] = next(p for p in range(costs.n_pools) if _value(sol, cp.head[p]))
    out["layers"] = _euler_layers(costs, out["realized"])
    out["solves"] = solves
    return out


class _Timeout(Exception):
    pass


def _gb(x) -> np.ndarray:
    return np.asarray(x, dtype=float) / 1e9


# ----------------------------------------------------------------------------- public


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
    pin_map = _parse_pins(costs, pins)
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
            pin = _pinned(pins, gc.index, op)
            cand = [pin] if pin is not None else list(range(P))
            if all(gc.mem_bytes[op][p] > cap[p] for p in cand):
                detail = ", ".join(f"{names[p]} needs {gc.mem_bytes[op][p] / 1e9:.1f} GB of {cap[p] / 1e9:.1f} GB"
                                   for p in cand)
                return (f"place: memory: one layer's {op} of group g{gc.index} ({gc.label}) fits on no allowed pool "
                        f"({detail} usable per GPU) for {where}")
    # relax memory: how much too small are the pools?
    cp = _Cp(costs, pins, [True] * P, overlap=False, scale=1000, soft_memory=True)
    solver, status = cp.solve(time_limit=10.0, minimize=sum(cp.over))
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) and solver.objective_value > 0:
        over = [_value(solver, o) * MEM_UNIT for o in cp.over]
        worst = [p for p in range(P) if over[p] > 0]
        detail = "; ".join(f"{sum(over) / 1e9 if len(worst) == 1 else over[p] / 1e9:.1f} GB per GPU on "
                           f"{names[p]} ({costs.pools[p].count} x {costs.pools[p].device}: needs "
                           f"{(cap[p] + over[p]) / 1e9:.1f} GB, {cap[p] / 1e9:.1f} GB usable)" for p in worst)
        msg = (f"place: memory: the pools cannot hold {where}: the placement that overfills least still lacks "
               f"{sum(over) / 1e9:.1f} GB in total: {detail}")
        if pins:
            cp2 = _Cp(costs, {}, [True] * P, overlap=False, scale=1000, soft_memory=True)
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
