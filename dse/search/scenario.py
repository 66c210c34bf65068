"""The scenario file (search_spaces/*.yaml) as pydantic models: types, ranges, defaults, help.

These models are the one description of a scenario: `space.space_from_dict` validates
with them, `dse schema scenario` prints their JSON Schema (for editors), and
docs/scenario.md is generated from their field descriptions. Checks that need the
catalog or the engine (the model id resolves, a value is fixed in one place only, every
axis value evaluates) happen when the `Space` is built.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BeforeValidator, Field, create_model, model_validator

from dse import schema
from dse.catalog.facility import FacilityOverrides
from dse.catalog.validation import (DataModel, NonNegative, NonNegativeInt, PositiveInt, PositiveOrInf, Text,
                                    allowed, fail)
from dse.search.scenario_columns import NUMERIC_METRICS, PLACED_METRICS, Axes, Bounds, Slos, Workload

__all__ = ["Scenario", "Objective", "Constraints", "Search", "Modes", "Placement", "STRATEGIES", "SAMPLERS",
           "DEFAULT_OBJECTIVES", "MAX_OBJECTIVES", "OBJECTIVE_METRICS"]

# Latency objective: e2e_ms (time to the whole answer) rather than tpot_ms, because it
# charges both phases: a configuration that decodes fast but prefills slowly (or a
# disaggregated one with a slow prefill pool) is not latency-optimal for the user.
# TTFT/TPOT targets are constraints under `slos:`.
DEFAULT_OBJECTIVES = ("e2e_ms", "joules_per_token", "usd_per_mtok")
MAX_OBJECTIVES = 4
DEFAULT_SLO_CONFIDENCE = 0.9   # the and the industry's usual reading of "meets its SLO"
STRATEGIES = ("auto", "grid", "nsga2", "optuna")
SAMPLERS = ("nsga2", "tpe")
OBJECTIVE_METRICS = NUMERIC_METRICS + PLACED_METRICS
MetricName = Literal[OBJECTIVE_METRICS]  # type: ignore[valid-type]


class Objective(DataModel):
    """One objective: a metric and which way is better (default: the metric's own)."""
    name: MetricName = Field(description="metric to optimise")
    direction: Optional[Literal["min", "max"]] = Field(None, description="min or max (default: the metric's)")


def _objectives(value: Any) -> Any:
    """Each item as {name, direction}; unknown, non-numeric and repeated metrics named at their index."""
    if not isinstance(value, list) or not value:
        raise fail(f"expected a non-empty list of metrics (e.g. [e2e_ms, joules_per_token]), got {value!r:.60}")
    if len(value) > MAX_OBJECTIVES:
        raise fail(f"at most {MAX_OBJECTIVES} objectives, got {len(value)}")
    out, names = [], []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"name": item}
        elif isinstance(item, dict) and len(item) == 1 and "name" not in item:
            (metric, direction), = item.items()
            item = {"name": metric, "direction": direction}
        elif not (isinstance(item, dict) and "name" in item):
            raise fail("expected a metric name, {name: METRIC, direction: min|max} or {METRIC: min|max}, "
                       f"got {item!r:.60}", i)
        name = item["name"]
        if name in schema.NON_NUMERIC_METRICS:
            raise fail(f"metric {name!r} is not a number; allowed: {allowed(OBJECTIVE_METRICS)}", i)
        if name not in OBJECTIVE_METRICS:
            raise fail(f"unknown metric {name!r:.40}; allowed: {allowed(OBJECTIVE_METRICS)}", i)
        if name in names:
            raise fail(f"metric {name!r} is listed twice", i)
        names.append(name)
        out.append(item)
    return out


ObjectiveList = Annotated[list[Objective], BeforeValidator(_objectives, json_schema_input_type=list[Union[
    MetricName, Objective, dict[MetricName, Literal["min", "max"]]]])]


