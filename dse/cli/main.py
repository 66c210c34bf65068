"""Command line: the parser of every command group (one module each in dse.cli) and the
dispatch. Errors are one line on stderr, exit 2."""
from __future__ import annotations

import argparse
import gc
import os
import sys

from dse.errors import DSEError

__all__ = ["build_parser", "main"]

# When main is the program (the `dse` script, `python -m dse.cli`: it reads sys.argv and
# nothing has imported numpy yet) the process is tuned for one short command; a caller's
# process (a test, a notebook: main(argv)) is left as it is. Results depend on neither
# (tests/test_startup.py).
# - OpenBLAS gets one thread (a value the user set is kept). The fits (calibrate, validate) are
#   the only commands with linear algebra big enough for a BLAS pool, and OpenBLAS starting
#   one thread per core when numpy is imported cost ~60 ms of a ~1 s `dse sweep` (2 cores).
# - The garbage collector runs its young generations ~140x less often, and every object is
#   frozen when the command returns: start-up leaves ~100k long-lived objects (modules,
#   pydantic schemas) that the default thresholds walked in full twice while importing, and
#   the interpreter's exit collections again (~0.2 s of a ~1 s sweep).
BLAS_POOL_COMMANDS = ("calibrate", "validate")
GC_THRESHOLDS = (100_000, 20, 20)


def _tune_process(command: list[str]) -> None:
    if command and command[0] not in BLAS_POOL_COMMANDS:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")       # before anything imports numpy
    gc.set_threshold(*GC_THRESHOLDS)


class _Parser(argparse.ArgumentParser):
    """argparse's own errors as a DSEError: one line (argparse prints the usage first), exit 2."""

    def error(self, message: str):
        command = self.prog.removeprefix("dse").strip()
        raise DSEError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dse", description=__doc__)
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
    program = argv is None and "numpy" not in sys.modules
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-V"]):       # answered before anything heavy is imported
        from dse import __version__
        print(f"dse {__version__}")
        return 0
    if program:
        _tune_process(argv[:1])
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
    finally:
        if program:
            gc.freeze()       # the process ends: nothing it still holds needs the exit collections


if __name__ == "__main__":
    sys.exit(main())
