"""Optuna's NSGA-II sampler with its per-trial bookkeeping made O(1).

Stock `NSGAIISampler` (Optuna 4-5) rescans every complete trial on every `ask` to find the
current generation, and again to find the cached parent population, so a study's cost per
trial grows with its size: ~3 ms at 4k trials, ~18 ms at 16k on this machine, which puts
the 1-10 % budgets of a 10-million-configuration space out of reach. This subclass keeps
the same algorithm and the same storage records (generation numbers and parent ids are
written exactly as the stock sampler writes them, so a study can be resumed by either)
and only caches what the stock sampler recomputes:

- the (highest generation, its count of complete trials) pair, updated in `after_trial`
  and rebuilt from the storage by `refresh()` -- which the search loop calls before each
  batch, so trials told by other processes sharing the storage are counted;
- each generation's parent population, immutable once chosen (in trial order, as the
  stock sampler's own cache returns it);
- the search space, fixed once the first trial completed (every trial of a dse study
  suggests the same parameters with the same distributions).

With the same seed it asks exactly the trials the stock sampler asks (tested).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import NSGAIISampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState


class BatchedNSGAIISampler(NSGAIISampler):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._front: tuple[int, int] | None = None      # (max generation, complete trials in it)
        self._parents: dict[int, list[FrozenTrial]] = {}
        self._space: dict[str, BaseDistribution] | None = None

    def refresh(self) -> None:
        """Forget the generation count; the next ask rebuilds it from the storage."""
        self._front = None

    def _scan(self, study: Study) -> tuple[int, int]:
        key = self._get_generation_key()
        top, count = 0, 0
        for t in study._get_trials(deepcopy=False, states=[TrialState.COMPLETE], use_cache=True):
            g = t.system_attrs.get(key, -1)
            if g > top:
                top, count = g, 1
            elif g == top:
                count += 1
        return top, count

    def get_trial_generation(self, study: Study, trial: FrozenTrial) -> int:
        key = self._get_generation_key()
        generation = trial.system_attrs.get(key, None)
        if generation is not None:
            return generation
        if self._front is None:
            self._front = self._scan(study)
        top, count = self._front
        generation = top if count < self._population_size else top + 1
        study._storage.set_trial_system_attr(trial._trial_id, key, generation)
        return generation

    def get_parent_population(self, study: Study, generation: int) -> list[FrozenTrial]:
        if generation in self._parents:
            return self._parents[generation]
        parents = super().get_parent_population(study, generation)
        # the stock sampler returns the selection's order the first time and trial order
        # (its cached path) afterwards; keep both so the trajectory stays the same
        self._parents[generation] = sorted(parents, key=lambda t: t.number)
        return parents

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._space:
            return self._space
        space = super().infer_relative_search_space(study, trial)
        if space:
            self._space = space
        return space

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        super().after_trial(study, trial, state, values)
        if state != TrialState.COMPLETE or self._front is None:
            return
        g = trial.system_attrs.get(self._get_generation_key(), None)
        if g is None:
            self._front = None
            return
        top, count = self._front
        if g > top:
            self._front = (g, 1)
        elif g == top:
            self._front = (top, count + 1)
