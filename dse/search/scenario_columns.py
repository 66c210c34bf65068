"""Scenario models built from the engine's columns and metrics at import time.

Why generated: the axes a scenario may search, the workload values it may fix and the
metrics it may limit are whatever `dse.schema` declares, so a new engine column is a
new scenario key (with its type, JSON Schema entry and docs line) without touching this
file. A column without a help line below is documented by its default.
"""
from __future__ import annotations

import functools
import math
from typing import Annotated, Any, ClassVar, Optional, Union

from pydantic import AfterValidator, BeforeValidator, Field, create_model

from dse import schema
from dse.schema import COLUMN_HELP
from dse.catalog.validation import DataModel, NonNegativeInt, PositiveOrInf, fail
from dse.errors import DSEError
from dse.search.encoding import column_kind

__all__ = ["COLUMN_HELP", "AXIS_COLUMNS", "MAX_AXIS_VALUES", "NUMERIC_METRICS", "PLACED_METRICS", "Axes",
           "Workload", "Slos", "Bounds", "RangeForm", "Pow2Form", "LinspaceForm", "element_type", "expand_axis"]

MAX_AXIS_VALUES = 1_000_000
AXIS_COLUMNS = tuple(c for c in schema.COLUMNS if c not in ("model", "mode"))
PLACED_METRICS = ("placed_tokens_per_s", "placed_tpot_ms", "placed_usd_per_mtok", "placed_bottleneck_ms",
                  "placed_num_gpus", "placed_gain")
NUMERIC_METRICS = tuple(m for m in schema.METRICS if m not in schema.NON_NUMERIC_METRICS)



def column_help(col: str) -> str:
    default = schema.COLUMNS.get(col)
    return COLUMN_HELP.get(col, f"engine column {col}") + ("" if default is None else f"; engine default {default!r}")


# ----------------------------------------------------------------------------- values

def _strip(msg: str, prefix: str) -> str:
    return msg[len(prefix) + 2:] if msg.startswith(prefix + ": ") else msg


def _check_category(col: str, val: str) -> str:
    """Device and dtype values are checked against the catalog (the message names the known ones)."""
    if col in schema.DEVICE_COLUMNS and val:
        from dse.catalog.devices import get_device
        try:
            get_device(val)
        except DSEError as exc:
            raise fail(_strip(str(exc), "device")) from None
    elif col in ("kv_tier", "routing"):
        from dse.catalog.kv_tiers import TIERS
        from dse.model.kvcache import ROUTINGS
        words = TIERS if col == "kv_tier" else ROUTINGS
        if val not in words:
            raise fail(f"unknown {col} {val!r}; allowed: {', '.join(w or repr(w) for w in words)}")
    elif col.endswith("dtype") and not (col == "weight_dtype" and val == "native"):
        from dse.catalog import dtypes
        try:
            dtypes.normalize(val, field=col)
        except DSEError as exc:
            raise fail(_strip(str(exc), col)) from None
    return val


def _no_nan(v: float) -> float:
    if math.isnan(v):
        raise fail("expected a number, got NaN")
    return v


@functools.lru_cache(maxsize=None)
def element_type(col: str):
    """The type of one value of a column: strict, NaN refused, inf only where the default is inf."""
    kind = column_kind(col)
    if kind == "str":
        return Annotated[str, AfterValidator(functools.partial(_check_category, col))]
    if kind == "bool":
        return bool
    if kind == "int":
        return NonNegativeInt
    default = schema.COLUMNS.get(col)
    if isinstance(default, float) and math.isinf(default):
        return Annotated[float, AfterValidator(_no_nan)]
    return Annotated[float, Field(allow_inf_nan=False)]


class RangeForm(DataModel):
    """Inclusive arithmetic range: [start, stop] or [start, stop, step]."""
    range: list[float] = Field(min_length=2, max_length=3)


class Pow2Form(DataModel):
    """Powers of two from lo to hi, inclusive."""
    pow2: list[int] = Field(min_length=2, max_length=2)


class LinspaceForm(DataModel):
    """n evenly spaced values from lo to hi, inclusive."""
    linspace: list[float] = Field(min_length=3, max_length=3)


def _number(a: Any) -> bool:
    return isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)


