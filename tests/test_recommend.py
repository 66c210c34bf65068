"""The recommendation: best per objective among the front, ties collapsed to the simplest
configuration, the knee as the balanced choice, and configurations described per role."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dse.search.recommend import describe, format_recommendation, recommend, tie_groups

GOLDEN = Path(__file__).resolve().parent / "golden"
OBJ = [{"name": "e2e_ms", "direction": "min"}, {"name": "joules_per_token", "direction": "min"},
       {"name": "usd_per_mtok", "direction": "min"}]


def test_best_per_objective_is_the_front_extreme_and_ties_collapse():
    p = pd.read_csv(GOLDEN / "pareto_quickstart.csv")
    rec = recommend(p, OBJ)
    groups = tie_groups(p, [o["name"] for o in OBJ])
    assert rec["n_choices"] == len(set(groups)) < len(p)          # the quickstart front has exact ties
    for o in OBJ:
        best = rec["best"][o["name"]]
        assert best["metrics"].get(o["name"], p.loc[p.config_id == best["config_id"], o["name"]].iloc[0]) is not None
        assert np.isclose(p.loc[p.config_id == best["config_id"], o["name"]].iloc[0], p[o["name"]].min())
        # the representative is the simplest of its tie group: no member uses fewer GPUs
        row = p.loc[p.config_id == best["config_id"]].iloc[0]
        same = p[(p[[x["name"] for x in OBJ]].round(12) == row[[x["name"] for x in OBJ]].round(12)).all(axis=1)]
        assert len(same) == best["n_equivalent"] and row.num_gpus == same.num_gpus.min()


def test_knee_is_on_the_front_and_not_an_extreme_when_the_front_bends():
    # a convex 2-D front: the knee is the middle point
    p = pd.DataFrame({"config_id": range(5), "mode": "agg", "device": "h100_sxm", "tp": 1, "num_gpus": 1,
                      "a": [1.0, 2.0, 4.0, 30.0, 100.0], "b": [100.0, 20.0, 4.0, 2.0, 1.0]})
    rec = recommend(p, [{"name": "a", "direction": "min"}, {"name": "b", "direction": "min"}])
    assert rec["balanced"]["config_id"] == 2
    assert rec["best"]["a"]["config_id"] == 0 and rec["best"]["b"]["config_id"] == 4


def test_describe_resolves_roles_and_workers():
    row = pd.Series({"mode": "disagg", "device": "h200_sxm", "prefill_device": "", "decode_device": "b200_sxm",
                     "tp": 8, "dp": 1, "ep": 1, "pp": 1, "prefill_tp": 0, "prefill_dp": 2, "prefill_ep": 0,
                     "prefill_pp": 0, "decode_tp": 4, "decode_dp": 0, "decode_ep": 0, "decode_pp": 0,
                     "prefill_workers": 3, "decode_workers": 1, "weight_dtype": "fp8", "kv_dtype": "fp8",
                     "batch_size": 64})
    c = describe(row)
    pre, dec = c["pools"]
    assert pre == {"role": "prefill", "device": "h200_sxm", "workers": 3, "gpus_per_worker": 16, "gpus": 48,
                   "tp": 8, "dp": 2, "ep": 1, "pp": 1}
    assert dec["device"] == "b200_sxm" and dec["tp"] == 4 and dec["gpus"] == 4
    afd = describe(pd.Series({"mode": "afd", "device": "h20", "attn_device": "", "ffn_device": "b200_sxm",
                              "tp": 2, "dp": 4, "ep": 8, "pp": 1, "attn_tp": 4, "attn_gpus": 0, "ffn_gpus": 0}))
    assert afd["pools"][0] == {"role": "attention", "device": "h20", "gpus": 8, "tp": 4, "pp": 1}
    assert afd["pools"][1]["gpus"] == 8 and afd["pools"][1]["device"] == "b200_sxm"


def test_console_block_names_device_mode_layout_dtypes_and_batch():
    p = pd.read_csv(GOLDEN / "pareto_moe_hetero.csv")
    text = format_recommendation(recommend(p, OBJ, [{"key": "slos.tpot_ms", "metric": "tpot_ms", "bound": "max",
                                                     "limit": 60}]))
    first = text.splitlines()[1]
    assert "disagg" in first and "b200_sxm" in first and "tp8" in first and "weights fp4" in first and "batch" in first
    assert "balanced" in text
    assert format_recommendation(recommend(p.iloc[:0], OBJ)).startswith("Recommended: nothing")
