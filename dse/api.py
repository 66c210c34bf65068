"""The Python face: the functions a notebook or a script calls, re-exported from the layers
that own them.

`evaluate(model=..., device=..., tp=[1, 2, 4], ...)` takes scalars or equal-length
sequences (paired element-wise, not crossed), broadcasts them and returns one DataFrame
row per configuration with the metric columns of dse.schema; `grid(**axes)` builds the
product of axes instead. Infeasible rows stay, flagged
with a reason. `sweep` searches a scenario file and writes its results and report.
"""
from __future__ import annotations

from typing import Any

from dse.deploy.evaluate import evaluate
from dse.deploy.explain import check_config, explain
from dse.deploy.grid import grid
from dse.deploy.mix import evaluate_mix
from dse.schema import COLUMNS, INT_COLUMNS, METRICS, MODES, ROLE_INT_COLUMNS, STRING_COLUMNS

__all__ = ["evaluate", "evaluate_mix", "explain", "check_config", "grid", "sweep", "load_scenario", "load_space",
           "COLUMNS", "METRICS", "MODES", "STRING_COLUMNS", "INT_COLUMNS", "ROLE_INT_COLUMNS"]


def sweep(space: Any, **options: Any):
    """Search a scenario (a path to a YAML file or a loaded Space) and write its results
    directory with the interactive report (written once, before the run is committed);
    see dse.search.run.sweep for the options."""
    from dse.report.html import write_report
    from dse.search.run import sweep as _sweep

    options.setdefault("report", write_report)
    return _sweep(space, **options)


def load_scenario(path: Any):
    """Read and validate a scenario YAML file into a Space."""
    from dse.search.space import load_space as _load

    return _load(path)


load_space = load_scenario
