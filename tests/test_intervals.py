"""Prediction intervals: the committed table is what the fit code makes of the shipped
data, it covers ~80 % of out-of-sample residuals, and its application is consistent."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from dse.catalog.runtime import hardware_dir
from dse.deploy import intervals as iv
from dse.errors import DSEError

pytest.importorskip("mapie")
from dse.fit import intervals as fi  # noqa: E402
from dse.fit import serving  # noqa: E402

HEADER = hardware_dir() / "intervals.yaml"


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(HEADER.read_text())


@pytest.fixture(scope="module")
def data():
    if not serving.DEFAULT_DATA.is_file():
        pytest.skip("shared calibration data not present")
    return serving.Data(serving.DEFAULT_DATA)


@pytest.fixture(scope="module")
def res(data, doc) -> pd.DataFrame:
    """LOSO residuals under the constants the table records (each fitted without its system)."""
    return fi.residuals(data, doc["constants"])


def test_recorded_constants_are_the_cross_system_fit(doc):
    """The constants are serving.fit on the other system's recorded rows: the same fit
    `python -m dse.fit.serving` records as its cross-system check."""
    cross = yaml.safe_load((hardware_dir() / "serving_runtime.yaml").read_text())["cross_system"]
    for held, other in (("h100_sxm", "b200_sxm"), ("b200_sxm", "h100_sxm")):
        c = cross[f"fit_{other}_score_{held}"]["constants"]
        assert doc["constants"][held]["backends"] == c["backends"]
        assert doc["constants"][held]["rounds"] == c["benchmark"]["rounds"]
        assert doc["constants"][held]["routing_skew"] == c["benchmark"]["routing_skew"]


def test_committed_table_is_what_the_fit_produces(res, doc):
    digest = hashlib.sha256(serving.DEFAULT_DATA.read_bytes()).hexdigest()
    assert digest in doc["source"]["data"]
    levels = fi.grid_levels(res)
    fresh = fi.fit_cells(res, levels)
    for m in fi.METRICS:
        spec = doc["tables"][m]
        assert {f: list(v) for f, v in levels[m].items()} == spec["levels"]
        committed = pd.read_csv(HEADER.parent / spec["file"], keep_default_na=False)
        assert hashlib.sha256((HEADER.parent / spec["file"]).read_bytes()).hexdigest()[:16] == spec["sha256"]
        assert len(fresh[m]) == len(committed) == int(np.prod([len(v) for v in levels[m].values()]))
        assert (fresh[m].source.to_numpy() == committed.source.to_numpy()).all()
        for q in ("p10", "p90"):
            np.testing.assert_allclose(fresh[m][q], committed[q], atol=2e-4)
        assert (fresh[m].n.to_numpy() == committed.n.to_numpy()).all()


def test_coverage_on_rows_the_trees_never_saw(res):
    """The shipped table on its own conformalization rows (30 % of the deployments, out of
    the trees' fit), per held-out system: the 80 % interval holds 70-90 % of them."""
    table = iv.load_intervals()
    cal = fi.conformalize_rows(res.deployment.to_numpy())
    for system in fi.SYSTEMS:
        part = res[cal & (res.system == system).to_numpy() & ~res.pooled.to_numpy()]
        s = fi.score(part, fi.bounds(table, part))["backend"]
        assert s["n"] > 200
        for m in fi.METRICS:
            assert 0.70 <= s[f"{m}_coverage_80"] <= 0.90, (system, m, s)


@pytest.mark.parametrize("system", ["h100_sxm", "b200_sxm"])
def test_recorded_kfold_coverage(doc, system):
    s = doc["out_of_sample"]["kfold"][system]["backend"]
    for m in fi.METRICS:
        assert 0.70 <= s[f"{m}_coverage_80"] <= 0.90, (m, s)
    assert s["tpot_width_80"] <= 1.8


_WIDE = ("held out by whole deployment, the TTFT interval is wider than the 2.5 target (median p90/p10 2.92 "
         "h100, 3.12 b200 in docs/intervals.md): a deployment's TTFT bias is not in its features")


@pytest.mark.parametrize("system", [pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=_WIDE))
                                    for s in ("h100_sxm", "b200_sxm")])
