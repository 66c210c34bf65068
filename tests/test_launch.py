"""dse.launch and `dse deploy`: the flags written are the engines' listed names, with the
configuration's layout; inexpressible configurations are reasons, not files."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dse.api import evaluate
from dse.cli import main
from dse.errors import DSEError
from dse.launch import BACKENDS, engines, flag_names, load_engines, plan, write

DENSE = "meta-llama/Llama-3.1-70B"
MOE = "Qwen/Qwen3-30B-A3B"


def _exec_argv(path: Path) -> list[str]:
    """The command line of serve.sh / bench.sh, parsed back as the shell would split it."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith(("exec ", "vllm ", "python ", "aiperf "))]
    assert len(lines) == 1, path.read_text()
    argv = shlex.split(lines[0])
    return argv[1:] if argv[0] == "exec" else argv


def _flag_values(argv: list[str]) -> dict[str, str | bool]:
    out: dict[str, str | bool] = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[a] = nxt if nxt is not None and not nxt.startswith("--") else True
    return out


def _flags(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith("--")}


AGG = dict(model=DENSE, device="h100_sxm", mode="agg", tp=4, pp=2, weight_dtype="fp8", kv_dtype="fp8",
           batch_size=48, isl=3000, osl=700, config_id=7)


@pytest.mark.parametrize("backend", ["vllm", "sglang", "trtllm"])
def test_serve_flags_are_listed_names_with_the_layout(tmp_path, backend):
    p = plan(AGG, backend)
    assert p.ok, p.reasons
    (d,) = write([p], tmp_path)
    argv = _exec_argv(d / "serve.sh")
    spec = engines()[backend]
    assert argv[: len(spec["serve"]["command"])] == spec["serve"]["command"]
    written = _flags(argv)
    assert written <= flag_names(backend), written - flag_names(backend)
    f, names = _flag_values(argv), spec["serve"]["flags"]
    assert int(f[names["tp"]]) == 4 and int(f[names["pp"]]) == 2
    assert int(f[names["max_seqs"]]) == 48
    if backend == "trtllm":
        opts = yaml.safe_load((d / "extra_llm_api_options.yaml").read_text())
        assert set(opts) <= {k.split(".")[0] for k in spec["serve"]["options"].values()}
        assert opts["tensor_parallel_size"] == 4 and opts["pipeline_parallel_size"] == 2
        assert opts["kv_cache_config"] == {"dtype": "fp8"}
        assert f[names["extra_options"]] == "extra_llm_api_options.yaml"
    else:
        assert f[names["kv_cache_dtype"]] == spec["kv"]["fp8"]
        assert f[names["quantization"]] == "fp8"


def test_moe_layouts_per_engine():
    row = dict(model=MOE, device="h100_sxm", tp=1, dp=8, ep=8, batch_size=64, weight_dtype="bf16", kv_dtype="bf16")
    v = _flag_values(plan(row, "vllm").serve["agg"])
    assert v["--tensor-parallel-size"] == "1" and v["--data-parallel-size"] == "8" and v["--enable-expert-parallel"]
    s = _flag_values(plan(row, "sglang").serve["agg"])
    assert (s["--tp-size"], s["--dp-size"], s["--ep-size"]) == ("8", "8", "8") and s["--enable-dp-attention"]
    t = plan(row, "trtllm")
    assert _flag_values(t.serve["agg"])["--tp_size"] == "8" and _flag_values(t.serve["agg"])["--ep_size"] == "8"
    assert t.extra_options["enable_attention_dp"] is True and t.extra_options["moe_expert_parallel_size"] == 8
    # sglang world TP = attention TP x DP
    s2 = _flag_values(plan({**row, "tp": 2, "dp": 4, "ep": 4}, "sglang").serve["agg"])
    assert (s2["--tp-size"], s2["--dp-size"], s2["--ep-size"]) == ("8", "4", "4")


@pytest.mark.parametrize("row, backend, words", [
    (dict(AGG, device="mi300x"), "trtllm", "mi300x (amd)"),
    (dict(AGG, device="mi300x"), "dynamo", "mi300x (amd)"),
    (dict(AGG, device="gaudi3"), "vllm", "gaudi3 (intel)"),
    (dict(AGG, mode="afd", attn_gpus=4, attn_tp=2, ffn_gpus=4), "vllm", "afd"),
    (dict(AGG, mode="afd", attn_gpus=4, attn_tp=2, ffn_gpus=4), "dynamo", "afd"),
    (dict(AGG, kv_dtype="int4"), "sglang", "KV cache int4"),
    (dict(AGG, kv_dtype="int8"), "trtllm", "KV cache int8"),
    (dict(model=MOE, device="h100_sxm", tp=2, dp=4, ep=2), "vllm", "ep 2"),
    (dict(model=MOE, device="h100_sxm", tp=2, dp=4, ep=8), "trtllm", "attention TP 2 with attention DP 4"),
    (dict(AGG, tp=2, dp=2), "vllm", "dense model"),
    (dict(AGG, spec_tokens=2), "sglang", "speculative"),
    (dict(AGG, mode="disagg"), "vllm", "--backend dynamo"),
])
def test_inexpressible_is_a_reason_and_no_file(tmp_path, row, backend, words):
    p = plan(row, backend)
    assert not p.ok and any(words in r for r in p.reasons), p.reasons
    assert p.serve == {} and p.graph is None and p.bench == []
    assert write([p], tmp_path) == []
    assert not (tmp_path / p.name).exists()
    assert words in (tmp_path / "README.md").read_text()


