"""Writes hardware/calibration/defaults.yaml from the shipped fits, so that no kernel
parameter of dse is typed in by hand.

The defaults fill in what a device's parameters lack (a calibration file without a
family, a format its tables do not measure). They are the reference device's fit
(h100_sxm, the device most others are priced from) and, for the formats its tables do
not hold (fp4), the fit of the device that measures them (b200_sxm), each rounded to four
significant figures. Which keys the defaults carry is fixed by KEYS below: a per-format
key added to the defaults would shadow the base key of every calibrated device that lacks
it (`kernels.for_format` prefers `key.fmt` over `key`), so the set changes only on purpose.

    python -m dse.fit.defaults            # rewrite the shipped file
    python -m dse.fit.defaults --check    # exit 1 if the file is not what the fits give
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import math
import sys
from pathlib import Path

import yaml

from dse import io
from dse.deploy.kernel_params import calibration_dir, defaults_path
from dse.errors import DSEError

__all__ = ["KEYS", "REFERENCE", "FP4_FROM", "build", "render", "main"]

REFERENCE = "h100_sxm"
FP4_FROM = "b200_sxm"          # H100 has no fp4 tensor cores: its tables hold no fp4 rows

# family -> the keys the defaults carry (the base key of every parameter, and the
# per-format keys of the formats whose kernels the engine prices apart by default)
KEYS: dict[str, tuple[str, ...]] = {
    "gemm": ("eff_compute", "eff_memory", "k_half", "tile_m", "tile_n", "tile_slots", "split_min_k",
             "floor_us", "eff_compute.fp8", "floor_us.fp8", "split_min_k.fp8", "eff_compute.fp8_block",
             "floor_us.fp8_block", "split_min_k.fp8_block", "eff_compute.fp4", "floor_us.fp4",
             "split_min_k.fp4"),
    "context_attention": ("eff_compute", "eff_memory", "cta_us", "d_half", "tile_q", "tile_kv",
                          "tile_slots", "floor_us", "eff_compute.fp8"),
    "generation_attention": ("eff_memory", "eff_compute", "tile_slots", "block_tokens", "cta_heads",
                             "cta_us", "mha_cta_us", "cta_bw_frac", "ramp_us", "ramp_mb", "floor_us",
                             "max_group", "eff_fallback", "cta_heads.fp8", "cta_us.fp8",
                             "mha_cta_us.fp8", "floor_us.fp8"),
    "moe": ("eff_compute", "eff_memory", "k_half", "tile_m", "floor_us", "eff_compute.fp8", "floor_us.fp8",
            "eff_compute.fp8_block", "floor_us.fp8_block", "eff_compute.fp4", "floor_us.fp4",
            "eff_compute.int4", "floor_us.int4"),
    "nccl": ("base_us", "step_us", "eff_ll", "eff_bw", "bw_extra_us", "one_shot"),
    "custom_allreduce": ("base_us", "step_us", "eff_ll", "eff_bw", "bw_extra_us", "one_shot"),
}

HEADER = """\
# Kernel parameters of a device without its own calibration file and without a
# `calibration_from` device, and the fill-in for any parameter a calibration file lacks
# (dse.deploy.kernel_params reads this; dse.model.kernels documents what each one means).
# Written by `python -m dse.fit.defaults` from the shipped fits: do not edit `params` by
# hand (tests/test_kernels.py fails when this file is not what the fits give).
"""


def _round(x: float, digits: int = 4) -> float:
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(round(x, digits - 1 - int(math.floor(math.log10(abs(x))))))


def _fit(device_id: str, cal_dir: Path) -> tuple[dict, str]:
    """A calibration file's own parameters (not its fill-ins) and the file's sha256."""
    path = cal_dir / f"{device_id}.yaml"
    if not path.is_file():
        raise DSEError(f"{path}: not found; the defaults are written from the {device_id} fit")
    text = path.read_bytes()
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc.get("params"), dict):
        raise DSEError(f"{path}: params: expected the fitted kernel families")
    return doc["params"], hashlib.sha256(text).hexdigest()


def _source(key: str) -> str:
    return FP4_FROM if key.endswith(".fp4") else REFERENCE


def build(cal_dir: Path | None = None) -> dict:
    """{"params": family -> key -> value, "sources": device -> sha256 of its fit file}."""
    cal_dir = calibration_dir() if cal_dir is None else Path(cal_dir)
    fits = {d: _fit(d, cal_dir) for d in (REFERENCE, FP4_FROM)}
    params = {}
    for fam, keys in KEYS.items():
        vals = {}
        for key in keys:
            dev = _source(key)
            val = fits[dev][0].get(fam, {}).get(key)
            if val is None:
                raise DSEError(f"{cal_dir / (dev + '.yaml')}: params.{fam}.{key}: expected a fitted value "
                               "(the defaults carry it)")
            vals[key] = _round(float(val))
        params[fam] = vals
    return {"params": params, "sources": {d: sha for d, (_, sha) in fits.items()}}


def render(built: dict, clocks: dict, clock_sources: dict) -> str:
    """The defaults file's text: header, provenance, params, then the (sourced, not fitted)
    clocks the family rules count fixed latencies in."""
    doc = {
        "provenance": {
            "tool": "python -m dse.fit.defaults",
            "date": _dt.date.today().isoformat(),
            "method": (f"the {REFERENCE} fit (hardware/calibration/{REFERENCE}.yaml), and for the fp4 keys the "
                       f"{FP4_FROM} fit, each rounded to 4 significant figures; the keys carried are "
                       "dse.fit.defaults.KEYS"),
            "sources": {f"hardware/calibration/{d}.yaml": {"sha256": sha} for d, sha in built["sources"].items()},
            "clock_ghz": ("the clock each calibrated device's spec TFLOPS are quoted at (clock_sources), not "
                          "fitted: the family rules hold fixed latencies in thousands of cycles; a device not "
                          "listed takes its calibration_from device's clock, else h100_sxm's"),
        },
        "params": built["params"],
        "clock_ghz": clocks,
        "clock_sources": clock_sources,
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=110, allow_unicode=True)


def _current(path: Path) -> dict:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dse.fit.defaults", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the file differs from what the fits give")
    args = ap.parse_args(argv)
    path = defaults_path()
    cur = _current(path)
    built = build()
    if args.check:
        ok = cur.get("params") == built["params"]
        print(f"{path}: {'matches the fits' if ok else 'differs from the fits: run python -m dse.fit.defaults'}")
        return 0 if ok else 1
    io.write_text(path, render(built, cur.get("clock_ghz") or {}, cur.get("clock_sources") or {}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DSEError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
