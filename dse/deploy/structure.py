"""Which layouts can be deployed at all, and on how many GPUs, before any evaluation.

Why: a scenario is a product of axes, and most of a product under a GPU budget (or with
tp sizes the heads do not divide) is rows the engine would only reject. The search asks
this module per serving pool -- the pools a mode builds, each over the few columns it
reads -- and enumerates only the combinations every pool accepts. The checks are the
engine's own (`pools.structure_errors`, `pools.block_errors`), the roles resolved by
`dse.deploy.roles`, the GPU count the serving model's (tp x dp x pp per pool, times its
workers, times the replicas); tests hold it to the engine's verdict row by row.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dse.catalog.models import Model
from dse.deploy import roles
from dse.deploy.pools import block_errors, block_rows, structure_errors
from dse.deploy.reasons import Reasons
from dse.model.ops import Parallel

__all__ = ["PoolSpec", "POOLS", "pool_check", "STRUCTURE_COLUMNS"]

_LAYOUT = ("tp", "dp", "ep", "pp", "redundant_experts")


@dataclass(frozen=True)
class PoolSpec:
    """One pool of a mode: the columns its layout reads, and the column counting its copies
    ("" = one) -- the deployment's GPUs are the sum over pools of gpus x copies."""
    name: str
    reads: tuple[str, ...]
    copies: str = ""


def _role(role: str, workers: str, extra: tuple[str, ...] = ()) -> PoolSpec:
    return PoolSpec(role, (*(f"{role}_{k}" for k in _LAYOUT), *_LAYOUT, "weight_dtype", *extra), workers)


# mode -> its pools (afd's prefill pool exists only on rows that set prefill_device; under
# eplb its replicas follow the FFN pool's, so it reads those columns too)
POOLS: dict[str, tuple[PoolSpec, ...]] = {
    "agg": (PoolSpec("agg", (*_LAYOUT, "weight_dtype")),),
    "disagg": (_role("prefill", "prefill_workers"), _role("decode", "decode_workers")),
    "afd": (PoolSpec("attn", ("attn_tp", "attn_gpus", "tp", "dp", "pp", "weight_dtype")),
            PoolSpec("ffn", ("ffn_gpus", "ep", "tp", "pp", "redundant_experts", "weight_dtype")),
            _role("prefill", "prefill_workers", ("prefill_device", "ffn_gpus"))),
}
# every column some pool's layout or GPU count reads (with `replicas`)
STRUCTURE_COLUMNS = tuple(dict.fromkeys(
    [c for specs in POOLS.values() for p in specs for c in (*p.reads, p.copies) if c] + ["replicas"]))


def _layout(model: Model, c: dict, pool: str):
    """(tp, dp, ep, pp, redundant, holds) of one pool, as dse.deploy.modes builds it."""
    if pool == "agg":
        return c["tp"], c["dp"], c["ep"], c["pp"], c["redundant_experts"], "all"
    if pool in ("prefill", "decode"):
        return (*(roles.layout(c, pool, k) for k in _LAYOUT), "all")
    attn, ffn, _, _ = roles.afd_layouts(c, model.is_moe)
    if pool == "attn":
        return (*attn, c["pp"], 0.0, "attn")
    return (*ffn, c["pp"], c["redundant_experts"], "ffn")


def pool_check(model: Model, c: dict, vocab: dict, mode: str, pool: str, no_dev: int) -> tuple[np.ndarray, np.ndarray]:
    """(deployable, GPUs of one copy) per row of broadcast columns `c` (codes, as
    `dse.deploy.columns.broadcast` makes them; `no_dev`: the code of the blank device) for
    one pool of `mode`; a pool the row does not build (afd without prefill_device) is
    deployable on 0 GPUs."""
    n = len(np.asarray(c["tp"]))
    tp, dp, ep, pp, redundant, holds = _layout(model, c, pool)
    tp, dp, ep, pp = (np.broadcast_to(np.asarray(v, dtype=float), (n,)) for v in (tp, dp, ep, pp))
    reasons = Reasons(n)
    structure_errors(model, reasons, tp, dp, ep, holds, pp=pp, redundant=redundant)
    block = block_rows(model, c["weight_dtype"], vocab)
    block_errors(model, reasons, Parallel(tp=tp, dp=dp, ep=ep, pp=pp, redundant=redundant), block, holds)
    ok, gpus = reasons.codes == 0, tp * dp * pp
    if mode == "afd" and pool == "prefill":
        built = np.broadcast_to(np.asarray(c["prefill_device"]) != no_dev, (n,))
        ok, gpus = ok | ~built, np.where(built, gpus, 0.0)
    return ok, gpus
