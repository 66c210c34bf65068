"""Why rows are infeasible: per row a small-integer index into a list of reasons, each a
code from `dse.schema.REASON_CODES` and its text. Code branches on the code, people read
the text; nothing is parsed back from the text."""
from __future__ import annotations

import numpy as np
import pandas as pd

from dse.schema import REASON_CODES

__all__ = ["Reasons"]


class Reasons:
    """Per-row reason indices (0 = feasible) into `texts` and their `kinds` (reason codes)."""

    def __init__(self, n: int):
        self.codes = np.zeros(n, dtype=np.int16)
        self.texts = [""]
        self.kinds = [""]

    def flag(self, mask, kind: str, text: str) -> None:
        """Mark rows of `mask` not already infeasible with reason `kind` ("memory", ...)."""
        mask = np.asarray(mask) & (self.codes == 0)
        if mask.any():
            self.codes[mask] = self._index(kind, text)

    def _index(self, kind: str, text: str) -> int:
        if kind not in REASON_CODES:
            raise ValueError(f"unknown infeasibility code {kind!r}")
        if text not in self.texts:
            self.texts.append(text)
            self.kinds.append(kind)
        return self.texts.index(text)

    def absorb(self, inverse: np.ndarray, other: "Reasons") -> None:
        """Flag row i with other's reason for row inverse[i], in other's order: as if its
        checks had run on these rows (`other` ran them once per distinct row)."""
        codes = other.codes[inverse]
        for j in range(1, len(other.texts)):
            self.flag(codes == j, other.kinds[j], other.texts[j])

    def merge(self, rows, other: "Reasons") -> None:
        lookup = np.array([self._index(k, t) if t else 0 for k, t in zip(other.kinds, other.texts)], dtype=np.int16)
        self.codes[rows] = lookup[other.codes]

    def first(self) -> tuple[int, str, str] | None:
        """(row, code, text) of the first infeasible row, or None."""
        bad = np.nonzero(self.codes)[0]
        if not len(bad):
            return None
        j = self.codes[bad[0]]
        return int(bad[0]), self.kinds[j], self.texts[j]

    def of_kind(self, *kinds: str) -> np.ndarray:
        """Rows whose reason has one of these codes."""
        return np.isin(np.array(self.kinds, dtype=object), kinds)[self.codes]

    def categorical(self) -> pd.Categorical:
        return pd.Categorical.from_codes(self.codes, categories=pd.Index(self.texts, dtype=object))

    def kind_categorical(self) -> pd.Categorical:
        cats = ("",) + REASON_CODES
        lookup = np.array([cats.index(k) for k in self.kinds], dtype=np.int8)
        return pd.Categorical.from_codes(lookup[self.codes], categories=pd.Index(cats, dtype=object))
