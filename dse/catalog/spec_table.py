"""Per-configuration hardware arrays for the vectorized model.

Configurations name a device and a weight format per row. Each distinct (device,
format) pair is looked up once (device sheet, system, fitted kernel efficiencies) into
small tables; rows then gather from them by integer index, so a million rows cost a
few fancy-indexing operations, not a million dictionary lookups.
"""
from __future__ import annotations

import functools

import numpy as np

from dse.calibrate import load_params
from dse.catalog import dtypes
from dse.catalog.devices import get_device
from dse.catalog.systems import get_system
from dse.model import kernels
from dse.model.ops import Hw

FAMILIES = ("gemm", "context_attention", "generation_attention", "moe", "nccl", "custom_allreduce")
# Attention runs in the KV cache's format (an fp8 cache: fp8 FMHA math at the fp8 rate),
# not in the weights'; its kernel figures are kept for both and picked per row.
ATTENTION = ("context_attention", "generation_attention")
ATTN_FORMATS = ("bf16", "fp8")


@functools.lru_cache(maxsize=None)
def _pair_row(device_id: str, w_dtype: str) -> dict:
    """Hardware figures of one (device, weight format); cached: files are read once per process."""
    dev = get_device(device_id)
    sys_ = get_system(dev.system)
    fmt = dev.compute_dtype(w_dtype)
    params = load_params(device_id)
    row = {
        "peak_gemm": dev.peak_tflops[fmt],
        "peak_attn": dev.peak_tflops["bf16"],
        "peak_attn_fp8": dev.peak_tflops[dev.compute_dtype("fp8")],
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
        merged = {**kernels.DEFAULT_PARAMS.get(fam, {}), **params.get(fam, {})}
        if fam in ATTENTION:
            for afmt in ATTN_FORMATS:
                for name, val in kernels.for_format(merged, dev.compute_dtype(afmt)).items():
                    row[f"{fam}{'' if afmt == 'bf16' else '@' + afmt}:{name}"] = float(val)
            continue
        for name, val in kernels.for_format(merged, fmt).items():
            row[f"{fam}:{name}"] = float(val)
    return row


class SpecTable:
    """Gathers hardware figures for rows given by (device, weight dtype) codes."""

    def __init__(self, pairs: list[tuple[str, str]]):
        rows = [_pair_row(d, w) for d, w in pairs]
        self.keys = sorted(set().union(*rows)) if rows else []
        # one row per figure, one column per pair: a gather is one 2-D take (~5x faster
        # than a take per figure) whose rows come out contiguous
        self.matrix = np.array([[r.get(k, np.nan) for r in rows] for k in self.keys], dtype=float)
        self.columns = dict(zip(self.keys, self.matrix))

    def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.keys, np.take(self.matrix, idx, axis=1) if self.keys else []))

    @staticmethod
    def hw(cols: dict[str, np.ndarray], kv_bytes=2.0) -> Hw:
        """Hardware arrays of the gathered rows; attention figures in the format of a
        `kv_bytes`-byte KV cache (fp8 below 2 bytes)."""
        params: dict[str, dict[str, np.ndarray]] = {f: {} for f in FAMILIES}
        fp8: dict[str, dict[str, np.ndarray]] = {f: {} for f in ATTENTION}
        for key, val in cols.items():
            if ":" in key:
                fam, name = key.split(":", 1)
                fam, _, afmt = fam.partition("@")
                (fp8 if afmt else params)[fam][name] = val
        peak_attn = cols["peak_attn"]
        fp8_kv = np.asarray(kv_bytes) < 2.0
        if np.any(fp8_kv):
            for fam in ATTENTION:
                params[fam] = {k: np.where(fp8_kv, fp8[fam][k], v) for k, v in params[fam].items()}
            peak_attn = np.where(fp8_kv, cols["peak_attn_fp8"], peak_attn)
        return Hw(peak_gemm=cols["peak_gemm"], peak_attn=peak_attn, peak_bf16=cols["peak_bf16"],
                  mem_tb_s=cols["mem_tb_s"], scaleup_gb_s=cols["scaleup_gb_s"],
                  scaleout_gb_s=cols["scaleout_gb_s"], domain=cols["domain"], params=params)
