"""Fit the kernel-model parameters of one device from its measured kernel tables.

`fit(kernels_dir, device_id)` reads every table present (gemm, context_attention,
generation_attention, moe, nccl, custom_allreduce; .csv or .csv.gz, latency in ms),
turns each row into the arguments of the matching `dse.model.kernels` function and
minimises the mean of |log(predicted / measured)| (capped, so a few rows from
kernels the model does not describe cannot drag the common case) over a handful of
physically meaningful parameters per family, with a deterministic Nelder-Mead in
bounded coordinates (numpy only; discrete choices such as tile sizes by grid).

    python -m dse.fit.calibrate ../shared/calibration/kernels/h100_sxm h100_sxm
`write` stores the result with its provenance as <out>/<device>.yaml: by default in the
user's data directory ($XDG_DATA_HOME/dse/calibration, else ~/.local/share/dse/calibration),
never over the shipped hardware/calibration unless `in_place` (a fit of a partial or
wrong table must not silently replace the calibration every user's model runs on).
`load_params` reads the shipped files, falling back to the device's `calibration_from`
and then to `kernels.DEFAULT_PARAMS`.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dse import io
from dse.catalog.devices import Device, get_device
from dse.deploy.kernel_params import calibration_dir, load_params
from dse.deploy.spec_table import math_dtype
from dse.errors import DSEError
from dse.model import kernels as K

__all__ = ["fit", "fit_family", "search", "write", "read_tables", "require_tables", "predict", "error_summary",
           "summary_lines", "user_calibration_dir", "calibration_dir", "load_params", "FAMILIES", "RECIPES",
           "nccl_ops", "log_error", "main"]

FAMILIES = ("gemm", "context_attention", "generation_attention", "moe", "nccl", "custom_allreduce")
ATTRIBUTION = ("measured by NVIDIA AIConfigurator, redistributed in aiconfigurator-core 0.12.0, "
               "Apache-2.0")

# measured dtype name -> (activation bytes, weight bytes, parameter format key)
GEMM_DTYPES = {
    "bfloat16": (2.0, 2.0, "bf16"),
    "fp8": (1.0, 1.0, "fp8"),
    "fp8_block": (1.0, 1.0, "fp8_block"),
    "nvfp4": (4.5 / 8, 4.5 / 8, "fp4"),
    # A100 (TensorRT-LLM 1.0.0): weight-only int4 / int8 run bf16 math; SmoothQuant is W8A8 int8
    "int4_wo": (2.0, 4.125 / 8, "int4"),
    "int8_wo": (2.0, 1.0, "int8_wo"),
    "sq": (1.0, 1.0, "int8"),
}
MOE_DTYPES = {
    "bfloat16": (2.0, 2.0, "bf16"),
    "fp8": (1.0, 1.0, "fp8"),
    "fp8_block": (1.0, 1.0, "fp8_block"),
    "nvfp4": (4.5 / 8, 4.5 / 8, "fp4"),
    "w4a16_mxfp4": (2.0, 4.25 / 8, "int4"),        # 4-bit weights, bf16 math
    "w4a8_mxfp4_mxfp8": (1.0, 4.25 / 8, "w4a8"),   # 4-bit weights, fp8 math
}
# kernel_source values that are a different kernel for the same dtype: the low-latency one,
# and the non-gated one (relu^2 experts, 2 matrices: Nemotron-H), whose grouped GEMMs the
# tables measure 10-25 % slower than the gated kernel's efficiencies predict
MOE_VARIANTS = {"moe_torch_flow_min_latency": "min_latency", "moe_torch_flow_nongated": "nongated"}
KV_BYTES = {"bfloat16": 2.0, "fp8": 1.0}
NCCL_OPS = ("all_gather", "alltoall", "reduce_scatter", "all_reduce")  # collector order
NCCL_ELEMENT_BYTES = {"half": 2.0, "int8": 1.0}


# ------------------------------------------------------------------ table -> model
# Each `_args_<family>` turns a measured table into (kernel function, its keyword
# arguments as arrays, the per-row parameter format). Done once per table, so a fit
# evaluates only numpy.
def _peak(device: Device, fmt: np.ndarray) -> np.ndarray:
    """Spec peak TFLOPS of the compute format each row runs in (spec_table.math_dtype: the
    engine's own rule, so a fit and the engine price a format at the same peak)."""
    out = np.empty(len(fmt))
    for f in np.unique(fmt):
        out[fmt == f] = device.peak_tflops[math_dtype(device, str(f))]
    return out


def _lookup(column: pd.Series, table: Mapping[str, tuple], i: int) -> np.ndarray:
    return column.map({k: v[i] for k, v in table.items()}).to_numpy()


def _args_gemm(df: pd.DataFrame, dev: Device):
    fmt = _lookup(df.gemm_dtype, GEMM_DTYPES, 2)
    return K.gemm_ms, dict(
        m=df.m.to_numpy(float), n=df.n.to_numpy(float), k=df.k.to_numpy(float),
        a_bytes=_lookup(df.gemm_dtype, GEMM_DTYPES, 0), w_bytes=_lookup(df.gemm_dtype, GEMM_DTYPES, 1),
        c_bytes=2.0, peak_tflops=_peak(dev, fmt), mem_tb_s=dev.memory_tb_s), fmt


def _attn_common(df: pd.DataFrame, dev: Device):
    fmt = np.where(df.attn_dtype.to_numpy() == "fp8", "fp8", "bf16")
    d = df.head_dim.to_numpy(float)
    return fmt, dict(
        batch=df.batch_size.to_numpy(float), num_heads=df.num_heads.to_numpy(float),
        qk_dim=d, v_dim=d, kv_elems_per_token=2.0 * df.num_key_value_heads.to_numpy(float) * d,
        peak_tflops=_peak(dev, fmt), mem_tb_s=dev.memory_tb_s,
        kv_bytes=df.kv_cache_dtype.map(KV_BYTES).to_numpy(float))


def _args_context_attention(df: pd.DataFrame, dev: Device):
    fmt, args = _attn_common(df, dev)
    args.update(q_len=df.isl.to_numpy(float), window=df.window_size.to_numpy(float))
    return K.attn_prefill_ms, args, fmt


def _args_generation_attention(df: pd.DataFrame, dev: Device):
    _, args = _attn_common(df, dev)
    # decode math is bf16 in these tables; the KV-cache format picks the kernel
    fmt = np.where(df.kv_cache_dtype.to_numpy() == "fp8", "fp8", "bf16")
    ctx = df.step.to_numpy(float) + 1.0                 # cached tokens plus the new one
    win = df.window_size.to_numpy(float)
    args.update(kv_len=np.where(win > 0, np.minimum(ctx, win), ctx),
                kv_heads=df.num_key_value_heads.to_numpy(float))
    return K.attn_decode_ms, args, fmt


def _skew(distribution: pd.Series) -> np.ndarray:
    """'balanced' -> 0, 'power_law_1.2' -> 1.2."""
    return np.array([0.0 if d == "balanced" else float(d.rsplit("_", 1)[1]) for d in distribution])


def _args_moe(df: pd.DataFrame, dev: Device):
    fmt = _lookup(df.moe_dtype, MOE_DTYPES, 2).astype(str)
    variant = df.kernel_source.map(MOE_VARIANTS).fillna("").to_numpy(str)
    fmt = np.where(variant != "", np.char.add(np.char.add(fmt, "@"), variant), fmt)
    routing = dict(tokens=df.num_tokens.to_numpy(float), topk=df.topk.to_numpy(float),
                   num_experts=df.num_experts.to_numpy(float), ep=df.moe_ep_size.to_numpy(float),
                   skew=_skew(df.distribution))
    return K.moe_ms, dict(
        tokens=routing["tokens"], hidden=df.hidden_size.to_numpy(float),
        inter=df.inter_size.to_numpy(float), topk=routing["topk"],
        num_experts=routing["num_experts"], moe_tp=df.moe_tp_size.to_numpy(float),
        moe_ep=routing["ep"], skew=routing["skew"],
        gated=~df.kernel_source.str.endswith("_nongated").to_numpy(),
        w_bytes=_lookup(df.moe_dtype, MOE_DTYPES, 1), a_bytes=_lookup(df.moe_dtype, MOE_DTYPES, 0),
        peak_tflops=_peak(dev, fmt), mem_tb_s=dev.memory_tb_s,
        imbalance=K.moe_imbalance(**routing), experts_hit=K.moe_experts_hit(**routing)), fmt


def nccl_ops(df: pd.DataFrame) -> np.ndarray:
    """Recover the dropped op_name from the row order of the collector.

    The collector loops num_gpus -> op (all_gather, alltoall, reduce_scatter,
    all_reduce) -> dtype (half, int8) -> ascending message sizes, so a run of rows
    restarts whenever the size stops growing, and every 'half' run opens the next op.
    """
    n = df.num_gpus.to_numpy()
    size = df.message_size.to_numpy()
    new_group = np.r_[True, n[1:] != n[:-1]]
    new_run = np.r_[True, size[1:] <= size[:-1]] | new_group
    opens_op = new_run & (df.nccl_dtype.to_numpy() == "half")
    group_id = np.cumsum(new_group)
    ops_so_far = np.cumsum(opens_op)
    first_in_group = ops_so_far[np.flatnonzero(new_group)][group_id - 1]
    op_idx = ops_so_far - first_in_group
    if op_idx.max() >= len(NCCL_OPS) or op_idx.min() < 0:
        raise ValueError("nccl table: op blocks do not follow the collector's order")
    return np.array(NCCL_OPS)[op_idx]


def _nccl_ms(*, nbytes: np.ndarray, n: np.ndarray, op: np.ndarray, link_gb_s: float,
             p: Mapping[str, Any]) -> np.ndarray:
    out = np.empty(len(nbytes))
    for name, fn in _COLLECTIVES.items():
        sel = op == name
        out[sel] = fn(nbytes[sel], n[sel], link_gb_s=link_gb_s, p=p)
    return out


_COLLECTIVES: dict[str, Callable[..., np.ndarray]] = {
    "all_gather": K.allgather_ms, "alltoall": K.alltoall_ms,
    "reduce_scatter": K.reduce_scatter_ms, "all_reduce": K.allreduce_ms,
}


def _args_nccl(df: pd.DataFrame, dev: Device):
    # message_size counts elements: the int8 run at 2x the size times like the half run.
    nbytes = df.message_size.to_numpy(float) * df.nccl_dtype.map(NCCL_ELEMENT_BYTES).to_numpy()
    return _nccl_ms, dict(nbytes=nbytes, n=df.num_gpus.to_numpy(float), op=nccl_ops(df),
                          link_gb_s=dev.scaleup_gb_s), None


def _args_custom_allreduce(df: pd.DataFrame, dev: Device):
    # message_size counts bf16 elements (the collector's tensor numel).
    return K.allreduce_ms, dict(nbytes=df.message_size.to_numpy(float) * 2.0,
                                n=df.num_gpus.to_numpy(float), link_gb_s=dev.scaleup_gb_s), None


# ---------------------------------------------------------------- fitting recipes
@dataclass(frozen=True)
class Recipe:
    """How to price one table and which parameters to fit (name: (start, low, high))."""
    prepare: Callable[[pd.DataFrame, Device], tuple[Callable[..., np.ndarray], dict, Any]]
    free: dict[str, tuple[float, float, float]]
    grid: dict[str, tuple[float, ...]] = field(default_factory=dict)   # discrete choices
    per_format: tuple[str, ...] = ()        # params fitted separately per format present


RECIPES: dict[str, Recipe] = {
    "gemm": Recipe(
        _args_gemm,
        {"eff_compute": (0.75, 0.2, 1.0), "eff_memory": (0.85, 0.3, 1.0),
         "k_half": (128.0, 1.0, 4096.0), "tile_slots": (132.0, 32.0, 512.0),
         "split_min_k": (512.0, 32.0, 1e6), "floor_us": (4.0, 0.5, 30.0)},
        grid={"tile_m": (64.0, 128.0), "tile_n": (128.0, 256.0)},
        # every continuous parameter per format: a 4-bit kernel streams its weights at
        # another rate (eff_memory), runs other tiles (tile_slots) and pays its fixed
        # per-tile cost over other depths (k_half) than a bf16 one
        per_format=("eff_compute", "eff_memory", "k_half", "tile_slots", "floor_us", "split_min_k")),
    "context_attention": Recipe(
        _args_context_attention,
        {"eff_compute": (0.6, 0.1, 1.0), "eff_memory": (0.8, 0.1, 1.0),
         "cta_us": (2.0, 0.01, 50.0), "d_half": (32.0, 0.5, 1024.0),
         "tile_slots": (132.0, 16.0, 1024.0), "floor_us": (8.0, 0.5, 50.0)},
        grid={"tile_q": (64.0, 128.0), "tile_kv": (64.0, 128.0, 256.0)},
        per_format=("eff_compute",)),
    "generation_attention": Recipe(
        _args_generation_attention,
        {"eff_memory": (0.85, 0.2, 1.0), "eff_compute": (0.3, 0.01, 1.0),
         "tile_slots": (132.0, 16.0, 2048.0), "block_tokens": (256.0, 16.0, 65536.0),
         "cta_us": (1.0, 0.01, 50.0), "mha_cta_us": (1.0, 0.01, 50.0), "cta_bw_frac": (0.01, 1e-4, 0.5),
         "cta_heads": (8.0, 1.0, 128.0), "ramp_us": (5.0, 0.01, 100.0),
         "ramp_mb": (30.0, 0.1, 2000.0), "floor_us": (8.0, 0.5, 50.0),
         "eff_fallback": (0.01, 1e-4, 0.2)},
        grid={"max_group": (16.0, 32.0, 64.0)},
        per_format=("floor_us", "cta_heads", "cta_us", "mha_cta_us")),       # format = KV-cache dtype here
    "moe": Recipe(
        _args_moe,
        {"eff_compute": (0.6, 0.05, 1.0), "eff_memory": (0.75, 0.1, 1.0),
         "k_half": (256.0, 1.0, 8192.0), "floor_us": (20.0, 1.0, 200.0)},
        grid={"tile_m": (64.0, 128.0)},
        per_format=("eff_compute", "floor_us")),
    "nccl": Recipe(
        _args_nccl,
        {"base_us": (5.0, 0.1, 50.0), "step_us": (0.8, 0.0001, 20.0), "eff_ll": (0.25, 0.01, 1.0),
         "eff_bw": (0.75, 0.05, 1.0), "bw_extra_us": (30.0, 0.01, 500.0)},
        grid={"one_shot": (0.0,)}),
    "custom_allreduce": Recipe(
        _args_custom_allreduce,
        {"base_us": (3.0, 0.1, 50.0), "step_us": (0.2, 0.0001, 20.0), "eff_ll": (0.6, 0.01, 1.0),
         "eff_bw": (0.75, 0.05, 1.0), "bw_extra_us": (30.0, 0.01, 500.0)},
        grid={"one_shot": (0.0, 1.0)}),
}


def _to_unit(x: float, lo: float, hi: float) -> float:
    """Bounded value -> unconstrained coordinate (logit of the log-scaled position)."""
    u = (np.log(x) - np.log(lo)) / (np.log(hi) - np.log(lo))
    u = min(max(u, 1e-6), 1 - 1e-6)
    return float(np.log(u / (1 - u)))


def _from_unit(z: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    u = 1.0 / (1.0 + np.exp(-z))
    return np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo)))


