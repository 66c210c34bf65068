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

# column -> default (None = required). Strings are categorical axes, numbers numeric.
COLUMNS: dict[str, Any] = {
    "model": None,
    "device": None,
    "mode": "agg",
    "tp": 1,            # attention tensor parallel
    "pp": 1,            # pipeline stages
    "dp": 1,            # attention data-parallel ranks inside one replica
    "ep": 1,            # expert parallel (MoE tensor parallel = tp*dp/ep)
    "replicas": 1,      # identical copies of the whole instance
    "weight_dtype": "native",
    "kv_dtype": "bf16",
    "batch_size": 1,    # concurrent sequences per replica
    "isl": 1024,
    "osl": 256,
    "prefix_hit": 0.0,  # fraction of prompt tokens served from the prefix cache
    "routing_skew": 0.0,  # power-law exponent of expert popularity (0 = balanced)
    "power_cap": 1.0,   # fraction of TDP
    "own": True,        # own (capex + energy + facility) or rent ($/GPU-hour)
}
STRING_COLUMNS = ("model", "device", "mode", "weight_dtype", "kv_dtype")
INT_COLUMNS = ("tp", "pp", "dp", "ep", "replicas", "batch_size", "isl", "osl")

METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
           "power_w", "joules_per_token", "usd_per_mtok", "usd_per_hour", "num_gpus", "memory_gb_per_gpu",
           "feasible", "infeasible_reason", "bottleneck")


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
        out[name] = np.broadcast_to(arr, (n,)) if arr.size == 1 else arr
    return out, n


def _check_categories(cols: dict[str, np.ndarray]) -> None:
    known_dev = set(device_ids())
    for d in np.unique(cols["device"]):
        if d not in known_dev and not d.endswith((".yaml", ".yml")):
            raise DSEError(f"evaluate: device: unknown device {d!r}; known: {', '.join(sorted(known_dev))}")
    for m in np.unique(cols["mode"]):
        if m not in MODES:
            raise DSEError(f"evaluate: mode: unknown mode {m!r}; allowed: {', '.join(MODES)}")
    for name in ("weight_dtype", "kv_dtype"):
        for v in np.unique(cols[name]):
            if not (name == "weight_dtype" and v == "native"):
                dtypes.normalize(v, field=name)
    bad = (cols["prefix_hit"] < 0) | (cols["prefix_hit"] >= 1)
    if bad.any():
        raise DSEError("evaluate: prefix_hit must be in [0, 1)")
    if np.any(cols["power_cap"] <= 0) or np.any(cols["power_cap"] > 1):
        raise DSEError("evaluate: power_cap is a fraction of TDP in (0, 1]")


def _structure_errors(model: Model, tp, dp, ep) -> np.ndarray:
    """Per-row reason a parallel layout cannot shard `model` ('' = fine)."""
    reason = np.full(tp.shape, "", dtype=object)
    heads = min(g.attention.num_heads for g in model.groups)
    bad_tp = np.mod(heads, tp) != 0
    reason[bad_tp] = f"tp must divide the {heads} attention heads"
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
    out["feasible"] = reason == ""
    out["infeasible_reason"] = reason
    out["bottleneck"] = bottleneck
    return pd.DataFrame(out)


