"""`sweep`: the one front door of the search — scenario in, run directory out.

Resolves the settings (arguments, else the scenario's `search:` block, else defaults),
refuses ordinary mistakes with one line before any work, opens (or resumes) the run
directory under its lock, runs the strategy from the `RUNNERS` registry and commits the
results (see dse.search.store for the run-directory contract, docs/runs.md for what each
strategy guarantees on resume).
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Callable

from dse.errors import DSEError
from dse.search.progress import ProgressArg
from dse.search.results import SweepResult, finalize
from dse.search.space import SAMPLERS, Space, load_space
from dse.search.store import RunStore, disk_error

__all__ = ["sweep", "auto_strategy", "AUTO_GRID_MAX", "default_budget", "RUNNERS", "MAX_EVALUATIONS", "MAX_CONFIG_ID", "default_out"]

MAX_EVALUATIONS = 10 ** 8       # a grid beyond this needs an explicit --budget or --max-evaluations
MAX_CONFIG_ID = 2 ** 63 - 1     # config ids (and the optimizers' genomes) are int64
MAX_SEED = 2 ** 32 - 1          # numpy's and optuna's seeds


def default_budget(strategy: str, size: int) -> int:
    """NSGA-II: 5 % of the space (at least 2,000, at most 200,000); Optuna: 2,000 trials."""
    if strategy == "nsga2":
        return min(size, max(2_000, min(size // 20, 200_000)))
    return min(size, 2_000)


# -- strategies: name -> runner(space, store, settings) -> counters for run.json -----------
def _run_grid(space: Space, store: RunStore, o: dict[str, Any]) -> dict[str, Any]:
    from dse.search.grid import run_grid
    return run_grid(space, store, chunk_size=o["chunk_size"], jobs=o["jobs"], backend=o["backend"],
                    scheduler=o["scheduler"], progress=o["progress"])


def _run_nsga2(space: Space, store: RunStore, o: dict[str, Any]) -> dict[str, Any]:
    from dse.search.nsga2 import run_nsga2
    return run_nsga2(space, store, budget=o["budget"], seed=o["seed"], pop_size=o["pop_size"], tol=o["tol"],
                     progress=o["progress"])


def _run_optuna(space: Space, store: RunStore, o: dict[str, Any]) -> dict[str, Any]:
    from dse.search.optuna_search import run_optuna
    return run_optuna(space, store, budget=o["budget"], seed=o["seed"], sampler=o["sampler"],
                      pop_size=o["pop_size"], storage=o["storage"], progress=o["progress"])


RUNNERS: dict[str, Callable[[Space, RunStore, dict[str, Any]], dict[str, Any]]] = {
    "grid": _run_grid, "nsga2": _run_nsga2, "optuna": _run_optuna}


def _safe_name(name: str) -> str:
    """A scenario name as one path component: no separators, no leading dots."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).lstrip(".") or "scenario"


def default_out(name: str, root: str | Path = "results") -> Path:
    """results/<name>-<timestamp>, made unique (-2, -3, ...) so two runs never share it."""
    root = Path(root)
    base = root / f"{_safe_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _int_option(name: str, value: Any, *, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or value < lo or (hi is not None and value > hi):
        allowed = f"an integer in [{lo}, {hi:,}]" if hi is not None else f"an integer >= {lo}"
        raise DSEError(f"--{name}: expected {allowed}, got {value!r}")
    return int(value)


