"""`sweep`: the one front door of the search — scenario in, run directory out.

Resolves the settings (arguments, else the scenario's `search:` block, else defaults),
opens or resumes the run directory, runs the strategy and writes the results.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dse.errors import DSEError
from dse.search.progress import ProgressArg
from dse.search.results import SweepResult, finalize
from dse.search.space import SAMPLERS, STRATEGIES, Space, load_space
from dse.search.store import RunStore


def default_budget(strategy: str, size: int) -> int:
    """NSGA-II: 5 % of the space (at least 2,000, at most 200,000); Optuna: 2,000 trials."""
    if strategy == "nsga2":
        return min(size, max(2_000, min(size // 20, 200_000)))
    return min(size, 2_000)


def sweep(space_or_path: Space | str | Path, *, strategy: str | None = None, budget: int | None = None,
          seed: int | None = None, out: str | Path | None = None, jobs: int = 1, backend: str = "joblib",
          scheduler: str | None = None, storage: str | None = None, sampler: str | None = None,
          pop_size: int | None = None, chunk_size: int | None = None, tol: float | None = None,
          progress: ProgressArg = False) -> SweepResult:
    """Search a scenario and write configs.parquet, pareto.csv, run.json and report.html.

    strategy: grid (exhaustive), nsga2 (pymoo) or optuna; budget: evaluations for nsga2 and
    optuna (for grid, a cap on the space size); out: run directory (default
    results/<scenario>-<timestamp>); rerunning into the same directory (or, for optuna, with
    the same storage) resumes. jobs/backend/scheduler: parallel grid chunks on joblib
    workers or a Dask cluster. tol: nsga2 stops before the budget once its front's
    hypervolume grew less than this fraction over the last quarter of the run (0: never).
    progress: True for a stderr bar, or a callable(done, total).
    """
    t_start = time.perf_counter()
    space = space_or_path if isinstance(space_or_path, Space) else load_space(space_or_path)
    conf = dict(space.search)
    strategy = strategy or conf.get("strategy", "grid")
    if strategy not in STRATEGIES:
        raise DSEError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    seed = int(seed if seed is not None else conf.get("seed", 0))
    budget = budget if budget is not None else conf.get("budget")
    if budget is not None and (int(budget) != budget or budget < 1):
        raise DSEError(f"--budget: expected a positive integer, got {budget!r}")
    if jobs < 1:
        raise DSEError(f"--jobs: expected a positive integer, got {jobs!r}")
    if storage is not None and strategy != "optuna":
        raise DSEError("--storage applies to --strategy optuna only")
    if scheduler is not None and backend != "dask":
        raise DSEError("--scheduler applies to --backend dask only")
    sampler = sampler or conf.get("sampler", "nsga2")
    if sampler not in SAMPLERS:
        raise DSEError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")

    identity: dict[str, Any] = {"fingerprint": space.fingerprint, "strategy": strategy, "seed": seed}
    if strategy == "grid":
        if budget is not None and space.size > budget:
            raise DSEError(f"{space.path}: the space has {space.size:,} configurations, more than --budget "
                           f"{int(budget):,}; use --strategy nsga2 or optuna, or raise --budget")
        from dse.search.grid import DEFAULT_CHUNK
        chunk_size = int(chunk_size or conf.get("chunk_size", DEFAULT_CHUNK))
        identity["chunk_size"] = chunk_size
    else:
        from dse.search.nsga2 import default_pop_size
        budget = int(budget) if budget is not None else default_budget(strategy, space.size)
        pop_size = int(pop_size or conf.get("pop_size", default_pop_size(budget)))
        identity["pop_size"] = pop_size
        if strategy == "optuna":
            identity["sampler"] = sampler

    run_dir = Path(out) if out is not None else Path("results") / f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    store = RunStore(run_dir, identity=identity).open()
    meta: dict[str, Any] = {"strategy": strategy, "seed": seed, "budget": budget, "resumed": store.resumed,
                            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if strategy == "grid":
        from dse.search.grid import run_grid
        stats = run_grid(space, store, chunk_size=chunk_size, jobs=jobs, backend=backend, scheduler=scheduler,
                         progress=progress)
    elif strategy == "nsga2":
        from dse.search.nsga2 import run_nsga2
        stats = run_nsga2(space, store, budget=budget, seed=seed, pop_size=pop_size,
                          tol=float(tol if tol is not None else conf.get("tol", 1e-5)), progress=progress)
    else:
        from dse.search.optuna_search import run_optuna
        stats = run_optuna(space, store, budget=budget, seed=seed, sampler=sampler, pop_size=pop_size,
                           storage=storage, progress=progress)
    meta.update(stats)
    result = finalize(store, space, meta=meta, t_start=t_start)
    store.clear()
    return result
