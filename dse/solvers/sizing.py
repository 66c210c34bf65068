"""Hardware-mix sizing with OR-Tools CP-SAT: how many of each deployment to provision.

A deployment is one replica of one configuration (device x parallelism x mode, any
`evaluate` columns). For every demand class (ISL/OSL, requests/s, TTFT and TPOT limits)
the engine gives each deployment's goodput: the most requests/s it serves with every
request inside the class's SLO (best batch size). The solver picks integer replica
counts n_d and splits each deployment's capacity over the classes:

    n_d in Z>=0                      replicas of deployment d
    A_dk in Z>=0, sum_k A_dk <= Q n_d   capacity of d given to class k, in 1/Q replica
    sum_d A_dk g_dk >= Q rps_k       every class's demand is covered
    sum_d n_d P_d <= power_kw        IT power, nameplate (GPU TDP + host share) by default;
                                     phase-aware (measured) with power_basis="measured"
    sum_d n_d P_d x PUE <= facility_power_kw
    racks: per device type, nodes x node power packed into racks of rack_power_kw
    sum_d n_d capex_d <= budget_usd, sum_d n_d usd_d <= budget_usd_per_hour
    sum_{d on device v} n_d gpus_dv <= availability_v
    minimise sum_d n_d usd_per_hour_d (objective "cost") or sum_d n_d power_w_d ("energy")

A replica given to several classes time-shares (or, equivalently, a fraction of a
deployment's replicas is dedicated to each class): with share_granularity Q = 1 every
replica serves one class only.

Integer scaling (explicit, conservative): goodput is rounded down and demand up to
1/GOODPUT_SCALE req/s, power up to 1 W, capex up to $1, $/hour up to 1/COST_SCALE and
the limits down, so every solution the solver accepts is feasible in float arithmetic.
The objective's coefficients are rounded to nearest: |scaled cost - float cost| <=
(sum_d n_d) x 0.5 / COST_SCALE for any mix (`SizingResult.rounding_bound`).

Infeasible inputs are explained, not reported as a status: a class no candidate serves
inside its SLO is named with the best TTFT/TPOT on offer; otherwise the limit families
(power, facility power, racks, budget, hourly budget, availability) are dropped one at a
time and then all together, and for each family that binds the solver finds the least
amount of it the demand needs under the remaining limits ("demand needs at least $X of
hardware but the budget is $Y").
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time

from ortools.sat.python import cp_model

from dse.catalog.devices import get_device
from dse.catalog.facility import get_facility
from dse.catalog.systems import get_system
from dse.errors import DSEError
from dse.solvers import time_limit_problem
from dse.solvers.sizing_problem import (OBJECTIVES, DemandClass, Deployment, Limits, SizingProblem, build_problem,
                                        load_sizing)

__all__ = ["GOODPUT_SCALE", "COST_SCALE", "OBJECTIVES", "LIMIT_FAMILIES", "DemandClass", "Limits", "Deployment",
           "SizingProblem", "SizingResult", "solve_sizing", "explain_infeasible", "power_oversubscription",
           "brute_force", "load_sizing", "build_problem"]

GOODPUT_SCALE = 10_000     # integer goodput / demand units per req/s
COST_SCALE = 10_000        # integer cost units per $/hour
LIMIT_FAMILIES = ("power", "facility_power", "racks", "budget", "budget_per_hour", "availability")


@dataclasses.dataclass
class SizingResult:
    status: str                 # OPTIMAL or FEASIBLE
    objective: str
    counts: dict                # deployment name -> replicas (n > 0 only)
    shares: dict                # (deployment, class) -> replicas' worth of capacity
    usd_per_hour: float
    power_kw_nameplate: float
    power_kw_measured: float
    capex_usd: float
    gpus: dict                  # device -> GPUs
    capacity_rps: dict          # class -> req/s of the capacity assigned to it
    headroom: dict              # class -> (assigned + all unassigned capacity) / demand - 1
    limits_used: dict           # limit -> (used, limit)
    objective_value: float
    bound: float
    gap: float
    rounding_bound: float
    solve_s: float
    power_basis: str

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shares"] = {f"{k[0]} -> {k[1]}": v for k, v in self.shares.items()}
        return d


# ----------------------------------------------------------------------------- model


def _pos(x: float) -> float:
    return max(float(x), 0.0)


def _power(dep: Deployment, basis: str) -> float:
    return dep.nameplate_w if basis == "nameplate" else dep.power_w


def _rack_capacity(device: str, rack_kw: float) -> tuple[int, int]:
    """(GPUs per node, nodes per rack position) for a device's system under a rack power limit."""
    dev = get_device(device)
    sysm = get_system(dev.system)
    node_kw = (sysm.gpus_per_node * dev.tdp_w + sysm.host_power_w) / 1e3
    if sysm.rack_power_kw is not None:     # a fixed rack (NVL72, CloudMatrix): all or nothing
        per_rack = sysm.scaleup_domain // sysm.gpus_per_node if sysm.rack_power_kw <= rack_kw else 0
    else:
        per_rack = math.floor(rack_kw / node_kw + 1e-9)
    return sysm.gpus_per_node, per_rack