def _evaluate_model(model: Model, c: dict[str, np.ndarray], *, strict: bool, keep: dict | None = None
                    ) -> dict[str, np.ndarray]:
    n = c["tp"].shape[0]
    wd = np.where(c["weight_dtype"] == "native", model.native_dtype, c["weight_dtype"])
    wd = np.array([dtypes.normalize(x, field="weight_dtype") for x in np.unique(wd)])[
        np.unique(wd, return_inverse=True)[1]]
    kd_names, kd_idx = np.unique(c["kv_dtype"], return_inverse=True)
    kv_bytes = np.array([dtypes.BYTES[dtypes.normalize(x, field="kv_dtype")] for x in kd_names])[kd_idx]
    pair_keys = np.char.add(np.char.add(c["device"].astype(str), "|"), wd.astype(str))
    pairs, pair_idx = np.unique(pair_keys, return_inverse=True)
    table = SpecTable([tuple(p.split("|")) for p in pairs])
    hwc = table.gather(pair_idx)
    hw = SpecTable.hw(hwc)
    w_bytes = np.array([dtypes.BYTES[p.split("|")[1]] for p in pairs])[pair_idx]
    dt = Dtypes(w_bytes=w_bytes, a_bytes=hwc["a_bytes"], kv_bytes=kv_bytes)
    par = Parallel(tp=c["tp"], dp=c["dp"], ep=c["ep"], pp=c["pp"])

    reason = _structure_errors(model, c["tp"], c["dp"], c["ep"])
    if strict and (reason != "").any():
        i = int(np.nonzero(reason != "")[0][0])
        raise DSEError(f"evaluate: {model.id}: tp={int(c['tp'][i])}, dp={int(c['dp'][i])}, ep={int(c['ep'][i])}: "
                       f"{reason[i]}")
    if (c["mode"] != "agg").any():
        raise DSEError("evaluate: mode: only 'agg' is implemented so far")

    skew = c["routing_skew"]
    res = serving.agg(model, hw=hw, par=par, dt=dt, batch=c["batch_size"], isl=c["isl"], osl=c["osl"],
                      prefix_hit=c["prefix_hit"], skew=skew)
    if keep is not None:
        keep.update(serving=res, hw=hw)
    rt = _runtime()
    # memory per GPU at the end of a request (full context)
    weights = memory.weight_bytes_per_gpu(model, par, w_bytes)
    seqs_per_rank = np.maximum(c["batch_size"] / c["dp"], 1.0)
    kv = memory.kv_bytes_per_seq(model, par, kv_bytes, c["isl"] + c["osl"]) * seqs_per_rank
    act = memory.activation_bytes(model, np.maximum(c["isl"], seqs_per_rank))
    need = weights + act + rt["activation_reserve_gb"] * memory.GB + kv / rt["kv_memory_fraction"]
    mem_gb = (weights + act + kv) / memory.GB + rt["activation_reserve_gb"]
    cap_bytes = hwc["memory_gb"] * memory.GB
    reason = np.where((reason == "") & (weights + act + rt["activation_reserve_gb"] * memory.GB > cap_bytes),
                      "weights do not fit in memory", reason)
    reason = np.where((reason == "") & (need > cap_bytes), "kv_capacity: KV cache for the batch does not fit",
                      reason)

    # power: time-weighted mix of the prefill and decode phases, each capped
    coeffs = _power_coeffs()
    cap_w = c["power_cap"] * hwc["tdp_w"]
    phase_power = []
    for ph in (res.prefill, res.decode):
        p = power.gpu_power_w(flops=ph.step.total_flops(), nbytes=ph.step.total_bytes(), time_ms=ph.time_ms,
                              peak_tflops=hw.peak_gemm, mem_tb_s=hw.mem_tb_s, tdp_w=hwc["tdp_w"],
                              idle_w=hwc["idle_w"], **coeffs)
        comp_share = _compute_bound_share(ph.step, hw)
        p_capped, stretch_t = power.apply_cap(p, ph.time_ms, comp_share, cap_w=cap_w)
        phase_power.append((p_capped, stretch_t / np.maximum(ph.time_ms, 1e-12)))
    (p_pre, s_pre), (p_dec, s_dec) = phase_power
    share = res.prefill_share
    stretch = share * s_pre + (1 - share) * s_dec
    ttft = res.ttft_ms * s_pre
    tpot = res.tpot_ms * stretch
    tps_replica = res.tokens_per_s / stretch
    gpu_w = share * p_pre + (1 - share) * p_dec
    num_gpus = c["tp"] * c["dp"] * c["pp"] * c["replicas"]
    power_w = num_gpus * (gpu_w + hwc["host_w_per_gpu"])
    tokens_per_s = tps_replica * c["replicas"]
    fac = get_facility()
    usd_hour = cost.usd_per_hour(num_gpus=num_gpus, own=c["own"], gpu_price_usd=hwc["price_usd"],
                                 host_price_per_gpu=hwc["host_usd_per_gpu"],
                                 rent_usd_per_hour=hwc["rent_usd_per_hour"], power_w=power_w,
                                 provisioned_w=num_gpus * (hwc["tdp_w"] + hwc["host_w_per_gpu"]),
                                 pue=fac.pue, usd_per_kwh=fac.usd_per_kwh,
                                 amortization_years=fac.amortization_years,
                                 facility_usd_per_kw_month=fac.facility_usd_per_kw_month)
    return {
        "ttft_ms": ttft,
        "tpot_ms": tpot,
        "e2e_ms": ttft + np.maximum(c["osl"] - 1, 0) * tpot,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / num_gpus,
        "tokens_per_s_per_user": 1e3 / tpot,
        "power_w": power_w,
        "joules_per_token": power_w * fac.pue / tokens_per_s,
        "usd_per_mtok": cost.usd_per_mtok(usd_hour, tokens_per_s),
        "usd_per_hour": usd_hour,
        "num_gpus": num_gpus,
        "memory_gb_per_gpu": mem_gb,
        "infeasible_reason": reason,
        "bottleneck": _bottleneck(res.decode.step, hw, reason),
    }


