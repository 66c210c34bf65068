"""Fitted kernel parameters per device, as `dse calibrate` wrote them to
hardware/calibration/<device>.yaml; a device without its own inherits its
`calibration_from` device's, families missing from a file the defaults of
hardware/calibration/defaults.yaml (hand-chosen; its provenance says from what)."""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

from dse.catalog.devices import get_device
from dse.catalog.runtime import hardware_dir
from dse.errors import DSEError

__all__ = ["calibration_dir", "defaults_path", "default_params", "load_params"]


def calibration_dir() -> Path:
    return hardware_dir() / "calibration"


def defaults_path() -> Path:
    """The defaults file: shipped data, not a device, so not looked up in calibration_dir()
    (which tests and `dse calibrate --out` may point elsewhere)."""
    return hardware_dir() / "calibration" / "defaults.yaml"


def _families(doc, path: Path) -> dict[str, dict[str, float]]:
    fams = doc.get("params") if isinstance(doc, dict) else None
    if fams is None:
        return {}
    if not isinstance(fams, dict):
        raise DSEError(f"{path}: params: expected a mapping of kernel families, got {fams!r}")
    out = {}
    for fam, vals in fams.items():
        if not isinstance(vals, dict):
            raise DSEError(f"{path}: params.{fam}: expected a mapping of parameter: number, got {vals!r}")
        for k, v in vals.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DSEError(f"{path}: params.{fam}.{k}: expected a number, got {v!r}")
        out[str(fam)] = {str(k): float(v) for k, v in vals.items()}
    return out


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, dict[str, float]]:
    path = defaults_path()
    return _families(yaml.safe_load(path.read_text()), path)


def default_params() -> dict[str, dict[str, float]]:
    """The defaults' kernel families (a fresh copy: callers may fill it in)."""
    return {fam: dict(vals) for fam, vals in _defaults().items()}


def load_params(device_id: str) -> dict[str, dict[str, float]]:
    """Fitted kernel parameters of a device: its own calibration, else that of its
    `calibration_from` device, else the defaults; families missing from a file are
    filled from the defaults."""
    device = get_device(device_id)
    params = default_params()
    for ref in (device.id, device.calibration_from):
        path = calibration_dir() / f"{ref}.yaml"
        if ref and path.is_file():
            params.update(_families(yaml.safe_load(path.read_text()) or {}, path))
            break
    return params