class _Model:
    def __init__(self, prob: SizingProblem, *, drop: tuple[str, ...] = (), minimize: str | None = None):
        """minimize: None (the problem's objective) or a limit family whose use to minimise."""
        self.prob = prob
        deps, classes, lim = prob.deployments, prob.classes, prob.limits
        Q = int(prob.share_granularity)
        m = cp_model.CpModel()
        self.m = m
        basis = prob.power_basis
        fac = get_facility()
        self.fac = fac
        # integer data (conservative roundings)
        G = [[math.floor(_pos(d.goodput_rps.get(c.name, 0.0)) * GOODPUT_SCALE) for c in classes] for d in deps]
        R = [math.ceil(c.rps * GOODPUT_SCALE) for c in classes]
        PW = [math.ceil(_power(d, basis)) for d in deps]
        CAP = [math.ceil(d.capex_usd) for d in deps]
        UH = [math.ceil(d.usd_per_hour * COST_SCALE) for d in deps]
        self.data = {"G": G, "R": R, "PW": PW, "CAP": CAP, "UH": UH}
        # upper bounds: replicas beyond serving all demand alone never pay
        ub = []
        for i, d in enumerate(deps):
            need = sum(math.ceil(R[k] / G[i][k]) for k in range(len(classes)) if G[i][k] > 0 and R[k] > 0)
            ub.append(max(need, 0) if any(G[i]) else 0)
        self.n = [m.new_int_var(0, ub[i], f"n{i}") for i in range(len(deps))]
        self.A = {}
        for i in range(len(deps)):
            row = []
            for k in range(len(classes)):
                if G[i][k] > 0:
                    a = m.new_int_var(0, Q * ub[i], f"a{i}_{k}")
                    self.A[(i, k)] = a
                    row.append(a)
            if row:
                m.add(sum(row) <= Q * self.n[i])
        for k in range(len(classes)):
            terms = [self.A[(i, k)] * G[i][k] for i in range(len(deps)) if (i, k) in self.A]
            if R[k] > 0:
                m.add(sum(terms) >= Q * R[k]) if terms else m.add_bool_or([])   # empty: infeasible
        # limit families: (expression, bound) each
        self.family: dict[str, list] = {}
        n = self.n
        if lim.power_kw is not None:
            self.family["power"] = [(sum(PW[i] * n[i] for i in range(len(deps))), math.floor(lim.power_kw * 1e3))]
        if lim.facility_power_kw is not None:
            # PUE applied as a rational: PW x pue_num <= limit x pue_den
            num = math.ceil(fac.pue * 1000 - 1e-9)   # PUE as num/1000, rounded up (conservative)
            self.family["facility_power"] = [(sum(PW[i] * n[i] * num for i in range(len(deps))),
                                              math.floor(lim.facility_power_kw * 1e3 * 1000))]
        self.rack_vars, unrackable = [], []
        if lim.racks is not None:
            for v in sorted({v for d in deps for v in d.gpus}):
                gpn, per_rack = _rack_capacity(v, fac.rack_power_kw)
                gpus_v = sum(d.gpus.get(v, 0) * n[i] for i, d in enumerate(deps))
                if per_rack == 0:      # one node (or the fixed rack) draws more than a rack position allows
                    unrackable.append(gpus_v)
                    continue
                nodes = m.new_int_var(0, 10**6, f"nodes_{v}")
                racks = m.new_int_var(0, 10**6, f"racks_{v}")
                m.add(nodes * gpn >= gpus_v)
                m.add(racks * per_rack >= nodes)
                self.rack_vars.append(racks)
            self.family["racks"] = [(sum(self.rack_vars), int(lim.racks))]
            if "racks" not in drop:
                for e in unrackable:
                    m.add(e == 0)
        if lim.budget_usd is not None:
            self.family["budget"] = [(sum(CAP[i] * n[i] for i in range(len(deps))), math.floor(lim.budget_usd))]
        if lim.budget_usd_per_hour is not None:
            self.family["budget_per_hour"] = [(sum(UH[i] * n[i] for i in range(len(deps))),
                                               math.floor(lim.budget_usd_per_hour * COST_SCALE))]
        if lim.availability:
            self.family["availability"] = [
                (sum(d.gpus.get(v, 0) * n[i] for i, d in enumerate(deps)), int(cap))
                for v, cap in sorted(lim.availability.items())]
        for fam, rows in self.family.items():
            if fam in drop or fam == minimize:
                continue
            for expr, bound in rows:
                if not isinstance(expr, int):
                    m.add(expr <= bound)
                elif expr > bound:
                    m.add_bool_or([])
        if minimize is None:
            if prob.objective == "cost":
                self.obj_coef = [round(d.usd_per_hour * COST_SCALE) for d in deps]
            else:
                self.obj_coef = [round(d.power_w) for d in deps]
            self.objective = sum(self.obj_coef[i] * n[i] for i in range(len(deps)))
        elif minimize == "availability":
            # least total GPUs above the caps
            over = []
            for expr, bound in self.family["availability"]:
                o = m.new_int_var(0, 10**9, "")
                m.add(expr <= bound + o)
                over.append(o)
            self.objective = sum(over)
        else:
            self.objective = sum(expr for expr, _ in self.family[minimize])
        m.minimize(self.objective)

    def solve(self, time_limit: float):
        s = cp_model.CpSolver()
        s.parameters.num_workers = 1
        s.parameters.random_seed = 0
        s.parameters.max_time_in_seconds = max(time_limit, 0.01)
        st = s.solve(self.m)
        return s, st