def test_ttft_width_target(doc, system):
    assert doc["out_of_sample"]["kfold"][system]["backend"]["ttft_width_80"] <= 2.5


@pytest.mark.parametrize("system", ["h100_sxm", "b200_sxm"])
def test_ttft_width_no_wider_than_shipped(doc, system):
    """Conditioning TTFT on its own prediction took the width (held out by measured row)
    from 3.8-4.3 to about 2.6; held out by deployment it is 3.1-3.2: a refit must not lose that."""
    assert doc["out_of_sample"]["kfold"][system]["backend"]["ttft_width_80"] <= 3.4


def test_every_cell_holds_the_point_prediction():
    for t in iv.load_intervals().tables.values():
        assert (t.lo <= 0).all() and (t.hi >= 0).all() and np.isfinite(t.lo).all() and np.isfinite(t.hi).all()
        assert (t.hi - t.lo > 0).all()


def _features(n: int, rng) -> dict:
    return {"mode": pd.Categorical(rng.choice(["agg", "disagg", "afd"], n)),
            "backend": pd.Categorical(rng.choice(["", "trtllm", "vllm", "sglang"], n)),
            "bottleneck": pd.Categorical(rng.choice(["compute", "memory", "comm", "kv_capacity"], n)),
            "moe": rng.random(n) < 0.5, "mla": False,
            "concurrency": rng.integers(1, 4096, n), "isl": rng.integers(64, 131072, n),
            "osl": rng.integers(16, 16384, n), "ttft": rng.uniform(5, 60_000, n)}


def test_gather_fallbacks_and_errors():
    t = iv.load_intervals()
    base = {"mode": "disagg", "backend": "trtllm", "bottleneck": "memory", "moe": True, "mla": True,
            "concurrency": 64, "isl": 1024, "osl": 1024, "ttft": 400.0}
    a = iv.intervals(base)
    assert iv.intervals({**base, "mode": "afd"}) == a                      # afd is read as disagg
    assert iv.intervals({**base, "recorded": True}) == a                   # recorded defaults to True
    assert iv.intervals({**base, "recorded": False}).ttft_hi[0] != a.ttft_hi[0]
    top = 2 ** t.tables["ttft"].levels["concurrency"][-1]
    slow = 2 ** (t.tables["ttft"].levels["ttft"][-1] / 2)
    assert iv.intervals({**base, "ttft": 1e9}) == iv.intervals({**base, "ttft": slow})
    assert iv.intervals({**base, "ttft": np.inf}).ttft_hi[0] > 1                # an infeasible row: some cell
    assert iv.intervals({**base, "concurrency": 10 ** 7}) == iv.intervals({**base, "concurrency": top})
    with pytest.raises(DSEError, match=r"backend: no interval for 'tgi'; allowed: '', 'trtllm'"):
        iv.intervals({**base, "backend": "tgi"})
    with pytest.raises(DSEError, match="missing 'isl'"):
        iv.intervals({k: v for k, v in base.items() if k != "isl"})


def test_unmeasured_combination_takes_the_coarser_cell(res):
    """Too few measured deployments are communication-bound to learn from: those cells take
    the empirical 10 / 90 % quantiles of their (mode, recorded, moe, mla, backend) cell,
    widened to hold 0."""
    t = iv.load_intervals()
    cells = pd.read_csv(hardware_dir() / t.meta["tables"]["tpot"]["file"], keep_default_na=False)
    compute = cells[cells.bottleneck == "comm"]
    assert len(compute) and (compute.source != "cqr").all()
    keys = ["mode", "recorded", "moe", "mla", "backend"]
    cell = compute[(compute["mode"] == "agg") & compute.recorded & ~compute.moe & ~compute.mla
                   & (compute.backend == "vllm")]
    assert (cell.source == "coarse:" + ",".join(keys)).all()
    r = res[(res["mode"] == "agg") & res.recorded & ~res.moe & ~res.mla & (res.backend == "vllm")].r_tpot
    assert len(r) >= fi.MIN_COARSE
    np.testing.assert_allclose(cell.p10, min(r.quantile(0.1), 0.0), atol=1e-4)
    np.testing.assert_allclose(cell.p90, max(r.quantile(0.9), 0.0), atol=1e-4)


