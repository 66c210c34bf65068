"""Command line: the parser of every command group (one module each in dse.cli) and the
dispatch. Errors are one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import os
import sys

from dse.errors import DSEError

__all__ = ["build_parser", "main"]

# The fits (calibrate, validate) are the only commands with linear algebra big enough for a
# BLAS thread pool; every other command's numpy work is elementwise, and OpenBLAS starting
# one thread per core when numpy is imported cost ~60 ms of a ~1 s `dse sweep` (2 cores).
# Results do not depend on it (tests/test_startup.py); a value the user set is kept, and a
# process that imported numpy before calling main (a test, a notebook) is left as it is.
BLAS_POOL_COMMANDS = ("calibrate", "validate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dse", description=__doc__)
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="cmd", required=True)

    from dse.cli import evaluate
    evaluate.add_parser(sub)

    from dse.cli import catalog, fit
    catalog.add_parsers(sub)
    fit.add_parsers(sub)

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
    if argv[:1] and argv[0] not in BLAS_POOL_COMMANDS and "numpy" not in sys.modules:   # a fresh process
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
