"""CP-SAT hardware-mix sizing: brute force agreement, rounding bound, infeasibility, scenario files."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest

from dse.errors import DSEError
from dse.solvers import sizing as sz
from dse.solvers.sizing import DemandClass, Deployment, Limits, SizingProblem

EXAMPLE = Path(__file__).resolve().parents[1] / "search_spaces" / "sizing_example.yaml"
DEVICES = ("h100_sxm", "b200_sxm", "mi300x")


def synthetic(seed: int, n_dep: int, *, q: int = 1, limits: Limits | None = None, exact: bool = True,
              objective: str = "cost") -> SizingProblem:
    """Random deployments; with exact=True every figure is a multiple of the solver's units."""
    rng = np.random.default_rng(seed)
    classes = [DemandClass("a", 1024, 256, float(rng.integers(2, 9))),
               DemandClass("b", 4096, 512, float(rng.integers(1, 6)))]
    deps = []
    for i in range(n_dep):
        good = {"a": float(rng.integers(0, 7)) / 2 + 1.0, "b": float(rng.integers(0 if i else 2, 5)) / 2}
        usd = float(rng.integers(100, 2000)) / 100 if exact else float(rng.uniform(1, 20))
        dev = DEVICES[i % len(DEVICES)]
        g = int(rng.choice([1, 2, 4]))
        deps.append(Deployment(name=f"d{i}", config={}, gpus={dev: g}, goodput_rps=good, usd_per_hour=usd,
                               power_w=float(rng.integers(500, 3000)), nameplate_w=float(rng.integers(3000, 5000)),
                               capex_usd=float(rng.integers(10, 100)) * 1000))
    return SizingProblem(classes=classes, deployments=deps, limits=limits or Limits(), share_granularity=q,
                         objective=objective)


def ub(prob: SizingProblem) -> int:
    return max(sum(math.ceil(c.rps / d.goodput_rps[c.name]) for c in prob.classes if d.goodput_rps[c.name] > 0)
               for d in prob.deployments)


CASES = [  # (seed, deployments, share granularity, limits)
    (0, 3, 1, None), (1, 3, 1, Limits(power_kw=14.0)), (2, 3, 1, Limits(budget_usd=200_000)),
    (3, 3, 1, Limits(availability={"h100_sxm": 6})), (4, 2, 2, None), (5, 2, 2, Limits(power_kw=12.0)),
    (6, 2, 3, Limits(budget_usd=150_000)), (7, 3, 1, Limits(power_kw=15, budget_usd=250_000)),
    (8, 2, 2, Limits(availability={"b200_sxm": 4})), (9, 3, 1, Limits(budget_usd_per_hour=40.0)),
]


@pytest.mark.parametrize("seed,n_dep,q,limits", CASES)
def test_matches_brute_force(seed, n_dep, q, limits):
    prob = synthetic(seed, n_dep, q=q, limits=limits)
    bf = sz.brute_force(prob, max_count=ub(prob))
    if bf is None:
        with pytest.raises(DSEError, match="infeasible"):
            sz.solve_sizing(prob)
        return
    r = sz.solve_sizing(prob)
    assert r.status == "OPTIMAL" and r.gap == 0.0
    assert r.usd_per_hour == pytest.approx(bf[0], abs=1e-9)
    # the mix really covers every class and respects the limits (float arithmetic)
    for c in prob.classes:
        assert r.capacity_rps[c.name] >= c.rps - 1e-9
    for key, (used, lim) in r.limits_used.items():
        assert used <= lim + 1e-9, key


def _tight(prob: SizingProblem, n, kind: str) -> Limits:
    """A limit just below what the unconstrained optimum `n` uses."""
    deps = prob.deployments
    if kind == "power":
        return Limits(power_kw=(sum(c * d.nameplate_w for c, d in zip(n, deps)) - 1) / 1e3)
    if kind == "budget":
        return Limits(budget_usd=sum(c * d.capex_usd for c, d in zip(n, deps)) - 1)
    if kind == "availability":
        v = next(iter(deps[int(np.argmax(n))].gpus))
        return Limits(availability={v: sum(c * d.gpus.get(v, 0) for c, d in zip(n, deps)) - 1})
    return Limits(power_kw=(sum(c * d.nameplate_w for c, d in zip(n, deps)) - 1) / 1e3,
                  budget_usd=sum(c * d.capex_usd for c, d in zip(n, deps)) * 1.5)


def test_binding_limits_match_brute_force():
    """Limits that exclude the unconstrained optimum: the solver follows brute force to the next best mix."""
    binding = 0
    for seed in range(20):
        q = 1 + seed % 2
        prob = synthetic(300 + seed, 2 if q > 1 else 3, q=q)
        m = ub(prob)
        free = sz.brute_force(prob, max_count=m)
        kind = ("power", "budget", "availability", "both")[seed % 4]
        tight = dataclasses.replace(prob, limits=_tight(prob, free[1], kind))
        bf = sz.brute_force(tight, max_count=m)
        if bf is None:
            with pytest.raises(DSEError, match="infeasible"):
                sz.solve_sizing(tight)
            continue
        binding += 1
        r = sz.solve_sizing(tight)
        assert r.status == "OPTIMAL"
        assert r.usd_per_hour == pytest.approx(bf[0], abs=1e-9)
        assert r.usd_per_hour >= free[0] - 1e-9
    assert binding >= 8


