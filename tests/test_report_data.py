"""Report figure data (dse.report.figdata), tested on a results directory synthesised
from real `dse.evaluate` output with a Pareto filter of our own; the helpers here are
shared by the browser and size tests (tests/test_report_browser.py, test_report_size.py).

Only the results-directory contract is used: configs.parquet (axes, metrics, feasible,
infeasible_reason, is_pareto), pareto.csv, run.json with objectives [{name, direction}].
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dse
from dse.errors import DSEError
from dse.report import figdata as fd
from dse.report import rundata

MODEL = "meta-llama/Llama-3.1-70B"
OBJECTIVES = [{"name": "tpot_ms", "direction": "min"}, {"name": "usd_per_mtok", "direction": "min"},
              {"name": "joules_per_token", "direction": "min"}]


# ----------------------------------------------------------------------------- helpers

def pareto_filter(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Brute force: row i is kept unless some row is <= on every objective and < on one."""
    v = np.asarray(values, float) * np.array([1.0 if d == "min" else -1.0 for d in directions])
    keep = np.ones(len(v), bool)
    for s in range(0, len(v), 256):
        b = v[s:s + 256]
        dominated = ((v[None] <= b[:, None]).all(-1) & (v[None] < b[:, None]).any(-1)).any(1)
        keep[s:s + 256] = ~dominated
    return keep


def small_grid() -> pd.DataFrame:
    """480 agg configurations: 3 devices x tp x batch x weight/kv dtype."""
    g = list(itertools.product(["h100_sxm", "b200_sxm", "h200_sxm"], [1, 2, 4, 8],
                               [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], ["bf16", "fp8"], ["bf16", "fp8"]))
    d, tp, bs, wd, kd = map(list, zip(*g))
    return dse.evaluate(model=MODEL, mode="agg", device=d, tp=tp, batch_size=bs, weight_dtype=wd, kv_dtype=kd,
                        strict=False)


def quickstart_grid() -> pd.DataFrame:
    """A quickstart-sized sweep (11,520 rows): six devices, agg over tp/pp/batch/dtypes,
    disaggregated prefill/decode over device pairs, and attention/FFN disaggregation."""
    devs = ["h100_sxm", "h200_sxm", "b200_sxm", "b300_sxm", "mi300x", "mi355x"]
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    frames = []
    g = list(itertools.product(devs, [1, 2, 4, 8], [1, 2], batches, ["bf16", "fp8", "fp4"], ["bf16", "fp8"]))
    d, tp, pp, bs, wd, kd = map(list, zip(*g))
    frames.append(dse.evaluate(model=MODEL, mode="agg", device=d, tp=tp, pp=pp, batch_size=bs, weight_dtype=wd,
                               kv_dtype=kd, strict=False))
    g = list(itertools.product(devs, devs, [2, 8], [4, 8], [1, 2], [1, 2], batches, ["fp8"]))
    pd_, dd, ptp, dtp, pw, dw, bs, wd = map(list, zip(*g))
    frames.append(dse.evaluate(model=MODEL, mode="disagg", device=dd, prefill_device=pd_, decode_device=dd,
                               prefill_tp=ptp, decode_tp=dtp, tp=dtp, prefill_workers=pw, decode_workers=dw,
                               batch_size=bs, weight_dtype=wd, strict=False))
    g = list(itertools.product(devs, devs, [4, 8], [4, 8], [1, 4], batches, ["fp8"]))
    ad, fdv, ag, fg, atp, bs, wd = map(list, zip(*g))
    frames.append(dse.evaluate(model=MODEL, mode="afd", device=ad, attn_device=ad, ffn_device=fdv, attn_gpus=ag,
                               ffn_gpus=fg, attn_tp=atp, batch_size=bs, weight_dtype=wd, strict=False))
    return pd.concat(frames, ignore_index=True)


