"""`dse deploy RUN_DIR`: launch files for a finished run's recommended configurations.

Reads RUN_DIR/recommendation.json (its picks, in order) if present, else the first --top
rows of RUN_DIR/pareto.csv; looks each configuration up in pareto.csv and writes, per
configuration and engine, a directory with serve.sh, bench.sh and what dse predicted
(dse.launch). `add_parser(subparsers)` registers the sub-command on the main parser.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dse.errors import DSEError

__all__ = ["add_parser", "select_rows"]

BACKEND_CHOICES = ("vllm", "sglang", "trtllm", "dynamo", "all")


def _picked_ids(rec: dict, path: Path) -> list[int]:
    """config_ids of recommendation.json's picks: best per objective, then the balanced one."""
    picks = list((rec.get("best") or {}).values()) + ([rec["balanced"]] if rec.get("balanced") else [])
    ids = []
    for p in picks:
        cid = p.get("config_id") if isinstance(p, dict) else None
        if cid is None:
            raise DSEError(f"deploy: {path}: a pick has no config_id")
        if int(cid) not in ids:
            ids.append(int(cid))
    return ids


def select_rows(run_dir: str | Path, top: int | None = None):
    """The rows to deploy (a DataFrame, in order): recommendation.json's picks if the run
    wrote one (at most `top` of them), else the first `top` (default 3) rows of pareto.csv."""
    import pandas as pd

    run = Path(run_dir)
    front = run / "pareto.csv"
    if not run.is_dir() or not front.is_file():
        raise DSEError(f"deploy: {run}: not a results directory (no pareto.csv); give the --out of a `dse sweep`")
    try:
        pareto = pd.read_csv(front)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DSEError(f"deploy: {front}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    rec_path = run / "recommendation.json"
    if top is not None and top < 1:
        raise DSEError(f"deploy: --top {top}; expected a positive count")
    if rec_path.is_file():
        try:
            rec = json.loads(rec_path.read_text())
        except json.JSONDecodeError as exc:
            raise DSEError(f"deploy: {rec_path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        ids = _picked_ids(rec, rec_path)[:top]
        if "config_id" not in pareto.columns:
            raise DSEError(f"deploy: {front}: no config_id column to look the recommended picks up in")
        missing = [i for i in ids if i not in set(pareto["config_id"].astype(int))]
        if missing:
            raise DSEError(f"deploy: {rec_path}: config_id {missing[0]} is not in {front}")
        by_id = pareto.set_index(pareto["config_id"].astype(int), drop=False)
        return by_id.loc[ids].reset_index(drop=True)
    return pareto.head(3 if top is None else top).reset_index(drop=True)


FALLBACK_ROWS = 5000


def _beyond_the_front(run: Path, pareto):
    """Feasible configurations off the Pareto set, best first on the run's first objective
    (at most FALLBACK_ROWS): what an engine that can run none of the front still gets."""
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path, run_json = run / "configs.parquet", run / "run.json"
    if not path.is_file() or not run_json.is_file():
        return pareto.iloc[:0]
    obj = (json.loads(run_json.read_text()).get("objectives") or [{}])[0]
    table = pq.read_table(path, filters=[("feasible", "==", True), ("is_pareto", "==", False)])
    if not table.num_rows or obj.get("name") not in table.column_names:
        return pareto.iloc[:0]
    order = pc.sort_indices(table, sort_keys=[(obj["name"], "descending" if obj.get("direction") == "max"
                                               else "ascending")])
    rows = table.take(order[:FALLBACK_ROWS]).to_pandas()
    return pd.DataFrame({c: rows[c].astype(str).where(rows[c].astype(str) != "nan", "")
                         if isinstance(rows[c].dtype, pd.CategoricalDtype) else rows[c] for c in rows.columns})


def _per_backend(rows, rest, backend: str, top: int) -> list:
    """The plans of the picks for one engine; where the engine cannot express a pick (an AMD
    device on TensorRT-LLM, a disagg pick on a single engine), the next Pareto rows it can
    express take its place, so every engine gets up to `top` runnable configurations."""
    from dse.launch import plan

    plans = [plan(r, backend) for _, r in rows.iterrows()]
    n_ok = sum(p.ok for p in plans)
    for _, r in rest.iterrows():
        if n_ok >= top:
            break
        p = plan(r, backend)
        if p.ok:
            plans.append(p)
            n_ok += 1
    return plans


def _cmd_deploy(a: argparse.Namespace) -> int:
    import pandas as pd

    from dse.io import output_to
    from dse.launch import BACKENDS, write
    from dse.search.store import check_results_dir

    check_results_dir(Path(a.run_dir))       # a tampered or unfinished run is refused, as by report
    rows = select_rows(a.run_dir, a.top)
    if not len(rows):
        raise DSEError(f"deploy: {a.run_dir}: pareto.csv has no configurations (nothing met the SLOs)")
    top = a.top or len(rows)
    pareto = pd.read_csv(Path(a.run_dir) / "pareto.csv")
    rest = pareto[~pareto["config_id"].isin(rows["config_id"])] if "config_id" in pareto.columns else pareto.iloc[:0]
    rest = pd.concat([rest, _beyond_the_front(Path(a.run_dir), pareto)], ignore_index=True)
    backends = BACKENDS if a.backend == "all" else (a.backend,)
    plans = [p for b in backends for p in _per_backend(rows, rest, b, top)]
    out = Path(a.out) if a.out else Path(a.run_dir) / "deploy"
    with output_to("--out", out):
        dirs = write(plans, out)
    for p in plans:
        where = f"{out / p.name}/" if p.ok else "not expressible: " + "; ".join(p.reasons)
        print(f"config {p.config_id} on {p.backend}: {where}")
    print(f"wrote {len(dirs)} launch director{'y' if len(dirs) == 1 else 'ies'} and {out / 'README.md'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("deploy", help="launch and benchmark files for a run's recommended configurations")
    p.add_argument("run_dir", metavar="RUN_DIR", help="results directory of `dse sweep` (pareto.csv)")
    p.add_argument("--top", type=int, default=None,
                   help="N configurations per engine: recommendation.json's picks, else pareto.csv's first N "
                        "(default 3); a pick an engine cannot express is replaced by the next Pareto row it can")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="vllm", help="serving engine (default vllm)")
    p.add_argument("--out", default=None, help="output directory (default RUN_DIR/deploy)")
    p.set_defaults(func=_cmd_deploy)
    return p
