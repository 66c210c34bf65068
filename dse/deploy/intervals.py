"""Calibrated 80 % prediction intervals for TTFT and TPOT, applied by table lookup.

The point predictions of the engine are not exact: held against measured deployments on
hardware whose measurements it was not fitted on, TTFT and TPOT are off by tens of
percent. `hardware/intervals.yaml` + `intervals_{ttft,tpot}.csv.gz` (written by `python -m
dse.fit.intervals`, conformalized quantile regression on leave-one-system-out residuals)
hold, per cell of discrete features, the 10th and 90th percentiles of
log(measured / predicted). Here they become per-row factors (a vectorized gather: no
fitting library at run time), the *_p10 / *_p90 metric columns derived from them, and
the probability that a row meets both latency SLOs.

Features of a row (dict of arrays or scalars, broadcast together):
  mode        agg / disagg (afd, never measured, is read as disagg: both split pools)
  backend     trtllm / vllm / sglang / "" (the pooled constants)
  bottleneck  compute / memory / comm / kv_capacity (the engine's column)
  moe, mla    bool: the model has MoE FFNs / MLA attention (`model_flags`)
  concurrency users of the deployment unit; isl, osl tokens (log2 buckets, clipped to
              the range the table was fitted on)
  ttft        the point prediction itself, ms (half-octave buckets): how wrong a TTFT is
              depends on its regime (a 30 ms TTFT is launch overheads, a 3 s one is
              queueing behind other prompts), which no configuration column says. It halves
              the TTFT interval's width at the same coverage out of sample; TPOT's own
              prediction narrows TPOT's less, and its table keeps the decode bottleneck
  recorded    bool, default True: the deployment is known in full (False only for the
              measured disagg rows whose worker counts the file leaves out)
Each metric has its own table over its own features (FEATURES[metric]): a grid over every
feature for both would be mostly cells no measurement reaches.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from dse.catalog.cache import cached_arrays
from dse.catalog.runtime import hardware_dir
from dse.catalog.yamlfile import read_mapping
from dse.errors import DSEError

__all__ = ["CATEGORICAL", "NUMERIC", "FEATURES", "INPUTS", "Z90", "IntervalTable", "Intervals", "Factors",
           "load_intervals", "intervals", "feature_codes", "add_interval_columns", "meets_slo_prob", "quantile_factor",
           "model_flags", "bucket", "INTERVAL_COLUMNS", "METRICS", "table_from_cells", "concurrency", "slo_verdict"]

CATEGORICAL = ("mode", "recorded", "moe", "mla", "backend", "bottleneck")
NUMERIC = ("concurrency", "isl", "osl", "ttft")        # stored as log buckets
PER_OCTAVE = {"ttft": 2}                               # buckets per factor of 2 (others: 1)
METRICS = ("ttft", "tpot")
FEATURES = {"ttft": ("mode", "recorded", "moe", "mla", "backend", "concurrency", "isl", "ttft"),
            "tpot": ("mode", "recorded", "moe", "mla", "backend", "bottleneck", "concurrency", "isl", "osl")}
INPUTS = tuple(dict.fromkeys(f for m in METRICS for f in FEATURES[m]))    # what a caller must give
ALIASES = {"mode": {"afd": "disagg"}}          # categories without measurements read as their nearest kin
Z90 = 1.2815515655446004                       # standard normal 90th percentile
INTERVAL_COLUMNS = tuple(f"{m}_{q}" for m in ("ttft_ms", "tpot_ms", "tokens_per_s", "tokens_per_s_per_gpu",
                                              "tokens_per_s_per_user", "usd_per_mtok", "joules_per_token",
                                              "goodput_tokens_per_s") for q in ("p10", "p90"))


@dataclasses.dataclass(frozen=True)
class IntervalTable:
    """One metric's fitted cells as dense arrays over its feature grid (C order over `features`)."""
    metric: str
    features: tuple[str, ...]
    levels: dict[str, tuple]        # categorical: the values; numeric: the buckets lo..hi
    lo: np.ndarray                  # (cells,) log factor at p10
    hi: np.ndarray                  # (cells,) at p90

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(self.levels[f]) for f in self.features)

    @functools.cached_property
    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        """(p10, p90) factors per cell, exponentiated once."""
        return np.exp(self.lo), np.exp(self.hi)


