"""Constraint-aware enumeration (dse.search.deployable): the rows a space keeps are exactly
the rows the engine can deploy within the GPU budget, found by brute force over the full
product; a grid evaluates only those, with config ids of the full product."""
from __future__ import annotations

import numpy as np
import pytest

import dse
from dse.search.evaluation import evaluate_batch
from dse.search.space import space_from_dict

MOE_FP8 = "Qwen/Qwen3-30B-A3B-FP8"      # 128 experts, 32 heads, 4 KV heads, block-scaled FP8 (128 x 128)


def _scenario(modes: dict, constraints: dict, **extra) -> dict:
    return {"name": "deployable", "model": MOE_FP8, "workload": {"isl": 256, "osl": 32},
            "slo_confidence": 0, "constraints": constraints,
            "axes": {"device": ["b200_sxm"], "weight_dtype": ["native", "bf16"], "batch_size": [1, 2]},
            "modes": modes, **extra}


MODES = {
    "agg": {"tp": [1, 2, 3, 4, 8], "dp": [1, 2, 4], "ep": [1, 2, 3, 8], "pp": [1, 2], "replicas": [1, 2, 4]},
    "disagg": {"prefill_tp": [1, 2, 4, 8], "prefill_ep": [1, 4, 6], "decode_tp": [1, 2, 4], "decode_dp": [1, 2],
               "decode_ep": [1, 2, 8], "prefill_workers": [1, 2, 3], "decode_workers": [1, 2]},
    "afd": {"attn_tp": [1, 2, 4], "attn_gpus": [2, 4, 6], "ffn_gpus": [2, 4, 6], "replicas": [1, 2]},
}


def _brute(space):
    """Every row of the full product through the engine: (not a structure error, GPUs)."""
    idx = np.arange(space.size, dtype=np.int64)
    df = dse.evaluate(strict=False, **space.columns(idx))
    return df["infeasible_code"].astype(str).to_numpy() != "structure", df["num_gpus"].to_numpy(), df


@pytest.mark.parametrize("constraints,budget", [({"gpus": 8}, ("exact", 8)), ({"max_gpus": 6}, ("at_most", 6)),
                                                ({}, None)])
def test_deployable_rows_are_the_engine_feasible_layouts_within_the_budget(constraints, budget):
    space = space_from_dict(_scenario(MODES, constraints))
    ok, gpus, df = _brute(space)
    want = ok.copy()
    if budget is not None:
        want &= (gpus == budget[1]) if budget[0] == "exact" else (gpus <= budget[1])
    kept = np.zeros(space.size, dtype=bool)
    ids = space.positions(0, space.deployable_size)
    kept[ids] = True
    assert ids.size == space.deployable_size == int(want.sum())
    assert np.array_equal(kept, want)
    assert np.array_equal(space.deployable(np.arange(space.size)), want)
    # the engine rejects structure on some rows of every mode here, and the budget drops more
    assert 0 < space.deployable_size < space.size
    for mode in MODES:
        rows = df["mode"].astype(str).to_numpy() == mode
        assert (~ok[rows]).any() and want[rows].any(), mode
    if budget is not None and budget[0] == "exact":
        assert set(gpus[ids]) == {8}


def test_eplb_rows_are_enumerated_with_their_replicas():
    """eplb: an ep that does not divide the 128 experts (6 on tp 2 x dp 3) is served with redundant
    copies: kept, exactly as the engine keeps it."""
    modes = {"agg": {**MODES["agg"], "dp": [1, 2, 3], "ep": [1, 2, 6, 8]}, "disagg": MODES["disagg"]}
    space = space_from_dict(_scenario(modes, {"max_gpus": 8}, eplb=True))
    ok, gpus, _ = _brute(space)
    want = ok & (gpus <= 8)
    kept = np.zeros(space.size, dtype=bool)
    kept[space.positions(0, space.deployable_size)] = True
    assert np.array_equal(kept, want)
    plain = space_from_dict(_scenario(modes, {"max_gpus": 8}))
    assert space.deployable_size > plain.deployable_size
    assert (space.decode(np.flatnonzero(kept))["ep"] == 6).any()


def test_grid_evaluates_only_deployable_rows_and_repair_moves_to_one(tmp_path):
    space = space_from_dict(_scenario(MODES, {"gpus": 8}))
    res = dse.sweep(space, out=tmp_path / "run")
    configs = res.configs() if hasattr(res, "configs") else None
    assert res.run["n_evaluated"] == space.deployable_size == res.run["deployable_size"]
    assert res.run["space_size"] == space.size
    if configs is not None:
        assert len(configs) == space.deployable_size and set(configs["num_gpus"]) == {8}
    every = np.arange(space.size)
    fixed = space.repair(every)
    assert space.deployable(fixed).all()
    keep = space.deployable(every)
    assert np.array_equal(fixed[keep], every[keep])
    df, G = evaluate_batch(space, fixed[~keep][:500])
    assert (df["num_gpus"] == 8).all()


@pytest.mark.parametrize("scenario", ["quickstart", "moe_hetero", "aic_qwen3_235b_b200"])
def test_codes_path_gives_the_string_paths_metrics(scenario):
    """The search hands the engine integer codes (Space.coded + columns.from_codes); every
    metric equals the one evaluate() computes from the same rows as strings."""
    from pathlib import Path

    from dse.deploy.columns import from_codes
    from dse.deploy.context import make_context
    from dse.deploy.evaluate import evaluate_columns
    from dse.search.space import load_space

    space = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / f"{scenario}.yaml")
    idx = space.positions(0, space.deployable_size)[::7][:6000]
    cols, n, vocab = from_codes(*space.coded(idx))
    a = evaluate_columns(cols, n, vocab, make_context(facility=space.facility_overrides()), strict=False)
    b = dse.evaluate(strict=False, facility=space.facility_overrides(), **space.columns(idx))
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == idx.size
    for col in b.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if b[col].dtype.kind in "iufb":
            x, y = x.astype(float), y.astype(float)
            assert np.array_equal(x, y, equal_nan=True), col
        else:
            assert (x.astype(str) == y.astype(str)).all(), col
    assert a["feasible"].any() and (~a["feasible"]).any()


def test_from_codes_refuses_bad_codes():
    from dse.deploy.columns import from_codes
    from dse.errors import DSEError

    with pytest.raises(DSEError, match="code out of range"):
        from_codes({"model": MOE_FP8, "tp": [1, 2]}, {"device": (np.array([0, 2]), ["b200_sxm", "h100_sxm"])})
    with pytest.raises(DSEError, match="not a string column"):
        from_codes({"model": MOE_FP8, "device": "b200_sxm"}, {"tp": (np.array([0]), ["1"])})