def test_gather_speed_and_bounds():
    rng = np.random.default_rng(0)
    n = 2_000_000
    feats = _features(n, rng)
    iv.intervals({k: (v[:10] if np.ndim(v) else v) for k, v in feats.items()})     # load the table
    best = min(_timed(lambda: iv.intervals(feats)) for _ in range(3))
    assert n / best > 1e6, f"{n / best:.3g} rows/s"
    f = iv.intervals(feats)
    assert (f.ttft_lo <= 1).all() and (f.ttft_hi >= 1).all() and (f.tpot_lo <= 1).all() and (f.tpot_hi >= 1).all()


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_meets_slo_prob_limits_monotone_and_exact():
    from scipy.stats import multivariate_normal, norm

    base = {"mode": "agg", "backend": "", "bottleneck": "memory", "moe": False, "mla": False,
            "concurrency": 32, "isl": 1024, "osl": 512, "ttft": 80.0}
    f = iv.intervals(base)
    assert abs(f.rho) < 0.99
    p_inf = iv.meets_slo_prob(80.0, 20.0, np.inf, np.inf, f)
    assert p_inf == 1.0
    slo = np.geomspace(1.0, 10_000.0, 400)
    for ts, ps in ((slo, 200.0), (2000.0, slo / 100)):
        p = iv.meets_slo_prob(80.0, 20.0, ts, ps, f)
        assert (np.diff(p) >= 0).all() and p[0] < 0.01 and p[-1] > 0.99
    # one SLO infinite: the other's marginal; both finite: the bivariate normal CDF
    mu, sd = (np.log(f.tpot_lo) + np.log(f.tpot_hi)) / 2, (np.log(f.tpot_hi) - np.log(f.tpot_lo)) / (2 * iv.Z90)
    np.testing.assert_allclose(iv.meets_slo_prob(80.0, 20.0, np.inf, 22.0, f),
                               norm.cdf((np.log(22.0 / 20.0) - mu) / sd), rtol=1e-12)
    h = (np.log(100 / 80) - (np.log(f.ttft_lo) + np.log(f.ttft_hi)) / 2) / ((np.log(f.ttft_hi / f.ttft_lo)) / (2 * iv.Z90))
    k = (np.log(22.0 / 20.0) - mu) / sd
    want = multivariate_normal(mean=[0, 0], cov=[[1, f.rho], [f.rho, 1]]).cdf([h[0], k[0]])
    np.testing.assert_allclose(iv.meets_slo_prob(80.0, 20.0, 100.0, 22.0, f), want, atol=1e-7)
    # at the p90 latencies the chance of each alone is 0.9
    np.testing.assert_allclose(iv.meets_slo_prob(80.0, 20.0, np.inf, 20.0 * f.tpot_hi, f), 0.9, atol=1e-9)


