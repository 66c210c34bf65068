"""CP-SAT placement: brute force agreement, rounding bound, pins, infeasibility, engine costs."""
from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np
import pytest

from dse.catalog.models import LayerGroup, get_model
from dse.errors import DSEError
from dse.model import memory, ops
from dse.solvers import cpmodel as cm
from dse.solvers import placement as pl
from dse.deploy.opcost import (
    GroupCost,
    OpCosts,
    Pool,
    op_costs,
    parse_pool,
    resolve_pools,
)

MOE = "Qwen/Qwen3-30B-A3B"


def small_model(dense: int = 1, moe: int = 2):
    """A MoE model cut down to `dense` dense layers followed by `moe` MoE layers."""
    m = get_model(MOE)
    g = m.groups[0]
    dense_ffn = dataclasses.replace(g.ffn, kind="dense", intermediate=6144, num_experts=0, top_k=0,
                                    shared_intermediate=0)
    groups = tuple(x for x in (LayerGroup(dense, g.attention, dense_ffn) if dense else None,
                               LayerGroup(moe, g.attention, g.ffn) if moe else None) if x)
    return dataclasses.replace(m, groups=groups)


def synthetic(seed: int, n_pools: int, counts: tuple[int, ...], *, tight: float = 0.6, tied: bool = False) -> OpCosts:
    """Random op times, hop times and memory; capacity `tight` x the average need per pool."""
    rng = np.random.default_rng(seed)
    model = small_model(1, 1)
    P = n_pools
    groups = []
    for gi, n in enumerate(counts):
        second = "moe" if gi % 2 else "ffn"
        groups.append(GroupCost(index=gi, count=n, label=f"g{gi}", ops=("attn", second),
                                time_ms={"attn": rng.uniform(0.1, 1.0, P), second: rng.uniform(0.1, 2.0, P)},
                                mem_bytes={"attn": rng.uniform(1, 5, P) * 1e9, second: rng.uniform(1, 10, P) * 1e9}))
    total = sum(n * (g.mem_bytes["attn"].mean() + g.mem_bytes[g.ops[1]].mean()) for g, n in zip(groups, counts))
    hop = rng.uniform(0.01, 0.5, P)
    pools = tuple(Pool(device="h100_sxm", count=8, tp=8, dp=1, ep=8, name=f"p{i}") for i in range(P))
    return OpCosts(model=model, pools=pools, groups=tuple(groups), embed_time_ms=rng.uniform(0, 0.1, P),
                   embed_mem_bytes=rng.uniform(0.5, 2, P) * 1e9, head_time_ms=rng.uniform(0.05, 0.5, P),
                   head_mem_bytes=rng.uniform(0.5, 2, P) * 1e9, tied_embeddings=tied,
                   capacity_bytes=np.full(P, tight * total / P * 2) + rng.uniform(0, 2e9, P),
                   memory_bytes=np.full(P, 80e9), hop_ms=hop, usd_per_hour=rng.uniform(5, 30, P),
                   tokens_per_step=64.0, phase="decode", batch=64.0, isl=1024.0, osl=256.0)


def brute_force(costs: OpCosts, *, overlap=False, objective="bottleneck", pins=None):
    """Every per-layer assignment (groups as contiguous runs), embedding and head pool."""
    P = costs.n_pools
    pin = cm.parse_pins(costs, pins)
    slots = []   # per layer: list of allowed (g, a, f)
    for gc in costs.groups:
        pa, pf = cm.pinned(pin, gc.index, gc.ops[0]), cm.pinned(pin, gc.index, gc.ops[1])
        opts = [(gc.index, a, f) for a in range(P) for f in range(P)
                if (pa is None or a == pa) and (pf is None or f == pf)]
        slots += [opts] * gc.count
    e_opts = [p for p in range(P) if cm.pinned(pin, None, "embed") in (None, p)]
    h_opts = [p for p in range(P) if cm.pinned(pin, None, "lm_head") in (None, p)]
    best = None
    for layers in itertools.product(*slots):
        for e in e_opts:
            for h in h_opts:
                ev = pl.evaluate_sequence(costs, list(layers), e, h, overlap=overlap)
                if not ev["fits"]:
                    continue
                val = ev["bottleneck_ms"]
                if objective == "tokens_per_usd":
                    val *= float(costs.usd_per_hour[ev["used"]].sum())
                if best is None or val < best[0]:
                    best = (val, layers, e, h)
    return best


