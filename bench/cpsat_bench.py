"""Wall times of the CP-SAT placement and sizing (single worker, seed 0).

    python bench/cpsat_bench.py [--quick]

Targets (issue): placement of a 61-layer MoE on 3 pools proved optimal in < 2 s;
sizing of a 6-device-type, 4-class instance proved optimal in < 5 s. Times are the
solver calls only (engine op costs / goodput tables are built first and reported apart).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

from dse.catalog.models import get_model
from dse.errors import DSEError
from dse.solvers import sizing
from dse.deploy.opcost import op_costs, parse_pool
from dse.solvers.placement import place

ROOT = Path(__file__).resolve().parents[1]
THREE_POOLS = (["h20:16", "h100_sxm:8", "b200_sxm:8"], ["h20:8", "h200_sxm:8", "mi300x:8"],
               ["h100_sxm:16", "h200_sxm:8", "b200_sxm:16"], ["a100_sxm:16", "h20:16", "gb200:8"])


def bench_place(quick: bool) -> None:
    print("placement (op-level, CP-SAT)")
    m = get_model("deepseek-ai/DeepSeek-V3")
    t = time.perf_counter()
    costs = op_costs(m, [parse_pool(p) for p in THREE_POOLS[0]], batch=64)
    t_costs = time.perf_counter() - t
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        r = place(costs)
        runs.append((time.perf_counter() - t, r))
    same = all(x[1].layers == runs[0][1].layers and x[1].bottleneck_ms == runs[0][1].bottleneck_ms for x in runs)
    best = min(x[0] for x in runs)
    print(f"  DeepSeek-V3 (61 layers, MoE) on {' + '.join(THREE_POOLS[0])}, decode b64: {runs[0][1].status}, "
          f"bottleneck {runs[0][1].bottleneck_ms:.3f} ms, solve {best:.3f} s (best of 3; op costs {t_costs:.2f} s), "
          f"deterministic across runs: {same}")
    t = time.perf_counter()
    r = place(costs, tiebreak=False)
    print(f"  same, optimum only (no tie-break solve): {time.perf_counter() - t:.3f} s, {r.status}")
    # sweep: 3 pools x phases x batches x overlap, two 61-layer MoE models
    for npools, pool_sets in ((3, THREE_POOLS), (4, (["h20:16", "h100_sxm:8", "b200_sxm:8", "h200_sxm:8"],)),
                              (5, (["h20:16", "h100_sxm:8", "b200_sxm:8", "h200_sxm:8", "mi300x:8"],))):
        if quick and npools > 3:
            break
        times, proved = [], 0
        models = ("deepseek-ai/DeepSeek-V3",) if quick else ("deepseek-ai/DeepSeek-V3", "moonshotai/Kimi-K2-Instruct")
        for mid in models:
            model = get_model(mid)
            for pools in pool_sets:
                for phase, batches in (("decode", (1, 16, 64, 256)), ("prefill", (1, 4))):
                    for b in batches:
                        c = op_costs(model, [parse_pool(p) for p in pools], batch=b, phase=phase)
                        for ov in (False, True):
                            t = time.perf_counter()
                            r = place(c, overlap=ov)
                            times.append(time.perf_counter() - t)
                            proved += r.status == "OPTIMAL"
        print(f"  sweep, {npools} pools ({len(times)} instances: {', '.join(m.split('/')[1] for m in models)}; "
              f"decode b1-256 and prefill; transfers serial and overlapped): proved {proved}/{len(times)}, "
              f"median {statistics.median(times):.3f} s, max {max(times):.3f} s")


def bench_size() -> None:
    print("sizing (hardware mix, CP-SAT)")
    t = time.perf_counter()
    scn = sizing.load_sizing(ROOT / "search_spaces" / "sizing_example.yaml")
    prob = sizing.build_problem(scn)
    t_build = time.perf_counter() - t
    ndev = len({v for d in prob.deployments for v in d.gpus})
    for objective in ("cost", "energy"):
        p = dataclasses.replace(prob, objective=objective)
        t = time.perf_counter()
        r = sizing.solve_sizing(p)
        dt = time.perf_counter() - t
        print(f"  {scn['name']}: {ndev} device types, {len(prob.classes)} classes, {len(prob.deployments)} "
              f"deployments, objective {objective}: {r.status}, solve {dt:.3f} s (engine goodput table {t_build:.2f} s)")
    t = time.perf_counter()
    p = dataclasses.replace(prob, limits=dataclasses.replace(prob.limits, power_kw=150.0))
    try:
        sizing.solve_sizing(p)
    except DSEError as exc:  # the explanation is the point
        print(f"  infeasible variant (power_kw 150) explained in {time.perf_counter() - t:.3f} s: {str(exc)[:110]}...")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3-pool sweep on one model only")
    a = ap.parse_args()
    bench_place(a.quick)
    bench_size()


if __name__ == "__main__":
    main()