# ----------------------------------------------------------------------------- solve


def solve_sizing(prob: SizingProblem, *, time_limit: float = 10.0) -> SizingResult:
    """Cheapest (or least-power) integer mix covering every class's demand within the limits."""
    if prob.objective not in OBJECTIVES:
        raise DSEError(f"size: objective: unknown objective {prob.objective!r}; allowed: {', '.join(OBJECTIVES)}")
    if prob.power_basis not in ("nameplate", "measured"):
        raise DSEError(f"size: power_basis must be nameplate or measured, got {prob.power_basis!r}")
    if int(prob.share_granularity) < 1:
        raise DSEError("size: share_granularity must be an integer >= 1")
    if time_limit_problem(time_limit):
        raise DSEError(f"size: --time-limit: {time_limit_problem(time_limit)}")
    _check_served(prob)
    t0 = time.perf_counter()
    mod = _Model(prob)
    s, st = mod.solve(time_limit)
    if st == cp_model.MODEL_INVALID:
        raise RuntimeError(f"sizing: CP-SAT model invalid: {mod.m.validate()}")
    if st == cp_model.INFEASIBLE:
        raise DSEError(explain_infeasible(prob, time_limit=time_limit))
    if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise DSEError(f"size: no mix found within the time limit ({time_limit:g} s); raise --time-limit")
    return _result(prob, mod, s, st, time.perf_counter() - t0)


