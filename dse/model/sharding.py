"""How a model's weights shard over the GPUs of one instance: the one place that says it.

Attention weights split over tensor-parallel ranks and repeat on every attention
data-parallel rank, except MLA's low-rank down-projections (q_a, kv_a, the rope key),
which every TP rank holds whole. Dense FFNs split over TP; routed experts over the
whole expert group (tp x dp), shared experts over TP, and the router is replicated.
Embedding tables are bf16 and split over TP. Memory, the engine's GEMM shapes and the
placement's op costs all read these, so they cannot disagree.
"""
from __future__ import annotations

import numpy as np

from dse.catalog.models import FFN, Attention, LayerGroup, Model

__all__ = ["attn_params_per_gpu", "ffn_params_per_gpu", "layer_params_per_gpu", "embedding_bytes_per_gpu",
           "EMBED_BYTES"]

EMBED_BYTES = 2.0   # embedding tables and the LM head stay bf16 whatever the weight format


def _mla_replicated(hidden: int, a: Attention) -> int:
    """Elements of MLA's down-projections that every TP rank holds whole."""
    return hidden * (a.q_lora_rank + a.kv_lora_rank + a.rope_dim)


def attn_params_per_gpu(hidden: int, a: Attention, tp, count: float = 1) -> np.ndarray:
    """Attention weight elements of `count` such layers on one GPU."""
    if a.kind == "mla":
        rep = _mla_replicated(hidden, a)
        return count * (rep + (a.params(hidden) - rep) / tp)
    return count * a.params(hidden) / tp


def ffn_params_per_gpu(hidden: int, f: FFN, tp, moe_group, count: float = 1, redundant=0.0) -> np.ndarray:
    """FFN (dense) or MoE (routed + shared experts + router) weight elements of `count`
    such layers on one GPU. `redundant` EPLB replicas add whole experts: the group holds
    E + r of them, so each GPU (E + r)/ep, each sliced over moe_group/ep."""
    if f.kind == "dense":
        return count * f.params(hidden) / tp
    shared = f.mats * hidden * f.shared_intermediate
    experts = f.params(hidden) - shared - hidden * f.num_experts
    if np.any(redundant):      # 1 + 0/E is exactly 1: the plain layout's bytes are unchanged
        experts = experts * (1.0 + np.asarray(redundant, dtype=float) / f.num_experts)
    return count * (experts / moe_group + shared / tp + hidden * f.num_experts)


def layer_params_per_gpu(model: Model, g: LayerGroup, tp, moe_group, count: float = 1, redundant=0.0) -> tuple:
    """(attention, FFN/experts) weight elements of `count` layers of group `g` on one GPU."""
    h = model.hidden
    return (attn_params_per_gpu(h, g.attention, tp, count),
            ffn_params_per_gpu(h, g.ffn, tp, moe_group, count, redundant))


def embedding_bytes_per_gpu(model: Model, tp, *, tables: int | None = None) -> np.ndarray:
    """Bytes of the embedding tables on one GPU (`tables`: 1 for one table, None for the
    checkpoint's: one when the LM head is tied to the embedding, else two)."""
    params = model.embedding_params() if tables is None else model.vocab * model.hidden * tables
    return params * EMBED_BYTES / tp
