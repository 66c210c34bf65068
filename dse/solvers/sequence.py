"""Float evaluation of a concrete placement: stage times, transfers, memory, latency.

The reference the CP-SAT model (dse.solvers.cpmodel) is checked against: the solver's
placements are re-priced here in floats, and the tests brute-force small cases with it.
"""
from __future__ import annotations

import itertools

import numpy as np

from dse.deploy.opcost import OpCosts

__all__ = ["evaluate_sequence"]


def evaluate_sequence(costs: OpCosts, layers: list[tuple[int, int, int]], embed: int, head: int, *,
                      overlap: bool = False) -> dict:
    """Float stage times, transfers and memory of a concrete placement.

    `layers` lists every layer in model order as (group index, attention pool, FFN pool);
    groups must appear as contiguous runs in `costs.groups` order. The reference the
    solver is checked against (brute force in the tests uses it directly).
    """
    n_p = costs.n_pools
    comp = np.zeros(n_p)
    mem = np.zeros(n_p)
    terms = np.zeros(n_p, dtype=int)
    chain = [embed]
    comp[embed] += costs.embed_time_ms[embed]
    mem[embed] += costs.embed_mem_bytes[embed]
    terms[embed] += 1
    for g, a, f in layers:
        gc = costs.groups[g]
        o1, o2 = gc.ops
        comp[a] += gc.time_ms[o1][a]
        comp[f] += gc.time_ms[o2][f]
        mem[a] += gc.mem_bytes[o1][a]
        mem[f] += gc.mem_bytes[o2][f]
        terms[a] += 1
        terms[f] += 1
        chain += [a, f]
    chain.append(head)
    comp[head] += costs.head_time_ms[head]
    mem[head] += costs.head_mem_bytes[head]
    terms[head] += 1
    if costs.tied_embeddings and head == embed:
        mem[head] -= costs.embed_mem_bytes[embed]
    cross = np.zeros((n_p, n_p), dtype=int)
    for s, d in itertools.pairwise(chain):
        if s != d:
            cross[s, d] += 1
    hops_in, hops_out = cross.sum(axis=0), cross.sum(axis=1)
    # one micro-batch's trip through every op and hop (each hop at its slower side)
    latency = float(comp.sum() + sum(cross[i, j] * max(costs.hop_ms[i], costs.hop_ms[j])
                                     for i in range(n_p) for j in range(n_p) if cross[i, j]))
    xfer = (hops_in + hops_out) * costs.hop_ms
    names = [p.name for p in costs.pools]
    if overlap:
        stage = comp.copy()
        cands = [(float(stage[p]), names[p]) for p in range(n_p)]
        cands += [(float(hops_in[p] * costs.hop_ms[p]), f"{names[p]} NIC in") for p in range(n_p)]
        cands += [(float(hops_out[p] * costs.hop_ms[p]), f"{names[p]} NIC out") for p in range(n_p)]
        terms = np.maximum(np.maximum(terms, hops_in), hops_out)
    else:
        stage = comp + xfer
        cands = [(float(stage[p]), names[p]) for p in range(n_p)]
        terms = terms + hops_in + hops_out
    worst, name = max(cands, key=lambda c: c[0])
    used = np.zeros(n_p, dtype=bool)
    used[list(set(chain))] = True
    return {"compute_ms": comp, "transfer_ms": xfer, "stage_ms": stage, "crossings": cross,
            "memory_bytes": mem, "fits": bool(np.all(mem <= costs.capacity_bytes)), "bottleneck_ms": worst,
            "bottleneck": name, "used": used, "terms": terms, "latency_ms": latency}
