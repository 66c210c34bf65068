"""Engine throughput: configurations per second through the whole `dse.evaluate` path.

One command: `python bench/engine_bench.py [--n 1000000] [--case all]`. Each case evaluates N
configurations in one vectorized call, pinned to one core (CPU time, best of 5), and compares
with a plain Python loop calling `evaluate` one configuration at a time over a sample of the
same configurations, measured in the same run:
  dense_agg         random columns of a dense 70B model (devices, TP, batch, formats, lengths);
  moe_disagg        a MoE (Qwen3-235B-A22B) prefill/decode space as a sweep enumerates it:
                    prefill pools x decode pools x worker counts x KV formats, in grid order;
  moe_disagg_random the same columns drawn independently per row (no pool repeats to share).
Targets (issue #15): >= 2,000,000/s dense agg, >= 1,500,000/s MoE disagg.

`--baseline DIR` also imports the dse package of another checkout (e.g. a worktree of main)
into the same process and times both alternately on the same columns, printing the ratio
(the two read the same data files: this checkout's hardware/).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

import numpy as np


MOE = "Qwen/Qwen3-235B-A22B"
DEVICES = ["h100_sxm", "h200_sxm", "b200_sxm"]
PREFILL = dict(prefill_device=DEVICES, prefill_tp=[1, 2, 4, 8], prefill_ep=[1, 2, 4, 8])
DECODE = dict(decode_device=DEVICES, decode_tp=[1, 2, 4, 8], decode_dp=[1, 2, 4, 8], decode_ep=[1, 4, 8, 16],
              decode_batch_size=[8, 16, 32, 64, 128, 256, 512])
WORKERS = dict(prefill_workers=[1, 2, 3, 4], decode_workers=[1, 2, 4], kv_dtype=["bf16", "fp8"])
MOE_FIXED = dict(model=MOE, mode="disagg", device="h200_sxm", weight_dtype="fp8", isl=4096, osl=1024)


def moe_disagg(n: int, seed: int = 0) -> dict:
    """The first n rows of the prefill x decode x workers product (grid order, last axis fastest),
    repeated if n exceeds it."""
    axes = {**PREFILL, **DECODE, **WORKERS}
    sizes = [len(v) for v in axes.values()]
    idx = np.unravel_index(np.arange(n) % int(np.prod(sizes)), sizes)
    return {**MOE_FIXED, **{k: np.asarray(v)[i] for (k, v), i in zip(axes.items(), idx)}}


def moe_disagg_random(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    axes = {**PREFILL, **DECODE, **WORKERS}
    return {**MOE_FIXED, **{k: rng.choice(np.asarray(v), n) for k, v in axes.items()}}


def configs(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return dict(model="meta-llama/Llama-3.1-70B",
                device=rng.choice(["h100_sxm", "h200_sxm", "b200_sxm", "mi300x", "a100_sxm"], n),
                tp=rng.choice([1, 2, 4, 8], n), batch_size=rng.integers(1, 512, n),
                weight_dtype=rng.choice(["bf16", "fp8", "fp4"], n), kv_dtype=rng.choice(["bf16", "fp8"], n),
                isl=rng.choice([512, 1024, 2048, 8192], n), osl=rng.choice([128, 256, 1024], n))


CASES = {"dense_agg": (configs, 2e6), "moe_disagg": (moe_disagg, 1.5e6), "moe_disagg_random": (moe_disagg_random, 1.5e6)}


def _baseline(path: str):
    """dse.evaluate of the checkout at `path`, imported beside this one (its modules swapped
    in for the import only)."""
    mine = {m: sys.modules.pop(m) for m in list(sys.modules) if m == "dse" or m.startswith("dse.")}
    sys.path.insert(0, path)
    try:
        other = importlib.import_module("dse")
        evaluate = other.evaluate        # resolved now: dse's lazy attribute imports from sys.modules
    finally:
        sys.path.remove(path)
        for m in [m for m in sys.modules if m == "dse" or m.startswith("dse.")]:
            del sys.modules[m]
        sys.modules.update(mine)
    if not Path(other.__file__).resolve().is_relative_to(Path(path).resolve()):
        raise SystemExit(f"--baseline {path}: no dse package there (imported {other.__file__})")
    if not Path(evaluate.__code__.co_filename).resolve().is_relative_to(Path(path).resolve()):
        raise SystemExit(f"--baseline {path}: its evaluate came from {evaluate.__code__.co_filename}")
    return evaluate


def run(name: str, n: int, loop_sample: int, baseline=None) -> None:
    import dse

    make, target = CASES[name]
    cols = make(n)
    fns = {"this": dse.evaluate, **({"baseline": baseline} if baseline else {})}
    for f in fns.values():
        f(strict=False, **{k: (v[:1000] if isinstance(v, np.ndarray) else v) for k, v in cols.items()})
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(5):
        for k, f in fns.items():     # alternately: both see the same machine load
            # CPU time, not wall: the machine's cores are shared, and waiting for one is no engine cost
            t = time.process_time()
            df = f(strict=False, **cols)
            best[k] = min(best[k], time.process_time() - t)
    vec_rate = n / best["this"]
    t = time.process_time()
    for i in range(loop_sample):
        dse.evaluate(strict=False, **{k: (v[i] if isinstance(v, np.ndarray) else v) for k, v in cols.items()})
    loop_rate = loop_sample / (time.process_time() - t)
    print(f"[{name}]")
    print(f"configurations           {n:>12,}")
    print(f"feasible                 {int(df.feasible.sum()):>12,}")
    print(f"vectorized  configs/s    {vec_rate:>12,.0f}   ({best['this']:.2f} s CPU, best of 5, one core)")
    if baseline:
        print(f"baseline    configs/s    {n / best['baseline']:>12,.0f}   (same run; this / baseline "
              f"{best['baseline'] / best['this']:.2f}x)")
    print(f"python loop configs/s    {loop_rate:>12,.1f}   (sample of {loop_sample})")
    print(f"speed-up                 {vec_rate / loop_rate:>12,.0f}x")
    print(f"target {target:>11,.0f}/s     {'met' if vec_rate >= target else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--loop-sample", type=int, default=300)
    ap.add_argument("--case", choices=["all", *CASES], default="all")
    ap.add_argument("--baseline", help="another checkout's directory, timed in the same run")
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    base = _baseline(a.baseline) if a.baseline else None
    for name in (CASES if a.case == "all" else [a.case]):
        run(name, a.n, a.loop_sample, base)


if __name__ == "__main__":
    main()
