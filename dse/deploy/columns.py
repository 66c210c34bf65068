"""Configuration columns in: broadcast to one length, checked, strings as integer codes.

String columns become codes into a small vocabulary (the device columns share one), so
millions of rows never touch Python strings on the engine's hot path.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dse.catalog import dtypes
from dse.catalog.devices import device_ids
from dse.deploy.factorize import factorize
from dse.errors import DSEError
from dse.schema import COLUMNS, DEVICE_COLUMNS, INT_COLUMNS, MODES, ROLE_INT_COLUMNS, STRING_COLUMNS

__all__ = ["broadcast", "check_categories", "used", "vocab_key", "code_of"]


def vocab_key(name: str) -> str:
    return "device" if name in DEVICE_COLUMNS else name


def _arrays(columns: dict[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise DSEError(f"evaluate: unknown column {unknown[0]!r}; allowed: {', '.join(COLUMNS)}")
    for name, default in COLUMNS.items():
        if default is None and name not in columns:
            raise DSEError(f"evaluate: missing required column {name!r}")
    arrays = {}
    n = 1
    for name, default in COLUMNS.items():
        val = columns.get(name, default)
        arr = np.asarray(val if not isinstance(val, (pd.Series, pd.Index)) else val.to_numpy())
        if arr.ndim > 1:
            raise DSEError(f"evaluate: column {name!r} must be a scalar or a 1-D sequence")
        if arr.ndim == 1 and arr.size != 1:
            if n not in (1, arr.size):
                raise DSEError(f"evaluate: column {name!r} has {arr.size} values, others have {n}")
            n = arr.size
        arrays[name] = arr.reshape(-1)
    return arrays, n


def _numeric(name: str, arr: np.ndarray) -> np.ndarray:
    kind = arr.dtype.kind
    if name == "own":
        return arr.astype(bool)
    try:
        arr = arr.astype(float)
    except ValueError:
        raise DSEError(f"evaluate: column {name!r} must be numeric, got {arr[:3].tolist()}") from None
    whole = kind in "iub"                 # integer input: no fractional values to find
    if name in INT_COLUMNS and (np.any(arr < 1) or (not whole and np.any(arr != np.round(arr)))):
        raise DSEError(f"evaluate: column {name!r} must hold positive integers")
    if name in ROLE_INT_COLUMNS and (np.any(arr < 0) or np.any(arr != np.round(arr))):
        raise DSEError(f"evaluate: column {name!r} must hold integers >= 0 (0 = inherit)")
    return arr


def broadcast(columns: dict[str, Any]) -> tuple[dict[str, np.ndarray], int, dict[str, np.ndarray]]:
    """(columns as arrays of one length n, n, vocabulary of each string column)."""
    arrays, n = _arrays(columns)
    out = {}
    raw_codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, arr in arrays.items():
        if name in STRING_COLUMNS:
            raw_codes[name] = factorize(arr)
            continue
        arr = _numeric(name, arr)
        out[name] = np.broadcast_to(arr, (n,)) if arr.size == 1 else arr
    vocab: dict[str, np.ndarray] = {}
    for name, (codes, uniq) in raw_codes.items():
        key = vocab_key(name)
        words = list(vocab.get(key, np.array(["", "native"] if key in ("device", "weight_dtype") else [""],
                                             dtype=object)))
        for w in uniq:
            if w not in words:
                words.append(w)
        vocab[key] = np.array(words, dtype=object)
        lookup = np.array([words.index(w) for w in uniq], dtype=np.int32)
        arr = lookup[codes]
        out[name] = np.broadcast_to(arr, (n,)) if arr.size == 1 else arr
    return out, n, vocab


def used(cols, vocab, name) -> list[str]:
    """The words of a string column that some row uses."""
    codes = np.asarray(cols[name])
    words = vocab[vocab_key(name)]
    if codes.strides and codes.strides[0] == 0:
        codes = codes[:1]
    present = np.bincount(codes.astype(np.intp, copy=False), minlength=len(words)) > 0
    return [str(w) for w in words[present]]


def code_of(vocab, key: str, word: str) -> int:
    words = list(vocab[key])
    return words.index(word) if word in words else -1


def check_categories(cols: dict[str, np.ndarray], vocab: dict[str, np.ndarray], backends) -> None:
    """Unknown ids, modes, backends, formats and out-of-range values: one-line DSEErrors."""
    known_dev = set(device_ids())
    for col in DEVICE_COLUMNS:
        for d in used(cols, vocab, col):
            if (d or col == "device") and d not in known_dev and not d.endswith((".yaml", ".yml")):
                raise DSEError(f"evaluate: {col}: unknown device {d!r}; known: {', '.join(sorted(known_dev))}")
    for m in used(cols, vocab, "mode"):
        if m not in MODES:
            raise DSEError(f"evaluate: mode: unknown mode {m!r}; allowed: {', '.join(MODES)}")
    known_backends = set(backends) | {""}
    for b in used(cols, vocab, "backend"):
        if b not in known_backends:
            raise DSEError(f"evaluate: backend: unknown backend {b!r}; known: {', '.join(sorted(known_backends - {''}))}")
    if np.any(np.asarray(cols["bench_rounds"]) < 1):
        raise DSEError("evaluate: bench_rounds must be >= 1 (inf = steady state)")
    for name in ("weight_dtype", "kv_dtype"):
        for v in used(cols, vocab, name):
            if not (name == "weight_dtype" and v == "native"):
                dtypes.normalize(v, field=name)
    _check_ranges(cols)


def _check_ranges(cols: dict[str, np.ndarray]) -> None:
    bad = (cols["prefix_hit"] < 0) | (cols["prefix_hit"] >= 1)
    if bad.any():
        raise DSEError("evaluate: prefix_hit must be in [0, 1)")
    k = cols["spec_tokens"]
    if np.any((k < 0) | (k != np.round(k))):
        raise DSEError("evaluate: spec_tokens must hold integers >= 0 (0 = no speculative decoding)")
    acc = cols["spec_acceptance"]
    if np.any((acc < 0) | (acc > 1)):
        raise DSEError("evaluate: spec_acceptance must be in [0, 1] (nan = the runtime.yaml default)")
    if np.any(cols["power_cap"] <= 0) or np.any(cols["power_cap"] > 1):
        raise DSEError("evaluate: power_cap is a fraction of TDP in (0, 1]")
