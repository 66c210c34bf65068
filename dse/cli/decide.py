"""`dse recommend RUN_DIR` prints a finished run's Recommended block again; `dse compare A B`
sets two runs side by side (console, or an HTML page with --html)."""
from __future__ import annotations

import argparse
from typing import Any

from dse.errors import DSEError

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    rec = sub.add_parser("recommend", help="print a finished run's recommended deployments")
    rec.add_argument("run_dir", help="a results directory written by `dse sweep`")
    rec.add_argument("--objective", help="only the best configuration for this objective (a metric name)")
    rec.set_defaults(func=_cmd_recommend)
    cmp = sub.add_parser("compare", help="what changed between two runs of the same question")
    cmp.add_argument("run_a", help="the baseline results directory")
    cmp.add_argument("run_b", help="the results directory to set against it")
    cmp.add_argument("--html", metavar="OUT", help="also write the comparison as an HTML page")
    cmp.set_defaults(func=_cmd_compare)


def _cmd_recommend(a: argparse.Namespace) -> int:
    from pathlib import Path

    from dse.report.rundata import RECOMMENDATION_JSON, read_json
    from dse.search.recommend import format_recommendation

    from dse.search.store import verify_run_dir

    verify_run_dir(a.run_dir)
    rec = read_json(Path(a.run_dir) / RECOMMENDATION_JSON)
    if a.objective:
        if a.objective not in rec.get("best", {}):
            raise DSEError(f"{a.run_dir}: --objective: {a.objective!r} is not an objective of this run; "
                           f"allowed: {', '.join(rec.get('best', {})) or 'none (nothing feasible)'}")
        rec = {**rec, "best": {a.objective: rec["best"][a.objective]}, "balanced": None}
    print(format_recommendation(rec))
    return 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from dse.report.compare import compare_runs, format_comparison
    from dse.search.store import verify_run_dir

    for d in (a.run_a, a.run_b):          # a directory mixing files of different runs is refused
        verify_run_dir(d)
    cmp = compare_runs(a.run_a, a.run_b)
    print(format_comparison(cmp))
    if a.html:
        from dse.io import output_to
        from dse.report.html import write_comparison
        with output_to("--html", a.html):
            print(f"wrote {write_comparison(cmp, a.html)}")
    return 0