def _nelder_mead(f: Callable[[np.ndarray], float], x0: np.ndarray, *, iters: int = 400,
                 step: float = 0.6) -> tuple[np.ndarray, float]:
    """Plain deterministic Nelder-Mead (reflection, expansion, contraction, shrink)."""
    n = len(x0)
    simplex = np.vstack([x0] + [x0 + step * np.eye(n)[i] for i in range(n)])
    values = np.array([f(x) for x in simplex])
    for _ in range(iters):
        order = np.argsort(values)
        simplex, values = simplex[order], values[order]
        if values[-1] - values[0] < 1e-7:
            break
        centroid = simplex[:-1].mean(axis=0)
        worst = simplex[-1]
        xr = centroid + (centroid - worst)
        fr = f(xr)
        if fr < values[0]:
            xe = centroid + 2.0 * (centroid - worst)
            fe = f(xe)
            simplex[-1], values[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = xr, fr
        else:
            xc = centroid + 0.5 * ((xr if fr < values[-1] else worst) - centroid)
            fc = f(xc)
            if fc < min(fr, values[-1]):
                simplex[-1], values[-1] = xc, fc
            else:
                simplex[1:] = simplex[0] + 0.5 * (simplex[1:] - simplex[0])
                values[1:] = [f(x) for x in simplex[1:]]
    best = int(np.argmin(values))
    return simplex[best], float(values[best])


# Errors beyond ~65 % (|log| > 0.5) count as 0.5: a few rows the model does not
# describe (exotic kernels) must not drag the parameters of the common case.
LOSS_CAP = 0.5


def log_error(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.abs(np.log(np.maximum(pred, 1e-12) / meas))


def fit_family(family: str, df: pd.DataFrame, device: Device, *, rounds: int = 3) -> dict[str, float]:
    """Parameters of one family minimising the mean capped |log error| over the table:
    Nelder-Mead over the continuous ones for every combination of the discrete ones."""
    recipe = RECIPES[family]
    meas = df.latency.to_numpy(dtype=float)
    fn, args, fmt = recipe.prepare(df, device)
    free = dict(recipe.free)
    if fmt is not None:
        fmt = {str(f): fmt == f for f in np.unique(fmt)}
        for name in recipe.per_format:
            for key in sorted(set(fmt) - {"bf16"}):
                free[f"{name}.{key}"] = free[name]

    def loss(p: dict[str, float]) -> float:
        return float(np.mean(np.minimum(log_error(_evaluate(fn, args, fmt, p), meas), LOSS_CAP)))

    return search(recipe.grid, free, {k: v[0] for k, v in free.items()}, loss, rounds=rounds)


def search(grid: Mapping[str, Any], free: Mapping[str, tuple], start: Mapping[str, float],
           loss: Callable[[dict[str, float]], float], *, rounds: int) -> dict[str, float]:
    """The parameters minimising `loss`: bounded Nelder-Mead over the continuous ones
    (`free`: name -> (start, low, high), from `start`) for every combination of the
    discrete ones (`grid`: name -> values), each restarted `rounds` times; 4 significant
    digits."""
    names = list(free)
    lo = np.array([free[k][1] for k in names])
    hi = np.array([free[k][2] for k in names])
    best: tuple[float, dict[str, float]] = (np.inf, {})
    for combo in itertools.product(*grid.values()):
        fixed = dict(zip(grid, map(float, combo)))

        def f(z: np.ndarray) -> float:
            return loss(dict(fixed, **dict(zip(names, _from_unit(z, lo, hi)))))

        z = np.array([_to_unit(start[k], free[k][1], free[k][2]) for k in names])
        value = np.inf
        for _ in range(rounds):          # restarts shake the simplex out of flat spots
            z, value = _nelder_mead(f, z)
        if value < best[0]:
            best = (value, dict(fixed, **dict(zip(names, map(float, _from_unit(z, lo, hi))))))
    return {k: float(f"{v:.4g}") for k, v in best[1].items()}


# ------------------------------------------------------------------------ tables
# the columns each family's table must have: numbers (the minimum each may take), labels (the
# values the model knows, a pattern, or None: any); `latency` (ms) a positive finite number
_ATTN_COLUMNS = {"batch_size": 1, "isl": 1, "num_heads": 1, "num_key_value_heads": 1, "head_dim": 1,
                 "window_size": 0, "step": 0, "attn_dtype": ("bfloat16", "fp8"), "kv_cache_dtype": tuple(KV_BYTES)}
TABLE_COLUMNS: dict[str, dict[str, Any]] = {
    "gemm": {"m": 1, "n": 1, "k": 1, "gemm_dtype": tuple(GEMM_DTYPES)},
    "context_attention": _ATTN_COLUMNS, "generation_attention": _ATTN_COLUMNS,
    "moe": {"num_tokens": 1, "hidden_size": 1, "inter_size": 1, "topk": 1, "num_experts": 1, "moe_tp_size": 1,
            "moe_ep_size": 1, "moe_dtype": tuple(MOE_DTYPES), "kernel_source": None,
            "distribution": r"balanced|power_law_\d+(\.\d+)?"},
    "nccl": {"num_gpus": 2, "message_size": 1, "nccl_dtype": tuple(NCCL_ELEMENT_BYTES)},
    "custom_allreduce": {"num_gpus": 2, "message_size": 1},
}


def check_table(family: str, path: Path, df: pd.DataFrame) -> pd.DataFrame:
    """The table's rows the fit can read as measurements. A table it cannot read is an error
    naming the file, the column and what was expected (not a KeyError deep in a recipe, nor
    a fit to garbage). Rows of a format the model does not know (a collector's newer label)
    are left out with a warning, the rest kept: an error only when no row is left."""
    unknown = np.zeros(len(df), dtype=bool)
    for col, rule in {**TABLE_COLUMNS[family], "latency": 0}.items():
        if col not in df.columns:
            raise DSEError(f"{path}: missing column {col!r} (a {family} table has "
                           f"{', '.join([*TABLE_COLUMNS[family], 'latency'])})")
        x = df[col]
        if isinstance(rule, tuple) and rule:
            unknown |= _unknown_formats(path, x, rule)
            continue
        if isinstance(rule, str):
            bad, want = ~x.astype(str).str.fullmatch(rule), f"a value matching {rule}"
        elif rule is None:
            bad, want = x.isna(), "a label"
        else:
            num = pd.to_numeric(x, errors="coerce").to_numpy(float)
            bad = ~(np.isfinite(num) & (num > 0 if col == "latency" else num >= rule))
            want = "a positive finite number of ms" if col == "latency" else f"a number >= {rule}"
        if np.any(bad):
            i = int(np.flatnonzero(np.asarray(bad))[0])
            raise DSEError(f"{path}: {col} (row {i + 2}): expected {want}, got {x.iloc[i]!r}")
    return df[~unknown].reset_index(drop=True) if unknown.any() else df


def _unknown_formats(path: Path, x: pd.Series, known: tuple) -> np.ndarray:
    """Rows whose label in column x is no format the model knows (said on stderr); an error
    when that is every row."""
    bad = ~x.astype(str).isin(known).to_numpy()
    if bad.any():
        labels = ", ".join(sorted(set(x[bad].astype(str))))
        if bad.all():
            raise DSEError(f"{path}: {x.name}: no row of a format the model knows (expected one of "
                           f"{', '.join(known)}; got {labels})")
        sys.stderr.write(f"dse: warning: {path}: {int(bad.sum())} rows of {x.name} {labels} left out "
                         f"(formats the model knows: {', '.join(known)})\n")
    return bad


def read_tables(kernels_dir: str | Path) -> dict[str, tuple[Path, pd.DataFrame]]:
    """family -> (path, table) for every known table in the directory, each checked."""
    out = {}
    for path in sorted(Path(kernels_dir).iterdir()):
        stem = path.name.split(".")[0]
        if stem in FAMILIES and path.name.endswith((".csv", ".csv.gz")):
            try:
                df = pd.read_csv(path)
            except (OSError, ValueError) as exc:
                raise DSEError(f"{path}: unreadable kernel table ({str(exc).splitlines()[0]})") from None
            out[stem] = (path, check_table(stem, path, df))
    return out


def require_tables(kernels_dir: str | Path) -> dict[str, tuple[Path, pd.DataFrame]]:
    """read_tables, refusing a directory that is missing or holds no kernel table (a fit
    of nothing would write an empty calibration)."""
    d = Path(kernels_dir)
    if not d.is_dir():
        raise DSEError(f"--kernels {d}: not a directory")
    tables = read_tables(d)
    if not tables:
        raise DSEError(f"--kernels {d}: no kernel tables; expected one or more of "
                       f"{', '.join(f + '.csv[.gz]' for f in FAMILIES)}")
    empty = [str(p) for p, df in tables.values() if df.empty]
    if empty:
        raise DSEError(f"{empty[0]}: kernel table without rows")
    return tables


def _evaluate(fn: Callable[..., np.ndarray], args: dict, fmt: Any, p: Mapping[str, Any]) -> np.ndarray:
    if fmt is None:
        return fn(**args, p=p)
    if not any("." in k for k in p):
        return fn(**args, p=p)
    # one row-wise value per format-specific parameter (same rule as K.for_format)
    masks = fmt if isinstance(fmt, dict) else {f: fmt == f for f in np.unique(fmt)}
    per_row = {}
    for f, mask in masks.items():
        for name, val in K.for_format(p, f).items():
            if name not in per_row:
                per_row[name] = np.empty(len(mask))
            per_row[name][mask] = val
    return fn(**args, p=per_row)


def predict(family: str, df: pd.DataFrame, device: Device, params: Mapping[str, Any]) -> np.ndarray:
    """Model latency (ms) of every row of a measured table."""
    return _evaluate(*RECIPES[family].prepare(df, device), params)


def error_summary(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    ape = np.abs(pred / meas - 1.0) * 100.0
    return {"n": int(len(meas)), "median_ape": round(float(np.median(ape)), 2),
            "mape": round(float(np.mean(ape)), 2)}


def fit(kernels_dir: str | Path, device_id: str) -> dict[str, Any]:
    """Fit every family present in kernels_dir for device_id.

    Returns {"device", "params": {family: {...}}, "errors": {family: {n, median_ape,
    mape}}, "sources": {family: {"path", "rows"}}}.
    """
    device = get_device(device_id)
    result: dict[str, Any] = {"device": device.id, "params": {}, "errors": {}, "sources": {}}
    for family, (path, df) in require_tables(kernels_dir).items():
        params = fit_family(family, df, device)
        result["params"][family] = params
        result["errors"][family] = error_summary(predict(family, df, device, params),
                                                 df.latency.to_numpy(dtype=float))
        result["sources"][family] = {"path": str(path), "rows": int(len(df))}
    return result


# ------------------------------------------------------------------------ storage
def _short_path(path: str) -> str:
    """'.../shared/calibration/kernels/x/gemm.csv.gz' -> 'shared/calibration/kernels/x/gemm.csv.gz'."""
    parts = Path(path).parts
    return str(Path(*parts[parts.index("shared"):])) if "shared" in parts else str(path)


def user_calibration_dir() -> Path:
    """Where `dse calibrate` writes by default: $XDG_DATA_HOME/dse/calibration, else
    ~/.local/share/dse/calibration (never the installed package)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dse" / "calibration"


def write(params: Mapping[str, Any], device_id: str, out_dir: str | Path | None = None, *,
          in_place: bool = False) -> Path:
    """Write a `fit` result as <out_dir>/<device>.yaml atomically, with provenance.

    out_dir: default `user_calibration_dir()`; in_place=True writes the shipped
    hardware/calibration (the only way to replace a shipped file)."""
    if in_place and out_dir is not None:
        raise DSEError("calibrate: give --out DIR or --in-place, not both")
    if not params.get("params"):
        raise DSEError(f"calibrate: nothing was fitted for {device_id}; refusing to write an empty calibration")
    out = calibration_dir() if in_place else Path(out_dir) if out_dir is not None else user_calibration_dir()
    target = out / f"{device_id}.yaml"
    shipped = calibration_dir().resolve()
    if not in_place and out.resolve() == shipped and target.exists():
        raise DSEError(f"--out {out}: holds the shipped calibration ({target.name}); write elsewhere, or pass "
                       "--in-place to replace it")
    doc = {
        "device": device_id,
        "provenance": {
            "tool": "dse calibrate",
            "date": _dt.date.today().isoformat(),
            "attribution": ATTRIBUTION,
            "model": "dse.model.kernels (latency in ms; see its docstrings for the forms)",
            "method": (f"numpy Nelder-Mead minimising mean min(|log(model/measured)|, {LOSS_CAP}) "
                       "per family; tile sizes by grid"),
            "sources": {f: {"path": _short_path(s["path"]), "rows": s["rows"]}
                        for f, s in params.get("sources", {}).items()},
        },
        "fit_error": params.get("errors", {}),
        "params": params["params"],
    }
    text = yaml.safe_dump(doc, sort_keys=False, width=100)
    try:
        return io.write_text(target, text)
    except OSError as exc:
        raise DSEError(f"--out {out}: cannot write {target.name} ({exc.strerror or exc})") from None


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The fit summary: per family, rows and median / mean absolute percentage error."""
    lines = [f"{'family':<22} {'rows':>6} {'median APE %':>13} {'MAPE %':>8}"]
    for family, err in result["errors"].items():
        lines.append(f"{family:<22} {err['n']:>6} {err['median_ape']:>13.1f} {err['mape']:>8.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """python -m dse.fit.calibrate KERNELS_DIR DEVICE [--out DIR | --in-place]: fit and write the YAML."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m dse.fit.calibrate", description=main.__doc__)
    ap.add_argument("kernels_dir")
    ap.add_argument("device")
    ap.add_argument("--out", default=None, help=f"output directory (default {user_calibration_dir()})")
    ap.add_argument("--in-place", action="store_true", help="replace the shipped hardware/calibration file")
    args = ap.parse_args(argv)
    try:
        result = fit(args.kernels_dir, args.device)
        path = write(result, args.device, args.out, in_place=args.in_place)
    except DSEError as exc:
        print(f"dse: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(result)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
