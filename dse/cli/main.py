"""Command line: parse, call the API, print. Errors are one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import os
import sys

from dse.errors import DSEError

__all__ = ["build_parser", "main"]


def _show(a: argparse.Namespace, what: str) -> int:
    from dse.cli import show

    if not a.id:
        raise DSEError(f"{what} show: give an id, e.g. `dse {what} show " +
                       ("h100_sxm`" if what == "hardware" else "meta-llama/Llama-3.1-70B`"))
    print(show.show_device(a.id) if what == "hardware" else show.show_model(a.id))
    return 0


def _cmd_models(a: argparse.Namespace) -> int:
    from dse.catalog.models import get_model, model_ids

    if a.action == "show":
        return _show(a, "models")
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

    if a.action == "show":
        return _show(a, "hardware")
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
    p = argparse.ArgumentParser(prog="dse", description=__doc__)
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", required=True)

    from dse.cli import evaluate
    evaluate.add_parser(sub)

    models = sub.add_parser("models", help="model catalog: list, or show one with its source")
    models.add_argument("action", choices=["list", "show"])
    models.add_argument("id", nargs="?", help="model id (Hugging Face name) for `show`")
    models.set_defaults(func=_cmd_models)
    hw = sub.add_parser("hardware", help="device catalog: list, or show one with every figure's source")
    hw.add_argument("action", choices=["list", "show"])
    hw.add_argument("id", nargs="?", help="device id or YAML path for `show`")
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
    from dse.cli import decide
    from dse.cli.deploy import add_parser as add_deploy
    add_sweep(sub)
    add_deploy(sub)
    add_report(sub)
    decide.add_parsers(sub)
    cli_cpsat.add_parsers(sub)
    from dse.cli.schema import add_parser as add_schema
    add_schema(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-V"]):       # answered before anything heavy is imported
        from dse import __version__
        print(f"dse {__version__}")
        return 0
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
