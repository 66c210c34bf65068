"""KV-cache tiers, reuse workloads, hit rate from capacity and routing (dse.model.kvcache,
dse.deploy.kvcache, dse.catalog.kv_tiers, dse.catalog.traces)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dse
from dse.catalog.kv_tiers import OFFLOAD_TIERS, load_tiers, tier_of
from dse.catalog.traces import lru_hit_rate, read_trace, reuse_cdf, session_trace
from dse.errors import DSEError
from dse.model import kvcache as kv
from dse.search.recommend import format_recommendation

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "search_spaces" / "traces" / "mooncake_conversation_400.jsonl"
LONG = dict(model="meta-llama/Llama-3.1-70B", device="h100_sxm", tp=8, isl=24000, osl=400, turns=8,
            system_prompt=2000, think_time_s=15.0)


@pytest.mark.parametrize("users,turns,think,isl,system", [(16, 6, 3.0, 8000, 1024), (40, 10, 1.0, 20000, 2000),
                                                          (24, 4, 5.0, 4000, 0)])
def test_session_hit_rate_matches_an_lru_replay_within_5_points(users, turns, think, isl, system):
    """The closed-form session profile and the trace's own reuse pairs, each against an exact
    LRU replay of the same closed loop, from half a request's prompt to 64 of them."""
    tr = session_trace(users=users, turns=turns, isl=isl, system=system, think_over_life=think, requests=3000)
    conc = users / (1.0 + think)                       # requests in flight
    closed = kv.session_reuse(isl=tr.input_length.mean(), osl=0, system=system, turns=turns, gap=conc,
                              think_gap=conc * think, p=1.0)
    cdf, prompt, accessed = reuse_cdf(tr, kv.GRID)
    pairs = kv.pairs_reuse(cdf=cdf, accessed=accessed, prompt=prompt, replicas=1, p=1.0)
    caps = tr.input_length.mean() * np.array([0.5, 1, 2, 4, 8, 16, 32, 64])
    sim = np.array([lru_hit_rate(tr, c) for c in caps])
    assert sim.max() - sim.min() > 0.3                # the range crosses the knee, not only its flat ends
    for c, s in zip(caps, sim):
        assert abs(float(kv.hit_fraction(closed, c)[0]) - s) <= 0.05, (c, s)
        assert abs(float(kv.hit_fraction(pairs, c)[0]) - s) <= 0.05, (c, s)


def test_trace_hit_rate_matches_an_lru_replay_of_the_mooncake_sample():
    tr = read_trace(str(SAMPLE))
    assert tr.requests == 400 and abs(tr.input_length.mean() - 14276.3) < 0.1
    cdf, prompt, accessed = reuse_cdf(tr, kv.GRID)
    prof = kv.pairs_reuse(cdf=cdf, accessed=accessed, prompt=prompt, replicas=1, p=1.0)
    for cap in (1e4, 1e5, 1e6, 2e6, 3e6, 1e7):
        assert abs(float(kv.hit_fraction(prof, cap)[0]) - lru_hit_rate(tr, cap)) <= 0.05, cap
    big = lru_hit_rate(tr, 1e9)
    assert 0.10 < big < 0.2 and abs(float(kv.hit_fraction(prof, 1e9)[0]) - big) < 1e-9


def test_hit_rate_grows_with_capacity_and_is_bounded_by_the_reuse():
    prof = kv.session_reuse(isl=10000, osl=300, system=1000, turns=6, gap=32, think_gap=64, p=1.0)
    caps = np.geomspace(1e3, 1e8, 40)
    h = kv.hit_fraction(kv.Reuse(np.repeat(prof.w, 40, 0), np.repeat(prof.w_inf, 40), np.repeat(prof.prompt, 40)),
                        caps)
    assert np.all(np.diff(h) >= -1e-12) and h[0] == pytest.approx(0.1) and h[-1] > 0.7
    grow = 2 * (10000 - 1000) / 7                    # session tokens each turn adds
    assert h[-1] == pytest.approx((1000 + 5 / 6 * (grow * 6 / 2 + 300)) / 10000)      # system + history


def test_routing_probability_and_imbalance():
    codes = {w: i for i, w in enumerate(kv.ROUTINGS)}
    r = np.full(4, 8.0)
    c = np.array([codes[w] for w in ("random", "least_loaded", "prefix_affinity", "dual_hash")])
    np.testing.assert_allclose(kv.p_same(c, r), [1 / 8, 1 / 8, 1.0, 0.5])
    imb = kv.load_imbalance(c, r, 16)
    np.testing.assert_allclose(imb[0], 1 + np.sqrt(2 * np.log(8) / 16))
    np.testing.assert_allclose(imb[1], 1 + (1 - 1 / 8) / 16)
    assert imb[1] < imb[3] < imb[0] == imb[2]
    assert np.all(kv.load_imbalance(c, np.ones(4), 16) == 1.0)