def test_energy_objective_matches_brute_force():
    prob = synthetic(11, 3, objective="energy", limits=Limits(budget_usd=300_000))
    bf = sz.brute_force(prob, max_count=ub(prob))
    r = sz.solve_sizing(prob)
    assert r.power_kw_measured * 1e3 == pytest.approx(bf[0])


def test_shares_beat_dedicated_replicas():
    """Splitting replicas between classes can only help; here it saves a replica."""
    d = Deployment("x", {}, {"h100_sxm": 8}, {"a": 4.0, "b": 4.0}, 10.0, 5000.0, 6000.0, 300_000.0)
    prob = SizingProblem([DemandClass("a", 1, 1, 2.0), DemandClass("b", 1, 1, 2.0)], [d], share_granularity=2)
    assert sz.solve_sizing(prob).counts == {"x": 1}
    assert sz.solve_sizing(dataclasses.replace(prob, share_granularity=1)).counts == {"x": 2}


def test_cost_rounding_error_bounded(monkeypatch):
    """At a coarse $0.10/hour resolution the solver's choice is within 2 x (sum n) x 0.5 / COST_SCALE."""
    monkeypatch.setattr(sz, "COST_SCALE", 10)
    worst = 0.0
    for seed in range(8):
        prob = synthetic(100 + seed, 3, exact=False)
        bf = sz.brute_force(prob, max_count=ub(prob))
        r = sz.solve_sizing(prob)
        bound = sum(r.counts.values()) * 0.5 / 10
        assert r.rounding_bound == pytest.approx(bound)
        assert r.usd_per_hour - bf[0] <= 2 * max(bound, sum(bf[1]) * 0.5 / 10) + 1e-9
        assert r.usd_per_hour >= bf[0] - 1e-9
        worst = max(worst, r.usd_per_hour - bf[0])
    assert worst >= 0.0


def test_conservative_rounding_of_goodput_and_demand():
    """Goodput just below demand must not be rounded into covering it."""
    d = Deployment("x", {}, {"h100_sxm": 1}, {"a": 1.00004}, 1.0, 100.0, 100.0, 1000.0)
    prob = SizingProblem([DemandClass("a", 1, 1, 2.00009)], [d], share_granularity=1)
    r = sz.solve_sizing(prob)
    assert r.counts == {"x": 3}      # 2 x 1.00004 = 2.00008 < 2.00009


def test_infeasible_power_names_the_need():
    prob = synthetic(1, 3, limits=Limits(power_kw=3.0))
    free = dataclasses.replace(prob, limits=Limits())
    with pytest.raises(DSEError, match=r"binding limit is power: .* needs at least ([0-9.,]+) kW") as exc:
        sz.solve_sizing(prob)
    need = float(re.search(r"at least ([0-9.,]+) kW", str(exc.value)).group(1).replace(",", ""))
    # brute force: least nameplate power of any mix covering the demand
    least = min(sum(c * d.nameplate_w for c, d in zip(n, free.deployments)) for n in _covering(free))
    assert need == pytest.approx(least / 1e3, abs=0.05)


def test_infeasible_budget_names_the_need():
    prob = synthetic(2, 3, limits=Limits(budget_usd=20_000))
    free = dataclasses.replace(prob, limits=Limits())
    with pytest.raises(DSEError, match=r"binding limit is budget: .* at least \$([0-9,]+) of hardware "
                                       r"but budget_usd is \$20,000") as exc:
        sz.solve_sizing(prob)
    need = float(re.search(r"at least \$([0-9,]+)", str(exc.value)).group(1).replace(",", ""))
    least = min(sum(c * d.capex_usd for c, d in zip(n, free.deployments)) for n in _covering(free))
    assert need == pytest.approx(least)


def test_infeasible_two_limits_each_alone():
    prob = synthetic(7, 3, limits=Limits(power_kw=3.0, budget_usd=20_000))
    with pytest.raises(DSEError, match=r"several limits, each on its own: power: .*; budget: "):
        sz.solve_sizing(prob)


def test_unserved_class_is_named():
    prob = synthetic(0, 2)
    for d in prob.deployments:
        d.goodput_rps["b"] = 0.0
    with pytest.raises(DSEError, match=r"class 'b': no candidate deployment meets"):
        sz.solve_sizing(prob)


