"""Evaluate configurations by space index: decode, run the model, apply the scenario's limits.

Every strategy and every worker (joblib, Dask) goes through `evaluate_batch`, so that
`feasible` means the same everywhere: the model's own verdict (structure, memory) and
the scenario's limits (SLOs, GPUs, power, budget, metric bounds).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd

from dse.search.space import Space
from dse.deploy.columns import from_codes
from dse.deploy.context import make_context
from dse.deploy.evaluate import evaluate_columns

__all__ = ["evaluate_batch", "evaluate_chunk"]


def evaluate_batch(space: Space, indices: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows for `indices` (config_id first, then evaluate's columns) and the n x (1 + c)
    violation matrix: column 0 is 1 for a configuration the model rejects, then one column
    per constraint holding (value - limit) / |limit| for an upper limit (> 0 = violated)."""

    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    # axis values go to the engine as integer codes into the axes' words (no string per row)
    cols, n, vocab = from_codes(*space.coded(idx))
    df = evaluate_columns(cols, n, vocab, make_context(facility=space.facility_overrides()), strict=False)
    if space.placement:
        from dse.solvers import placed
        df = placed.add_metrics(df, dict(space.placement))
    df.insert(0, "config_id", idx)
    model_ok = df["feasible"].to_numpy(dtype=bool)
    G = np.zeros((idx.size, 1 + len(space.constraints)))
    G[:, 0] = np.where(model_ok, 0.0, 1.0)
    reason, code = pd.Categorical(df["infeasible_reason"]), pd.Categorical(df["infeasible_code"])
    r_codes, r_words = np.array(reason.codes, dtype=np.int32), list(reason.categories)
    k_codes, k_words = np.array(code.codes, dtype=np.int32), list(code.categories)
    ok = model_ok.copy()
    for j, c in enumerate(space.constraints):
        v = df[c.metric].to_numpy(dtype=float)
        scale = abs(c.limit) if c.limit and np.isfinite(c.limit) else 1.0     # .inf: no limit, never broken
        viol = (v - c.limit) / scale if c.bound == "max" else (c.limit - v) / scale
        viol = np.nan_to_num(viol, nan=1.0, posinf=1e6, neginf=-1e6)
        G[:, 1 + j] = viol
        bad = viol > 0
        hit = ok & bad
        if hit.any():    # the first limit a row breaks names it (codes, not a string per row)
            r_codes[hit] = _word(r_words, f"{c.key}: {c.metric} {'>' if c.bound == 'max' else '<'} {c.limit:g}")
            k_codes[hit] = _word(k_words, "constraint")
        ok &= ~bad
    df["feasible"] = ok
    df["infeasible_reason"] = pd.Categorical.from_codes(r_codes, categories=pd.Index(r_words, dtype=object))
    df["infeasible_code"] = pd.Categorical.from_codes(k_codes, categories=pd.Index(k_words, dtype=object))
    return df, G


def _word(words: list, w: str) -> int:
    if w not in words:
        words.append(w)
    return words.index(w)


def evaluate_chunk(space: Space, lo: int, hi: int) -> tuple[int, int, pd.DataFrame, float]:
    """One grid chunk, deployable positions [lo, hi): what a joblib or Dask worker runs
    (eval_index is the config id, as for a grid over every row)."""
    t0 = time.perf_counter()
    df, _ = evaluate_batch(space, space.positions(lo, hi))
    df.insert(1, "eval_index", df["config_id"].to_numpy())
    return lo, hi, df, time.perf_counter() - t0
