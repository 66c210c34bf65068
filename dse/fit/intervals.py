"""Fit the TTFT / TPOT prediction intervals on out-of-sample residuals.

A model right to within its in-sample error would claim intervals far too narrow for
hardware it was not fitted on, so the residuals are leave-one-system-out: for each
measured system S (h100_sxm, b200_sxm) the serving constants are fitted on the other
system's fully recorded rows (dse.fit.serving.fit), S's rows are predicted with them,
and r = log(measured / predicted) is kept for TTFT and TPOT with the features of
dse.deploy.intervals. Every row is also predicted with the pooled constants (backend
"", what a search uses when it names no framework).

On those residuals, conformalized quantile regression (MAPIE's
ConformalizedQuantileRegressor over scikit-learn's HistGradientBoostingRegressor, 80 %,
train / conformalize split by measured deployment, all its loads on one side) gives p10
and p90 per feature cell. Every feature is discrete, so the model is evaluated on the
whole grid and the grid is shipped (hardware/intervals.yaml + intervals_{ttft,tpot}.csv.gz,
a table per metric over its own features: dse.deploy.intervals.FEATURES), never the model:
  * a cell whose categorical features (mode, recorded, moe, mla, backend, bottleneck)
    were seen with >= MIN_COMBO rows takes the model's value (the trees are piecewise
    constant in the buckets: an unseen bucket takes its neighbours' leaf), unless its
    lower bound lies above its upper one (the quantile trees cross: extrapolation);
  * any other cell falls back to the empirical 10 / 90 % quantiles of the residuals of
    the first coarser cell in FALLBACK with >= MIN_COARSE rows;
  * then the interval is widened to hold 0, so p10 <= point <= p90 everywhere (the point
    prediction is not moved: results do not change).
The same pipeline, fitted on one system's residuals and scored on the other's, gives the
coverage and width it records, and the TTFT-TPOT error correlation meets_slo_prob uses.

`python -m dse.fit.intervals [--measurements FILE] [--out FILE]` refits and writes.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dse.catalog.runtime import bench_rounds_of
from dse.deploy import intervals as rt
from dse.deploy.intervals import CATEGORICAL, FEATURES, METRICS, NUMERIC, bucket
from dse.fit.coverage import config_features
from dse.io import write_text
from dse.schema import BOTTLENECKS

__all__ = ["SYSTEMS", "MIN_COMBO", "MIN_COARSE", "FALLBACK", "loso_constants", "residuals",
           "grid_levels", "deployment_key", "conformalize_rows", "fit_cells", "bounds", "score", "crossfit", "main"]

SYSTEMS = ("h100_sxm", "b200_sxm")
CONFIDENCE = 0.8
MIN_COMBO = 10          # rows of a categorical combination before its model cells are trusted
MIN_COARSE = 30         # rows of a coarser cell before its empirical quantiles are
FALLBACK = (("mode", "recorded", "moe", "mla", "backend"), ("mode", "recorded", "moe", "mla"),
            ("mode", "recorded"), ())
CATEGORIES = {"mode": ("agg", "disagg"), "recorded": (False, True), "moe": (False, True), "mla": (False, True),
              "backend": ("", "trtllm", "vllm", "sglang"), "bottleneck": tuple(BOTTLENECKS)}
SEED = 0


def loso_constants(data) -> dict[str, dict]:
    """Serving constants per held-out system, fitted on the other system's recorded rows."""
    from dse.fit import serving

    return {held: serving.fit(data, data.mask(system=other, recorded=True))
            for held, other in zip(SYSTEMS, SYSTEMS[::-1])}


