"""`evaluate`: configuration columns in, deployment metric columns out, in chunks of rows
that stay in the CPU's cache, one vectorized path per (model, mode)."""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import numpy as np
import pandas as pd

from dse.catalog.devices import get_device
from dse.catalog.models import Model, get_model
from dse.catalog.runtime import engine_limit, routing_skew_of
from dse.catalog.quality import quality_loss
from dse.deploy.columns import broadcast, check_categories, code_of, vocab_key
from dse.deploy import intervals, kvcache, openloop, roles
from dse.deploy.context import Context, make_context
from dse.deploy.modes import MODES
from dse.deploy.pools import Pools
from dse.deploy.reasons import Reasons
from dse.errors import DSEError
from dse.model import cost, dedupe, serving
from dse.schema import BOTTLENECKS, METRICS, NON_NUMERIC_METRICS, STRING_COLUMNS

__all__ = ["evaluate", "evaluate_columns", "evaluate_model", "guard_output", "space_memo", "CHUNK_ROWS",
           "INF_METRICS", "STRICT_OUTPUT_ENV"]

# Rows are evaluated in chunks of this many: the model's ~2,000 array passes then work on
# arrays that stay in the CPU's L2 cache (1M rows at once: ~1.5 s; in chunks of 32k: ~1.0 s).
CHUNK_ROWS = 32_768
GOODPUT_STEPS = 7   # bisection steps over log2(concurrency): the answer is within 2^(log2 C / 2^7)
_NOT_COMPUTED = ("feasible", "infeasible_reason", "bottleneck")
# metrics whose documented value may be +inf on a feasible row: the cost at the SLO when no
# load meets the SLO (goodput 0: no token is worth paying for). NaN is never a value.
INF_METRICS = ("usd_per_mtok_at_slo",)
# set (tests/conftest.py does) to make a NaN / inf metric on a feasible row raise, not flag
STRICT_OUTPUT_ENV = "DSE_STRICT_OUTPUT"


def evaluate(*, strict: bool = True, facility=None, serving_runtime: dict | None = None,
             **columns: Any) -> pd.DataFrame:
    """Evaluate configurations given as columns; see dse.schema.COLUMNS for names and defaults.

    With strict=True (the default) a configuration that cannot exist (a TP size that
    does not divide the attention heads, an unknown id) raises DSEError; the search
    passes strict=False to get such rows back flagged infeasible instead. `facility` (a
    dse.catalog.facility.Facility) and `serving_runtime` replace the shipped defaults.
    """
    ctx = make_context(facility=facility, serving=serving_runtime)
    cols, n, vocab = broadcast(columns)
    return evaluate_columns(cols, n, vocab, ctx, strict=strict)


def space_memo() -> contextlib.AbstractContextManager:
    """Within: consecutive evaluate_columns calls share the phases priced once per distinct
    row (dedupe.call_memo), as one call's chunks do. Only for calls of one search space (the
    same vocabulary, context and models: a grid's chunks), whose codes mean the same things."""
    return dedupe.call_memo()


def evaluate_columns(cols: dict, n: int, vocab: dict, ctx: Context, *, strict: bool) -> pd.DataFrame:
    """evaluate() on columns already broadcast (dse.deploy.columns.broadcast)."""
    check_categories(cols, vocab, ctx.serving["backends"])
    out: dict[str, Any] = {}
    for name, arr in cols.items():
        if name in STRING_COLUMNS:
            words = vocab[vocab_key(name)]
            out[name] = pd.Categorical.from_codes(np.asarray(arr), categories=pd.Index(words, dtype=object))
        else:
            out[name] = np.asarray(arr)
    metrics = _output_arrays([m for m in METRICS if m not in _NOT_COMPUTED], n)
    reasons = Reasons(n)
    bottleneck = np.zeros(n, dtype=np.int8)
    suspect = _evaluate_chunks(cols, n, vocab, ctx, metrics, reasons, bottleneck, strict=strict)
    guard_output(metrics, reasons, cols, vocab, suspect=suspect)
    out.update(metrics)
    out["num_gpus"] = out["num_gpus"].astype(np.int64)
    out["meets_slo"] = out["meets_slo"].astype(bool)
    out["feasible"] = reasons.codes == 0
    out["infeasible_reason"] = reasons.categorical()
    out["bottleneck"] = pd.Categorical.from_codes(bottleneck, categories=BOTTLENECKS)
    out["infeasible_code"] = reasons.kind_categorical()
    return pd.DataFrame(out, copy=False)   # fresh arrays: no need to copy them into one block


