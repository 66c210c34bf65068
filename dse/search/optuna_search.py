"""Optuna multi-objective search (NSGA-II or TPE sampler) in ask/tell batches.

Each gene of the space is an integer parameter (its value index; the study's user
attributes list the values), a batch of trials is asked, evaluated in one model call and
told. The study lives in a storage so that it can be resumed and shared: by default a
journal file in the run directory (SQLite costs ~100x more per trial here); any Optuna
RDB URL (`postgresql://...`, `sqlite:///...`) lets several machines feed one study, each
running the same `dse sweep` until the study holds `budget` complete trials (a trial that
repeats a configuration counts: it is an evaluation the sampler asked for). The study
name is the scenario name plus its fingerprint, so the same scenario resumes and a
changed one never mixes with it.

Only parameters and objective values are stored; at the end the complete trials are
re-evaluated (the model is deterministic and vectorized) to write every metric.
"""
from __future__ import annotations

import gc
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from dse.errors import DSEError
from dse.search.evaluation import evaluate_batch
from dse.search.optuna_nsga2 import BatchedNSGAIISampler
from dse.search.progress import Progress, ProgressArg
from dse.search.space import Space
from dse.search.store import RunStore



def gene_labels(space: Space) -> list[str]:
    """Parameter names: `mode`, a common axis name, or `MODE.axis` for a mode's own axis."""
    out = []
    for g in space.genes:
        key = g.key
        if key == "modes":
            out.append("mode")
        elif key.startswith("axes."):
            out.append(key[len("axes."):])
        elif key.startswith("modes."):
            out.append(key[len("modes."):])
        else:
            out.append(g.name)
    return out


def open_storage(storage: str | None, run_dir: Path) -> tuple[Any, str]:
    """(Optuna storage, description). None -> RUN/study.journal; 'memory' -> in memory."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if storage in (None, ""):
        path = run_dir / "study.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), f"journal:{path}"
    if storage in ("memory", ":memory:"):
        return optuna.storages.InMemoryStorage(), "memory"
    if storage.startswith("journal:") or storage.endswith((".journal", ".log")):
        path = Path(storage[len("journal:"):] if storage.startswith("journal:") else storage)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), f"journal:{path}"
    if "://" in storage:
        try:
            return optuna.storages.RDBStorage(storage), storage
        except Exception as exc:  # noqa: BLE001 - sqlalchemy/driver errors vary
            raise DSEError(f"--storage: cannot open {storage!r}: {str(exc).splitlines()[0]}") from None
    raise DSEError(f"--storage: expected an Optuna RDB URL (sqlite:///..., postgresql://...), "
                   f"journal:PATH, a *.journal file or 'memory', got {storage!r}")


def _sampler(name: str, *, seed: int, pop_size: int,
             constraints: dict[int, list[float]]) -> optuna.samplers.BaseSampler:
    def constraints_func(trial: optuna.trial.FrozenTrial) -> list[float]:
        return constraints.get(trial.number, [0.0])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "nsga2":
            return BatchedNSGAIISampler(population_size=pop_size, seed=seed, constraints_func=constraints_func)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(pop_size, 50),
                                              constraints_func=constraints_func, constant_liar=False)
    raise DSEError(f"--sampler: expected nsga2 or tpe, got {name!r}")


def study_name(space: Space) -> str:
    return f"{space.name}-{space.fingerprint}"


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def run_optuna(space: Space, store: RunStore, *, budget: int, seed: int, sampler: str, pop_size: int,
               storage: str | None, progress: ProgressArg = False) -> dict[str, Any]:
    """Add trials until the study holds `budget` complete ones, then write their
    configurations (once each) as parts."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend, desc = open_storage(storage, store.path)
    labels = gene_labels(space)
    active = [i for i, g in enumerate(space.genes) if g.size > 1]
    dists = {labels[i]: IntDistribution(0, space.genes[i].size - 1) for i in active}
    constraints: dict[int, list[float]] = {}
    name = study_name(space)
    study = optuna.create_study(study_name=name, storage=backend, load_if_exists=True,
                                directions=["maximize" if o.direction == "max" else "minimize"
                                            for o in space.objectives],
                                sampler=_sampler(sampler, seed=seed, pop_size=pop_size, constraints=constraints))
    def done() -> int:
        """Complete trials (the batched sampler counts new ones only; others scan the study)."""
        counter = getattr(study.sampler, "n_complete", None)
        return counter(study) if counter else len(_complete(study))

    if not study.user_attrs.get("genes"):
        study.set_user_attr("genes", {labels[i]: list(space.genes[i].values) for i in active})
        study.set_user_attr("objectives", space.objective_names())
    names = space.objective_names()
    n_done = done()
    bar = Progress(budget, f"optuna-{sampler}", progress, start=n_done)
    t0 = time.perf_counter()
    try:
        while n_done < budget:
            gc.freeze()        # a study holds ~1e6 trial objects; spare them the cyclic collector
            batch = min(pop_size, budget - n_done)
            trials = [study.ask(dists) for _ in range(batch)]
            told = 0
            try:
                X = np.zeros((batch, len(space.genes)), dtype=np.int64)
                for r, t in enumerate(trials):
                    params = t.params          # a copy per access: take it once
                    for i in active:
                        X[r, i] = params[labels[i]]
                df, G = evaluate_batch(space, space.index(X))
                values = np.nan_to_num(df[names].to_numpy(dtype=float), nan=1e300, posinf=1e300, neginf=-1e300)
                for r, t in enumerate(trials):
                    constraints[t.number] = G[r].tolist()
                    study.tell(t, values[r].tolist())
                    told += 1
            finally:
                for t in trials[told:]:
                    study.tell(t, state=TrialState.FAIL)
            n_done = done()    # also counts trials other processes told into a shared storage
            bar.update(n_done)
    finally:
        gc.unfreeze()
        bar.close()
    eval_seconds = time.perf_counter() - t0
    n_configs = _write_trials(space, store, study, labels, active)
    return {"n_evaluated": n_done, "eval_seconds": eval_seconds,
            "settings": {"sampler": sampler, "pop_size": pop_size, "storage": desc, "study_name": name,
                         "distinct_configurations": n_configs}}


def _write_trials(space: Space, store: RunStore, study: optuna.Study, labels: list[str], active: list[int],
                  chunk: int = 50_000) -> int:
    """Re-evaluate the configurations of the study's complete trials into parts, once each;
    eval_index = position of the first trial that asked for it."""
    store.remove_parts(store.parts())
    trials = sorted(_complete(study), key=lambda t: t.number)
    X = np.zeros((len(trials), len(space.genes)), dtype=np.int64)
    for r, t in enumerate(trials):
        for i in active:
            X[r, i] = t.params.get(labels[i], 0)
    idx = space.index(X) if len(trials) else np.empty(0, dtype=np.int64)
    _, first = np.unique(idx, return_index=True)
    first.sort()                       # distinct configurations in the order first tried
    for s in range(0, first.size, chunk):
        pos = first[s:s + chunk]
        df, _ = evaluate_batch(space, idx[pos])
        df.insert(1, "eval_index", pos.astype(np.int64))
        store.write_part(f"optuna-{s // chunk:09d}", df)
    return int(first.size)