@pytest.mark.parametrize("rho", [-0.95, -0.6, -0.3, 0.0, 0.06, 0.3, 0.5, 0.7, 0.95])
def test_phi2_matches_owens_t_and_both_cdf_paths_agree(rho, monkeypatch):
    """Plackett's integral by Gauss-Legendre equals the Owen's-T form of the bivariate normal
    CDF (scipy.special) to 1e-10, and the stdlib's erfc gives scipy's ndtr to 1e-12 relative."""
    from scipy.special import ndtr, owens_t

    rng = np.random.default_rng(7)
    h, k = rng.normal(size=5000) * 3, rng.normal(size=5000) * 3
    h[:3], k[:3] = (np.inf, -np.inf, 9.0), (1.0, 0.5, np.inf)
    hc, kc = np.where(h == 0, 1e-12, h), np.where(k == 0, 1e-12, k)
    s = np.sqrt(1 - rho * rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = (0.5 * (ndtr(hc) + ndtr(kc)) - owens_t(hc, (kc - rho * hc) / (hc * s))
                - owens_t(kc, (hc - rho * kc) / (kc * s)) - np.where(hc * kc < 0, 0.5, 0.0))
    want[:3] = ndtr(h[:3]) * ndtr(k[:3])             # at the limits: the product of the marginals
    got = iv._phi2(h, k, rho)
    np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-10, rtol=0)
    with monkeypatch.context() as mp:              # a process that has not imported scipy yet
        mp.setattr(iv, "_priced", 0)
        mp.delitem(__import__("sys").modules, "scipy.special")
        stdlib = iv._ndtr(h)
        assert iv._priced == h.size
    np.testing.assert_allclose(stdlib, ndtr(h), rtol=1e-12, atol=1e-300)
    monkeypatch.setattr(iv, "_priced", iv.STDLIB_VALUES)     # past the stdlib's share: scipy's
    np.testing.assert_array_equal(iv._ndtr(h), ndtr(h))


def test_derived_columns_follow_the_latency_ends():
    rng = np.random.default_rng(1)
    n = 1000
    feats = _features(n, rng)
    conc, osl = feats["concurrency"].astype(float), feats["osl"].astype(float)
    ttft, tpot = rng.uniform(50, 5000, n), rng.uniform(5, 100, n)
    tps = conc * osl / (ttft + (osl - 1) * tpot) * 1e3
    usd_hour, watts, gpus = rng.uniform(5, 500, n), rng.uniform(1e3, 1e5, n), rng.integers(1, 64, n)
    m = {"ttft_ms": ttft, "tpot_ms": tpot, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / gpus,
         "tokens_per_s_per_user": 1e3 / tpot, "usd_per_mtok": usd_hour / (tps * 3600) * 1e6,
         "joules_per_token": watts * 1.3 / tps, "goodput_tokens_per_s": tps * 0.5}
    f = iv.add_interval_columns(m, feats)
    assert set(iv.INTERVAL_COLUMNS) <= set(m)
    for c in ("ttft_ms", "tpot_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user", "usd_per_mtok",
              "joules_per_token", "goodput_tokens_per_s"):
        assert (m[f"{c}_p10"] <= m[c] * (1 + 1e-12)).all() and (m[c] <= m[f"{c}_p90"] * (1 + 1e-12)).all(), c
    slow = conc * osl / (ttft * f.ttft_hi + (osl - 1) * tpot * f.tpot_hi) * 1e3
    fast = conc * osl / (ttft * f.ttft_lo + (osl - 1) * tpot * f.tpot_lo) * 1e3
    np.testing.assert_allclose(m["tokens_per_s_p10"], slow, rtol=1e-12)
    np.testing.assert_allclose(m["tokens_per_s_p90"], fast, rtol=1e-12)
    # a cost's p10 comes from the throughput's p90 (same $/hour), its p90 from the throughput's p10
    np.testing.assert_allclose(m["usd_per_mtok_p10"], usd_hour / (m["tokens_per_s_p90"] * 3600) * 1e6, rtol=1e-12)
    np.testing.assert_allclose(m["usd_per_mtok_p90"], usd_hour / (m["tokens_per_s_p10"] * 3600) * 1e6, rtol=1e-12)
    np.testing.assert_allclose(m["joules_per_token_p10"], watts * 1.3 / m["tokens_per_s_p90"], rtol=1e-12)
    np.testing.assert_allclose(m["tokens_per_s_per_user_p10"], 1e3 / (tpot * f.tpot_hi), rtol=1e-12)


