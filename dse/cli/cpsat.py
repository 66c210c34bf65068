"""`dse place` and `dse size`: the CP-SAT placement and sizing commands.

Wired into dse/cli.py with one line: `cli_cpsat.add_parsers(sub)`.
"""
from __future__ import annotations

import argparse

from dse.errors import DSEError
from dse.io import to_json

__all__ = ["add_parsers", "cmd_place", "cmd_size"]


def add_parsers(sub) -> None:
    """Register `place` and `size` on an argparse subparsers object."""
    pl = sub.add_parser("place", help="optimal op-level placement of a model over device pools (CP-SAT)",
                        description="Assign each layer's attention and FFN/experts, the embedding and the LM head "
                                    "to device pools so the slowest pool (pipeline stage) is as fast as possible.")
    pl.add_argument("--model", required=True, help="Hugging Face id, alias or config.json path")
    pl.add_argument("--pool", action="append", required=True, metavar="DEVICE:COUNT[,tp=N,dp=N,ep=N,name=L]",
                    help="a device pool; repeat for each pool (1-5; one pool holds the whole model: a "
                         "baseline)")
    pl.add_argument("--objective", default="bottleneck", choices=["bottleneck", "tokens_per_usd"])
    pl.add_argument("--pin", action="append", default=[], metavar="OP=POOL",
                    help="force an op group onto a pool: attn, ffn, moe, embed, lm_head, or gN.OP for one layer "
                         "group (repeatable)")
    pl.add_argument("--batch-size", type=int, default=64, help="sequences per step (default 64)")
    pl.add_argument("--isl", type=int, default=1024)
    pl.add_argument("--osl", type=int, default=256)
    pl.add_argument("--phase", default="decode", choices=["decode", "prefill"])
    pl.add_argument("--weight-dtype", default="native")
    pl.add_argument("--kv-dtype", default="bf16")
    pl.add_argument("--routing-skew", type=float, default=0.0)
    pl.add_argument("--rent", dest="own", action="store_false", help="rent instead of own (tokens per $)")
    pl.add_argument("--overlap", action="store_true",
                    help="transfers overlap compute (ping-pong); NICs become resources of their own")
    pl.add_argument("--time-limit", type=float, default=10.0, help="seconds (default 10)")
    pl.add_argument("--json", action="store_true", help="print JSON")
    pl.set_defaults(func=cmd_place)

    sz = sub.add_parser("size", help="cheapest hardware mix for a demand under power/budget/availability (CP-SAT)",
                        description="Choose integer counts of deployments (device x parallelism x mode) covering "
                                    "every demand class within its SLO, at least cost per hour (or power).")
    sz.add_argument("space", help="sizing scenario YAML (search_spaces/sizing_*.yaml)")
    sz.add_argument("--objective", choices=["cost", "energy"], help="override the scenario's objective")
    sz.add_argument("--power-basis", choices=["nameplate", "measured"],
                    help="power limit accounting (default from the file, else nameplate)")
    sz.add_argument("--power-oversubscription", action="store_true",
                    help="report how many more servers fit under the power limit with measured phase-aware power "
                         "instead of nameplate TDP")
    sz.add_argument("--time-limit", type=float, default=10.0, help="seconds (default 10)")
    sz.add_argument("--json", action="store_true", help="print JSON")
    sz.set_defaults(func=cmd_size)