def write_results_dir(path: Path, df: pd.DataFrame, *, objectives=OBJECTIVES, strategy: str = "grid",
                      validation: dict | None = None, tile: int = 1) -> Path:
    """Write configs.parquet / pareto.csv / run.json as the search does. With tile > 1
    configs.parquet repeats the rows `tile` times (a cheap stand-in for a huge sweep;
    the copies are weakly dominated by the originals, so only the first copy is Pareto)."""
    path.mkdir(parents=True, exist_ok=True)
    names = [o["name"] for o in objectives]
    feas = df["feasible"].to_numpy(bool)
    is_pareto = np.zeros(len(df), bool)
    idx = np.nonzero(feas)[0]
    is_pareto[idx[pareto_filter(df.loc[feas, names].to_numpy(float), [o["direction"] for o in objectives])]] = True
    configs = df.assign(is_pareto=is_pareto)
    configs[is_pareto].drop(columns="is_pareto").to_csv(path / "pareto.csv", index=False)
    if tile > 1:
        import pyarrow as pa
        import pyarrow.parquet as pq

        base = pa.Table.from_pandas(configs, preserve_index=False)
        rest = pa.Table.from_pandas(configs.assign(is_pareto=False), preserve_index=False)
        with pq.ParquetWriter(path / "configs.parquet", base.schema) as w:
            w.write_table(base)
            for _ in range(tile - 1):
                w.write_table(rest)
    else:
        configs.to_parquet(path / "configs.parquet", index=False)
    n = len(df) * tile
    run = {
        "scenario": {"name": "test-70b", "model": MODEL,
                     "workload": {"isl": 1024, "osl": 256, "prefix_hit": 0.0},
                     "slos": {"ttft_ms": 2000, "tpot_ms": 100},
                     "constraints": {"max_gpus": 64},
                     "axes": {c: sorted(map(str, df[c].unique())) for c in ("device", "tp", "batch_size",
                                                                            "weight_dtype") if c in df}},
        "strategy": strategy, "seed": 0, "objectives": objectives,
        "n_evaluated": n, "n_feasible": int(feas.sum()) * tile, "eval_seconds": 0.12, "wall_seconds": 1.5,
        "hypervolume": 0.4321, "versions": {"dse": dse.__version__, "numpy": np.__version__},
    }
    (path / "run.json").write_text(json.dumps(run, indent=2))
    if validation is not None:
        (path / "validation.json").write_text(json.dumps(validation))
    return path


@pytest.fixture(scope="module")
def grid_df() -> pd.DataFrame:
    return small_grid()


@pytest.fixture()
def run_dir(tmp_path, grid_df) -> Path:
    return write_results_dir(tmp_path / "run", grid_df,
                             validation={"summary": {"ttft_mape": 12.5, "tpot_mape": 8.25,
                                                     "ttft_median_ape": 9.0, "tpot_median_ape": 6.0, "n": 42}})


# ----------------------------------------------------------------------------- tests

def test_load_run_reads_pareto_whole_and_counts(run_dir, grid_df):
    rd = rundata.load_run(run_dir)
    pareto = pd.read_csv(run_dir / "pareto.csv")
    assert len(rd.pareto) == len(pareto) > 3
    assert [o.name for o in rd.objectives] == ["tpot_ms", "usd_per_mtok", "joules_per_token"]
    assert rd.n_configs == len(grid_df)
    assert rd.n_feasible == int(grid_df["feasible"].sum())
    assert rd.n_dominated == rd.n_feasible - len(pareto)
    assert rd.n_infeasible == len(grid_df) - rd.n_feasible
    # small sweep: the whole rest is drawn, none of it Pareto
    assert len(rd.background) == len(grid_df) - len(pareto)
    assert set(rd.groups) == {"h100_sxm", "b200_sxm", "h200_sxm"}
    # varying axes are configuration columns, constants move to the scenario
    for c in ("device", "tp", "batch_size", "weight_dtype", "kv_dtype"):
        assert c in rd.config_columns
    assert rd.constant_config["model"] == MODEL and rd.constant_config["isl"] == 1024
    assert rd.validation["summary"]["tpot_mape"] == 8.25


