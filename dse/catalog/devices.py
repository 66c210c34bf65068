"""Accelerator catalog: one YAML file per device under `hardware/devices/`.

Every figure carries its source in the file (`sources:` maps each field to where it
came from). A user adds a hypothetical device by writing a new file, or derives one
from an existing device with `base: h100_sxm` plus the fields to override; a file may
be passed by path wherever a device id is expected.
"""
from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from pathlib import Path
from typing import Any


from dse.catalog import dtypes
from dse.catalog.yamlfile import read_mapping, require_sources, typed_fields
from dse.errors import DSEError

COMPUTE_FORMATS = ("bf16", "fp8", "int8", "fp4")

# field -> (type, required). Numbers are per GPU (per package for multi-die parts).
FIELDS: dict[str, tuple[type, bool]] = {
    "id": (str, True),
    "name": (str, True),
    "vendor": (str, True),
    "family": (str, True),            # architecture family, for calibration inheritance
    "calibration_from": (str, False),  # device id whose fitted efficiencies this one uses
    "peak_tflops": (dict, True),      # dense TFLOPS (TOPS for int8) per compute format
    "memory_gb": (float, True),
    "memory_tb_s": (float, True),
    "scaleup_gb_s": (float, True),    # per GPU, one direction; 0 = no scale-up fabric
    "scaleout_gb_s": (float, True),   # per GPU, one direction (NIC share)
    "tdp_w": (float, True),
    "idle_w": (float, True),
    "price_usd": (float, True),       # purchase price per GPU (board/module only)
    "rent_usd_per_hour": (float, True),
    "system": (str, True),            # default system id (hardware/systems): node or rack, scale-up domain
    "hypothetical": (bool, False),
    "notes": (str, False),
    "sources": (dict, True),
    "base": (str, False),
}
# Fields that are measured/published figures and therefore need a source entry.
SOURCED = ("peak_tflops", "memory_gb", "memory_tb_s", "scaleup_gb_s",
           "scaleout_gb_s", "tdp_w", "idle_w", "price_usd", "rent_usd_per_hour")


@dataclasses.dataclass(frozen=True)
class Device:
    id: str
    name: str
    vendor: str
    family: str
    peak_tflops: dict[str, float]
    memory_gb: float
    memory_tb_s: float
    scaleup_gb_s: float
    scaleout_gb_s: float
    tdp_w: float
    idle_w: float
    price_usd: float
    rent_usd_per_hour: float
    system: str
    sources: dict[str, str]
    calibration_from: str = ""
    hypothetical: bool = False
    notes: str = ""
    path: str = ""

    def compute_dtype(self, storage: str) -> str:
        """The compute format this device runs `storage`-format math in."""
        for fmt in dtypes.COMPUTE_FALLBACK[storage]:
            if fmt in self.peak_tflops:
                return fmt
        return "bf16"


def _devices_dir() -> Path:
    return Path(str(resources.files("dse.hardware"))) / "devices"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **val}
        else:
            out[key] = val
    return out


def _raw(ref: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], Path]:
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else _devices_dir() / f"{ref}.yaml"
    if not path.is_file():
        raise DSEError(f"device: unknown device {ref!r}; known: {', '.join(device_ids())}")
    data = read_mapping(path)
    if "base" in data:
        if data["base"] in seen:
            raise DSEError(f"{path}: base: cycle through {data['base']!r}")
        base_ref = str(data["base"])
        if base_ref.endswith((".yaml", ".yml")) and not Path(base_ref).is_absolute():
            base_ref = str(path.parent / base_ref)
        parent, _ = _raw(base_ref, seen + (ref,))
        parent.pop("hypothetical", None)
        changed = [f for f in SOURCED if f in data and data[f] != parent.get(f)]
        unsourced = [f for f in changed if not str((data.get("sources") or {}).get(f, "")).strip()]
        if unsourced:
            raise DSEError(f"{path}: sources.{unsourced[0]}: an overridden figure needs its own source "
                           "(e.g. 'hypothetical: what-if value')")
        data = _merge(parent, data)
        data["id"] = data.get("id") if "id" in data and data["id"] != parent["id"] else path.stem
        data.setdefault("calibration_from", parent.get("calibration_from") or parent["id"])
    return data, path


def _validate(data: dict[str, Any], path: Path) -> Device:
    kw = typed_fields(data, FIELDS, path, skip=("base",))
    peaks = {}
    for fmt, val in kw["peak_tflops"].items():
        if fmt not in COMPUTE_FORMATS:
            raise DSEError(f"{path}: peak_tflops.{fmt}: unknown format; allowed: {', '.join(COMPUTE_FORMATS)}")
        if not isinstance(val, (int, float)) or val <= 0:
            raise DSEError(f"{path}: peak_tflops.{fmt}: expected a positive number, got {val!r}")
        peaks[fmt] = float(val)
    if "bf16" not in peaks:
        raise DSEError(f"{path}: peak_tflops.bf16: required (every device computes bf16)")
    kw["peak_tflops"] = peaks
    require_sources(kw, SOURCED, path)
    for key in ("memory_gb", "memory_tb_s"):
        if kw[key] <= 0:
            raise DSEError(f"{path}: {key}: expected a positive number")
    kw["path"] = str(path)
    return Device(**kw)


@functools.lru_cache(maxsize=None)
def get_device(ref: str) -> Device:
    """Device by id (a file in hardware/devices) or by path to a YAML file."""
    data, path = _raw(str(ref))
    return _validate(data, path)


def device_ids() -> list[str]:
    return sorted(p.stem for p in _devices_dir().glob("*.yaml"))


def all_devices() -> list[Device]:
    return [get_device(i) for i in device_ids()]
