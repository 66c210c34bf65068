"""`dse sweep SPACE.yaml`: parse, call `sweep`, print where the results are and the Pareto set.

`add_parser(subparsers)` registers the command on the main `dse` parser; `main(argv)`
runs it standalone (tests, `python -m dse.cli.sweep`).
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:       # pandas is imported by the sweep itself, not to register the command
    import pandas as pd

__all__ = ["add_parser", "run_command", "pareto_table"]

def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="search a scenario (grid, NSGA-II or Optuna) for its Pareto front",
                              description="Search a scenario file and write configs.parquet, pareto.csv, "
                                          "run.json and report.html to the run directory.")
    p.add_argument("space", help="scenario file (search_spaces/*.yaml)")
    p.add_argument("--strategy", choices=["auto", "grid", "nsga2", "optuna"], default=None,
                   help="auto: grid up to 5 million configurations, NSGA-II beyond (default: the scenario's "
                        "search.strategy, else auto)")
    p.add_argument("--budget", type=int, default=None,
                   help="evaluations for nsga2/optuna; for grid, refuse spaces larger than this")
    p.add_argument("--max-evaluations", type=int, default=None, metavar="N",
                   help="refuse a grid over more than N configurations unless --budget allows it "
                        "(default 100,000,000)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: scenario's, else 0)")
    p.add_argument("--out", default=None, help="run directory (default results/<scenario>-<timestamp>); "
                                               "rerun into the same directory to resume")
    p.add_argument("--force", action="store_true",
                   help="replace a run directory that holds another scenario's run (or an unreadable one)")
    p.add_argument("--jobs", type=int, default=1, help="parallel workers for grid chunks")
    p.add_argument("--backend", choices=["joblib", "dask"], default="joblib", help="where grid chunks run")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:8786) for --backend dask")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: RDB URL (sqlite:///x.db, postgresql://...), journal:PATH or memory "
                        "(default RUN_DIR/study.journal)")
    p.add_argument("--sampler", choices=["nsga2", "tpe"], default=None, help="Optuna sampler (default nsga2)")
    p.add_argument("--pop-size", type=int, default=None, help="population / batch size for nsga2 and optuna")
    p.add_argument("--chunk-size", type=int, default=None, help="configurations per grid chunk (default 65536)")
    p.add_argument("--tol", type=float, default=None,
                   help="nsga2: stop early once the front's hypervolume grew less than this fraction over the "
                        "last quarter of the run (default 1e-5; 0 = use the whole budget)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_command)
    return p


def run_command(a: argparse.Namespace) -> int:
    import json

    from dse.api import sweep
    from dse.search.recommend import format_recommendation

    extra = {"max_evaluations": a.max_evaluations} if a.max_evaluations is not None else {}
    res = sweep(a.space, strategy=a.strategy, budget=a.budget, seed=a.seed, out=a.out, jobs=a.jobs,
                backend=a.backend, scheduler=a.scheduler, storage=a.storage, sampler=a.sampler,
                pop_size=a.pop_size, chunk_size=a.chunk_size, tol=a.tol, progress=not a.quiet,
                force=a.force, **extra)
    run = res.run
    deployable = run.get("deployable_size", run["space_size"])
    print(f"{run['strategy']}: {run['n_evaluated']:,} evaluations of {run['space_size']:,} configurations "
          f"({deployable:,} deployable) in "
          f"{run['eval_seconds']:.1f} s ({run['evals_per_second'] or 0:,.0f}/s), {run['n_feasible']:,} feasible, "
          f"{run['n_pareto']:,} on the Pareto front, hypervolume {run['hypervolume']:.4f}; "
          f"wall {run['wall_seconds']:.1f} s")
    print(f"results: {res.run_dir}/ (configs.parquet, pareto.csv, recommendation.json, run.json, report.html)")
    if len(res.pareto):
        print()
        print(pareto_table(res.pareto, run))
    print()
    print(format_recommendation(json.loads((res.run_dir / "recommendation.json").read_text())))
    return 0


DECIDING = ("mode", "device", "prefill_device", "decode_device", "attn_device", "ffn_device", "tp", "pp", "dp", "ep",
            "weight_dtype", "kv_dtype", "batch_size")


def pareto_table(pareto: "pd.DataFrame", run: dict[str, Any], rows: int = 12) -> str:
    """The Pareto set as a short text table: rows that tie on every objective as one (the
    simplest, with how many it stands for); the deciding columns always, then the axes that
    vary, then the objectives."""
    from dse.search.recommend import representatives, tie_groups

    objectives = [o["name"] for o in run["objectives"]]
    rep = representatives(pareto, tie_groups(pareto, objectives)).sort_values(objectives[0])
    axes = list(run["scenario"].get("axes", {}))
    for spec in run["scenario"].get("modes", {}).values():
        axes += [a for a in spec if a not in axes]
    roles = [c for c in DECIDING if c.endswith("_device") and c in rep.columns and (rep[c].astype(str) != "").any()]
    deciding = [c for c in DECIDING if c in rep.columns and (not c.endswith("_device") or c in roles)]
    cols = deciding + [c for c in axes if c in rep.columns and c not in deciding and rep[c].nunique() > 1] + objectives
    shown_extra = (("placed_num_gpus", "placed_tokens_per_s", "placed_gain", "placement")
                   if run["scenario"].get("placement") else ("num_gpus", "tokens_per_s"))
    extra = [c for c in (*shown_extra, "n_equivalent") if c in rep.columns and c not in cols]
    if len(rep) > rows:  # spread the rows along the first objective
        pick = sorted({round(i * (len(rep) - 1) / (rows - 1)) for i in range(rows)})
        shown = rep.iloc[pick]
    else:
        shown = rep
    text = shown[cols + extra].to_string(index=False, float_format=lambda x: f"{x:,.4g}")
    more = f"\n({len(rep) - len(shown):,} more in pareto.csv)" if len(rep) > len(shown) else ""
    return (f"Pareto set ({len(pareto):,} configurations, {len(rep):,} distinct on the objectives):\n"
            f"{text}{more}")