def test_evaluate_sequence_by_hand():
    c = synthetic(0, 2, (1,), tight=10)
    ev = pl.evaluate_sequence(c, [(0, 0, 1)], 0, 0)
    g = c.groups[0]
    x0, x1 = c.hop_ms
    assert ev["crossings"].tolist() == [[0, 1], [1, 0]]
    assert ev["stage_ms"][0] == pytest.approx(c.embed_time_ms[0] + g.time_ms["attn"][0] + c.head_time_ms[0] + 2 * x0)
    assert ev["stage_ms"][1] == pytest.approx(g.time_ms["ffn"][1] + 2 * x1)
    ov = pl.evaluate_sequence(c, [(0, 0, 1)], 0, 0, overlap=True)
    assert ov["stage_ms"][1] == pytest.approx(g.time_ms["ffn"][1])
    assert ov["bottleneck_ms"] == pytest.approx(max(ov["stage_ms"].max(), x0, x1))


def brute_cases():
    """(seed, pools, layer counts per group): 2 pools up to 4 layers, 3 pools up to 3 layers."""
    two = [(2, 2), (1, 3), (4,), (3, 1), (3,), (2, 1)]
    three = [(2, 1), (1, 2), (3,)]
    return [(s, 2, two[s % len(two)]) for s in range(12)] + [(s, 3, three[s % 3]) for s in range(12, 18)]


@pytest.mark.parametrize("seed,P,counts", brute_cases())
def test_matches_brute_force_random(seed, P, counts):
    c = synthetic(seed, P, counts, tight=0.7 if seed % 3 else 0.45, tied=bool(seed % 2))
    for overlap in (False, True):
        bf = brute_force(c, overlap=overlap)
        if bf is None:
            with pytest.raises(DSEError, match="memory"):
                pl.place(c, overlap=overlap)
            continue
        r = pl.place(c, overlap=overlap)
        assert r.status == "OPTIMAL" and r.gap == 0.0
        assert r.bottleneck_ms == pytest.approx(bf[0], abs=2 * r.rounding_bound_ms)
        assert r.bottleneck_ms >= bf[0] - 1e-12
        assert all(m <= cap for m, cap in zip(r.memory_gb, r.capacity_gb))
        # the concrete layer list realises the counts
        assert sum(sum(cnt.values()) for cnt in r.counts) == sum(counts)


@pytest.mark.parametrize("seed", [12, 13, 24])
def test_no_good_rounds_match_brute_force(seed, monkeypatch):
    """Instances whose first master optimum cannot be ordered into one trail (no-good rounds)."""
    rounds = []
    forbid = cm.PlacementModel.forbid
    monkeypatch.setattr(cm.PlacementModel, "forbid", lambda self, s, gi: (rounds.append(gi), forbid(self, s, gi)))
    c = synthetic(seed, 3, (3,), tight=1.5)
    r = pl.place(c, overlap=True)
    assert rounds, "expected at least one no-good round"
    bf = brute_force(c, overlap=True)
    assert r.status == "OPTIMAL"
    assert r.bottleneck_ms == pytest.approx(bf[0], abs=2 * r.rounding_bound_ms)


@pytest.mark.parametrize("seed,P,counts", brute_cases()[::3])
def test_explicit_model_matches_brute_force(seed, P, counts):
    """The fallback (explicit y / z counts with every Euler cut) is exact too."""
    c = synthetic(seed, P, counts, tight=0.7 if seed % 3 else 0.45, tied=bool(seed % 2))
    bf = brute_force(c)
    cp = cm.PlacementModel(c, {}, [True] * P, overlap=False, scale=pl.SCALE, form="full")
    solver, status = cp.solve(time_limit=10, minimize=cp.T)
    if bf is None:
        assert status == cm.cp_model.INFEASIBLE
        return
    assert status == cm.cp_model.OPTIMAL
    assert solver.objective_value / pl.SCALE == pytest.approx(bf[0], abs=2 * pl.rounding_bound_ms(c))


@pytest.mark.parametrize("seed", range(4))
def test_tokens_per_usd_matches_brute_force(seed):
    c = synthetic(100 + seed, 3, (2, 1), tight=1.5)
    bf = brute_force(c, objective="tokens_per_usd")
    r = pl.place(c, objective="tokens_per_usd")
    assert r.status == "OPTIMAL"
    assert r.bottleneck_ms * r.usd_per_hour == pytest.approx(bf[0], rel=1e-5)
    assert r.tokens_per_usd == pytest.approx(c.tokens_per_step / r.bottleneck_ms * 1e3 * 3600 / r.usd_per_hour)


