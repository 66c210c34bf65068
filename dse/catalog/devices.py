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
from typing import Any, ClassVar


from pydantic import Field, field_validator, model_validator

from dse.catalog import dtypes
from dse.catalog.validation import DataModel, NonNegative, Positive, SourcedFile, Text, allowed, fail, validate
from dse.catalog.yamlfile import read_mapping
from dse.errors import DSEError

__all__ = ["COMPUTE_FORMATS", "SOURCED", "Device", "DeviceFile", "PeakTflops", "get_device", "device_ids",
           "all_devices"]

COMPUTE_FORMATS = ("bf16", "fp8", "int8", "fp4")
# Fields that are measured/published figures and therefore need a source entry.
SOURCED = ("peak_tflops", "memory_gb", "memory_tb_s", "scaleup_gb_s",
           "scaleout_gb_s", "tdp_w", "idle_w", "price_usd", "rent_usd_per_hour", "sm_count")


class PeakTflops(DataModel):
    """Dense (not sparse) peak per compute format; a format left out is run at the next one."""
    bf16: Positive = Field(description="dense BF16 TFLOPS (every device computes bf16)")
    fp8: Positive | None = Field(None, description="dense FP8 TFLOPS")
    int8: Positive | None = Field(None, description="dense INT8 TOPS")
    fp4: Positive | None = Field(None, description="dense FP4 TFLOPS")


class DeviceFile(SourcedFile):
    """One accelerator (hardware/devices/ID.yaml). Numbers are per GPU (per package for multi-die parts)."""
    sourced: ClassVar[tuple[str, ...]] = SOURCED
    id: Text = Field(description="device id, the file name without .yaml")
    name: Text = Field(description="human-readable name")
    vendor: Text = Field(description="vendor (nvidia, amd, intel, google, huawei, ...)")
    family: Text = Field(description="architecture family, for calibration inheritance")
    calibration_from: str = Field("", description="device id whose fitted kernel efficiencies this one uses")
    peak_tflops: PeakTflops = Field(description="dense TFLOPS (TOPS for int8) per compute format")
    memory_gb: Positive = Field(description="HBM capacity, GB")
    memory_tb_s: Positive = Field(description="HBM bandwidth, TB/s")
    sm_count: Positive | None = Field(None, description="streaming multiprocessors (AMD: compute units) "
                                                        "enabled; the kernel family rules size tile slots "
                                                        "from it (absent: the calibration_from device's)")
    scaleup_gb_s: NonNegative = Field(description="scale-up fabric bandwidth per GPU, one direction, GB/s "
                                                  "(0 = no scale-up fabric)")
    scaleout_gb_s: NonNegative = Field(description="scale-out (NIC) bandwidth per GPU, one direction, GB/s")
    tdp_w: Positive = Field(description="thermal design power, W")
    idle_w: NonNegative = Field(description="idle power, W (at most tdp_w)")
    price_usd: NonNegative = Field(description="purchase price per GPU (board/module only), USD")
    rent_usd_per_hour: NonNegative = Field(description="rental price per GPU-hour, USD")
    system: Text = Field(description="default system id (hardware/systems): node or rack, scale-up domain")
    hypothetical: bool = Field(False, description="true for a what-if device that does not exist")
    notes: str = Field("", description="free text")
    base: str | None = Field(None, description="derive from this device id (or file): give only the fields "
                                               "that differ, each with its own source")

    @field_validator("calibration_from")
    @classmethod
    def _known_calibration(cls, v: str) -> str:
        if v and v not in device_ids():
            raise fail(f"unknown device {v!r}; known: {allowed(device_ids())}")
        return v

    @field_validator("system")
    @classmethod
    def _known_system(cls, v: str) -> str:
        from dse.catalog.systems import system_ids
        if v not in system_ids() and not (v.endswith((".yaml", ".yml")) and Path(v).is_file()):
            raise fail(f"unknown system {v!r}; known: {allowed(system_ids())}")
        return v

    @model_validator(mode="after")
    def _idle_below_tdp(self) -> "DeviceFile":
        if self.idle_w > self.tdp_w:
            raise fail(f"idle power above TDP ({self.tdp_w:g} W), got {self.idle_w:g}", "idle_w")
        return self


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
    sm_count: float | None = None
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


def _raw(ref: str, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Path]:
    """The file's mapping with its `base:` chain merged in (a child's figures need their own sources)."""
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else _devices_dir() / f"{ref}.yaml"
    if not path.is_file():
        raise DSEError(f"device: unknown device {ref!r}; known: {allowed(device_ids(), 200)}")
    data = read_mapping(path)
    if "base" not in data:
        return data, path
    base_ref = data["base"]
    if not isinstance(base_ref, str) or not base_ref:
        raise DSEError(f"{path}: base: expected a device id or a device file, got {base_ref!r}")
    if base_ref.endswith((".yaml", ".yml")) and not Path(base_ref).is_absolute():
        base_ref = str(path.parent / base_ref)
    if path.resolve() in seen:
        raise DSEError(f"{path}: base: cycle through {data['base']!r}")
    try:
        parent, _ = _raw(base_ref, seen + (path.resolve(),))
    except DSEError as exc:
        raise DSEError(f"{path}: base: {str(exc).removeprefix('device: ')}") from None
    parent.pop("hypothetical", None)
    sources = data.get("sources") or {}
    if not isinstance(sources, dict):
        raise DSEError(f"{path}: sources: expected a mapping field -> source, got {sources!r}")
    changed = [f for f in SOURCED if f in data and data[f] != parent.get(f)]
    unsourced = [f for f in changed if not str(sources.get(f, "")).strip()]
    if unsourced:
        raise DSEError(f"{path}: sources.{unsourced[0]}: an overridden figure needs its own source "
                       "(e.g. 'hypothetical: what-if value')")
    merged = _merge(parent, {k: v for k, v in data.items() if k != "base"})
    merged["id"] = data["id"] if "id" in data and data["id"] != parent.get("id") else path.stem
    merged.setdefault("calibration_from", parent.get("calibration_from") or parent.get("id", ""))
    return merged, path


def _validate(data: dict[str, Any], path: Path) -> Device:
    m = validate(DeviceFile, data, str(path))
    kw = m.model_dump(exclude={"base", "peak_tflops"})
    order = list(data["peak_tflops"])      # the file's order
    kw["peak_tflops"] = {f: getattr(m.peak_tflops, f) for f in order if getattr(m.peak_tflops, f) is not None}
    kw["sources"] = dict(m.sources)
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
