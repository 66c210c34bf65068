"""Rows that share every input share the result: find the distinct rows of a few columns
fast (one hash of a weighted sum, checked exactly), so a phase is priced once per distinct
row and gathered. Used where a sweep repeats inputs: prefills, decode steps, MoE routing.
Inside `call_memo()` (one evaluate call) a phase's distinct rows are also kept across the
call's chunks of rows, so a row seen in an earlier chunk is gathered, not priced again."""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd

__all__ = ["KEY_WEIGHTS", "unique_rows", "distinct_rows", "take_rows", "Rows", "call_memo", "memo_rows",
           "MEMO_MAX_ROWS"]


# Square roots of distinct primes are linearly independent over the rationals, so
# integer-valued columns (codes, sizes, lengths) cannot cancel out in the weighted sum.
# (Powers of one number, used before, do: two of them summed to exactly 1.)
KEY_WEIGHTS = tuple(np.sqrt([2.0, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61]))


def unique_rows(*cols) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first row of each distinct combination of `cols`, and each row's group.

    One hash pass over a weighted sum of the columns, then a check that every column is
    constant inside each group (the exact column-by-column factorisation if not). A
    broadcast scalar (a column of one value) groups nothing: it is left out."""
    n = max(np.size(c) for c in cols)
    arrs = [a for a in (np.broadcast_to(np.asarray(c, dtype=float), (n,)) for c in cols) if a.strides[0]]
    if not arrs:
        return np.zeros(min(n, 1), dtype=np.int64), np.zeros(n, dtype=np.int64)
    if len(arrs) <= len(KEY_WEIGHTS):
        key = sum(a * w for a, w in zip(arrs, KEY_WEIGHTS))
        inverse, uniq = pd.factorize(key, use_na_sentinel=False)
        first = np.zeros(len(uniq), dtype=np.int64)
        first[inverse[::-1]] = np.arange(n)[::-1]
        if all(np.array_equal(a[first].take(inverse), a) for a in arrs):
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


MEMO_MAX_ROWS = 1 << 17     # rows one phase keeps across a call (beyond: priced per chunk, as without a memo)
_MEMO: contextvars.ContextVar[dict | None] = contextvars.ContextVar("dse_call_memo", default=None)


@contextlib.contextmanager
def call_memo() -> Iterator[None]:
    """Within: memo_rows keeps the phases' distinct rows across chunks (one call's rows, or
    one search space's calls: the columns' codes mean the same things throughout, and so do
    a key's values). Inside another call_memo it is that one (a sweep's memo spans its
    chunks' evaluate calls)."""
    if _MEMO.get() is not None:
        yield
        return
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


class _Table:
    """A phase's rows kept so far: their keys, the keys' hash (a weighted sum), the values,
    in arrays of doubling capacity (an append copies its rows only)."""

    def __init__(self, keys: list[np.ndarray], values: dict[str, np.ndarray]):
        self.size = len(keys[0])
        self._keys, self._values = [np.array(k) for k in keys], {k: np.array(v) for k, v in values.items()}
        self.hash = _hash(keys)
        self.index = pd.Index(self.hash)
        self.full = False

    @property
    def keys(self) -> list[np.ndarray]:
        return [k[:self.size] for k in self._keys]

    @property
    def values(self) -> dict[str, np.ndarray]:
        return {k: v[:self.size] for k, v in self._values.items()}

    def add(self, keys: list[np.ndarray], values: dict[str, np.ndarray], h: np.ndarray) -> np.ndarray:
        """Append rows; returns their positions."""
        start, end = self.size, self.size + len(h)
        if end > len(self._keys[0]):
            cap = max(end, 2 * len(self._keys[0]))
            self._keys = [np.resize(k, cap) for k in self._keys]
            self._values = {k: np.resize(v, cap) for k, v in self._values.items()}
        for a, b in zip(self._keys, keys):
            a[start:end] = b
        for k, v in self._values.items():
            v[start:end] = values[k]
        self.size = end
        self.hash = np.concatenate([self.hash, h])
        self.index = pd.Index(self.hash)
        self.full = end >= MEMO_MAX_ROWS
        return np.arange(start, end)


def _hash(keys: list[np.ndarray]) -> np.ndarray:
    return sum(a * w for a, w in zip(keys, KEY_WEIGHTS))


def memo_rows(tag: tuple, keys: list[np.ndarray], compute: Callable[[np.ndarray], dict[str, np.ndarray]]
              ) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """(value columns, each row's position in them) for distinct rows given by their `keys`
    (float arrays of one length m), calling compute(rows) (rows: positions among the m)
    for the rows no earlier chunk of this call priced under `tag`; None outside a call_memo,
    or when the keys cannot be matched exactly (a NaN, a hash shared by two keys)."""
    memo = _MEMO.get()
    if memo is None or len(keys) > len(KEY_WEIGHTS):
        return None
    keys = [np.asarray(k, dtype=float) for k in keys]
    table = memo.get(tag)
    if table is None:
        values = compute(np.arange(len(keys[0])))
        table = _Table(keys, values)
        if not table.index.is_unique or np.isnan(table.hash).any():
            memo[tag] = False                  # no exact match possible: price per chunk
            return None
        memo[tag] = table
        return table.values, np.arange(len(keys[0]))
    if table is False:
        return None
    h = _hash(keys)
    where = table.index.get_indexer(h)
    seen = where >= 0
    if not all(np.array_equal(k[seen], t[where[seen]]) for k, t in zip(keys, table.keys)):
        return None                            # a hash match of two different keys: no gather
    new = np.flatnonzero(~seen)
    if new.size:
        values = compute(new)
        if table.full or not pd.Index(h[new]).is_unique or np.isnan(h[new]).any():
            out = {k: np.concatenate([v[where[seen]], values[k]]) for k, v in table.values.items()}
            pos = np.empty(len(h), dtype=np.int64)
            pos[seen], pos[new] = np.arange(int(seen.sum())), int(seen.sum()) + np.arange(new.size)
            return out, pos
        where[new] = table.add([k[new] for k in keys], values, h[new])
    return table.values, where
