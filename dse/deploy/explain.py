"""One configuration, looked at closely: `check_config` says whether it can exist at all,
`explain` where its time goes (per operator and per pool)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from dse.catalog.models import get_model
from dse.deploy import roles
from dse.deploy.columns import broadcast, check_categories
from dse.deploy.context import make_context
from dse.deploy.evaluate import evaluate_columns, evaluate_model
from dse.deploy.pools import block_errors, block_rows, context_errors, structure_errors
from dse.deploy.reasons import Reasons
from dse.errors import DSEError
from dse.model.ops import COMM_OPS, Parallel

__all__ = ["check_config", "explain"]


def check_config(**config: Any) -> None:
    """Raise DSEError (one line) if a configuration cannot exist: unknown ids, or a
    parallel layout that does not shard the model (or its block-scaled FP8 weights), a
    prompt + output beyond the model's context. Memory is not checked."""
    ctx = make_context()
    cols, n, vocab = broadcast(config)
    check_categories(cols, vocab, ctx.serving["backends"])
    model = get_model(str(vocab["model"][cols["model"][0]]))
    reasons = Reasons(n)
    mode = str(vocab["mode"][cols["mode"][0]])
    context_errors(model, reasons, cols["isl"], cols["osl"])
    block = block_rows(model, cols["weight_dtype"], vocab)
    for r in {"agg": [""], "disagg": ["prefill", "decode"], "afd": [""]}[mode]:
        tp, dp, ep, red = (roles.layout(cols, r, k) if r else cols[k] for k in ("tp", "dp", "ep", "redundant_experts"))
        structure_errors(model, reasons, tp, dp, ep, redundant=red)
        block_errors(model, reasons, Parallel(tp=tp, dp=dp, ep=ep, pp=cols["pp"]), block)
    first = reasons.first()
    if first:
        raise DSEError(f"evaluate: {model.id}: {first[2]}")


def _op_rows(res) -> list[dict]:
    recs = []
    for phase, (step, hw) in res.steps.items():
        total = float(step.total_ms[0])
        for op, t in step.time_ms.items():
            t, f, b = float(t[0]), float(step.flops[op][0]), float(step.bytes[op][0])
            if t <= 0:
                continue
            if op in COMM_OPS:
                bound = "comm"
            else:
                bound = "compute" if f / float(hw.peak_gemm[0]) >= b / float(hw.mem_tb_s[0]) else "memory"
            recs.append({"phase": phase, "op": op, "time_ms": t, "share": t / total if total else 0.0,
                         "gflop": f / 1e9, "mbytes": b / 1e6, "flop_per_byte": f / b if b else float("inf"),
                         "bound": bound})
    return recs


def _first(x) -> float:
    return float(np.broadcast_to(x, (1,))[0])


def explain(*, facility=None, serving_runtime: dict | None = None,
            **config: Any) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
    """One configuration's metrics, its per-operator breakdown (prefill and decode steps:
    time, FLOPs, bytes, arithmetic intensity, binding resource) and its pools (step time,
    utilisation, power per GPU, GPUs, transfer time), so a user sees where the time goes."""
    ctx = make_context(facility=facility, serving=serving_runtime)
    cols, n, vocab = broadcast(config)
    if n != 1:
        raise DSEError("explain: give one configuration (scalars), not sequences")
    check_categories(cols, vocab, ctx.serving["backends"])
    model = get_model(str(vocab["model"][cols["model"][0]]))
    keep: dict = {}
    evaluate_model(model, dict(cols), vocab, ctx, strict=True, keep=keep)
    row = evaluate_columns(cols, n, vocab, ctx, strict=True).iloc[0]
    res = keep["result"]
    pools = pd.DataFrame([{"role": p.role, "gpus": _first(p.gpus), "step_ms": float(p.step_ms[0]),
                           "utilisation": _first(p.utilisation), "power_w_per_gpu": float(p.power_w[0]),
                           "transfer_ms": _first(res.transfer_ms if p.transfer_ms is None else p.transfer_ms)}
                          for p in res.pools])
    return row, pd.DataFrame(_op_rows(res)), pools
