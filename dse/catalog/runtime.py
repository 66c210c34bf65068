"""Constants that belong to no single device: serving-runtime facts (runtime.yaml), the fitted
serving-framework constants (serving_runtime.yaml) and the fitted power coefficients
(power.yaml). One reader each, cached; the engine takes them as arguments."""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from dse.errors import DSEError

__all__ = ["hardware_dir", "runtime", "parse_runtime", "RUNTIME_KEYS", "serving_runtime", "serving_cross_system", "parse_serving_runtime",
           "power_coeffs"]

# what the engine reads from runtime.yaml; each needs its `sources:` entry
RUNTIME_KEYS = ("kv_memory_fraction", "activation_reserve_gb", "spec_acceptance", "p2p_hop_ms", "kv_handoff_ms")


def hardware_dir() -> Path:
    """The shipped data directory (`hardware/`, installed as the `dse.hardware` package)."""
    return Path(str(resources.files("dse.hardware")))


@functools.lru_cache(maxsize=1)
def runtime() -> dict[str, float]:
    """runtime.yaml: every figure but its `sources`, as floats."""
    path = hardware_dir() / "runtime.yaml"
    return parse_runtime(yaml.safe_load(path.read_text()), where=str(path))


def parse_runtime(data, *, where: str = "runtime.yaml") -> dict[str, float]:
    """Check a runtime.yaml document (every figure a non-negative number with a source) and
    return its figures."""
    if not isinstance(data, dict):
        raise DSEError(f"{where}: expected a mapping of figures and their `sources`, got {data!r}")
    sources = data.get("sources") or {}
    out = {}
    for key in RUNTIME_KEYS:
        if key not in data:
            raise DSEError(f"{where}: {key}: missing; required: {', '.join(RUNTIME_KEYS)}")
    for key, val in data.items():
        if key == "sources":
            continue
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not val >= 0:
            raise DSEError(f"{where}: {key}: expected a non-negative number, got {val!r}")
        if key not in sources:
            raise DSEError(f"{where}: sources.{key}: missing; every figure needs its source")
        out[key] = float(val)
    return out


@functools.lru_cache(maxsize=1)
def _serving_file() -> dict:
    return yaml.safe_load((hardware_dir() / "serving_runtime.yaml").read_text()) or {}


@functools.lru_cache(maxsize=1)
def serving_runtime() -> dict:
    """Per-backend serving constants and the benchmark protocol, as fitted by dse.fit.serving."""
    return parse_serving_runtime(_serving_file())


def serving_cross_system() -> dict:
    """The fit's out-of-sample check as it recorded it: "fit_<a>_score_<b>" -> {constants, errors}
    (constants fitted on one system's measurements, errors on the other's)."""
    return dict(_serving_file().get("cross_system") or {})


def parse_serving_runtime(data: dict) -> dict:
    backends = {str(k): {n: float(c[n]) for n in ("request_ms", "step_ms", "max_tokens")}
                for k, c in data["backends"].items()}
    return {"backends": backends, "rounds": float(data.get("benchmark", {}).get("rounds", np.inf))}


@functools.lru_cache(maxsize=1)
def power_coeffs() -> dict[str, float]:
    data = yaml.safe_load((hardware_dir() / "power.yaml").read_text())
    return {"c_compute": float(data["c_compute"]), "c_memory": float(data["c_memory"])}
