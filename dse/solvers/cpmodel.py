"""The CP-SAT model of the op placement (see dse.solvers.placement for the problem).

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
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from ortools.sat.python import cp_model

from dse.deploy.opcost import OpCosts
from dse.errors import DSEError

__all__ = ["SCALE", "MEM_UNIT", "OP_NAMES", "PlacementModel", "parse_pins", "pinned", "realize_group", "value",
           "euler_layers", "new_solver", "rounding_bound_ms"]

SCALE = 1_000_000      # integer time units per ms
MEM_UNIT = 1_000.0     # bytes per integer memory unit
OP_NAMES = ("attn", "ffn", "moe", "embed", "lm_head")


def new_solver(time_limit: float) -> cp_model.CpSolver:
    """A deterministic single-worker solver (same model, same answer)."""
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.max_time_in_seconds = max(time_limit, 0.01)
    return solver


def rounding_bound_ms(costs: OpCosts, scale: int = SCALE) -> float:
    """Bound on |integer-scaled stage - float stage| for any placement (4L+3 rounded terms)."""
    n_layers = sum(g.count for g in costs.groups)
    return (4 * n_layers + 3) * 0.5 / scale


def parse_pins(costs: OpCosts, pins: dict[str, str] | None) -> dict[tuple[int | None, str], int]:
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


def pinned(pins: dict, g: int | None, op: str) -> int | None:
    if (g, op) in pins:
        return pins[(g, op)]
    return pins.get((None, op))


class PlacementModel:
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
        self.allowed = allowed
        self.P = costs.n_pools
        self.m = cp_model.CpModel()
        P = self.P
        comp = [[] for _ in range(P)]      # (coef, var) terms of compute per pool
        memt = [[] for _ in range(P)]
        hin = [[] for _ in range(P)]       # expressions counting hops into / out of each pool
        hout = [[] for _ in range(P)]
        # built in this order (variables and constraints alike): the solver's path depends on it
        self._embed_head(comp, memt)
        self._layer_groups(comp, memt, hin, hout)
        self._run_hops(hin, hout)
        self._stages(comp, hin, hout)
        self._memory(memt, soft_memory)

    def _t(self, x) -> int:
        """Time in integer units of 1/scale ms, rounded to nearest."""
        return round(float(x) * self.scale)

    @staticmethod
    def _kb(x) -> int:
        """Memory in integer MEM_UNITs, rounded up."""
        return math.ceil(float(x) / MEM_UNIT)

    def ok(self, g: int | None, op: str) -> list[bool]:
        """Pools op `op` of group `g` may go to: allowed and not pinned elsewhere."""
        pin = pinned(self.pins, g, op)
        return [self.allowed[p] and (pin is None or pin == p) for p in range(self.P)]

    def _embed_head(self, comp, memt) -> None:
        """One-hot embedding and head pools; a tied table on one pool is held once."""
        m, P, costs = self.m, self.P, self.costs
        e_ok, h_ok = self.ok(None, "embed"), self.ok(None, "lm_head")
        self.emb = [m.new_bool_var(f"emb{p}") if e_ok[p] else 0 for p in range(P)]
        self.head = [m.new_bool_var(f"head{p}") if h_ok[p] else 0 for p in range(P)]
        m.add(sum(self.emb) == 1)
        m.add(sum(self.head) == 1)
        for p in range(P):
            comp[p] += [(self._t(costs.embed_time_ms[p]), self.emb[p]), (self._t(costs.head_time_ms[p]), self.head[p])]
            memt[p] += [(self._kb(costs.embed_mem_bytes[p]), self.emb[p]),
                        (self._kb(costs.head_mem_bytes[p]), self.head[p])]
            if costs.tied_embeddings and e_ok[p] and h_ok[p]:
                both = m.new_bool_var(f"both{p}")
                m.add_implication(both, self.emb[p])
                m.add_implication(both, self.head[p])
                memt[p].append((-self._kb(costs.embed_mem_bytes[p]), both))

    def _layer_groups(self, comp, memt, hin, hout) -> None:
        """Per layer group: its run's first / last pool and its counts (aggregated or explicit)."""
        m, P = self.m, self.P
        self.first, self.last, self.groups = [], [], []
        for gc in self.costs.groups:
            g, n = gc.index, gc.count
            o1, o2 = gc.ops
            a_ok, f_ok = self.ok(g, o1), self.ok(g, o2)
            first = [m.new_bool_var(f"first{g}_{a}") if a_ok[a] else 0 for a in range(P)]
            last = [m.new_bool_var(f"last{g}_{f}") if f_ok[f] else 0 for f in range(P)]
            m.add(sum(first) == 1)
            m.add(sum(last) == 1)
            if self.form == "agg":
                ua, uf = self._agg_group(g, n, a_ok, f_ok, first, last, hin, hout)
            else:
                ua, uf = self._full_group(g, n, a_ok, f_ok, first, last, hin, hout)
            for p in range(P):
                if not isinstance(ua[p], int):
                    comp[p].append((self._t(gc.time_ms[o1][p]), ua[p]))
                    memt[p].append((self._kb(gc.mem_bytes[o1][p]), ua[p]))
                if not isinstance(uf[p], int):
                    comp[p].append((self._t(gc.time_ms[o2][p]), uf[p]))
                    memt[p].append((self._kb(gc.mem_bytes[o2][p]), uf[p]))
            self.first.append(first)
            self.last.append(last)

    def _run_hops(self, hin, hout) -> None:
        """Hops between runs: embed -> group 0 -> group 1 ... -> head (one-hot products)."""
        m, P = self.m, self.P
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

    def _stages(self, comp, hin, hout) -> None:
        """Stage time per pool (compute, plus its hops unless they overlap) <= the bottleneck T."""
        m, P, costs = self.m, self.P, self.costs
        hop = [self._t(costs.hop_ms[p]) for p in range(P)]
        self.hops_in = [sum(h) if h else 0 for h in hin]
        self.hops_out = [sum(h) if h else 0 for h in hout]
        self.stage = []
        for p in range(P):
            expr = sum(c * v for c, v in comp[p] if not isinstance(v, int))
            if not self.overlap:
                expr = expr + hop[p] * (self.hops_in[p] + self.hops_out[p])
            self.stage.append(expr)
        n_layers = sum(gc.count for gc in costs.groups)
        horizon = (sum(gc.count * sum(self._t(np.max(gc.time_ms[o])) for o in gc.ops) for gc in costs.groups)
                   + self._t(np.max(costs.head_time_ms)) + self._t(np.max(costs.embed_time_ms))
                   + 2 * (2 * n_layers + 1) * self._t(np.max(costs.hop_ms)) + 1)
        self.T = m.new_int_var(0, horizon, "bottleneck")
        for p in range(P):
            m.add(self.stage[p] <= self.T)
        if self.overlap:
            for p in range(P):
                for h in (self.hops_in[p], self.hops_out[p]):
                    if not isinstance(h, int):
                        m.add(hop[p] * h <= self.T)

    def _memory(self, memt, soft_memory: bool) -> None:
        """Per-GPU memory (kB, terms rounded up, capacity down); soft: overfill variables."""
        m, P = self.m, self.P
        self.over = []
        for p in range(P):
            cap = math.floor(max(float(self.costs.capacity_bytes[p]), 0.0) / MEM_UNIT)
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
        solver = new_solver(time_limit)
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
            first = [value(solver, v) for v in fi]
            last = [value(solver, v) for v in la]
            if self.form == "full":
                out.append(([[value(solver, v) for v in row] for row in grp["y"]],
                            [[value(solver, v) for v in row] for row in grp["z"]], first, last))
                continue
            vals = {k: [value(solver, v) for v in vec] for k, vec in grp.items()}
            yz = realize_group(self.costs.groups[gi].count, P, vals, first, last)
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
            self.m.add(v != value(solver, v)).only_enforce_if(d)
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


def realize_group(n: int, P: int, vals: dict, first: list[int], last: list[int]):
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
    solver = new_solver(5.0)
    if solver.solve(m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return ([[value(solver, v) for v in row] for row in y], [[value(solver, v) for v in row] for row in z])


def value(solver, v) -> int:
    return int(v) if isinstance(v, int) else int(solver.value(v))


def euler_layers(costs: OpCosts, realized: list) -> list[tuple[int, int, int]]:
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
