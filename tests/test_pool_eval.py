"""Disaggregated spaces are priced per pool (each distinct prefill, decode, attention or FFN
pool row once, then joined row by row): every metric must equal the row-by-row path's."""
import itertools

import numpy as np
import pandas as pd
import pytest

import dse
from dse.model import dedupe

MOE = "Qwen/Qwen3-30B-A3B"


def _product(axes: dict, **fixed) -> dict:
    grid = list(itertools.product(*axes.values()))
    return {**fixed, **{k: np.array([g[i] for g in grid]) for i, k in enumerate(axes)}}


def _disagg():
    return _product(dict(prefill_device=["h100_sxm", "b200_sxm"], prefill_tp=[1, 4], prefill_ep=[1, 4],
                         decode_device=["h200_sxm", "b200_sxm"], decode_tp=[1, 2], decode_dp=[1, 4], decode_ep=[1, 4],
                         decode_batch_size=[8, 64, 256], prefill_workers=[1, 3], decode_workers=[1, 2],
                         spec_tokens=[0, 2], own=[True, False]),
                    model=MOE, mode="disagg", device="h200_sxm", weight_dtype="fp8", kv_dtype="fp8", isl=4096,
                    osl=512, ttft_slo_ms=1500.0, tpot_slo_ms=40.0)


def _afd(prefill: bool, model: str = MOE):
    axes = dict(attn_device=["h200_sxm", "b200_sxm"], attn_tp=[1, 2, 4], attn_gpus=[4, 8], ffn_device=["b200_sxm", "h100_sxm"],
                ffn_gpus=[4, 8], batch_size=[16, 128], replicas=[1, 2], tpot_slo_ms=[30.0, 80.0])
    if prefill:
        axes.update(prefill_tp=[2, 4], prefill_workers=[1, 2])
    return _product(axes, model=model, mode="afd", device="h200_sxm", weight_dtype="fp8", isl=2048, osl=256,
                    ttft_slo_ms=2000.0, **({"prefill_device": "b200_sxm"} if prefill else {}))


def _row(cols: dict, i: int) -> dict:
    return {k: (v[i] if isinstance(v, np.ndarray) else v) for k, v in cols.items()}


def _assert_rows_equal(got: pd.DataFrame, want: pd.DataFrame, where: str) -> None:
    for col in want.columns:
        a, b = got[col].to_numpy(), want[col].to_numpy()
        if want[col].dtype.kind in "iufb":
            a, b = a.astype(float), b.astype(float)
            same = (a == b) | (np.isnan(a) & np.isnan(b)) | np.isclose(a, b, rtol=1e-9, atol=0.0)
        else:
            same = a.astype(str) == b.astype(str)
        assert same.all(), f"{where}: {col}: rows {np.flatnonzero(~same)[:5]}: {a[~same][:3]} vs {b[~same][:3]}"


@pytest.mark.parametrize("name,cols", [("disagg", _disagg()), ("afd", _afd(False)), ("afd+prefill", _afd(True)),
                                       ("afd dense", _afd(False, "meta-llama/Llama-3.1-8B"))])
def test_pool_level_evaluation_equals_the_row_by_row_path(name, cols, monkeypatch):
    monkeypatch.setattr("dse.deploy.evaluate.CHUNK_ROWS", 1024)      # several chunks, each with repeats
    n = len(next(v for v in cols.values() if isinstance(v, np.ndarray)))
    whole = dse.evaluate(strict=False, **cols)
    assert len(whole) == n and whole.feasible.sum() > n // 10, name
    sample = np.random.default_rng(15).choice(n, 40, replace=False)
    alone = pd.concat([dse.evaluate(strict=False, **_row(cols, int(i))) for i in sample], ignore_index=True)
    _assert_rows_equal(whole.iloc[sample].reset_index(drop=True), alone, name)
    # and without any deduplication (every row priced in full): the same numbers
    monkeypatch.setattr(dedupe, "DEDUPE_MAX_SHARE", 0.0)
    _assert_rows_equal(whole, dse.evaluate(strict=False, **cols), name + " (no dedupe)")


def test_the_disagg_space_repeats_its_pools():
    """What the test above relies on: a product space holds each decode pool many times over
    (under every prefill pool and worker count), and distinct_rows finds them exactly."""
    c = _disagg()
    cols = [np.unique(c[k], return_inverse=True)[1].astype(float) for k in
            ("decode_device", "decode_tp", "decode_dp", "decode_ep", "decode_batch_size", "spec_tokens")]
    groups = dedupe.distinct_rows(cols)
    assert groups is not None
    first, inverse, n = groups
    assert len(first) == 2 * 2 * 2 * 2 * 3 * 2 and n == len(c["own"])
    for col in cols:
        assert np.array_equal(col[first][inverse], col)


def test_distinct_rows_declines_rows_that_barely_repeat():
    rng = np.random.default_rng(0)
    n = 20_000
    assert dedupe.distinct_rows([rng.random(n), np.ones(n)]) is None                 # all distinct
    assert dedupe.distinct_rows([rng.integers(0, 3, 100).astype(float)]) is None     # too few rows to bother
    # a long tail of single rows behind a few heavy repeats: most rows are distinct, so no
    tail = np.concatenate([np.zeros(n // 4), rng.random(3 * n // 4)])
    assert dedupe.distinct_rows([tail]) is None
    few = rng.integers(0, 50, n).astype(float)
    first, inverse, _ = dedupe.distinct_rows([few, 2 * few])
    assert len(first) == len(np.unique(few)) and np.array_equal(few[first][inverse], few)


def test_unique_rows_keeps_nan_rows_apart():
    """NaN is a value of its own: rows (0, 7) and (1, nan) are different rows (a -1 code for
    NaN made 1 * 2 - 1 == 0 * 2 + 1 in the exact path and merged them)."""
    x = np.array([0.0, 0.0, 1.0] * 100)
    y = np.array([5.0, 7.0, np.nan] * 100)
    first, inverse = dedupe.unique_rows(x, y)
    assert len(first) == 3 and len(set(inverse[:3])) == 3


def test_unique_rows_of_a_constant_nan_column():
    first, inverse = dedupe.unique_rows(np.broadcast_to(np.nan, (300,)), np.arange(300.0) % 3)
    assert len(first) == 3 and np.array_equal(inverse[:6], [0, 1, 2, 0, 1, 2])
