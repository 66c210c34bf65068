"""What `dse size` sizes, and the sizing file it reads: demand classes, limits, candidate
deployments, each deployment scored per class by the engine.

The file (search_spaces/sizing_*.yaml) is validated by the pydantic model `SizingFile`
(strict types, ranges, known devices and dtypes, `.inf` = no limit); `dse schema sizing`
prints its JSON Schema. Errors are one line naming the file and the key.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import AfterValidator, Field, field_validator, model_validator

from dse.catalog import dtypes
from dse.catalog.devices import get_device
from dse.catalog.systems import get_system
from dse.catalog.validation import (DataModel, NonNegative, NonNegativeInt, PositiveInt, PositiveOrInf, Text,
                                    fail, unknown, validate)
from dse.catalog.yamlfile import read_mapping
from dse.deploy.evaluate import evaluate
from dse.deploy.explain import explain
from dse.errors import DSEError
from dse.schema import COLUMNS, MODES

__all__ = ["OBJECTIVES", "POWER_BASES", "DEFAULT_BATCHES", "DemandClass", "Limits", "Deployment", "SizingProblem",
           "SizingFile", "load_sizing", "build_problem"]

OBJECTIVES = ("cost", "energy")
POWER_BASES = ("nameplate", "measured")
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class DemandClass:
    name: str
    isl: int
    osl: int
    rps: float              # requests per second
    ttft_ms: float = math.inf
    tpot_ms: float = math.inf


@dataclasses.dataclass(frozen=True)
class Limits:
    power_kw: float | None = None           # IT power
    facility_power_kw: float | None = None  # IT power x PUE
    racks: int | None = None                # rack positions of the facility's rack_power_kw
    budget_usd: float | None = None         # capex
    budget_usd_per_hour: float | None = None
    availability: dict = dataclasses.field(default_factory=dict)  # device -> max GPUs


@dataclasses.dataclass
class Deployment:
    """One replica of one configuration, with what the engine says it delivers."""
    name: str
    config: dict                # evaluate columns (model excluded)
    gpus: dict                  # device -> GPUs per replica
    goodput_rps: dict           # class -> req/s inside the class's SLO (0 = cannot)
    usd_per_hour: float
    power_w: float              # phase-aware average wall power (evaluate)
    nameplate_w: float          # GPU TDP + host share
    capex_usd: float
    batch: dict = dataclasses.field(default_factory=dict)   # class -> batch size used

    @property
    def num_gpus(self) -> int:
        return int(sum(self.gpus.values()))


@dataclasses.dataclass
class SizingProblem:
    classes: list[DemandClass]
    deployments: list[Deployment]
    limits: Limits = dataclasses.field(default_factory=Limits)
    objective: str = "cost"
    share_granularity: int = 100
    power_basis: str = "nameplate"          # nameplate | measured
    name: str = ""



# ----------------------------------------------------------------------------- the file

def _known_device(v: str) -> str:
    try:
        get_device(v)
    except DSEError as exc:
        raise fail(str(exc).removeprefix("device: ")) from None
    return v


def _known_dtype(v: str) -> str:
    if v != "native":
        try:
            dtypes.normalize(v)
        except DSEError as exc:
            raise fail(str(exc).removeprefix("dtype: ")) from None
    return v


DeviceId = Annotated[str, AfterValidator(_known_device)]
Dtype = Annotated[str, AfterValidator(_known_dtype)]
Values = Annotated[list[PositiveInt], Field(min_length=1)]


class ClassSpec(DataModel):
    """One demand class: a traffic shape, its rate and its SLO."""
    name: Text = Field(description="class name (unique)")
    isl: PositiveInt = Field(description="prompt tokens per request")
    osl: PositiveInt = Field(description="generated tokens per request")
    rps: NonNegative = Field(description="requests per second to serve")
    ttft_ms: PositiveOrInf = Field(math.inf, description="time-to-first-token limit, ms (.inf = none)")
    tpot_ms: PositiveOrInf = Field(math.inf, description="time-per-output-token limit, ms (.inf = none)")


class Candidates(DataModel):
    """Deployments to consider: devices x tp x pp x dp (x ep) x modes, each at its best batch per class."""
    devices: Annotated[list[DeviceId], Field(min_length=1)] = Field(description="device ids")
    tp: Values = Field([1], description="tensor-parallel degrees")
    pp: Values = Field([1], description="pipeline stages")
    dp: Values = Field([1], description="attention data-parallel ranks")
    ep: Optional[Values] = Field(None, description="expert-parallel degrees (default: tp x dp for MoE, else 1)")
    modes: Annotated[list[Literal[MODES]], Field(min_length=1)] = Field(  # type: ignore[valid-type]
        ["agg"], description="serving modes")
    batch_sizes: Values = Field(list(DEFAULT_BATCHES), description="batch sizes tried for each class")


class LimitsSpec(DataModel):
    """Limits of the mix; a limit left out (or .inf) does not bind."""
    power_kw: Optional[PositiveOrInf] = Field(None, description="IT power, kW (nameplate unless power_basis: "
                                                                "measured)")
    facility_power_kw: Optional[PositiveOrInf] = Field(None, description="IT power x PUE, kW")
    racks: Optional[PositiveInt] = Field(None, description="rack positions of the facility's rack_power_kw")
    budget_usd: Optional[PositiveOrInf] = Field(None, description="capex, USD")
    budget_usd_per_hour: Optional[PositiveOrInf] = Field(None, description="cost per hour, USD")
    availability: dict[DeviceId, NonNegativeInt] = Field({}, description="device -> most GPUs on offer")


class SizingFile(DataModel):
    """A sizing scenario for `dse size`: traffic classes, candidate deployments and limits."""
    name: Optional[Text] = Field(None, description="scenario name (default: the file name)")
    model: Text = Field(description="a model id (`dse models list`) or a config.json path")
    weight_dtype: Dtype = Field("native", description="weight format (native = the checkpoint's)")
    kv_dtype: Dtype = Field("bf16", description="KV-cache format")
    own: bool = Field(True, description="true: own the hardware; false: rent it")
    objective: Literal[OBJECTIVES] = Field("cost", description="cost ($/hour) or energy (average W)")  # type: ignore
    share_granularity: PositiveInt = Field(100, description="a replica's capacity may be split between classes "
                                                            "in 1/N steps (1 = one class per replica)")
    power_basis: Literal[POWER_BASES] = Field("nameplate", description="power limit counts nameplate "  # type: ignore
                                                                       "(TDP + host) or measured power")
    classes: Annotated[list[ClassSpec], Field(min_length=1)] = Field(description="demand classes")
    candidates: Optional[Candidates] = Field(None, description="deployments to generate")
    deployments: list[dict[str, Any]] = Field([], description="explicit deployments: mappings of evaluate "
                                                              "columns, each with device")
    limits: Optional[LimitsSpec] = Field(None, description="limits of the mix")
    notes: str = Field("", description="free text")

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list) -> list:
        names = [c.name for c in v]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise fail(f"class name {n!r} used twice; names must be unique", i, "name")
        return v

    @field_validator("deployments")
    @classmethod
    def _columns(cls, v: list) -> list:
        for i, d in enumerate(v):
            if "device" not in d:
                raise fail("a deployment needs its device", i)
            for key in d:
                if key not in COLUMNS or key == "model":
                    raise fail(unknown("column", key, [c for c in COLUMNS if c != "model"]), i, key)
            _known_device(d["device"]) if isinstance(d["device"], str) else None
        return v

    @model_validator(mode="after")
    def _something(self) -> "SizingFile":
        if self.candidates is None and not self.deployments:
            raise fail("give candidates (devices x tp x ...) and/or deployments (explicit configs)")
        return self


def _no_limit(v):
    return None if v is None or math.isinf(v) else v


def load_sizing(path: str | Path) -> dict:
    """Read and validate a sizing scenario (search_spaces/sizing_*.yaml); errors name file and key."""
    path = Path(path)
    if not path.is_file():
        raise DSEError(f"size: no such scenario file {str(path)!r}")
    f: SizingFile = validate(SizingFile, read_mapping(path), str(path))
    out: dict[str, Any] = {"path": str(path), "name": f.name or path.stem, "model": f.model,
                           "weight_dtype": f.weight_dtype, "kv_dtype": f.kv_dtype, "own": f.own,
                           "objective": f.objective, "share_granularity": f.share_granularity,
                           "power_basis": f.power_basis}
    out["classes"] = [DemandClass(**c.model_dump()) for c in f.classes]
    if f.candidates is not None:
        c = f.candidates
        out["candidates"] = {"devices": list(c.devices), "tp": list(c.tp), "pp": list(c.pp), "dp": list(c.dp),
                             "ep": list(c.ep or [1]), "modes": list(c.modes), "batch_sizes": list(c.batch_sizes),
                             "ep_given": c.ep is not None}
    out["deployments"] = [dict(d) for d in f.deployments]
    lim = f.limits or LimitsSpec()
    out["limits"] = Limits(power_kw=_no_limit(lim.power_kw), facility_power_kw=_no_limit(lim.facility_power_kw),
                           racks=lim.racks, budget_usd=_no_limit(lim.budget_usd),
                           budget_usd_per_hour=_no_limit(lim.budget_usd_per_hour),
                           availability={str(k): int(v) for k, v in lim.availability.items()})
    return out


# ----------------------------------------------------------------------------- scoring


def _gpus_by_device(cfg: dict, num_gpus: int) -> dict:
    """GPUs per device type of one replica; role devices (disagg / afd) split via the engine's pools."""
    roles = {k: cfg.get(k) for k in ("prefill_device", "decode_device", "attn_device", "ffn_device") if cfg.get(k)}
    if cfg.get("mode", "agg") == "agg" or all(v == cfg["device"] for v in roles.values()):
        return {cfg["device"]: int(num_gpus)}

    _, _, pools = explain(**cfg)
    role_dev = {"prefill": cfg.get("prefill_device") or cfg["device"], "decode": cfg.get("decode_device") or cfg["device"],
                "attn": cfg.get("attn_device") or cfg["device"], "ffn": cfg.get("ffn_device") or cfg["device"]}
    raw: dict[str, float] = {}
    for _, row in pools.iterrows():
        dev = role_dev.get(str(row["role"]), cfg["device"])
        raw[dev] = raw.get(dev, 0.0) + float(row["gpus"])
    total = sum(raw.values()) or 1.0
    return {v: round(g / total * num_gpus) for v, g in raw.items()}