def residuals(data, constants: dict[str, dict]) -> pd.DataFrame:
    """log(measured / predicted) of every row of each held-out system under the constants
    fitted without it, with its features; once per named backend and once pooled."""
    from dse.fit import validate

    parts = []
    for held, runtime in constants.items():
        idx = np.nonzero(data.mask(system=held))[0]
        for pooled in (False, True):
            sel = [(i, {**cfg, "backend": "" if pooled else cfg.get("backend", ""),
                        "bench_rounds": bench_rounds_of(runtime, "" if pooled else cfg.get("backend", ""))}, r)
                   for i, cfg, r in (data.configs[j] for j in idx)]
            pred = validate.predict(sel, serving=runtime)
            recorded = ~data.meta.assumed.iloc[idx].str.contains("workers").to_numpy()
            feats = config_features([c for _, c, _ in sel], pred.bottleneck.astype(str).to_numpy(), recorded,
                                    ttft=pred.ttft_ms.to_numpy(float))
            parts.append(pd.DataFrame({"id": data.meta.id.iloc[idx].to_numpy(), "system": held, "pooled": pooled,
                                       "deployment": [deployment_key(c) for _, c, _ in (data.configs[j] for j in idx)],
                                       **feats,
                                       "r_ttft": np.log(data.ttft[idx] / pred.ttft_ms.to_numpy(float)),
                                       "r_tpot": np.log(data.tpot[idx] / pred.tpot_ms.to_numpy(float))}))
    res = pd.concat(parts, ignore_index=True)
    ok = np.isfinite(res.r_ttft) & np.isfinite(res.r_tpot)
    for f in NUMERIC:
        res[f] = bucket(res[f], f)
    return res[ok].reset_index(drop=True)


LOAD = ("batch_size", "prefill_batch_size", "decode_batch_size", "isl", "osl", "bench_rounds")


def deployment_key(cfg: dict) -> str:
    """One measured deployment (model, system, formats, layout, workers), whatever its load
    and prompt lengths: the unit that is held out. The file measures each deployment at
    many concurrencies, and their errors share the deployment's bias, so a row whose
    deployment is in the fit is no stand-in for a deployment never measured."""
    return repr(sorted((k, str(v)) for k, v in cfg.items() if k not in LOAD))


def grid_levels(res: pd.DataFrame) -> dict[str, dict[str, tuple]]:
    """Per metric, the levels of each of its features: the fixed categories, and the
    buckets the data spans."""
    def one(f):
        if f in CATEGORICAL:
            return CATEGORIES[f]
        return tuple(range(int(res[f].min()), int(res[f].max()) + 1))
    return {m: {f: one(f) for f in FEATURES[m]} for m in METRICS}


def _encode(df: pd.DataFrame, levels: dict) -> np.ndarray:
    return np.stack([rt._codes(f, df[f].to_numpy(), lv, bucketed=True) for f, lv in levels.items()], axis=1)


def _grid(levels: dict) -> pd.DataFrame:
    idx = pd.MultiIndex.from_product(list(levels.values()), names=list(levels))
    return idx.to_frame(index=False)


def conformalize_rows(ids: np.ndarray, seed: int = SEED) -> np.ndarray:
    """Mask of the rows held out of the trees to conformalize them: 30 % of the deployments,
    each whole (all its loads, its named-backend and pooled residuals), so the conformal step
    calibrates on deployments the trees never saw, as every deployment of a new system is."""
    from sklearn.model_selection import GroupShuffleSplit

    _, cal = next(GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=seed).split(ids, groups=ids))
    out = np.zeros(len(ids), dtype=bool)
    out[cal] = True
    return out


