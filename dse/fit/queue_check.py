"""The queueing model against the discrete-event simulation: percentile TTFT and TPOT of a
sample of deployments (agg and disagg, dense and MoE) at loads below saturation.

    python -m dse.fit.queue_check              # the sample, a table and the worst error
    python -m dse.fit.queue_check --requests 40000 --loads 0.3 0.6 0.85

Capacity is the arrival rate at which the queueing model's utilisation reaches 1 (found
by bisection); loads are fractions of it.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from dse.catalog.models import get_model
from dse.deploy.columns import broadcast
from dse.deploy.context import make_context
from dse.deploy.evaluate import evaluate_model
from dse.deploy.openloop import engine_for_rows
from dse.fit.queue_sim import simulate
from dse.model.openloop import Engine, latency_percentiles

__all__ = ["SAMPLE", "LOADS", "engine_for", "capacity", "compare", "main"]

# agg and disagg, dense and MoE, short and long prompts, one and several ranks
SAMPLE = (
    dict(model="meta-llama/Llama-3.1-8B", device="h100_sxm", batch_size=64, isl=1024, osl=256),
    dict(model="meta-llama/Llama-3.1-70B", device="h100_sxm", tp=4, batch_size=128, isl=2048, osl=512),
    dict(model="Qwen/Qwen3-30B-A3B", device="h100_sxm", tp=2, ep=2, batch_size=32, isl=2048, osl=128),
    dict(model="Qwen/Qwen3-30B-A3B", device="b200_sxm", tp=1, dp=2, ep=2, batch_size=64, isl=512, osl=256),
    dict(model="meta-llama/Llama-3.1-70B", device="h100_sxm", mode="disagg", tp=4, decode_workers=2,
         batch_size=64, isl=1024, osl=256),
    dict(model="Qwen/Qwen3-30B-A3B", device="h100_sxm", mode="disagg", tp=2, ep=2, prefill_workers=1,
         decode_workers=2, batch_size=32, isl=4096, osl=256),
)
LOADS = (0.3, 0.6, 0.85)


def engine_for(**columns) -> Engine:
    """The queueing Engine of one configuration (columns as for dse.evaluate)."""
    c, n, vocab = broadcast(columns)
    model = get_model(str(columns["model"]))
    keep: dict = {}
    evaluate_model(model, c, vocab, make_context(), strict=True, keep=keep)
    mode = str(columns.get("mode", "agg"))
    dbatch = np.where(c["decode_batch_size"] > 0, c["decode_batch_size"], c["batch_size"])
    load = c["batch_size"] if mode == "agg" else dbatch * c["decode_workers"]
    return engine_for_rows(model, mode, keep["result"], load, np.arange(n))


def capacity(eng: Engine, steps: int = 40) -> np.ndarray:
    """Requests/s per unit at which the model's utilisation reaches 1."""
    lo, hi = np.zeros(len(eng.slots)), np.full(len(eng.slots), 1.0)
    while True:
        u = latency_percentiles(eng, hi)["utilisation"]
        if np.all(u >= 1.0):
            break
        hi = np.where(u >= 1.0, hi, hi * 4.0)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        below = latency_percentiles(eng, mid)["utilisation"] < 1.0
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return lo


def compare(configs=SAMPLE, loads=LOADS, *, requests: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """One row per (configuration, load): model and simulation p50 / p99 and their errors."""
    rows = []
    for k, cfg in enumerate(configs):
        eng = engine_for(**cfg)
        cap = float(capacity(eng)[0])
        for load in loads:
            rate = load * cap
            got = latency_percentiles(eng, rate)
            sim = simulate(eng, rate_per_s=rate, requests=requests, seed=seed + k)
            row = dict(config=k, model=cfg["model"].split("/")[-1], mode=cfg.get("mode", "agg"), load=load,
                       capacity_per_s=cap)
            for m, q in (("ttft", 50), ("ttft", 99), ("tpot", 50), ("tpot", 99)):
                a, b = float(got[f"{m}_p{q}_ms"][0]), float(np.percentile(sim[f"{m}_ms"], q))
                row[f"{m}_p{q}_model"], row[f"{m}_p{q}_sim"], row[f"{m}_p{q}_err"] = a, b, a / b - 1.0
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dse.fit.queue_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000, help="simulated requests per point")
    ap.add_argument("--loads", type=float, nargs="+", default=list(LOADS), help="fractions of capacity")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    df = compare(loads=args.loads, requests=args.requests, seed=args.seed)
    errs = df[[c for c in df.columns if c.endswith("_err")]]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3g}".format):
        print(df.drop(columns=[c for c in df.columns if c.endswith(("_model", "_sim"))]).to_string(index=False))
    print(f"worst |error|: {float(errs.abs().max().max()):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
