"""Reading catalog YAML files: one mapping per file, typed fields, sourced figures.

Every error is one line naming the file and the field, as the CLI prints it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dse.errors import DSEError


def read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DSEError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DSEError(f"{path}: expected a mapping of fields at the top level")
    return data


def typed_fields(data: dict[str, Any], fields: dict[str, tuple[type, bool]], path: Path | str,
                 skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check names, presence and types (numbers non-negative); return the present fields."""
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DSEError(f"{path}: unknown field {unknown[0]!r}; allowed: {', '.join(fields)}")
    kw: dict[str, Any] = {}
    for name, (typ, required) in fields.items():
        if name in skip:
            continue
        if name not in data:
            if required:
                raise DSEError(f"{path}: missing field {name!r}")
            continue
        val = data[name]
        if typ is float and isinstance(val, (int, float)) and not isinstance(val, bool):
            val = float(val)
        elif typ is int and isinstance(val, int) and not isinstance(val, bool):
            pass
        elif isinstance(val, bool) and typ is not bool or not isinstance(val, typ):
            raise DSEError(f"{path}: {name}: expected {typ.__name__}, got {val!r}")
        if typ in (float, int) and val < 0:
            raise DSEError(f"{path}: {name}: expected a non-negative number, got {val!r}")
        kw[name] = val
    return kw


def require_sources(kw: dict[str, Any], figures, path: Path | str) -> None:
    missing = [f for f in figures if f in kw and not str(kw["sources"].get(f, "")).strip()]
    if missing:
        raise DSEError(f"{path}: sources.{missing[0]}: every figure needs its source")
