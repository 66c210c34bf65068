"""Scenarios: a YAML file -> a validated `Scenario` -> a frozen `Space` (the integer encoding).

The file is read by the catalog's safe reader and validated by the pydantic models of
`dse.search.scenario`; what needs the catalog or the engine is checked here, each error
one line naming the file and the key: the model resolves, a column is fixed in one place
only, every mode has its required columns, the space fits the 64-bit index, and every
axis value evaluates (a dry run, so that a bad value fails at load time with its key).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dse import schema
from dse.catalog.validation import validate
from dse.catalog.yamlfile import load_yaml
from dse.deploy.evaluate import evaluate
from dse.errors import DSEError
from dse.schema import direction
from dse.search.deployable import enumerate_mode
from dse.search.encoding import MAX_SIZE, Axis, Constraint, Mode, Objective, Space, column_kind
from dse.search.scenario import DEFAULT_OBJECTIVES, SAMPLERS, STRATEGIES, Scenario

__all__ = ["Space", "Axis", "Mode", "Objective", "Constraint", "load_space", "space_from_dict",
           "DEFAULT_OBJECTIVES", "STRATEGIES", "SAMPLERS", "NON_NUMERIC_METRICS"]

NON_NUMERIC_METRICS = ("feasible", "infeasible_reason", "bottleneck")


def load_space(path: str | Path) -> Space:
    """Read and validate a scenario file; every error is one line naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise DSEError(f"{path}: no such scenario file")
    return space_from_dict(load_yaml(path), where=str(path), default_name=path.stem)