def _result(prob: SizingProblem, mod: _Model, s, st, solve_s: float) -> SizingResult:
    deps, classes = prob.deployments, prob.classes
    n = [int(s.value(v)) for v in mod.n]
    Q = int(prob.share_granularity)
    shares = {(deps[i].name, classes[k].name): s.value(a) / Q for (i, k), a in mod.A.items() if s.value(a)}
    cap = {c.name: sum(s.value(mod.A[(i, k)]) / Q * deps[i].goodput_rps.get(c.name, 0.0)
                       for i in range(len(deps)) if (i, k) in mod.A) for k, c in enumerate(classes)}
    # replicas' worth of capacity not given to any class (the share grid rounds up)
    spare = [n[i] - sum(s.value(a) for (j, _), a in mod.A.items() if j == i) / Q for i in range(len(deps))]
    gpus: dict[str, int] = {}
    for i, d in enumerate(deps):
        for v, g in d.gpus.items():
            if n[i]:
                gpus[v] = gpus.get(v, 0) + g * n[i]
    usd = sum(n[i] * d.usd_per_hour for i, d in enumerate(deps))
    p_nom = sum(n[i] * d.nameplate_w for i, d in enumerate(deps)) / 1e3
    p_meas = sum(n[i] * d.power_w for i, d in enumerate(deps)) / 1e3
    capex = sum(n[i] * d.capex_usd for i, d in enumerate(deps))
    lim = prob.limits
    used: dict[str, tuple] = {}
    p_basis = p_nom if prob.power_basis == "nameplate" else p_meas
    if lim.power_kw is not None:
        used["power_kw"] = (p_basis, lim.power_kw)
    if lim.facility_power_kw is not None:
        used["facility_power_kw"] = (p_basis * mod.fac.pue, lim.facility_power_kw)
    if lim.racks is not None:
        need = 0
        for v, g in gpus.items():
            gpn, per_rack = _rack_capacity(v, mod.fac.rack_power_kw)
            need += math.ceil(math.ceil(g / gpn) / per_rack) if per_rack else 0
        used["racks"] = (need, lim.racks)
    if lim.budget_usd is not None:
        used["budget_usd"] = (capex, lim.budget_usd)
    if lim.budget_usd_per_hour is not None:
        used["budget_usd_per_hour"] = (usd, lim.budget_usd_per_hour)
    for v, c in sorted(lim.availability.items()):
        used[f"availability.{v}"] = (gpus.get(v, 0), c)
    value = float(s.objective_value)
    bound = float(s.best_objective_bound)
    scale = COST_SCALE if prob.objective == "cost" else 1.0
    obj_float = usd if prob.objective == "cost" else p_meas * 1e3
    return SizingResult(
        status="OPTIMAL" if st == cp_model.OPTIMAL else "FEASIBLE", objective=prob.objective,
        counts={deps[i].name: n[i] for i in range(len(deps)) if n[i]}, shares=shares, usd_per_hour=usd,
        power_kw_nameplate=p_nom, power_kw_measured=p_meas, capex_usd=capex, gpus=gpus, capacity_rps=cap,
        headroom={c.name: (cap[c.name] + sum(spare[i] * d.goodput_rps.get(c.name, 0.0) for i, d in enumerate(deps)))
                  / c.rps - 1.0 if c.rps > 0 else math.inf for c in classes},
        limits_used=used, objective_value=obj_float, bound=bound / scale,
        gap=0.0 if st == cp_model.OPTIMAL else (value - bound) / max(value, 1e-30),
        rounding_bound=sum(n) * 0.5 / scale, solve_s=solve_s, power_basis=prob.power_basis)


def _check_served(prob: SizingProblem) -> None:
    for c in prob.classes:
        if c.rps < 0:
            raise DSEError(f"size: class {c.name!r}: rps must be >= 0")
        if c.rps > 0 and not any(d.goodput_rps.get(c.name, 0.0) > 0 for d in prob.deployments):
            raise DSEError(f"size: class {c.name!r}: no candidate deployment meets ttft <= {c.ttft_ms:g} ms and "
                           f"tpot <= {c.tpot_ms:g} ms at isl {c.isl}, osl {c.osl}")


FAMILY_TEXT = {   # family -> (limit key, what is counted, integer units -> reported units)
    "power": ("power_kw", "IT power", 1e-3),
    "facility_power": ("facility_power_kw", "facility power", 1e-6),
    "racks": ("racks", "rack positions", 1.0),
    "budget": ("budget_usd", "hardware", 1.0),
    "budget_per_hour": ("budget_usd_per_hour", "running cost", 1.0 / COST_SCALE),
    "availability": ("availability", "GPUs beyond the availability caps", 1.0),
}


