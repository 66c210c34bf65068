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

A worker killed mid-batch leaves RUNNING trials. On resume they are failed and re-asked
(a WAITING copy with the same parameters, optuna's RetryHeartbeatStaleTrialCallback): in
the run directory's own journal every RUNNING trial is stale (the run directory's lock
says no other writer exists); in a shared journal, one started more than
`STALE_SECONDS` ago; in an RDB storage, one whose optuna heartbeat stopped
(`heartbeat_interval` / `grace_period`). Several workers may create the same RDB storage
and study at once (the schema creation race is retried).
"""
from __future__ import annotations

import gc
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from dse.errors import DSEError
from dse.io import jsonable
from dse.search.evaluation import evaluate_batch
from dse.search.optuna_nsga2 import BatchedNSGAIISampler
from dse.search.progress import Progress, ProgressArg
from dse.search.space import Space
from dse.search.store import RunStore

__all__ = ["run_optuna", "open_storage", "gene_labels", "study_name", "SAMPLER_FACTORIES", "STALE_SECONDS",
           "HEARTBEAT_SECONDS"]

HEARTBEAT_SECONDS = 60     # RDB storages: a worker's heartbeat period, ...
STALE_SECONDS = 600        # ... and how long a RUNNING trial may go without one (shared journals: since its start)
RDB_ATTEMPTS = 5


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


def _journal(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def _rdb(url: str) -> Any:
    """An RDB storage with heartbeats; several workers creating the schema at once race
    (sqlite: UNIQUE constraint on alembic_version), so creation is retried."""
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(RDB_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # heartbeat options are "experimental"
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=STALE_SECONDS,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
        except Exception as exc:  # noqa: BLE001 - sqlalchemy/driver errors vary
            if attempt == RDB_ATTEMPTS - 1 or "://" not in url or "No module named" in str(exc):
                raise DSEError(f"--storage: cannot open {url!r}: {str(exc).splitlines()[0]}") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _storage_kind(storage: str | None) -> str:
    if storage in (None, ""):
        return "run"
    if storage in ("memory", ":memory:"):
        return "memory"
    if storage.startswith("journal:") or storage.endswith((".journal", ".log")):
        return "journal"
    if "://" in storage:
        return "rdb"
    raise DSEError(f"--storage: expected an Optuna RDB URL (sqlite:///..., postgresql://...), "
                   f"journal:PATH, a *.journal file or 'memory', got {storage!r}")


def _own_journal(run_dir: Path) -> tuple[Any, str]:
    """RUN/study.journal. Its lock file, if a killed worker left one, is stale (we hold the
    run directory's lock), so it goes instead of stalling the resume for optuna's 30 s grace."""
    path = run_dir / "study.journal"
    Path(f"{path}.lock").unlink(missing_ok=True)
    return _journal(path), f"journal:{path}"


# storage kind -> opener(storage argument, run directory) -> (storage, description)
STORAGES: dict[str, Callable[[Any, Path], tuple[Any, str]]] = {
    "run": lambda s, run_dir: _own_journal(run_dir),
    "memory": lambda s, run_dir: (optuna.storages.InMemoryStorage(), "memory"),
    "journal": lambda s, run_dir: (_journal(Path(s[len("journal:"):] if s.startswith("journal:") else s)),
                                   f"journal:{s[len('journal:'):] if s.startswith('journal:') else s}"),
    "rdb": lambda s, run_dir: (_rdb(s), s),
}


def open_storage(storage: str | None, run_dir: Path) -> tuple[Any, str]:
    """(Optuna storage, description). None -> RUN/study.journal; 'memory' -> in memory."""
    return STORAGES[_storage_kind(storage)](storage, run_dir)


def _nsga2_sampler(seed: int, pop_size: int, constraints_func: Callable) -> optuna.samplers.BaseSampler:
    return BatchedNSGAIISampler(population_size=pop_size, seed=seed, constraints_func=constraints_func)


def _tpe_sampler(seed: int, pop_size: int, constraints_func: Callable) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(pop_size, 50),
                                      constraints_func=constraints_func, constant_liar=False)


SAMPLER_FACTORIES: dict[str, Callable[[int, int, Callable], optuna.samplers.BaseSampler]] = {
    "nsga2": _nsga2_sampler, "tpe": _tpe_sampler}


def _sampler(name: str, *, seed: int, pop_size: int,
             constraints: dict[int, list[float]]) -> optuna.samplers.BaseSampler:
    def constraints_func(trial: optuna.trial.FrozenTrial) -> list[float]:
        return constraints.get(trial.number, [0.0])

    if name not in SAMPLER_FACTORIES:
        raise DSEError(f"--sampler: expected one of {', '.join(SAMPLER_FACTORIES)}, got {name!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SAMPLER_FACTORIES[name](seed, pop_size, constraints_func)


def fail_stale_trials(study: optuna.Study, *, own_journal: bool) -> int:
    """Fail the RUNNING trials a killed worker left and re-ask them (WAITING copies);
    returns how many. See the module doc for when a trial counts as stale."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    storage = study._storage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if is_heartbeat_enabled(storage):
            before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            optuna.storages.fail_stale_trials(study)
            return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before
        cutoff = time.time() - STALE_SECONDS
        retry, n = RetryHeartbeatStaleTrialCallback(), 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not own_journal and t.datetime_start is not None and t.datetime_start.timestamp() > cutoff:
                continue
            try:
                if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue                        # another worker got there first
            retry(study, storage.get_trial(t._trial_id))
            n += 1
    return n


def study_name(space: Space) -> str:
    return f"{space.name}-{space.fingerprint}"


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _distributions(space: Space, labels: list[str], active: list[int]):
    """Per active gene, its Optuna distribution and how a sampled value maps back to the gene
    index: categorical axes (devices, formats, modes) are sampled as their values, so a study
    reads as the scenario in optuna-dashboard; numeric axes as the index of their sorted values."""
    dists, lookup = {}, {}
    for i in active:
        values = list(jsonable(list(space.genes[i].values)))
        if any(isinstance(v, str) for v in values):
            dists[labels[i]] = CategoricalDistribution(values)
            lookup[i] = {v: k for k, v in enumerate(values)}.__getitem__
        else:
            dists[labels[i]] = IntDistribution(0, space.genes[i].size - 1)
            lookup[i] = int
    return dists, lookup


def run_optuna(space: Space, store: RunStore, *, budget: int, seed: int, sampler: str, pop_size: int,
               storage: str | None, progress: ProgressArg = False) -> dict[str, Any]:
    """Add trials until the study holds `budget` complete ones, then write their
    configurations (once each) as parts."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    backend, desc = open_storage(storage, store.path)
    labels = gene_labels(space)
    active = [i for i, g in enumerate(space.genes) if g.size > 1]
    dists, lookup = _distributions(space, labels, active)
    constraints: dict[int, list[float]] = {}
    name = study_name(space)
    try:
        study = optuna.create_study(study_name=name, storage=backend, load_if_exists=True,
                                    directions=["maximize" if o.direction == "max" else "minimize"
                                                for o in space.objectives],
                                    sampler=_sampler(sampler, seed=seed, pop_size=pop_size, constraints=constraints))
    except (DSEError, optuna.exceptions.DuplicatedStudyError):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged journal or database, whatever the backend says
        raise DSEError(f"{desc}: cannot read the Optuna study ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                       "repair or delete it (or rerun with --force for the run directory's own journal)") from None
    retried = fail_stale_trials(study, own_journal=storage in (None, ""))
    heartbeat = backend.record_heartbeat if isinstance(backend, optuna.storages.RDBStorage) else None

    def done() -> int:
        """Complete trials (the batched sampler counts new ones only; others scan the study)."""
        counter = getattr(study.sampler, "n_complete", None)
        return counter(study) if counter else len(_complete(study))

    if not study.user_attrs.get("genes"):
        study.set_user_attr("genes", {labels[i]: jsonable(list(space.genes[i].values)) for i in active})
        study.set_user_attr("objectives", space.objective_names())
        study.set_user_attr("scenario", jsonable(space.resolved))     # what optuna-dashboard shows as the question
        study.set_metric_names(space.objective_names())
    names = space.objective_names()
    n_done = done()
    bar = Progress(budget, f"optuna-{sampler}", progress, start=n_done)
    t0 = time.perf_counter()
    try:
        while n_done < budget:
            gc.freeze()        # a study holds ~1e6 trial objects; spare them the cyclic collector
            batch = min(pop_size, budget - n_done)
            with warnings.catch_warnings():   # heartbeats are ours to record (optuna assumes Study.optimize)
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trials = [study.ask(dists) for _ in range(batch)]
            if heartbeat is not None:
                for t in trials:
                    heartbeat(t._trial_id)
            told = 0
            try:
                X = np.zeros((batch, len(space.genes)), dtype=np.int64)
                for r, t in enumerate(trials):
                    params = t.params          # a copy per access: take it once
                    for i in active:
                        X[r, i] = lookup[i](params[labels[i]])
                df, G = evaluate_batch(space, space.repair(space.index(X)))   # deployable layouts only
                values = np.nan_to_num(df[names].to_numpy(dtype=float), nan=1e300, posinf=1e300, neginf=-1e300)
                for r, t in enumerate(trials):
                    constraints[t.number] = G[r].tolist()
                    study.tell(t, values[r].tolist(), skip_if_finished=True)
                    told += 1
            finally:
                for t in trials[told:]:
                    study.tell(t, state=TrialState.FAIL, skip_if_finished=True)
            n_done = done()    # also counts trials other processes told into a shared storage
            bar.update(n_done)
    finally:
        gc.unfreeze()
        bar.close()
    eval_seconds = time.perf_counter() - t0
    n_configs = _write_trials(space, store, study, labels, active, lookup)
    return {"n_evaluated": n_done, "eval_seconds": eval_seconds,
            "settings": {"sampler": sampler, "pop_size": pop_size, "storage": desc, "study_name": name,
                         "distinct_configurations": n_configs, "stale_trials_retried": retried}}


def _write_trials(space: Space, store: RunStore, study: optuna.Study, labels: list[str], active: list[int],
                  lookup: dict, chunk: int = 50_000) -> int:
    """Re-evaluate the configurations of the study's complete trials into parts, once each;
    eval_index = position of the first trial that asked for it."""
    store.remove_parts(store.parts())
    trials = sorted(_complete(study), key=lambda t: t.number)
    X = np.zeros((len(trials), len(space.genes)), dtype=np.int64)
    for r, t in enumerate(trials):
        for i in active:
            X[r, i] = lookup[i](t.params[labels[i]])
    idx = space.repair(space.index(X)) if len(trials) else np.empty(0, dtype=np.int64)
    _, first = np.unique(idx, return_index=True)
    first.sort()                       # distinct configurations in the order first tried
    for s in range(0, first.size, chunk):
        pos = first[s:s + chunk]
        df, _ = evaluate_batch(space, idx[pos])
        df.insert(1, "eval_index", pos.astype(np.int64))
        store.write_part(f"optuna-{s // chunk:09d}", df)
    return int(first.size)
