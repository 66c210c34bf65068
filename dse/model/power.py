"""Phase-aware power: idle + activity-dependent dynamic power, capped.

A GPU draws idle power plus a dynamic part that grows with how busy its math units and
its memory system are over a step (prefill runs near TDP, decode far below). A power cap
below the demanded power lowers the clock. At clock scale s the compute-bound part of a
step stretches by 1/s while memory and communication time do not move, and the energy of
a FLOP falls with V^2 ~ s^2 while a byte's does not. The capped clock is where the step's
energy over its stretched time is the cap (energy balance). Unlike stretching by a
power ratio, this never makes a step longer when the step gets cheaper: less time, less
compute-bound time or less energy at full clock always give a capped step no longer.
"""
from __future__ import annotations

import numpy as np

__all__ = ["gpu_power_w", "apply_cap", "NEWTON_STEPS"]

NEWTON_STEPS = 24     # from s = 1 down a convex cubic: monotone, quadratic near the root


def _activity_ms(flops, nbytes, peak_tflops, mem_tb_s, c_compute, c_memory):
    """Dynamic energy of a step at full clock, in ms of full (TDP - idle) activity:
    (compute part, memory part)."""
    e_c = c_compute * np.asarray(flops, dtype=float) / (np.asarray(peak_tflops, dtype=float) * 1e9)
    e_m = c_memory * np.asarray(nbytes, dtype=float) / (np.asarray(mem_tb_s, dtype=float) * 1e9)
    return e_c, e_m


def gpu_power_w(*, flops, nbytes, time_ms, peak_tflops, mem_tb_s, tdp_w, idle_w,
                c_compute, c_memory) -> np.ndarray:
    """Average power of one GPU doing `flops` and moving `nbytes` in `time_ms` (uncapped)."""
    t = np.maximum(np.asarray(time_ms, dtype=float), 1e-9) * 1e-3
    u_c = np.minimum(flops / (peak_tflops * 1e12 * t), 1.0)
    u_m = np.minimum(nbytes / (mem_tb_s * 1e12 * t), 1.0)
    activity = np.minimum(c_compute * u_c + c_memory * u_m, 1.0)
    return idle_w + (tdp_w - idle_w) * activity


def apply_cap(power_w, time_ms, compute_ms, *, flops, nbytes, peak_tflops, mem_tb_s, tdp_w, idle_w, cap_w,
              c_compute, c_memory):
    """Clock down to `cap_w`: returns (capped power, stretched time).

    With t(s) = t_o + t_c / s (t_c = compute_ms, the clock-bound part of time_ms) and the
    full-clock energies e_c, e_m (ms of full activity), a throttled step satisfies
    a t(s) = e_c s^2 + e_m, a = (cap - idle) / (TDP - idle); times s it is the cubic
    e_c s^3 + (e_m - a t_o) s - a t_c = 0, which has one root in (0, 1) and is convex
    there, so Newton from s = 1 walks down to it. `compute_ms` may be a function giving
    it, called only when some row is over its cap."""
    power_w = np.asarray(power_w, dtype=float)
    t = np.broadcast_to(np.maximum(np.asarray(time_ms, dtype=float), 1e-9), power_w.shape)
    cap = np.broadcast_to(np.asarray(cap_w, dtype=float), power_w.shape)
    over = power_w > cap
    if not over.any():
        return np.minimum(power_w, cap), np.array(t, dtype=float)
    pick = (lambda x: np.broadcast_to(np.asarray(x, dtype=float), power_w.shape)[over])
    e_c, e_m = _activity_ms(pick(flops), pick(nbytes), pick(peak_tflops), pick(mem_tb_s), pick(c_compute),
                            pick(c_memory))
    idle, tdp = pick(idle_w), pick(tdp_w)
    a = np.maximum((cap[over] - idle) / np.maximum(tdp - idle, 1e-9), 1e-6)
    tt = t[over]
    t_c = np.clip(pick(compute_ms() if callable(compute_ms) else compute_ms), 0.0, tt)
    t_o = tt - t_c
    s = np.ones_like(tt)
    lin = e_m - a * t_o
    for _ in range(NEWTON_STEPS):
        f = (e_c * s * s + lin) * s - a * t_c
        fp = 3.0 * e_c * s * s + lin
        s = np.clip(s - f / np.where(fp > 0, fp, np.inf), 1e-3, 1.0)
    out = np.array(t, dtype=float)
    out[over] = t_o + t_c / s
    return np.minimum(power_w, cap), out
