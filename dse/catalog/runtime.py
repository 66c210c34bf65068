"""Constants that belong to no single device: serving-runtime facts (runtime.yaml), the fitted
serving-framework constants (serving_runtime.yaml) and the fitted power coefficients
(power.yaml). One reader each, cached; the engine takes them as arguments."""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from dse.catalog.cache import cached_document
from dse.errors import DSEError

__all__ = ["hardware_dir", "runtime", "parse_runtime", "engine_limits", "parse_engine_limits", "engine_limit", "RUNTIME_KEYS", "serving_runtime", "serving_cross_system", "bench_rounds_of", "routing_skew_of", "parse_serving_runtime", "MOE_KERNELS",
           "power_coeffs"]

# what the engine reads from runtime.yaml; each needs its `sources:` entry
RUNTIME_KEYS = ("kv_memory_fraction", "activation_reserve_gb", "spec_acceptance", "p2p_hop_ms", "kv_handoff_ms",
                "moe_low_latency_tokens")


_LIMIT_KEYS = ("engine_limits", "engine_limits_sources")


def _safe_load(path: Path):
    """yaml.safe_load's document of a shipped file, parsed by libyaml when present (the same
    values, faster) and kept in the per-user cache (dse.catalog.cache) by the file's bytes."""
    return cached_document(f"{path.stem}-pyyaml{yaml.__version__}", path, lambda text: yaml.load(text, Loader=getattr(yaml, "CSafeLoader",
                                                                                          yaml.SafeLoader)))


def hardware_dir() -> Path:
    """The shipped data directory (`hardware/`, installed as the `dse.hardware` package)."""
    return Path(str(resources.files("dse.hardware")))


@functools.lru_cache(maxsize=1)
def runtime() -> dict[str, float]:
    """runtime.yaml: every figure but its `sources`, as floats."""
    path = hardware_dir() / "runtime.yaml"
    return parse_runtime(_safe_load(path), where=str(path))


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
        if key in ("sources",) + _LIMIT_KEYS:
            continue
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not val >= 0:
            raise DSEError(f"{where}: {key}: expected a non-negative number, got {val!r}")
        if key not in sources:
            raise DSEError(f"{where}: sources.{key}: missing; every figure needs its source")
        out[key] = float(val)
    return out


@functools.lru_cache(maxsize=1)
def engine_limits() -> dict[str, list[dict]]:
    """runtime.yaml engine_limits: backend -> memory tiers of (max_num_seqs, max_num_tokens)."""
    path = hardware_dir() / "runtime.yaml"
    return parse_engine_limits(_safe_load(path), where=str(path))


def parse_engine_limits(data: dict, *, where: str = "runtime.yaml") -> dict[str, list[dict]]:
    """Check the engine_limits section: each backend a list of tiers, each with a source."""
    limits, sources = data.get("engine_limits"), data.get("engine_limits_sources") or {}
    if not isinstance(limits, dict) or "default" not in limits:
        raise DSEError(f"{where}: engine_limits: expected a mapping of backend -> tiers with a 'default' entry")
    out = {}
    for backend, tiers in limits.items():
        if backend not in sources:
            raise DSEError(f"{where}: engine_limits_sources.{backend}: missing; every figure needs its source")
        if not isinstance(tiers, list) or not tiers:
            raise DSEError(f"{where}: engine_limits.{backend}: expected a list of tiers, got {tiers!r}")
        for i, t in enumerate(tiers):
            for k in ("min_memory_gb", "max_num_seqs", "max_num_tokens"):
                v = t.get(k) if isinstance(t, dict) else None
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                    raise DSEError(f"{where}: engine_limits.{backend}[{i}].{k}: expected a number >= 0, got {v!r}")
        out[str(backend)] = [{"min_memory_gb": float(t["min_memory_gb"]), "exclude": tuple(t.get("exclude") or ()),
                              "max_num_seqs": float(t["max_num_seqs"]), "max_num_tokens": float(t["max_num_tokens"])}
                             for t in tiers]
    return out


def engine_limit(backend: str, device_id: str, memory_gb: float) -> tuple[float, float]:
    """(max_num_seqs, max_num_tokens) a backend defaults to on a device."""
    tiers = engine_limits().get(backend or "default", engine_limits()["default"])
    for t in tiers:
        if memory_gb >= t["min_memory_gb"] and device_id not in t["exclude"]:
            return t["max_num_seqs"], t["max_num_tokens"]
    return tiers[-1]["max_num_seqs"], tiers[-1]["max_num_tokens"]


@functools.lru_cache(maxsize=1)
def _serving_file() -> dict:
    return _safe_load(hardware_dir() / "serving_runtime.yaml") or {}


@functools.lru_cache(maxsize=1)
def serving_runtime() -> dict:
    """Per-backend serving constants and the benchmark protocol, as fitted by dse.fit.serving."""
    return parse_serving_runtime(_serving_file())


def bench_rounds_of(table: dict, backend: str) -> float:
    """Requests per user of the benchmark behind a backend's measured rows (each backend's
    rows come from its own benchmark client), else the pooled figure of `table` (a parsed
    serving_runtime.yaml)."""
    return float(table["backends"].get(backend or "default", {}).get("rounds", table["rounds"]))


def routing_skew_of(skew, table: dict) -> np.ndarray:
    """Expert-popularity skew per row: nan (the column's default) is the typical skew
    fitted on the measured MoE deployments (`table`: a parsed serving_runtime.yaml)."""
    skew = np.asarray(skew, dtype=float)
    return np.where(np.isnan(skew), table.get("routing_skew", 0.0), skew)


def serving_cross_system() -> dict:
    """The fit's out-of-sample check as it recorded it: "fit_<a>_score_<b>" -> {constants, errors}
    (constants fitted on one system's measurements, errors on the other's)."""
    return dict(_serving_file().get("cross_system") or {})


# MoE kernel variants a backend may run on small steps: "" = none (the plain grouped GEMM),
# else a low-latency variant the kernel tables measure (one of dse.fit.calibrate.MOE_VARIANTS'
# names; its "nongated" variant belongs to relu^2 experts, not to a backend's choice)
MOE_KERNELS = ("", "min_latency")


def parse_serving_runtime(data: dict) -> dict:
    backends = {str(k): {**{n: float(c[n]) for n in ("request_ms", "step_ms", "rounds") if n in c},
                         "moe_kernel": _moe_kernel(k, c)}
                for k, c in data["backends"].items()}
    bench = data.get("benchmark", {}) or {}
    return {"backends": backends, "rounds": float(bench.get("rounds", np.inf)),
            "routing_skew": float(bench.get("routing_skew", 0.0))}


def _moe_kernel(backend, consts: dict) -> str:
    kernel = str(consts.get("moe_kernel") or "")
    if kernel not in MOE_KERNELS:
        raise DSEError(f"serving_runtime.yaml: backends.{backend}.moe_kernel: expected one of "
                       f"{', '.join(repr(k) for k in MOE_KERNELS)}, got {kernel!r}")
    return kernel


@functools.lru_cache(maxsize=1)
def power_coeffs() -> dict[str, float]:
    data = _safe_load(hardware_dir() / "power.yaml")
    return {"c_compute": float(data["c_compute"]), "c_memory": float(data["c_memory"])}
