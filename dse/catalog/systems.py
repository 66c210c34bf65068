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
from typing import Any

from dse.catalog.yamlfile import read_mapping, require_sources, typed_fields

from dse.errors import DSEError

# field -> (type, required)
FIELDS: dict[str, tuple[type, bool]] = {
    "id": (str, True),
    "name": (str, True),
    "gpus_per_node": (int, True),      # accelerators sharing one host (CPUs, NICs, fans)
    "scaleup_domain": (int, True),     # accelerators in one scale-up domain
    "host_power_w": (float, True),     # per node, everything but the accelerators
    "host_price_usd": (float, True),   # per node, everything but the accelerators
    "rack_power_kw": (float, False),   # power of one physical rack as deployed, if fixed
    "notes": (str, False),
    "sources": (dict, True),
}
# Figures that need a source entry (rack_power_kw only when present).
SOURCED = ("gpus_per_node", "scaleup_domain", "host_power_w", "host_price_usd", "rack_power_kw")


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
    kw = typed_fields(data, FIELDS, path)
    for key in ("gpus_per_node", "scaleup_domain"):
        if kw[key] < 1:
            raise DSEError(f"{path}: {key}: expected an integer >= 1, got {kw[key]!r}")
    if "rack_power_kw" in kw and kw["rack_power_kw"] <= 0:
        raise DSEError(f"{path}: rack_power_kw: expected a positive number, got {kw['rack_power_kw']!r}")
    node, domain = kw["gpus_per_node"], kw["scaleup_domain"]
    if node % domain and domain % node:
        raise DSEError(f"{path}: scaleup_domain: {domain} must divide or be a multiple of "
                       f"gpus_per_node ({node})")
    require_sources(kw, SOURCED, path)
    kw["path"] = str(path)
    return System(**kw)


@functools.lru_cache(maxsize=None)
def get_system(ref: str) -> System:
    """System by id (a file in hardware/systems) or by path to a YAML file."""
    ref = str(ref)
    path = Path(ref) if ref.endswith((".yaml", ".yml")) else _systems_dir() / f"{ref}.yaml"
    if not path.is_file():
        raise DSEError(f"system: unknown system {ref!r}; known: {', '.join(system_ids())}")
    return _validate(read_mapping(path), path)


def system_ids() -> list[str]:
    return sorted(p.stem for p in _systems_dir().glob("*.yaml"))


def all_systems() -> list[System]:
    return [get_system(i) for i in system_ids()]