def test_pins_match_brute_force():
    c = synthetic(7, 3, (2, 2), tight=2.0)
    pins = {"attn": "p1", "g1.moe": "p2", "embed": "p0"}
    bf = brute_force(c, pins=pins)
    r = pl.place(c, pins=pins)
    assert r.bottleneck_ms == pytest.approx(bf[0], abs=2 * r.rounding_bound_ms)
    assert all(a == 1 for _, a, _ in r.layers)
    assert all(f == 2 for g, _, f in r.layers if g == 1)
    assert r.embed_pool == 0


def test_rounding_error_bounded_at_coarse_scale():
    """At 10 us resolution the scaled optimum is visibly off, but within (4L+3) x 0.5 / SCALE."""
    for seed in range(6):
        c = synthetic(200 + seed, 2, (2, 2), tight=3.0)
        coarse = 100   # units per ms
        r = pl.place(c, scale=coarse, tiebreak=False)
        bound = pl.rounding_bound_ms(c, coarse)
        assert bound == pytest.approx((4 * 4 + 3) * 0.5 / coarse)
        assert r.rounding_bound_ms == pytest.approx(bound)
        assert abs(r.scaled_bottleneck_ms - r.bottleneck_ms) <= bound
        bf = brute_force(c)
        assert r.bottleneck_ms - bf[0] <= 2 * bound
    fine = pl.place(c)
    assert abs(fine.scaled_bottleneck_ms - fine.bottleneck_ms) <= fine.rounding_bound_ms
    assert fine.rounding_bound_ms == pytest.approx(19 * 0.5e-6)


def test_memory_infeasible_names_the_pool_and_the_shortfall():
    c = synthetic(3, 2, (2, 2), tight=0.3)
    assert brute_force(c) is None
    with pytest.raises(DSEError, match=r"memory: the pools cannot hold .* lacks ([0-9.]+) GB in total") as exc:
        pl.place(c)
    lacks = float(re.search(r"lacks ([0-9.]+) GB", str(exc.value)).group(1))
    # brute force: the least total overflow over all placements
    slots = [[(gi, a, f) for a in range(2) for f in range(2)] for gi, n in ((0, 2), (1, 2)) for _ in range(n)]
    least = min(np.maximum(pl.evaluate_sequence(c, list(ls), e, h)["memory_bytes"] - c.capacity_bytes, 0).sum()
                for ls in itertools.product(*slots) for e in range(2) for h in range(2))
    assert lacks == pytest.approx(least / 1e9, abs=0.051)


def test_one_layer_too_big_explained():
    c = synthetic(3, 2, (2, 2), tight=0.1)
    with pytest.raises(DSEError, match=r"one layer's moe of group g1 .* fits on no allowed pool"):
        pl.place(c)


def test_pins_infeasible_explained():
    c = synthetic(5, 2, (2, 2), tight=0.9)
    assert brute_force(c) is not None
    pins = {"attn": "p0", "ffn": "p0", "moe": "p0", "embed": "p0", "lm_head": "p0"}
    assert brute_force(c, pins=pins) is None
    with pytest.raises(DSEError, match="pins"):
        pl.place(c, pins=pins)


def test_bad_pins_and_objective():
    c = synthetic(1, 2, (1, 1))
    with pytest.raises(DSEError, match="unknown op group"):
        pl.place(c, pins={"mlp": "p0"})
    with pytest.raises(DSEError, match="unknown pool"):
        pl.place(c, pins={"attn": "nope"})
    with pytest.raises(DSEError, match="g0..g1"):
        pl.place(c, pins={"g5.attn": "p0"})
    with pytest.raises(DSEError, match="objective"):
        pl.place(c, objective="latency")


def test_engine_costs_match_brute_force():
    model = small_model(1, 2)
    c = op_costs(model, [parse_pool("h20:8"), parse_pool("h100_sxm:4")], batch=32)
    bf = brute_force(c)
    r = pl.place(c)
    assert r.bottleneck_ms == pytest.approx(bf[0], abs=2 * r.rounding_bound_ms)


