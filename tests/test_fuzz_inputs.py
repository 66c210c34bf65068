"""Bad input, at random: every shipped model config, a measured-deployment CSV and
evaluate's columns, mutated with NaN / inf / negative / zero / huge / wrong-type / missing
values. Each must end in a one-line DSEError that names the file or column and the key,
or in a documented handled outcome (the value is allowed; the row is unsupported or
infeasible with its reason) -- never a traceback, and never a feasible row with a NaN or
infinite metric (tests/conftest.py makes the engine's output guard raise on one)."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dse
from dse.catalog.models import _configs_dir, get_model, parse_config
from dse.cli import main
from dse.errors import DSEError
from dse.fit import validate
from dse.schema import COLUMNS, METRICS, NON_NUMERIC_METRICS

CONFIGS = sorted(_configs_dir().glob("*_config.json"))
MEASURED = Path(__file__).resolve().parents[2] / "shared" / "calibration" / "silicon_h100_b200.csv.gz"
DELETE = object()       # the mutation "remove the key / column"
BAD = [math.nan, math.inf, -math.inf, -1, 0, 1.5, 10**30, 2**40, "abc", "", None, True, [3], {"a": 1}, DELETE]
# the keys dse.catalog.models reads
MODEL_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "sliding_window", "layer_types", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "q_lora_rank",
              "kv_lora_rank", "index_topk", "index_head_dim", "index_n_heads", "attn_output_gate", "global_head_dim",
              "num_global_key_value_heads", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
              "linear_value_head_dim", "linear_conv_kernel_dim", "n_routed_experts", "num_experts",
              "num_local_experts", "num_experts_per_tok", "intermediate_size", "moe_intermediate_size",
              "shared_expert_intermediate_size", "n_shared_experts", "first_k_dense_replace", "mlp_only_layers",
              "moe_layer_freq", "decoder_sparse_step", "vocab_size", "tie_word_embeddings",
              "num_nextn_predict_layers", "text_config"]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def assert_one_line(msg: str, *names: str) -> None:
    assert "\n" not in msg and len(msg) <= 300, msg
    for name in names:
        assert name in msg, (name, msg)


def assert_no_bad_feasible_row(df: pd.DataFrame) -> None:
    feas = df[df.feasible]
    for m in METRICS:
        if m in NON_NUMERIC_METRICS:
            continue
        v = feas[m].to_numpy(float)
        ok = ~np.isnan(v) if m == "usd_per_mtok_at_slo" else np.isfinite(v)
        assert ok.all(), (m, v[~ok][:3])


# -- model configs ------------------------------------------------------------------------

@FUZZ
@given(path=st.sampled_from(CONFIGS), key=st.sampled_from(MODEL_KEYS), value=st.sampled_from(BAD))
def test_mutated_model_configs(path, key, value):
    top = json.loads(path.read_text())
    cfg = top["text_config"] if isinstance(top.get("text_config"), dict) and key != "text_config" else top
    if value is DELETE:
        cfg.pop(key, None)
    else:
        cfg[key] = value
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "config.json"
        file.write_text(json.dumps(top))           # NaN / Infinity as Python's json writes them
        try:
            model = get_model(str(file))
        except DSEError as exc:
            # the file, and the key (or, for a key that only shapes another, the key it broke)
            assert_one_line(str(exc), str(file))
            assert key in str(exc) or "not supported yet" in str(exc) or _names_a_model_key(str(exc)), str(exc)
            return
        # a handled outcome: the key does not matter to this architecture, or the value is allowed
        assert model.num_layers >= 1 and 0 < model.active_params() <= model.total_params()
        assert all(g.attention.kind == "linear" or g.attention.num_kv_heads >= 1 for g in model.groups)
        df = dse.evaluate(strict=False, model=str(file), device=["h100_sxm", "b200_sxm"], tp=[1, 8],
                          batch_size=[1, 64])
        assert_no_bad_feasible_row(df)


def _names_a_model_key(msg: str) -> bool:
    return any(k in msg for k in MODEL_KEYS + ["sliding_attention"])


def test_every_shipped_config_loads_or_says_why_in_one_line():
    for path in CONFIGS:
        try:
            parse_config(json.loads(path.read_text()), model_id=path.stem, source=str(path))
        except DSEError as exc:
            assert_one_line(str(exc), str(path), "not supported yet")


# -- measurement CSVs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    df = pd.read_csv(MEASURED)
    return pd.concat([df[df["mode"] == "agg"].sample(10, random_state=1),
                      df[df["mode"] == "disagg"].sample(5, random_state=1)]).reset_index(drop=True)


CSV_COLUMNS = ["isl", "osl", "batch_size", "tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size",
               "decode_batch_size", "decode_num_workers", "prefill_num_workers", "prefill_tp_size", "decode_tp_size",
               "silicon_ttft_ms", "silicon_tpot_ms", "system", "mode", "model_path"]
CSV_BAD = [math.nan, math.inf, -math.inf, -4, 0, 1.5, 10**12, "abc", "", DELETE]
# (column, modes whose rows read it): a value that is no count there makes the row unsupported
COUNTS = {"isl": ("agg", "disagg"), "osl": ("agg", "disagg"), "tp_size": ("agg",), "pp_size": ("agg",),
          "attention_dp_size": ("agg",), "prefill_tp_size": ("disagg",), "decode_tp_size": ("disagg",),
          "decode_num_workers": ("disagg",), "prefill_num_workers": ("disagg",)}


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(col=st.sampled_from(CSV_COLUMNS), value=st.sampled_from(CSV_BAD),
       rows=st.sets(st.integers(0, 14), min_size=1, max_size=4))
def test_mutated_measurement_csv(sample, tmp_path, col, value, rows):
    df = sample.copy()
    if value is DELETE:
        df = df.drop(columns=[col])
    else:
        df[col] = df[col].astype(object)
        df.loc[sorted(rows), col] = value
    path = tmp_path / "measured.csv"
    df.to_csv(path, index=False)
    try:
        res = validate.validate_measurements(path)
    except DSEError as exc:                       # only a file-level problem: a required column gone
        assert value is DELETE and col in validate.REQUIRED
        assert_one_line(str(exc), str(path), repr(col))
        return
    got = {r["id"]: r for r in res["rows"]}
    assert len(got) == len(df)
    for r in got.values():
        if r["supported"]:
            assert np.isfinite(r["ttft_ms_pred"]) and r["ttft_ms_pred"] > 0 and r["tpot_ms_pred"] > 0
        else:
            assert r["reason"]
    assert res["summary"]["n"] + res["summary"]["n_not_recorded"] == sum(r["supported"] for r in got.values())
    nonsense = value in (-4, 0, 1.5, "abc", math.inf, -math.inf) and col in COUNTS
    for i in rows if nonsense else ():
        if df.loc[i, "mode"] in COUNTS[col] and not (col.startswith("moe_") and value == 0):
            assert not got[df.loc[i, "id"]]["supported"], (col, value)   # never modelled as 1
            assert col in got[df.loc[i, "id"]]["reason"]
    for s in [res["summary"], *res["groups"].values()]:
        if s["n"]:
            assert np.isfinite(s["ttft_mape"]) and np.isfinite(s["tpot_mape"])


# -- evaluate's columns -------------------------------------------------------------------

EV_BAD = [math.nan, math.inf, -math.inf, -1, 0, 0.5, 1.5, 10**12, "abc", "", None, True, "no", b"x", [1, 2]]


@FUZZ
@given(col=st.sampled_from(sorted(COLUMNS)), value=st.sampled_from(EV_BAD), row=st.integers(-1, 2))
def test_mutated_evaluate_columns(col, value, row):
    cols = {"model": "meta-llama/Llama-3.1-8B", "device": "h100_sxm", "batch_size": [1, 16, 64]}
    base = cols.get(col, COLUMNS[col])
    if row < 0:
        cols[col] = value                                      # as a scalar
    else:
        vals = list(base) if isinstance(base, list) else [base] * 3
        vals[row] = value
        cols[col] = vals
    try:
        df = dse.evaluate(strict=False, **cols)
    except DSEError as exc:
        assert_one_line(str(exc), col)
        return
    assert len(df) == (1 if col == "batch_size" and row < 0 else 3)   # batch_size is the one list column
    assert_no_bad_feasible_row(df)


@pytest.mark.parametrize("col, value", [("prefix_hit", [0.0, math.nan]), ("device", ["h100_sxm", None]),
                                        ("own", "no"), ("own", None), ("ttft_slo_ms", math.nan), ("tp", 0),
                                        ("isl", "512"), ("power_cap", 0.0), ("spec_tokens", 1.5)])
def test_known_bad_columns_are_refused_naming_column_and_row(col, value):
    with pytest.raises(DSEError) as err:
        dse.evaluate(**{"model": "meta-llama/Llama-3.1-8B", "device": "h100_sxm", col: value})
    assert_one_line(str(err.value), f"evaluate: {col} ", "; got ")
    if isinstance(value, list):
        assert str(err.value).endswith(" in row 1")


def test_allowed_limits_and_defaults_still_evaluate():
    df = dse.evaluate(model="meta-llama/Llama-3.1-8B", device="h100_sxm", own=[True, False], ttft_slo_ms=math.inf,
                      bench_rounds=math.inf, spec_acceptance=[math.nan, 0.7], prefix_hit=0.0, decode_tp=0)
    assert df.feasible.all() and (df.usd_per_mtok > 0).all()
    assert df.usd_per_mtok[0] != df.usd_per_mtok[1]      # own vs rent


def test_pp_above_the_layers_is_infeasible_structure():
    df = dse.evaluate(strict=False, model="meta-llama/Llama-3.1-8B", device="h100_sxm", pp=[1, 32, 33, 1000])
    assert df.feasible.tolist() == [True, True, False, False]
    assert (df.infeasible_code[2:] == "structure").all()
    assert df.infeasible_reason[3] == "pp must not exceed the 32 layers"
    with pytest.raises(DSEError, match="pp must not exceed the 32 layers"):
        dse.evaluate(model="meta-llama/Llama-3.1-8B", device="h100_sxm", pp=1000)


# -- the output guard ---------------------------------------------------------------------

def _nan_device(tmp_path) -> str:
    import yaml

    data = yaml.safe_load((Path(dse.__file__).resolve().parents[1] / "hardware" / "devices" / "h100_sxm.yaml")
                          .read_text())
    data.update(id="nan_gpu", price_usd=float("nan"))
    path = tmp_path / "nan_gpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_output_guard_flags_in_production_and_raises_under_tests(tmp_path, monkeypatch):
    from dse.deploy.evaluate import guard_output
    from dse.deploy.reasons import Reasons

    metrics = {m: np.ones(3) for m in METRICS if m not in ("feasible", "infeasible_reason", "bottleneck")}
    metrics["tpot_ms"][1] = np.nan
    metrics["usd_per_mtok_at_slo"][2] = np.inf          # documented: no load meets the SLO
    reasons = Reasons(3)
    with pytest.raises(RuntimeError, match="feasible row 1 has tpot_ms = nan"):
        guard_output({k: v.copy() for k, v in metrics.items()}, reasons, {}, {})
    monkeypatch.setenv("DSE_STRICT_OUTPUT", "0")
    guard_output(metrics, reasons, {}, {})
    assert reasons.codes.tolist() == [0, 1, 0] and reasons.kinds[1] == "numeric"
    assert metrics["goodput_tokens_per_s"][1] == 0 and metrics["usd_per_mtok_at_slo"][1] == np.inf
    # end to end: a device figure that is NaN (the device catalog should refuse it first)
    try:
        dev = _nan_device(tmp_path)
        df = dse.evaluate(strict=False, model="meta-llama/Llama-3.1-8B", device=dev, batch_size=[1, 8])
    except DSEError as exc:
        assert_one_line(str(exc), "price_usd")
        return
    assert not df.feasible.any() and (df.infeasible_code == "numeric").all()
    assert_no_bad_feasible_row(df)


# -- the command line ---------------------------------------------------------------------

def _cli(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert err.startswith("dse: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("flag, value", [("--prefix-hit", "nan"), ("--prefix-hit", "1"), ("--tp", "0"),
                                         ("--pp", "1000"), ("--ttft-slo-ms", "nan"), ("--isl", "-5"),
                                         ("--power-cap", "inf"), ("--routing-skew", "-1"), ("--device", "nope")])
def test_cli_evaluate_bad_values(capsys, flag, value):
    err = _cli(capsys, ["evaluate", "--model", "meta-llama/Llama-3.1-8B", "--device", "h100_sxm", flag, value])
    assert flag.lstrip("-").split("-")[0] in err


@pytest.mark.parametrize("argv, names", [
    (["sweep", "x.yaml", "--budget", "abc"], ("sweep: argument --budget", "'abc'")),
    (["sweep", "x.yaml", "--strategy", "foo"], ("--strategy", "choose from")),
    (["place", "--model", "m", "--pool", "a:1", "--isl", "nan"], ("place: argument --isl", "int")),
    (["evaluate"], ("evaluate: the following arguments are required: --model",)),
    (["nope"], ("invalid choice: 'nope'",))])
def test_cli_argument_errors_are_one_line(capsys, argv, names):
    assert_one_line(_cli(capsys, argv).rstrip("\n"), *names)       # argparse alone printed the usage first


@pytest.mark.parametrize("limit", ["nan", "0", "-1"])
def test_cli_solver_time_limits(capsys, limit):
    place = ["place", "--model", "meta-llama/Llama-3.1-8B", "--pool", "h100_sxm:8", "--pool", "b200_sxm:4"]
    size = ["size", str(Path(dse.__file__).resolve().parents[1] / "search_spaces" / "sizing_example.yaml")]
    for argv in (place, size):       # NaN reached CP-SAT as an invalid model (a traceback); 0 or less ran
        err = _cli(capsys, [*argv, "--time-limit", limit])
        assert_one_line(err.rstrip("\n"), f"{argv[0]}: --time-limit: expected a positive number of seconds")


@pytest.mark.parametrize("skew", ["-1", "inf"])
def test_cli_place_routing_skew_as_evaluate_checks_it(capsys, skew):
    err = _cli(capsys, ["place", "--model", "meta-llama/Llama-3.1-8B", "--pool", "h100_sxm:8", "--pool", "b200_sxm:4",
                        "--routing-skew", skew])
    assert_one_line(err.rstrip("\n"), "place: routing_skew must be a number >= 0", f"got {float(skew)!r}")


def test_cli_sizing_file_with_an_unknown_model_is_named(capsys, tmp_path):
    example = Path(dse.__file__).resolve().parents[1] / "search_spaces" / "sizing_example.yaml"
    bad = tmp_path / "sizing.yaml"
    bad.write_text(example.read_text().replace("model: meta-llama/Meta-Llama-3.1-70B", "model: nope"))
    err = _cli(capsys, ["size", str(bad)])
    assert_one_line(err.rstrip("\n"), f"{bad}: model: unknown model 'nope'")


def test_cli_bad_model_config_and_measurement_files(capsys, tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 0, "num_attention_heads": 4,
                               "intermediate_size": 128, "vocab_size": 100}))
    assert "num_hidden_layers: 0" in _cli(capsys, ["evaluate", "--model", str(cfg), "--device", "h100_sxm"])
    cfg.write_text("{not json")
    assert "not valid JSON" in _cli(capsys, ["evaluate", "--model", str(cfg), "--device", "h100_sxm"])
    empty = tmp_path / "m.csv"
    empty.write_text("")
    assert "empty file" in _cli(capsys, ["validate", "--measurements", str(empty)])
    empty.write_text(",".join(validate.REQUIRED) + "\n")
    assert "no rows" in _cli(capsys, ["validate", "--measurements", str(empty)])
    empty.write_text("id,system\n1,h100_sxm\n")
    assert "missing column 'model_path'" in _cli(capsys, ["validate", "--measurements", str(empty)])


# -- scenario files -----------------------------------------------------------------------

def test_scenario_keys_set_to_null_count_as_not_given(tmp_path):
    from dse.search.space import load_space

    base = {"name": "n", "model": "meta-llama/Llama-3.1-8B", "axes": {"device": ["h100_sxm"]}}
    plain, nulls = tmp_path / "plain.yaml", tmp_path / "nulls.yaml"
    plain.write_text(json.dumps(base))
    nulls.write_text(json.dumps({**base, "constraints": {"facility": {"pue": None, "usd_per_kwh": 0.2}},
                                 "search": {"strategy": None, "chunk_size": None}}))
    space = load_space(nulls)
    assert dict(space.facility) == {"usd_per_kwh": 0.2} and dict(space.search) == {}
    assert space.fingerprint != load_space(plain).fingerprint          # the one real override counts


def test_data_file_that_is_not_utf8_says_so(tmp_path):
    from dse.catalog.yamlfile import load_yaml

    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DSEError) as err:             # it said only "cannot read (UnicodeDecodeError)"
        load_yaml(bad)
    assert_one_line(str(err.value), str(bad), "not UTF-8 text (byte 0xe9 at offset 9); expected a YAML file")


def test_scenario_placement_time_limit_nan_is_refused(tmp_path):
    from dse.search.space import space_from_dict

    data = {"model": "Qwen/Qwen3-235B-A22B", "placement": {"time_limit_s": math.nan}, "modes": ["afd"],
            "axes": {"device": "h20", "attn_tp": 8, "attn_gpus": 8, "ffn_gpus": 8}}
    with pytest.raises(DSEError, match=r"^s\.yaml: placement\.time_limit_s: expected a positive number of "
                                       r"seconds \(inf = no limit\), got nan$"):
        space_from_dict(data, where="s.yaml")


_GEMM_OK = "kernel_source,gemm_dtype,m,n,k,latency\ntorch_flow,bfloat16,16,4096,4096,0.01\n"


def test_kernel_rows_of_an_unknown_format_are_left_out_with_a_warning(capsys, tmp_path):
    """A collector's newer format label costs its own rows, not the table: the rest validate."""
    (tmp_path / "gemm.csv").write_text(_GEMM_OK + "torch_flow,fp8_static,16,4096,4096,0.02\n"
                                                  "torch_flow,fp8_static,32,4096,4096,0.02\n")
    out = tmp_path / "v.json"
    assert main(["validate", "--kernels", str(tmp_path), "--device", "h100_sxm", "--json", str(out)]) == 0
    err = capsys.readouterr().err
    assert "gemm.csv: 2 rows of gemm_dtype fp8_static left out" in err and err.count("\n") == 1
    assert json.loads(out.read_text())["families"]["gemm"]["n"] == 1


