"""Cost per hour and per million output tokens, owned or rented.

Owned: capex (GPUs plus their share of the host) straight-line over the amortisation
period, energy at the facility's $/kWh times PUE, and facility cost per kW of
provisioned IT power. Rented: the provider's $/GPU-hour, which already covers power
and space.
"""
from __future__ import annotations

import numpy as np

__all__ = ["HOURS_PER_YEAR", "HOURS_PER_MONTH", "usd_per_hour", "usd_per_mtok"]

HOURS_PER_YEAR = 365 * 24.0          # a calendar year (8760 h); amortisation is straight-line over years
HOURS_PER_MONTH = HOURS_PER_YEAR / 12   # 730 h: facility charges are quoted per kW-month


def usd_per_hour(*, own, capex_usd, rent_usd_per_hour, power_w, provisioned_w, pue, usd_per_kwh,
                 amortization_years, facility_usd_per_kw_month) -> np.ndarray:
    """$/hour of a deployment: owned = capex written off + energy + facility; rented = rent.

    capex_usd and rent_usd_per_hour are the deployment's totals; power_w its average wall
    power (facility overhead excluded), provisioned_w the IT power it is billed space for."""
    owned = (capex_usd / (amortization_years * HOURS_PER_YEAR) + power_w / 1e3 * pue * usd_per_kwh
             + provisioned_w / 1e3 * facility_usd_per_kw_month / HOURS_PER_MONTH)
    return np.where(own, owned, rent_usd_per_hour)


def usd_per_mtok(usd_hour, tokens_per_s) -> np.ndarray:
    return usd_hour / np.maximum(tokens_per_s * 3600.0, 1e-30) * 1e6
