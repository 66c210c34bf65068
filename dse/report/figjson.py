"""Figures as the plain dicts plotly.js draws, and their JSON as plotly's `to_json` writes
it (numpy arrays as base64 typed arrays, int64 narrowed, non-finite numbers as null), on
the plotly_white template read from the installed plotly package. Building figures with
plotly.graph_objects validated every property: most of the report's time for the same JSON
(tests/test_report_html.py holds the two equal).
"""
from __future__ import annotations

import base64
import functools
import json
import math
import pkgutil
from typing import Any

import numpy as np

__all__ = ["figure", "trace", "fig_json", "script_json"]


@functools.lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    """plotly's plotly_white template, read from the installed plotly package's data file
    (what `plotly.io.templates["plotly_white"]` loads)."""
    return json.loads(pkgutil.get_data("plotly", "package_data/templates/plotly_white.json"))


def figure(traces: list[dict[str, Any]], layout: dict[str, Any]) -> dict[str, Any]:
    """A figure as the plain dict plotly.js draws, on the plotly_white template. Built
    without plotly.graph_objects, whose property validation cost most of the report's
    time; `fig_json` encodes it as plotly's to_json does (tests hold the two equal)."""
    return {"data": list(traces), "layout": {"template": _template(), **layout}}


def trace(kind: str, **props: Any) -> dict[str, Any]:
    return {"type": kind, **props}


def script_json(obj: Any) -> str:
    """JSON safe inside a <script> element (no "</" can close it)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


_INT_RANGES = ((np.int8, -2 ** 7, 2 ** 7 - 1), (np.int16, -2 ** 15, 2 ** 15 - 1), (np.int32, -2 ** 31, 2 ** 31 - 1))
_SHORT_TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
                "float32": "f4", "float64": "f8"}
_UNENCODED = ("geojson", "layer", "layers", "range")   # keys whose arrays plotly never base64-encodes
_ITEM = "\0item"                                          # the "key" of a list's items


def _typed_array(v: np.ndarray) -> Any:
    """A numpy array as plotly.js's typed-array spec (dtype + base64 bytes), int64 narrowed
    to the smallest int type that holds it, as plotly >= 6 writes it; else a plain list."""
    if v.size and v.dtype == np.int64:
        lo, hi = int(v.min()), int(v.max())
        v = next((v.astype(t) for t, a, b in _INT_RANGES if a <= lo and hi <= b), v)
    short = _SHORT_TYPES.get(str(v.dtype))
    if not v.size or short is None:
        return _plain(v.tolist())
    spec = {"dtype": short, "bdata": base64.b64encode(np.ascontiguousarray(v)).decode("ascii")}
    if v.ndim > 1:
        spec["shape"] = str(v.shape)[1:-1]
    return spec


def _plain(obj: Any, key: str = "") -> Any:
    """A figure dict as JSON-ready values: numpy arrays typed (see `_typed_array`),
    numpy scalars as Python numbers, non-finite floats as null."""
    if isinstance(obj, dict):
        return {k: _plain(v, k) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):      # typed only as a dict's value, as plotly's convert_to_base64
        return _plain(obj.tolist()) if key in _UNENCODED or key == _ITEM else _typed_array(obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(v, _ITEM) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def fig_json(fig: dict[str, Any]) -> str:
    """A figure dict as the JSON plotly.js draws, safe inside a <script> element."""
    return script_json(_plain(fig))