def _route(routing, **extra):
    return dse.evaluate(**{**LONG, "batch_size": 24, "replicas": 8, "routing": routing, "kv_tier": "host",
                           "kv_tier_gb": 200.0, "ttft_slo_ms": 1500.0, **extra})


def test_affine_routing_beats_random_in_hit_rate_and_goodput_and_least_loaded_balances():
    rows = {r: _route(r).iloc[0] for r in ("random", "least_loaded", "prefix_affinity", "dual_hash")}
    assert all(bool(row.feasible) for row in rows.values())
    for affine in ("prefix_affinity", "dual_hash"):
        assert rows[affine].cache_hit_rate > rows["random"].cache_hit_rate + 0.1
        assert rows[affine].goodput_tokens_per_s > rows["random"].goodput_tokens_per_s * 1.1
    imb = {r: row.load_imbalance for r, row in rows.items()}
    assert min(imb, key=imb.get) == "least_loaded" and imb["random"] > 1.1


def test_offload_tier_raises_the_hit_rate_and_lowers_ttft_on_a_long_multi_turn_workload():
    hbm = dse.evaluate(**LONG, batch_size=16).iloc[0]
    host = dse.evaluate(**LONG, batch_size=16, kv_tier="host", kv_tier_gb=200.0).iloc[0]
    assert host.cache_hit_rate > hbm.cache_hit_rate + 0.15
    assert host.ttft_ms < hbm.ttft_ms and host.tokens_per_s > hbm.tokens_per_s
    # the tier's DRAM is priced: 200 GB x $5/GB on each of the 8 GPUs
    assert host.capex_usd - hbm.capex_usd == pytest.approx(8 * 200 * 5.0)


def test_default_columns_take_the_old_path_exactly():
    base = dict(model="Qwen/Qwen3-30B-A3B", device="b200_sxm", tp=2, batch_size=[8, 64], isl=4096, osl=256,
                prefix_hit=0.3, replicas=4)
    a = dse.evaluate(**base)
    b = dse.evaluate(**base, kv_tier="hbm", kv_tier_gb=0.0, routing="", turns=1, system_prompt=0, trace="")
    for m in ("ttft_ms", "tpot_ms", "tokens_per_s", "usd_per_mtok", "goodput_tokens_per_s"):
        np.testing.assert_array_equal(a[m].to_numpy(), b[m].to_numpy())
    np.testing.assert_array_equal(a["cache_hit_rate"], [0.3, 0.3])
    np.testing.assert_array_equal(a["load_imbalance"], [1.0, 1.0])


def test_tier_rows_that_cannot_exist_are_flagged():
    df = dse.evaluate(**LONG, batch_size=8, kv_tier=["fabric", "host", "hbm"], kv_tier_gb=[100.0, 1000.0, 10.0],
                      strict=False)
    assert list(df.infeasible_code.astype(str)) == ["structure", "memory", "structure"]
    with pytest.raises(DSEError, match="no such kv_tier"):
        dse.evaluate(**LONG, batch_size=8, kv_tier="fabric", kv_tier_gb=100.0)
    with pytest.raises(DSEError, match="kv_tier: unknown value 'cxl'"):
        dse.evaluate(**LONG, batch_size=8, kv_tier="cxl")
    with pytest.raises(DSEError, match="agg, not disagg"):
        dse.evaluate(**LONG, batch_size=8, mode="disagg")


def test_tier_data_carries_sources(tmp_path):
    data = load_tiers()
    for sid, ts in data.systems.items():
        for t in OFFLOAD_TIERS:
            if getattr(ts, t) is not None:
                for f in ("gb_per_gpu", "link_gb_s", "latency_ms"):
                    assert len(ts.sources[f"{t}.{f}"]) > 20, (sid, t, f)
    assert tier_of("gb200", "host").link_gb_s > 3 * tier_of("h100_sxm", "host").link_gb_s    # C2C vs PCIe
    assert tier_of("a100_sxm", "host").link_gb_s == 32.0 and tier_of("h100_sxm", "fabric") is None
    import yaml
    raw = yaml.safe_load((ROOT / "hardware" / "kv_tiers.yaml").read_text())
    del raw["systems"]["hgx8"]["sources"]["ssd.link_gb_s"]
    bad = tmp_path / "kv_tiers.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(DSEError, match="ssd.link_gb_s: every figure needs its source"):
        load_tiers(str(bad))
    readme = (ROOT / "search_spaces" / "traces" / "README.md").read_text()
    assert "github.com/kvcache-ai/Mooncake" in readme and "Apache License 2.0" in readme


