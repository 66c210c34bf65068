"""`dse calibrate` and `dse validate`: fitting the kernel model, and the model against
measured kernels or deployments."""
from __future__ import annotations

import argparse
from typing import Any

from dse.errors import DSEError

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    cal = sub.add_parser("calibrate", help="fit kernel efficiencies from measured kernel tables",
                         description="Fit the kernel-model parameters of a device from its measured kernel "
                                     "tables, print the fit error per family and write <device>.yaml to --out "
                                     "(default $XDG_DATA_HOME/dse/calibration, else ~/.local/share/dse/"
                                     "calibration). The shipped hardware/calibration is replaced only with "
                                     "--in-place.")
    cal.add_argument("--kernels", required=True, help="directory of kernel tables (gemm.csv[.gz], ...)")
    cal.add_argument("--device", required=True)
    where = cal.add_mutually_exclusive_group()
    where.add_argument("--out", default=None, help="directory for <device>.yaml (default: the user data "
                                                   "directory above, never the installed package)")
    where.add_argument("--in-place", action="store_true",
                       help="replace the shipped hardware/calibration/<device>.yaml (what the model uses)")
    cal.set_defaults(func=_cmd_calibrate)

    val = sub.add_parser("validate", help="model vs measured kernels or deployments")
    val.add_argument("--kernels", help="directory of kernel tables")
    val.add_argument("--device", help="device id the kernel tables were measured on")
    val.add_argument("--measurements", help="CSV of measured deployments")
    val.add_argument("--cross", action="store_true",
                     help="with --kernels: leave this device out -- fit the kernel family rules on the sibling "
                          "directories of DIR's parent (one per device) and predict DIR's tables")
    val.add_argument("--json", help="write the figures to this JSON file")
    val.set_defaults(func=_cmd_validate)


def _cmd_calibrate(a: argparse.Namespace) -> int:
    from dse.fit import calibrate

    params = calibrate.fit(a.kernels, a.device)
    path = calibrate.write(params, a.device, out_dir=a.out, in_place=a.in_place)
    print("\n".join(calibrate.summary_lines(params)))
    print(f"wrote {path}")
    return 0


def _cmd_validate(a: argparse.Namespace) -> int:
    if bool(a.kernels) == bool(a.measurements):
        raise DSEError("validate: give either --kernels DIR --device ID or --measurements FILE")
    if a.kernels:
        if not a.device:
            raise DSEError("validate: --kernels needs --device ID")
        from dse.fit.validate_kernels import cross, cross_lines, validate

        if a.cross:
            res = _cross(a.kernels, a.device, cross)
            print("\n".join(cross_lines(res)))
        else:
            res = validate(a.kernels, a.device)
            print(f"{'family':<22} {'n':>6} {'median APE %':>13} {'MAPE %':>8}")
            for fam, r in res["families"].items():
                print(f"{fam:<22} {r['n']:>6} {r['median_ape']:>13.1f} {r['mape']:>8.1f}")
    else:
        if a.cross:
            raise DSEError("validate: --cross needs --kernels DIR --device ID")
        from dse.fit.validate import validate_measurements

        res = validate_measurements(a.measurements)
        print(res["table"])
        res = {k: v for k, v in res.items() if k != "table"}
    if a.json:
        from dse.io import output_to, write_json

        with output_to("--json", a.json):
            write_json(a.json, res)
        print(f"wrote {a.json}")
    return 0


def _cross(kernels: str, device: str, cross) -> dict:
    """Leave `device` out of the devices whose tables sit next to DIR (DIR/../<id>/)."""
    from pathlib import Path

    d = Path(kernels)
    if not d.is_dir():
        raise DSEError(f"--kernels {d}: not a directory")
    if d.resolve().name != device:
        raise DSEError(f"--kernels {d}: --cross reads the sibling directories as devices, so DIR must be named "
                       f"after --device ({device!r}), got {d.resolve().name!r}")
    return cross(d.resolve().parent, held_out=[device])