def _tol_option(value: Any) -> float:
    """A fraction of hypervolume gain: NaN or a negative value would silently mean 0 (never stop)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise DSEError(f"--tol: expected a finite number >= 0, got {value!r}")
    return float(value)


def _check_size(space: Space, strategy: str, budget: int | None, max_evaluations: int) -> None:
    """Refuse, before any work, spaces the encoding cannot hold or a grid cannot finish."""
    size = int(space.size)
    if size > MAX_CONFIG_ID:
        raise DSEError(f"{space.path}: the space has {size:,} configurations, more than 2^63 - 1 (config ids "
                       "and the optimizers' genomes are 64-bit integers); narrow some axes or split the "
                       "scenario by mode")
    if strategy != "grid":
        return
    size = int(space.deployable_size)     # what a grid evaluates
    if budget is not None and size > budget:
        raise DSEError(f"{space.path}: the space has {size:,} deployable configurations, more than --budget "
                       f"{budget:,}; use --strategy nsga2 or optuna, or raise --budget")
    if budget is None and size > max_evaluations:
        raise DSEError(f"{space.path}: a grid over {size:,} deployable configurations is more than --max-evaluations "
                       f"{max_evaluations:,}; use --strategy nsga2 or optuna (with --budget), or raise "
                       "--max-evaluations / give --budget if you mean it")


# `--strategy auto`: the grid while enumerating is faster than searching, NSGA-II beyond.
# Measured on the 2-core reference machine (README, "Choosing a strategy"): the grid costs
# ~10 us per configuration end to end, NSGA-II ~0.6 ms per evaluation and, with its default
# tolerance, stops after ~90k evaluations (~55 s) whatever the size: they cross near 5M.
AUTO_GRID_MAX = 5_000_000


def auto_strategy(space: Space) -> str:
    """grid for spaces of at most AUTO_GRID_MAX deployable configurations, nsga2 beyond."""
    return "grid" if int(space.deployable_size) <= AUTO_GRID_MAX else "nsga2"


def sweep(space_or_path: Space | str | Path, *, strategy: str | None = None, budget: int | None = None,
          seed: int | None = None, out: str | Path | None = None, jobs: int = 1, backend: str = "joblib",
          scheduler: str | None = None, storage: str | None = None, sampler: str | None = None,
          pop_size: int | None = None, chunk_size: int | None = None, tol: float | None = None,
          progress: ProgressArg = False, force: bool = False, max_evaluations: int = MAX_EVALUATIONS,
          report: Callable[[Path], Any] | None = None) -> SweepResult:
    """Search a scenario and write configs.parquet, pareto.csv, run.json (report.html when a
    `report(run_dir)` writer is given), committed by run_manifest.json.

    strategy: auto (grid up to AUTO_GRID_MAX configurations, else nsga2), grid (exhaustive),
    nsga2 (pymoo) or optuna; budget: evaluations for nsga2 and
    optuna (for grid, a cap on the space size); max_evaluations: the largest grid run without
    an explicit budget. out: run directory (default results/<scenario>-<timestamp>);
    rerunning into the same directory (or, for optuna, with the same storage) resumes; a
    directory holding another scenario's run is replaced only with force. jobs/backend/
    scheduler: parallel grid chunks on joblib workers or a Dask cluster. tol: nsga2 stops
    before the budget once its front's hypervolume grew less than this fraction over the
    last quarter of the run (0: never). progress: True for a stderr bar, or a callable(done, total).
    """
    t_start = time.perf_counter()
    space = space_or_path if isinstance(space_or_path, Space) else load_space(space_or_path)
    conf = dict(space.search)
    strategy = strategy or conf.get("strategy", "auto")
    if strategy not in (*RUNNERS, "auto"):
        raise DSEError(f"--strategy: expected one of auto, {', '.join(RUNNERS)}, got {strategy!r}")
    chosen_by = "auto" if strategy == "auto" else "given"
    if strategy == "auto":
        strategy = auto_strategy(space)
    seed = _int_option("seed", seed if seed is not None else conf.get("seed", 0), lo=0, hi=MAX_SEED)
    budget = budget if budget is not None else conf.get("budget")
    budget = _int_option("budget", budget) if budget is not None else None
    jobs = _int_option("jobs", jobs)
    max_evaluations = _int_option("max-evaluations", max_evaluations)
    if storage is not None and strategy != "optuna":
        raise DSEError("--storage applies to --strategy optuna only")
    if scheduler is not None and backend != "dask":
        raise DSEError("--scheduler applies to --backend dask only")
    sampler = sampler or conf.get("sampler", "nsga2")
    if sampler not in SAMPLERS:
        raise DSEError(f"--sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    _check_size(space, strategy, budget, max_evaluations)

    identity: dict[str, Any] = {"fingerprint": space.fingerprint, "strategy": strategy, "seed": seed}
    opts: dict[str, Any] = {"seed": seed, "jobs": jobs, "backend": backend, "scheduler": scheduler,
                            "storage": storage, "sampler": sampler, "progress": progress}
    if strategy == "grid":
        from dse.search.grid import DEFAULT_CHUNK
        opts["chunk_size"] = identity["chunk_size"] = _int_option(
            "chunk-size", chunk_size if chunk_size is not None else conf.get("chunk_size", DEFAULT_CHUNK))
    else:
        from dse.search.nsga2 import default_pop_size
        budget = budget if budget is not None else default_budget(strategy, int(space.size))
        opts["pop_size"] = identity["pop_size"] = _int_option(
            "pop-size", pop_size if pop_size is not None else conf.get("pop_size", default_pop_size(budget)))
        opts["tol"] = _tol_option(tol if tol is not None else conf.get("tol", 1e-5))
        if strategy == "nsga2":            # both change where the run stops: a resume must keep them
            identity.update(budget=budget, tol=opts["tol"])
        else:
            identity["sampler"] = sampler
    opts["budget"] = budget

    run_dir = Path(out) if out is not None else default_out(space.name)
    store = RunStore(run_dir, identity=identity, force=force).open()
    meta: dict[str, Any] = {"strategy": strategy, "strategy_chosen": chosen_by, "seed": seed, "budget": budget,
                            "resumed": store.resumed,
                            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        meta.update(RUNNERS[strategy](space, store, opts))
        return finalize(store, space, meta=meta, t_start=t_start, report=report)
    except OSError as exc:
        err = disk_error(exc, run_dir)
        if err is None:
            raise
        raise err from None
    finally:
        store.close()