@pytest.mark.parametrize("table, text, names", [
    ("gemm", "foo,bar\n1,2\n", ("gemm.csv", "missing column 'm'")),
    ("gemm", _GEMM_OK.replace("0.01", "abc"), ("gemm.csv", "latency (row 2)", "positive finite")),
    ("gemm", _GEMM_OK.replace("0.01", "-5"), ("gemm.csv", "latency", "-5")),
    ("gemm", _GEMM_OK.replace("bfloat16", "fp6"), ("gemm.csv", "gemm_dtype", "one of")),
    ("custom_allreduce", "kernel_source,allreduce_dtype,num_gpus,message_size,latency\nT,bfloat16,8,128,abc\n",
     ("custom_allreduce.csv", "latency", "positive finite")),
])
@pytest.mark.parametrize("command", ["calibrate", "validate"])
def test_cli_bad_kernel_tables(capsys, tmp_path, table, text, names, command):
    """A kernel table with a column missing, a label the model does not know or a latency that
    is no positive number is one line naming file and column, before anything is fitted or
    written (it was an AttributeError traceback, or a fit to the garbage that exited 0)."""
    (tmp_path / f"{table}.csv").write_text(text)
    out = tmp_path / "out"
    argv = [command, "--kernels", str(tmp_path), "--device", "h100_sxm"]
    err = _cli(capsys, argv + (["--out", str(out)] if command == "calibrate" else []))
    assert_one_line(err.rstrip("\n"), *names)
    assert not out.exists()