def build_problem(scn: dict) -> SizingProblem:
    """Deployments from the scenario's candidates, each scored per class by the engine."""
    from dse.catalog.models import get_model

    try:
        model = get_model(scn["model"])
    except DSEError as exc:                 # get_model knows the id, not the file that named it
        raise DSEError(f"{scn['path']}: {exc}") from None
    configs: list[dict] = []
    cand = scn.get("candidates")
    if cand:
        experts = max((g.ffn.num_experts for g in model.groups if g.ffn.kind == "moe"), default=0)
        for dev, tp, pp, dp, mode in itertools.product(cand["devices"], cand["tp"], cand["pp"], cand["dp"],
                                                       cand["modes"]):
            eps = cand["ep"] if cand["ep_given"] else ([tp * dp] if experts else [1])
            for ep in eps:
                configs.append({"device": dev, "tp": tp, "pp": pp, "dp": dp, "ep": ep, "mode": mode})
    for d in scn.get("deployments", []):
        configs.append(dict(d))
    batches = cand["batch_sizes"] if cand else list(DEFAULT_BATCHES)
    common = {"model": scn["model"], "weight_dtype": scn["weight_dtype"], "kv_dtype": scn["kv_dtype"],
              "own": scn["own"]}
    cols: dict[str, list] = {}
    index = []
    for ci, cfg in enumerate(configs):
        for k, cl in enumerate(scn["classes"]):
            for b in ([cfg["batch_size"]] if "batch_size" in cfg else batches):
                row = {**cfg, "batch_size": b, "isl": cl.isl, "osl": cl.osl}
                index.append((ci, k))
                for key in set(cols) | set(row):
                    cols.setdefault(key, [None] * (len(index) - 1)).append(row.get(key))
    # fill missing columns with evaluate defaults
    for key, vals in cols.items():
        default = COLUMNS.get(key)
        if key not in COLUMNS:
            raise DSEError(f"{scn['path']}: deployments: unknown column {key!r}")
        cols[key] = [default if v is None else v for v in vals]
    df = evaluate(**common, **cols, strict=False)
    idx = np.array(index)
    deployments = []
    for ci, cfg in enumerate(configs):
        rows = df[idx[:, 0] == ci]
        rk = idx[idx[:, 0] == ci, 1]
        good, batch, usd, pw = {}, {}, [], []
        for k, cl in enumerate(scn["classes"]):
            r = rows[(rk == k)]
            ok = r[r["feasible"] & (r["ttft_ms"] <= cl.ttft_ms) & (r["tpot_ms"] <= cl.tpot_ms)]
            if len(ok):
                best = ok.loc[ok["tokens_per_s"].idxmax()]
                good[cl.name] = float(best["tokens_per_s"]) / cl.osl
                batch[cl.name] = int(best["batch_size"])
                usd.append(float(best["usd_per_hour"]))
                pw.append(float(best["power_w"]))
            else:
                good[cl.name] = 0.0
        if not usd:
            continue
        first = rows.iloc[0]
        num = int(first["num_gpus"])
        gpus = _gpus_by_device({**common, **cfg}, num)
        nameplate = 0.0
        for v, g in gpus.items():
            dev = get_device(v)
            sysm = get_system(dev.system)
            nameplate += g * (dev.tdp_w + sysm.host_power_w / sysm.gpus_per_node)
        label = " ".join([cfg["device"]] + [f"{k}{int(cfg[k])}" for k in ("tp", "pp", "dp", "ep")
                                              if k in cfg and (k == "tp" or int(cfg[k]) > 1)]
                         + [cfg.get("mode", "agg")]
                         + [f"{k}={v}" for k, v in cfg.items() if k not in ("device", "tp", "pp", "dp", "ep", "mode")])
        deployments.append(Deployment(name=label, config=cfg, gpus=gpus, goodput_rps=good, usd_per_hour=max(usd),
                                      power_w=max(pw), nameplate_w=nameplate, capex_usd=float(first["capex_usd"]),
                                      batch=batch))
    prob = SizingProblem(classes=scn["classes"], deployments=deployments, limits=scn["limits"],
                         objective=scn["objective"], share_granularity=scn["share_granularity"],
                         power_basis=scn["power_basis"], name=scn["name"])
    _explain_unserved(prob, df, idx, scn)
    return prob


def _explain_unserved(prob: SizingProblem, df, idx, scn) -> None:
    """A class no candidate serves inside its SLO: name the best TTFT and TPOT on offer."""
    for k, cl in enumerate(prob.classes):
        if cl.rps <= 0 or any(d.goodput_rps.get(cl.name, 0.0) > 0 for d in prob.deployments):
            continue
        rows = df[(idx[:, 1] == k) & df["feasible"].to_numpy()]
        if not len(rows):
            raise DSEError(f"{scn['path']}: class {cl.name!r}: no candidate configuration fits in memory at "
                           f"isl {cl.isl}, osl {cl.osl}")
        bt = rows.loc[rows["tpot_ms"].idxmin()]
        bf = rows.loc[rows["ttft_ms"].idxmin()]
        raise DSEError(f"{scn['path']}: class {cl.name!r}: no candidate meets ttft <= {cl.ttft_ms:g} ms and "
                       f"tpot <= {cl.tpot_ms:g} ms (best tpot {bt['tpot_ms']:.1f} ms on {bt['device']} "
                       f"tp{int(bt['tp'])} at batch {int(bt['batch_size'])}; best ttft {bf['ttft_ms']:.0f} ms on "
                       f"{bf['device']} tp{int(bf['tp'])})")