def _bound_split(step, hw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time of the step's operators that are compute-bound, memory-bound, communication."""
    comp = mem = 0.0
    for op, t in step.time_ms.items():
        if op in COMM_OPS:
            continue
        c_t = step.flops[op] / (hw.peak_gemm * 1e9)
        m_t = step.bytes[op] / (hw.mem_tb_s * 1e9)
        is_c = c_t >= m_t
        comp = comp + np.where(is_c, t, 0.0)
        mem = mem + np.where(is_c, 0.0, t)
    return comp, mem, step.comm_ms()


def _compute_bound_share(step, hw) -> np.ndarray:
    comp, mem, comm = _bound_split(step, hw)
    return comp / np.maximum(comp + mem + comm, 1e-12)


def _bottleneck(step, hw, reason) -> np.ndarray:
    comp, mem, comm = _bound_split(step, hw)
    labels = np.array(["compute", "memory", "comm"], dtype=object)
    out = labels[np.argmax(np.stack([comp, mem, comm]), axis=0)]
    return np.where(np.char.startswith(reason.astype(str), "kv_capacity"), "kv_capacity", out)


def explain(**config: Any) -> tuple[pd.Series, pd.DataFrame]:
    """One configuration's metrics and its per-operator breakdown (prefill and decode step):
    time, FLOPs, bytes, arithmetic intensity and which resource binds each operator."""
    cols, n = _broadcast(config)
    if n != 1:
        raise DSEError("explain: give one configuration (scalars), not sequences")
    _check_categories(cols)
    model = get_model(str(cols["model"][0]))
    keep: dict = {}
    _evaluate_model(model, dict(cols), strict=True, keep=keep)
    row = evaluate(**config).iloc[0]
    res, hw = keep["serving"], keep["hw"]
    recs = []
    for phase, ph in (("prefill", res.prefill), ("decode", res.decode)):
        for op, t in ph.step.time_ms.items():
            t, f, b = float(t[0]), float(ph.step.flops[op][0]), float(ph.step.bytes[op][0])
            if t <= 0:
                continue
            if op in COMM_OPS:
                bound = "comm"
            else:
                bound = "compute" if f / (hw.peak_gemm[0] * 1e9) >= b / (hw.mem_tb_s[0] * 1e9) else "memory"
            recs.append({"phase": phase, "op": op, "time_ms": t, "share": t / float(ph.time_ms[0]),
                         "gflop": f / 1e9, "mbytes": b / 1e6, "flop_per_byte": f / b if b else float("inf"),
                         "bound": bound})
    return row, pd.DataFrame(recs)
