"""Engine throughput: configurations per second through the whole `dse.evaluate` path.

One command: `python bench/engine_bench.py [--n 1000000]`. Evaluates N random
configurations of a dense 70B model (devices, TP, batch, formats, context lengths) in
one vectorized call, pinned to one core, and compares with a plain Python loop calling
`evaluate` one configuration at a time over a sample of the same configurations,
measured in the same run. Target: >= 1,000,000 configurations per second.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def configs(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return dict(model="meta-llama/Llama-3.1-70B",
                device=rng.choice(["h100_sxm", "h200_sxm", "b200_sxm", "mi300x", "a100_sxm"], n),
                tp=rng.choice([1, 2, 4, 8], n), batch_size=rng.integers(1, 512, n),
                weight_dtype=rng.choice(["bf16", "fp8", "fp4"], n), kv_dtype=rng.choice(["bf16", "fp8"], n),
                isl=rng.choice([512, 1024, 2048, 8192], n), osl=rng.choice([128, 256, 1024], n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--loop-sample", type=int, default=300)
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import dse

    cols = configs(a.n)
    dse.evaluate(strict=False, **{k: (v[:1000] if isinstance(v, np.ndarray) else v) for k, v in cols.items()})
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        df = dse.evaluate(strict=False, **cols)
        best = min(best, time.perf_counter() - t)
    vec_rate = a.n / best
    t = time.perf_counter()
    for i in range(a.loop_sample):
        dse.evaluate(strict=False, **{k: (v[i] if isinstance(v, np.ndarray) else v) for k, v in cols.items()})
    loop_rate = a.loop_sample / (time.perf_counter() - t)
    print(f"configurations           {a.n:>12,}")
    print(f"feasible                 {int(df.feasible.sum()):>12,}")
    print(f"vectorized  configs/s    {vec_rate:>12,.0f}   ({best:.2f} s, best of 5, one core)")
    print(f"python loop configs/s    {loop_rate:>12,.1f}   (sample of {a.loop_sample})")
    print(f"speed-up                 {vec_rate / loop_rate:>12,.0f}x")
    print(f"target 1,000,000/s       {'met' if vec_rate >= 1e6 else 'NOT met'}")


if __name__ == "__main__":
    main()
