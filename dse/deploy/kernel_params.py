"""Fitted kernel parameters per device, as `dse calibrate` wrote them to
hardware/calibration/<device>.yaml. A device without its own gets parameters built from
the kernel family rules (hardware/calibration/rules.yaml, fitted jointly on every
calibrated device by `dse.fit.family_rules`) and its own spec sheet -- either the pure
rule or its `calibration_from` device's fit carried over through the same spec
normalisation, whichever the rules file's leave-one-device-out evidence chose per
family. Families neither covers come from hardware/calibration/defaults.yaml
(written from the shipped fits by `python -m dse.fit.defaults`). The `unfitted` family (the
roofline of kernels no table measures) follows from the device's own fitted families.

Why a normalisation: a raw fitted number such as "tile_slots: 72" is a property of one
GPU; "0.55 tiles per SM" carries to a GPU with another SM count. FORMS names, per
family, the parameters stored in such spec-normalised units in the rules; every other
parameter is already physical (a fraction of the spec peak, a latency in us, a size in
elements) and carries as is."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import yaml

from dse.catalog.cache import cached_document
from dse.catalog.devices import Device, get_device
from dse.catalog.runtime import hardware_dir
from dse.errors import DSEError

__all__ = ["calibration_dir", "defaults_path", "rules_path", "default_params", "load_params", "FORMS",
           "to_rule", "from_rule", "sm_count", "clock_ghz", "load_rules", "carried_params"]

# parameter -> how its rule value relates to the device's raw value (see _SCALE)
FORMS: dict[str, dict[str, str]] = {
    "gemm": {"tile_slots": "per_sm", "floor_us": "k_cycles"},
    "context_attention": {"tile_slots": "per_sm"},
    # cta_bw_frac stays a fraction of the bandwidth (a device-free number of CTAs saturates
    # it): leave-one-device-out 21.0 % mean against 23.9 % as GB/s per CTA (2026-12-02)
    "generation_attention": {"tile_slots": "per_sm", "ramp_mb": "us_at_bw",
                             "floor_us": "k_cycles"},
    "moe": {"floor_us": "k_cycles"}, "nccl": {}, "custom_allreduce": {},
}
FORM_UNITS = {
    "per_sm": "tiles per SM: raw = rule x sm_count",
    "us_at_bw": "us of streaming at the spec bandwidth: raw MB = rule x memory_tb_s",
    "k_cycles": "thousands of clock cycles: raw us = rule / clock_ghz (defaults.yaml clock_ghz)",
}


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml: the same documents, ~20x faster


def _read(path: Path):
    """The parsed document (safe_load semantics), parsed once per file version: a sweep asks
    for each device's parameters per chunk, and parsing was a quarter of a small sweep."""
    st = os.stat(path)
    return _parsed(str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _parsed(path: str, mtime_ns: int, size: int):
    return cached_document(f"kernels_{Path(path).stem}-pyyaml{yaml.__version__}", Path(path), lambda text: yaml.load(text, Loader=_Loader))


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
    return _families(_read(path), path)


def default_params() -> dict[str, dict[str, float]]:
    """The defaults' kernel families (a fresh copy: callers may fill it in)."""
    return {fam: dict(vals) for fam, vals in _defaults().items()}


def load_params(device_id: str) -> dict[str, dict[str, float]]:
    """Kernel parameters of a device: its own calibration; else built from the family
    rules and its spec sheet (with its `calibration_from` device's fit where the rules
    file says that carries better, and always for a hypothetical device or one of the same
    architecture family); families missing from both come from the defaults."""
    device = get_device(device_id)
    params = default_params()
    own = _calibration(device.id)
    if own is not None:
        params.update(own)
        return _with_unfitted(params)
    sib = _calibration(device.calibration_from) if device.calibration_from else None
    sibling = (get_device(device.calibration_from), sib) if sib is not None else None
    rules = load_rules()
    carry = rules.get("carry")
    if sibling and (device.hypothetical or device.family == sibling[0].family):
        # a what-if variant of a measured device, or a device of the same architecture
        # (H200, H20 from H100; GB200, B300 from B200), keeps that device's fit, carried
        # through the forms (so more bandwidth or FLOPS is never slower than the original);
        # the rules file's carry, chosen on devices of other architectures, decides the rest
        carry = dict.fromkeys(set(sibling[1]), "sibling")
    params.update(carried_params(device, rules.get("rules", {}), sibling, carry))
    return _with_unfitted(params)


def _with_unfitted(params: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """params with the `unfitted` family (unless a file gives it): the roofline efficiencies
    of the kernels no measured table covers (gated-delta-net recurrence, the DSA indexer),
    taken as the device's fitted large-shape GEMM efficiency (compute) and decode-attention
    streaming efficiency (memory), so that they are the device's, not a typed-in guess."""
    if "unfitted" not in params:
        fill = _defaults()
        gemm, attn = ({**fill[f], **params.get(f, {})} for f in ("gemm", "generation_attention"))
        params["unfitted"] = {"eff_compute": gemm["eff_compute"], "eff_memory": attn["eff_memory"]}
    return params


def sm_count(device: Device) -> float:
    """The device's SM count, else its calibration_from device's (a TPU priced with H100
    rules keeps H100's tile slots), else 132 (H100 SXM5)."""
    if device.sm_count:
        return float(device.sm_count)
    if device.calibration_from and get_device(device.calibration_from).sm_count:
        return float(get_device(device.calibration_from).sm_count)
    return 132.0


@functools.lru_cache(maxsize=1)
def _clocks() -> dict[str, float]:
    path = defaults_path()
    clocks = (_read(path) or {}).get("clock_ghz") or {}
    if not isinstance(clocks, dict):
        raise DSEError(f"{path}: clock_ghz: expected a mapping of device id: GHz, got {clocks!r}")
    for dev, ghz in clocks.items():
        if isinstance(ghz, bool) or not isinstance(ghz, (int, float)) or ghz <= 0:
            raise DSEError(f"{path}: clock_ghz.{dev}: expected a positive number of GHz, got {ghz!r}")
    return {str(k): float(v) for k, v in clocks.items()}


def clock_ghz(device: Device) -> float:
    """The clock the device's spec TFLOPS are quoted at (defaults.yaml clock_ghz), else its
    calibration_from device's (an H200 or H20 is a GH100 at H100's clock), else H100 SXM5's.
    Why: fixed kernel latencies (launch, prologue, epilogue) are so many cycles, so an
    A100 at 1.41 GHz pays more us than an L40S at 2.52 GHz."""
    clocks = _clocks()
    for ref in (device.id, device.calibration_from, "h100_sxm"):
        if ref in clocks:
            return clocks[ref]
    raise DSEError(f"{defaults_path()}: clock_ghz: expected an entry for {device.id} or h100_sxm")


def _scale(form: str, device: Device) -> float:
    """raw = rule x scale."""
    if form == "per_sm":
        return sm_count(device)
    if form == "us_at_bw":
        return device.memory_tb_s
    if form == "k_cycles":
        return 1.0 / clock_ghz(device)
    raise ValueError(f"unknown parameter form {form!r}")


def _form(family: str, key: str) -> str | None:
    return FORMS.get(family, {}).get(key.split(".", 1)[0])


def to_rule(family: str, params: dict[str, float], device: Device) -> dict[str, float]:
    """A device's raw parameters of one family in spec-normalised rule units."""
    return {k: v / _scale(f, device) if (f := _form(family, k)) else v for k, v in params.items()}


def from_rule(family: str, rule: dict[str, float], device: Device) -> dict[str, float]:
    """Rule-unit parameters of one family as the raw parameters of `device`."""
    return {k: v * _scale(f, device) if (f := _form(family, k)) else v for k, v in rule.items()}


def rules_path() -> Path:
    return hardware_dir() / "calibration" / "rules.yaml"


@functools.lru_cache(maxsize=1)
def load_rules() -> dict:
    """The rules file: {"rules": {family: {...}}, "carry": {family: "rule" | "sibling"}, ...}
    ({} when absent)."""
    path = rules_path()
    if not path.is_file():
        return {}
    doc = _read(path) or {}
    carry = doc.get("carry") or {}
    bad = {f: c for f, c in carry.items() if c not in ("rule", "sibling")}
    if bad:
        raise DSEError(f"{path}: carry.{next(iter(bad))}: expected 'rule' or 'sibling', got {next(iter(bad.values()))!r}")
    return {"rules": _families({"params": doc.get("rules")}, path), "carry": dict(carry)}


def _calibration(ref: str) -> dict[str, dict[str, float]] | None:
    path = calibration_dir() / f"{ref}.yaml"
    if ref and path.is_file():
        return _families(_read(path) or {}, path)
    return None


def carried_params(device: Device, rules: dict[str, dict[str, float]],
                   sibling: tuple[Device, dict[str, dict[str, float]]] | None = None,
                   carry: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    """Parameters of an uncalibrated device: per family the rule built on its spec sheet,
    or (carry[family] == "sibling") the sibling's own fit carried through the same
    normalisation, keys the sibling lacks (formats it has no table for) from the rule."""
    out = {}
    for fam in set(rules) | set(sibling[1] if sibling else {}):
        rule = dict(rules.get(fam, {}))
        use_sibling = sibling is not None and fam in sibling[1] and \
            (fam not in rules or (carry or {}).get(fam, "rule") == "sibling")
        if use_sibling:
            rule.update(to_rule(fam, sibling[1][fam], sibling[0]))
        out[fam] = from_rule(fam, rule, device)
    return out
