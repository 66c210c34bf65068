"""Kernel model vs measured kernel tables.

`validate(kernels_dir, device_id)` predicts every row of every table in the directory
with the device's calibrated parameters (or `params`, e.g. another device's, to test
how the rules carry to hardware they were not fitted on) and the device's spec
sheet, and reports the error per family:

    python -m dse.fit.validate_kernels ../shared/calibration/kernels            # all devices
    python -m dse.fit.validate_kernels ../shared/calibration/kernels --cross    # + fit on one, predict the other
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dse.fit.calibrate import error_summary, load_params, predict, require_tables
from dse.catalog.devices import get_device

__all__ = ["validate", "main"]


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


def _table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    head = ("device", "params from", "family", "rows", "median APE %", "MAPE %")
    lines = ["{:<10} {:<12} {:<22} {:>6} {:>13} {:>8}".format(*head)]
    for device, source, res in rows:
        for family, e in res["families"].items():
            lines.append(f"{device:<10} {source:<12} {family:<22} {e['n']:>6} "
                         f"{e['median_ape']:>13.1f} {e['mape']:>8.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dse.fit.validate_kernels", description=__doc__.split("\n")[0])
    ap.add_argument("kernels_root", help="directory holding one sub-directory of tables per device")
    ap.add_argument("--devices", nargs="*", help="device ids (default: every sub-directory)")
    ap.add_argument("--cross", action="store_true",
                    help="also predict each device with every other device's parameters")
    args = ap.parse_args(argv)
    root = Path(args.kernels_root)
    devices = args.devices or sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = [(d, d, validate(root / d, d)) for d in devices]
    if args.cross:
        rows += [(d, src, validate(root / d, d, params=load_params(src)))
                 for d in devices for src in devices if src != d]
    print(_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
