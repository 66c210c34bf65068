"""Facility: where the hardware runs and what power, space and capital cost.

One YAML file (`hardware/facility.yaml`) holds the default, with a source for every
figure. A run overrides single values by keyword (`get_facility(pue=1.1)`) or points at
its own file (`get_facility("my_site.yaml")`).
"""
from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from pathlib import Path
from typing import Any

from dse.catalog.yamlfile import read_mapping, require_sources, typed_fields
from dse.errors import DSEError

# field -> (type, required)
FIELDS: dict[str, tuple[type, bool]] = {
    "pue": (float, True),                        # total facility power / IT power
    "usd_per_kwh": (float, True),                # electricity price
    "amortization_years": (float, True),         # capex write-off period for servers
    "facility_usd_per_kw_month": (float, True),  # space/cooling/power infrastructure per kW of IT
    "rack_power_kw": (float, True),              # power limit of one rack position
    "notes": (str, False),
    "sources": (dict, True),
}
NUMBERS = ("pue", "usd_per_kwh", "amortization_years", "facility_usd_per_kw_month", "rack_power_kw")
# Values that may be overridden by keyword (sources and notes describe the file).
OVERRIDABLE = NUMBERS


@dataclasses.dataclass(frozen=True)
class Facility:
    pue: float
    usd_per_kwh: float
    amortization_years: float
    facility_usd_per_kw_month: float
    rack_power_kw: float
    sources: dict[str, str]
    notes: str = ""
    path: str = ""


def _default_path() -> Path:
    return Path(str(resources.files("dse.hardware"))) / "facility.yaml"


def _number(where: str, name: str, val: Any) -> float:
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise DSEError(f"{where}: {name}: expected a number, got {val!r}")
    val = float(val)
    if name == "pue" and val < 1.0:
        raise DSEError(f"{where}: pue: expected a number >= 1 (total power / IT power), got {val!r}")
    if name in ("amortization_years", "rack_power_kw") and val <= 0:
        raise DSEError(f"{where}: {name}: expected a positive number, got {val!r}")
    if val < 0:
        raise DSEError(f"{where}: {name}: expected a non-negative number, got {val!r}")
    return val


@functools.lru_cache(maxsize=None)
def _load(path_str: str) -> Facility:
    path = Path(path_str)
    if not path.is_file():
        raise DSEError(f"facility: no such file {path_str!r}")
    data = read_mapping(path)
    kw = typed_fields(data, FIELDS, path, skip=NUMBERS)
    for name in NUMBERS:
        if name in data:
            kw[name] = _number(str(path), name, data[name])
        elif FIELDS[name][1]:
            raise DSEError(f"{path}: missing field {name!r}")
    require_sources(kw, NUMBERS, path)
    return Facility(**kw, path=str(path))


def get_facility(path: str | Path | None = None, **overrides: Any) -> Facility:
    """The facility from `path` (default: hardware/facility.yaml) with keyword overrides.

    An overridden value's source becomes "override" so a run's resolved inputs show it.
    """
    base = _load(str(path) if path is not None else str(_default_path()))
    if not overrides:
        return base
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise DSEError(f"facility: unknown override {unknown[0]!r}; allowed: {', '.join(OVERRIDABLE)}")
    values = {k: _number("facility override", k, v) for k, v in overrides.items()}
    sources = {**base.sources, **{k: "override (caller-supplied value)" for k in values}}
    return dataclasses.replace(base, **values, sources=sources)