@pytest.mark.parametrize("text,msg", [
    ('{"timestamp": 0, "input_length": 100, "output_length": 5}', "line 1: missing 'hash_ids'"),
    ('{"timestamp": 0, "input_length": 100, "output_length": 5, "hash_ids": [1, "a"]}', "line 1: hash_ids: expected"),
    ('{"timestamp": 0, "input_length": 100, "output_length": 5, "hash_ids": [1]}\nnot json', "line 2: not a JSON"),
    ('{"timestamp": 0, "input_length": 0, "output_length": 5, "hash_ids": []}', "input_length: expected a whole"),
    ('{"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2, 3]}', "3 blocks of 512"),
    ('', "no requests"),
])
def test_a_bad_trace_is_one_line_naming_file_and_line(tmp_path, text, msg):
    p = tmp_path / f"t{abs(hash(text)) % 10**6}.jsonl"
    p.write_text(text)
    with pytest.raises(DSEError) as err:
        dse.evaluate(**{**LONG, "turns": 1, "system_prompt": 0}, batch_size=4, trace=str(p))
    assert msg in str(err.value) and str(p) in str(err.value) and "\n" not in str(err.value)


def test_missing_trace_file(tmp_path):
    with pytest.raises(DSEError, match="trace file not found"):
        read_trace(str(tmp_path / "nope.jsonl"))


def test_a_trace_row_takes_its_hit_rate_from_the_trace():
    tr = read_trace(str(SAMPLE))
    base = dict(model="meta-llama/Llama-3.1-8B", device="h100_sxm", isl=int(tr.input_length.mean()),
                osl=int(tr.output_length.mean()), batch_size=8, trace=str(SAMPLE))
    hbm = dse.evaluate(**base).iloc[0]
    host = dse.evaluate(**base, kv_tier="host", kv_tier_gb=250.0).iloc[0]
    assert 0.0 < hbm.cache_hit_rate <= host.cache_hit_rate <= 0.137 + 1e-6


@pytest.mark.parametrize("name,offloads", [("kv_tiers_long", True), ("kv_tiers_short", False)])
def test_the_cheapest_configuration_meeting_the_slos_offloads_only_on_long_reuse(name, offloads, tmp_path):
    res = dse.sweep(ROOT / "search_spaces" / f"{name}.yaml", out=tmp_path / name)
    ok = res.configs()
    ok = ok[ok.feasible & ok.meets_slo]
    cheapest = ok.loc[ok.usd_per_mtok.idxmin()]
    assert (str(cheapest.kv_tier) != "hbm") == offloads and bool(cheapest.kv_tier_gb > 0) == offloads
    best_hbm = ok[ok.kv_tier.astype(str) == "hbm"].usd_per_mtok.min()
    if offloads:       # the tier pays for itself clearly, through a higher hit rate
        assert cheapest.usd_per_mtok < 0.9 * best_hbm and cheapest.cache_hit_rate > 0.7
    else:              # a tier buys no hits: the same hit rate, only its price
        tiered = ok[ok.kv_tier.astype(str) != "hbm"]
        assert len(tiered) and np.allclose(tiered.cache_hit_rate, 0.2)
    rec = json.loads((Path(res.run_dir) / "recommendation.json").read_text())
    pick = rec["best"]["usd_per_mtok"]
    assert pick["configuration"]["kv_tier"] == str(cheapest.kv_tier)
    assert pick["metrics"]["cache_hit_rate"] == pytest.approx(cheapest.cache_hit_rate)
    text = format_recommendation(rec)
    assert ("prefix cache in HBM +" in text) == offloads and "cache_hit_rate" in text


def test_a_scenario_reads_its_trace_beside_it_and_checks_tier_words(tmp_path):
    from dse.search.space import space_from_dict
    (tmp_path / "t.jsonl").write_text(SAMPLE.read_text())
    base = {"model": "meta-llama/Llama-3.1-8B", "axes": {"device": ["h100_sxm"], "kv_tier": ["hbm", "host"],
                                                         "kv_tier_gb": [0, 100]}}
    space = space_from_dict({**base, "workload": {"trace": "t.jsonl"}}, where=str(tmp_path / "s.yaml"))
    fixed = dict(space.fixed)
    assert fixed["trace"] == str(tmp_path / "t.jsonl") and fixed["isl"] == 14276 and fixed["osl"] == 365
    with pytest.raises(DSEError, match=r"s.yaml: workload.trace: .*nope.jsonl: trace file not found"):
        space_from_dict({**base, "workload": {"trace": "nope.jsonl"}}, where=str(tmp_path / "s.yaml"))
    with pytest.raises(DSEError, match=r"axes.kv_tier\[1\]: unknown kv_tier 'cxl'"):
        space_from_dict({**base, "axes": {**base["axes"], "kv_tier": ["hbm", "cxl"]}}, where=str(tmp_path / "s.yaml"))
    with pytest.raises(DSEError, match=r"workload.routing: unknown routing 'sticky'"):
        space_from_dict({**base, "workload": {"routing": "sticky"}}, where=str(tmp_path / "s.yaml"))
