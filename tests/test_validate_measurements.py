"""`dse validate --measurements`: mapping rules, per-row reasons, JSON keys, never a crash."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dse.fit import validate
from dse.cli import main
from dse.errors import DSEError

COLUMNS = ["id", "silicon_data_source", "backend", "backend_version", "model_path", "system", "precision", "mode",
           "isl", "osl", "gemm_quant_mode", "moe_quant_mode", "batch_size", "tp_size", "pp_size", "attention_dp_size",
           "moe_tp_size", "moe_ep_size", "prefill_batch_size", "prefill_num_workers", "prefill_tp_size",
           "prefill_pp_size", "prefill_attention_dp_size", "prefill_moe_tp_size", "prefill_moe_ep_size",
           "decode_batch_size", "decode_num_workers", "decode_tp_size", "decode_pp_size", "decode_attention_dp_size",
           "decode_moe_tp_size", "decode_moe_ep_size", "silicon_ttft_ms", "silicon_tpot_ms"]
LLAMA = dict(model_path="meta-llama/Llama-3.1-70B", system="h100_sxm", backend="trtllm", precision="fp8",
             gemm_quant_mode="fp8", mode="agg", isl=1024, osl=256, tp_size=4, pp_size=1, attention_dp_size=1,
             moe_tp_size=1, moe_ep_size=1, silicon_ttft_ms=250.0, silicon_tpot_ms=15.0)
DSR1 = dict(model_path="deepseek-ai/DeepSeek-R1", system="b200_sxm", backend="trtllm", precision="fp4",
            gemm_quant_mode="nvfp4", moe_quant_mode="nvfp4", isl=1024, osl=1024, pp_size=1,
            silicon_ttft_ms=800.0, silicon_tpot_ms=20.0)
ROWS = [
    {"id": "agg_ok", **LLAMA, "batch_size": 16},
    {"id": "agg_dep8", **DSR1, "mode": "agg", "batch_size": 32, "tp_size": 1, "attention_dp_size": 8,
     "moe_tp_size": 1, "moe_ep_size": 8},
    {"id": "agg_dep8_as_products", **DSR1, "mode": "agg", "batch_size": 4, "tp_size": 1, "attention_dp_size": 64,
     "moe_tp_size": 8, "moe_ep_size": 8},
    {"id": "disagg_ok", **DSR1, "mode": "disagg", "prefill_batch_size": 1, "prefill_num_workers": 2,
     "prefill_tp_size": 1, "prefill_attention_dp_size": 4, "prefill_moe_tp_size": 1, "prefill_moe_ep_size": 4,
     "decode_batch_size": 16, "decode_num_workers": 1, "decode_tp_size": 1, "decode_attention_dp_size": 8,
     "decode_moe_tp_size": 1, "decode_moe_ep_size": 8, "silicon_ttft_ms": 2000.0, "silicon_tpot_ms": 30.0},
    {"id": "disagg_no_workers", **DSR1, "mode": "disagg", "silicon_data_source": "x; silicon_concurrency=64; y",
     "prefill_tp_size": 8, "prefill_attention_dp_size": 1, "prefill_moe_tp_size": 1, "prefill_moe_ep_size": 8,
     "decode_tp_size": 8, "decode_attention_dp_size": 1, "decode_moe_tp_size": 1, "decode_moe_ep_size": 8},
    {"id": "unknown_model", **LLAMA, "model_path": "acme/NotAModel-7B", "batch_size": 8},
    {"id": "unknown_system", **LLAMA, "system": "tpu_v99", "batch_size": 8},
    {"id": "no_concurrency", **LLAMA, "batch_size": np.nan},
    {"id": "bad_layout", **LLAMA, "batch_size": 8, "tp_size": 3},
]


@pytest.fixture()
def csv(tmp_path):
    path = tmp_path / "measured.csv"
    pd.DataFrame(ROWS).reindex(columns=COLUMNS).to_csv(path, index=False)
    return path


def test_cli_reports_rows_reasons_and_json_keys(csv, tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main(["validate", "--measurements", str(csv), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "unsupported rows: 4 of 9" in text and "h100_sxm/agg/trtllm" in text
    res = json.loads(out.read_text())
    assert set(res["summary"]) >= {"ttft_mape", "tpot_mape", "ttft_median_ape", "tpot_median_ape", "n",
                                   "n_unsupported", "n_not_recorded"}
    # a supported disagg row without worker counts is "deployment not recorded": counted, not scored
    n_nr = res["summary"]["n_not_recorded"]
    assert n_nr == sum(1 for r in res["rows"] if r["supported"] and "workers" in r["assumed"]) >= 1
    assert res["summary"]["n"] + n_nr == 5 and res["summary"]["n_unsupported"] == 4
    assert "deployment not recorded (disagg without worker counts): 1" in text
    rows = {r["id"]: r for r in res["rows"]}
    assert list(rows) == [r["id"] for r in ROWS]
    for r in rows.values():
        assert {"id", "ttft_ms_pred", "tpot_ms_pred", "ttft_ms_meas", "tpot_ms_meas", "supported", "reason"} <= set(r)
    reasons = {k: r["reason"] for k, r in rows.items() if not r["supported"]}
    assert "unknown model 'acme/NotAModel-7B'" in reasons["unknown_model"]
    assert reasons["unknown_system"] == "unknown system 'tpu_v99'"
    assert reasons["no_concurrency"].startswith("concurrency unknown")
    assert "tp must divide the 64 attention heads" in reasons["bad_layout"]
    for k in ("agg_ok", "agg_dep8", "agg_dep8_as_products", "disagg_ok", "disagg_no_workers"):
        assert rows[k]["supported"] and rows[k]["reason"] == ""
        assert rows[k]["ttft_ms_pred"] > 0 and rows[k]["tpot_ms_pred"] > 0
    assert rows["disagg_no_workers"]["assumed"] == "concurrency,workers"
    # the product encoding of a DEP8 deployment is the same deployment as its plain form
    assert rows["agg_dep8_as_products"]["tpot_ms_pred"] == pytest.approx(rows["agg_dep8"]["tpot_ms_pred"])


def test_mapping_rules():
    df = pd.DataFrame(ROWS).reindex(columns=COLUMNS)
    cfg, _ = validate.row_config(df.iloc[1])
    assert (cfg["batch_size"], cfg["tp"], cfg["dp"], cfg["ep"]) == (256, 1, 8, 8)   # batch per attention-DP rank
    assert cfg["weight_dtype"] == "fp4" and cfg["kv_dtype"] == "fp8" and cfg["backend"] == "trtllm"
    cfg2, _ = validate.row_config(df.iloc[2])
    assert (cfg2["batch_size"], cfg2["dp"], cfg2["ep"]) == (256, 8, 8)
    cfg3, _ = validate.row_config(df.iloc[3])
    assert cfg3["mode"] == "disagg" and cfg3["decode_batch_size"] == 128 and cfg3["decode_dp"] == 8
    assert cfg3["prefill_workers"] == 2 and cfg3["prefill_dp"] == 4 and cfg3["prefill_ep"] == 4
    cfg4, assumed4 = validate.row_config(df.iloc[4])
    assert cfg4["decode_batch_size"] == 64 and cfg4["decode_workers"] == 1 and assumed4 == ["concurrency", "workers"]
    with pytest.raises(DSEError, match="unknown system"):
        validate.row_config(df.iloc[6])


@pytest.mark.parametrize("ep, redundant", [(8, 0), (32, 0), (48, 32), (72, 32), (24, 8)])
def test_wide_expert_parallelism_assumes_the_fewest_redundant_experts(ep, redundant):
    """DeepSeek's 256 experts over EP 48 or 72 (NVL72 wide-EP deployments) run with EPLB
    replicas the file does not record: the fewest that divide (288 slots) are assumed, where
    the row was refused ("ep must divide the 256 experts") before."""
    row = pd.DataFrame([{**DSR1, "id": "x", "mode": "agg", "batch_size": 8, "tp_size": 1, "attention_dp_size": ep,
                         "moe_tp_size": 1, "moe_ep_size": ep}]).reindex(columns=COLUMNS)
    cfg, assumed = validate.row_config(row.iloc[0])
    assert cfg.get("redundant_experts", 0) == redundant and ("redundant_experts" in assumed) == (redundant > 0)
    assert (256 + redundant) % ep == 0
    rows, configs = validate.map_rows(row)
    assert len(configs) == 1 and rows[0]["reason"] == ""


def test_wide_ep_replicas_go_to_the_pool_that_needs_them():
    """Disagg with a DEP48 decode pool and DEP4 prefill workers: the decode pool gets the 32
    replicas and the prefill pool none (a generic redundant_experts would reach both roles)."""
    row = pd.DataFrame([{**ROWS[3], "decode_attention_dp_size": 48, "decode_moe_ep_size": 48}]).reindex(columns=COLUMNS)
    cfg, assumed = validate.row_config(row.iloc[0])
    assert cfg["decode_redundant_experts"] == 32 and cfg.get("prefill_redundant_experts", 0) == 0
    assert "redundant_experts" not in cfg and "redundant_experts" in assumed


@pytest.mark.parametrize("gemm, moe, model, weights", [
    ("sq", "", "meta-llama/Llama-3.1-70B", "int8"), ("fp8_static", "", "meta-llama/Llama-3.1-70B", "fp8"),
    ("fp8_ootb", "", "meta-llama/Llama-3.1-70B", "fp8"), ("fp8_block", "w4afp8", "deepseek-ai/DeepSeek-R1", "int4"),
    ("nvfp4", "w4a8_mxfp4_mxfp8_trtllm", "deepseek-ai/DeepSeek-R1", "fp4")])
def test_aiconfigurator_quant_modes_map_to_formats(gemm, moe, model, weights):
    """Every GEMM / MoE quant mode AIConfigurator records names a format (an unknown one fell
    through to the next column: w4afp8 experts were read at fp8_block's byte per weight)."""
    row = pd.DataFrame([{**LLAMA, "id": "x", "model_path": model, "batch_size": 8, "gemm_quant_mode": gemm,
                         "moe_quant_mode": moe or np.nan, "precision": np.nan}])
    cfg, _ = validate.row_config(row.reindex(columns=COLUMNS).iloc[0])
    assert cfg["weight_dtype"] == weights


@pytest.mark.parametrize("system, device", [("gb200_sxm", "gb200"), ("h20_sxm", "h20"), ("gb200", "gb200"),
                                            ("l4", "l4"), ("a100_pcie", "a100_pcie"), ("b300_sxm", "b300_sxm")])
def test_measurement_files_name_systems_as_aiconfigurator_does(system, device):
    """A measured row's system is AIConfigurator's name for it (earlier releases' too)."""
    row = pd.DataFrame([{**LLAMA, "id": "x", "system": system, "batch_size": 8}])
    cfg, _ = validate.row_config(row.reindex(columns=COLUMNS).iloc[0])
    assert cfg["device"] == device


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(DSEError, match="no such file"):
        validate.validate_measurements(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,system\n1,h100_sxm\n")
    with pytest.raises(DSEError, match="missing column 'model_path'"):
        validate.validate_measurements(bad)


def test_shipped_serving_constants_have_provenance():
    from importlib import resources
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(str(resources.files("dse.hardware"))) / "serving_runtime.yaml").read_text())
    assert set(doc["backends"]) == {"default", "trtllm", "vllm", "sglang"}
    for c in doc["backends"].values():
        assert c["request_ms"] >= 0 and c["step_ms"] >= 0 and c.get("rounds", 1.0) >= 1
    assert doc["benchmark"]["rounds"] >= 1
    assert "python -m dse.fit.serving" in doc["source"]["command"] and doc["source"]["date"]
    assert {"fit_h100_sxm_score_b200_sxm", "fit_b200_sxm_score_h100_sxm"} <= set(doc["cross_system"])


