"""The O(1)-bookkeeping NSGA-II sampler must be the stock one, only faster."""
import warnings

import numpy as np
import optuna
import pytest
from optuna.distributions import IntDistribution

from dse.search.optuna_nsga2 import BatchedNSGAIISampler

warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)
# dse passes constraints through constraints_func (deprecated in Optuna 5, still supported)
pytestmark = pytest.mark.filterwarnings("ignore:`constraints_func` has been deprecated:FutureWarning")


def _asked(sampler_cls, *, generations=6, pop=30, storage=None):
    dists = {f"p{i}": IntDistribution(0, 5) for i in range(6)}
    sampler = sampler_cls(population_size=pop, seed=3,
                          constraints_func=lambda t: [float(t.number % 4 == 0)])
    study = optuna.create_study(directions=["minimize"] * 3, sampler=sampler, storage=storage)
    asked = []
    for _ in range(generations):
        if hasattr(sampler, "n_complete"):
            assert sampler.n_complete(study) == len(asked)
        trials = [study.ask(dists) for _ in range(pop)]
        for t in trials:
            x = np.array([t.params[k] for k in dists])
            asked.append(tuple(x.tolist()))
            study.tell(t, [float((x - 1) ** 2 @ np.arange(6)), float(x.sum()), float(-x[0] * x[3])])
    key = sampler._get_generation_key()
    gens = [t.system_attrs.get(key) for t in study.get_trials()]
    return asked, gens


def test_asks_exactly_the_trials_of_the_stock_sampler():
    stock, stock_gens = _asked(optuna.samplers.NSGAIISampler)
    fast, fast_gens = _asked(BatchedNSGAIISampler)
    assert fast == stock
    assert fast_gens == stock_gens            # same generation records in the storage
    assert None not in fast_gens
    assert max(g for g in fast_gens if g is not None) == 5
    assert len(set(stock)) > 60               # the study explored, so equality means something


def test_generation_count_survives_trials_told_elsewhere(tmp_path):
    """Two samplers feeding one storage: after refresh each counts the other's trials."""
    storage = optuna.storages.InMemoryStorage()
    dists = {"x": IntDistribution(0, 9)}
    a = BatchedNSGAIISampler(population_size=4, seed=0)
    b = BatchedNSGAIISampler(population_size=4, seed=1)
    sa = optuna.create_study(study_name="s", storage=storage, sampler=a, directions=["minimize"] * 2)
    sb = optuna.load_study(study_name="s", storage=storage, sampler=b)
    key = a._get_generation_key()
    t = sa.ask(dists)                      # a now counts one complete trial in generation 0
    sa.tell(t, [t.params["x"], -t.params["x"]])
    for _ in range(3):
        t = sb.ask(dists)
        sb.tell(t, [t.params["x"], -t.params["x"]])
    t = sa.ask(dists)                      # without a refresh a still counts 1 of 4
    assert storage.get_trial(t._trial_id).system_attrs[key] == 0
    sa.tell(t, [0, 0])
    a.refresh()
    t = sa.ask(dists)                      # 5 complete in generation 0 >= 4: next generation
    assert storage.get_trial(t._trial_id).system_attrs[key] == 1
    sa.tell(t, [0, 0])


def test_study_reads_in_optuna_dashboard(tmp_path):
    """Objective names set, categorical parameters stored as their values, the scenario in the
    study's user attributes: what optuna-dashboard shows."""
    import optuna
    import yaml

    import dse
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "search_spaces" / "quickstart.yaml").read_text())
    res = dse.sweep(root / "search_spaces" / "quickstart.yaml", strategy="optuna", budget=60, out=tmp_path / "o")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(next(Path(res.run_dir).glob("*.journal")))))
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert study.metric_names == [o if isinstance(o, str) else next(iter(o)) for o in data["objectives"]]
    t = study.best_trials[0]
    assert t.params["device"] in data["axes"]["device"] and t.params["weight_dtype"] in data["axes"]["weight_dtype"]
    assert study.user_attrs["scenario"]["name"] == "quickstart"