@dataclasses.dataclass(frozen=True)
class Intervals:
    """The tables of every metric, and the correlation of their log errors."""
    tables: dict[str, IntervalTable]
    rho: float
    meta: dict


class Factors(NamedTuple):
    """Multiplicative factors on the point prediction at p10 and p90, per row."""
    ttft_lo: np.ndarray
    ttft_hi: np.ndarray
    tpot_lo: np.ndarray
    tpot_hi: np.ndarray
    rho: float


def _default_path() -> Path:
    return hardware_dir() / "intervals.yaml"


@functools.lru_cache(maxsize=4)
def load_intervals(path: str | None = None) -> Intervals:
    """The interval tables (default hardware/intervals.yaml and the CSVs it names)."""
    p = Path(path) if path else _default_path()
    if not p.is_file():
        raise DSEError(f"{p}: no such file (refit with `python -m dse.fit.intervals`)")
    doc = read_mapping(p)
    tables = {}
    try:
        rho = float(doc["correlation"]["rho"])
        for m in METRICS:
            spec = doc["tables"][m]
            levels = {f: tuple(spec["levels"][f]) for f in FEATURES[m]}
            tables[m] = _cached_table(p, spec["file"], m, levels)
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise DSEError(f"{p}: not an interval table ({type(exc).__name__}: {exc})") from None
    return Intervals(tables=tables, rho=rho, meta=doc)


def _cached_table(p: Path, file: str, m: str, levels: dict[str, tuple]) -> IntervalTable:
    """One metric's table from its CSV, through the per-user cache (dse.catalog.cache) keyed
    by the CSV's bytes, this module's (which derives the arrays) and the levels: parsing the
    CSV is most of a sweep's start-up."""
    def build() -> dict[str, np.ndarray]:
        cells = pd.read_csv(p.parent / file, keep_default_na=False,
                            usecols=[*FEATURES[m], "p10", "p90"],     # not the fit's n / source
                            dtype={f: "category" for f in ("mode", "backend", "bottleneck")})
        t = table_from_cells(cells, m, levels, source=f"{p}: {file}")
        return {"lo": t.lo, "hi": t.hi}

    size = int(np.prod([len(levels[f]) for f in FEATURES[m]]))
    arr = cached_arrays(f"intervals_{m}", [p.parent / file, Path(__file__)], repr((m, FEATURES[m], levels)), build,
                        check=lambda a: all(a.get(k) is not None and a[k].shape == (size,) for k in ("lo", "hi")))
    return IntervalTable(metric=m, features=FEATURES[m], levels=levels, lo=arr["lo"], hi=arr["hi"])


def table_from_cells(cells: pd.DataFrame, metric: str, levels: dict[str, tuple], *,
                     source: str = "intervals") -> IntervalTable:
    """Dense arrays from one row per grid cell (columns FEATURES[metric], p10 and p90)."""
    feats = FEATURES[metric]
    shape = tuple(len(levels[f]) for f in feats)
    try:
        idx = np.zeros(len(cells), dtype=np.int64)
        for f, n in zip(feats, shape):
            col = cells[f]
            vals = col.array if isinstance(col.dtype, pd.CategoricalDtype) else col.to_numpy()
            idx = idx * n + _codes(f, vals, levels[f], bucketed=True, source=source)
        p10, p90 = cells["p10"].to_numpy(float), cells["p90"].to_numpy(float)
    except (KeyError, ValueError) as exc:
        raise DSEError(f"{source}: not an interval table ({type(exc).__name__}: {exc})") from None
    size = int(np.prod(shape))
    # one row per cell: each cell index exactly once (a count, not a sort or hash of ~200k rows)
    if len(cells) != size or (np.bincount(idx, minlength=size) != 1).any():
        raise DSEError(f"{source}: expected one row per cell of the {'x'.join(map(str, shape))} grid, "
                       f"got {len(cells)} rows")
    lo, hi = np.empty(len(cells)), np.empty(len(cells))
    lo[idx], hi[idx] = p10, p90
    return IntervalTable(metric=metric, features=feats, levels=levels, lo=lo, hi=hi)


