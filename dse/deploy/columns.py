"""Configuration columns in: broadcast to one length, checked, strings as integer codes.

String columns become codes into a small vocabulary (the device columns share one), so
millions of rows never touch Python strings on the engine's hot path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dse.catalog import dtypes
from dse.catalog.devices import device_ids
from dse.catalog.kv_tiers import TIERS
from dse.deploy.factorize import factorize
from dse.errors import DSEError
from dse.model.kvcache import ROUTINGS
from dse.schema import COLUMNS, DEVICE_COLUMNS, INT_COLUMNS, MODES, ROLE_INT_COLUMNS, STRING_COLUMNS

__all__ = ["broadcast", "from_codes", "check_categories", "used", "vocab_key", "code_of", "RULES", "Rule", "check_scalar"]


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
    n, sets_n = 1, ""
    for name, default in COLUMNS.items():
        val = columns.get(name, default)
        try:
            arr = np.asarray(val if not isinstance(val, (pd.Series, pd.Index)) else val.to_numpy())
        except (ValueError, TypeError):       # ragged nesting: no array at all
            arr = np.empty((0, 0))
        if arr.ndim > 1:
            raise DSEError(f"evaluate: column {name!r} must be a scalar or a 1-D sequence")
        if arr.ndim == 1 and arr.size != 1:
            if n not in (1, arr.size):
                raise DSEError(f"evaluate: column {name!r} has {arr.size} values, column {sets_n!r} has {n}")
            n, sets_n = arr.size, name
        arrays[name] = arr.reshape(-1)
    return arrays, n


@dataclass(frozen=True)
class Rule:
    """What a numeric column may hold: [low, high] (open ends where said), whole numbers or
    not; inf only where it means "no limit", NaN only where it has a documented meaning."""
    allowed: str
    low: float = -np.inf
    high: float = np.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    inf: bool = False       # +inf allowed (an SLO or a benchmark length without limit)
    nan: bool = False       # NaN allowed (spec_acceptance: nan = the runtime.yaml default)


RULES: dict[str, Rule] = {
    **{c: Rule("must hold whole numbers >= 1", low=1, integer=True) for c in INT_COLUMNS},
    **{c: Rule("must hold whole numbers >= 0 (0 = inherit)", low=0, integer=True) for c in ROLE_INT_COLUMNS},
    # EPLB replicas: whole numbers; the model bounds them by its expert count (pools.structure_errors)
    "redundant_experts": Rule("must hold whole numbers >= 0 (0 = no redundant experts)", low=0, integer=True),
    "prefix_hit": Rule("must be in [0, 1) (a fraction of the prompt)", low=0, high=1, high_open=True),
    "system_prompt": Rule("must hold whole numbers >= 0 (tokens)", low=0, integer=True),
    "think_time_s": Rule("must be a number >= 0 (s)", low=0),
    "kv_tier_gb": Rule("must be a number >= 0 (GB per GPU)", low=0),
    "kv_tier_gb_s": Rule("must be a number >= 0 (GB/s; 0 = the tier's own link)", low=0),
    "slo_confidence": Rule("must be in [0, 1) (a probability; 0 = the point prediction decides)", low=0, high=1,
                           high_open=True),
    "routing_skew": Rule("must be a number >= 0 (0 = balanced; nan = the typical skew fitted from measured "
                         "deployments, serving_runtime.yaml benchmark.routing_skew)", low=0, nan=True),
    "power_cap": Rule("is a fraction of TDP in (0, 1]", low=0, high=1, low_open=True),
    "bench_rounds": Rule("must be >= 1 (inf = steady state)", low=1, inf=True),
    "max_num_tokens": Rule("must hold whole numbers >= 0 (0 = the backend's default)", low=0, integer=True),
    # drafts per step: MTP / EAGLE draft a handful, tree drafting a few dozen
    "spec_tokens": Rule("must hold integers >= 0 and <= 64 (0 = no speculative decoding)", low=0, high=64,
                        integer=True),
    "spec_acceptance": Rule("must be in [0, 1] (nan = the runtime.yaml default)", low=0, high=1, nan=True),
    "ttft_slo_ms": Rule("must be > 0 ms (inf = no limit)", low=0, low_open=True, inf=True),
    "tpot_slo_ms": Rule("must be > 0 ms (inf = no limit)", low=0, low_open=True, inf=True),
    "ttft_p99_slo_ms": Rule("must be > 0 ms (inf = no limit)", low=0, low_open=True, inf=True),
    "tpot_p99_slo_ms": Rule("must be > 0 ms (inf = no limit)", low=0, low_open=True, inf=True),
    "arrival_rate": Rule("must be a finite number of requests/s >= 0 (0 = the closed loop)", low=0),
}


def _fail(name: str, arr: np.ndarray, bad: np.ndarray, allowed: str) -> DSEError:
    """The one-line error naming the column, the first bad value (and its row) and what is allowed."""
    i = int(np.flatnonzero(bad)[0])
    val = arr[i].item() if isinstance(arr[i], np.generic) else arr[i]
    shown = repr(val) if len(repr(val)) <= 40 else repr(val)[:37] + "..."
    return DSEError(f"evaluate: {name} {allowed}; got {shown}" + (f" in row {i}" if arr.size > 1 else ""))


def _not(arr: np.ndarray, ok) -> np.ndarray:
    return np.fromiter((not ok(x) for x in arr), dtype=bool, count=arr.size)


def _real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _typed(name: str, arr: np.ndarray) -> np.ndarray:
    """The column as float (numbers) or bool (`own`); other types refused."""
    kind = arr.dtype.kind
    if name == "own":
        if kind == "b" or arr.size == 0:
            return arr.astype(bool, copy=False)
        if kind == "O" and pd.api.types.infer_dtype(arr, skipna=False) == "boolean":
            return arr.astype(bool)
        bad = _not(arr, lambda x: isinstance(x, (bool, np.bool_)) or (kind == "U" and x in ("True", "False")))
        raise _fail(name, arr, bad if bad.any() else np.ones(arr.size, bool), "must be true or false")
    if kind in "iuf":
        return arr.astype(float)
    allowed = RULES[name].allowed if name in RULES else "must hold numbers"
    if kind == "O" and not _not(arr, _real).any():
        return arr.astype(float)
    raise _fail(name, arr, _not(arr, _real) if kind == "O" else np.ones(arr.size, bool), allowed)


def _numeric(name: str, arr: np.ndarray) -> np.ndarray:
    """Checked numbers: two reductions on the fast path (NaN propagates through min / max),
    the per-row mask only to name the first bad row."""
    raw, whole = arr, arr.dtype.kind in "iu"     # integer input: no fractional values to find
    arr = _typed(name, arr)
    rule = RULES.get(name)
    if rule is None or arr.size == 0:
        return arr
    vals = arr[~np.isnan(arr)] if rule.nan and np.isnan(arr).any() else arr
    if vals.size:
        lo, hi = vals.min(), vals.max()
        ok = ((lo > rule.low) if rule.low_open else (lo >= rule.low)) and \
             ((hi < rule.high) if rule.high_open else (hi <= rule.high)) and (rule.inf or hi < np.inf)
        if ok and rule.integer and not whole and hi < np.inf:
            ok = bool(np.all(arr == np.floor(arr)))
        if not ok:
            raise _fail(name, raw, ~_in_rule(arr, rule), rule.allowed)
    return arr


def _in_rule(arr: np.ndarray, rule: Rule) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        ok = (arr > rule.low) if rule.low_open else (arr >= rule.low)
        ok &= (arr < rule.high) if rule.high_open else (arr <= rule.high)
        ok &= np.isfinite(arr) | (rule.inf & (arr == np.inf))
        if rule.integer:
            ok &= arr == np.floor(arr)
        if rule.nan:
            ok |= np.isnan(arr)
    return ok


def check_scalar(name: str, value: float, where: str) -> float:
    """One value of column `name` checked by its rule, for callers outside a table (`dse place`)."""
    rule = RULES[name]
    if not _real(value) or not _in_rule(np.array([float(value)]), rule)[0]:
        raise DSEError(f"{where}: {name} {rule.allowed}; got {value!r}")
    return float(value)


def _strings(name: str, arr: np.ndarray) -> np.ndarray:
    """A string column must hold strings: None, NaN or numbers are no device, model or format."""
    if arr.dtype.kind == "U" or arr.size == 0:
        return arr
    if arr.dtype.kind == "O" and pd.api.types.infer_dtype(arr, skipna=False) == "string":
        return arr
    bad = _not(arr, lambda x: isinstance(x, str)) if arr.dtype.kind == "O" else np.ones(arr.size, bool)
    raise _fail(name, arr, bad, "must hold strings (ids)")


def broadcast(columns: dict[str, Any]) -> tuple[dict[str, np.ndarray], int, dict[str, np.ndarray]]:
    """(columns as arrays of one length n, n, vocabulary of each string column)."""
    arrays, n = _arrays(columns)
    out = {}
    raw_codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, arr in arrays.items():
        if name in STRING_COLUMNS:
            raw_codes[name] = factorize(_strings(name, arr))
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


def from_codes(columns: dict[str, Any], codes: dict[str, tuple[np.ndarray, Any]]) -> tuple[dict, int, dict]:
    """`broadcast` for string columns that arrive as integer codes into their own words
    (`codes[name] = (codes, words)`, as a search space holds its axes): the codes are
    remapped into the engine's vocabulary through a lookup of len(words), so no row ever
    becomes a string. `columns`: every other column, checked as `broadcast` checks it."""
    bad = sorted(set(codes) - set(STRING_COLUMNS))
    if bad:
        raise DSEError(f"evaluate: column {bad[0]!r} is not a string column; pass its values")
    words_of = {k: [str(w) for w in ws] for k, (_, ws) in codes.items()}
    placeholder = {k: (ws[0] if ws else "") for k, ws in words_of.items()}
    out, n, vocab = broadcast({**columns, **placeholder})
    for name, (c, _) in codes.items():
        c = np.asarray(c).reshape(-1)
        if n not in (1, c.size) and c.size != 1:
            raise DSEError(f"evaluate: column {name!r} has {c.size} values, the others {n}")
        if c.size and (c.min() < 0 or c.max() >= len(words_of[name])):
            raise DSEError(f"evaluate: column {name!r}: code out of range [0, {len(words_of[name])})")
        n = max(n, c.size)
        key = vocab_key(name)
        words = list(vocab[key])
        for w in words_of[name]:
            if w not in words:
                words.append(w)
        vocab[key] = np.array(words, dtype=object)
        lookup = np.array([words.index(w) for w in words_of[name]], dtype=np.int32)
        out[name] = lookup[c] if c.size != 1 else np.broadcast_to(lookup[c], (n,))
    for name, arr in out.items():
        if arr.size == 1 and n != 1:
            out[name] = np.broadcast_to(arr.reshape(-1), (n,))
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
    for name, words in (("kv_tier", TIERS), ("routing", ROUTINGS)):
        for v in used(cols, vocab, name):
            if v not in words:
                raise DSEError(f"evaluate: {name}: unknown value {v!r}; allowed: {', '.join(w or repr(w) for w in words)}")
    for name in ("weight_dtype", "kv_dtype"):
        for v in used(cols, vocab, name):
            if not (name == "weight_dtype" and v == "native"):
                dtypes.normalize(v, field=name)
