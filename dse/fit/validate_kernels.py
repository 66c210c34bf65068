"""Kernel model vs measured kernel tables.

`validate(kernels_dir, device_id)` predicts every row of every table in the directory
with the device's calibrated parameters (or `params`, e.g. rule-built ones, to test how
the rules carry to hardware they were not fitted on) and the device's spec sheet, and
reports the error per family. `--cross` is the test that matters for devices nobody
measured: leave one device out, fit the family rules (`dse.fit.family_rules`) on the
others, predict it, for every device and family; next to it the held-out device's
sibling's own fit carried through the same normalisation, and raw (the old
inheritance) for comparison.

    python -m dse.fit.validate_kernels ../shared/calibration/kernels            # own fits
    python -m dse.fit.validate_kernels ../shared/calibration/kernels --cross    # leave-one-device-out
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dse.catalog.devices import get_device
from dse.errors import DSEError
from dse.fit.calibrate import error_summary, load_params, predict, require_tables

__all__ = ["validate", "cross", "cross_lines", "main"]


def validate(kernels_dir: str | Path, device_id: str,
             params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """{"device": id, "families": {family: {"n", "median_ape", "mape"}}} in percent."""
    device = get_device(device_id)
    params = load_params(device_id) if params is None else params
    families = {}
    for family, (_, df) in require_tables(kernels_dir).items():
        pred = predict(family, df, device, params[family])
        families[family] = error_summary(pred, df.latency.to_numpy(dtype=float))
    return {"device": device.id, "families": families}


def cross(kernels_root: str | Path, devices: list[str] | None = None,
          held_out: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Leave-one-device-out over the device sub-directories of kernels_root (or `devices`):
    {held-out device: {family: {"rule", "sibling", "raw_sibling", "sibling_from", ...}}}.
    Folds whose fit the shipped rules file holds for the same data are not refitted."""
    from dse.fit.family_rules import cached_leave_one_out

    root = Path(kernels_root)
    if not root.is_dir():
        raise DSEError(f"{root}: not a directory of per-device kernel tables")
    devices = devices or sorted(p.name for p in root.iterdir() if p.is_dir())
    for d in held_out or []:
        if d not in devices:
            raise DSEError(f"--device {d}: no tables under {root / d}")
    if len(devices) < 2:
        raise DSEError(f"{root}: leave-one-device-out needs tables of two devices or more, found {devices}")
    loo = cached_leave_one_out(root, devices)
    return {d: v for d, v in loo.items() if not held_out or d in held_out}


def cross_lines(loo: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The leave-one-device-out table (percent)."""
    from dse.fit.family_rules import loo_lines

    return loo_lines(loo)


def _table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = ("device", "family", "rows", "median APE %", "MAPE %")
    lines = ["{:<10} {:<22} {:>6} {:>13} {:>8}".format(*head)]
    for device, res in rows:
        for family, e in res["families"].items():
            lines.append(f"{device:<10} {family:<22} {e['n']:>6} {e['median_ape']:>13.1f} {e['mape']:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dse.fit.validate_kernels", description=__doc__.split("\n")[0])
    ap.add_argument("kernels_root", help="directory holding one sub-directory of tables per device")
    ap.add_argument("--devices", nargs="*", help="device ids (default: every sub-directory)")
    ap.add_argument("--cross", action="store_true",
                    help="leave-one-device-out: fit the family rules on the others, predict each device")
    args = ap.parse_args(argv)
    root = Path(args.kernels_root)
    try:
        devices = args.devices or sorted(p.name for p in root.iterdir() if p.is_dir())
        print("own calibration:")
        print(_table([(d, validate(root / d, d)) for d in devices]))
        if args.cross:
            print("\nleave-one-device-out (median APE % unless marked; rule = fitted on the other devices; "
                  "carried / raw sib = the sibling's own fit carried through the rule forms / as is):")
            print("\n".join(cross_lines(cross(root, devices))))
    except (DSEError, OSError) as exc:
        print(f"dse: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