@contextlib.contextmanager
def _quiet():
    """MAPIE logs every crossing of its quantile trees at INFO; the crossing is harmless
    here (each interval is widened to hold 0 after conformalizing)."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _held(model, side: int):
    """A fitted quantile model whose lower (side -1) or upper (+1) bound is moved to hold 0,
    the point prediction; the conformal step then calibrates the interval as shipped.
    (The class is made here because scikit-learn, the `fit` extra, is imported lazily.)"""
    from sklearn.base import BaseEstimator, RegressorMixin

    class HoldsPoint(RegressorMixin, BaseEstimator):
        def __init__(self, model=None, side=0):
            self.model, self.side = model, side
            self.n_features_in_ = model.n_features_in_ if model is not None else 0

        def fit(self, X, y):
            return self

        def predict(self, X):
            p = self.model.predict(X)
            return np.minimum(p, 0.0) if self.side < 0 else np.maximum(p, 0.0) if self.side > 0 else p

    return HoldsPoint(model, side)


def _cqr(X: np.ndarray, y: np.ndarray, cal: np.ndarray, categorical: list[bool], seed: int):
    """MAPIE CQR over gradient-boosted quantile trees (p10, p90, median), conformalized on
    the interval as it ships: each bound already moved to hold the point prediction, so
    the conformal step's 80 % is the coverage of the shipped interval, not of one that is
    widened after it."""
    from mapie.regression import ConformalizedQuantileRegressor
    from sklearn.base import clone
    from sklearn.ensemble import HistGradientBoostingRegressor

    est = HistGradientBoostingRegressor(loss="quantile", quantile=0.5, max_iter=300, learning_rate=0.05,
                                        max_leaf_nodes=31, min_samples_leaf=10, l2_regularization=1.0,
                                        categorical_features=categorical, early_stopping=False, random_state=seed)
    lo_q, hi_q = (1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2
    fitted = [_held(clone(est).set_params(quantile=q).fit(X[~cal], y[~cal]), side)
              for q, side in ((lo_q, -1), (hi_q, 1), (0.5, 0))]
    model = ConformalizedQuantileRegressor(estimator=fitted, confidence_level=CONFIDENCE, prefit=True)
    return model.conformalize(X[cal], y[cal])


def _coarse(res: pd.DataFrame, grid: pd.DataFrame, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical 10 / 90 % quantiles of the first coarser cell with MIN_COARSE rows, per grid cell."""
    lo, hi = np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    src = np.full(len(grid), "", dtype=object)
    for keys in FALLBACK:
        todo = np.isnan(lo)
        if not keys:
            lo[todo], hi[todo] = res[y].quantile(0.1), res[y].quantile(0.9)
            src[todo] = "all"
            break
        g = res.groupby(list(keys))[y]
        q = pd.DataFrame({"lo": g.quantile(0.1), "hi": g.quantile(0.9), "n": g.size()})
        q = q[q.n >= MIN_COARSE]
        m = grid[list(keys)].merge(q, left_on=list(keys), right_index=True, how="left")
        take = todo & m.lo.notna().to_numpy()
        lo[take], hi[take] = m.lo.to_numpy()[take], m.hi.to_numpy()[take]
        src[take] = "coarse:" + ",".join(keys)
    return lo, hi, src


def fit_cells(res: pd.DataFrame, levels: dict, *, seed: int = SEED) -> dict[str, pd.DataFrame]:
    """The interval tables: per metric, one row per cell of its grid with the p10 / p90 log
    factors, the measured rows in the cell and where the value came from."""
    from threadpoolctl import threadpool_limits

    cal = conformalize_rows(res.deployment.to_numpy(), seed)
    out = {}
    for m in METRICS:
        lv = levels[m]
        feats, cats = list(lv), [f for f in lv if f in CATEGORICAL]
        grid = _grid(lv)
        grid = grid.merge(res.groupby(feats).size().rename("n"), left_on=feats, right_index=True, how="left")
        grid = grid.merge(res.groupby(cats).size().rename("combo"), left_on=cats, right_index=True, how="left")
        trusted = grid.combo.fillna(0).to_numpy() >= MIN_COMBO
        grid["n"] = grid.n.fillna(0).astype(int)
        with threadpool_limits(1), _quiet():      # a few thousand rows: threads only contend
            model = _cqr(_encode(res, lv), res[f"r_{m}"].to_numpy(), cal, [f in CATEGORICAL for f in feats], seed)
            _, band = model.predict_interval(_encode(grid[trusted], lv))
        lo, hi, src = _coarse(res, grid, f"r_{m}")
        use = trusted.copy()
        use[trusted] = band[:, 0, 0] <= band[:, 1, 0]     # crossed quantile trees: extrapolating
        lo[use], hi[use] = band[use[trusted], 0, 0], band[use[trusted], 1, 0]
        grid["p10"] = np.minimum(lo, 0.0).round(4)
        grid["p90"] = np.maximum(hi, 0.0).round(4)
        grid["source"] = np.where(use, "cqr", np.where(trusted, "crossed, " + src, src))
        out[m] = grid.drop(columns="combo")
    return out


