"""Open-loop traffic: the queueing model against the discrete-event simulation, its shape
(monotone in the arrival rate, saturation flagged), the closed loop untouched at rate 0,
percentile SLOs and goodput."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import dse
from dse.errors import DSEError
from dse.fit import queue_check
from dse.fit.queue_sim import simulate
from dse.model.openloop import latency_percentiles

LLAMA8 = dict(model="meta-llama/Llama-3.1-8B", device="h100_sxm", batch_size=64, isl=1024, osl=256)
DISAGG = dict(model="meta-llama/Llama-3.1-70B", device="h100_sxm", mode="disagg", tp=4, decode_workers=2,
              batch_size=64, isl=1024, osl=256)
METRICS = ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99")
# (configuration of queue_check.SAMPLE, load, metric) where the model misses the simulation by
# more than 15 %, with the error measured when this was written: the p99 TTFT of a prompt-heavy
# agg rank (Llama-70B, 2k prompts: a prompt costs 5 decode steps) at 85 %, where about 1 % of
# arrivals wait for a slot and the p99 sits inside that wait (the chain gives the full rank
# 0.8 % instead of the simulated 1.25 %)
KNOWN_MISSES = {(1, 0.85, "ttft_p99"): -0.31}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return queue_check.compare(loads=(0.3, 0.6, 0.85), requests=20_000)


def test_the_sample_covers_agg_disagg_dense_and_moe(table):
    kinds = {(r["mode"], "A3B" in r["model"]) for _, r in table.iterrows()}
    assert kinds == {("agg", False), ("agg", True), ("disagg", False), ("disagg", True)}
    assert (table.capacity_per_s > 1).all()


@pytest.mark.parametrize("metric", METRICS)
def test_percentiles_within_15_percent_of_the_simulation(table, metric):
    err = table[f"{metric}_err"].to_numpy()
    known = np.array([(int(r.config), r.load, metric) in KNOWN_MISSES for r in table.itertuples()])
    bad = table.loc[(np.abs(err) > 0.15) & ~known, ["config", "load", f"{metric}_model", f"{metric}_sim"]]
    assert bad.empty, bad.to_string()
    for (k, load, m), want in KNOWN_MISSES.items():    # a known miss stays what it was (or gets better)
        if m == metric:
            got = float(table.loc[(table.config == k) & (table.load == load), f"{m}_err"].iloc[0])
            assert abs(got) <= abs(want) + 0.03


def test_the_simulation_is_stable_across_seeds():
    """The check means something only if the simulated p99 is not noise: two seeds agree to
    within half the 15 % the model is held to (four seeds of this deployment at 40,000
    requests spread 5.2 %, at 80,000 5.0 %)."""
    eng = queue_check.engine_for(**LLAMA8)
    rate = 0.6 * float(queue_check.capacity(eng)[0])
    p99 = [np.percentile(simulate(eng, rate_per_s=rate, requests=40_000, seed=s)["ttft_ms"], 99) for s in (1, 2)]
    assert abs(p99[0] / p99[1] - 1.0) < 0.075


@pytest.mark.parametrize("cfg", [LLAMA8, DISAGG, dict(LLAMA8, model="Qwen/Qwen3-30B-A3B", tp=2, ep=2)])
def test_a_higher_arrival_rate_never_lowers_p99(cfg):
    rates = np.linspace(0.5, 40.0, 60)
    df = dse.evaluate(**cfg, arrival_rate=rates, strict=False)
    ok = df[df.feasible]
    assert len(ok) >= 10 and (~df.feasible).any()              # the sweep reaches saturation
    for m in ("ttft_p99_ms", "tpot_p99_ms", "ttft_p50_ms", "tpot_p50_ms"):
        assert (np.diff(ok[m].to_numpy()) >= -1e-9 * ok[m].to_numpy()[1:]).all(), m
    assert (ok.ttft_p99_ms >= ok.ttft_p50_ms).all() and (ok.tpot_p99_ms >= ok.tpot_p50_ms).all()
    # once saturated, every higher rate is too
    sat = (~df.feasible).to_numpy()
    assert sat[np.argmax(sat):].all()


def test_saturated_rows_are_infeasible_with_a_reason_and_no_goodput():
    df = dse.evaluate(**LLAMA8, arrival_rate=[5.0, 500.0], ttft_p99_slo_ms=1000.0, strict=False)
    assert df.feasible.tolist() == [True, False]
    assert df.infeasible_code.iloc[1] == "saturated" and df.infeasible_reason.iloc[1].startswith("saturated:")
    assert df.goodput_tokens_per_s.iloc[1] == 0 and not df.meets_slo.iloc[1]
    ok = df.iloc[0]
    assert all(np.isfinite(ok[m]) for m in ("ttft_p99_ms", "tpot_p99_ms", "ttft_ms", "tpot_ms", "usd_per_mtok"))
    assert ok.tokens_per_s == pytest.approx(5.0 * 256)        # served = offered
    assert ok.num_gpus == 1 and ok.tokens_per_s_per_user == pytest.approx(1e3 / ok.tpot_ms)


def test_rate_zero_is_the_closed_loop_exactly():
    grid = dict(LLAMA8, batch_size=[1, 8, 64, 256], isl=[128, 1024, 4096, 2048], ttft_slo_ms=[500.0, np.inf, 300, 2000])
    old = dse.evaluate(**grid, strict=False)
    new = dse.evaluate(**grid, arrival_rate=0.0, ttft_p99_slo_ms=np.inf, strict=False)
    pd.testing.assert_frame_equal(old, new)
    for m, mean in (("ttft_p50_ms", "ttft_ms"), ("ttft_p99_ms", "ttft_ms"), ("tpot_p99_ms", "tpot_ms")):
        assert (old[m] == old[mean]).all()


def test_a_closed_loop_p99_slo_acts_as_the_mean_slo():
    a = dse.evaluate(**LLAMA8, ttft_slo_ms=100.0, strict=False)
    b = dse.evaluate(**LLAMA8, ttft_p99_slo_ms=100.0, strict=False)
    assert a.ttft_ms.iloc[0] > 100 and not b.meets_slo.iloc[0]
    assert b.goodput_tokens_per_s.iloc[0] == a.goodput_tokens_per_s.iloc[0] > 0


def test_open_loop_goodput_is_the_highest_rate_meeting_the_p99_slo():
    slo = 60.0
    df = dse.evaluate(**LLAMA8, arrival_rate=2.0, ttft_p99_slo_ms=slo, strict=False)
    best = df.goodput_tokens_per_s.iloc[0] / 256.0                 # requests/s
    assert 2.0 < best
    around = dse.evaluate(**LLAMA8, arrival_rate=[0.97 * best, 1.05 * best], ttft_p99_slo_ms=slo, strict=False)
    assert around.ttft_p99_ms.iloc[0] <= slo < around.ttft_p99_ms.iloc[1]
    assert around.meets_slo.tolist() == [True, False]
    # replicas: twice the rate over two replicas is the same per replica, twice the goodput
    two = dse.evaluate(**LLAMA8, replicas=2, arrival_rate=4.0, ttft_p99_slo_ms=slo, strict=False)
    assert two.ttft_p99_ms.iloc[0] == pytest.approx(df.ttft_p99_ms.iloc[0])
    assert two.goodput_tokens_per_s.iloc[0] == pytest.approx(2 * df.goodput_tokens_per_s.iloc[0])


def test_afd_is_not_modelled_open_loop():
    df = dse.evaluate(model="Qwen/Qwen3-30B-A3B", device="h100_sxm", mode="afd", attn_gpus=2, ffn_gpus=2,
                      batch_size=32, arrival_rate=[0.0, 3.0], strict=False)
    assert df.feasible.iloc[0] and not df.feasible.iloc[1]
    assert df.infeasible_code.iloc[1] == "structure" and "arrival_rate" in df.infeasible_reason.iloc[1]


def test_bad_arrival_rate_is_one_line_error():
    with pytest.raises(DSEError, match=r"arrival_rate must be a finite number of requests/s >= 0.*-1"):
        dse.evaluate(**LLAMA8, arrival_rate=-1.0)
    with pytest.raises(DSEError, match="ttft_p99_slo_ms"):
        dse.evaluate(**LLAMA8, ttft_p99_slo_ms=0.0)


def test_scenario_percentile_slos_become_columns_and_constraints():
    from dse.search.space import space_from_dict
    data = {"model": "meta-llama/Llama-3.1-8B", "workload": {"isl": 1024, "osl": 256, "arrival_rate": 8.0},
            "slos": {"ttft_p99_ms": 200, "tpot_p99_ms": 40}, "axes": {"device": ["h100_sxm"], "batch_size": [64]}}
    space = space_from_dict(data)
    fixed = dict(space.fixed)
    assert fixed["ttft_p99_slo_ms"] == 200 and fixed["tpot_p99_slo_ms"] == 40 and fixed["arrival_rate"] == 8.0
    assert {(c.metric, c.bound) for c in space.constraints} >= {("ttft_p99_ms", "max"), ("tpot_p99_ms", "max")}
    with pytest.raises(DSEError, match=r"slos.*ttft_p99_ms"):
        space_from_dict(dict(data, slos={"ttft_p99_ms": -5}))


def test_trace_arrivals_drive_the_simulation():
    eng = queue_check.engine_for(**LLAMA8)
    times = np.sort(np.random.default_rng(3).uniform(0.0, 600.0, 3000))     # 5 requests/s for 10 minutes
    sim = simulate(eng, arrivals_s=times)
    assert len(sim["ttft_ms"]) == 2700 and np.isfinite(sim["tpot_ms"]).all()
    model = latency_percentiles(eng, 5.0)
    assert np.percentile(sim["ttft_ms"], 50) == pytest.approx(float(model["ttft_p50_ms"][0]), rel=0.15)


@pytest.mark.parametrize("rho", [0.3, 0.5, 0.8])
def test_the_batch_chain_of_one_prompt_batches_is_m_d_1(rho):
    """One prompt per batch of unit time: the queue a batch starts with is the M/D/1 number left
    behind by a departure (Pollaczek-Khinchine mean rho + rho^2 / (2 (1 - rho))), or 1 after idling."""
    from dse.model.queue import batch_chain
    pi, _ = batch_chain(np.array([rho]), np.array([[1.0]]), np.array([1]), 200)
    left = rho + rho ** 2 / (2.0 * (1.0 - rho))
    assert float(pi[0] @ np.arange(1, 201)) == pytest.approx(left + (1.0 - rho), rel=1e-9)


def test_grouped_poisson_counts_sum_the_plain_ones():
    from dse.model.queue import poisson_pmf
    plain, grouped = poisson_pmf(np.array([3.7]), 100)[0], poisson_pmf(np.array([3.7]), 30, np.array([3]))[0]
    assert grouped[0] == pytest.approx(plain[0]) and grouped[1] == pytest.approx(plain[1:4].sum())
    assert grouped[2] == pytest.approx(plain[4:7].sum()) and grouped.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("servers, full, p1_scale", [(3, 8, 1.0), (1, 40, 0.3)])
def test_prefill_pools_outside_the_sample_hold_15_percent(servers, full, p1_scale):
    """Several prefill servers, and batches above BATCH_GROUPS prompts (counted in groups)."""
    import dataclasses
    base = queue_check.engine_for(**DISAGG)
    eng = dataclasses.replace(base, pre_servers=np.array([float(servers)]), full=np.array([float(full)]),
                              p1=base.p1 * p1_scale)
    cap = float(queue_check.capacity(eng)[0])
    for load in (0.3, 0.85):
        got = latency_percentiles(eng, load * cap)
        sim = simulate(eng, rate_per_s=load * cap, requests=20_000, seed=3)
        for q in (50, 99):
            want = np.percentile(sim["ttft_ms"], q)
            assert float(got[f"ttft_p{q}_ms"][0]) == pytest.approx(want, rel=0.15), (load, q)
