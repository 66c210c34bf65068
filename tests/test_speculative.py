"""Speculative decoding (MTP / EAGLE drafts): tokens per step, where it pays, bad input,
and the validation diagnostic that finds it in measured files that do not record it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dse import api
from dse.fit import validate
from dse.errors import DSEError
from dse.model.serving import Spec

DSV3 = dict(model="deepseek-ai/DeepSeek-V3", device="b200_sxm", tp=8, weight_dtype="fp8", kv_dtype="fp8",
            isl=1024, osl=1024, backend="trtllm")


def test_tokens_per_step_is_the_geometric_acceptance_sum():
    got = Spec(tokens=np.array([0, 1, 3, 2]), accept=np.array([0.5, 0.5, 0.5, 1.0])).per_step()
    np.testing.assert_allclose(got, [1.0, 1.5, 1.875, 3.0], rtol=1e-6)


def test_no_drafts_is_plain_decoding_exactly():
    base = api.evaluate(**DSV3, batch_size=[1, 16, 128])
    off = api.evaluate(**DSV3, batch_size=[1, 16, 128], spec_tokens=0, spec_acceptance=0.3)
    pd.testing.assert_frame_equal(base.drop(columns=["spec_tokens", "spec_acceptance"]),
                                  off.drop(columns=["spec_tokens", "spec_acceptance"]))


@pytest.mark.parametrize("mode,extra", [("agg", {}), ("disagg", {"ep": 8}), ("afd", {"ep": 8})])
def test_drafts_cut_memory_bound_tpot_by_less_than_the_tokens_they_add(mode, extra):
    r = api.evaluate(**DSV3, **extra, mode=mode, batch_size=4, spec_tokens=[0, 2])
    e = 1 + 0.85 + 0.85 ** 2                      # default acceptance, hardware/runtime.yaml
    plain, spec = r.tpot_ms.to_numpy()
    # a weight-streaming step verifies 3 tokens for little more than 1: most of E shows
    assert plain / e < spec < plain / 1.4
    assert r.tokens_per_s_per_gpu.iloc[1] > 1.4 * r.tokens_per_s_per_gpu.iloc[0]


def test_the_gain_shrinks_when_the_step_is_compute_bound():
    r = api.evaluate(model="meta-llama/Llama-3.1-8B-Instruct", device="h100_sxm", weight_dtype="fp8",
                     isl=1024, osl=512, batch_size=[1, 1, 256, 256], spec_tokens=[0, 3, 0, 3])
    t = r.tpot_ms.to_numpy()
    small, large = t[0] / t[1], t[2] / t[3]
    assert small > 1.8 and large < small - 0.5


def test_rejected_drafts_only_cost():
    r = api.evaluate(**DSV3, batch_size=8, spec_tokens=[0, 2], spec_acceptance=0.0)
    assert r.tpot_ms.iloc[1] > r.tpot_ms.iloc[0] * 1.05


@pytest.mark.parametrize("col,val,msg", [("spec_tokens", -1, "spec_tokens must hold integers >= 0"),
                                         ("spec_tokens", 1.5, "spec_tokens must hold integers >= 0"),
                                         ("spec_acceptance", 1.5, "spec_acceptance must be in [0, 1]")])
def test_bad_speculative_settings_are_one_line_errors(col, val, msg):
    with pytest.raises(DSEError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        api.evaluate(**DSV3, **{col: val})


def test_validation_finds_repeat_groups_that_look_like_drafting():
    agg = dict(system="b200_sxm", backend="trtllm", mode="agg", isl=1024, osl=1024, batch_size=4, pp_size=1,
               attention_dp_size=1, moe_tp_size=8, moe_ep_size=1, tp_size=8, silicon_ttft_ms=200.0)
    dsr1 = dict(agg, model_path="deepseek-ai/DeepSeek-R1", precision="fp8", gemm_quant_mode="fp8",
                moe_quant_mode="fp8")
    llama = dict(agg, model_path="meta-llama/Llama-3.1-70B", precision="fp8", gemm_quant_mode="fp8",
                 moe_tp_size=1)
    df = pd.DataFrame([
        {**dsr1, "id": "plain", "silicon_tpot_ms": 10.1, "silicon_data_source": "run=1"},
        {**dsr1, "id": "mtp", "silicon_tpot_ms": 5.4, "silicon_data_source": "run=2"},     # 1.9x apart
        {**dsr1, "id": "far", "silicon_tpot_ms": 50.0, "silicon_data_source": "run=3", "batch_size": 8},
        {**dsr1, "id": "far2", "silicon_tpot_ms": 5.0, "silicon_data_source": "run=4", "batch_size": 8},  # 10x
        {**llama, "id": "l1", "silicon_tpot_ms": 6.0, "silicon_data_source": "run=5"},
        {**llama, "id": "l2", "silicon_tpot_ms": 6.1, "silicon_data_source": "run=6"},
    ])
    _, configs = validate.map_rows(df)
    got = validate.speculative_check(df, configs)
    assert (got["groups"], got["mtp_model_groups"], got["within"]) == (2, 2, 1)
    assert (got["plain_groups"], got["plain_groups_over"]) == (1, 0)
    near = next(r for r in got["rows"] if r["measured_ratio"] < 2)
    assert near["within"] and near["predicted_ratio_min"] < 1.9 * 1.2 and near["mtp_heads"] == 1


def test_goodput_under_a_tight_tpot_slo_counts_the_drafted_tokens():
    r = api.evaluate(**DSV3, ep=8, mode=["agg", "agg", "disagg", "disagg"], batch_size=512,
                     spec_tokens=[0, 2, 0, 2], tpot_slo_ms=12)
    g = r.goodput_tokens_per_s.to_numpy()
    assert not r.meets_slo.any()                  # at 512 users neither meets 12 ms: goodput is searched
    assert g[1] > 2 * g[0] > 0 and g[3] > 2 * g[2] > 0


def test_draft_heads_take_memory_next_to_the_attention():
    r = api.evaluate(**DSV3, ep=8, batch_size=16, spec_tokens=[0, 2])
    per_layer = 671e9 / 61 / 8 / 1e9              # fp8 bytes of one average layer on each of 8 GPUs
    grew = r.memory_gb_per_gpu.iloc[1] - r.memory_gb_per_gpu.iloc[0]
    assert 0.8 * per_layer < grew < 1.2 * per_layer
