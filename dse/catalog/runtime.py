"""Constants that belong to no single device: serving-runtime facts (runtime.yaml), the fitted
serving-framework constants (serving_runtime.yaml) and the fitted power coefficients
(power.yaml). One reader each, cached; the engine takes them as arguments."""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

__all__ = ["hardware_dir", "runtime", "serving_runtime", "parse_serving_runtime", "power_coeffs"]


def hardware_dir() -> Path:
    """The shipped data directory (`hardware/`, installed as the `dse.hardware` package)."""
    return Path(str(resources.files("dse.hardware")))


@functools.lru_cache(maxsize=1)
def runtime() -> dict[str, float]:
    """runtime.yaml: every figure but its `sources`, as floats."""
    data = yaml.safe_load((hardware_dir() / "runtime.yaml").read_text())
    return {k: float(v) for k, v in data.items() if k != "sources"}


@functools.lru_cache(maxsize=1)
def serving_runtime() -> dict:
    """Per-backend serving constants and the benchmark protocol, as fitted by dse.fit.serving."""
    return parse_serving_runtime(yaml.safe_load((hardware_dir() / "serving_runtime.yaml").read_text()))


def parse_serving_runtime(data: dict) -> dict:
    backends = {str(k): {n: float(c[n]) for n in ("request_ms", "step_ms", "max_tokens")}
                for k, c in data["backends"].items()}
    return {"backends": backends, "rounds": float(data.get("benchmark", {}).get("rounds", np.inf))}


@functools.lru_cache(maxsize=1)
def power_coeffs() -> dict[str, float]:
    data = yaml.safe_load((hardware_dir() / "power.yaml").read_text())
    return {"c_compute": float(data["c_compute"]), "c_memory": float(data["c_memory"])}
