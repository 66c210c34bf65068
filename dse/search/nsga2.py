"""NSGA-II (pymoo) over the integer genes of a space, a whole population per model call.

The Problem is vectorized (`elementwise=False`): pymoo hands `_evaluate` the population
as an integer matrix, which becomes one `evaluate` call. Objectives are minimised on
the log-like scale of the hypervolume (pareto.log_transform), so that crowding spreads the
front evenly in ratios rather than in raw units. Constraints are pymoo inequality
constraints: the model's verdict (1 = infeasible) and each scenario limit as a relative
excess.

The budget counts distinct configurations, and is an upper limit: the run stops earlier
once the hypervolume of its feasible front has stopped growing (`tol`). Offspring that repeat a configuration already
evaluated in this run (keyed by config id, so genes a mode ignores do not make a copy
look new) are treated as duplicates and re-drawn by pymoo's mating loop; anything that
still repeats is answered from a cache without counting. Evaluated rows go to the run
store as they come, and the pickled algorithm (its RNG included), the convergence
monitor's history and the idle-generation counter are checkpointed with them, so a
resumed run continues exactly where the checkpoint left it: same configurations, same
evaluation order, same stopping point as the uninterrupted run (tested under SIGKILL).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling

from dse.search.evaluation import evaluate_batch
from dse.pareto import log_transform
from dse.search.progress import Progress, ProgressArg
from dse.search.space import Space
from dse.search.store import RunStore, warn

__all__ = ["run_nsga2", "default_pop_size", "SpaceProblem", "CHECKPOINT_SECONDS", "FLUSH_ROWS"]

CHECKPOINT_SECONDS = 5.0
FLUSH_ROWS = 200_000
MAX_IDLE_GENERATIONS = 30   # generations in a row without a new configuration: exhausted


def default_pop_size(budget: int) -> int:
    """A population of about 1/50 of the budget (20 to 400): enough generations to converge
    on small budgets (on the quickstart space, 1 % of it: population 30 reaches 0.96 of the
    exhaustive hypervolume where 200 reaches 0.82), a diverse one on large budgets."""
    return int(np.clip(budget // 50, 20, 400))


class _Archive:
    """Every configuration evaluated in this run: its F and G for repeats, its row for the
    store (in order of first evaluation, flushed as numbered parts)."""

    def __init__(self, space: Space, store: RunStore, n_obj: int, n_con: int) -> None:
        self.space = space
        self.store = store
        self.pos: dict[int, int] = {}
        self.F = np.empty((1024, n_obj))
        self.G = np.empty((1024, n_con))
        self.n_parts = 0
        self.buffer: list[pd.DataFrame] = []
        self.buffered = 0
        self.requests = 0

    @property
    def n_distinct(self) -> int:
        return len(self.pos)

    def _grow(self, n: int) -> None:
        while self.F.shape[0] < n:
            self.F = np.concatenate([self.F, np.empty_like(self.F)])
            self.G = np.concatenate([self.G, np.empty_like(self.G)])

    def _remember(self, ids: np.ndarray, F: np.ndarray, G: np.ndarray) -> None:
        start = len(self.pos)
        self._grow(start + ids.size)
        self.F[start:start + ids.size] = F
        self.G[start:start + ids.size] = G
        for j, i in enumerate(ids.tolist()):
            self.pos[i] = start + j

    def evaluate(self, idx: np.ndarray, directions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """F, G of `idx`; configurations not seen before are evaluated and recorded."""
        self.requests += idx.size
        uniq, first = np.unique(idx, return_index=True)
        new = np.array([i not in self.pos for i in uniq.tolist()], dtype=bool)
        if new.any():
            fresh = idx[np.sort(first[new])]                     # in order of first appearance
            df, G = evaluate_batch(self.space, fresh)
            F = log_transform(df[self.space.objective_names()].to_numpy(dtype=float), directions)
            F = np.nan_to_num(F, nan=1e300, posinf=1e300, neginf=-1e300)
            df.insert(1, "eval_index", np.arange(self.n_distinct, self.n_distinct + fresh.size, dtype=np.int64))
            self._remember(fresh, F, G)
            self.buffer.append(df)
            self.buffered += len(df)
        rows = np.array([self.pos[i] for i in idx.tolist()], dtype=np.int64)
        return self.F[rows], self.G[rows]

    def flush(self) -> None:
        if self.buffer:
            self.store.write_part(f"nsga2-{self.n_parts:09d}", pd.concat(self.buffer, ignore_index=True))
            self.n_parts += 1
            self.buffer, self.buffered = [], 0

    def reload(self, n_parts: int, directions: list[str]) -> bool:
        """After a resume: parts up to the checkpoint are kept (later ones dropped) and their
        configurations re-evaluated into the cache (the model is deterministic). False if a
        part the checkpoint counts on is missing or unreadable (the run must restart)."""
        parts = self.store.parts()
        self.store.remove_parts([p for p in parts if int(p.stem.split("-")[1]) >= n_parts])
        kept = self.store.parts()
        if [p.name for p in kept] != [f"nsga2-{i:09d}.parquet" for i in range(n_parts)]:
            warn(f"{self.store.parts_dir}: part files of the checkpoint are missing; the run restarts")
            return False
        self.n_parts = n_parts
        for part in kept:
            try:
                t = pd.read_parquet(part, columns=["config_id", "eval_index"]).sort_values("eval_index")
            except (OSError, ValueError) as exc:
                self.store.discard_part(part, exc)
                return False
            ids = t["config_id"].to_numpy(dtype=np.int64)
            for s in range(0, ids.size, 50_000):
                df, G = evaluate_batch(self.space, ids[s:s + 50_000])
                F = log_transform(df[self.space.objective_names()].to_numpy(dtype=float), directions)
                self._remember(ids[s:s + 50_000], np.nan_to_num(F, nan=1e300, posinf=1e300, neginf=-1e300), G)
        return True


class _Convergence:
    """Stops the run once the feasible front has stopped growing: when the hypervolume it
    gained over the last quarter of the evaluations (at least `min_generations`) is below
    `tol` of the total, measured in the current front's box on the log-like scale."""

    def __init__(self, tol: float, min_evals: int, min_generations: int = 20) -> None:
        self.tol = tol
        self.min_evals = min_evals
        self.min_generations = min_generations
        self.front = np.empty((0, 0))
        self.snapshots: list[tuple[int, np.ndarray]] = []

    def update(self, F: np.ndarray, G: np.ndarray, n: int) -> bool:
        """Add a generation's new rows; True when converged."""
        from dse.pareto import normalized_hypervolume, pareto_mask, reference_box

        ok = (G <= 0).all(axis=1)
        if ok.any():
            merged = F[ok] if self.front.size == 0 else np.vstack([self.front, F[ok]])
            self.front = merged[pareto_mask(merged)]
        self.snapshots.append((n, self.front))
        if self.tol <= 0 or n < self.min_evals or len(self.snapshots) <= self.min_generations or not self.front.size:
            return False
        start = n - max(n // 4, 1)
        old = [snap for snap in self.snapshots if snap[0] <= start]
        if not old or len(self.snapshots) - len(old) < self.min_generations:
            return False
        self.snapshots = self.snapshots[len(old) - 1:]
        ideal, ref = reference_box(self.front)
        now = normalized_hypervolume(self.front, ideal, ref)
        then = normalized_hypervolume(old[-1][1], ideal, ref) if old[-1][1].size else 0.0
        return now > 0 and (now - then) < self.tol * now


class SpaceProblem(Problem):
    """pymoo view of a Space: genes with more than one value are the decision variables."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.active = np.array([i for i, g in enumerate(space.genes) if g.size > 1], dtype=np.int64)
        sizes = space.gene_sizes[self.active]
        self.directions = [o.direction for o in space.objectives]
        self.archive: _Archive | None = None
        n = max(len(self.active), 1)
        super().__init__(n_var=n, n_obj=len(space.objectives), n_ieq_constr=1 + len(space.constraints),
                         xl=np.zeros(n), xu=np.maximum(sizes - 1, 1) if len(sizes) else np.ones(1), vtype=int,
                         elementwise=False)

    def config_ids(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        full = np.zeros((x.shape[0], len(self.space.genes)), dtype=np.int64)
        if len(self.active):
            full[:, self.active] = np.rint(x[:, :len(self.active)]).astype(np.int64)
        # an undeployable layout (structure, GPU budget) is evaluated as its nearest deployable one
        return self.space.repair(self.space.index(full))

    def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        assert self.archive is not None, "SpaceProblem needs an archive"
        out["F"], out["G"] = self.archive.evaluate(self.config_ids(x), self.directions)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["archive"] = None  # rebuilt from the store on resume
        return state


class _ConfigDuplicates(DuplicateElimination):
    """Offspring are duplicates when they repeat a configuration of the batch, of the other
    population given, or of anything this run already evaluated."""

    def __init__(self, problem: SpaceProblem) -> None:
        super().__init__()
        self.problem = problem

    def _do(self, pop, other, is_duplicate):
        ids = self.problem.config_ids(pop.get("X"))
        if other is None:
            _, first = np.unique(ids, return_index=True)
            dup = np.ones(ids.size, dtype=bool)
            dup[first] = False
            archive = self.problem.archive
            if archive is not None:
                dup |= np.array([i in archive.pos for i in ids.tolist()], dtype=bool)
        else:
            dup = np.isin(ids, self.problem.config_ids(other.get("X")))
        is_duplicate |= dup
        return is_duplicate


def run_nsga2(space: Space, store: RunStore, *, budget: int, seed: int, pop_size: int, tol: float = 1e-5,
              progress: ProgressArg = False) -> dict[str, Any]:
    """Run (or resume) NSGA-II until `budget` distinct configurations are evaluated, or
    earlier once the front has converged (see `_Convergence`; tol=0 uses the whole budget)."""
    state = store.load_checkpoint() if store.resumed else None
    if not isinstance(state, dict) or "convergence" not in state:
        state = None                           # none, or of an older dse: restart (the same result)
    if state is not None:
        algorithm = state["algorithm"]
        problem = algorithm.problem
        archive = _Archive(space, store, problem.n_obj, problem.n_ieq_constr)
        if archive.reload(state["n_parts"], problem.directions):
            archive.requests = state["requests"]
            conv, idle = state["convergence"], state["idle"]
        else:
            state = None
    if state is None:
        store.remove_parts(store.parts())
        problem = SpaceProblem(space)
        archive = _Archive(space, store, problem.n_obj, problem.n_ieq_constr)
        algorithm = NSGA2(pop_size=pop_size, sampling=IntegerRandomSampling(),
                          crossover=SBX(prob=0.9, eta=3, vtype=float, repair=RoundingRepair()),
                          mutation=PM(eta=3, vtype=float, repair=RoundingRepair()),
                          eliminate_duplicates=_ConfigDuplicates(problem))
        algorithm.setup(problem, termination=NoTermination(), seed=seed, verbose=False)
        conv, idle = _Convergence(tol, min_evals=10 * pop_size), 0
    problem.archive = archive
    converged = False
    bar = Progress(budget, "nsga2", progress, start=archive.n_distinct)
    t0 = time.perf_counter()
    last_ckpt = t0

    def checkpoint() -> None:
        archive.flush()
        store.save_checkpoint({"algorithm": algorithm, "n_parts": archive.n_parts, "requests": archive.requests,
                               "convergence": conv, "idle": idle})

    try:
        while archive.n_distinct < budget and idle < MAX_IDLE_GENERATIONS:
            pop = algorithm.ask()
            if pop is None or len(pop) == 0:
                idle += 1
                continue
            ids = problem.config_ids(pop.get("X"))
            _, first = np.unique(ids, return_index=True)
            new = np.zeros(ids.size, dtype=bool)
            new[first] = [i not in archive.pos for i in ids[first].tolist()]
            remaining = budget - archive.n_distinct
            if new.sum() > remaining:  # stop exactly at the budget
                pop = pop[:int(np.searchsorted(np.cumsum(new), remaining) + 1)]
            idle = 0 if new.any() else idle + 1
            before = archive.n_distinct
            algorithm.evaluator.eval(problem, pop)
            algorithm.tell(infills=pop)
            if conv.update(archive.F[before:archive.n_distinct], archive.G[before:archive.n_distinct],
                           archive.n_distinct):
                converged = True
                break
            if archive.buffered >= FLUSH_ROWS or time.perf_counter() - last_ckpt > CHECKPOINT_SECONDS:
                checkpoint()
                last_ckpt = time.perf_counter()
            bar.update(archive.n_distinct)
        checkpoint()
    finally:
        bar.close()
    return {"n_evaluated": archive.n_distinct, "eval_seconds": time.perf_counter() - t0,
            "settings": {"pop_size": pop_size, "requests": archive.requests, "tol": tol,
                         "stopped": "converged" if converged else ("budget" if archive.n_distinct >= budget
                                                                   else "no new configurations"),
                         "crossover": "SBX(prob=0.9, eta=3) rounded", "mutation": "PM(eta=3) rounded",
                         "duplicates": "re-drawn against every configuration evaluated in the run",
                         "objective_scale": "asinh(v/1e-6)"}}
