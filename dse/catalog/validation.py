"""Pydantic models for data files, and pydantic's errors as one line a user can act on.

Every data file (scenario, device, system, facility, sizing) is a `DataModel`: strict types
(`true`/`false` only for booleans, no string-to-number coercion), unknown keys refused with
the allowed ones, NaN refused everywhere and infinity only where a type says "no limit".
`validate` turns the first `ValidationError` into a `DSEError` of the form
`FILE: KEY.PATH[i]: what is wrong, got VALUE` (pydantic's own text is multi-line).
"""
from __future__ import annotations

import difflib
import math
import types
import typing
from typing import Annotated, Any, ClassVar, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from dse.errors import DSEError

__all__ = ["DataModel", "SourcedFile", "validate", "fail", "allowed", "unknown", "Positive", "NonNegative",
           "PositiveOrInf",
           "PositiveInt", "NonNegativeInt", "AtLeastOne", "MAX_INT", "Text", "format_error", "MAX_MESSAGE"]

MAX_MESSAGE = 300        # characters of an error line, roughly (long lists are cut)
_GOT = 60                # characters of the offending value shown


def allowed(names, limit: int = 200) -> str:
    """'a, b, c' cut at `limit` characters with a count of the rest (errors stay one short line)."""
    names = [str(n) for n in names]
    out = ""
    for i, n in enumerate(names):
        piece = n if not out else f", {n}"
        if len(out) + len(piece) > limit:
            return out + f", ... ({len(names) - i} more)"
        out += piece
    return out


def unknown(word: str, key: Any, names) -> str:
    """"unknown key 'x' (did you mean 'y'?); allowed: ..." """
    near = difflib.get_close_matches(str(key), [str(n) for n in names], n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown {word} {_short(key)}{hint}; allowed: {allowed(names)}"


def fail(msg: str, *at: str | int) -> PydanticCustomError:
    """An error for a validator to raise; `at` extends the key path below the validated value."""
    return PydanticCustomError("dse", "{msg}", {"msg": msg, "at": tuple(at)})


def _no_nan(v: float) -> float:
    if math.isnan(v):
        raise fail("expected a number, got NaN")
    return v


Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveOrInf = Annotated[float, Field(gt=0), AfterValidator(_no_nan)]   # .inf = no limit
MAX_INT = 2**53          # integers stay exact in the engine's float64 arithmetic
PositiveInt = Annotated[int, Field(gt=0, le=MAX_INT)]
NonNegativeInt = Annotated[int, Field(ge=0, le=MAX_INT)]
AtLeastOne = Annotated[int, Field(ge=1, le=MAX_INT)]
Text = Annotated[str, Field(min_length=1)]


class DataModel(BaseModel):
    """Base of every data-file model: strict, closed, and with unknown keys named."""
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, validate_default=False)
    unknown_word: ClassVar[str] = "key"

    @classmethod
    def special_key(cls, key: Any, value: Any) -> str | None:
        """A subclass's own message for a key it refuses (None: the usual checks)."""
        return None

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        names = [f.alias or n for n, f in cls.model_fields.items()]
        if not isinstance(data, dict):
            raise fail(f"expected a mapping with keys {allowed(names)}, got {_short(data)}")
        for key in data:
            special = cls.special_key(key, data[key])
            if special:
                raise fail(special, str(key))
            if key not in names:
                raise fail(unknown(cls.unknown_word, key, names), str(key))
        return data


class SourcedFile(DataModel):
    """A hardware file: every figure in `SOURCED` that is given carries a non-empty source."""
    sourced: ClassVar[tuple[str, ...]] = ()
    sources: dict[str, Text] = Field(description="where each figure came from: field -> source text "
                                                 "(every figure needs one)")

    @model_validator(mode="after")
    def _every_figure_sourced(self):
        for key in self.sources:
            if key not in self.sourced:
                raise fail(f"not a sourced figure; allowed: {allowed(self.sourced)}", "sources", key)
        for f in self.sourced:
            if getattr(self, f, None) is not None and not self.sources.get(f, "").strip():
                raise fail("every figure needs its source", "sources", f)
        return self


