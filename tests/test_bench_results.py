"""dse.fit.bench_results: benchmark result files (vLLM, SGLang, AIPerf) back into the rows
`dse validate --measurements` models."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dse.api import evaluate
from dse.deploy.explain import check_config
from dse.errors import DSEError
from dse.fit.bench_results import MEASURED_COLUMNS, main, read_bench_results, read_result_file
from dse.fit.validate import row_config, validate_measurements
from dse.launch import plan, write

DATA = Path(__file__).parent / "data" / "bench"


def test_vllm_result_json():
    (r,) = read_bench_results(DATA / "vllm" / "results" / "bench.json").to_dict(orient="records")
    assert (r["silicon_ttft_ms"], r["silicon_tpot_ms"], r["p99_ttft_ms"], r["median_tpot_ms"]) == (231.4, 21.75,
                                                                                                  402.7, 21.6)
    assert (r["concurrency"], r["isl"], r["osl"], r["output_tokens_per_s"]) == (32, 1024, 256, 1407.3)
    assert (r["backend"], r["system"], r["tp_size"], r["batch_size"], r["mode"]) == ("vllm", "h100_sxm", 4, 32, "agg")
    assert r["tool"] == "vllm bench serve" and r["dse_config_id"] == "101"


def test_sglang_jsonl_one_row_per_line_and_concurrency_rescales_batch():
    df = read_bench_results(DATA / "sglang" / "results")
    assert list(df.silicon_tpot_ms) == [22.91, 13.13]
    assert list(df.concurrency) == [16, 8] and list(df.batch_size) == [16, 8]
    assert list(df.isl) == [2048, 2048] and list(df.osl) == [512, 512]
    assert df.id.is_unique


def test_aiperf_json_and_csv_agree():
    j = read_result_file(DATA / "aiperf" / "results" / "profile_export_aiperf.json")[0]
    c = read_result_file(DATA / "aiperf" / "results" / "profile_export_aiperf.csv")[0]
    for k in ("silicon_ttft_ms", "silicon_tpot_ms", "p99_ttft_ms", "median_tpot_ms", "output_tokens_per_s"):
        assert j[k] == c[k], k
    assert (j["silicon_ttft_ms"], j["silicon_tpot_ms"], j["concurrency"], j["isl"], j["osl"]) == (1832.6, 54.04, 128,
                                                                                                  4096, 1024)
    assert np.isnan(c["concurrency"])            # the CSV does not record it: the deployment's is used
    rows = read_bench_results([DATA / "aiperf" / "results" / "profile_export_aiperf.csv"])
    assert rows.concurrency.iloc[0] == 128 and rows.decode_batch_size.iloc[0] == 64


def test_rows_have_the_measured_columns_and_dse_models_them():
    df = read_bench_results([DATA / "vllm" / "results", DATA / "sglang" / "results", DATA / "aiperf" / "results"])
    assert list(df.columns[: len(MEASURED_COLUMNS)]) == list(MEASURED_COLUMNS)
    cfgs = []
    for _, r in df.iterrows():
        cfg, assumed = row_config(r)
        assert assumed == []
        check_config(**cfg)
        cfgs.append(cfg)
    assert [c["mode"] for c in cfgs] == ["agg", "agg", "agg", "disagg"]
    assert (cfgs[3]["prefill_workers"], cfgs[3]["decode_workers"], cfgs[3]["decode_batch_size"]) == (2, 2, 64)
    pred = evaluate(**{k: [c.get(k) for c in cfgs] for k in cfgs[0]})
    assert np.isfinite(pred.ttft_ms).all() and (pred.tpot_ms > 0).all()


def test_round_trip_plan_bench_validate(tmp_path):
    """dse deploy's deployment.json + a benchmark result -> the configuration dse planned."""
    row = dict(model="Qwen/Qwen3-30B-A3B", device="h100_sxm", tp=2, dp=2, ep=4, batch_size=24, isl=1500, osl=300,
               weight_dtype="fp8", kv_dtype="fp8", backend="sglang", config_id=5)
    p = plan(row, "sglang")
    (d,) = write([p], tmp_path)
    res = json.loads((DATA / "sglang" / "results" / "bench.jsonl").read_text().splitlines()[0])
    res.update(max_concurrency=24, random_input_len=1500, random_output_len=300)
    (d / "results").mkdir()
    (d / "results" / "bench.jsonl").write_text(json.dumps(res) + "\n")
    (r,) = [x for _, x in read_bench_results(d / "results").iterrows()]
    cfg, _ = row_config(r)
    assert {k: cfg[k] for k in ("device", "tp", "dp", "ep", "pp", "batch_size", "isl", "osl", "weight_dtype",
                                "kv_dtype", "backend", "mode")} == {
        "device": "h100_sxm", "tp": 2, "dp": 2, "ep": 4, "pp": 1, "batch_size": 24, "isl": 1500, "osl": 300,
        "weight_dtype": "fp8", "kv_dtype": "fp8", "backend": "sglang", "mode": "agg"}
    out = tmp_path / "measured.csv"
    assert main([str(d / "results"), "--out", str(out)]) == 0
    res = validate_measurements(out)
    assert res["rows"][0]["supported"] and res["rows"][0]["ttft_ms_pred"] > 0


def test_explicit_deployment_and_errors(tmp_path):
    f = tmp_path / "bench.json"
    shutil.copy(DATA / "vllm" / "results" / "bench.json", f)
    with pytest.raises(DSEError, match="no deployment.json beside it"):
        read_bench_results(f)
    df = read_bench_results(f, DATA / "vllm" / "deployment.json")
    assert df.tp_size.iloc[0] == 4
    f.write_text("{not json")
    with pytest.raises(DSEError, match=r"bench\.json: not JSON"):
        read_result_file(f)
    f.write_text(json.dumps({"completed": 3}))
    with pytest.raises(DSEError, match="no mean_ttft_ms"):
        read_result_file(f)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DSEError, match="no benchmark result files"):
        read_bench_results(tmp_path / "empty_dir")
    bad_csv = tmp_path / "x.csv"
    pd.DataFrame({"a": [1]}).to_csv(bad_csv, index=False)
    with pytest.raises(DSEError, match="not an AIPerf"):
        read_result_file(bad_csv)


def test_cli_main_reports_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope.json"), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dse: error: bench: ") and err.count("\n") == 1


def test_dse_validate_reads_benchmark_result_files(tmp_path, capsys):
    """`dse validate --measurements` takes a benchmark's own result files (here vLLM's
    --save-result JSON and an AIPerf export) as well as the measured-deployment CSV."""
    from dse.cli import main
    root = Path(__file__).resolve().parent / "data" / "bench"
    for sample in (root / "vllm" / "results" / "bench.json", root / "aiperf" / "results"):
        out = tmp_path / f"{sample.parent.name}.json"
        assert main(["validate", "--measurements", str(sample), "--json", str(out)]) == 0
        summary = json.loads(out.read_text())["summary"]
        assert summary["n"] >= 1 and summary["n_unsupported"] == 0 and summary["tpot_median_ape"] is not None
