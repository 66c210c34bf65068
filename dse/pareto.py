"""Non-dominated sets and hypervolume for 1-4 objectives on millions of points.

Everything here minimises: callers negate max objectives first (`Space.minimized`).
A point dominates another when it is no worse in every objective and better in one, so
identical points never dominate each other and all copies of a front point stay on it.

The mask is exact: moocore's C dimension sweep (O(n log n) up to 3 objectives,
O(n log^(k-2) n) beyond; a dependency of pymoo) with NaN rows excluded and all copies
of a front point kept. A pure-numpy fallback (a probe pass that drops whatever a few
good points dominate, then a running-minimum sweep for 2-D or Kung's divide and conquer
beyond) serves an install without moocore and is an independent check in the tests.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pareto_mask", "log_transform", "log_inverse", "hypervolume", "reference_box",
           "normalized_hypervolume"]

# A log-like scale defined for every real value: asinh(v / 1e-6) = ln(2e6 v) for positive
# values well above 1e-6 (every metric of interest), monotone through zero and negatives.
LOG_SCALE = 1e-6


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of an n x k array (minimisation).

    Rows holding NaN are never on the front.
    """
    F = np.asarray(points, dtype=float)
    if F.ndim != 2:
        raise ValueError("pareto_mask: expected an n x k array")
    n, k = F.shape
    mask = np.zeros(n, dtype=bool)
    ok = ~np.isnan(F).any(axis=1)
    if n == 0 or k == 0 or not ok.any():
        return mask
    rows = np.nonzero(ok)[0]
    F = F[rows] if rows.size < n else F
    if k == 1:
        mask[rows[F[:, 0] == F[:, 0].min()]] = True
        return mask
    try:
        import moocore  # O(n log n) dimension sweep for k <= 3, in C
    except ImportError:  # pragma: no cover - moocore ships with pymoo
        mask[rows] = _nondominated_numpy(F)
    else:
        mask[rows] = moocore.is_nondominated(F, keep_weakly=True)
    return mask


def _nondominated_numpy(F: np.ndarray) -> np.ndarray:
    """Pure-numpy fallback: probe filter, then lexicographic order with duplicates
    collapsed and a 2-D sweep or Kung's divide and conquer."""
    keep = np.nonzero(_probe_filter(F))[0]
    out = np.zeros(F.shape[0], dtype=bool)
    out[keep] = _nondominated_exact(F[keep])
    return out


def _nondominated_exact(F: np.ndarray) -> np.ndarray:
    order = np.lexsort(F.T[::-1])  # primary key: first objective
    S = F[order]
    new = np.ones(S.shape[0], dtype=bool)
    new[1:] = (S[1:] != S[:-1]).any(axis=1)
    group = np.cumsum(new) - 1           # unique-point id of each sorted row
    U = S[new]                           # unique points, lexicographic order
    if F.shape[1] == 2:
        prev_min = np.minimum.accumulate(np.concatenate([[np.inf], U[:-1, 1]]))
        nd = U[:, 1] < prev_min
    else:
        nd = _nondominated_sorted(U)
    out = np.zeros(F.shape[0], dtype=bool)
    out[order] = nd[group]
    return out


def _probe_filter(F: np.ndarray, max_probes: int = 64) -> np.ndarray:
    """Mask of the points not dominated by a few probes of smallest normalised sum.

    Such a probe is never dominated itself and, on real data, dominates most points, so
    the exact pass that follows sees a small remainder. Exact: only dominated points go.
    """
    n, k = F.shape
    if n < 2048:
        return np.ones(n, dtype=bool)
    lo, hi = F.min(axis=0), F.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    score = ((F - lo) / span).sum(axis=1)
    idx = np.arange(n)
    X, sc = F, score
    used = 0
    while used < max_probes and X.shape[0] >= 2048:
        take = min(8, X.shape[0])
        probes = X[np.argpartition(sc, take - 1)[:take]]
        dominated = np.zeros(X.shape[0], dtype=bool)
        for p in probes:
            le = X[:, 0] >= p[0]
            for c in range(1, k):
                le &= X[:, c] >= p[c]
            sub = np.nonzero(le)[0]
            le[sub[(X[sub] == p).all(axis=1)]] = False   # a copy of the probe is not dominated
            dominated |= le
        used += take
        before = X.shape[0]
        X, sc, idx = X[~dominated], sc[~dominated], idx[~dominated]
        if X.shape[0] > 0.95 * before:
            break
    out = np.zeros(n, dtype=bool)
    out[idx] = True
    return out


