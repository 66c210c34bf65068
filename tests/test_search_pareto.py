"""Pareto extraction and hypervolume: exact against a brute-force reference."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dse.pareto import (_nondominated_numpy, hypervolume, log_inverse, log_transform, normalized_hypervolume,
                               pareto_mask, reference_box)


def brute_force(F: np.ndarray) -> np.ndarray:
    """Non-dominated by definition: no other point <= everywhere and < somewhere; NaN rows out."""
    valid = ~np.isnan(F).any(axis=1)
    G = F[valid]
    le = (G[:, None, :] <= G[None, :, :]).all(axis=2)   # le[j, i]: G_j <= G_i everywhere
    lt = (G[:, None, :] < G[None, :, :]).any(axis=2)
    out = np.zeros(F.shape[0], dtype=bool)
    out[valid] = ~(le & lt).any(axis=0)
    return out


@st.composite
def points(draw, max_rows: int = 400):
    """Coordinates from a few small integers, so ties and exact duplicates are frequent;
    some rows hold NaN. Drawn as (shape, levels, seed) to keep hypothesis fast."""
    k = draw(st.integers(1, 4))
    n = draw(st.integers(0, max_rows))
    levels = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    F = rng.integers(0, levels, size=(n, k)).astype(float)
    if n and draw(st.booleans()):
        F[rng.random(n) < 0.1, rng.integers(0, k)] = np.nan
    return F


@settings(max_examples=300, deadline=None)
@given(points())
def test_pareto_mask_matches_brute_force(F):
    np.testing.assert_array_equal(pareto_mask(F), brute_force(F))


@settings(max_examples=50, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(0, 25), st.integers(1, 4)),
                  elements=st.floats(-1e6, 1e6, allow_nan=False, width=32)))
def test_pareto_mask_matches_brute_force_on_arbitrary_floats(F):
    np.testing.assert_array_equal(pareto_mask(F), brute_force(F))


@settings(max_examples=150, deadline=None)
@given(points())
def test_numpy_fallback_matches_brute_force(F):
    F = F[~np.isnan(F).any(axis=1)]
    np.testing.assert_array_equal(_nondominated_numpy(F), brute_force(F))


@settings(max_examples=5, deadline=None)
@given(st.integers(2, 4), st.integers(2049, 2500), st.integers(0, 2**31 - 1))
def test_probe_filter_path_matches_brute_force(k, n, seed):
    """Above 2,048 points the numpy path first filters by probes: still exact."""
    rng = np.random.default_rng(seed)
    F = rng.integers(0, 30, size=(n, k)).astype(float)
    expected = brute_force(F)
    np.testing.assert_array_equal(_nondominated_numpy(F), expected)
    np.testing.assert_array_equal(pareto_mask(F), expected)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_million_points_fast_and_consistent(k):
    rng = np.random.default_rng(k)
    F = rng.random((1_000_000, k))
    import time
    t0 = time.perf_counter()
    mask = pareto_mask(F)
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"{k}-D front of 1M points took {elapsed:.1f} s"
    front = F[mask]
    assert 5 <= mask.sum() < 5000
    # the independent numpy implementation agrees
    np.testing.assert_array_equal(_nondominated_numpy(F), mask)
    # no front point is dominated by another front point
    le = (front[:, None, :] <= front[None, :, :]).all(axis=2) & (front[:, None, :] < front[None, :, :]).any(axis=2)
    assert not le.any()


def test_pareto_mask_degenerate_inputs():
    assert pareto_mask(np.empty((0, 3))).shape == (0,)
    np.testing.assert_array_equal(pareto_mask(np.array([[1.0], [0.0], [0.0]])), [False, True, True])
    np.testing.assert_array_equal(pareto_mask(np.array([[np.nan, 1.0], [2.0, 2.0]])), [False, True])


def test_hypervolume_known_values():
    assert hypervolume(np.array([[1.0, 2.0], [2.0, 1.0]]), np.array([3.0, 3.0])) == pytest.approx(3.0)
    assert hypervolume(np.array([[0.0, 0.0, 0.0]]), np.array([1.0, 2.0, 3.0])) == pytest.approx(6.0)
    # 4-D: two boxes of volume 1 overlapping in a box of volume 0.5
    P = np.array([[0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.5, 0.0]])
    assert hypervolume(P, np.ones(4)) == pytest.approx(0.5 + 0.5 - 0.25)
    # points outside the reference box contribute nothing
    assert hypervolume(np.array([[4.0, 0.0]]), np.array([3.0, 3.0])) == 0.0


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 40), st.just(2)), elements=st.floats(0, 1)))
def test_hypervolume_2d_matches_staircase(P):
    ref = np.array([1.5, 1.5])
    front = P[pareto_mask(P)]
    front = front[np.lexsort(front.T[::-1])]
    xs = np.append(front[:, 0], ref[0])
    expected = sum((xs[i + 1] - xs[i]) * (ref[1] - front[i, 1]) for i in range(len(front)))
    assert hypervolume(P, ref) == pytest.approx(expected)


def test_log_transform_round_trip_and_directions():
    V = np.array([[0.5, 1e4, 3.0], [2.0, 10.0, 0.0]])
    dirs = ["min", "max", "min"]
    t = log_transform(V, dirs)
    np.testing.assert_allclose(log_inverse(t, dirs), V, rtol=1e-9, atol=1e-12)
    assert t[0, 1] < t[1, 1]  # max objective: larger value -> smaller transformed value
    # ratios, not differences: doubling costs the same anywhere above the tiny offset
    assert (log_transform(np.array([[2.0]]), ["min"]) - log_transform(np.array([[1.0]]), ["min"]))[0, 0] == \
        pytest.approx(np.log(2), rel=1e-6)


def test_reference_box_and_normalized_hypervolume():
    t = np.array([[0.0, 1.0], [1.0, 0.0]])
    ideal, ref = reference_box(t)
    np.testing.assert_allclose(ideal, [0, 0])
    np.testing.assert_allclose(ref, [1.1, 1.1])
    assert normalized_hypervolume(np.array([[0.0, 0.0]]), ideal, ref) == pytest.approx(1.0)
    # two 1.1 x 0.1 strips overlapping in a 0.1 x 0.1 corner, in a 1.1 x 1.1 box
    assert normalized_hypervolume(t, ideal, ref) == pytest.approx((0.11 + 0.11 - 0.01) / 1.21, rel=1e-9)