def _expand_form(spec: dict) -> list:
    """{range: [a, b(, step)]} | {pow2: [a, b]} | {linspace: [a, b, n]} -> values (inclusive)."""
    if len(spec) != 1 or next(iter(spec)) not in ("range", "pow2", "linspace"):
        raise fail("expected a list of values or one of {range: [start, stop, step]}, {pow2: [lo, hi]}, "
                   f"{{linspace: [lo, hi, n]}}, got {str(spec)[:60]}")
    form, args = next(iter(spec.items()))
    if not isinstance(args, list) or not all(_number(a) for a in args):
        raise fail(f"expected a list of finite numbers, got {str(args)[:60]}", form)
    if form == "range":
        if len(args) not in (2, 3):
            raise fail(f"expected [start, stop] or [start, stop, step], got {args!r}", form)
        start, stop = args[0], args[1]
        step = args[2] if len(args) == 3 else 1
        if step <= 0:
            raise fail(f"step must be positive, got {step!r}", form)
        n = max(int(math.floor((stop - start) / step + 1e-9)) + 1, 0)
        _cap(n, form)
        vals = [start + i * step for i in range(n)]
        vals = [int(v) for v in vals] if all(isinstance(a, int) for a in args) else [round(float(v), 12) for v in vals]
    elif form == "pow2":
        if len(args) != 2 or not all(float(a).is_integer() and a >= 1 for a in args):
            raise fail(f"expected [lo, hi] with positive integers, got {args!r}", form)
        lo, hi = int(args[0]), int(args[1])
        vals = [1 << k for k in range(int(hi).bit_length()) if lo <= 1 << k <= hi]
    else:
        if len(args) != 3 or not float(args[2]).is_integer() or args[2] < 1:
            raise fail(f"expected [lo, hi, n] with n a positive integer, got {args!r}", form)
        _cap(int(args[2]), form)
        import numpy as np
        vals = [round(float(v), 12) for v in np.linspace(args[0], args[1], int(args[2]))]
    if not vals:
        raise fail(f"{args!r} gives no values: the axis is empty", form)
    return vals


def _cap(n: int, form: str) -> None:
    if n > MAX_AXIS_VALUES:
        raise fail(f"gives {n:,} values, more than the {MAX_AXIS_VALUES:,} an axis may have", form)


def expand_axis(value: Any) -> list:
    """An axis as written (one value, a list or a range form) -> its list of values."""
    if isinstance(value, dict):
        return _expand_form(value)
    if isinstance(value, list):
        if not value:
            raise fail("empty list: the axis needs at least one value")
        return value
    return [value]


def _distinct(values: list) -> list:
    if len(set(values)) == len(values):      # one type per column: the fast common case
        return values
    seen: dict = {}
    for i, v in enumerate(values):
        key = (type(v) is bool, v)
        if key in seen:
            raise fail(f"value {v!r} listed twice (items {seen[key]} and {i})")
        seen[key] = i
    return values


def _axis_type(col: str):
    elem = element_type(col)
    return Annotated[list[elem], BeforeValidator(expand_axis, json_schema_input_type=Union[
        elem, list[elem], RangeForm, Pow2Form, LinspaceForm]), AfterValidator(_distinct)]


# ----------------------------------------------------------------------------- models

class _AxesBase(DataModel):
    unknown_word: ClassVar[str] = "axis"

    @classmethod
    def special_key(cls, key: Any, value: Any) -> str | None:
        if key == "mode":
            return "list serving modes under modes:, not as an axis"
        if key == "model":
            return "the scenario names one model under model:"
        return None


class _WorkloadBase(DataModel):
    unknown_word: ClassVar[str] = "column"

    @classmethod
    def special_key(cls, key: Any, value: Any) -> str | None:
        if key in ("model", "mode"):
            return f"{key} is not a workload column; give it as the scenario's {key}{'s' if key == 'mode' else ''}:"
        if isinstance(value, (list, dict)) and key in AXIS_COLUMNS:
            return "workload values are single values; to sweep it, list it under axes:"
        return None


class _MetricsBase(DataModel):
    unknown_word: ClassVar[str] = "metric"


def _optional(tp, help_text: str):
    return (Optional[tp], Field(None, description=help_text))


Axes = create_model(
    "Axes", __base__=_AxesBase, __doc__="Columns to search: each a value, a list, or a range form.",
    **{c: _optional(_axis_type(c), column_help(c)) for c in AXIS_COLUMNS})
Workload = create_model(
    "Workload", __base__=_WorkloadBase, __doc__="Columns held at one value for every configuration.",
    **{c: _optional(element_type(c), column_help(c)) for c in AXIS_COLUMNS})


def _metric_help(m: str, what: str) -> str:
    info = schema.METRIC_INFO.get(m)
    label = f"{info.label} ({info.unit})" if info and info.unit else (info.label if info else m)
    return f"{what} on {label}"


_Limit = Annotated[float, AfterValidator(_no_nan)]
Slos = create_model(
    "Slos", __base__=_MetricsBase, __doc__="Upper limits (service-level objectives) on metrics; .inf = none.",
    **{m: _optional(PositiveOrInf, _metric_help(m, "upper limit")) for m in NUMERIC_METRICS + PLACED_METRICS})
Bounds = create_model(
    "Bounds", __base__=_MetricsBase, __doc__="Limits on metrics: metric -> number.",
    **{m: _optional(_Limit, _metric_help(m, "limit")) for m in NUMERIC_METRICS + PLACED_METRICS})
