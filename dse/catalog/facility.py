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

import yaml

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

    @property
    def amortization_hours(self) -> float:
        return self.amortization_years * 365.25 * 24


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
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DSEError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DSEError(f"{path}: expected a mapping of fields at the top level")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise DSEError(f"{path}: unknown field {unknown[0]!r}; allowed: {', '.join(FIELDS)}")
    kw: dict[str, Any] = {}
    for name, (typ, required) in FIELDS.items():
        if name not in data:
            if required:
                raise DSEError(f"{path}: missing field {name!r}")
            continue
        val = data[name]
        if name in NUMBERS:
            kw[name] = _number(str(path), name, val)
        elif not isinstance(val, typ):
            raise DSEError(f"{path}: {name}: expected {typ.__name__}, got {val!r}")
        else:
            kw[name] = val
    missing = [f for f in NUMBERS if not str(kw["sources"].get(f, "")).strip()]
    if missing:
        raise DSEError(f"{path}: sources.{missing[0]}: every figure needs its source")
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
