"""Per-configuration hardware arrays for the vectorized model.

Configurations name a device and a weight format per row. Each distinct (device,
format) pair is looked up once (device sheet, system, fitted kernel efficiencies) into
small tables; rows then gather from them by integer index, so a million rows cost a
few fancy-indexing operations, not a million dictionary lookups.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np

from dse.catalog import dtypes
from dse.catalog.devices import get_device
from dse.catalog.systems import get_system
from dse.deploy.kernel_params import default_params, load_params
from dse.model import kernels
from dse.model.dedupe import Rows
from dse.model.ops import GEMM_BF16, MOE_LOW, Hw

__all__ = ["FAMILIES", "SpecTable"]

# kernel-parameter families; "unfitted": the roofline efficiencies of kernels no table measures
FAMILIES = ("gemm", "context_attention", "generation_attention", "moe", "nccl", "custom_allreduce", "unfitted")
# Attention runs in the KV cache's format (an fp8 cache: fp8 FMHA math at the fp8 rate),
# not in the weights': a table row is a (device, weight format, fp8 KV cache?, MoE kernel)
# key. The MoE kernel is the low-latency variant the row's serving framework runs on small
# steps ("" = none; "min_latency" = the kernel tables' moe_torch_flow_min_latency; fitted
# per backend by dse.fit.serving): its parameters are the ops.MOE_LOW family, the variant's
# "<format>@<variant>" ones where the device was calibrated on it, else the plain ones.
ATTENTION = ("context_attention", "generation_attention")


def moe_format(fmt: str, mxfp4: bool) -> str:
    """The MoE kernel's format key: an MXFP4 checkpoint's experts served at fp4 on fp4 tensor
    cores run the MXFP4 x MXFP8 grouped GEMM (the kernel tables' w4a8_mxfp4_mxfp8 rows, timed
    at gpt-oss's shapes on B200), not the NVFP4 one; where no device measured it the key falls
    back along kernels.format_chain (w4a8 -> fp8)."""
    return "w4a8" if mxfp4 and fmt == "fp4" else fmt


def math_dtype(dev, fmt: str) -> str:
    """The tensor-core format a kernel stored in `fmt` does its math in on `dev`: the first
    format along kernels.format_chain with a compute fallback, as the device runs it (a
    device lacking a format runs it at the next one it has: fp4 on H100 at fp8)."""
    return dev.compute_dtype(next(k for k in kernels.format_chain(fmt) if k in dtypes.COMPUTE_FALLBACK))


def _moe_rows(merged: dict, dev, fmt: str, mxfp4: bool, moe_kernel: str) -> dict:
    """The MoE family's figures and the low-latency kernel's (MOE_LOW: the variant's where
    calibrated, else the plain ones). A kernel whose math runs in another format than the
    weights' (MXFP4 x MXFP8: fp8 math) was fitted against that format's peak; the engine
    prices MoE at the weights' peak, so its efficiency is restated against that one."""
    mfmt = moe_format(fmt, mxfp4)
    scale = dev.peak_tflops[math_dtype(dev, mfmt)] / dev.peak_tflops[fmt]
    out = {}
    for fam, key in (("moe", mfmt), (MOE_LOW, f"{mfmt}@{moe_kernel}" if moe_kernel else mfmt)):
        for name, val in kernels.for_format(merged, key).items():
            out[f"{fam}:{name}"] = float(val) * (scale if name == "eff_compute" else 1.0)
    out[f"{MOE_LOW}:on"] = 1.0 if moe_kernel else 0.0     # its step limit: the Context's runtime (hw)
    return out


@functools.lru_cache(maxsize=None)
def _pair_row(device_id: str, w_dtype: str, kv_fp8: bool = False, moe_kernel: str = "",
              mxfp4: bool = False) -> dict:
    """Hardware figures of one (device, weight format, KV format, MoE kernel variant, MXFP4
    checkpoint?); cached: files are read once per process."""
    dev = get_device(device_id)
    sys_ = get_system(dev.system)
    fmt = dev.compute_dtype(w_dtype)
    attn_fmt = dev.compute_dtype("fp8" if kv_fp8 else "bf16")
    params = load_params(device_id)
    defaults = default_params()
    row = {
        "peak_gemm": dev.peak_tflops[fmt],
        "peak_attn": dev.peak_tflops[attn_fmt],
        "peak_bf16": dev.peak_tflops["bf16"],
        "mem_tb_s": dev.memory_tb_s,
        "scaleup_gb_s": dev.scaleup_gb_s if dev.scaleup_gb_s > 0 else dev.scaleout_gb_s,
        "scaleout_gb_s": dev.scaleout_gb_s,
        "domain": float(sys_.scaleup_domain),
        "a_bytes": dtypes.BYTES[fmt] if w_dtype != "int4" else 2.0,
        "memory_gb": dev.memory_gb,
        "tdp_w": dev.tdp_w,
        "idle_w": dev.idle_w,
        "price_usd": dev.price_usd,
        "rent_usd_per_hour": dev.rent_usd_per_hour,
        "host_w_per_gpu": sys_.host_power_w / sys_.gpus_per_node,
        "host_usd_per_gpu": sys_.host_price_usd / sys_.gpus_per_node,
    }
    for fam in FAMILIES:
        merged = {**defaults.get(fam, {}), **params.get(fam, {})}   # a file's family may lack keys
        if fam == "moe":
            row.update(_moe_rows(merged, dev, fmt, mxfp4, moe_kernel))
            continue
        for name, val in kernels.for_format(merged, attn_fmt if fam in ATTENTION else fmt).items():
            row[f"{fam}:{name}"] = float(val)
        if fam == "gemm":    # the bf16 kernel's, for the matrices no checkpoint quantizes (ops.GEMM_BF16)
            for name, val in kernels.for_format(merged, "bf16").items():
                row[f"{GEMM_BF16}:{name}"] = float(val)
    return row


class SpecTable:
    """Gathers hardware figures for rows given by (device, weight format, KV format) codes."""

    def __init__(self, pairs: list[tuple]):
        """pairs: (device, weight format[, fp8 KV cache?[, MoE kernel variant[, MXFP4 checkpoint?]]])."""
        rows = [_pair_row(*p) for p in pairs]
        self.keys = sorted(set().union(*rows)) if rows else []
        # one row per figure, one column per pair: a figure's rows are one take from it
        self.matrix = np.array([[r.get(k, np.nan) for r in rows] for k in self.keys], dtype=float)

    def gather(self, idx: np.ndarray) -> Rows:
        """The figures of rows whose pair is `idx`, each gathered when first read."""
        return Rows({k: i for i, k in enumerate(self.keys)}, self.matrix, np.asarray(idx))

    @staticmethod
    def hw(cols: Mapping[str, np.ndarray], *, runtime: dict) -> Hw:
        """The model's hardware arrays from gathered columns and the runtime facts
        (runtime.yaml, as the Context carries them) that price point-to-point hand-offs and
        bound the steps the low-latency MoE kernel serves."""
        if isinstance(cols, Rows):
            params = {f: cols.family(f) for f in FAMILIES + (MOE_LOW, GEMM_BF16)}
        else:
            params = {f: {} for f in FAMILIES + (MOE_LOW, GEMM_BF16)}
            for key, val in cols.items():
                if ":" in key:
                    fam, name = key.split(":", 1)
                    params[fam][name] = val
        return Hw(peak_gemm=cols["peak_gemm"], peak_attn=cols["peak_attn"], peak_bf16=cols["peak_bf16"],
                  mem_tb_s=cols["mem_tb_s"], scaleup_gb_s=cols["scaleup_gb_s"],
                  scaleout_gb_s=cols["scaleout_gb_s"], domain=cols["domain"], params=params,
                  hop_ms=float(runtime["p2p_hop_ms"]), kv_handoff_ms=float(runtime["kv_handoff_ms"]),
                  moe_low_tokens=float(runtime["moe_low_latency_tokens"]))
