"""Rows that share every input share the result: find the distinct rows of a few columns
fast (one hash of a weighted sum, checked exactly), so a phase is priced once per distinct
row and gathered. Used where a sweep repeats inputs: prefills, decode steps, MoE routing."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["KEY_WEIGHTS", "unique_rows", "distinct_rows", "take_rows", "Rows"]


# Square roots of distinct primes are linearly independent over the rationals, so
# integer-valued columns (codes, sizes, lengths) cannot cancel out in the weighted sum.
# (Powers of one number, used before, do: two of them summed to exactly 1.)
KEY_WEIGHTS = tuple(np.sqrt([2.0, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61]))


def unique_rows(*cols) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first row of each distinct combination of `cols`, and each row's group.

    One hash pass over a weighted sum of the columns, then a check that every column is
    constant inside each group (the exact column-by-column factorisation if not)."""
    n = max(np.size(c) for c in cols)
    arrs = [np.broadcast_to(np.asarray(c, dtype=float), (n,)) for c in cols]
    if len(arrs) <= len(KEY_WEIGHTS):
        key = sum(a * w for a, w in zip(arrs, KEY_WEIGHTS))
        inverse, uniq = pd.factorize(key, use_na_sentinel=False)
        first = np.zeros(len(uniq), dtype=np.int64)
        first[inverse[::-1]] = np.arange(n)[::-1]
        if all(np.array_equal(a[first][inverse], a) for a in arrs if a.strides[0]):
            return first, inverse
    key = np.zeros(n, dtype=np.int64)
    for a in arrs:
        codes, uniq = pd.factorize(a, use_na_sentinel=False)      # NaN a value of its own, not -1
        key = pd.factorize(key * len(uniq) + codes)[0]  # stays < n: no overflow
    inverse, uniq_keys = pd.factorize(key)
    first = np.zeros(len(uniq_keys), dtype=np.int64)
    first[inverse[::-1]] = np.arange(n)[::-1]
    return first, inverse


DEDUPE_MIN_ROWS = 256      # fewer rows: pricing them all is cheaper than looking for repeats
DEDUPE_SAMPLE = 2048       # rows (evenly spaced) whose distinct count decides whether to dedupe
DEDUPE_MAX_SHARE = 0.5     # dedupe when at most this share of the rows is distinct
DEDUPE_SAMPLE_SHARE = 0.25  # ... and a sample suggests at most this share (a clear margin: sampling is noisy)


def distinct_rows(cols) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(first row of each distinct combination of `cols`, each row's group, rows) when the rows
    repeat enough for pricing each distinct one once and gathering to pay, else None.

    The decision reads an evenly spaced sample: its u distinct values, f1 of them seen once
    and f2 twice, put the whole's distinct count near u + f1^2 / (2 f2) (Chao's estimator,
    which a long tail of single rows does not fool). The answer is exact either way."""
    n = max(np.size(c) for c in cols)
    if n < DEDUPE_MIN_ROWS or len(cols) > len(KEY_WEIGHTS):
        return None
    step = max(n // DEDUPE_SAMPLE, 1)
    key = sum(np.broadcast_to(np.asarray(c, dtype=float), (n,))[::step] * w for c, w in zip(cols, KEY_WEIGHTS))
    counts = np.bincount(pd.factorize(key)[0])
    f1, f2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
    if counts.size + f1 * (f1 - 1) / (2.0 * (f2 + 1)) > DEDUPE_SAMPLE_SHARE * n:
        return None
    first, inverse = unique_rows(*cols)
    if len(first) > DEDUPE_MAX_SHARE * n:
        return None
    return first, inverse, n


def take_rows(col, first: np.ndarray, n: int) -> np.ndarray:
    """The rows `first` of a column given as a scalar or an array of n."""
    return np.broadcast_to(np.asarray(col, dtype=float), (n,))[first]


class Rows(Mapping):
    """Named columns of a small table (one column per distinct device and format) gathered
    to rows `idx` when first read, a group at a time (the names before a ":" say the group:
    one take for all of a kernel family's figures). take() composes the index instead of
    gathering, so a pool whose figures are only read by deduplicated phases never gathers
    them for every row. A column may be set (replaced by per-row values, as a what-if does)."""

    def __init__(self, names: dict[str, int], table: np.ndarray, idx: np.ndarray, own: dict | None = None):
        self.names, self.table, self.idx = names, table, idx
        self.own = dict(own or {})          # columns set by hand: per-row arrays
        self.blocks: dict[str, tuple[dict, np.ndarray]] = {}

    def __getitem__(self, k: str) -> np.ndarray:
        if k in self.own:
            return self.own[k]
        group = k.split(":", 1)[0] if ":" in k else ""
        if group not in self.blocks:
            if k not in self.names:
                raise KeyError(k)
            members = {m: r for m, r in self.names.items() if (m.split(":", 1)[0] if ":" in m else "") == group}
            self.blocks[group] = ({m: i for i, m in enumerate(members)},
                                  np.take(self.table[list(members.values())], self.idx, axis=1))
        pos, block = self.blocks[group]
        return block[pos[k]]

    def __setitem__(self, k: str, v) -> None:
        self.own[k] = np.broadcast_to(np.asarray(v, dtype=float), self.idx.shape)

    def __iter__(self):
        return iter({**self.names, **self.own})

    def __len__(self) -> int:
        return len({**self.names, **self.own})

    def take(self, sel) -> "Rows":
        return Rows(self.names, self.table, self.idx[sel], {k: v[sel] for k, v in self.own.items()})

    def family(self, prefix: str) -> "Rows":
        """The columns named `prefix`:name, under their short names (one group)."""
        cut = len(prefix) + 1
        return Rows({k[cut:]: r for k, r in self.names.items() if k.startswith(prefix + ":")}, self.table, self.idx,
                    {k[cut:]: v for k, v in self.own.items() if k.startswith(prefix + ":")})
