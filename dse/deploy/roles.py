"""The one resolver of role defaults, for engine columns (integer codes) and result frames
(strings) alike.

A role column left blank inherits the generic one: `prefill_device` "" is `device`,
`decode_tp` 0 is `tp`; afd's `attn_gpus` 0 is tp x dp and `ffn_gpus` 0 is max(ep, tp);
the attention TP never exceeds the attention GPUs.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from dse.schema import COLUMNS

__all__ = ["ROLES", "ROLE_MODE", "device", "layout", "afd_gpus", "attn_tp", "afd_layouts", "fewest_redundant"]

ROLES = ("prefill", "decode", "attn", "ffn")
ROLE_MODE = {"prefill": "disagg", "decode": "disagg", "attn": "afd", "ffn": "afd"}


def device(c: Mapping[str, Any], role: str, *, blank: Any = "") -> np.ndarray:
    """The device of `role` (`blank` = this column's code or value for "inherit")."""
    own = c[f"{role}_device"]
    return np.where(own != blank, own, c["device"])


def layout(c: Mapping[str, Any], role: str, key: str) -> np.ndarray:
    """A role's tp / dp / ep / pp / batch_size: its own column where > 0, else the generic one.
    An own column of one value (a broadcast scalar) picks a whole column, still one value
    (the engine's dedupe leaves such columns out of its keys)."""
    name = f"{role}_{key}"
    if name not in c:
        return c[key]
    own, generic = c[name], c[key]
    if (isinstance(own, np.ndarray) and own.ndim == 1 and own.size and not own.strides[0]
            and isinstance(generic, np.ndarray) and generic.shape == own.shape and generic.dtype == own.dtype):
        return own if own[0] > 0 else generic
    return np.where(own > 0, own, generic)


def afd_gpus(c: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """GPUs of the attention and the FFN pool of an afd deployment."""
    attn = np.where(c["attn_gpus"] > 0, c["attn_gpus"], c["tp"] * c["dp"])
    ffn = np.where(c["ffn_gpus"] > 0, c["ffn_gpus"], np.maximum(c["ep"], c["tp"]))
    return attn, ffn


def attn_tp(c: Mapping[str, Any], attn_gpus: np.ndarray) -> np.ndarray:
    return np.minimum(c["attn_tp"], attn_gpus)


def afd_layouts(c: Mapping[str, Any], is_moe: bool) -> tuple[tuple, tuple, np.ndarray, np.ndarray]:
    """(tp, dp, ep) of afd's attention pool and of its FFN pool, and the two pools' GPUs:
    attention TP attn_tp (at most its GPUs) with the other ranks data-parallel; the FFN
    pool expert parallel over its GPUs (MoE) or tensor parallel (dense)."""
    agpus, fgpus = afd_gpus(c)
    atp = attn_tp(c, agpus)
    one = np.ones_like(fgpus)
    attn = (atp, np.maximum(agpus / atp, 1.0), np.ones_like(agpus))
    ffn = (one, fgpus, fgpus) if is_moe else (fgpus, one, one)
    return attn, ffn, agpus, fgpus


def fewest_redundant(c: Mapping[str, Any], experts: int) -> dict[str, np.ndarray]:
    """The EPLB columns that make each expert-holding pool's ep divide `experts` + its
    redundant experts with the fewest replicas: agg's ep, afd's FFN GPUs (redundant_experts),
    disagg's and afd's prefill workers' own ep (prefill_ / decode_redundant_experts).
    A role that needs none while the generic column is not 0 (which 0 would inherit) gets
    one replica per rank. `c`: columns as given (scalars or arrays; missing = default)."""
    n = max([np.size(v) for v in c.values()] + [1])
    full = {k: np.broadcast_to(np.asarray(c.get(k, COLUMNS[k])), (n,))
            for k in ("mode", "tp", "dp", "ep", "attn_gpus", "ffn_gpus", "prefill_ep", "decode_ep")}
    mode = full["mode"].astype(str)

    def need(ep) -> np.ndarray:
        return np.mod(-int(experts), np.maximum(np.asarray(ep, dtype=np.int64), 1))

    generic = np.where(mode == "agg", need(full["ep"]), np.where(mode == "afd", need(afd_gpus(full)[1]), 0))
    out = {"redundant_experts": generic.astype(np.int64)}
    for role, modes in (("prefill", ("disagg", "afd")), ("decode", ("disagg",))):
        ep = np.asarray(layout(full, role, "ep"), dtype=np.int64)
        r = np.where((need(ep) == 0) & (generic > 0) & (ep > 1), ep, need(ep))
        out[f"{role}_redundant_experts"] = np.where(np.isin(mode, modes), r, 0).astype(np.int64)
    return out