def _nondominated_sorted(U: np.ndarray) -> np.ndarray:
    """Non-dominated flags of unique points in lexicographic order (k >= 3).

    Kung's divide and conquer: a point can only be dominated by one before it, so the
    front of the second half is filtered against the front of the first half only.
    """
    nd = np.zeros(U.shape[0], dtype=bool)
    nd[_front(U, 0, U.shape[0])] = True
    return nd


def _front(U: np.ndarray, lo: int, hi: int) -> np.ndarray:
    if hi - lo <= 512:
        X = U[lo:hi]
        le = (X[:, None, :] <= X[None, :, :]).all(axis=2)   # le[j, i]: X_j <= X_i everywhere
        np.fill_diagonal(le, False)
        return lo + np.nonzero(~le.any(axis=0))[0]
    mid = (lo + hi) // 2
    a = _front(U, lo, mid)
    b = _front(U, mid, hi)
    return np.concatenate([a, b[~_dominated_by(U[b], U[a])]])


def _dominated_by(X: np.ndarray, P: np.ndarray) -> np.ndarray:
    """For each row of X: is some row of P <= it everywhere (P, X unique and disjoint)."""
    k = X.shape[1]
    out = np.zeros(X.shape[0], dtype=bool)
    xs = max(1, min(X.shape[0], 4096))
    ps = max(1, int(1e7 // (xs * k)))
    for i in range(0, X.shape[0], xs):
        Xi = X[i:i + xs]
        hit = np.zeros(Xi.shape[0], dtype=bool)
        for j in range(0, P.shape[0], ps):
            hit |= (P[j:j + ps, None, :] <= Xi[None, :, :]).all(axis=2).any(axis=0)
        out[i:i + xs] = hit
    return out


def log_transform(values: np.ndarray, directions: list[str] | tuple[str, ...]) -> np.ndarray:
    """Objective values (n x k, metric units) -> the minimised log-like space of HV and NSGA-II."""
    V = np.asarray(values, dtype=float)
    sign = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    return sign * np.arcsinh(V / LOG_SCALE)


def log_inverse(t: np.ndarray, directions: list[str] | tuple[str, ...]) -> np.ndarray:
    sign = np.array([-1.0 if d == "max" else 1.0 for d in directions])
    return np.sinh(np.asarray(t, dtype=float) * sign) * LOG_SCALE


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume dominated by `points` (minimisation) and bounded by the reference point."""
    P = np.asarray(points, dtype=float)
    ref = np.asarray(ref, dtype=float)
    if P.size == 0:
        return 0.0
    P = P[(P < ref).all(axis=1)]
    if P.shape[0] == 0:
        return 0.0
    if P.shape[1] == 1:
        return float(ref[0] - P[:, 0].min())
    try:
        import moocore
        return float(moocore.hypervolume(P, ref=ref))
    except ImportError:  # pragma: no cover - moocore ships with pymoo
        from pymoo.indicators.hv import HV
        return float(HV(ref_point=ref)(P))


def reference_box(t_front: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ideal, reference) in transformed units: the front's ideal point and its nadir
    pushed out by 10 % of the front's extent (1 unit where the front is flat)."""
    ideal = t_front.min(axis=0)
    nadir = t_front.max(axis=0)
    extent = nadir - ideal
    return ideal, nadir + np.where(extent > 0, 0.1 * extent, 1.0)


def normalized_hypervolume(t_points: np.ndarray, ideal: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume in the box [ideal, ref] scaled to the unit cube (0..1 for points inside it)."""
    span = np.asarray(ref) - np.asarray(ideal)
    if t_points.size == 0:
        return 0.0
    return hypervolume((np.asarray(t_points) - ideal) / span, np.ones_like(span))