class Constraints(DataModel):
    """Hard limits on the deployment, and how it is paid for."""
    gpus: Optional[PositiveInt] = Field(None, description="exactly this many GPUs per deployment, replicas included "
                                                         "(num_gpus == gpus); applied while the space is enumerated")
    max_gpus: Optional[PositiveInt] = Field(None, description="at most this many GPUs (num_gpus <= max_gpus); applied "
                                                             "while the space is enumerated")
    max_power_kw: Optional[PositiveOrInf] = Field(None, description="average wall power limit, kW (power_w; "
                                                                     ".inf = no limit)")
    budget_usd: Optional[PositiveOrInf] = Field(None, description="capital budget, USD (capex_usd; .inf = no limit)")
    max_quality_loss: Optional[NonNegative] = Field(
        None, description="expected quality loss of the weight and KV formats, percentage points of the benchmark "
                          "average of hardware/quality.yaml (quality_loss <= limit; docs/quality.md)")
    own: Optional[bool] = Field(None, description="true: own the hardware (capex amortised + energy + facility); "
                                                  "false: rent it at $/GPU-hour (default: true)")
    facility: Optional[FacilityOverrides] = Field(None, description="overrides of hardware/facility.yaml "
                                                                    "(pue, usd_per_kwh, ...)")
    max: Optional[Bounds] = Field(None, description="upper limits: metric -> number (metric <= limit)")
    min: Optional[Bounds] = Field(None, description="lower limits: metric -> number (metric >= limit)")


class Search(DataModel):
    """How `dse sweep` searches (command-line flags override these); not part of the fingerprint."""
    strategy: Optional[Literal[STRATEGIES]] = Field(  # type: ignore[valid-type]
        None, description="auto (grid up to 5 million deployable configurations, else nsga2), grid (every "
                          "deployable configuration), nsga2 (pymoo) or optuna (default: auto)")
    budget: Optional[PositiveInt] = Field(None, description="evaluations the optimiser may spend (nsga2, optuna)")
    seed: Optional[NonNegativeInt] = Field(None, description="random seed of the optimiser")
    pop_size: Optional[PositiveInt] = Field(None, description="population size (nsga2; optuna's nsga2 sampler)")
    sampler: Optional[Literal[SAMPLERS]] = Field(None, description="optuna sampler: nsga2 or tpe")  # type: ignore
    chunk_size: Optional[PositiveInt] = Field(None, description="configurations evaluated per batch (grid)")
    tol: Optional[NonNegative] = Field(None, description="stop when the hypervolume gains less than this "
                                                         "fraction (nsga2, optuna)")


class _ModesBase(DataModel):
    unknown_word: ClassVar[str] = "mode"


Modes = create_model(
    "Modes", __base__=_ModesBase,
    __doc__="Serving modes, each with the axes it adds to (or replaces in) the common ones.",
    **{m: (Optional[Axes], Field(None, description=f"{m} mode: its own axes (empty = the common axes only)"))
       for m in schema.MODES})


def _modes(value: Any) -> Any:
    """A list of mode names is the mapping of those modes with no axes of their own."""
    if isinstance(value, list):
        if not value:
            raise fail(f"empty: list at least one of {', '.join(schema.MODES)}")
        out: dict = {}
        for i, m in enumerate(value):
            if not isinstance(m, str):
                raise fail(f"expected a mode name, got {m!r:.40}", i)
            if m not in schema.MODES:
                raise fail(f"unknown mode {m!r:.40}; allowed: {', '.join(schema.MODES)}", i)
            if m in out:
                raise fail(f"mode {m!r} listed twice", i)
            out[m] = None
        return out
    if isinstance(value, dict) and not value:
        raise fail(f"empty: give at least one of {', '.join(schema.MODES)}")
    if not isinstance(value, dict):
        raise fail(f"expected a list of modes or a mapping mode -> axes, got {value!r:.60}")
    return value


ModeSpec = Annotated[Modes, BeforeValidator(_modes, json_schema_input_type=Union[
    list[Literal[schema.MODES]], Modes])]  # type: ignore[valid-type]