def _output_arrays(names: list[str], n: int) -> dict[str, np.ndarray]:
    """Zeroed metric columns, rows of one block: the kernel maps one large region (huge
    pages where it can) instead of one per column, and a call's ~45 x n x 8 bytes of
    output are written with far fewer page faults (up to a fifth of a call's CPU time)."""
    return dict(zip(names, np.zeros((len(names), n))))


def _suspect(metrics: dict[str, np.ndarray]) -> set[str]:
    """Metrics that may hold a NaN or inf: one reduction each (NaN and inf propagate through a
    sum, an overflow only costs the exact per-row look; min keeps inf, so only NaN shows)."""
    with np.errstate(all="ignore"):
        return {m for m, v in metrics.items() if m not in NON_NUMERIC_METRICS and np.size(v) and
                (np.isnan(np.min(v)) if m in INF_METRICS else not np.isfinite(np.sum(v)))}


def guard_output(metrics: dict[str, np.ndarray], reasons: Reasons, cols: dict, vocab: dict, *,
                 suspect: set[str] | None = None) -> None:
    """No feasible row leaves the engine with a NaN or infinite metric: such a row is flagged
    infeasible ("numeric"), or, with $DSE_STRICT_OUTPUT set, is an engine bug that raises.
    `suspect`: the metrics _suspect() found (per chunk, while the rows sat in cache)."""
    suspect = _suspect(metrics) if suspect is None else suspect
    for m in sorted(suspect, key=list(metrics).index):
        v = metrics[m]
        bad = (np.isnan(v) if m in INF_METRICS else ~np.isfinite(v)) & (reasons.codes == 0)
        if not bad.any():
            continue
        i = int(np.flatnonzero(bad)[0])
        if os.environ.get(STRICT_OUTPUT_ENV, "") not in ("", "0"):
            row = {k: (str(vocab[vocab_key(k)][a[i]]) if k in STRING_COLUMNS else float(a[i]))
                   for k, a in cols.items() if k in STRING_COLUMNS or float(a[i]) != 0}
            raise RuntimeError(f"engine output guard: feasible row {i} has {m} = {v[i]} "
                               f"({int(bad.sum())} such rows); configuration: {row}")
        reasons.flag(bad, "numeric", f"numeric: {m} is not a finite number (NaN or inf from the inputs)")
    if suspect:
        flagged = reasons.of_kind("numeric")
        for m, fill in (("meets_slo", 0.0), ("goodput_tokens_per_s", 0.0), ("usd_per_mtok_at_slo", np.inf)):
            metrics[m][flagged] = fill


def _evaluate_chunks(cols, n, vocab, ctx, metrics, reasons, bottleneck, *, strict: bool) -> set[str]:
    """Each model's rows, CHUNK_ROWS at a time, into the output arrays; returns the metrics
    that may hold a NaN or inf somewhere (for guard_output). Phases priced once per distinct
    row are kept across the chunks (dedupe.call_memo): a sweep's chunks share most pools."""
    with dedupe.call_memo() if n > CHUNK_ROWS else contextlib.nullcontext():
        return _chunks(cols, n, vocab, ctx, metrics, reasons, bottleneck, strict=strict)


def _chunks(cols, n, vocab, ctx, metrics, reasons, bottleneck, *, strict: bool) -> set[str]:
    suspect: set[str] = set()
    model_codes = cols["model"]
    codes = _codes_in(model_codes)
    for code in codes:
        rows = np.nonzero(model_codes == code)[0] if len(codes) > 1 else None
        model = get_model(str(vocab["model"][code]))
        size = n if rows is None else rows.size
        for start in range(0, size, CHUNK_ROWS):
            part = (slice(start, min(start + CHUNK_ROWS, size)) if rows is None
                    else rows[start:start + CHUNK_ROWS])
            sub = {k: v[part] for k, v in cols.items()}
            res, sub_reasons = evaluate_model(model, sub, vocab, ctx, strict=strict)
            reasons.merge(part, sub_reasons)
            bottleneck[part] = res.pop("bottleneck")
            suspect |= _suspect(res)
            for k, v in res.items():
                metrics[k][part] = v
    return suspect


def _codes_in(col: np.ndarray) -> np.ndarray:
    """np.unique of a code column; a broadcast scalar's one code without sorting its rows."""
    return col[:1] if col.size and not col.strides[0] else np.unique(col)