def test_sample_is_bounded_stratified_and_deterministic(run_dir, grid_df):
    a = rundata.load_run(run_dir, max_dominated=60, max_infeasible=10)
    b = rundata.load_run(run_dir, max_dominated=60, max_infeasible=10)
    feas = a.background["feasible"].astype(bool)
    assert feas.sum() == 60 and (~feas).sum() == 10
    pd.testing.assert_frame_equal(a.background, b.background)
    counts = a.background[feas]["device"].value_counts()
    assert set(counts.index) == {"h100_sxm", "b200_sxm", "h200_sxm"} and counts.min() >= 15
    keys = ["device", "tp", "batch_size", "weight_dtype", "kv_dtype"]
    pareto_keys = set(map(tuple, a.pareto[keys].astype(str).to_numpy()))
    assert not pareto_keys & set(map(tuple, a.background[keys].astype(str).to_numpy()))


def test_allocate_water_filling():
    assert rundata.allocate(np.array([5, 100, 100]), 65).tolist() == [5, 30, 30]
    assert rundata.allocate(np.array([3, 3]), 100).tolist() == [3, 3]
    q = rundata.allocate(np.array([10, 10, 10]), 7)
    assert q.sum() == 7 and q.max() - q.min() <= 1


def test_sampled_rows_have_plain_string_columns_with_blanks():
    """Parquet dictionaries come back as plain strings (the string ones decoded by pyarrow,
    others formatted by pandas), nulls as "", other columns untouched."""
    import pyarrow as pa

    table = pa.table({"device": pa.array(["h100_sxm", None, "b200_sxm", ""]).dictionary_encode(),
                      "tier": pa.array([1, None, 2, 1]).dictionary_encode(),
                      "tp": pa.array([1, 2, 4, 8]), "note": pa.array(["a", None, "c", "d"])})
    df = rundata._plain(table)
    assert df["device"].tolist() == ["h100_sxm", "", "b200_sxm", ""] and df["device"].dtype == "str"
    assert df["tier"].tolist() == ["1", "", "2", "1"] and df["tier"].dtype == "str"
    assert df["tp"].tolist() == [1, 2, 4, 8] and df["note"].isna().tolist() == [False, True, False, False]
    assert rundata._plain(table.schema.empty_table()).dtypes.tolist() == df.dtypes.tolist()


def test_reason_counts_count_infeasible_rows_only():
    """Per code and per text, most frequent first; a blank reason is "(unspecified)", a
    missing one is not counted, feasible rows never are (dictionary or plain columns alike)."""
    import pyarrow as pa

    codes = ["memory", "slo", "memory", "", None, "memory", "slo"]
    texts = ["does not fit", "TPOT over", "does not fit", "", None, "ok", "TPOT over"]
    infeasible = np.array([True, True, True, True, True, False, True])
    for encode in (False, True):
        cols = {"infeasible_code": pa.array(codes), "infeasible_reason": pa.array(texts)}
        light = pa.table({k: v.dictionary_encode() if encode else v for k, v in cols.items()})
        got = rundata._reason_counts(light, infeasible)
        assert got == {"by_code": {"memory": 2, "slo": 2, "(unspecified)": 1},
                       "by_text": [("does not fit", 2), ("TPOT over", 2), ("(unspecified)", 1)]}, (encode, got)
    assert rundata._reason_counts(light, np.zeros(7, bool)) == {"by_code": {}, "by_text": []}


def test_nondominated_mask_matches_brute_force():
    rng = np.random.default_rng(3)
    v = rng.random((400, 3))
    for dirs in (["min", "min"], ["min", "max"], ["max", "max"]):
        assert (fd.nondominated_mask(v[:, :2], dirs) == pareto_filter(v[:, :2], dirs)).all()
    assert (fd.nondominated_mask(v, ["min", "max", "min"]) == pareto_filter(v, ["min", "max", "min"])).all()