# ----------------------------------------------------------------------------- errors

def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _GOT else text[:_GOT - 3] + "..."


def _key_path(loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.startswith(("function-", "json-or-python", "lax-", "strict-"))
                                        or part in ("[key]",)):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(tp):
    """Strip Annotated and Optional to the type that holds values."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            arms = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(arms) != 1:
                return tp
            tp = arms[0]
        else:
            return tp


def _field_at(model, loc):
    """(FieldInfo of the last named field on the path, value type at the end) or (None, None)."""
    tp, field = model, None
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None, None
            tp = field.annotation
        elif typing.get_origin(tp) in (list, tuple) and isinstance(part, int):
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return field, None
    return field, _unwrap(tp)


# pydantic error types whose message does not depend on the field or the bound
_FIXED_PHRASES = {
    "missing": "missing field",
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "expected an integer"),
    **dict.fromkeys(("float_type", "float_parsing"), "expected a number"),
    "finite_number": "expected a finite number (no NaN or infinity here)",
    **dict.fromkeys(("bool_type", "bool_parsing"), "expected true or false"),
    "string_type": "expected a string",
    **dict.fromkeys(("dict_type", "model_type", "model_attributes_type"), "expected a mapping"),
    **dict.fromkeys(("list_type", "tuple_type"), "expected a list"),
    **dict.fromkeys(("string_too_short", "string_pattern_mismatch"), "expected a non-empty string"),
}


def _phrase(err: dict, vtype) -> str:
    t, ctx = err["type"], err.get("ctx") or {}
    what = "an integer" if vtype is int else "a number"
    if t in _FIXED_PHRASES:
        return _FIXED_PHRASES[t]
    if t == "too_short":
        return "expected a non-empty list" if vtype in (list, tuple) or isinstance(err["input"], list) else \
            "expected a non-empty value"
    if t == "greater_than":
        return f"expected a positive {what[2:] if vtype is int else 'number'}" if ctx.get("gt") == 0 \
            else f"expected {what} > {ctx.get('gt')}"
    if t == "greater_than_equal":
        return f"expected a non-negative {'integer' if vtype is int else 'number'}" if ctx.get("ge") == 0 \
            else f"expected {what} >= {ctx.get('ge')}"
    if t in ("less_than_equal", "less_than"):
        return f"expected {what} {'<=' if t == 'less_than_equal' else '<'} {ctx.get('le', ctx.get('lt'))}"
    if t == "literal_error":
        return f"expected one of {ctx.get('expected', '').replace(chr(39), '').replace(' or ', ', ')}"
    msg = err.get("msg", t)
    return msg[0].lower() + msg[1:] if msg else t


def format_error(exc: ValidationError, model, where: str) -> str:
    """The first error of `exc` as `WHERE: KEY.PATH: message, got VALUE` (one line)."""
    err = exc.errors(include_url=False)[0]
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"]) + tuple(ctx.get("at", ()))
    key = _key_path(loc)
    if err["type"] == "dse":
        msg = ctx["msg"]
    else:
        field, vtype = _field_at(model, err["loc"])
        msg = _phrase(err, vtype)
        if err["type"] == "missing":
            name = loc[-1] if loc else "?"
            msg = f"missing field {name!r}" + (f"; required: {field.description}" if field and field.description
                                                 else "")
        else:
            msg += f", got {_short(err['input'])}"
    line = f"{where}: {key}: {msg}" if key else f"{where}: {msg}"
    line = " ".join(line.split())
    return line if len(line) <= MAX_MESSAGE + 100 else line[:MAX_MESSAGE + 97] + "..."


def validate(model, data: Any, where: str, *, context: dict | None = None):
    """`model` validated from `data`, or a one-line DSEError naming `where` and the key path."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise DSEError(format_error(exc, model, where)) from None