def test_disagg_dynamo_graph_has_prefill_and_decode_workers(tmp_path):
    row = dict(model=DENSE, device="b200_sxm", mode="disagg", tp=4, prefill_tp=2, prefill_workers=3,
               decode_workers=2, batch_size=32, weight_dtype="fp8", kv_dtype="fp8", isl=4096, osl=512, config_id=3)
    p = plan(row, "dynamo")
    assert p.ok, p.reasons
    (d,) = write([p], tmp_path)
    g = yaml.safe_load((d / "dynamo_graph.yaml").read_text())
    assert g["kind"] == "DynamoGraphDeployment"
    svc = g["spec"]["services"]
    pre, dec = svc["VllmPrefillWorker"], svc["VllmDecodeWorker"]
    assert (pre["subComponentType"], pre["replicas"], pre["resources"]["limits"]["gpu"]) == ("prefill", 3, "2")
    assert (dec["subComponentType"], dec["replicas"], dec["resources"]["limits"]["gpu"]) == ("decode", 2, "4")
    for s, tp in ((pre, "2"), (dec, "4")):
        args = s["extraPodSpec"]["mainContainer"]["args"]
        assert _flags(args) <= flag_names("dynamo")
        f = _flag_values(args)
        assert f["--tensor-parallel-size"] == tp and f["--model"] == DENSE
        assert json.loads(f["--kv-transfer-config"])["kv_connector"] == "NixlConnector"
    assert _flag_values(dec["extraPodSpec"]["mainContainer"]["args"])["--max-num-seqs"] == "32"
    # the benchmark drives both decode workers full: 2 x 32 requests in flight
    b = _flag_values(_exec_argv(d / "bench.sh"))
    assert b["--concurrency"] == "64"
    dep = json.loads((d / "deployment.json").read_text())
    assert (dep["prefill_num_workers"], dep["decode_num_workers"], dep["decode_tp_size"]) == (3, 2, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bench_carries_isl_osl_concurrency(tmp_path, backend):
    p = plan(AGG, backend)
    (d,) = write([p], tmp_path)
    argv = _exec_argv(d / "bench.sh")
    e = engines()[backend]
    tool = e["bench"] if isinstance(e["bench"], dict) else engines()["aiperf"]
    assert argv[: len(tool["command"])] == tool["command"]
    assert _flags(argv) <= set(tool["flags"].values()) | set(tool["names"])
    f = _flag_values(argv)
    names = tool["flags"]
    assert (f[names["isl"]], f[names["osl"]], f[names["concurrency"]]) == ("3000", "700", "48")
    assert int(f[names["num_prompts"]]) >= 48


def test_predictions_in_readme_and_deployment(tmp_path):
    row = evaluate(**{k: v for k, v in AGG.items() if k != "config_id"}).iloc[0].to_dict() | {"config_id": 7}
    (d,) = write([plan(row, "vllm")], tmp_path)
    dep = json.loads((d / "deployment.json").read_text())
    assert dep["predicted"]["ttft_ms"] == pytest.approx(row["ttft_ms"])
    assert dep["tp_size"] == 4 and dep["pp_size"] == 2 and dep["batch_size"] == 48
    assert f"{row['tpot_ms']:,.4g}" in (d / "README.md").read_text()


def _run_dir(tmp_path: Path, rec: bool) -> Path:
    df = evaluate(model=DENSE, device=["h100_sxm", "b200_sxm", "mi300x"], tp=[4, 8, 8], batch_size=[16, 32, 8],
                  weight_dtype="fp8", kv_dtype="fp8", isl=2048, osl=256)
    df.insert(0, "config_id", [11, 22, 33])
    run = tmp_path / "run"
    run.mkdir()
    df.to_csv(run / "pareto.csv", index=False)
    if rec:
        pick = lambda i: {"config_id": i, "configuration": {}}  # noqa: E731
        (run / "recommendation.json").write_text(json.dumps({"best": {"e2e_ms": pick(33), "usd_per_mtok": pick(11)},
                                                             "balanced": pick(33)}))
    return run


def test_cli_deploy_reads_recommendation_in_order(tmp_path, capsys):
    run = _run_dir(tmp_path, rec=True)
    assert main(["deploy", str(run), "--backend", "all"]) == 0
    out = capsys.readouterr().out
    assert out.index("config 33 on vllm") < out.index("config 11 on vllm")
    written = sorted(p.name for p in (run / "deploy").iterdir() if p.is_dir())
    # 33 is an AMD device: vllm and sglang only; 11 runs everywhere; where an engine cannot run a
    # pick, the next Pareto row it can (22) takes its place, so every engine gets two
    assert written == ["config_11_dynamo", "config_11_sglang", "config_11_trtllm", "config_11_vllm",
                       "config_22_dynamo", "config_22_trtllm", "config_33_sglang", "config_33_vllm"]
    assert "config 33 on trtllm: not expressible" in out


def test_cli_deploy_top_rows_without_recommendation(tmp_path):
    run = _run_dir(tmp_path, rec=False)
    assert main(["deploy", str(run), "--top", "2", "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_dir()) == ["config_11_vllm", "config_22_vllm"]


def test_cli_deploy_errors_are_one_line(tmp_path, capsys):
    assert main(["deploy", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dse: error: deploy: ") and "not a results directory" in err and err.count("\n") == 1
    run = _run_dir(tmp_path, rec=True)
    (run / "recommendation.json").write_text(json.dumps({"best": {"x": {"config_id": 999}}}))
    assert main(["deploy", str(run)]) == 2
    assert "config_id 999 is not in" in capsys.readouterr().err


def test_engines_file_errors_name_file_and_key(tmp_path):
    data = yaml.safe_load((Path(__file__).parents[1] / "hardware" / "engines.yaml").read_text())
    del data["sglang"]["kv"]
    bad = tmp_path / "engines.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(DSEError, match=r"engines.yaml: sglang.kv: missing"):
        load_engines(bad)
    with pytest.raises(DSEError, match="backend 'tgi'"):
        plan(AGG, "tgi")


def test_every_engine_cites_version_and_sources():
    for name, e in engines().items():
        assert str(e["version"]).strip() and e["sources"], name
        assert all(("http" in s or "@" in s) for s in e["sources"].values() if "engine arguments above" not in s), name


def test_rows_from_a_results_csv_resolve_blank_role_columns(tmp_path):
    df = pd.DataFrame([dict(AGG, mode="disagg", prefill_device=None, decode_device=None, prefill_tp=None,
                            decode_tp=None, prefill_workers=2, decode_workers=1)])
    df.to_csv(tmp_path / "p.csv", index=False)
    row = pd.read_csv(tmp_path / "p.csv").iloc[0]
    p = plan(row, "dynamo")
    assert p.ok, p.reasons
    assert [(x.role, x.device, x.tp, x.workers) for x in p.pools] == [("prefill", "h100_sxm", 4, 2),
                                                                      ("decode", "h100_sxm", 4, 1)]


def test_deploy_the_quickstart_run_for_every_backend(tmp_path, capsys):
    """`dse deploy RUN --top 3 --backend all` on a real quickstart sweep: three launch
    directories per engine (a pick an engine cannot run gives way to the best it can), every
    flag written a name engines.yaml lists for that engine, the layout the row's."""
    import dse
    root = Path(__file__).resolve().parents[1]
    run = dse.sweep(root / "search_spaces" / "quickstart.yaml", out=tmp_path / "q").run_dir
    assert main(["deploy", str(run), "--top", "3", "--backend", "all"]) == 0
    dirs = [p for p in (run / "deploy").iterdir() if p.is_dir()]
    by = {b: [d for d in dirs if d.name.endswith(f"_{b}")] for b in ("vllm", "sglang", "trtllm", "dynamo")}
    assert all(len(v) == 3 for v in by.values()), {b: len(v) for b, v in by.items()}
    for b in ("vllm", "sglang", "trtllm"):
        for d in by[b]:
            argv = _exec_argv(d / "serve.sh")
            assert _flags(argv) <= flag_names(b), _flags(argv) - flag_names(b)
            dep = json.loads((d / "deployment.json").read_text())
            f, names = _flag_values(argv), engines()[b]["serve"]["flags"]
            assert int(f[names["tp"]]) == dep["tp_size"]
    for d in by["dynamo"]:
        graph = yaml.safe_load((d / "dynamo_graph.yaml").read_text())
        services = graph["spec"]["services"]
        mode = json.loads((d / "deployment.json").read_text())["mode"]
        want = {"VllmPrefillWorker", "VllmDecodeWorker"} if mode == "disagg" else {"VllmWorker"}
        assert want <= set(services), (mode, set(services))
