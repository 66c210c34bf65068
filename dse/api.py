"""The Python face: `evaluate` maps configuration columns to metric columns.

`evaluate(model=..., device=..., tp=[1, 2, 4], ...)` takes scalars or equal-length
sequences, broadcasts them and returns one DataFrame row per configuration with the
metric columns of the design notes. Infeasible rows stay, flagged with a reason; no
metric is ever NaN.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dse.catalog import dtypes
from dse.catalog.devices import device_ids, get_device
from dse.catalog.facility import get_facility
from dse.catalog.models import Model, get_model
from dse.catalog.spec_table import SpecTable
from dse.errors import DSEError
from dse.model import cost, memory, power, serving
from dse.model.ops import COMM_OPS, Dtypes, Parallel

MODES = ("agg", "disagg", "afd")

# column -> default (None = required). Role columns left at "" / 0 inherit the generic one
# (prefill_device "" -> device, decode_tp 0 -> tp, ...), so one axis can drive every role.
COLUMNS: dict[str, Any] = {
    "model": None,
    "device": None,
    "mode": "agg",
    "tp": 1,            # attention tensor parallel
    "pp": 1,            # pipeline stages
    "dp": 1,            # attention data-parallel ranks inside one worker
    "ep": 1,            # expert parallel (MoE tensor parallel = tp*dp/ep)
    "replicas": 1,      # identical copies of the whole deployment unit
    "weight_dtype": "native",
    "kv_dtype": "bf16",
    "batch_size": 1,    # concurrent requests per replica (agg, afd); decode batch default (disagg)
    "isl": 1024,
    "osl": 256,
    "prefix_hit": 0.0,  # fraction of prompt tokens served from the prefix cache
    "routing_skew": 0.0,  # power-law exponent of expert popularity (0 = balanced)
    "power_cap": 1.0,   # fraction of TDP
    "own": True,        # own (capex + energy + facility) or rent ($/GPU-hour)
    # disagg: prefill and decode pools
    "prefill_device": "", "prefill_tp": 0, "prefill_dp": 0, "prefill_ep": 0, "prefill_pp": 0,
    "prefill_workers": 1,
    "decode_device": "", "decode_tp": 0, "decode_dp": 0, "decode_ep": 0, "decode_pp": 0,
    "decode_workers": 1, "decode_batch_size": 0,
    # afd: attention pool (attn_gpus GPUs, attention TP attn_tp, the rest data-parallel)
    # and FFN pool (ffn_gpus GPUs: expert parallel for MoE, tensor parallel for dense)
    "attn_device": "", "attn_tp": 1, "attn_gpus": 0, "ffn_device": "", "ffn_gpus": 0,
    # service-level objectives (inf = none)
    "ttft_slo_ms": np.inf, "tpot_slo_ms": np.inf,
}
STRING_COLUMNS = ("model", "device", "mode", "weight_dtype", "kv_dtype", "prefill_device", "decode_device",
                  "attn_device", "ffn_device")
INT_COLUMNS = ("tp", "pp", "dp", "ep", "replicas", "batch_size", "isl", "osl", "prefill_workers",
               "decode_workers", "attn_tp")
ROLE_INT_COLUMNS = ("prefill_tp", "prefill_dp", "prefill_ep", "prefill_pp", "decode_tp", "decode_dp",
                    "decode_ep", "decode_pp", "decode_batch_size", "attn_gpus", "ffn_gpus")

METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
           "power_w", "joules_per_token", "usd_per_mtok", "usd_per_hour", "num_gpus", "memory_gb_per_gpu",
           "capex_usd", "meets_slo", "goodput_tokens_per_s", "feasible", "infeasible_reason", "bottleneck")


@functools.lru_cache(maxsize=1)
def _runtime() -> dict[str, float]:
    path = Path(str(resources.files("dse.hardware"))) / "runtime.yaml"
    data = yaml.safe_load(path.read_text())
    return {k: float(v) for k, v in data.items() if k != "sources"}


@functools.lru_cache(maxsize=1)
def _power_coeffs() -> dict[str, float]:
    path = Path(str(resources.files("dse.hardware"))) / "power.yaml"
    data = yaml.safe_load(path.read_text())
    return {"c_compute": float(data["c_compute"]), "c_memory": float(data["c_memory"])}


def _broadcast(columns: dict[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise DSEError(f"evaluate: unknown column {unknown[0]!r}; allowed: {', '.join(COLUMNS)}")
    for name, default in COLUMNS.items():
        if default is None and name not in columns:
            raise DSEError(f"evaluate: missing required column {name!r}")
    arrays = {}
    n = 1
    for name, default in COLUMNS.items():
        val = columns.get(name, default)
        arr = np.asarray(val if not isinstance(val, (pd.Series, pd.Index)) else val.to_numpy())
        if arr.ndim > 1:
            raise DSEError(f"evaluate: column {name!r} must be a scalar or a 1-D sequence")
        if arr.ndim == 1 and arr.size != 1:
            if n not in (1, arr.size):
                raise DSEError(f"evaluate: column {name!r} has {arr.size} values, others have {n}")
            n = arr.size
        arrays[name] = arr.reshape(-1)
    out = {}
    for name, arr in arrays.items():
        if name in STRING_COLUMNS:
            arr = arr.astype(str)
        elif name == "own":
            arr = arr.astype(bool)
        else:
            try:
                arr = arr.astype(float)
            except ValueError:
                raise DSEError(f"evaluate: column {name!r} must be numeric, got {arr[:3].tolist()}") from None
            if name in INT_COLUMNS and (np.any(arr < 1) or np.any(arr != np.round(arr))):
                raise DSEError(f"evaluate: column {name!r} must hold positive integers")
            if name in ROLE_INT_COLUMNS and (np.any(arr < 0) or np.any(arr != np.round(arr))):
                raise DSEError(f"evaluate: column {name!r} must hold integers >= 0 (0 = inherit)")
        out[name] = np.broadcast_to(arr, (n,)) if arr.size == 1 else arr
    return out, n


def _check_categories(cols: dict[str, np.ndarray]) -> None:
    known_dev = set(device_ids())
    for col in ("device", "prefill_device", "decode_device", "attn_device", "ffn_device"):
        for d in map(str, np.unique(cols[col])):
            if d and d not in known_dev and not d.endswith((".yaml", ".yml")):
                raise DSEError(f"evaluate: {col}: unknown device {d!r}; known: {', '.join(sorted(known_dev))}")
    for m in map(str, np.unique(cols["mode"])):
        if m not in MODES:
            raise DSEError(f"evaluate: mode: unknown mode {m!r}; allowed: {', '.join(MODES)}")
    for name in ("weight_dtype", "kv_dtype"):
        for v in map(str, np.unique(cols[name])):
            if not (name == "weight_dtype" and v == "native"):
                dtypes.normalize(v, field=name)
    bad = (cols["prefix_hit"] < 0) | (cols["prefix_hit"] >= 1)
    if bad.any():
        raise DSEError("evaluate: prefix_hit must be in [0, 1)")
    if np.any(cols["power_cap"] <= 0) or np.any(cols["power_cap"] > 1):
        raise DSEError("evaluate: power_cap is a fraction of TDP in (0, 1]")


def _structure_errors(model: Model, tp, dp, ep, holds: str = "all") -> np.ndarray:
    """Per-row reason a parallel layout cannot shard `model` ('' = fine)."""
    reason = np.full(np.shape(tp), "", dtype=object)
    if holds == "ffn":
        ffn = max(g.ffn.num_experts if g.ffn.kind == "moe" else g.ffn.intermediate for g in model.groups)
        reason[np.mod(ffn, tp * dp) != 0] = f"ffn_gpus must divide {ffn} ({'experts' if model.is_moe else 'FFN width'})"
        return reason
    heads = min(g.attention.num_heads for g in model.groups)
    bad_tp = np.mod(heads, tp) != 0
    reason[bad_tp] = f"tp must divide the {heads} attention heads"
    if holds == "attn":
        return reason
    if model.is_moe:
        experts = max(g.ffn.num_experts for g in model.groups)
        group = tp * dp
        bad_ep = (np.mod(experts, ep) != 0) | (np.mod(group, ep) != 0)
        reason[bad_ep & (reason == "")] = f"ep must divide the {experts} experts and tp*dp"
    else:
        reason[(ep > 1) & (reason == "")] = "ep > 1 needs a MoE model"
    return reason


def evaluate(*, strict: bool = True, **columns: Any) -> pd.DataFrame:
    """Evaluate configurations given as columns; see COLUMNS for names and defaults.

    With strict=True (the default) a configuration that cannot exist (a TP size that
    does not divide the attention heads, an unknown id) raises DSEError; the search
    passes strict=False to get such rows back flagged infeasible instead.
    """
    cols, n = _broadcast(columns)
    _check_categories(cols)
    out = {name: np.asarray(arr) for name, arr in cols.items()}
    metrics = {m: np.zeros(n) for m in METRICS if m not in ("feasible", "infeasible_reason", "bottleneck")}
    reason = np.full(n, "", dtype=object)
    bottleneck = np.full(n, "", dtype=object)
    models, model_idx = np.unique(cols["model"], return_inverse=True)
    for mi, mref in enumerate(models):
        rows = np.nonzero(model_idx == mi)[0]
        model = get_model(str(mref))
        sub = {k: v[rows] for k, v in cols.items()}
        res = _evaluate_model(model, sub, strict=strict)
        for k, v in res.items():
            if k == "infeasible_reason":
                reason[rows] = v
            elif k == "bottleneck":
                bottleneck[rows] = v
            else:
                metrics[k][rows] = v
    out.update(metrics)
    out["num_gpus"] = out["num_gpus"].astype(np.int64)
    out["meets_slo"] = out["meets_slo"].astype(bool)
    out["feasible"] = reason == ""
    out["infeasible_reason"] = reason
    out["bottleneck"] = bottleneck
    return pd.DataFrame(out)


class _Pools:
    """Builds serving pools for one model from per-row columns, sharing the spec table."""

    def __init__(self, model: Model, c: dict[str, np.ndarray]):
        self.model, self.c = model, c
        wd = np.where(c["weight_dtype"] == "native", model.native_dtype, c["weight_dtype"])
        names, idx = np.unique(wd, return_inverse=True)
        self.wd = np.array([dtypes.normalize(x, field="weight_dtype") for x in names])[idx]
        kd_names, kd_idx = np.unique(c["kv_dtype"], return_inverse=True)
        self.kv_bytes = np.array([dtypes.BYTES[dtypes.normalize(x, field="kv_dtype")] for x in kd_names])[kd_idx]
        self.rt = _runtime()
        self.reason = np.full(c["tp"].shape, "", dtype=object)
        self.mem_gb = np.zeros(c["tp"].shape)

    def make(self, device, tp, dp, ep, pp, *, holds: str = "all", running=None) -> tuple[serving.Pool, dict]:
        c, model = self.c, self.model
        pairs, pair_idx = np.unique(np.char.add(np.char.add(device.astype(str), "|"), self.wd.astype(str)),
                                    return_inverse=True)
        table = _spec_table(tuple(tuple(p.split("|")) for p in pairs))
        hwc = table.gather(pair_idx)
        hw = SpecTable.hw(hwc)
        w_bytes = np.array([dtypes.BYTES[p.split("|")[1]] for p in pairs])[pair_idx]
        dt = Dtypes(w_bytes=w_bytes, a_bytes=hwc["a_bytes"], kv_bytes=self.kv_bytes)
        par = Parallel(tp=tp, dp=dp, ep=ep, pp=pp)
        self.reason = np.where(self.reason == "", _structure_errors(model, tp, dp, ep, holds), self.reason)
        # memory: weights + activations + reserve must fit; the rest (x kv fraction) holds KV
        attn_w, ffn_w = memory.weight_bytes_split(model, par, w_bytes)
        weights = {"all": memory.weight_bytes_per_gpu(model, par, w_bytes), "attn": attn_w, "ffn": ffn_w}[holds]
        seqs_rank = np.maximum((c["batch_size"] if running is None else running) / dp, 1.0)
        act = memory.activation_bytes(model, np.maximum(c["isl"], seqs_rank))
        fixed = weights + act + self.rt["activation_reserve_gb"] * memory.GB
        cap = hwc["memory_gb"] * memory.GB
        kv_seq = memory.kv_bytes_per_seq(model, par, self.kv_bytes, c["isl"] + c["osl"])
        if holds == "ffn":
            max_seqs = np.full(tp.shape, np.inf)
            kv_used = 0.0
        else:
            max_seqs = np.floor(np.maximum(cap - fixed, 0) * self.rt["kv_memory_fraction"] / kv_seq) * dp
            kv_used = kv_seq * np.minimum(seqs_rank, np.maximum(max_seqs / dp, 1.0))
        self.reason = np.where((self.reason == "") & (fixed > cap), f"memory: weights do not fit ({holds} pool)",
                               self.reason)
        self.reason = np.where((self.reason == "") & (max_seqs < 1),
                               "kv_capacity: not one sequence's KV cache fits", self.reason)
        self.mem_gb = np.maximum(self.mem_gb, (fixed + kv_used) / memory.GB)
        pool = serving.Pool(hw=hw, dt=dt, par=par, tdp_w=hwc["tdp_w"], idle_w=hwc["idle_w"],
                            cap_w=c["power_cap"] * hwc["tdp_w"], max_seqs=max_seqs)
        return pool, hwc


@functools.lru_cache(maxsize=64)
def _spec_table(pairs: tuple[tuple[str, str], ...]) -> SpecTable:
    return SpecTable(list(pairs))


def _role(c, name, generic):
    return np.where(c[name] > 0, c[name], c[generic]) if name in c else c[generic]


def _evaluate_model(model: Model, c: dict[str, np.ndarray], *, strict: bool, keep: dict | None = None
                    ) -> dict[str, np.ndarray]:
    modes = set(np.unique(c["mode"]).tolist())
    if len(modes) > 1:  # each mode is its own vectorized path
        out: dict[str, np.ndarray] = {}
        for mode in sorted(modes):
            rows = np.nonzero(c["mode"] == mode)[0]
            res = _evaluate_model(model, {k: v[rows] for k, v in c.items()}, strict=strict)
            for k, v in res.items():
                out.setdefault(k, np.empty(len(c["mode"]), dtype=v.dtype))[rows] = v
        return out
    mode = modes.pop()
    pools = _Pools(model, c)
    skew, coeffs = c["routing_skew"], _power_coeffs()
    common = dict(isl=c["isl"], osl=c["osl"], prefix_hit=c["prefix_hit"], skew=skew, coeffs=coeffs)
    if mode == "agg":
        pool, hwc = pools.make(c["device"], c["tp"], c["dp"], c["ep"], c["pp"])
        res = serving.agg(model, pool, concurrency=c["batch_size"], **common)
        roles = [(hwc, res.gpus)]
    elif mode == "disagg":
        pdev = np.where(c["prefill_device"] != "", c["prefill_device"], c["device"])
        ddev = np.where(c["decode_device"] != "", c["decode_device"], c["device"])
        dbatch = _role(c, "decode_batch_size", "batch_size")
        ppool, phwc = pools.make(pdev, _role(c, "prefill_tp", "tp"), _role(c, "prefill_dp", "dp"),
                                 _role(c, "prefill_ep", "ep"), _role(c, "prefill_pp", "pp"), running=np.ones_like(dbatch))
        dpool, dhwc = pools.make(ddev, _role(c, "decode_tp", "tp"), _role(c, "decode_dp", "dp"),
                                 _role(c, "decode_ep", "ep"), _role(c, "decode_pp", "pp"), running=dbatch)
        g = ppool.gpus * c["prefill_workers"] + dpool.gpus * c["decode_workers"]
        same = (pdev == ddev) & (g <= dhwc["domain"])
        res = serving.disagg(model, ppool, dpool, prefill_workers=c["prefill_workers"],
                             decode_workers=c["decode_workers"], decode_batch=dbatch, same_domain=same, **common)
        roles = [(phwc, ppool.gpus * c["prefill_workers"]), (dhwc, dpool.gpus * c["decode_workers"])]
    else:  # afd
        adev = np.where(c["attn_device"] != "", c["attn_device"], c["device"])
        fdev = np.where(c["ffn_device"] != "", c["ffn_device"], c["device"])
        agpus = np.where(c["attn_gpus"] > 0, c["attn_gpus"], c["tp"] * c["dp"])
        fgpus = np.where(c["ffn_gpus"] > 0, c["ffn_gpus"], np.maximum(c["ep"], c["tp"]))
        atp = np.minimum(c["attn_tp"], agpus)
        apool, ahwc = pools.make(adev, atp, np.maximum(agpus / atp, 1.0), np.ones_like(agpus), c["pp"], holds="attn")
        if model.is_moe:
            fpool, fhwc = pools.make(fdev, np.ones_like(fgpus), fgpus, fgpus, c["pp"], holds="ffn")
        else:
            fpool, fhwc = pools.make(fdev, fgpus, np.ones_like(fgpus), np.ones_like(fgpus), c["pp"], holds="ffn")
        same = (adev == fdev) & (agpus + fgpus <= ahwc["domain"])
        res = serving.afd(model, apool, fpool, concurrency=c["batch_size"], same_domain=same, **common)
        roles = [(ahwc, apool.gpus), (fhwc, fpool.gpus)]
    reason = pools.reason
    if strict and (reason != "").any() and not str(reason[np.nonzero(reason != "")[0][0]]).startswith(
            ("memory", "kv_capacity")):
        i = int(np.nonzero(reason != "")[0][0])
        raise DSEError(f"evaluate: {model.id}: tp={int(c['tp'][i])}, dp={int(c['dp'][i])}, ep={int(c['ep'][i])}: "
                       f"{reason[i]}")
    if keep is not None:
        keep.update(result=res, pools=pools)

    replicas = c["replicas"]
    num_gpus = res.gpus * replicas
    host_w = sum(h["host_w_per_gpu"] * g for h, g in roles) * replicas
    power_w = res.gpu_power_w * replicas + host_w
    tokens_per_s = res.tokens_per_s * replicas
    fac = get_facility()
    capex = sum((h["price_usd"] + h["host_usd_per_gpu"]) * g for h, g in roles) * replicas
    rent = sum(h["rent_usd_per_hour"] * g for h, g in roles) * replicas
    provisioned = sum((h["tdp_w"] + h["host_w_per_gpu"]) * g for h, g in roles) * replicas
    usd_hour = np.where(
        c["own"],
        capex / (fac.amortization_years * cost.HOURS_PER_YEAR) + power_w / 1e3 * fac.pue * fac.usd_per_kwh
        + provisioned / 1e3 * fac.facility_usd_per_kw_month / cost.HOURS_PER_MONTH,
        rent)
    meets = (res.ttft_ms <= c["ttft_slo_ms"]) & (res.tpot_ms <= c["tpot_slo_ms"]) & (reason == "")
    return {
        "ttft_ms": res.ttft_ms,
        "tpot_ms": res.tpot_ms,
        "e2e_ms": res.ttft_ms + np.maximum(c["osl"] - 1, 0) * res.tpot_ms,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / num_gpus,
        "tokens_per_s_per_user": 1e3 / res.tpot_ms,
        "power_w": power_w,
        "joules_per_token": power_w * fac.pue / tokens_per_s,
        "usd_per_mtok": cost.usd_per_mtok(usd_hour, tokens_per_s),
        "usd_per_hour": usd_hour,
        "num_gpus": num_gpus,
        "memory_gb_per_gpu": pools.mem_gb,
        "capex_usd": capex,
        "meets_slo": meets,
        "goodput_tokens_per_s": np.where(meets, tokens_per_s, 0.0),
        "infeasible_reason": reason,
        "bottleneck": _bottleneck(*res.steps["decode"], reason),
    }


def _bottleneck(step, hw, reason) -> np.ndarray:
    comp, mem, comm = serving.bound_split(step, hw)
    labels = np.array(["compute", "memory", "comm"], dtype=object)
    out = labels[np.argmax(np.stack([comp, mem, comm]), axis=0)]
    return np.where(np.char.startswith(reason.astype(str), "kv_capacity"), "kv_capacity", out)


def explain(**config: Any) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
    """One configuration's metrics, its per-operator breakdown (prefill and decode steps:
    time, FLOPs, bytes, arithmetic intensity, binding resource) and its pools (step time,
    utilisation, power per GPU, GPUs, transfer time), so a user sees where the time goes."""
    cols, n = _broadcast(config)
    if n != 1:
        raise DSEError("explain: give one configuration (scalars), not sequences")
    _check_categories(cols)
    model = get_model(str(cols["model"][0]))
    keep: dict = {}
    _evaluate_model(model, dict(cols), strict=True, keep=keep)
    row = evaluate(**config).iloc[0]
    res = keep["result"]
    recs = []
    for phase, (step, hw) in res.steps.items():
        total = float(step.total_ms[0])
        for op, t in step.time_ms.items():
            t, f, b = float(t[0]), float(step.flops[op][0]), float(step.bytes[op][0])
            if t <= 0:
                continue
            if op in COMM_OPS:
                bound = "comm"
            else:
                bound = "compute" if f / float(hw.peak_gemm[0]) >= b / float(hw.mem_tb_s[0]) else "memory"
            recs.append({"phase": phase, "op": op, "time_ms": t, "share": t / total if total else 0.0,
                         "gflop": f / 1e9, "mbytes": b / 1e6, "flop_per_byte": f / b if b else float("inf"),
                         "bound": bound})
    pools = pd.DataFrame([{"role": p.role, "gpus": float(np.broadcast_to(p.gpus, (1,))[0]),
                           "step_ms": float(p.step_ms[0]), "utilisation": float(np.broadcast_to(p.utilisation, (1,))[0]),
                           "power_w_per_gpu": float(p.power_w[0]),
                           "transfer_ms": float(np.broadcast_to(res.transfer_ms, (1,))[0])} for p in res.pools])
    return row, pd.DataFrame(recs), pools