def space_from_dict(data: Any, *, where: str = "<scenario>", default_name: str = "scenario") -> Space:
    """Validate an already-parsed scenario mapping (see `load_space`)."""
    def fail(key: str, msg: str) -> DSEError:
        return DSEError(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")

    scn: Scenario = validate(Scenario, data, where)
    model_id = _model_id(scn.model, where, fail)
    objectives = tuple(Objective(o.name, o.direction or direction(o.name)) for o in scn.objectives)
    fixed, fixed_keys, constraints = _fixed_and_constraints(scn, data, model_id)
    _trace_workload(fixed, fixed_keys, where, fail)
    placement: dict = {}
    if scn.placement is not None:
        from dse.solvers import placed
        placement = placed.settings_from(data["placement"], fail)

    common = _axes(scn.axes, data.get("axes"), "axes", fixed, fail)
    per_mode: dict[str, dict[str, Axis]] = {}
    raw_modes = data.get("modes") if isinstance(data, dict) else None
    names = list(raw_modes) if raw_modes else ["agg"]
    for m in names:
        own = getattr(scn.modes, m, None) if scn.modes is not None else None
        merged = dict(common)
        merged.update(_axes(own, raw_modes.get(m) if isinstance(raw_modes, dict) else None, f"modes.{m}", fixed,
                            fail))
        for col, default in schema.COLUMNS.items():
            if default is None and col not in fixed and col not in merged:
                raise fail(f"axes.{col}", f"required: list the {col} values to search (mode {m} has none)")
        per_mode[m] = merged
    if placement and set(per_mode) != {"afd"}:
        raise fail("placement", "scores attention/FFN pools (mode afd); remove the other modes "
                                f"({', '.join(m for m in per_mode if m != 'afd')}) or the placement section")
    eplb_experts = _eplb(scn, model_id, fixed, per_mode, fail)
    genes, modes = _encoding(common, per_mode)
    size = sum(m.size for m in modes)
    if size > MAX_SIZE:
        raise fail("axes", f"the space has {size:,} configurations, more than the 64-bit configuration index "
                           f"holds ({MAX_SIZE:,}); narrow an axis or split the scenario")

    facility = {k: float(v) for k, v in _given(scn.constraints and scn.constraints.facility,
                                                (data.get("constraints") or {}).get("facility")).items()}
    reference = (tuple(float(scn.reference_point[o.name]) for o in objectives)
                 if scn.reference_point is not None else None)
    search = _given(scn.search, data.get("search"))
    name = scn.name if scn.name is not None else default_name
    resolved = {
        "name": name,
        "description": scn.description,
        "path": where,
        "model": model_id,
        "fixed": dict(fixed),
        "objectives": [{"name": o.name, "direction": o.direction} for o in objectives],
        "constraints": [{"metric": c.metric, "bound": c.bound, "limit": c.limit, "key": c.key} for c in constraints],
        "facility": {"overrides": facility},
        "axes": {a: list(ax.values) for a, ax in common.items()},
        "modes": {m.name: {a.name: list(a.values) for a in m.axes if a.name not in common or a != common[a.name]}
                  for m in modes},
        "reference_point": dict(zip([o.name for o in objectives], reference)) if reference else None,
        "search": dict(search),
        "placement": placement or None,
        "size": size,
    }
    if eplb_experts:
        resolved["eplb"] = True
    space = Space(name=name, path=where, model=model_id, objectives=objectives,
                  constraints=tuple(constraints), fixed=tuple(fixed.items()), modes=tuple(modes),
                  genes=tuple(genes), facility=tuple(facility.items()),
                  reference_point=reference, search=tuple(search.items()), placement=tuple(placement.items()),
                  resolved=resolved, eplb_experts=eplb_experts)
    sample = _dry_run(space, fixed_keys, fail)
    space = dataclasses.replace(space, enum=_enumerate(space, scn.constraints))
    _check_deployable(space, scn.constraints, sample, fail)
    resolved["deployable_size"] = space.deployable_size
    for i, o in enumerate(objectives):
        if o.name in sample and not _is_number(sample[o.name]):
            raise fail(f"objectives[{i}]", f"metric {o.name!r} is not a number ({sample[o.name].dtype})")
    for c in constraints:
        if c.metric in sample and not _is_number(sample[c.metric]):
            raise fail(c.key, f"metric {c.metric!r} is not a number and cannot be limited")
    return space


BUDGET_SAMPLE = 4096        # deployable layouts evaluated to say which GPU counts a space has


def _check_deployable(space: Space, cons, sample: pd.DataFrame, fail) -> None:
    """A space none of whose configurations can be deployed fails at load time, saying why
    (before, the sweep ran, wrote an empty run and failed on its report): the GPU budget
    when the space has layouts without it (with the GPU counts they use), else the engine's
    reason for the dry run's evaluated layout, `sample` (every layout breaks a sharding rule)."""
    if space.deployable_size > 0:
        return
    exact = cons.gpus if cons is not None else None
    at_most = cons.max_gpus if cons is not None else None
    if exact is not None or at_most is not None:
        free = dataclasses.replace(space, enum=_enumerate(space, None))
        if free.deployable_size > 0:
            ids = free.positions(0, free.deployable_size)
            ids = ids[np.linspace(0, len(ids) - 1, min(len(ids), BUDGET_SAMPLE)).astype(np.int64)]
            used = evaluate(strict=False, **free.columns(ids))
            gpus = sorted({int(g) for g, code in zip(used["num_gpus"], used["infeasible_code"].astype(str))
                           if code != "structure"})
            key, what = ("constraints.gpus", f"exactly {exact}") if exact is not None else \
                ("constraints.max_gpus", f"at most {at_most}")
            listed = ", ".join(map(str, gpus[:12])) + (", ..." if len(gpus) > 12 else "")
            uses = f"; its layouts use {listed} GPU{'' if gpus == [1] else 's'}" if gpus else ""
            raise fail(key, f"no configuration of the space uses {what} GPUs (replicas included){uses}")
    reason = sample["infeasible_reason"].iloc[0]
    raise fail("axes" if len(space.modes) == 1 else "modes",
               f"no configuration of the space can be deployed: every layout breaks a sharding rule "
               f"(the first: {reason})")


def _given(section: Any, raw: Any) -> dict:
    """A validated section's values in the file's key order; a key set to null counts as not given."""
    if section is None:
        return {}
    return {k: getattr(section, k) for k in raw if getattr(section, k) is not None}


EPLB_COLUMNS = ("redundant_experts", "prefill_redundant_experts", "decode_redundant_experts")


def _eplb(scn: Scenario, model_id: str, fixed: dict, per_mode: dict, fail) -> int:
    """The model's expert count when the scenario sets `eplb: true` (0 otherwise): each row's
    redundant_experts are then derived, so none may be an axis or a workload value too."""
    if not scn.eplb:
        return 0
    from dse.catalog.models import get_model

    model = get_model(model_id)
    if not model.is_moe:
        raise fail("eplb", f"{model.id} is not a MoE model: it has no experts to replicate")
    for col in EPLB_COLUMNS:
        if col in fixed:
            raise fail("eplb", f"sets {col} per configuration; remove workload.{col}")
        for m, axes in per_mode.items():
            if col in axes:
                raise fail("eplb", f"sets {col} per configuration; remove it from {axes[col].key}")
    return max(g.ffn.num_experts for g in model.groups)


def _trace_workload(fixed: dict, fixed_keys: dict, where: str, fail) -> None:
    """workload.trace: its path beside the scenario file, read once (a bad file is one line
    naming it), and isl / osl the trace's means unless the workload gives them."""
    ref = fixed.get("trace")
    if not ref:
        return
    from dse.catalog.traces import read_trace

    path = Path(ref) if Path(ref).is_absolute() or where == "<scenario>" else Path(where).parent / ref
    try:
        tr = read_trace(str(path))
    except DSEError as exc:
        raise fail("workload.trace", str(exc)) from None
    fixed["trace"] = str(path)
    for col, vals in (("isl", tr.input_length), ("osl", tr.output_length)):
        if col not in fixed:
            fixed[col], fixed_keys[col] = max(int(round(float(vals.mean()))), 1), "workload.trace"


def _model_id(ref: str, where: str, fail) -> str:
    """The catalog id of the model, or the path of a config.json (relative to the scenario file)."""
    from dse.catalog.models import get_model

    is_path = ref.endswith(".json") or "/" in ref and Path(ref).exists()
    if where != "<scenario>" and not Path(ref).is_absolute():
        beside = Path(where).parent / ref
        if beside.exists() and (ref.endswith(".json") or beside.is_dir()):
            ref, is_path = str(beside), True
    try:
        model = get_model(ref)
    except DSEError as exc:
        msg = str(exc)
        raise fail("model", msg[len("model: "):] if msg.startswith("model: ") else msg) from None
    return ref if is_path else model.id


def _set_fields(section, raw: Any) -> list[str]:
    """The keys a section was given a value (not null) for, in the file's order."""
    if section is None or not isinstance(raw, dict):
        return []
    return [k for k in raw if k in section.model_fields_set and getattr(section, k) is not None]


def _fixed_and_constraints(scn: Scenario, data: dict, model_id: str):
    """Fixed columns (model, workload, SLO targets, own), their keys, and the constraints."""
    fixed: dict[str, Any] = {"model": model_id}
    fixed_keys: dict[str, str] = {"model": "model"}
    for col in _set_fields(scn.workload, data.get("workload")):
        fixed[col] = getattr(scn.workload, col)
        fixed_keys[col] = f"workload.{col}"
    constraints: list[Constraint] = []
    for metric in _set_fields(scn.slos, data.get("slos")):
        limit = float(getattr(scn.slos, metric))
        key = f"slos.{metric}"
        constraints.append(Constraint(metric, "max", limit, key))
        slo_col = metric[:-3] + "_slo_ms" if metric.endswith("_ms") else ""
        if slo_col in schema.COLUMNS:   # evaluate takes the target too (goodput): pass it on
            fixed[slo_col] = limit
            fixed_keys[slo_col] = key
    slo_cols = [c for c in ("ttft_slo_ms", "tpot_slo_ms") if c in fixed]
    if slo_cols and scn.slo_confidence > 0:
        # the SLOs must hold with this chance (the point checks above stay: 0 = exactly those)
        fixed["slo_confidence"] = float(scn.slo_confidence)
        fixed_keys["slo_confidence"] = "slo_confidence"
        constraints.append(Constraint("meets_slo_prob", "min", float(scn.slo_confidence), "slo_confidence"))
    cons = scn.constraints
    if cons is not None:
        if cons.gpus is not None:
            constraints += [Constraint("num_gpus", b, cons.gpus, "constraints.gpus") for b in ("max", "min")]
        if cons.max_gpus is not None:
            constraints.append(Constraint("num_gpus", "max", cons.max_gpus, "constraints.max_gpus"))
        if cons.max_power_kw is not None:
            constraints.append(Constraint("power_w", "max", float(cons.max_power_kw) * 1000.0,
                                          "constraints.max_power_kw"))
        if cons.budget_usd is not None:
            constraints.append(Constraint("capex_usd", "max", float(cons.budget_usd), "constraints.budget_usd"))
        if cons.max_quality_loss is not None:
            constraints.append(Constraint("quality_loss", "max", float(cons.max_quality_loss),
                                          "constraints.max_quality_loss"))
        for bound in ("max", "min"):
            lims = getattr(cons, bound)
            for metric in _set_fields(lims, data["constraints"].get(bound)):
                constraints.append(Constraint(metric, bound, float(getattr(lims, metric)),
                                              f"constraints.{bound}.{metric}"))
        if cons.own is not None:
            fixed["own"] = cons.own
            fixed_keys["own"] = "constraints.own"
    return fixed, fixed_keys, constraints


def _axes(section, raw: Any, where_key: str, fixed: dict, fail) -> dict[str, Axis]:
    """Axis objects of an `axes:` mapping (common or one mode's) in the file's order, which
    fixes the genes and the mixed-radix layout (and so every config_id)."""
    out: dict[str, Axis] = {}
    for col in _set_fields(section, raw):
        values = getattr(section, col)
        if values is None:
            continue
        key = f"{where_key}.{col}"
        if col in fixed and fixed[col] is not None:
            raise fail(key, f"also fixed elsewhere in the scenario; give {col} in one place")
        out[col] = Axis(col, tuple(values), key)
    return out


def _encoding(common: dict[str, Axis], per_mode: dict[str, dict[str, Axis]]):
    """Genes (mode, then common axes, then each mode's own) and the modes' mixed-radix layout."""
    genes: list[Axis] = []
    gene_of: dict[tuple[str, str], int] = {}
    if len(per_mode) > 1:
        genes.append(Axis("mode", tuple(per_mode), "modes"))
    common_gene: dict[str, int] = {}
    for aname, axis in common.items():
        common_gene[aname] = len(genes)
        genes.append(axis)
    for m, axes in per_mode.items():
        for aname, axis in axes.items():
            if aname in common and axis == common[aname]:
                gene_of[(m, aname)] = common_gene[aname]
            else:  # the mode's own axis (or its own values for a common one): a gene of its own
                gene_of[(m, aname)] = len(genes)
                genes.append(axis)
    modes: list[Mode] = []
    offset = 0
    for m, axes in per_mode.items():
        ax = tuple(axes.values())
        strides = []
        s = 1
        for a in reversed(ax):
            strides.append(s)
            s *= a.size
        modes.append(Mode(m, ax, tuple(gene_of[(m, a.name)] for a in ax), offset, s, tuple(reversed(strides))))
        offset += s
    return genes, modes


def _enumerate(space: Space, cons) -> tuple:
    """Per mode its deployable rows under the structure checks and the GPU budget."""
    exact = cons.gpus if cons is not None else None
    at_most = cons.max_gpus if cons is not None else None
    fixed = dict(space.fixed)
    return tuple(enumerate_mode(m, fixed, space.model, space.eplb_experts, exact, at_most, space.path)
                 for m in space.modes)


def _is_number(col: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)


DRY_RUN_VALUES = 4096


def _probe(axis: Axis) -> list:
    """The values of an axis the dry run evaluates: all of them, or for a long numeric axis its
    extremes and evenly spaced values between (the engine's checks on a number are ranges)."""
    if axis.size <= DRY_RUN_VALUES or column_kind(axis.name) not in ("int", "float"):
        return list(axis.values)
    ordered = sorted(axis.values)
    step = (len(ordered) - 1) / (DRY_RUN_VALUES - 1)
    return [ordered[round(i * step)] for i in range(DRY_RUN_VALUES)]


def _dry_run(space: Space, fixed_keys: dict[str, str], fail) -> pd.DataFrame:
    """Evaluate every axis value once so that bad values fail at load time, with their key;
    returns one evaluated row (its dtypes tell which metrics are numbers). All the probes go
    through one evaluation (one engine call instead of one per axis and mode); only when it
    fails are they rerun one axis at a time to name the key."""
    rows: list[dict] = []
    for m in space.modes:
        base = {a.name: a.values[0] for a in m.axes}
        base["mode"] = m.name
        rows.append(base)
        for a in m.axes:
            if a.size > 1:
                rows += [{**base, a.name: v} for v in _probe(a)[1:]]
    names = list(dict.fromkeys(k for r in rows for k in r))
    defaults = {k: schema.COLUMNS[k] for k in names}
    cols = {k: [r.get(k, defaults[k]) for r in rows] for k in names}
    try:
        df = evaluate(strict=False, **dict(space.fixed), **cols)
        return df.iloc[:1]
    except DSEError:
        pass
    return _dry_run_each(space, fixed_keys, fail)


def _dry_run_each(space: Space, fixed_keys: dict[str, str], fail) -> pd.DataFrame:
    """The dry run one mode and one axis at a time: the first bad value raises with its key."""
    sample = None
    for m in space.modes:
        base = {a.name: a.values[0] for a in m.axes}
        base["mode"] = m.name
        try:
            sample = evaluate(strict=False, **dict(space.fixed), **base)
        except DSEError as exc:  # the mode itself, or a fixed (workload) value
            msg = str(exc)
            key = next((k for c, k in fixed_keys.items() if f"{c}" in msg and c != "model"), f"modes.{m.name}")
            raise fail("modes" if key == "modes.agg" and len(space.modes) == 1 else key, msg) from None
        for a in m.axes:
            if a.size == 1:
                continue
            cols = {**dict(space.fixed), **base, a.name: _probe(a)}
            try:
                evaluate(strict=False, **cols)
            except DSEError as exc:
                raise fail(a.key, str(exc)) from None
    return sample
