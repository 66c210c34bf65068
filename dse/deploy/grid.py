"""`grid(**axes)`: the product of axes as columns for `evaluate`, which itself pairs
equal-length sequences element-wise rather than crossing them."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dse.errors import DSEError

__all__ = ["grid"]

MAX_ROWS = 100_000_000


def grid(**axes: Any) -> dict[str, np.ndarray]:
    """Every combination of the axes (scalars are held fixed), as equal-length columns:
    `dse.evaluate(**dse.grid(model=..., device=["h100_sxm", "b200_sxm"], tp=[1, 2, 4]))`
    evaluates 6 configurations. The first axis varies slowest."""
    values = {}
    for name, v in axes.items():
        arr = np.asarray(v.to_numpy() if isinstance(v, (pd.Series, pd.Index)) else v, dtype=object)
        if arr.ndim > 1:
            raise DSEError(f"grid: axis {name!r} must be a scalar or a 1-D sequence")
        arr = arr.reshape(-1)
        if arr.size == 0:
            raise DSEError(f"grid: axis {name!r} is empty")
        values[name] = list(arr)
    sizes = [len(v) for v in values.values()]
    total = 1
    for s in sizes:
        total *= s
    if total > MAX_ROWS:
        raise DSEError(f"grid: {total:,} combinations is more than {MAX_ROWS:,}; use a scenario and `dse sweep`")
    idx = np.indices(sizes).reshape(len(sizes), -1)
    return {name: _array(vals)[idx[i]] for i, (name, vals) in enumerate(values.items())}


def _array(vals: list) -> np.ndarray:
    """Strings stay Python strings (object array); numbers and booleans get their numpy type."""
    return np.asarray(vals, dtype=object if any(isinstance(x, str) or x is None for x in vals) else None)
