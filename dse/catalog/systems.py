"""System catalog: one YAML file per system under `hardware/systems/`.

A system is the unit a device is deployed in (an 8-GPU HGX node, a PCIe server, an
NVL72 rack, a CloudMatrix384 supernode, a TPU pod). It fixes how many accelerators share
a node (host overhead) and how many share one scale-up domain (where NVLink / xGMI /
ICI / UB reaches; beyond it traffic goes over scale-out NICs), and carries the non-GPU
power and price of a node. Every figure carries its source, as for devices. A file may
be passed by path wherever a system id is expected.
"""
from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from dse.catalog.validation import AtLeastOne, NonNegative, Positive, SourcedFile, Text, allowed, fail, validate
from dse.catalog.yamlfile import read_mapping
from dse.errors import DSEError

__all__ = ["SOURCED", "System", "SystemFile", "get_system", "system_ids", "all_systems"]

# Figures that need a source entry (rack_power_kw only when present).
SOURCED = ("gpus_per_node", "scaleup_domain", "host_power_w", "host_price_usd", "rack_power_kw")


class SystemFile(SourcedFile):
    """One system (hardware/systems/ID.yaml): the node or rack a device is deployed in."""
    sourced: ClassVar[tuple[str, ...]] = SOURCED
    id: Text = Field(description="system id, the file name without .yaml")
    name: Text = Field(description="human-readable name")
    gpus_per_node: AtLeastOne = Field(description="accelerators sharing one host (CPUs, NICs, fans)")
    scaleup_domain: AtLeastOne = Field(description="accelerators in one scale-up domain (NVLink, xGMI, ICI, UB)")
    host_power_w: NonNegative = Field(description="per node, everything but the accelerators, W")
    host_price_usd: NonNegative = Field(description="per node, everything but the accelerators, USD")
    rack_power_kw: Positive | None = Field(None, description="power of one physical rack as deployed, if fixed "
                                                             "(NVL72, CloudMatrix), kW")
    notes: str = Field("", description="free text")

    @model_validator(mode="after")
    def _domain_fits_nodes(self) -> "SystemFile":
        node, domain = self.gpus_per_node, self.scaleup_domain
        if node % domain and domain % node:
            raise fail(f"{domain} must divide or be a multiple of gpus_per_node ({node})", "scaleup_domain")
        return self


@dataclasses.dataclass(frozen=True)
class System:
    id: str
    name: str
    gpus_per_node: int
    scaleup_domain: int
    host_power_w: float
    host_price_usd: float
    sources: dict[str, str]
    rack_power_kw: float | None = None
    notes: str = ""
    path: str = ""

    @property
    def host_power_w_per_gpu(self) -> float:
        return self.host_power_w / self.gpus_per_node

    @property
    def host_price_usd_per_gpu(self) -> float:
        return self.host_price_usd / self.gpus_per_node


def _systems_dir() -> Path:
    return Path(str(resources.files("dse.hardware"))) / "systems"


def _validate(data: dict[str, Any], path: Path) -> System:
    m = validate(SystemFile, data, str(path))
    return System(**m.model_dump(), path=str(path))


@functools.lru_cache(maxsize=None)
def get_system(ref: str) -> System:
    """System by id (a file in hardware/systems) or by path to a YAML file."""
    ref = str(ref)
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else _systems_dir() / f"{ref}.yaml"
    if not path.is_file():
        raise DSEError(f"system: unknown system {ref!r}; known: {allowed(system_ids(), 200)}")
    return _validate(read_mapping(path), path)


def system_ids() -> list[str]:
    return sorted(p.stem for p in _systems_dir().glob("*.yaml"))


def all_systems() -> list[System]:
    return [get_system(i) for i in system_ids()]