def test_point_sets_and_scatter_series(run_dir):
    rd = rundata.load_run(run_dir)
    pairs = fd.objective_pairs(rd.objectives)
    assert [(a.name, b.name) for a, b in pairs] == [("tpot_ms", "usd_per_mtok"), ("tpot_ms", "joules_per_token"),
                                                    ("usd_per_mtok", "joules_per_token")]
    sets = fd.point_sets(rd)
    assert len({ps.key for ps in sets}) == len(sets)
    assert sum(len(ps.rows) for ps in sets if ps.role == "pareto") == len(rd.pareto)
    assert sum(len(ps.rows) for ps in sets if ps.role == "dominated") == int(rd.background["feasible"].sum())
    assert sum(len(ps.rows) for ps in sets if ps.role == "infeasible") == rd.n_infeasible
    hm = fd.hover_metrics(rd)
    assert hm[:3] == ["tpot_ms", "usd_per_mtok", "joules_per_token"] and "ttft_ms" in hm
    for ps in sets:  # every hover text names the device and the parallel layout; metrics ride along
        assert ps.custom.dtype == np.float32 and ps.custom.shape == (len(ps.rows), len(hm))
        assert all("tp " in t and "batch " in t and ("×" in t or "GPUs" in t) for t in ps.text)
        if ps.group:
            assert all(ps.group in t for t in ps.text)
        # built once per frame and cut per set: the text a set's own rows would get
        assert ps.text.tolist() == fd.hover_text(ps.rows, rd.config_columns).tolist()
    assert all("infeasible: " in t for ps in sets if ps.role == "infeasible" for t in ps.text)
    assert all("bound by " in t for ps in sets if ps.role == "pareto" for t in ps.text)

    sd = fd.scatter_data(rd, pairs[0], sets)
    by_key = {ps.key: ps for ps in sets}
    for s in sd.series:
        if s.key:
            assert s.x.dtype == np.float32 and len(s.x) == len(by_key[s.key].rows)
            assert np.allclose(s.x, by_key[s.key].custom[:, 0]) and np.allclose(s.y, by_key[s.key].custom[:, 1])
    (front,) = [s for s in sd.series if s.role == "front"]
    # the front of the pair: sorted by x, y strictly falling, a subset of the Pareto set
    assert (np.diff(front.x) >= 0).all() and (np.diff(front.y) < 0).all()
    xy = set(zip(rd.pareto["tpot_ms"].astype(np.float32), rd.pareto["usd_per_mtok"].astype(np.float32)))
    assert set(zip(front.x, front.y)) <= xy
    sd3 = fd.scatter_data(rd, rd.objectives, sets)
    assert all(s.z is not None for s in sd3.series) and not any(s.role == "front" for s in sd3.series)
    assert sd.log == [True, True] or sd.log[1]  # $/Mtok spans decades


def test_groups_coarsen_to_at_most_ten_colours():
    devs = [f"d{i}" for i in range(6)]
    rows = [dict(device=a, mode="disagg", prefill_device=a, decode_device=b, feasible=True)
            for a in devs for b in devs] + [dict(device=a, mode="agg", prefill_device="", decode_device="",
                                                  feasible=True) for a in devs]
    df = pd.DataFrame(rows)
    p, b = rundata.choose_groups(df.iloc[:3], df)
    assert len(set(p) | set(b)) <= 10
    assert set(b) == {f"d{i}" for i in range(6)}  # 42 role pairs x modes -> device
    p, b = rundata.choose_groups(df.iloc[36:38], df.iloc[36:])  # agg only: devices, no mode suffix
    assert list(p) == ["d0", "d1"] and list(b) == devs
    small = df.iloc[[1, 40]]
    p, _ = rundata.choose_groups(small, small.iloc[:0].assign(feasible=pd.Series(dtype=bool)))
    assert list(p) == ["d0→d1 · disagg", "d4 · agg"]
    # a split mode's placeholder `device` never names a group: the device serving its tokens does
    hetero = pd.DataFrame([dict(device="h200_sxm", mode="disagg", prefill_device="b200_sxm", decode_device="gb200",
                                attn_device="", ffn_device="", feasible=True),
                           dict(device="h20", mode="afd", prefill_device="", decode_device="", attn_device="mi300x",
                                ffn_device="b200_sxm", feasible=True)])
    assert rundata.group_labels(hetero, "device").tolist() == ["gb200", "mi300x"]
    assert rundata.group_labels(hetero, "roles").tolist() == ["b200_sxm→gb200", "mi300x+b200_sxm"]


