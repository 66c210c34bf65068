"""The one resolver of role defaults, for engine columns (integer codes) and result frames
(strings) alike.

A role column left blank inherits the generic one: `prefill_device` "" is `device`,
`decode_tp` 0 is `tp`; afd's `attn_gpus` 0 is tp x dp and `ffn_gpus` 0 is max(ep, tp);
the attention TP never exceeds the attention GPUs.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["ROLES", "ROLE_MODE", "device", "layout", "afd_gpus", "attn_tp"]

ROLES = ("prefill", "decode", "attn", "ffn")
ROLE_MODE = {"prefill": "disagg", "decode": "disagg", "attn": "afd", "ffn": "afd"}


def device(c: Mapping[str, Any], role: str, *, blank: Any = "") -> np.ndarray:
    """The device of `role` (`blank` = this column's code or value for "inherit")."""
    own = c[f"{role}_device"]
    return np.where(own != blank, own, c["device"])


def layout(c: Mapping[str, Any], role: str, key: str) -> np.ndarray:
    """A role's tp / dp / ep / pp / batch_size: its own column where > 0, else the generic one."""
    name = f"{role}_{key}"
    return np.where(c[name] > 0, c[name], c[key]) if name in c else c[key]


def afd_gpus(c: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """GPUs of the attention and the FFN pool of an afd deployment."""
    attn = np.where(c["attn_gpus"] > 0, c["attn_gpus"], c["tp"] * c["dp"])
    ffn = np.where(c["ffn_gpus"] > 0, c["ffn_gpus"], np.maximum(c["ep"], c["tp"]))
    return attn, ffn


def attn_tp(c: Mapping[str, Any], attn_gpus: np.ndarray) -> np.ndarray:
    return np.minimum(c["attn_tp"], attn_gpus)
