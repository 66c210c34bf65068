"""Phase-aware power: idle + activity-dependent dynamic power, capped.

A GPU draws idle power plus a dynamic part that grows with how busy its math units and
its memory system are over a step (prefill runs near TDP, decode far below). A power cap
below the demanded power lowers clocks; dynamic power goes roughly with f^3 (f x V^2,
V tracking f), so the compute-bound share of the step stretches by (demand/cap)^(1/3)
while memory-bound time barely moves.
"""
from __future__ import annotations

import numpy as np

__all__ = ["gpu_power_w", "apply_cap"]


def gpu_power_w(*, flops, nbytes, time_ms, peak_tflops, mem_tb_s, tdp_w, idle_w,
                c_compute, c_memory) -> np.ndarray:
    """Average power of one GPU doing `flops` and moving `nbytes` in `time_ms` (uncapped)."""
    t = np.maximum(np.asarray(time_ms, dtype=float), 1e-9) * 1e-3
    u_c = np.minimum(flops / (peak_tflops * 1e12 * t), 1.0)
    u_m = np.minimum(nbytes / (mem_tb_s * 1e12 * t), 1.0)
    activity = np.minimum(c_compute * u_c + c_memory * u_m, 1.0)
    return idle_w + (tdp_w - idle_w) * activity


def apply_cap(power_w, time_ms, compute_share, *, cap_w):
    """Clock down to `cap_w`: returns (capped power, stretched time)."""
    power_w = np.asarray(power_w, dtype=float)
    over = np.maximum(power_w / np.maximum(cap_w, 1e-9), 1.0)
    stretch = 1.0 + compute_share * (np.cbrt(over) - 1.0)
    return np.minimum(power_w, cap_w), time_ms * stretch