def _covering(prob: SizingProblem):
    """Every mix (up to the solver's bound) whose replicas can cover the demand."""
    import itertools

    m = ub(prob)
    for n in itertools.product(range(m + 1), repeat=len(prob.deployments)):
        sub = dataclasses.replace(prob, deployments=[dataclasses.replace(d) for d in prob.deployments])
        if sz.brute_force(_fixed(sub, n), max_count=1) is not None:
            yield n


def _fixed(prob: SizingProblem, n) -> SizingProblem:
    """The same problem where deployment i comes as one block of n_i replicas (for brute force)."""
    deps = []
    for d, c in zip(prob.deployments, n):
        if c:
            deps.append(dataclasses.replace(d, goodput_rps={k: v * c for k, v in d.goodput_rps.items()},
                                            usd_per_hour=d.usd_per_hour * c))
    return dataclasses.replace(prob, deployments=deps, share_granularity=prob.share_granularity * max(max(n), 1))


# ----------------------------------------------------------------------------- engine + files


@pytest.fixture(scope="module")
def example():
    scn = sz.load_sizing(EXAMPLE)
    return scn, sz.build_problem(scn)


def test_example_six_devices_four_classes(example):
    _, prob = example
    assert len({v for d in prob.deployments for v in d.gpus}) == 6
    assert len(prob.classes) == 4
    r = sz.solve_sizing(prob)
    assert r.status == "OPTIMAL"
    for c in prob.classes:
        assert r.capacity_rps[c.name] >= c.rps
        assert r.headroom[c.name] >= 0
    for key, (used, lim) in r.limits_used.items():
        assert used <= lim + 1e-9, key
    # goodput is the engine's: every chosen deployment meets the SLO of the classes it serves
    by = {d.name: d for d in prob.deployments}
    for (name, cls), share in r.shares.items():
        assert by[name].goodput_rps[cls] > 0 and share > 0


def test_power_oversubscription_counts(example):
    _, prob = example
    r = sz.solve_sizing(prob)
    o = sz.power_oversubscription(prob, r)
    assert o["mix_kw_measured"] <= o["mix_kw_nameplate"]
    assert o["mix_servers_fit_measured"] >= o["mix_servers_fit_nameplate"]
    assert o["more_servers"] == o["mix_servers_fit_measured"] - o["mix_servers_fit_nameplate"]
    for row in o["per_device"].values():
        assert row["servers_nameplate"] == math.floor(o["power_limit_kw"] / row["node_kw_nameplate"] + 1e-9)


def test_yaml_errors_name_file_and_key(tmp_path):
    good = EXAMPLE.read_text()
    cases = {
        "limits:\n  power_kw: 400": ("limits:\n  power_kw: -4", r"limits.power_kw: expected a positive number"),
        "objective: cost ": ("objective: speed ", r"objective: expected one of cost, energy"),
        "  - {name: chat, ": ("  - {name: chat, foo: 1, ", r"classes\[0\].foo: unknown key"),
        "devices: [h100_sxm,": ("devices: [h999,", r"candidates.devices\[0\]: unknown device 'h999'; known: a100_pcie, a100_sxm"),
        "    b200_sxm: 32": ("    b200_sxm: 3.5", r"limits.availability.b200_sxm: expected an integer"),
    }
    for old, (new, pattern) in cases.items():
        assert old in good, old
        f = tmp_path / "s.yaml"
        f.write_text(good.replace(old, new, 1))
        with pytest.raises(DSEError, match=re.escape(str(f)) + ": " + pattern):
            sz.load_sizing(f)
    f = tmp_path / "t.yaml"
    f.write_text("model: x\nclasses: []\ncandidates: {devices: [h100_sxm]}\n")
    with pytest.raises(DSEError, match="classes: expected a non-empty list"):
        sz.load_sizing(f)


def test_cli_size(capsys):
    import argparse

    from dse.cli import cpsat as cli_cpsat

    p = argparse.ArgumentParser(prog="dse")
    cli_cpsat.add_parsers(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(["size", str(EXAMPLE), "--power-oversubscription"])
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "status: OPTIMAL (proved, gap 0" in out
    assert "headroom" in out and "limits: power_kw" in out
    assert re.search(r"power oversubscription under 400 kW: .* servers of this mix that fit: \d+ by nameplate, "
                     r"\d+ by measured power: \+\d+ servers", out)
    assert "re-solved with measured power" in out


def test_engine_slo_nobody_meets_is_explained(tmp_path):
    f = tmp_path / "slo.yaml"
    f.write_text("model: Qwen/Qwen3-8B\nclasses:\n  - {name: fast, isl: 1024, osl: 128, rps: 1, tpot_ms: 0.5}\n"
                 "candidates: {devices: [h100_sxm], tp: [1, 2], batch_sizes: [1, 8]}\n")
    with pytest.raises(DSEError, match=r"class 'fast': no candidate meets ttft <= inf ms and tpot <= 0.5 ms "
                                       r"\(best tpot [0-9.]+ ms on h100_sxm tp2 at batch 1"):
        sz.build_problem(sz.load_sizing(f))
