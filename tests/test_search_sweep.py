"""Sweeps end to end: result files, resume after interruption, strategies, Dask."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from dse.errors import DSEError
from dse import cli
from dse.search import nsga2
from dse.pareto import pareto_mask
from dse.search.results import hypervolume_against, load_result
from dse.search.run import sweep
from dse.search.space import load_space

SMALL = {
    "name": "small",
    "model": "meta-llama/Llama-3.1-8B",
    "workload": {"isl": 1024, "osl": 128},
    "slos": {"ttft_ms": 1000, "tpot_ms": 15},
    "constraints": {"max_gpus": 4},
    "axes": {"device": ["h100_sxm", "b200_sxm"], "tp": [1, 2, 4, 8], "weight_dtype": ["bf16", "fp8"],
             "batch_size": {"pow2": [1, 256]}, "power_cap": [0.7, 1.0]},
}
MEDIUM = {**SMALL, "name": "medium",
          "axes": {**SMALL["axes"], "device": ["h100_sxm", "h200_sxm", "b200_sxm", "mi300x"],
                   "kv_dtype": ["bf16", "fp8"], "pp": [1, 2], "batch_size": {"range": [8, 256, 8]}}}


@pytest.fixture(scope="module")
def small_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("spaces") / "small.yaml"
    p.write_text(yaml.safe_dump(SMALL))
    return p


@pytest.fixture(scope="module")
def medium_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("spaces") / "medium.yaml"
    p.write_text(yaml.safe_dump(MEDIUM))
    return p


@pytest.fixture(scope="module")
def grid_small(small_path, tmp_path_factory):
    return sweep(small_path, strategy="grid", out=tmp_path_factory.mktemp("runs") / "grid", chunk_size=50)


@pytest.fixture(scope="module")
def grid_medium(medium_path, tmp_path_factory):
    return sweep(medium_path, strategy="grid", out=tmp_path_factory.mktemp("runs") / "grid_medium")


class Interrupt(Exception):
    pass


def stop_after(n_calls: int):
    """A progress callback that interrupts the run at its n-th progress report."""
    calls = {"n": 0}

    def cb(done: int, total: int) -> None:
        calls["n"] += 1
        if calls["n"] >= n_calls:
            raise KeyboardInterrupt

    return cb


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- grid results

def test_grid_writes_every_configuration_with_flags(grid_small, small_path):
    space = load_space(small_path)
    run_dir = grid_small.run_dir
    # search.run.sweep draws no report (api.sweep passes the writer); the lock file is hidden
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "configs.parquet", "pareto.csv", "recommendation.json", "run.json", "run_manifest.json"]
    df = pd.read_parquet(run_dir / "configs.parquet")
    # every deployable configuration: tp 8 exceeds max_gpus 4 and is never evaluated
    assert space.size == 2 * 4 * 2 * 9 * 2 and len(df) == space.deployable_size == 2 * 3 * 2 * 9 * 2
    np.testing.assert_array_equal(np.sort(df["config_id"].to_numpy()),
                                  np.sort(space.positions(0, space.deployable_size)))
    assert set(df["tp"]) == {1, 2, 4}
    # the row of config i is the configuration decode(i)
    cols = space.decode(df["config_id"].to_numpy())
    for name in ("device", "tp", "weight_dtype", "batch_size", "power_cap"):
        np.testing.assert_array_equal(df[name].to_numpy().astype(cols[name].dtype), cols[name])
    # feasibility = model verdict and scenario limits
    feas = df[df["feasible"]]
    assert len(feas) and (feas["ttft_ms"] <= 1000).all() and (feas["tpot_ms"] <= 15).all()
    assert (feas["num_gpus"] <= 4).all() and (feas["infeasible_reason"] == "").all()
    bad = df[~df["feasible"]]
    assert len(bad) and (bad["infeasible_reason"] != "").all()
    assert bad["infeasible_reason"].str.startswith("slos.tpot_ms: tpot_ms > 15").any()
    # is_pareto is exactly the non-dominated feasible set
    F = feas[["e2e_ms", "joules_per_token", "usd_per_mtok"]].to_numpy()
    expected = set(feas["config_id"][pareto_mask(F)])
    assert set(df["config_id"][df["is_pareto"]]) == expected
    assert not df.loc[~df["feasible"], "is_pareto"].any()


def test_pareto_csv_and_run_json(grid_small, small_path):
    run_dir = grid_small.run_dir
    pareto = pd.read_csv(run_dir / "pareto.csv")
    run = json.loads((run_dir / "run.json").read_text())
    assert run["objectives"] == [{"name": "e2e_ms", "direction": "min"},
                                 {"name": "joules_per_token", "direction": "min"},
                                 {"name": "usd_per_mtok", "direction": "min"}]
    assert list(pareto.columns[:1]) == ["config_id"]
    assert {"device", "tp", "e2e_ms", "joules_per_token", "usd_per_mtok", "tokens_per_s"} <= set(pareto.columns)
    assert (np.diff(pareto["e2e_ms"].to_numpy()) >= 0).all()          # sorted by the first objective
    df = grid_small.configs()
    assert set(pareto["config_id"]) == set(df["config_id"][df["is_pareto"]])
    assert run["n_evaluated"] == run["n_configs"] == run["deployable_size"] == len(df) == 216
    assert run["space_size"] == 288
    assert run["n_feasible"] == int(df["feasible"].sum()) and run["n_pareto"] == len(pareto)
    assert run["strategy"] == "grid" and run["seed"] == 0
    assert run["scenario"]["name"] == "small" and run["versions"]["pymoo"]
    assert run["eval_seconds"] > 0 and run["wall_seconds"] >= run["eval_seconds"]
    # hypervolume: in (0, 1], reproducible from the stored box, smaller for a subset
    assert 0 < run["hypervolume"] <= 1
    ref = run["hypervolume_reference"]
    assert set(ref["reference_point"]) == {"e2e_ms", "joules_per_token", "usd_per_mtok"}
    vals = pareto[["e2e_ms", "joules_per_token", "usd_per_mtok"]].to_numpy()
    assert hypervolume_against(vals, run["objectives"], ref) == pytest.approx(run["hypervolume"])
    assert hypervolume_against(vals[::2], run["objectives"], ref) < run["hypervolume"]
    assert run["fingerprint"] == load_space(small_path).fingerprint
    assert load_result(run_dir).run == run


def test_api_sweep_writes_the_report_once_before_the_manifest(small_path, tmp_path, monkeypatch):
    import dse.report.html as report_html
    from dse import api
    from dse.search.store import verify_run_dir

    calls = []
    real = report_html.write_report

    def counting(run_dir, **kw):
        calls.append(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")))
        return real(run_dir, **kw)

    monkeypatch.setattr(report_html, "write_report", counting)
    res = api.sweep(small_path, strategy="grid", out=tmp_path / "r", chunk_size=100, progress=False)
    assert len(calls) == 1                                     # written once, by the real writer
    assert "run_manifest.json" not in calls[0] and "run.json" in calls[0]   # before the commit
    page = (res.run_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'id="pair-0"' in page
    manifest = verify_run_dir(res.run_dir)
    assert manifest["views"] == ["report.html"] and set(manifest["files"]) == {"configs.parquet", "pareto.csv",
                                                                                "recommendation.json", "run.json"}


def test_grid_resumes_after_interruption(small_path, grid_small, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        sweep(small_path, strategy="grid", out=out, chunk_size=50, progress=stop_after(3))
    parts = sorted((out / "state" / "parts").glob("*.parquet"))
    assert len(parts) == 3                                      # three whole chunks, nothing else
    assert not (out / "configs.parquet").exists() and not (out / "run.json").exists()
    assert leftovers(out) == []
    seen = []
    res = sweep(small_path, strategy="grid", out=out, chunk_size=50, progress=lambda d, t: seen.append(d))
    assert res.run["resumed"] and res.run["settings"]["chunks_resumed"] == 3
    assert seen[0] == 200                                       # counting starts after the 3 saved chunks
    assert not (out / "state").exists()
    a = res.configs().sort_values("config_id").reset_index(drop=True)
    b = grid_small.configs().sort_values("config_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_grid_parallel_joblib_matches_serial(small_path, grid_small, tmp_path):
    res = sweep(small_path, strategy="grid", out=tmp_path / "par", chunk_size=50, jobs=2)
    a = res.configs().sort_values("config_id").reset_index(drop=True)
    b = grid_small.configs().sort_values("config_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_grid_on_dask_local_cluster_matches_local(small_path, grid_small, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        res = sweep(small_path, strategy="grid", out=tmp_path / "dask", chunk_size=50, backend="dask",
                    scheduler=cluster.scheduler_address)
    assert res.run["settings"]["backend"] == "dask"
    a = res.configs().sort_values("config_id").reset_index(drop=True)
    b = grid_small.configs().sort_values("config_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert res.run["hypervolume"] == pytest.approx(grid_small.run["hypervolume"])


def test_grid_budget_cap_and_option_errors(small_path, tmp_path):
    with pytest.raises(DSEError, match="more than --budget 10; use --strategy nsga2 or optuna"):
        sweep(small_path, strategy="grid", budget=10, out=tmp_path / "a")
    with pytest.raises(DSEError, match="--storage applies to --strategy optuna only"):
        sweep(small_path, strategy="grid", storage="memory", out=tmp_path / "b")


def test_resuming_into_a_run_of_another_strategy_is_refused(small_path, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        sweep(small_path, strategy="grid", out=out, chunk_size=50, progress=stop_after(1))
    with pytest.raises(DSEError, match="holds an unfinished run with a different strategy"):
        sweep(small_path, strategy="nsga2", budget=100, out=out)


# ----------------------------------------------------------------------------- nsga2

def test_nsga2_is_reproducible_and_respects_budget(small_path, tmp_path):
    a = sweep(small_path, strategy="nsga2", budget=150, seed=3, pop_size=30, out=tmp_path / "a")
    b = sweep(small_path, strategy="nsga2", budget=150, seed=3, pop_size=30, out=tmp_path / "b")
    c = sweep(small_path, strategy="nsga2", budget=150, seed=4, pop_size=30, out=tmp_path / "c")
    ca, cb, cc = a.configs(), b.configs(), c.configs()
    assert a.run["n_evaluated"] == len(ca) == 150                    # distinct configurations
    assert sorted(ca["eval_index"]) == list(range(150)) and ca["config_id"].is_unique
    assert ca["config_id"].tolist() == cb["config_id"].tolist()
    assert ca["config_id"].tolist() != cc["config_id"].tolist()
    assert a.run["settings"]["pop_size"] == 30


def test_nsga2_resume_continues_exactly(small_path, tmp_path, monkeypatch):
    monkeypatch.setattr(nsga2, "CHECKPOINT_SECONDS", 0.0)       # checkpoint every generation
    full = sweep(small_path, strategy="nsga2", budget=200, seed=1, pop_size=25, out=tmp_path / "full")
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        sweep(small_path, strategy="nsga2", budget=200, seed=1, pop_size=25, out=out, progress=stop_after(4))
    assert (out / "state" / "checkpoint.pkl").is_file() and leftovers(out) == []
    res = sweep(small_path, strategy="nsga2", budget=200, seed=1, pop_size=25, out=out)
    assert res.run["resumed"] and res.run["n_evaluated"] == 200
    a = res.configs()[["config_id", "eval_index"]]
    b = full.configs()[["config_id", "eval_index"]]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))


def test_nsga2_finds_most_of_the_exhaustive_front(medium_path, grid_medium, tmp_path):
    size = grid_medium.run["deployable_size"]        # the rows the grid evaluated
    budget = size // 10
    res = sweep(medium_path, strategy="nsga2", budget=budget, seed=0, out=tmp_path / "n")
    names = [o["name"] for o in grid_medium.run["objectives"]]
    frac = hypervolume_against(res.pareto[names].to_numpy(), grid_medium.run["objectives"],
                               grid_medium.run["hypervolume_reference"]) / grid_medium.run["hypervolume"]
    # a random sample of the same size as a floor the optimizer must beat
    rng = np.random.default_rng(0)
    df = grid_medium.configs()
    sample = df.iloc[rng.choice(size, budget, replace=False)]
    sample = sample[sample["feasible"]]
    rand = hypervolume_against(sample[names].to_numpy(), grid_medium.run["objectives"],
                               grid_medium.run["hypervolume_reference"]) / grid_medium.run["hypervolume"]
    print(f"nsga2 {frac:.4f} random {rand:.4f}")
    assert frac >= 0.95 and frac > rand, (frac, rand)


# ----------------------------------------------------------------------------- optuna

def test_optuna_resumes_from_its_storage(small_path, tmp_path):
    import optuna

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        sweep(small_path, strategy="optuna", budget=90, pop_size=30, seed=0, out=out, progress=stop_after(2))
    journal = out / "study.journal"
    assert journal.is_file() and leftovers(out) == []
    res = sweep(small_path, strategy="optuna", budget=90, pop_size=30, seed=0, out=out)
    assert res.run["n_evaluated"] == 90
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.load_study(study_name=res.run["settings"]["study_name"], storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 90 and len(states) == 90
    df = res.configs()
    assert len(df) == df["config_id"].nunique() == res.run["settings"]["distinct_configurations"] <= 90
    assert df["eval_index"].min() == 0 and df["eval_index"].max() < 90 and df["eval_index"].is_unique
    # a shared storage: a second run directory on the same study adds nothing past the budget
    again = sweep(small_path, strategy="optuna", budget=90, pop_size=30, seed=0, out=tmp_path / "other",
                  storage=f"journal:{journal}")
    assert again.run["n_evaluated"] == 90
    assert set(again.configs()["config_id"]) == set(df["config_id"])


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_optuna_samplers_in_memory(small_path, tmp_path, sampler):
    res = sweep(small_path, strategy="optuna", sampler=sampler, budget=60, pop_size=20, seed=0,
                storage="memory", out=tmp_path / sampler)
    assert res.run["n_evaluated"] == 60 and res.run["settings"]["sampler"] == sampler
    df = res.configs()
    assert df["is_pareto"].sum() == res.run["n_pareto"] > 0
    assert df.loc[df["is_pareto"], "feasible"].all()


def test_optuna_sqlite_url(small_path, tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    res = sweep(small_path, strategy="optuna", budget=20, pop_size=20, seed=0, storage=url, out=tmp_path / "s")
    assert res.run["settings"]["storage"] == url and res.run["n_evaluated"] == 20


# ----------------------------------------------------------------------------- cli

def test_cli_sweep_prints_summary_and_pareto_table(small_path, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["sweep", str(small_path), "--out", str(out), "--chunk-size", "100"]) == 0
    captured = capsys.readouterr()
    assert "grid: 216 evaluations of 288 configurations (216 deployable)" in captured.out
    assert "Pareto set (" in captured.out and "e2e_ms" in captured.out
    assert "evals/s" in captured.err                            # the progress bar
    assert (out / "configs.parquet").is_file()


def test_space_without_feasible_configuration(tmp_path):
    data = {**SMALL, "slos": {"tpot_ms": 0.001}}
    path = tmp_path / "none.yaml"
    path.write_text(yaml.safe_dump(data))
    res = sweep(path, strategy="grid", out=tmp_path / "run")
    assert res.run["n_feasible"] == 0 and res.run["n_pareto"] == 0 and res.run["hypervolume"] == 0.0
    assert len(pd.read_csv(tmp_path / "run" / "pareto.csv")) == 0
    df = res.configs()
    assert len(df) == 216 and not df["is_pareto"].any()
    assert (df["infeasible_reason"] != "").all()


def test_an_infinite_slo_is_no_limit(tmp_path):
    """`slos: {ttft_ms: .inf}` means no TTFT target: the same rows are feasible as without it
    (an infinite limit used to scale the violation to inf/inf = NaN, read as broken)."""
    from dse.search.evaluation import evaluate_batch
    from dse.search.space import space_from_dict

    idx = np.arange(64)
    without = space_from_dict({**SMALL, "slos": {"tpot_ms": 15}}, where="t", default_name="t")
    inf = space_from_dict({**SMALL, "slos": {"tpot_ms": 15, "ttft_ms": float("inf")}}, where="t", default_name="t")
    a, _ = evaluate_batch(without, idx)
    b, g = evaluate_batch(inf, idx)
    assert a.feasible.sum() > 10
    assert (a.feasible.to_numpy() == b.feasible.to_numpy()).all()
    assert np.isfinite(g).all()


def test_parts_stay_in_memory_and_the_report_gets_the_table(small_path, tmp_path, monkeypatch):
    """A sweep keeps the parts it wrote in memory, as the files read back, so finalize reads
    none of them again and the report samples configs.parquet's table without reading the
    file: the same report as one drawn from the files, the same results as with no memory."""
    import pyarrow.parquet as pq

    from dse import api
    from dse.report.html import write_report
    from dse.search import store as st

    reads: list = []
    real = pq.read_table
    monkeypatch.setattr(st.pq, "read_table", lambda *a, **k: reads.append(a) or real(*a, **k))
    res = api.sweep(small_path, strategy="grid", out=tmp_path / "mem", chunk_size=50, progress=False)
    assert reads == [] and res.run["n_configs"] > 50                   # several parts, none read back
    again = write_report(res.run_dir, out=tmp_path / "from_file.html")
    assert again.read_text() == (res.run_dir / "report.html").read_text()
    monkeypatch.setattr(st, "MEMORY_BUDGET", 0)                        # nothing kept: every part read
    disk = api.sweep(small_path, strategy="grid", out=tmp_path / "disk", chunk_size=50, progress=False)
    assert len(reads) >= 2 * -(-res.run["n_configs"] // 50)            # twice per part: front, configs
    a, b = (pq.read_table(r.run_dir / "configs.parquet") for r in (res, disk))
    assert a.equals(b) and a.schema.equals(b.schema, check_metadata=True)
