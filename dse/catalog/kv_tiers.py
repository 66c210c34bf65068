"""KV-cache offload tiers (hardware/kv_tiers.yaml): per system, with per-device overrides, the
capacity a GPU may give the cache beyond HBM, its link, latency and the medium's price and
power. Kept in one file beside the systems because a tier belongs to the node or rack (its
CPU memory, fabric, drives) while a device changes only its own link (PCIe generation)."""
from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from pathlib import Path
from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from dse.catalog.devices import get_device
from dse.catalog.validation import DataModel, NonNegative, Positive, Text, allowed, fail, validate
from dse.catalog.yamlfile import read_mapping
from dse.errors import DSEError

__all__ = ["TIERS", "OFFLOAD_TIERS", "Tier", "KvTiersFile", "tier_of", "load_tiers"]

TIERS = ("hbm", "host", "fabric", "ssd")     # hbm = no offload
OFFLOAD_TIERS = TIERS[1:]
_TIER_FIELDS = ("gb_per_gpu", "link_gb_s", "latency_ms", "medium")


class Medium(DataModel):
    """What a tier is made of, priced per GB the cache uses."""
    usd_per_gb: NonNegative = Field(description="purchase price, USD per GB")
    w_per_gb: NonNegative = Field(description="power, W per GB")
    rent_usd_per_gb_hour: NonNegative = Field(description="rented, USD per GB-hour")
    sources: dict[str, Text]

    @model_validator(mode="after")
    def _sourced(self) -> "Medium":
        for f in ("usd_per_gb", "w_per_gb", "rent_usd_per_gb_hour"):
            if not self.sources.get(f, "").strip():
                raise fail("every figure needs its source", "sources", f)
        return self


class TierSpec(DataModel):
    gb_per_gpu: Optional[Positive] = Field(None, description="capacity one GPU may give the cache, GB")
    link_gb_s: Optional[Positive] = Field(None, description="the GPU's link to the tier, GB/s one direction")
    latency_ms: Optional[NonNegative] = Field(None, description="fixed latency of one load, ms")
    medium: Optional[Literal["dram", "nvme"]] = Field(None, description="what the tier is made of")


class TierSet(DataModel):
    """The tiers of one system (or one device's overrides), each figure with its source."""
    unknown_word: ClassVar[str] = "tier"
    host: Optional[TierSpec] = None
    fabric: Optional[TierSpec] = None
    ssd: Optional[TierSpec] = None
    sources: dict[str, Text] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sourced(self) -> "TierSet":
        given = {f"{t}.{f}" for t in OFFLOAD_TIERS if getattr(self, t) is not None
                 for f in _TIER_FIELDS[:3] if getattr(getattr(self, t), f) is not None}
        for key in self.sources:
            if key not in given:
                raise fail(f"no such figure here; allowed: {allowed(sorted(given))}", "sources", key)
        for key in sorted(given):
            if not self.sources.get(key, "").strip():
                raise fail("every figure needs its source", "sources", key)
        return self


class KvTiersFile(DataModel):
    """hardware/kv_tiers.yaml: media prices, tiers per system, link overrides per device."""
    media: dict[Literal["dram", "nvme"], Medium]
    systems: dict[str, TierSet]
    devices: dict[str, TierSet] = Field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Tier:
    name: str
    gb_per_gpu: float
    link_gb_s: float
    latency_ms: float
    usd_per_gb: float
    w_per_gb: float
    rent_usd_per_gb_hour: float
    pooled: bool            # shared by every GPU of the scale-up domain (fabric)


def _path() -> Path:
    return Path(str(resources.files("dse.hardware"))) / "kv_tiers.yaml"


@functools.lru_cache(maxsize=None)
def load_tiers(path: str = "") -> KvTiersFile:
    p = Path(path) if path else _path()
    m = validate(KvTiersFile, read_mapping(p), str(p))
    for sid, ts in m.systems.items():
        for t in OFFLOAD_TIERS:
            spec = getattr(ts, t)
            if spec is not None and None in (spec.gb_per_gpu, spec.link_gb_s, spec.latency_ms, spec.medium):
                raise DSEError(f"{p}: systems.{sid}.{t}: give gb_per_gpu, link_gb_s, latency_ms and medium")
    return m


@functools.lru_cache(maxsize=None)
def tier_of(device_id: str, tier: str) -> Tier | None:
    """The offload tier `tier` of a device in its system (None: the system has none)."""
    if tier not in OFFLOAD_TIERS:
        raise DSEError(f"kv_tier: unknown tier {tier!r}; allowed: {', '.join(TIERS)}")
    data = load_tiers()
    dev = get_device(device_id)
    base = data.systems.get(dev.system)
    spec = getattr(base, tier) if base is not None else None
    if spec is None:
        return None
    fields = spec.model_dump()
    over = data.devices.get(dev.id)
    if over is not None and getattr(over, tier) is not None:
        fields.update(getattr(over, tier).model_dump(exclude_none=True))
    medium = data.media[fields["medium"]]
    return Tier(name=tier, gb_per_gpu=fields["gb_per_gpu"], link_gb_s=fields["link_gb_s"],
                latency_ms=fields["latency_ms"], usd_per_gb=medium.usd_per_gb, w_per_gb=medium.w_per_gb,
                rent_usd_per_gb_hour=medium.rent_usd_per_gb_hour, pooled=tier == "fabric")