def test_op_costs_add_up_to_the_engine():
    """All layers' op times + head = one forward step; op memory = weights per GPU."""
    model = get_model(MOE)
    c = op_costs(model, [parse_pool("h100_sxm:8"), parse_pool("b200_sxm:4")], batch=16, routing_skew=0.0)
    from dse.catalog import dtypes
    from dse.catalog.runtime import runtime
    from dse.deploy.spec_table import SpecTable

    wd = model.native_dtype
    t = SpecTable([(p.device, wd) for p in c.pools])
    hwc = t.gather(np.arange(2))
    par = ops.Parallel(tp=np.array([8.0, 4.0]), dp=np.ones(2), ep=np.array([8.0, 4.0]), pp=np.ones(2))
    dt = ops.Dtypes(w_bytes=np.full(2, dtypes.BYTES[wd]), a_bytes=hwc["a_bytes"], kv_bytes=np.full(2, 2.0))
    step = ops.forward(model, hw=SpecTable.hw(hwc, runtime=runtime()), par=par, dt=dt, batch=np.full(2, 16.0),
                       q_len=np.ones(2), ctx=np.full(2, 1024 + 128.0))
    per_layer = sum(g.count * (g.time_ms[g.ops[0]] + g.time_ms[g.ops[1]]) for g in c.groups)
    np.testing.assert_allclose(per_layer + c.head_time_ms, step.total_ms, rtol=1e-9)
    weights = sum(g.count * (g.mem_bytes["attn"] + g.mem_bytes[g.ops[1]]) for g in c.groups)
    kv = memory.kv_bytes_per_seq(model, par, 2.0, np.full(2, 1280.0)) * 16 / pl_kv_fraction()
    emb = c.embed_mem_bytes + (0 if model.tie_embeddings else c.head_mem_bytes)
    np.testing.assert_allclose(weights - kv + emb, memory.weight_bytes_per_gpu(model, par, dtypes.BYTES[wd]),
                               rtol=1e-9)


def pl_kv_fraction() -> float:
    from dse.catalog.runtime import runtime

    return runtime()["kv_memory_fraction"]


def test_deepseek_three_pools_optimal_and_deterministic():
    model = get_model("deepseek-ai/DeepSeek-V3")
    c = op_costs(model, [parse_pool("h20:16"), parse_pool("h100_sxm:8"), parse_pool("b200_sxm:8")], batch=64)
    r1 = pl.place(c)
    r2 = pl.place(c)
    assert r1.status == "OPTIMAL" and r1.gap == 0.0
    assert r1.layers == r2.layers and r1.bottleneck_ms == r2.bottleneck_ms
    assert len(r1.layers) == 61
    assert abs(r1.scaled_bottleneck_ms - r1.bottleneck_ms) <= r1.rounding_bound_ms
    # more pools can only help: each single pool alone is no faster
    for keep in range(3):
        pins = {k: c.pools[keep].name for k in ("attn", "ffn", "moe", "embed", "lm_head")}
        try:
            alone = pl.place(c, pins=pins)
        except DSEError:
            continue
        assert alone.bottleneck_ms >= r1.bottleneck_ms - r1.rounding_bound_ms


def test_pool_parsing_and_resolution():
    assert parse_pool("h20:16") == Pool("h20", 16)
    assert parse_pool("b200_sxm:16,tp=8,dp=2,ep=16,name=fast") == Pool("b200_sxm", 16, 8, 2, 16, "fast")
    with pytest.raises(DSEError, match="DEVICE:COUNT"):
        parse_pool("h20")
    with pytest.raises(DSEError, match="unknown option"):
        parse_pool("h20:8,pp=2")
    m = get_model("deepseek-ai/DeepSeek-V3")
    r = resolve_pools(m, [Pool("h20", 16), Pool("h20", 8)])
    assert (r[0].tp, r[0].dp, r[0].ep, r[0].name) == (8, 2, 16, "h20")
    assert r[1].name == "h20#2"
    with pytest.raises(DSEError, match="tp=3"):
        resolve_pools(m, [Pool("h20", 6, tp=3)])


def _cli(argv):
    import argparse

    from dse.cli import cpsat as cli_cpsat

    p = argparse.ArgumentParser(prog="dse")
    cli_cpsat.add_parsers(p.add_subparsers(dest="cmd", required=True))
    a = p.parse_args(argv)
    return a.func(a)


def test_cli_place(capsys):
    assert _cli(["place", "--model", MOE, "--pool", "h20:8", "--pool", "h100_sxm:8", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "status: OPTIMAL (proved" in out
    assert "bottleneck:" in out and "<- bottleneck" in out
    assert "transfers:" in out and "layer order:" in out
    assert "integer scaling: times in units of 1 ns" in out
    with pytest.raises(DSEError, match="expected OP=POOL"):
        _cli(["place", "--model", MOE, "--pool", "h20:8", "--pin", "attn"])
    assert _cli(["place", "--model", MOE, "--pool", "h20:8", "--pool", "b200_sxm:8", "--objective",
                 "tokens_per_usd", "--json"]) == 0
    import json

    d = json.loads(capsys.readouterr().out)
    assert d["status"] == "OPTIMAL" and d["objective"] == "tokens_per_usd"
    assert len(d["layers"]) == get_model(MOE).num_layers