def test_repeats_count_rows_whose_identical_inputs_disagree():
    base = {"model_path": "m", "system": "b200_sxm", "mode": "agg", "isl": 1024, "osl": 128, "batch_size": 8,
            "tp_size": 8, "silicon_ttft_ms": 100.0}
    df = pd.DataFrame([
        {**base, "id": "a", "silicon_tpot_ms": 10.0, "silicon_data_source": "run=1; silicon_concurrency=8"},
        {**base, "id": "b", "silicon_tpot_ms": 20.0, "silicon_data_source": "run=2; silicon_concurrency=8"},
        {**base, "id": "c", "silicon_tpot_ms": 11.0, "silicon_data_source": "run=3; silicon_concurrency=16"},
        {**base, "id": "d", "silicon_tpot_ms": 11.5, "silicon_data_source": "run=4; silicon_concurrency=8",
         "osl": 256},
        {**base, "id": "e", "silicon_tpot_ms": 30.0, "silicon_data_source": "run=5; silicon_concurrency=8",
         "osl": 256, "mode": "disagg"},
    ])
    rep = validate.repeats(df)
    # a and b: same inputs, 2x apart; c differs in concurrency, d in osl, e in mode
    assert rep == {"b200_sxm/agg": {"n": 2, "of": 4, "max_spread": 2.0}}


