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
from typing import Annotated, Any, ClassVar

from pydantic import Field

from dse.catalog.validation import DataModel, NonNegative, Positive, SourcedFile, validate
from dse.catalog.yamlfile import read_mapping
from dse.errors import DSEError

__all__ = ["NUMBERS", "OVERRIDABLE", "Facility", "FacilityFile", "FacilityOverrides", "get_facility"]

NUMBERS = ("pue", "usd_per_kwh", "amortization_years", "facility_usd_per_kw_month", "rack_power_kw")
# Values that may be overridden by keyword (sources and notes describe the file).
OVERRIDABLE = NUMBERS

Pue = Annotated[float, Field(ge=1.0, allow_inf_nan=False)]
_HELP = {
    "pue": "power usage effectiveness: total facility power / IT power (>= 1)",
    "usd_per_kwh": "electricity price, USD per kWh",
    "amortization_years": "capex write-off period of the servers, years",
    "facility_usd_per_kw_month": "space, cooling and power infrastructure per kW of IT capacity, USD per month",
    "rack_power_kw": "power limit of one rack position, kW",
}


class FacilityOverrides(DataModel):
    """Single facility values replacing those of hardware/facility.yaml (scenario `constraints.facility`)."""
    unknown_word: ClassVar[str] = "override"
    pue: Pue | None = Field(None, description=_HELP["pue"])
    usd_per_kwh: NonNegative | None = Field(None, description=_HELP["usd_per_kwh"])
    amortization_years: Positive | None = Field(None, description=_HELP["amortization_years"])
    facility_usd_per_kw_month: NonNegative | None = Field(None, description=_HELP["facility_usd_per_kw_month"])
    rack_power_kw: Positive | None = Field(None, description=_HELP["rack_power_kw"])


class FacilityFile(SourcedFile):
    """Where the hardware runs (hardware/facility.yaml): power, space and capital cost, each figure sourced."""
    sourced: ClassVar[tuple[str, ...]] = NUMBERS
    pue: Pue = Field(description=_HELP["pue"])
    usd_per_kwh: NonNegative = Field(description=_HELP["usd_per_kwh"])
    amortization_years: Positive = Field(description=_HELP["amortization_years"])
    facility_usd_per_kw_month: NonNegative = Field(description=_HELP["facility_usd_per_kw_month"])
    rack_power_kw: Positive = Field(description=_HELP["rack_power_kw"])
    notes: str = Field("", description="free text")


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


@functools.lru_cache(maxsize=None)
def _load(path_str: str) -> Facility:
    path = Path(path_str)
    if not path.is_file():
        raise DSEError(f"facility: no such file {path_str!r}")
    m = validate(FacilityFile, read_mapping(path), str(path))
    return Facility(**m.model_dump(), path=str(path))


def get_facility(path: str | Path | None = None, **overrides: Any) -> Facility:
    """The facility from `path` (default: hardware/facility.yaml) with keyword overrides.

    An overridden value's source becomes "override" so a run's resolved inputs show it.
    """
    base = _load(str(path) if path is not None else str(_default_path()))
    if not overrides:
        return base
    over = validate(FacilityOverrides, overrides, "facility override")
    values = {k: float(v) for k, v in over.model_dump(exclude_none=True).items()}
    sources = {**base.sources, **{k: "override (caller-supplied value)" for k in values}}
    return dataclasses.replace(base, **values, sources=sources)