def test_hover_text_configuration_roles_and_binding():
    df = pd.DataFrame({
        "device": ["b200_sxm", "b200_sxm", "h200_sxm"], "mode": ["agg", "disagg", "afd"],
        "tp": [4.0, 4.0, 1.0], "pp": [1.0] * 3, "ep": [1.0] * 3, "dp": [1.0] * 3, "replicas": [1.0] * 3,
        "weight_dtype": ["fp8"] * 3, "kv_dtype": ["bf16"] * 3, "batch_size": [64.0, 32.0, 128.0],
        "prefill_device": ["", "h200_sxm", ""], "prefill_tp": [0.0, 8.0, 0.0], "prefill_workers": [1.0, 2.0, 1.0],
        "decode_device": ["", "", ""],
        "attn_device": ["", "", "mi355x"], "attn_gpus": [0.0, 0.0, 8.0], "ffn_device": ["", "", "b200_sxm"],
        "num_gpus": [4, 20, 16], "feasible": [True, True, False], "bottleneck": ["memory", "comm", "memory"],
        "infeasible_reason": ["", "", "kv_capacity: not one sequence's KV cache fits"]})
    cols = [c for c in df.columns if c not in ("num_gpus", "feasible", "bottleneck", "infeasible_reason")]
    t = fd.hover_text(df, cols)
    assert t[0].startswith("<b>4 × b200_sxm</b> · agg") and "tp 4 · pp 1 · ep 1 · dp 1" in t[0]
    assert "weights fp8 · kv bf16 · batch 64" in t[0] and "bound by memory" in t[0]
    assert "prefill" not in t[0] and "attn" not in t[0]       # role columns only in their mode
    assert t[1].startswith("<b>20 GPUs</b> · disagg") and "bound by comm" in t[1]
    assert "prefill: h200_sxm · tp 8 · workers 2" in t[1] and "decode: b200_sxm" in t[1]  # blank: inherits
    assert "attn: mi355x · gpus 8" in t[2] and "ffn: b200_sxm" in t[2]
    assert "infeasible: kv_capacity" in t[2]
    assert rundata.group_labels(df).tolist() == ["b200_sxm", "h200_sxm→b200_sxm", "mi355x+b200_sxm"]


def test_parcoords_categories_become_labelled_codes(tmp_path, grid_df):
    # with the hourly cost as an objective every device has Pareto-optimal configurations
    objs = [{"name": "tpot_ms", "direction": "min"}, {"name": "usd_per_mtok", "direction": "min"},
            {"name": "usd_per_hour", "direction": "min"}]
    rd = rundata.load_run(write_results_dir(tmp_path / "r", grid_df, objectives=objs))
    pc = fd.parcoords_data(rd)
    labels = [d.label for d in pc.dims]
    n_obj = next(i for i, d in enumerate(labels) if d.startswith("TPOT"))
    for label, want in zip(labels[n_obj:n_obj + 3], ["TPOT (ms) ↓", "cost ($/Mtok) ↓", "cost rate ($/h) ↓"]):
        assert label in (want, want + " (log)")
    # after the objectives: the quality cost and the chance of meeting the SLOs, where they vary
    assert all(lb.startswith(("quality loss", "chance of meeting")) for lb in labels[n_obj + 3:])
    dev = next(d for d in pc.dims if d.label == "device")
    assert dev.ticktext == sorted(rd.pareto["device"].unique())
    assert dev.values.tolist() == [dev.ticktext.index(v) for v in rd.pareto["device"]]
    bs = next(d for d in pc.dims if d.label.startswith("batch_size"))
    assert bs.label.endswith("(log)") and np.allclose(10 ** bs.values, rd.pareto["batch_size"])
    assert len(pc.color) == len(rd.pareto) and set(pc.color) <= set(range(len(rd.groups)))