def explain_infeasible(prob: SizingProblem, *, time_limit: float = 10.0) -> str:
    """Name the limit(s) that make the demand unservable, with the least amount the demand needs."""
    fams = [f for f in LIMIT_FAMILIES if f in _Model(prob).family]
    demand = ", ".join(f"{c.name} {c.rps:g} req/s" for c in prob.classes)

    def feasible(drop):
        _, st = _Model(prob, drop=tuple(drop)).solve(time_limit)
        return st in (cp_model.OPTIMAL, cp_model.FEASIBLE)

    def least(fam, drop=()):
        """Least use of `fam` the demand needs with the other families (minus `drop`) kept."""
        mod = _Model(prob, drop=tuple(drop), minimize=fam)
        s, st = mod.solve(time_limit)
        if st not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        return s.objective_value

    lim = prob.limits
    limit_of = {"power": lim.power_kw, "facility_power": lim.facility_power_kw, "racks": lim.racks,
                "budget": lim.budget_usd, "budget_per_hour": lim.budget_usd_per_hour, "availability": 0}

    def amount(fam, x):
        if fam in ("budget", "budget_per_hour"):
            return f"${x:,.0f}" if fam == "budget" else f"${x:,.2f}/hour"
        if fam in ("power", "facility_power"):
            return f"{x:,.1f} kW"
        return f"{x:,.0f}"

    def phrase(fam, need):
        key, unit, mult = FAMILY_TEXT[fam]
        if fam == "availability":
            caps = ", ".join(f"{v} {c}" for v, c in sorted(lim.availability.items()))
            return f"{need:,.0f} more GPUs than the availability caps allow ({caps})"
        if fam == "racks":
            return (f"at least {need:,.0f} rack positions of {get_facility().rack_power_kw:g} kW but racks is "
                    f"{limit_of[fam]}")
        basis = f" ({prob.power_basis})" if fam in ("power", "facility_power") else ""
        return f"at least {amount(fam, need * mult)} of {unit}{basis} but {key} is {amount(fam, limit_of[fam])}"

    def violates(fam, need):
        _, _, mult = FAMILY_TEXT[fam]
        return need is not None and need * mult > limit_of[fam] + 1e-9

    single = [f for f in fams if feasible([f])]
    if single:
        parts = [f"{f}: demand ({demand}) needs " + phrase(f, least(f)) for f in single]
        return ("size: infeasible; " + ("lifting any one of these limits is enough: "
                                        if len(single) > 1 else "the binding limit is ") + "; ".join(parts))
    if fams and feasible(fams):
        needs = {f: least(f, drop=[g for g in fams if g != f]) for f in fams}
        alone = [f for f in fams if violates(f, needs[f])]
        if alone:
            return (f"size: infeasible; demand ({demand}) is ruled out by several limits, each on its own: "
                    + "; ".join(f"{f}: needs {phrase(f, needs[f])}" for f in alone))
        return (f"size: infeasible; the limits {', '.join(fams)} bind only in combination (each alone can be "
                f"met: " + "; ".join(f"{f} needs {phrase(f, needs[f])}" for f in fams if needs[f] is not None) + ")")
    return f"size: infeasible: the candidates cannot serve demand {demand} even without limits"


# ----------------------------------------------------------------------------- brute force / oversubscription