def concurrency(mode, batch_size, decode_batch_size=0, decode_workers=1) -> np.ndarray:
    """Users of one deployment unit as the engine's columns give them: batch_size (agg,
    afd) or decode_batch_size (0: batch_size) x decode_workers (disagg)."""
    mode = np.asarray(mode.astype(str) if isinstance(mode, pd.Categorical) else mode)
    dec = np.where(np.asarray(decode_batch_size) > 0, decode_batch_size, batch_size)
    return np.where(mode == "disagg", dec * np.asarray(decode_workers), batch_size).astype(float)


def bucket(x: Any, name: str = "") -> np.ndarray:
    """Log bucket of a count or a latency: PER_OCTAVE[name] per factor of 2 (counts: 1 -> 0,
    2 -> 1, 3 -> 2, 6 -> 3 ...; latencies in ms at half octaves: 8 -> 6, 11.3 -> 7)."""
    per = PER_OCTAVE.get(name, 1)
    x = np.nan_to_num(np.asarray(x, dtype=float), nan=1.0, posinf=2.0 ** 60)   # infeasible rows: any cell
    return np.rint(per * np.log2(np.maximum(x, 1.0))).astype(np.int64)


@functools.lru_cache(maxsize=256)
def _lookup(name: str, categories: tuple, levels: tuple) -> tuple[list, np.ndarray]:
    """(the categories as the table names them, each one's index into the levels); the same
    few categories come in every chunk of a sweep."""
    alias = ALIASES.get(name, {})
    words = [alias.get(c, c) for c in categories]
    lut = pd.Index(list(levels), dtype=object).get_indexer(words).astype(np.int64)
    lut.flags.writeable = False
    return words, lut


def _codes(name: str, values: Any, levels: tuple, *, bucketed: bool = False, source: str = "intervals") -> np.ndarray:
    """Index of each value into the feature's levels (numeric features: its clipped bucket)."""
    if name in NUMERIC:
        b = np.asarray(values, dtype=np.int64) if bucketed else bucket(values, name)
        return np.clip(b, levels[0], levels[-1]) - levels[0]
    if name in ("recorded", "moe", "mla"):
        v = np.asarray(values)
        if v.dtype.kind in "OUS":
            v = np.isin(v.astype(str), ("True", "true", "1"))
        return np.asarray(v, dtype=bool).astype(np.int64)   # levels are (False, True)
    cat = values if isinstance(values, pd.Categorical) else pd.Categorical(np.asarray(values, dtype=object))
    words, lut = _lookup(name, tuple(str(c) for c in cat.categories), tuple(levels))
    if (lut < 0).any():
        bad = words[int(np.argmax(lut < 0))]
        raise DSEError(f"{source}: {name}: no interval for {bad!r}; allowed: {', '.join(map(repr, levels))}")
    if (cat.codes < 0).any():
        raise DSEError(f"{source}: {name}: missing value; allowed: {', '.join(map(repr, levels))}")
    return lut[cat.codes]


def feature_codes(features: dict, table: IntervalTable) -> np.ndarray:
    """Flat cell index of every row into one metric's table."""
    missing = [f for f in INPUTS if f not in features and f != "recorded"]
    if missing:
        raise DSEError(f"intervals: features: missing {missing[0]!r}; required: {', '.join(INPUTS)}")
    vals = {f: features.get(f, True) for f in table.features}
    n = max((np.size(v) for v in vals.values() if not isinstance(v, str)), default=1)
    idx = np.zeros(n, dtype=np.int64)
    for f, size in zip(table.features, table.shape):
        v = vals[f]
        if np.ndim(v) == 0:
            v = [v]
        idx = idx * size + _codes(f, v, table.levels[f])
    return idx


