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


def _cmd_report(a: argparse.Namespace) -> int:
    from dse.io import output_to
    from dse.report.html import write_report
    from dse.search.store import check_results_dir

    check_results_dir(Path(a.dir))
    with output_to("--out", a.out or Path(a.dir) / "report.html"):
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
