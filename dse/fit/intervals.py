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
train / conformalize split by measured row) gives p10 and p90 per feature cell. Every
feature is discrete, so the model is evaluated on the whole grid and the grid is shipped
(hardware/intervals.yaml + intervals.csv.gz), never the model:
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

from dse.deploy import intervals as rt
from dse.deploy.intervals import CATEGORICAL, FEATURES, METRICS, NUMERIC, bucket
from dse.fit.coverage import config_features
from dse.io import write_text
from dse.schema import BOTTLENECKS

__all__ = ["SYSTEMS", "MIN_COMBO", "MIN_COARSE", "FALLBACK", "loso_constants", "residuals",
           "grid_levels", "conformalize_rows", "fit_cells", "bounds", "score", "crossfit", "main"]

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
            sel = [(i, {**cfg, "bench_rounds": runtime["rounds"], **({"backend": ""} if pooled else {})}, r)
                   for i, cfg, r in (data.configs[j] for j in idx)]
            pred = validate.predict(sel, serving=runtime)
            recorded = ~data.meta.assumed.iloc[idx].str.contains("workers").to_numpy()
            feats = config_features([c for _, c, _ in sel], pred.bottleneck.astype(str).to_numpy(), recorded)
            parts.append(pd.DataFrame({"id": data.meta.id.iloc[idx].to_numpy(), "system": held, "pooled": pooled,
                                       **feats,
                                       "r_ttft": np.log(data.ttft[idx] / pred.ttft_ms.to_numpy(float)),
                                       "r_tpot": np.log(data.tpot[idx] / pred.tpot_ms.to_numpy(float))}))
    res = pd.concat(parts, ignore_index=True)
    ok = np.isfinite(res.r_ttft) & np.isfinite(res.r_tpot)
    for f in NUMERIC:
        res[f] = bucket(res[f])
    return res[ok].reset_index(drop=True)


def grid_levels(res: pd.DataFrame) -> dict[str, tuple]:
    """Levels of every feature: the fixed categories, and the buckets the data spans."""
    out = {f: CATEGORIES[f] for f in CATEGORICAL}
    out.update({f: tuple(range(int(res[f].min()), int(res[f].max()) + 1)) for f in NUMERIC})
    return out


def _encode(df: pd.DataFrame, levels: dict) -> np.ndarray:
    return np.stack([rt._codes(f, df[f].to_numpy(), levels[f], bucketed=True) for f in FEATURES], axis=1)


def _grid(levels: dict) -> pd.DataFrame:
    idx = pd.MultiIndex.from_product([levels[f] for f in FEATURES], names=list(FEATURES))
    return idx.to_frame(index=False)


def conformalize_rows(ids: np.ndarray, seed: int = SEED) -> np.ndarray:
    """Mask of the rows held out of the trees to conformalize them (30 %, whole measured rows:
    a row's named-backend and pooled residuals stay together)."""
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


def _cqr(X: np.ndarray, y: np.ndarray, cal: np.ndarray, seed: int):
    """MAPIE CQR over gradient-boosted quantile trees."""
    from mapie.regression import ConformalizedQuantileRegressor
    from sklearn.ensemble import HistGradientBoostingRegressor

    est = HistGradientBoostingRegressor(loss="quantile", quantile=0.5, max_iter=300, learning_rate=0.05,
                                        max_leaf_nodes=31, min_samples_leaf=10, l2_regularization=1.0,
                                        categorical_features=[f in CATEGORICAL for f in FEATURES],
                                        early_stopping=False, random_state=seed)
    model = ConformalizedQuantileRegressor(estimator=est, confidence_level=CONFIDENCE)
    return model.fit(X[~cal], y[~cal]).conformalize(X[cal], y[cal])


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


def fit_cells(res: pd.DataFrame, levels: dict, *, seed: int = SEED) -> pd.DataFrame:
    """The interval table: one row per grid cell, p10 / p90 log factors for TTFT and TPOT."""
    from threadpoolctl import threadpool_limits

    grid = _grid(levels)
    X = _encode(res, levels)
    combo = res.groupby(list(CATEGORICAL)).size().rename("combo")
    exact = res.groupby(list(FEATURES)).size().rename("n")
    grid = grid.merge(exact, left_on=list(FEATURES), right_index=True, how="left")
    grid = grid.merge(combo, left_on=list(CATEGORICAL), right_index=True, how="left")
    trusted = grid.combo.fillna(0).to_numpy() >= MIN_COMBO
    grid["n"] = grid.n.fillna(0).astype(int)
    Xg = _encode(grid[trusted], levels)
    cal = conformalize_rows(res.id.to_numpy(), seed)
    for m in METRICS:
        with threadpool_limits(1), _quiet():      # a few thousand rows: threads only contend
            _, band = _cqr(X, res[f"r_{m}"].to_numpy(), cal, seed).predict_interval(Xg)
        lo, hi, src = _coarse(res, grid, f"r_{m}")
        use = trusted.copy()
        use[trusted] = band[:, 0, 0] <= band[:, 1, 0]     # crossed quantile trees: extrapolating
        lo[use], hi[use] = band[use[trusted], 0, 0], band[use[trusted], 1, 0]
        grid[f"{m}_p10"] = np.minimum(lo, 0.0).round(4)
        grid[f"{m}_p90"] = np.maximum(hi, 0.0).round(4)
        grid[f"{m}_source"] = np.where(use, "cqr", np.where(trusted, "crossed, " + src, src))
    return grid.drop(columns="combo")


