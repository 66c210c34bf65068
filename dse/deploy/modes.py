"""The serving modes, one function each, in the MODES registry: build a mode's pools from
the columns (roles resolved by dse.deploy.roles) and run its serving model.

Each returns (result, [(spec columns, GPUs) per role], load), where load is the concurrency
the SLO search (goodput) may lower.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dse.catalog.models import Model
from dse.deploy import kvcache, roles
from dse.deploy.pools import Pools
from dse.errors import DSEError
from dse.model import serving

__all__ = ["MODES", "ModeRun"]

ModeRun = tuple[serving.ModeResult, list, np.ndarray]


def _role_pool(pools: Pools, c: dict, role: str, dev, running) -> tuple[serving.Pool, dict]:
    return pools.make(dev, *(roles.layout(c, role, k) for k in ("tp", "dp", "ep", "pp")), running=running, role=role)


def agg(model: Model, pools: Pools, c: dict, no_dev: int, common: dict) -> ModeRun:
    pool, hwc = pools.make(c["device"], c["tp"], c["dp"], c["ep"], c["pp"])
    res = kvcache.serve(model, pools, pool, hwc, c, common, c["batch_size"],
                        lambda com, conc: serving.agg(model, pool, concurrency=conc, **com))
    return res, [(hwc, res.gpus)], c["batch_size"]


def disagg(model: Model, pools: Pools, c: dict, no_dev: int, common: dict) -> ModeRun:
    pdev = roles.device(c, "prefill", blank=no_dev)
    ddev = roles.device(c, "decode", blank=no_dev)
    dbatch = roles.layout(c, "decode", "batch_size")
    ppool, phwc = _role_pool(pools, c, "prefill", pdev, np.ones_like(dbatch))
    dpool, dhwc = _role_pool(pools, c, "decode", ddev, dbatch)
    g = ppool.gpus * c["prefill_workers"] + dpool.gpus * c["decode_workers"]
    same = (pdev == ddev) & (g <= dhwc["domain"])
    res = serving.disagg(model, ppool, dpool, prefill_workers=c["prefill_workers"],
                         decode_workers=c["decode_workers"], concurrency=dbatch * c["decode_workers"],
                         same_domain=same, **common)
    return res, [(phwc, ppool.gpus * c["prefill_workers"]), (dhwc, dpool.gpus * c["decode_workers"])], \
        dbatch * c["decode_workers"]


def afd(model: Model, pools: Pools, c: dict, no_dev: int, common: dict) -> ModeRun:
    adev = roles.device(c, "attn", blank=no_dev)
    fdev = roles.device(c, "ffn", blank=no_dev)
    attn, ffn, agpus, fgpus = roles.afd_layouts(c, model.is_moe)
    apool, ahwc = pools.make(adev, *attn, c["pp"], holds="attn")
    fpool, fhwc = pools.make(fdev, *ffn, c["pp"], holds="ffn")
    same = (adev == fdev) & (agpus + fgpus <= ahwc["domain"])
    used = [(ahwc, apool.gpus), (fhwc, fpool.gpus)]
    pd_rows = c["prefill_device"] != no_dev
    if not pd_rows.any():
        res = serving.afd(model, apool, fpool, concurrency=c["batch_size"], same_domain=same, **common)
        return res, used, c["batch_size"]
    # prefill on its own workers (prefill_device, prefill_tp/dp/ep/pp, prefill_workers) in
    # front of the attention/FFN decode; the whole column set must agree on it
    if not pd_rows.all():
        raise DSEError("evaluate: afd: give prefill_device for every afd row or for none")
    ppool, phwc = _role_pool(pools, c, "prefill", c["prefill_device"], np.ones_like(agpus))
    psame = (c["prefill_device"] == adev) & (ppool.gpus * c["prefill_workers"] + agpus <= ahwc["domain"])
    res = serving.afd(model, apool, fpool, concurrency=c["batch_size"], same_domain=same, pre_pool=ppool,
                      prefill_workers=c["prefill_workers"], pre_same_domain=psame, **common)
    used.append((phwc, ppool.gpus * c["prefill_workers"]))
    return res, used, c["batch_size"]


MODES: dict[str, Callable[..., ModeRun]] = {"agg": agg, "disagg": disagg, "afd": afd}