def _pins(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        op, sep, pool = it.partition("=")
        if not sep or not op.strip() or not pool.strip():
            raise DSEError(f"--pin {it!r}: expected OP=POOL, e.g. attn=h100_sxm")
        out[op.strip()] = pool.strip()
    return out


def _ranges(layers) -> list[tuple[int, int, tuple]]:
    """Runs of identical (group, attention pool, FFN pool) in layer order."""
    runs: list[list] = []
    for i, lay in enumerate(layers):
        if runs and runs[-1][2] == lay:
            runs[-1][1] = i
        else:
            runs.append([i, i, lay])
    return [(a, b, lay) for a, b, lay in runs]


def cmd_place(a: argparse.Namespace) -> int:
    from dse.catalog.models import get_model
    from dse.deploy.opcost import op_costs, parse_pool
    from dse.solvers.placement import SCALE, place

    model = get_model(a.model)
    pools = [parse_pool(p) for p in a.pool]
    costs = op_costs(model, pools, batch=a.batch_size, isl=a.isl, osl=a.osl, phase=a.phase,
                     weight_dtype=a.weight_dtype, kv_dtype=a.kv_dtype, routing_skew=a.routing_skew, own=a.own)
    r = place(costs, objective=a.objective, pins=_pins(a.pin), overlap=a.overlap, time_limit=a.time_limit)
    if a.json:
        print(to_json(r.as_dict()))
        return 0
    names = r.pools
    ctx = f"isl {a.isl:g}" + (f" + osl {a.osl:g}" if a.phase == "decode" else "")
    print(f"{model.id}: {a.phase} step of {a.batch_size} sequences ({ctx}), objective {a.objective}"
          f"{', transfers overlapped' if a.overlap else ''}")
    print()
    w = max(8, *(len(n) for n in names))
    print(f"{'pool':<{w}} {'GPUs':>4} {'tp':>3} {'dp':>3} {'ep':>3} {'compute ms':>10} {'transfer ms':>11} "
          f"{'stage ms':>9} {'hops in/out':>11} {'mem GB/GPU':>10} {'usable':>7} {'$/h':>7}")
    hin, hout = r.crossings.sum(axis=0), r.crossings.sum(axis=1)
    for i, p in enumerate(costs.pools):
        mark = "  <- bottleneck" if r.bottleneck == p.name else ("" if r.used[i] else "  (unused)")
        print(f"{p.name:<{w}} {p.count:>4} {p.tp:>3} {p.dp:>3} {p.ep:>3} {r.compute_ms[i]:>10.3f} "
              f"{r.transfer_ms[i]:>11.3f} {r.stage_ms[i]:>9.3f} {f'{hin[i]}/{hout[i]}':>11} {r.memory_gb[i]:>10.1f} "
              f"{r.capacity_gb[i]:>7.1f} {costs.usd_per_hour[i]:>7.2f}{mark}")
    print()
    k = int(r.used.sum())
    print(f"bottleneck: {r.bottleneck}, {r.bottleneck_ms:.3f} ms per step -> {r.tokens_per_s:,.0f} tokens/s "
          f"({r.bottleneck_ms / costs.tokens_per_step * 1e3:.2f} us per token); {k} micro-batch"
          f"{'es' if k > 1 else ''} of {a.batch_size} in flight, each step {r.latency_ms:.3f} ms end to end")
    print(f"cost: {r.usd_per_hour:,.2f} $/h for the pools in use -> {r.tokens_per_usd:,.0f} tokens per $")
    hop = ", ".join(f"{n} {h * 1e3:.1f} us" for n, h in zip(names, costs.hop_ms))
    hops = ", ".join(f"{names[i]}->{names[j]} {int(r.crossings[i, j])}"
                     for i in range(len(names)) for j in range(len(names)) if r.crossings[i, j])
    print(f"transfers: {int(r.crossings.sum())} hops per step ({hops or 'none'}); one hop occupies {hop}")
    if r.status == "OPTIMAL":
        print(f"status: OPTIMAL (proved; {r.solves} CP-SAT solve{'s' if r.solves > 1 else ''}, {r.solve_s:.2f} s)")
    else:
        print(f"status: FEASIBLE, not proved optimal within {a.time_limit:g} s: gap {r.gap * 100:.3f}% "
              f"(bottleneck >= {r.bound_ms:.3f} ms)")
    print(f"integer scaling: times in units of {1e6 / SCALE:g} ns; |scaled - float| <= "
          f"{r.rounding_bound_ms * 1e3:.3f} us per stage (solver saw {r.scaled_bottleneck_ms:.6f} ms)")
    print()
    print(f"embedding -> {names[r.embed_pool]}, lm_head -> {names[r.head_pool]}")
    for gc, cnt in zip(costs.groups, r.counts):
        parts = "; ".join(f"{gc.ops[0]} {names[x]} / {gc.ops[1]} {names[y]}: {n}" for (x, y), n in sorted(cnt.items()))
        print(f"g{gc.index} {gc.label} ({gc.count} layers): {parts}")
    print()
    print("layer order:")
    for lo, hi, (g, x, y) in _ranges(r.layers):
        gc = costs.groups[g]
        span = f"{lo}" if lo == hi else f"{lo}-{hi}"
        print(f"  layers {span:<7} g{g}  {gc.ops[0]} {names[x]:<{w}}  {gc.ops[1]} {names[y]}")
    return 0


def cmd_size(a: argparse.Namespace) -> int:
    import dataclasses

    from dse.solvers import sizing

    scn = sizing.load_sizing(a.space)
    prob = sizing.build_problem(scn)
    if a.objective:
        prob = dataclasses.replace(prob, objective=a.objective)
    if a.power_basis:
        prob = dataclasses.replace(prob, power_basis=a.power_basis)
    r = sizing.solve_sizing(prob, time_limit=a.time_limit)
    over = sizing.power_oversubscription(prob, r, time_limit=a.time_limit) if a.power_oversubscription else None
    if a.json:
        out = r.as_dict()
        if over is not None:
            alt = over["resolved_measured"]
            over = {**over, "resolved_measured": alt if isinstance(alt, str) else alt.as_dict()}
            out["power_oversubscription"] = over
        print(to_json(out))
        return 0
    by = {d.name: d for d in prob.deployments}
    print(f"{scn['name']}: {scn['model']}, {len(prob.deployments)} candidate deployments, objective {prob.objective} "
          f"({'own' if scn['own'] else 'rent'})")
    print()
    w = max(10, *(len(n) for n in r.counts))
    print(f"{'deployment':<{w}} {'n':>4} {'GPUs':>5} {'$/h':>9} {'kW name':>8} {'kW meas':>8} {'capex $':>12}  "
          "replicas' worth per class")
    for name, n in sorted(r.counts.items(), key=lambda kv: -kv[1]):
        d = by[name]
        serves = ", ".join(f"{cls} {share:.2f} (batch {d.batch.get(cls, 0)}, {d.goodput_rps[cls]:.2f} req/s per replica)"
                           for (dn, cls), share in r.shares.items() if dn == name)
        print(f"{name:<{w}} {n:>4} {n * d.num_gpus:>5} {n * d.usd_per_hour:>9.2f} {n * d.nameplate_w / 1e3:>8.1f} "
              f"{n * d.power_w / 1e3:>8.1f} {n * d.capex_usd:>12,.0f}  {serves}")
    print()
    print(f"cost: {r.usd_per_hour:,.2f} $/h; capex {r.capex_usd:,.0f} $; power {r.power_kw_nameplate:,.1f} kW nameplate, "
          f"{r.power_kw_measured:,.1f} kW measured (phase-aware); GPUs "
          + ", ".join(f"{v} {g}" for v, g in sorted(r.gpus.items())))
    print("demand: " + "; ".join(f"{c.name} {c.rps:g} req/s, assigned {r.capacity_rps[c.name]:.2f} "
                                f"(headroom {r.headroom[c.name] * 100:+.1f}% with the spare capacity)"
                                for c in prob.classes))
    if r.limits_used:
        print("limits: " + "; ".join(f"{k} {u:,.4g} of {lim:,.4g} ({(lim - u) / lim * 100 if lim else 0:.1f}% free)"
                                     for k, (u, lim) in r.limits_used.items()))
    if r.status == "OPTIMAL":
        print(f"status: OPTIMAL (proved, gap 0; {r.solve_s:.2f} s); cost rounding <= {r.rounding_bound:.4g} "
              f"{'$/h' if prob.objective == 'cost' else 'W'}")
    else:
        print(f"status: FEASIBLE, gap {r.gap * 100:.3f}% (objective >= {r.bound:,.4g}) after {a.time_limit:g} s")
    if over is not None:
        print()
        print(f"power oversubscription under {over['power_limit_kw']:g} kW: the mix draws "
              f"{over['mix_kw_nameplate']:.1f} kW nameplate but {over['mix_kw_measured']:.1f} kW measured "
              f"(x{over['nameplate_over_measured']:.3f}); servers of this mix that fit: "
              f"{over['mix_servers_fit_nameplate']} by nameplate, {over['mix_servers_fit_measured']} by measured "
              f"power: {over['more_servers']:+d} servers")
        for v, row in over["per_device"].items():
            print(f"  {v}: node {row['node_kw_nameplate']:.2f} kW nameplate / {row['node_kw_measured']:.2f} kW measured"
                  f" -> {row['servers_nameplate']} vs {row['servers_measured']} servers ({row['more_servers']:+d})")
        alt = over["resolved_measured"]
        if isinstance(alt, str):
            print(f"  re-solved with measured power: {alt}")
        else:
            print(f"  re-solved with measured power: {alt.usd_per_hour:,.2f} $/h ({alt.usd_per_hour - r.usd_per_hour:+,.2f}), "
                  + ", ".join(f"{n} x {k}" for k, n in alt.counts.items()))
    return 0