def test_table_rows_sorted_by_first_objective(run_dir):
    rd = rundata.load_run(run_dir)
    td = fd.table_data(rd)
    assert td.n_total == len(rd.pareto) == len(td.rows)
    i = td.columns.index("TPOT (ms) ↓")
    col = [r[i] for r in td.rows]
    assert col == sorted(col) and td.numeric[i]
    assert "device" in td.columns and "bottleneck" in td.columns
    assert len(fd.table_data(rd, max_rows=3).rows) == 3


def test_facts_scenario_run_and_validation(run_dir):
    f = fd.facts(rundata.load_run(run_dir))
    assert f["scenario"]["model"] == MODEL and f["scenario"]["slos"]["tpot_ms"] == 100
    assert f["run"]["strategy"] == "grid" and f["run"]["hypervolume"] == 0.4321
    assert "TPOT (ms) ↓" in f["run"]["objectives"]
    assert f["validation"]["tpot_mape"] == 8.25


def test_max_objective_direction(tmp_path, grid_df):
    objs = [{"name": "tokens_per_s_per_user", "direction": "max"}, {"name": "usd_per_mtok", "direction": "min"}]
    d = write_results_dir(tmp_path / "r", grid_df, objectives=objs)
    rd = rundata.load_run(d)
    (pair,) = fd.objective_pairs(rd.objectives)
    sd = fd.scatter_data(rd, pair)
    (front,) = [s for s in sd.series if s.role == "front"]
    assert (np.diff(front.x) >= 0).all() and (np.diff(front.y) > 0).all()  # faster per user costs more
    assert len(front.x) == len(rd.pareto)  # with two objectives the set is its own front


def test_missing_or_bad_files_raise_one_line_errors(tmp_path, run_dir):
    with pytest.raises(DSEError, match="not a directory"):
        rundata.load_run(tmp_path / "nope")
    (run_dir / "pareto.csv").unlink()
    with pytest.raises(DSEError, match="pareto.csv: not found"):
        rundata.load_run(run_dir)
    (run_dir / "run.json").write_text("{not json")
    with pytest.raises(DSEError, match=r"run.json: not valid JSON"):
        rundata.load_run(run_dir)
    (run_dir / "run.json").write_text(json.dumps({"objectives": [{"name": "tpot_ms", "direction": "down"}]}))
    with pytest.raises(DSEError, match=r"objectives\[0\].direction"):
        rundata.load_run(run_dir)


def test_single_objective_and_empty_pareto_set(tmp_path, grid_df):
    from dse.report.html import write_report

    d = write_results_dir(tmp_path / "one", grid_df, objectives=[{"name": "usd_per_mtok", "direction": "min"}])
    rd = rundata.load_run(d)
    (pair,) = fd.objective_pairs(rd.objectives, rd.pareto.columns)
    assert [o.name for o in pair] == ["usd_per_mtok", "tokens_per_s_per_gpu"]
    assert 'id="pair-0"' in write_report(d).read_text()

    d = write_results_dir(tmp_path / "none", grid_df[~grid_df["feasible"]])  # nothing feasible
    rd = rundata.load_run(d)
    assert len(rd.pareto) == 0 and rd.n_feasible == 0 and len(rd.background) == len(grid_df[~grid_df["feasible"]])
    page = write_report(d).read_text()
    assert 'id="pair-0"' in page and 'id="parcoords"' not in page


def test_hover_text_budget_thins_only_the_background(run_dir):
    rd = rundata.load_run(run_dir)
    full = fd.point_sets(rd)
    total = sum(len(t.encode()) for ps in full for t in ps.text)
    pareto = sum(len(t.encode()) for ps in full if ps.role == "pareto" for t in ps.text)
    thin = fd.point_sets(rd, text_budget=(total + pareto) // 2)
    assert sum(len(t.encode()) for ps in thin for t in ps.text) <= (total + pareto) // 2
    assert sum(len(ps.rows) for ps in thin if ps.role == "pareto") == len(rd.pareto)
    assert {ps.group for ps in thin if ps.role == "dominated"} == {ps.group for ps in full if ps.role == "dominated"}