BAD_ROWS = [
    ({"isl": "abc"}, "isl 'abc' is not a whole number >= 1"),
    ({"isl": 0}, "isl 0 is not a whole number >= 1"),
    ({"osl": -3}, "osl -3 is not a whole number >= 1"),
    ({"tp_size": 0}, "tp_size 0 is not a whole number >= 1"),
    ({"tp_size": 2.5}, "tp_size 2.5 is not a whole number >= 1"),
    ({"tp_size": np.nan}, "tp_size is blank"),
    ({"batch_size": -4}, "batch_size -4 is not a number > 0"),
    ({"batch_size": "many"}, "batch_size 'many' is not a number > 0"),
    ({"pp_size": 1000}, "pp must not exceed the 80 layers"),
    ({"attention_dp_size": np.inf}, "attention_dp_size inf is not a whole number >= 1"),
]


@pytest.mark.parametrize("change, reason", BAD_ROWS)
def test_bad_row_figures_make_the_row_unsupported_never_modelled_as_one(tmp_path, change, reason):
    """A nonsense figure in a row is that row's reason; the good row's figures are untouched."""
    path = tmp_path / "m.csv"
    good = {"id": "good", **LLAMA, "batch_size": 16}
    pd.DataFrame([good, {**good, "id": "bad", **change}]).reindex(columns=COLUMNS).to_csv(path, index=False)
    res = validate.validate_measurements(path)
    rows = {r["id"]: r for r in res["rows"]}
    assert not rows["bad"]["supported"] and pd.isna(rows["bad"]["tpot_ms_pred"])
    assert reason in rows["bad"]["reason"]
    assert res["summary"]["n"] == 1 and res["summary"]["n_unsupported"] == 1
    alone = tmp_path / "alone.csv"
    pd.DataFrame([good]).reindex(columns=COLUMNS).to_csv(alone, index=False)
    assert validate.validate_measurements(alone)["summary"] == {**res["summary"], "n_unsupported": 0}


def test_empty_and_header_only_files_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DSEError, match=r"empty\.csv: empty file"):
        validate.read_measurements(empty)
    header = tmp_path / "header.csv"
    header.write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(DSEError, match=r"header\.csv: no rows"):
        validate.read_measurements(header)
    gz = tmp_path / "broken.csv.gz"
    gz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DSEError, match="not a readable CSV"):
        validate.read_measurements(gz)


def test_every_row_unsupported_still_reports(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame([{"id": "x", **LLAMA, "batch_size": 8, "isl": 0}]).reindex(columns=COLUMNS).to_csv(path, index=False)
    res = validate.validate_measurements(path)
    assert res["summary"]["n"] == 0 and res["summary"]["n_unsupported"] == 1
    assert "unsupported rows: 1 of 1" in res["table"]