def intervals(features: dict, table: Intervals | None = None) -> Factors:
    """Per-row p10 and p90 factors on the point TTFT and TPOT (gathers from the tables)."""
    t = table or load_intervals()
    out = []
    for m in METRICS:
        tab = t.tables[m]
        idx = feature_codes(features, tab)
        lo, hi = tab.factors
        out += [lo[idx], hi[idx]]
    return Factors(*out, rho=t.rho)


def model_flags(model) -> dict[str, bool]:
    """The model features of a dse.catalog.models.Model."""
    return {"moe": bool(model.is_moe), "mla": any(g.attention.kind == "mla" for g in model.groups)}


def add_interval_columns(metrics: dict[str, np.ndarray], features: dict, table: Intervals | None = None,
                         factors: Factors | None = None) -> Factors:
    """Add the *_p10 / *_p90 columns (INTERVAL_COLUMNS) to `metrics` in place.

    Latencies scale by their factors. Throughput is the closed loop's
    concurrency x osl / (ttft + (osl - 1) tpot): its p10 takes both latencies at p90 and
    its p90 both at p10 (a cost or energy per token is the other way round: its p10 comes
    from the throughput's p90). Power and $/hour are held at the point value, and goodput
    scales with throughput at the same load (the SLO-limited load is not searched again).
    """
    f = factors or intervals(features, table)
    ttft, tpot = np.asarray(metrics["ttft_ms"], float), np.asarray(metrics["tpot_ms"], float)
    steps = np.maximum(np.asarray(features["osl"], float) - 1.0, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        e2e = ttft + steps * tpot
        speed = {"p10": e2e / (ttft * f.ttft_hi + steps * tpot * f.tpot_hi),   # throughput ratio, slow end
                 "p90": e2e / (ttft * f.ttft_lo + steps * tpot * f.tpot_lo)}
        for q, other, (tl, pl) in (("p10", "p90", (f.ttft_lo, f.tpot_lo)), ("p90", "p10", (f.ttft_hi, f.tpot_hi))):
            metrics[f"ttft_ms_{q}"] = ttft * tl
            metrics[f"tpot_ms_{q}"] = tpot * pl
            metrics[f"tokens_per_s_per_user_{q}"] = 1e3 / (tpot * (f.tpot_hi if q == "p10" else f.tpot_lo))
            for m in ("tokens_per_s", "tokens_per_s_per_gpu", "goodput_tokens_per_s"):
                if m in metrics:
                    metrics[f"{m}_{q}"] = np.asarray(metrics[m], float) * speed[q]
            for m in ("usd_per_mtok", "joules_per_token"):
                if m in metrics:
                    metrics[f"{m}_{q}"] = np.asarray(metrics[m], float) / speed[other]
    return f


STDLIB_VALUES = 500_000    # normal-CDF values a process takes from the stdlib before scipy (see _ndtr)
_ERFC = np.frompyfunc(math.erfc, 1, 1)
_priced = 0                 # values priced by the stdlib so far in this process


def _ndtr(x) -> np.ndarray:
    """Standard normal CDF, exact to double precision by either of two libraries.

    scipy.special costs ~0.13 s to import here (about a tenth of a small sweep's whole
    process); the stdlib's erfc is as exact but ~8x slower per value. So the first STDLIB_VALUES values
    of a process come from the stdlib and the rest from scipy: the rows priced slowly cost
    at most about what the import would have (a rent-or-buy rule), and a large sweep pays
    the import once."""
    global _priced
    x = np.asarray(x, dtype=float)
    if _priced < STDLIB_VALUES and "scipy.special" not in sys.modules:
        _priced += x.size
        return 0.5 * np.asarray(_ERFC(-x / math.sqrt(2.0)), dtype=float)
    from scipy.special import ndtr

    return ndtr(x)


@functools.lru_cache(maxsize=4)
def _legendre(rho: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights for Plackett's integral over [0, rho]: 8 nodes are
    exact to ~1e-14 up to |rho| 0.5, 24 to ~1e-11 up to 0.95 (against Owen's T, in the tests)."""
    return np.polynomial.legendre.leggauss(8 if abs(rho) <= 0.5 else 24)


def _phi2(h: np.ndarray, k: np.ndarray, rho: float) -> np.ndarray:
    """P(X <= h, Y <= k) for standard normals of correlation rho.

    Plackett's identity (Biometrika 41, 1954): the CDF at rho is the product of the marginals
    plus the integral over r in [0, rho] of the bivariate density at (h, k), here by
    Gauss-Legendre quadrature (numpy; the integrand is smooth for |rho| < 1, and the measured
    rho is small). The integral is taken only where both arguments are within 8 sigma;
    beyond, the product of the marginals is the joint probability to double precision (one
    of them is 0 or 1), which keeps the engine's SLO check cheap on rows far from their limits."""
    h, k = np.broadcast_arrays(np.asarray(h, float), np.asarray(k, float))
    out = np.array(_ndtr(h) * _ndtr(k), dtype=float)   # exact at the limits (inf: 1, -inf: 0)
    near = (np.abs(h) < 8.0) & (np.abs(k) < 8.0) & (rho != 0.0)
    if near.any():
        x, w = _legendre(float(rho))
        r = rho * (x + 1.0) / 2.0                       # the nodes on [0, rho]
        hn, kn = h[near][:, None], k[near][:, None]
        s2 = 1.0 - r * r
        dens = np.exp(-(hn * hn - 2.0 * r * hn * kn + kn * kn) / (2.0 * s2)) / np.sqrt(s2)
        out[near] += (dens @ w) * rho / (4.0 * np.pi)
    return np.clip(out, 0.0, 1.0)


def quantile_factor(lo, hi, q) -> np.ndarray:
    """The q-quantile factor of a metric whose log error is normal with p10/p90 at lo/hi
    (the stdlib's inverse normal CDF, once per distinct q: q is a scenario's confidence)."""
    q = np.asarray(q, dtype=float)
    levels, where = np.unique(q, return_inverse=True)
    z = np.array([math.inf if v >= 1 else -math.inf if v <= 0 else NormalDist().inv_cdf(v) for v in levels])
    z = z[where].reshape(q.shape)
    llo, lhi = np.log(lo), np.log(hi)
    return np.exp((llo + lhi) / 2.0 + z * (lhi - llo) / (2.0 * Z90))


def meets_slo_prob(ttft, tpot, ttft_slo, tpot_slo, factors: Factors) -> np.ndarray:
    """Probability that the true TTFT and TPOT both meet their SLOs.

    The log error of each is normal with the median and spread that put its p10 and p90
    where the table has them; the two errors are correlated by the table's rho (measured
    on the out-of-sample residuals). Monotone in each SLO; 1 where both SLOs are inf."""
    finite = np.isfinite(np.asarray(ttft_slo, float)) | np.isfinite(np.asarray(tpot_slo, float))
    if not np.any(finite):
        return np.ones(np.broadcast(np.asarray(ttft, float), np.asarray(tpot, float)).shape)
    out = []
    for pred, slo, lo, hi in ((ttft, ttft_slo, factors.ttft_lo, factors.ttft_hi),
                              (tpot, tpot_slo, factors.tpot_lo, factors.tpot_hi)):
        llo, lhi = np.log(lo), np.log(hi)
        mu, sd = (llo + lhi) / 2.0, np.maximum((lhi - llo) / (2.0 * Z90), 1e-9)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.log(np.asarray(slo, float)) - np.log(np.asarray(pred, float)) - mu) / sd
        out.append(np.where(np.isposinf(np.asarray(slo, float)), np.inf, np.nan_to_num(z, nan=-np.inf)))
    return _phi2(out[0], out[1], factors.rho)


def slo_verdict(ttft, tpot, ttft_slo, tpot_slo, confidence, factors: Factors) -> tuple[np.ndarray, np.ndarray]:
    """(meets the mean SLOs, the chance both hold): with slo_confidence 0 the point
    prediction decides; above 0 the chance must be at least that confidence."""
    prob = meets_slo_prob(ttft, tpot, ttft_slo, tpot_slo, factors)
    conf = np.asarray(confidence, dtype=float)
    point = (ttft <= ttft_slo) & (tpot <= tpot_slo)
    return np.where(conf > 0, prob >= conf, point), prob
