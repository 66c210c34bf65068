"""afd candidates scored at their optimal CP-SAT placement inside the search."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from dse import cli
from dse.catalog.models import get_model
from dse.deploy.opcost import Pool, op_costs
from dse.pareto import pareto_mask
from dse.solvers.placement import evaluate_sequence, place
from dse.search.run import sweep

MODEL = "Qwen/Qwen3-235B-A22B"
SCENARIO = {
    "name": "placed_small",
    "model": MODEL,
    "workload": {"isl": 2048, "osl": 512},
    "placement": {"objective": "bottleneck", "overlap": True},
    "objectives": ["placed_tpot_ms", "placed_usd_per_mtok"],
    "constraints": {"own": True},
    "axes": {"weight_dtype": ["fp8"], "kv_dtype": ["fp8"], "batch_size": [64, 256]},
    "modes": {"afd": {"device": "h20", "attn_device": ["h20", "h200_sxm", "l40s"], "ffn_device": ["h100_sxm"],
                      "attn_tp": [8], "attn_gpus": [1, 8], "ffn_gpus": [2, 8]}},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("spaces") / "placed.yaml"
    path.write_text(yaml.safe_dump(SCENARIO))
    return sweep(path, strategy="grid", out=tmp_path_factory.mktemp("runs") / "placed")


def test_every_afd_row_carries_its_optimal_placement(run):
    df = pd.read_parquet(run.run_dir / "configs.parquet")
    assert len(df) == 24
    row = df[(df.attn_device == "h200_sxm") & (df.attn_gpus == 8) & (df.ffn_gpus == 8) & (df.batch_size == 256)].iloc[0]
    pools = [Pool("h200_sxm", 8, tp=8, name="attn_pool"), Pool("h100_sxm", 8, name="ffn_pool")]
    costs = op_costs(get_model(MODEL), pools, batch=128, isl=2048, osl=512, weight_dtype="fp8", kv_dtype="fp8")
    ref = place(costs, objective="bottleneck", overlap=True)
    assert ref.status == "OPTIMAL"
    assert row.placed_tokens_per_s == pytest.approx(ref.tokens_per_s, rel=1e-12)
    assert row.placed_tpot_ms == pytest.approx(ref.latency_ms, rel=1e-12)
    assert row.placed_usd_per_mtok == pytest.approx(ref.usd_per_hour / (ref.tokens_per_s * 3600) * 1e6, rel=1e-12)
    split = min(evaluate_sequence(costs, [(g.index, 0, 1) for g in costs.groups for _ in range(g.count)], e, h,
                                  overlap=True)["bottleneck_ms"] for e in (0, 1) for h in (0, 1))
    assert row.placed_gain == pytest.approx(split / ref.bottleneck_ms, rel=1e-12)
    assert row.placement.startswith("h200_sxm: ") and "h100_sxm: " in row.placement


def test_the_optimum_never_loses_to_the_engines_split(run):
    df = pd.read_parquet(run.run_dir / "configs.parquet")
    placed = df[df.placement != ""]
    assert len(placed) >= 12
    # a split that fits is one of the placements the solver considers (up to its rounding);
    # one that does not fit has no gain to report
    fits = placed.placed_gain.notna()
    assert fits.sum() >= 6 and (~fits).sum() >= 1
    assert (placed.placed_gain[fits] >= 1 - 1e-6).all()
    assert (placed.placed_gain[fits] > 1.05).any()     # and moving op groups does pay somewhere


def test_placeability_decides_feasibility(run):
    df = pd.read_parquet(run.run_dir / "configs.parquet")
    # 1 x L40S + 2 x H100 (208 GB) cannot hold 235 GB of fp8 weights, however placed
    tiny = df[(df.attn_device == "l40s") & (df.attn_gpus == 1) & (df.ffn_gpus == 2)]
    assert len(tiny) == 2 and not tiny.feasible.any()
    assert tiny.infeasible_reason.str.startswith("placement: memory").all()
    assert np.isinf(tiny.placed_tpot_ms).all()
    # the engine's split overflows the L40S's KV cache at batch 256; a placement that moves
    # attention layers to the H100s fits, so the candidate stands
    moved = df[(df.attn_device == "l40s") & (df.attn_gpus == 1) & (df.ffn_gpus == 8) & (df.batch_size == 256)].iloc[0]
    assert moved.feasible and moved.infeasible_reason == ""
    assert "h100_sxm: attn" in moved.placement


def test_pareto_front_is_taken_on_the_placed_objectives(run):
    df = pd.read_parquet(run.run_dir / "configs.parquet")
    feas = df[df.feasible]
    front = pareto_mask(feas[["placed_tpot_ms", "placed_usd_per_mtok"]].to_numpy())
    pareto = pd.read_csv(run.run_dir / "pareto.csv")
    assert sorted(pareto.config_id) == sorted(feas.config_id[front])
    assert {"placed_tpot_ms", "placed_usd_per_mtok", "placement"} <= set(pareto.columns)


@pytest.mark.parametrize("change, words", [
    ({"modes": {"agg": {"device": ["h100_sxm"], "tp": [8]}}}, "placement: scores attention/FFN pools (mode afd)"),
    ({"placement": {"objective": "speed"}}, "placement.objective: expected one of bottleneck, tokens_per_usd"),
    ({"placement": {"solver": "x"}}, "placement.solver: unknown key; allowed: objective, overlap, time_limit_s"),
    ({"placement": "best"}, "placement: expected `optimal` or a mapping"),
    ({"placement": {"extra_pools": ["warp9:8"]}}, "placement.extra_pools[0]: unknown device 'warp9'"),
    ({"placement": {"extra_pools": "h20:8"}}, "placement.extra_pools: expected a list of DEVICE:COUNT"),
])
def test_bad_placement_sections(tmp_path, capsys, change, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**SCENARIO, **change}))
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{path}: {words}" in err and len(err.splitlines()) == 1


def test_report_treats_placed_figures_as_metrics_and_shows_the_placement(run):
    from dse.report.figdata import point_sets
    from dse.report.rundata import load_run
    from dse.schema import METRIC_INFO as METRIC_LABELS
    from dse.solvers import placed

    assert set(placed.METRICS) <= set(METRIC_LABELS)
    rd = load_run(run.run_dir)
    assert "placement" in rd.config_columns
    assert not any(c.startswith("placed_") for c in rd.config_columns)
    text = point_sets(rd)[0].text[0]
    assert "placement h20: " in text or "placement h200_sxm: " in text or "placement l40s: " in text


def test_extra_pools_make_multi_pool_candidates(tmp_path):
    scen = {**SCENARIO, "placement": {"extra_pools": ["h20:8"]},
            "axes": {"weight_dtype": ["fp8"], "kv_dtype": ["fp8"], "batch_size": [256]},
            "modes": {"afd": {"device": "h20", "attn_device": ["h200_sxm"], "ffn_device": ["h100_sxm"],
                              "attn_tp": [8], "attn_gpus": [8], "ffn_gpus": [8]}}}
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(scen))
    df = pd.read_parquet(sweep(path, strategy="grid", out=tmp_path / "run").run_dir / "configs.parquet")
    row = df.iloc[0]
    pools = [Pool("h200_sxm", 8, tp=8, name="attn_pool"), Pool("h100_sxm", 8, name="ffn_pool"), Pool("h20", 8)]
    costs = op_costs(get_model(MODEL), pools, batch=256 / 3, isl=2048, osl=512, weight_dtype="fp8", kv_dtype="fp8")
    ref = place(costs, objective="bottleneck", overlap=True)
    assert row.placed_bottleneck_ms == pytest.approx(ref.bottleneck_ms, rel=1e-12)
    assert row.placed_num_gpus == sum(p.count for p, u in zip(costs.pools, ref.used) if u)
    assert ("h20: " in row.placement) == bool(ref.used[2])