def power_oversubscription(prob: SizingProblem, result: SizingResult, *, time_limit: float = 10.0) -> dict:
    """How many more servers fit under the same power limit with measured (phase-aware) power
    instead of nameplate TDP, for the chosen mix, and the re-solved mix under measured power."""
    if prob.limits.power_kw is None:
        raise DSEError("size: --power-oversubscription needs limits.power_kw in the scenario")
    limit = prob.limits.power_kw
    per_device = {}
    by_name = {d.name: d for d in prob.deployments}
    for v in sorted(result.gpus):
        dev = get_device(v)
        sysm = get_system(dev.system)
        nom_node = (sysm.gpus_per_node * dev.tdp_w + sysm.host_power_w) / 1e3
        # measured per-GPU power of this device in the mix (weighted by replicas)
        w = g = 0.0
        for name, cnt in result.counts.items():
            d = by_name[name]
            if v in d.gpus:
                share = d.gpus[v] / d.num_gpus
                w += cnt * d.power_w * share
                g += cnt * d.gpus[v]
        meas_node = (w / g) * sysm.gpus_per_node / 1e3 if g else nom_node
        per_device[v] = {"node_kw_nameplate": nom_node, "node_kw_measured": meas_node,
                         "servers_nameplate": math.floor(limit / nom_node + 1e-9),
                         "servers_measured": math.floor(limit / meas_node + 1e-9)}
        per_device[v]["more_servers"] = per_device[v]["servers_measured"] - per_device[v]["servers_nameplate"]
    servers = sum(math.ceil(result.gpus[v] / get_system(get_device(v).system).gpus_per_node) for v in result.gpus)
    ratio = result.power_kw_nameplate / max(result.power_kw_measured, 1e-12)
    fit_nom = math.floor(servers * limit / max(result.power_kw_nameplate, 1e-12) + 1e-9)
    fit_meas = math.floor(servers * limit / max(result.power_kw_measured, 1e-12) + 1e-9)
    measured = dataclasses.replace(prob, power_basis="measured")
    try:
        alt = solve_sizing(measured, time_limit=time_limit)
    except DSEError as exc:
        alt = str(exc)
    return {"power_limit_kw": limit, "mix_servers": servers, "mix_kw_nameplate": result.power_kw_nameplate,
            "mix_kw_measured": result.power_kw_measured, "nameplate_over_measured": ratio,
            "mix_servers_fit_nameplate": fit_nom, "mix_servers_fit_measured": fit_meas,
            "more_servers": fit_meas - fit_nom, "per_device": per_device, "resolved_measured": alt}


def brute_force(prob: SizingProblem, max_count: int) -> tuple[float, tuple[int, ...]] | None:
    """Every mix with up to max_count replicas per deployment; shares enumerated on the 1/Q grid.
    Float arithmetic, for checking the solver on small instances (rack limits not modelled)."""
    deps, classes, lim = prob.deployments, prob.classes, prob.limits
    Q = int(prob.share_granularity)
    K = len(classes)
    best = None
    fac = get_facility()
    for n in itertools.product(range(max_count + 1), repeat=len(deps)):
        usd = sum(c * d.usd_per_hour for c, d in zip(n, deps))
        pw = sum(c * _power(d, prob.power_basis) for c, d in zip(n, deps))
        cost = usd if prob.objective == "cost" else sum(c * d.power_w for c, d in zip(n, deps))
        if best is not None and cost >= best[0]:
            continue
        if lim.power_kw is not None and pw > lim.power_kw * 1e3:
            continue
        if lim.facility_power_kw is not None and pw * fac.pue > lim.facility_power_kw * 1e3:
            continue
        if lim.budget_usd is not None and sum(c * d.capex_usd for c, d in zip(n, deps)) > lim.budget_usd:
            continue
        if lim.budget_usd_per_hour is not None and usd > lim.budget_usd_per_hour:
            continue
        if any(sum(c * d.gpus.get(v, 0) for c, d in zip(n, deps)) > cap for v, cap in lim.availability.items()):
            continue
        # shares: each deployment splits Q*n units over the classes (all units used, wlog)
        per_dep = []
        for c, d in zip(n, deps):
            units = Q * c
            per_dep.append([s for s in itertools.product(range(units + 1), repeat=K - 1) if sum(s) <= units]
                           if K > 1 else [()])
        ok = False
        for combo in itertools.product(*per_dep):
            served = [0.0] * K
            for (c, d, s) in zip(n, deps, combo):
                split = list(s) + [Q * c - sum(s)]
                for k, cl in enumerate(classes):
                    served[k] += split[k] / Q * d.goodput_rps.get(cl.name, 0.0)
            if all(served[k] >= cl.rps - 1e-12 for k, cl in enumerate(classes)):
                ok = True
                break
        if ok:
            best = (cost, n)
    return best
