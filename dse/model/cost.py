"""Cost per hour and per million output tokens, owned or rented.

Owned: capex (GPUs plus their share of the host) straight-line over the amortisation
period, energy at the facility's $/kWh times PUE, and facility cost per kW of
provisioned IT power. Rented: the provider's $/GPU-hour, which already covers power
and space.
"""
from __future__ import annotations

import numpy as np

HOURS_PER_YEAR = 8760.0
HOURS_PER_MONTH = 730.0


def usd_per_hour(*, num_gpus, own, gpu_price_usd, host_price_per_gpu, rent_usd_per_hour,
                 power_w, provisioned_w, pue, usd_per_kwh, amortization_years,
                 facility_usd_per_kw_month) -> np.ndarray:
    capex = num_gpus * (gpu_price_usd + host_price_per_gpu) / (amortization_years * HOURS_PER_YEAR)
    energy = power_w / 1e3 * pue * usd_per_kwh
    facility = provisioned_w / 1e3 * facility_usd_per_kw_month / HOURS_PER_MONTH
    rent = num_gpus * rent_usd_per_hour
    return np.where(own, capex + energy + facility, rent)


def usd_per_mtok(usd_hour, tokens_per_s) -> np.ndarray:
    return usd_hour / np.maximum(tokens_per_s * 3600.0, 1e-30) * 1e6
