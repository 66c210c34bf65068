"""Fitted kernel parameters per device, as `dse calibrate` wrote them to
hardware/calibration/<device>.yaml; a device without its own inherits its
`calibration_from` device's, families missing from a file the model's defaults."""
from __future__ import annotations

from pathlib import Path

import yaml

from dse.catalog.devices import get_device
from dse.catalog.runtime import hardware_dir
from dse.model import kernels as K

__all__ = ["calibration_dir", "load_params"]


def calibration_dir() -> Path:
    return hardware_dir() / "calibration"


def load_params(device_id: str) -> dict[str, dict[str, float]]:
    """Fitted kernel parameters of a device: its own calibration, else that of its
    `calibration_from` device, else DEFAULT_PARAMS; families missing from a file are
    filled from DEFAULT_PARAMS."""
    device = get_device(device_id)
    params = {fam: dict(vals) for fam, vals in K.DEFAULT_PARAMS.items()}
    for ref in (device.id, device.calibration_from):
        path = calibration_dir() / f"{ref}.yaml"
        if ref and path.is_file():
            doc = yaml.safe_load(path.read_text()) or {}
            for fam, vals in (doc.get("params") or {}).items():
                params[fam] = {k: float(v) for k, v in vals.items()}
            break
    return params