def test_annotate_validation(data):
    from dse.fit import validate

    df = validate.read_measurements(serving.DEFAULT_DATA).iloc[::10].reset_index(drop=True)
    rows, configs = validate.map_rows(df)
    pred = validate.predict(configs)
    for (i, cfg, _), t, p, b in zip(configs, pred.ttft_ms, pred.tpot_ms, pred.bottleneck):
        rows[i].update(ttft_ms_pred=float(t), tpot_ms_pred=float(p), supported=True, config=cfg, bottleneck=b)
    res = pd.DataFrame(rows)
    out = validate.summarize(res)
    __import__('dse.fit.coverage', fromlist=['x']).annotate_validation(res, out)
    s = out["summary"]
    ok = [r for r in out["rows"] if r["supported"]]
    assert ok and all(r["ttft_ms_p10"] <= r["ttft_ms_pred"] <= r["ttft_ms_p90"] for r in ok)
    inside = np.mean([r["tpot_ms_p10"] <= r["tpot_ms_meas"] <= r["tpot_ms_p90"] for r in ok])
    assert s["tpot_coverage_80"] == pytest.approx(inside)
    assert s["ttft_width_80"] == pytest.approx(np.median([r["ttft_ms_p90"] / r["ttft_ms_p10"] for r in ok]))
    assert all(r["ttft_ms_p10"] is None for r in out["rows"] if not r["supported"])
    assert "80 % intervals" in out["table"]


def test_broken_table_is_a_one_line_error(tmp_path):
    src = hardware_dir() / "intervals.yaml"
    doc = yaml.safe_load(src.read_text())
    for m in ("ttft", "tpot"):
        cells = pd.read_csv(hardware_dir() / doc["tables"][m]["file"], keep_default_na=False)
        cells.iloc[:-1 if m == "tpot" else None].to_csv(tmp_path / doc["tables"][m]["file"], index=False)
    (tmp_path / "intervals.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(DSEError, match=rf"intervals_tpot.csv.gz: expected one row per cell of the .* grid, "
                                      rf"got {len(cells) - 1} rows"):
        iv.load_intervals(str(tmp_path / "intervals.yaml"))
    del doc["correlation"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(DSEError, match=r"bad.yaml: not an interval table \(KeyError: 'correlation'\)"):
        iv.load_intervals(str(tmp_path / "bad.yaml"))


@pytest.mark.parametrize("mode, extra", [("agg", {}), ("disagg", {"prefill_workers": 2}),
                                          ("afd", {"attn_gpus": 4, "ffn_gpus": 4})])
def test_every_mode_carries_ordered_intervals(mode, extra):
    """Every prediction of the engine has its p10 <= point <= p90, in every mode; a cost's
    p10 comes with the throughput's p90."""
    import dse
    from dse.deploy.intervals import INTERVAL_COLUMNS
    df = dse.evaluate(model="Qwen/Qwen3-30B-A3B", device=["h100_sxm", "b200_sxm"], mode=mode, tp=2,
                      batch_size=[1, 64], weight_dtype="fp8", ttft_slo_ms=1000, tpot_slo_ms=50, **extra)
    assert set(INTERVAL_COLUMNS) <= set(df.columns)
    ok = df[df.feasible]
    assert len(ok)
    for m in ("ttft_ms", "tpot_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user", "usd_per_mtok",
              "joules_per_token"):
        assert (ok[f"{m}_p10"] <= ok[m] * (1 + 1e-12)).all() and (ok[m] <= ok[f"{m}_p90"] * (1 + 1e-12)).all(), m
    ratio_tok = ok["tokens_per_s_p90"] / ok["tokens_per_s"]
    assert np.allclose(ok["usd_per_mtok"] / ok["usd_per_mtok_p10"], ratio_tok)
    assert ((ok.meets_slo_prob >= 0) & (ok.meets_slo_prob <= 1)).all()