def _spec(c: dict[str, np.ndarray], runtime: dict) -> serving.Spec | None:
    """Speculative decoding of the rows, or None when no row drafts (the plain decode path)."""
    if not np.any(c["spec_tokens"] > 0):
        return None
    acc = np.asarray(c["spec_acceptance"], dtype=float)
    return serving.Spec(tokens=c["spec_tokens"], accept=np.where(np.isnan(acc), runtime["spec_acceptance"], acc))


def _runtime_arrays(c: dict[str, np.ndarray], vocab: dict[str, np.ndarray], table: dict) -> serving.Runtime:
    """The serving-framework constants of each row (fitted per backend), and the engine's
    limits (its defaults on the row's device, runtime.yaml engine_limits, unless the row
    sets max_num_tokens)."""
    names = [str(w) or "default" for w in vocab["backend"]]
    cols = {k: np.array([table[nm][k] for nm in names])[c["backend"]] for k in ("request_ms", "step_ms")}
    n_dev = len(vocab["device"])
    key = np.asarray(c["backend"], dtype=np.int64) * n_dev + np.asarray(c["device"], dtype=np.int64)
    table_lut = np.zeros((len(vocab["backend"]) * n_dev, 2))
    for k in np.flatnonzero(np.bincount(key, minlength=len(table_lut))):      # the pairs present
        table_lut[k] = _engine_limit(str(vocab["backend"][k // n_dev]), str(vocab["device"][k % n_dev]))
    seqs, tokens = table_lut[key, 0], table_lut[key, 1]
    own = np.asarray(c["max_num_tokens"], dtype=float)
    rounds = np.asarray(c["bench_rounds"], dtype=float)
    return serving.Runtime(rounds=np.maximum(rounds, 1.0), max_tokens=np.where(own > 0, own, tokens), max_seqs=seqs,
                           **cols)


def _moe_kernels(c: dict[str, np.ndarray], vocab: dict[str, np.ndarray], table: dict) -> tuple[tuple, np.ndarray]:
    """The MoE kernel variant each row's backend runs (fitted per backend; "" = the plain
    kernel): the variants' names and each row's code into them."""
    per_backend = [table.get(str(w) or "default", {}).get("moe_kernel", "") for w in vocab["backend"]]
    names = tuple(sorted(set(per_backend) | {""}))
    return names, np.array([names.index(k) for k in per_backend], dtype=np.int64)[c["backend"]]


def _engine_limit(backend: str, device: str) -> tuple[float, float]:
    dev = get_device(device)
    return engine_limit(backend, dev.id, dev.memory_gb)


def _by_mode(model, c, vocab, ctx, strict, modes) -> tuple[dict[str, np.ndarray], Reasons]:
    out: dict[str, np.ndarray] = {}
    reasons = Reasons(len(c["mode"]))
    for code in modes:
        rows = np.nonzero(c["mode"] == code)[0]
        res, sub = evaluate_model(model, {k: v[rows] for k, v in c.items()}, vocab, ctx, strict=strict)
        reasons.merge(rows, sub)
        for k, v in res.items():
            out.setdefault(k, np.empty(len(c["mode"]), dtype=v.dtype))[rows] = v
    return out, reasons


def evaluate_model(model: Model, c: dict[str, np.ndarray], vocab: dict[str, np.ndarray], ctx: Context, *,
                   strict: bool, keep: dict | None = None) -> tuple[dict[str, np.ndarray], Reasons]:
    """Metric arrays and reasons for rows of one model (each mode its own vectorized path).
    `keep`, when given, receives the serving result and the pools (for explain)."""
    modes = _codes_in(c["mode"])
    if len(modes) > 1:
        return _by_mode(model, c, vocab, ctx, strict, modes)
    mode = str(vocab["mode"][modes[0]])
    pools = Pools(model, c, vocab, ctx.runtime, moe_kernels=_moe_kernels(c, vocab, ctx.serving["backends"]))
    skew = routing_skew_of(c["routing_skew"], ctx.serving)
    common = dict(isl=c["isl"], osl=c["osl"], prefix_hit=c["prefix_hit"], skew=skew, coeffs=ctx.power,
                  rt=_runtime_arrays(c, vocab, ctx.serving["backends"]), spec=_spec(c, ctx.runtime))
    res, used, load = MODES[mode](model, pools, c, code_of(vocab, "device", ""), common)
    reasons = pools.reasons
    cache = kvcache.metrics(res, c, vocab, mode, reasons)
    first = reasons.first()
    if strict and first and first[1] not in ("memory", "kv_capacity"):
        raise DSEError(f"evaluate: {model.id}: {_layout_text(model, c, mode, first[0])}: {first[2]}")
    if keep is not None:
        keep.update(result=res, pools=pools)
    bottleneck = _bottleneck(*res.steps["decode"], reasons)
    factors = intervals.intervals({
        "mode": _one_word(mode), "backend": pd.Categorical.from_codes(c["backend"], categories=vocab["backend"]),
        "bottleneck": pd.Categorical.from_codes(bottleneck, categories=BOTTLENECKS), **intervals.model_flags(model),
        "concurrency": np.asarray(load, dtype=float), "isl": c["isl"], "osl": c["osl"],
        "ttft": res.ttft_ms})
    c = openloop.with_percentile_slos(c)
    out = _metrics(res, used, load, c, ctx, reasons, pools.mem_gb, factors)
    out.update(cache)
    openloop.apply(out, model, mode, res, load, c, reasons, factors, ctx)   # arrival_rate > 0: the queue model
    out["bottleneck"] = bottleneck
    intervals.add_interval_columns(out, {"osl": c["osl"]}, factors=factors)
    out["quality_loss"], out["quality_loss_p90"] = quality_loss(
        model, pools.wd, c["kv_dtype"], weight_vocab=pools.wd_names, kv_vocab=vocab["kv_dtype"])
    return out, reasons


def _layout_text(model: Model, c: dict[str, np.ndarray], mode: str, i: int) -> str:
    """Row i's parallel layout as an error names it: per role where the mode splits the
    work (a disagg row's bad prefill_tp was reported as its generic tp)."""
    def one(tp, dp, ep) -> str:
        return f"tp={int(np.broadcast_to(tp, c['tp'].shape)[i])}, dp={int(np.broadcast_to(dp, c['tp'].shape)[i])}, " \
               f"ep={int(np.broadcast_to(ep, c['tp'].shape)[i])}"
    if mode == "disagg":
        return "; ".join(f"{r} " + one(*(roles.layout(c, r, k) for k in ("tp", "dp", "ep"))) for r in ("prefill", "decode"))
    if mode == "afd":
        attn, ffn, _, _ = roles.afd_layouts(c, model.is_moe)
        return f"attn {one(*attn)}; ffn {one(*ffn)}"
    return one(c["tp"], c["dp"], c["ep"])


@functools.lru_cache(maxsize=8)
def _one_word(word: str) -> pd.Categorical:
    """A feature every row shares, as the one-row categorical intervals would build from it
    (built once: pandas takes a millisecond per chunk to infer it from the string)."""
    return pd.Categorical(np.asarray([word], dtype=object))


def _slo_check(res, c, factors, ok) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(meets the SLOs, the chance it does, the TTFT and TPOT limits goodput is searched at).

    With slo_confidence 0 the point prediction decides, as it always did. Above 0 a row
    meets its SLOs when the chance that both hold (the calibrated error model of
    dse.deploy.intervals) is at least that confidence, and goodput is the load at which each
    latency's confidence-quantile (not its point) meets its limit."""
    meets, prob = intervals.slo_verdict(res.ttft_ms, res.tpot_ms, c["ttft_slo_ms"], c["tpot_slo_ms"],
                                        c["slo_confidence"], factors)
    meets &= ok
    conf = np.asarray(c["slo_confidence"], dtype=float)
    if not np.any(conf > 0):
        return meets, prob, c["ttft_slo_ms"], c["tpot_slo_ms"]
    q = {m: intervals.quantile_factor(lo, hi, np.maximum(conf, 0.5)) for m, lo, hi in
         (("ttft", factors.ttft_lo, factors.ttft_hi), ("tpot", factors.tpot_lo, factors.tpot_hi))}
    sure = conf > 0
    return (meets, prob, np.where(sure, c["ttft_slo_ms"] / q["ttft"], c["ttft_slo_ms"]),
            np.where(sure, c["tpot_slo_ms"] / q["tpot"], c["tpot_slo_ms"]))


def _metrics(res, used, load, c, ctx: Context, reasons: Reasons, mem_gb, factors) -> dict[str, np.ndarray]:
    """The deployment's metric columns from its serving result and its pools' hardware."""
    replicas = c["replicas"]
    num_gpus = res.gpus * replicas
    host_w = sum(h["host_w_per_gpu"] * g for h, g in used) * replicas
    power_w = res.gpu_power_w * replicas + host_w
    tokens_per_s = res.tokens_per_s * replicas
    fac = ctx.facility
    capex = sum((h["price_usd"] + h["host_usd_per_gpu"]) * g for h, g in used) * replicas
    rent = sum(h["rent_usd_per_hour"] * g for h, g in used) * replicas
    provisioned = sum((h["tdp_w"] + h["host_w_per_gpu"]) * g for h, g in used) * replicas
    usd_hour = cost.usd_per_hour(own=c["own"], capex_usd=capex, rent_usd_per_hour=rent, power_w=power_w,
                                 provisioned_w=provisioned, pue=fac.pue, usd_per_kwh=fac.usd_per_kwh,
                                 amortization_years=fac.amortization_years,
                                 facility_usd_per_kw_month=fac.facility_usd_per_kw_month)
    meets, prob, ttft_slo, tpot_slo = _slo_check(res, c, factors, reasons.codes == 0)
    goodput = _goodput(res, load, ttft_slo, tpot_slo, meets) * replicas
    goodput = np.where(reasons.codes == 0, goodput, 0.0)
    return {
        "ttft_ms": res.ttft_ms,
        "tpot_ms": res.tpot_ms,
        "e2e_ms": res.ttft_ms + np.maximum(c["osl"] - 1, 0) * res.tpot_ms,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / num_gpus,
        "tokens_per_s_per_user": 1e3 / res.tpot_ms,
        "power_w": power_w,
        "joules_per_token": power_w * fac.pue / tokens_per_s,
        "usd_per_mtok": cost.usd_per_mtok(usd_hour, tokens_per_s),
        "usd_per_hour": usd_hour,
        "num_gpus": num_gpus,
        "memory_gb_per_gpu": mem_gb,
        "capex_usd": capex,
        "meets_slo": meets,
        "meets_slo_prob": prob,
        "goodput_tokens_per_s": goodput,
        "usd_per_mtok_at_slo": np.where(goodput > 0, cost.usd_per_mtok(usd_hour, goodput), np.inf),
    }


def _goodput(res: serving.ModeResult, load, ttft_slo, tpot_slo, meets) -> np.ndarray:
    """Output tokens/s of one unit at the highest concurrency (<= the configured one) at
    which TTFT and TPOT still meet their limits; 0 when not even one user does.

    Latencies grow with load, so a few vectorised bisection steps over log(concurrency)
    find it; only rows with a finite SLO that fail at the configured load are searched."""
    load = np.asarray(load, dtype=float)
    out = np.where(meets, res.tokens_per_s, 0.0)
    search = ~meets & (np.isfinite(ttft_slo) | np.isfinite(tpot_slo)) & (load > 1)
    if not search.any() or res.load is None:
        return out
    idx = np.nonzero(search)[0]
    sub = serving.rows_of(res, idx)
    ts, ps = np.asarray(ttft_slo, dtype=float)[idx], np.asarray(tpot_slo, dtype=float)[idx]
    lo, hi = np.zeros(len(idx)), np.log2(load[idx])      # meets at 2^lo is unknown until checked
    t, p, tok = sub.load(np.ones(len(idx)))
    ok_lo = (t <= ts) & (p <= ps)
    # a row that fails with one user has goodput 0: only the others are bisected
    if not ok_lo.any():
        return out
    idx, ts, ps, lo, hi, best = idx[ok_lo], ts[ok_lo], ps[ok_lo], lo[ok_lo], hi[ok_lo], tok[ok_lo]
    sub = serving.rows_of(res, idx)
    for _ in range(GOODPUT_STEPS):
        mid = (lo + hi) / 2.0
        t, p, tok = sub.load(np.exp2(mid))
        ok = (t <= ts) & (p <= ps)
        best = np.where(ok, np.maximum(best, tok), best)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    out[idx] = best
    return out


def _bottleneck(step, hw, reasons: Reasons) -> np.ndarray:
    """Code into BOTTLENECKS of what binds the decode step (kv_capacity when memory does)."""
    comp, mem, comm = serving.bound_split(step, hw)
    # rows of three, argmax along each (numpy's argmax down the columns of a 3 x n stack is ~3x slower)
    out = np.argmax(np.stack(np.broadcast_arrays(comp, mem, comm), axis=1), axis=1).astype(np.int8)
    return np.where(reasons.of_kind("kv_capacity"), BOTTLENECKS.index("kv_capacity"), out).astype(np.int8)
