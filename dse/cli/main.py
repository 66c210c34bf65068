"""Command line: parse, call the API, print. Errors are one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import json
import os
import sys

from dse.errors import DSEError


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from dse import api

    cfg = {k: v for k, v in vars(a).items() if k in api.COLUMNS and v is not None}
    row, ops, pools = api.explain(**cfg)
    if a.json:
        print(json.dumps({"metrics": {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()},
                          "pools": pools.to_dict(orient="records"),
                          "ops": ops.to_dict(orient="records")}, indent=2, default=str))
        return 0
    print(f"{row['model']} on {row['num_gpus']} x {row['device']}  mode={row['mode']} tp={row['tp']:.0f} "
          f"pp={row['pp']:.0f} dp={row['dp']:.0f} ep={row['ep']:.0f} batch={row['batch_size']:.0f} "
          f"isl={row['isl']:.0f} osl={row['osl']:.0f} weights={row['weight_dtype']} kv={row['kv_dtype']}")
    width = max(len(m) for m in api.METRICS)
    for m in api.METRICS:
        v = row[m]
        print(f"  {m:<{width}}  {v:,.4g}" if isinstance(v, float) else f"  {m:<{width}}  {v}")
    fmt = lambda x: f"{x:,.4g}"  # noqa: E731
    print()
    print(pools.to_string(index=False, float_format=fmt))
    print()
    print(ops.to_string(index=False, float_format=fmt))
    return 0


def _cmd_models(a: argparse.Namespace) -> int:
    from dse.catalog.models import get_model, model_ids

    for mid in model_ids():
        try:
            m = get_model(mid)
        except DSEError as exc:
            print(f"{mid:<55} unsupported: {str(exc).split(': ', 1)[-1]}")  # drop the file path
            continue
        kinds = "+".join(sorted({g.attention.kind + ("-swa" if g.attention.window else "") for g in m.groups}))
        print(f"{mid:<55} {m.total_params() / 1e9:8.1f}B total {m.active_params() / 1e9:7.1f}B active "
              f"{m.num_layers:4d} layers  {kinds:<12} {'moe' if m.is_moe else 'dense':<5} {m.native_dtype}")
    return 0


def _cmd_hardware(a: argparse.Namespace) -> int:
    from dse.catalog.devices import all_devices

    print(f"{'id':<13} {'bf16':>6} {'fp8':>6} {'fp4':>6} {'GB':>5} {'TB/s':>5} {'up GB/s':>7} {'TDP W':>6} "
          f"{'$':>7} {'$/h':>5}  system")
    for d in all_devices():
        pk = d.peak_tflops
        print(f"{d.id:<13} {pk['bf16']:>6.0f} {pk.get('fp8', 0):>6.0f} {pk.get('fp4', 0):>6.0f} {d.memory_gb:>5.0f} "
              f"{d.memory_tb_s:>5.2f} {d.scaleup_gb_s:>7.0f} {d.tdp_w:>6.0f} {d.price_usd:>7.0f} "
              f"{d.rent_usd_per_hour:>5.2f}  {d.system}")
    return 0


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
        from dse.fit.validate_kernels import validate

        res = validate(a.kernels, a.device)
        print(f"{'family':<22} {'n':>6} {'median APE %':>13} {'MAPE %':>8}")
        for fam, r in res["families"].items():
            print(f"{fam:<22} {r['n']:>6} {r['median_ape']:>13.1f} {r['mape']:>8.1f}")
    else:
        from dse.fit.validate import validate_measurements

        res = validate_measurements(a.measurements)
        print(res["table"])
        res = {k: v for k, v in res.items() if k != "table"}
    if a.json:
        from dse.io import write_json

        write_json(a.json, res)
        print(f"wrote {a.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dse import schema as api

    p = argparse.ArgumentParser(prog="dse", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    ev = sub.add_parser("evaluate", help="metrics and per-operator breakdown of one configuration")
    for name, default in api.COLUMNS.items():
        flag = "--" + name.replace("_", "-")
        if name == "own":
            ev.add_argument("--rent", dest="own", action="store_false", default=None, help="rent instead of own")
        elif name in api.STRING_COLUMNS:
            ev.add_argument(flag, dest=name, required=default is None, help=f"default {default}")
        else:
            typ = int if name in api.INT_COLUMNS else float
            ev.add_argument(flag, dest=name, type=typ, help=f"default {default}")
    ev.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ev.set_defaults(func=_cmd_evaluate)

    models = sub.add_parser("models", help="model catalog")
    models.add_argument("action", choices=["list"])
    models.set_defaults(func=_cmd_models)
    hw = sub.add_parser("hardware", help="device catalog")
    hw.add_argument("action", choices=["list"])
    hw.set_defaults(func=_cmd_hardware)

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
    val.add_argument("--json", help="write the figures to this JSON file")
    val.set_defaults(func=_cmd_validate)

    from dse.cli.report import add_parser as add_report
    from dse.cli import cpsat as cli_cpsat
    from dse.cli.sweep import add_parser as add_sweep
    add_sweep(sub)
    add_report(sub)
    cli_cpsat.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except DSEError as exc:
        print(f"dse: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\ndse: interrupted (a sweep resumes when rerun with the same --out)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
