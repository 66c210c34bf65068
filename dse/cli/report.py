"""`dse report DIR`: rebuild DIR/report.html from a results directory.

A sweep's directory is checked against its run_manifest.json first (refused, one line,
when its files are of different runs or the run is unfinished); a directory assembled by
hand (no manifest, no sweep state) is drawn as it is, with a notice.
`add_parser(subparsers)` registers the sub-command on the main parser (dse/cli.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_parser", "main"]


def _check(run_dir: Path) -> None:
    from dse.search.store import MANIFEST, verify_run_dir, warn

    if not run_dir.is_dir():
        return                       # write_report names the problem
    if (run_dir / MANIFEST).is_file() or (run_dir / "state" / "meta.json").is_file():
        verify_run_dir(run_dir)
    else:
        warn(f"{run_dir}: no {MANIFEST} (not written by dse sweep); its files are not verified")


def _cmd_report(a: argparse.Namespace) -> int:
    from dse.report.html import write_report

    _check(Path(a.dir))
    path = write_report(a.dir, out=a.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="(re)build report.html of a results directory")
    p.add_argument("dir", metavar="DIR", help="results directory (run.json, pareto.csv, configs.parquet)")
    p.add_argument("--out", default=None, help="write here instead of DIR/report.html")
    p.set_defaults(func=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m dse.cli.report DIR`) until the main CLI wires it in."""
    import sys

    from dse.errors import DSEError

    parser = argparse.ArgumentParser(prog="dse")
    add_parser(parser.add_subparsers(dest="cmd", required=True))
    try:
        args = parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)])
        return args.func(args)
    except DSEError as exc:
        print(f"dse: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