class Placement(DataModel):
    """Score afd candidates also at their optimal CP-SAT op placement (dse.solvers.placed checks the values)."""
    objective: Optional[Literal["bottleneck", "tokens_per_usd"]] = Field(
        None, description="what the placement optimises (default bottleneck)")
    overlap: Optional[bool] = Field(None, description="overlap communication with compute (default true)")
    time_limit_s: Optional[PositiveOrInf] = Field(None, description="CP-SAT time limit per pool pair, s (default 10)")
    extra_pools: Optional[list[str]] = Field(None, max_length=3, description="up to 3 more pools, "
                                                                             "DEVICE:COUNT[,tp=N]")


PlacementSpec = Annotated[Any, BeforeValidator(lambda v: v, json_schema_input_type=Union[
    Literal["optimal", True], Placement])]


class Scenario(DataModel):
    """A scenario: model + workload + SLOs + objectives + constraints + the axes to search."""
    name: Optional[Annotated[str, Field(min_length=1, pattern=r"\S")]] = Field(
        None, description="scenario name (default: the file name without .yaml)")
    description: str = Field("", description="one line shown in reports")
    model: Text = Field(description="a model id (`dse models list`) or a path to a Hugging Face config.json "
                                   "(relative to the scenario file)")
    workload: Optional[Workload] = Field(None, description="columns fixed for every configuration (isl, osl, ...)")
    slos: Optional[Slos] = Field(None, description="upper limits on metrics, e.g. ttft_ms, tpot_ms (a configuration "
                                                   "above one is infeasible; ttft/tpot also set goodput targets)")
    slo_confidence: Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)] = Field(
        DEFAULT_SLO_CONFIDENCE, description="the chance with which a configuration must meet its TTFT and TPOT SLOs, "
                                            "by the calibrated error model (docs/intervals.md); 0 = the point "
                                            "prediction decides")
    objectives: ObjectiveList = Field(default_factory=lambda: [Objective(name=o) for o in DEFAULT_OBJECTIVES],
                                      description=f"1 to {MAX_OBJECTIVES} metrics to optimise, each a name, "
                                                  "{name, direction} or {metric: min|max} (default: e2e_ms, "
                                                  "joules_per_token, usd_per_mtok)")
    constraints: Optional[Constraints] = Field(None, description="hard limits and ownership")
    axes: Optional[Axes] = Field(None, description="columns to search, shared by every mode: each a value, a list, "
                                                   "{range: [start, stop, step]}, {pow2: [lo, hi]} or "
                                                   "{linspace: [lo, hi, n]}")
    modes: Optional[ModeSpec] = Field(None, description="serving modes (agg, disagg, afd): a list, or a mapping "
                                                        "mode -> its own axes (default: [agg])")
    search: Optional[Search] = Field(None, description="search strategy and its settings")
    eplb: Optional[bool] = Field(
        None, description="true: give every configuration the fewest redundant experts (EPLB replicas of the "
                          "hottest) that let its expert-parallel degree divide the model's experts, so that e.g. "
                          "ep 72 serves 256 experts (the redundant_experts columns are then set per row, not "
                          "searched); default false: such an ep is infeasible")
    reference_point: Optional[dict[MetricName, Annotated[float, Field(allow_inf_nan=False)]]] = Field(
        None, description="hypervolume reference point: one number per objective")
    placement: Optional[PlacementSpec] = Field(
        None, description="`optimal` (or a mapping of settings): also score afd rows at their optimal placement")

    @model_validator(mode="after")
    def _cross(self) -> "Scenario":
        if self.reference_point is not None:
            names = [o.name for o in self.objectives]
            if set(self.reference_point) != set(names):
                raise fail("give one number per objective: " + ", ".join(names), "reference_point")
        if self.placement is None:
            for section, mapping in (("slos", self.slos), ("constraints.max", self.constraints and
                                                           self.constraints.max),
                                     ("constraints.min", self.constraints and self.constraints.min)):
                for metric in (mapping.model_fields_set if mapping is not None else ()):
                    if metric in PLACED_METRICS:
                        raise fail(f"{metric} needs a placement: section", *section.split("."), metric)
            for i, o in enumerate(self.objectives):
                if o.name in PLACED_METRICS:
                    raise fail(f"{o.name} needs a placement: section", "objectives", i)
        return self
