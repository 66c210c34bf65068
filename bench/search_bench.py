"""Search benchmark: grid throughput, and how much of the exhaustive front NSGA-II and Optuna
find with 1 %, 5 % and 10 % of the evaluations (three seeds), on the quickstart scenario and
on a space of 10.4 million configurations.

    python bench/search_bench.py                 # everything: ~2-3 h, most of it Optuna's 1M-trial
                                                 # runs (10 % of 10.4M), ~45 min per seed
    python bench/search_bench.py --optuna-cap 110000   # Optuna at 1 % only: ~15 min
    python bench/search_bench.py --spaces quickstart --seeds 0
    python bench/search_bench.py --json bench.json

Method. The grid sweep of each space is the ground truth: its Pareto front and its
hypervolume box (ideal and reference point, stored in its run.json). Each optimizer runs
once per seed and budget (1 %, 5 %, 10 % of the deployable configurations; population = budget / 50, 20..400).
NSGA-II stops by itself once its front has converged (tol 1e-5); when it did so below a
budget and the next budget has the same population, that run is the next budget's run
too (same seed, same trajectory), so it is not repeated. Optuna (its NSGA-II sampler,
dse's O(1)-bookkeeping subclass, in-memory storage, ~1 ms per trial) runs once per seed at
the largest budget, and the smaller budgets with the same population are scored on the
first b trials of that run (a prefix of a run is the run of that budget); --optuna-cap
skips budgets above it (n/a). A uniform random sample of the same sizes is the floor. Scores: hypervolume of the feasible front found / that of the exhaustive front, in
the grid's box; recall = share of the exhaustive Pareto set found. "evals" is the
evaluations of the largest run (fewer than its budget when NSGA-II converged).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dse.search.nsga2 import default_pop_size  # noqa: E402
from dse.search.results import hypervolume_against  # noqa: E402
from dse.search.run import sweep  # noqa: E402
from dse.search.space import load_space  # noqa: E402

FRACTIONS = (0.01, 0.05, 0.10)
SPACES = {"quickstart": ROOT / "search_spaces" / "quickstart.yaml",
          "bench_10m": ROOT / "search_spaces" / "bench_10m.yaml"}


def score(rows: pd.DataFrame, names: list[str], grid_run: dict, front_ids: set[int]) -> dict:
    hv = hypervolume_against(rows[names].to_numpy(), grid_run["objectives"], grid_run["hypervolume_reference"])
    found = len(front_ids & set(rows["config_id"].tolist()))
    return {"hv": hv / grid_run["hypervolume"], "recall": found / max(len(front_ids), 1)}


def random_baseline(grid_dir: Path, grid_run: dict, size: int, seeds: list[int], front_ids: set[int]) -> list[dict]:
    """Uniform samples without replacement of the same sizes, scored the same way."""
    names = [o["name"] for o in grid_run["objectives"]]
    df = pd.read_parquet(grid_dir / "configs.parquet", columns=["config_id", "feasible", *names])
    df = df.sort_values("config_id").reset_index(drop=True)
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        order = rng.permutation(size)[:int(round(max(FRACTIONS) * size))]
        fr = {}
        for f in FRACTIONS:
            sel = df.iloc[np.sort(order[:int(round(f * size))])]
            fr[str(f)] = score(sel[sel["feasible"]], names, grid_run, front_ids)
        rows.append({"seed": seed, "fractions": fr})
    return rows


def bench_space(name: str, seeds: list[int], work: Path, *, optuna_cap: int, jobs: int) -> dict:
    path = SPACES[name]
    space = load_space(path)
    size = space.deployable_size    # what the grid evaluates; budgets are fractions of it
    print(f"\n== {name}: {size:,} deployable of {space.size:,} configurations", flush=True)
    t0 = time.perf_counter()
    grid = sweep(path, strategy="grid", out=work / f"{name}-grid", jobs=jobs)
    wall = time.perf_counter() - t0
    g = grid.run
    res = {"space": name, "size": size, "grid": {
        "eval_seconds": g["eval_seconds"], "evals_per_second": g["evals_per_second"],
        "model_seconds": g["settings"]["model_seconds"], "wall_seconds": wall, "n_feasible": g["n_feasible"],
        "n_pareto": g["n_pareto"], "hypervolume": g["hypervolume"], "jobs": jobs}}
    print(f"grid: {size:,} in {g['eval_seconds']:.1f} s evaluating ({g['evals_per_second']:,.0f}/s; model "
          f"{size / g['settings']['model_seconds']:,.0f}/s), {wall:.1f} s wall incl. writing; front {g['n_pareto']:,}, "
          f"HV {g['hypervolume']:.4f}", flush=True)
    front_ids = set(pd.read_csv(grid.run_dir / "pareto.csv", usecols=["config_id"])["config_id"].tolist())
    res["random"] = random_baseline(grid.run_dir, g, size, seeds, front_ids)
    mean_hv = {f: np.mean([r["fractions"][str(f)]["hv"] for r in res["random"]]) for f in FRACTIONS}
    print("random: " + "  ".join(f"{int(f * 100)}%: {v:.5f}" for f, v in mean_hv.items()), flush=True)
    names = [o["name"] for o in g["objectives"]]
    res["nsga2"] = [nsga2_seed(path, name, size, seed, work, g, names, front_ids) for seed in seeds]
    res["optuna"] = [optuna_seed(path, name, size, seed, work, g, names, front_ids, optuna_cap) for seed in seeds]
    return res


def show(strategy: str, row: dict) -> None:
    shown = "  ".join(f"{int(float(f) * 100)}%: {v['hv']:.5f} (recall {v['recall']:.2f})" if v else
                      f"{int(float(f) * 100)}%: n/a" for f, v in row["fractions"].items())
    print(f"{strategy} seed {row['seed']}: {row['seconds']:.1f} s -> {shown}", flush=True)


def nsga2_seed(path: Path, name: str, size: int, seed: int, work: Path, g: dict, names: list[str],
               front_ids: set[int]) -> dict:
    fr: dict[str, dict | None] = {}
    used, secs, stopped, prev = 0, 0.0, "", None
    for f in FRACTIONS:
        b = int(round(f * size))
        pop = default_pop_size(b)
        if prev and prev[0] == pop and prev[1] == "converged":
            fr[str(f)] = fr[prev[2]]   # same population, converged below the smaller budget: same run
            continue
        t0 = time.perf_counter()
        r = sweep(path, strategy="nsga2", budget=b, seed=seed, out=work / f"{name}-nsga2-{seed}-{f}")
        secs += time.perf_counter() - t0
        fr[str(f)] = score(r.pareto, names, g, front_ids)
        used, stopped = r.run["n_evaluated"], r.run["settings"].get("stopped", "budget")
        prev = (pop, stopped, str(f))
    row = {"seed": seed, "fractions": fr, "used": used, "stopped": stopped, "seconds": secs}
    show("nsga2", row)
    return row


def optuna_seed(path: Path, name: str, size: int, seed: int, work: Path, g: dict, names: list[str],
                front_ids: set[int], cap: int | None) -> dict:
    """Budgets whose population is that of the largest budget are scored on prefixes of one
    run (the first b trials of a run are a b-trial run: same seed, same population, and the
    sampler does not know the budget); the others run on their own."""
    budgets = {str(f): int(round(f * size)) for f in FRACTIONS}
    fr: dict[str, dict | None] = {k: None for k in budgets}
    todo = {k: b for k, b in budgets.items() if cap is None or b <= cap}
    secs, used = 0.0, 0
    while todo:
        k_top = max(todo, key=todo.get)
        pop = default_pop_size(todo[k_top])
        group = {k: b for k, b in todo.items() if default_pop_size(b) == pop}
        t0 = time.perf_counter()
        r = sweep(path, strategy="optuna", budget=todo[k_top], seed=seed, storage="memory",
                  out=work / f"{name}-optuna-{seed}-{k_top}")
        secs += time.perf_counter() - t0
        used = max(used, r.run["n_evaluated"])
        rows = pd.read_parquet(r.run_dir / "configs.parquet", columns=["config_id", "eval_index", "feasible", *names])
        for k, b in group.items():
            sel = rows[(rows["eval_index"] < b) & rows["feasible"]]
            fr[k] = score(sel, names, g, front_ids)
            del todo[k]
    row = {"seed": seed, "fractions": fr, "used": used, "stopped": "budget", "seconds": secs}
    show("optuna", row)
    return row


def table(results: list[dict]) -> str:
    lines = ["grid (exhaustive)",
             f"{'space':<11} {'configs':>12} {'evals/s':>10} {'model/s':>10} {'eval s':>8} {'wall s':>8} "
             f"{'front':>6} {'HV':>7}"]
    for r in results:
        g = r["grid"]
        lines.append(f"{r['space']:<11} {r['size']:>12,} {g['evals_per_second']:>10,.0f} "
                     f"{r['size'] / g['model_seconds']:>10,.0f} {g['eval_seconds']:>8.1f} {g['wall_seconds']:>8.1f} "
                     f"{g['n_pareto']:>6,} {g['hypervolume']:>7.4f}")
    lines += ["", "hypervolume as a fraction of the exhaustive front's (same reference box) and, in brackets, the",
              "share of the exhaustive Pareto set found, after 1 %, 5 % and 10 % of the space's configurations",
              f"{'space':<11} {'strategy':<8} {'seed':>4} " + " ".join(f"{f'{int(f * 100)}%':>16}" for f in FRACTIONS)
              + f" {'evals':>9} {'stopped':>9} {'s':>8}"]

    def cell(v: dict | None) -> str:
        return f"{v['hv']:>8.5f} ({v['recall']:>4.2f})" if v else f"{'n/a':>16}"

    for r in results:
        for strategy in ("random", "nsga2", "optuna"):
            rows = r.get(strategy, [])
            for row in rows:
                vals = " ".join(cell(row["fractions"][str(f)]) for f in FRACTIONS)
                tail = (f" {row['used']:>9,} {row['stopped']:>9} {row['seconds']:>8.1f}" if "used" in row else "")
                if "at_cap" in row:
                    tail += f"  at cap: {cell(row['at_cap']).strip()}"
                lines.append(f"{r['space']:<11} {strategy:<8} {row['seed']:>4} {vals}{tail}")
            if rows:
                means = []
                for f in FRACTIONS:
                    v = [row["fractions"][str(f)] for row in rows]
                    mean = {k: np.mean([x[k] for x in v]) for k in ("hv", "recall")} if all(v) else None
                    means.append(cell(mean))
                lines.append(f"{r['space']:<11} {strategy:<8} {'mean':>4} {' '.join(means)}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--optuna-cap", type=int, default=None,
                    help="skip Optuna budgets above this many trials (default: none skipped)")
    ap.add_argument("--jobs", type=int, default=1, help="joblib workers for the grid sweeps")
    ap.add_argument("--work", default=None, help="directory for the runs (default: a temporary one)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dse-bench-") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        results = [bench_space(s, a.seeds, work, optuna_cap=a.optuna_cap, jobs=a.jobs) for s in a.spaces]
    print()
    print(table(results))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if a.json:
        from dse.io import write_json
        write_json(a.json, {"results": results, "fractions": FRACTIONS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