def _table(cells: pd.DataFrame, levels: dict) -> rt.IntervalTable:
    return rt.table_from_cells(cells, levels, source="fit_cells")


def bounds(table: rt.IntervalTable, res: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric, the table's (p10, p90) log factors of each residual row."""
    idx = np.ravel_multi_index(tuple(_encode(res, table.levels).T), table.shape)
    return {m: (table.lo[idx, j], table.hi[idx, j]) for j, m in enumerate(METRICS)}


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
      kfold         fitted on 4/5 of the measured rows, scored on the fifth, per system;
      cross_system  fitted on one system's residuals only, scored on the other's (a new
                    system's errors, shifted as a whole, are in no cell of the first);
    and the TTFT-TPOT correlation of the kfold standard scores (named backends)."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import GroupKFold

    oof = {m: (np.empty(len(res)), np.empty(len(res))) for m in METRICS}
    for train, test in GroupKFold(n_splits=folds).split(res, groups=res.id.to_numpy()):
        b = bounds(_table(fit_cells(res.iloc[train], levels, seed=seed), levels), res.iloc[test])
        for m in METRICS:
            oof[m][0][test], oof[m][1][test] = b[m]
    sysv = res.system.to_numpy()
    report = {"kfold": {s: score(res[sysv == s], {m: (lo[sysv == s], hi[sysv == s]) for m, (lo, hi) in oof.items()})
                        for s in SYSTEMS}, "cross_system": {}}
    for s in SYSTEMS:
        test = res[sysv == s]
        report["cross_system"][s] = score(test, bounds(_table(fit_cells(res[sysv != s], levels, seed=seed), levels), test))
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
    doc = header(path, data, constants, res, levels, report, rho, cells, a.measurements != str(serving.DEFAULT_DATA))
    table = out.with_suffix(".csv.gz")
    cells.to_csv(table, index=False, compression={"method": "gzip", "mtime": 0})
    doc["table"] = table.name
    doc["table_sha256"] = hashlib.sha256(table.read_bytes()).hexdigest()[:16]
    write_text(out, "# Written by `python -m dse.fit.intervals`; do not edit by hand (see docs/intervals.md).\n"
               + yaml.safe_dump(doc, sort_keys=False, width=110))
    for kind, per in report.items():
        for held, r in per.items():
            print(f"{kind} {held}: {r}")
    print(f"rho {rho:.3f}; wrote {out} and {table}")


def header(path, data, constants, res, levels, report, rho, cells, custom: bool) -> dict:
    """The provenance and metadata the table ships with."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    src = {m: cells[f"{m}_source"].value_counts().to_dict() for m in METRICS}
    return {
        "source": {"command": "python -m dse.fit.intervals" + (f" --measurements {path}" if custom else ""),
                   "data": f"{path.name} (sha256 {digest}, {data.n_rows} rows, {len(data.meta)} modelled); "
                           "measured by NVIDIA AIConfigurator, aiconfigurator-core 0.12.0, Apache-2.0",
                   "date": datetime.date.today().isoformat(), "versions": _versions(),
                   "method": f"conformalized quantile regression (mapie ConformalizedQuantileRegressor, "
                             f"confidence {CONFIDENCE}) over HistGradientBoostingRegressor(loss=quantile) on "
                             "leave-one-system-out log(measured/predicted); train/conformalize 70/30 by row; "
                             f"seed {SEED}"},
        "meaning": "p10 / p90 of log(measured / predicted) per cell; factor = exp(value); widened to hold 0",
        "levels": {f: list(levels[f]) for f in FEATURES},
        "fallback": {"min_combo_rows": MIN_COMBO, "min_coarse_rows": MIN_COARSE,
                     "order": [",".join(k) or "all" for k in FALLBACK], "cells_by_source": src},
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