def _tables(cells: dict[str, pd.DataFrame], levels: dict) -> rt.Intervals:
    return rt.Intervals(tables={m: rt.table_from_cells(cells[m], m, levels[m], source="fit_cells") for m in METRICS},
                        rho=0.0, meta={})


def bounds(table: rt.Intervals, res: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric, the table's (p10, p90) log factors of each residual row."""
    out = {}
    for m in METRICS:
        t = table.tables[m]
        idx = np.ravel_multi_index(tuple(_encode(res, t.levels).T), t.shape)
        out[m] = (t.lo[idx], t.hi[idx])
    return out


def score(res: pd.DataFrame, b: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Coverage of the 80 % interval and median width p90/p10 of residual rows, named
    backends and pooled apart."""
    out = {}
    for name, part in (("backend", ~res.pooled.to_numpy()), ("pooled", res.pooled.to_numpy())):
        out[name] = {"n": int(part.sum())}
        if not part.any():
            continue
        for m in METRICS:
            lo, hi, r = b[m][0][part], b[m][1][part], res[f"r_{m}"].to_numpy()[part]
            out[name][f"{m}_coverage_80"] = round(float(np.mean((r >= lo) & (r <= hi))), 4)
            out[name][f"{m}_width_80"] = round(float(np.median(np.exp(hi - lo))), 4)
    return out


def crossfit(res: pd.DataFrame, levels: dict, *, folds: int = 5, seed: int = SEED) -> tuple[dict, float]:
    """Out-of-sample checks of the whole pipeline (trees, conformal step, fallbacks, widening):
      kfold         fitted on 4/5 of the measured deployments, scored on the fifth, per system;
      cross_system  fitted on one system's residuals only, scored on the other's (a new
                    system's errors, shifted as a whole, are in no cell of the first);
    and the TTFT-TPOT correlation of the kfold standard scores (named backends)."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import GroupKFold

    oof = {m: (np.empty(len(res)), np.empty(len(res))) for m in METRICS}
    for train, test in GroupKFold(n_splits=folds).split(res, groups=res.deployment.to_numpy()):
        b = bounds(_tables(fit_cells(res.iloc[train], levels, seed=seed), levels), res.iloc[test])
        for m in METRICS:
            oof[m][0][test], oof[m][1][test] = b[m]
    sysv = res.system.to_numpy()
    report = {"kfold": {s: score(res[sysv == s], {m: (lo[sysv == s], hi[sysv == s]) for m, (lo, hi) in oof.items()})
                        for s in SYSTEMS}, "cross_system": {}}
    for s in SYSTEMS:
        test = res[sysv == s]
        report["cross_system"][s] = score(test, bounds(_tables(fit_cells(res[sysv != s], levels, seed=seed), levels),
                                                          test))
    named = ~res.pooled.to_numpy()
    z = {m: (res[f"r_{m}"].to_numpy() - (lo + hi) / 2) / np.maximum((hi - lo) / (2 * rt.Z90), 1e-9)
         for m, (lo, hi) in oof.items()}
    rho_s = spearmanr(z["ttft"][named], z["tpot"][named]).statistic
    return report, float(2 * np.sin(np.pi / 6 * rho_s))   # Spearman -> Pearson of a Gaussian copula


def _versions() -> dict[str, str]:
    import mapie
    import scipy
    import sklearn

    return {"mapie": mapie.__version__, "scikit-learn": sklearn.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "pandas": pd.__version__}


def main(argv: list[str] | None = None) -> None:
    from dse.fit import serving

    ap = argparse.ArgumentParser(prog="python -m dse.fit.intervals", description=__doc__.splitlines()[0])
    ap.add_argument("--measurements", default=str(serving.DEFAULT_DATA), help="measured deployments (silicon CSV)")
    ap.add_argument("--out", default=str(serving.HW / "intervals.yaml"), help="YAML header; the table goes beside it")
    a = ap.parse_args(argv)
    path, out = Path(a.measurements), Path(a.out)
    data = serving.Data(path)
    constants = loso_constants(data)
    res = residuals(data, constants)
    levels = grid_levels(res)
    report, rho = crossfit(res, levels)
    cells = fit_cells(res, levels)
    doc = header(path, data, constants, res, report, rho, cells, a.measurements != str(serving.DEFAULT_DATA))
    doc["tables"] = {}
    for m in METRICS:
        table = out.with_name(f"{out.stem}_{m}.csv.gz")
        cells[m].to_csv(table, index=False, compression={"method": "gzip", "mtime": 0})
        doc["tables"][m] = {"file": table.name, "sha256": hashlib.sha256(table.read_bytes()).hexdigest()[:16],
                            "features": list(levels[m]), "levels": {f: list(v) for f, v in levels[m].items()},
                            "cells_by_source": cells[m].source.value_counts().to_dict()}
    write_text(out, "# Written by `python -m dse.fit.intervals`; do not edit by hand (see docs/intervals.md).\n"
               + yaml.safe_dump(doc, sort_keys=False, width=110))
    for kind, per in report.items():
        for held, r in per.items():
            print(f"{kind} {held}: {r}")
    print(f"rho {rho:.3f}; wrote {out} and its tables")


def header(path, data, constants, res, report, rho, cells, custom: bool) -> dict:
    """The provenance and metadata the table ships with."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "source": {"command": "python -m dse.fit.intervals" + (f" --measurements {path}" if custom else ""),
                   "data": f"{path.name} (sha256 {digest}, {data.n_rows} rows, {len(data.meta)} modelled); "
                           "measured by NVIDIA AIConfigurator, aiconfigurator-core 0.12.0, Apache-2.0",
                   "date": datetime.date.today().isoformat(), "versions": _versions(),
                   "method": f"conformalized quantile regression (mapie ConformalizedQuantileRegressor, "
                             f"confidence {CONFIDENCE}) over HistGradientBoostingRegressor(loss=quantile) on "
                             "leave-one-system-out log(measured/predicted); train/conformalize 70/30 by deployment; "
                             f"seed {SEED}"},
        "meaning": "p10 / p90 of log(measured / predicted) per cell of each metric's table; factor = exp(value); "
                   "widened to hold 0; ttft / tpot features are the point predictions in half-octave buckets",
        "fallback": {"min_combo_rows": MIN_COMBO, "min_coarse_rows": MIN_COARSE,
                     "order": [",".join(k) or "all" for k in FALLBACK]},
        "correlation": {"rho": round(rho, 4),
                        "how": "Spearman of the out-of-fold (kfold) standard scores of TTFT and TPOT, named backends, as a "
                               "Gaussian-copula Pearson"},
        "out_of_sample": report,
        "residuals": {f"{s}/{'pooled' if p else 'backend'}": int(n)
                      for (s, p), n in res.groupby(["system", "pooled"]).size().items()},
        "constants": {held: {"fitted_on": other, "backends": c["backends"], "rounds": float(c["rounds"]),
                             "routing_skew": float(c.get("routing_skew", 0.0))}
                      for (held, c), other in zip(constants.items(), SYSTEMS[::-1])},
    }


if __name__ == "__main__":
    main()
