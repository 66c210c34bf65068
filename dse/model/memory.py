"""Memory per GPU: weights + KV cache (or recurrent state) + activations + runtime reserve.

Weights shard as dse.model.sharding says. MLA's compressed KV is replicated over TP
ranks (every rank needs the whole latent); GQA's KV heads split over TP down to one head
per rank.
"""
from __future__ import annotations

import numpy as np

from dse.catalog.models import Model
from dse.model.ops import Parallel
from dse.model.sharding import embedding_bytes_per_gpu, layer_params_per_gpu

__all__ = ["GB", "weight_bytes_per_gpu", "weight_bytes_split", "kv_bytes_per_seq", "activation_bytes"]

GB = 1e9


def weight_bytes_per_gpu(model: Model, par: Parallel, w_bytes, split=None) -> np.ndarray:
    """Weights one GPU holds: its attention and FFN/expert shards plus embeddings (on the
    first and last pipeline stage, so at most one table per stage). `split`: the
    weight_bytes_split of the same arguments, when the caller has it already."""
    attn, ffn = weight_bytes_split(model, par, w_bytes) if split is None else split
    embed = embedding_bytes_per_gpu(model, par.tp)
    return attn - embed + ffn + embed / np.minimum(par.pp, 2)


def kv_bytes_per_seq(model: Model, par: Parallel, kv_bytes, context) -> np.ndarray:
    """KV cache (and linear-attention state) one sequence holds on one GPU at `context` tokens."""
    context = np.asarray(context, dtype=float)
    tp = par.tp
    total = 0.0
    for g in model.groups:
        a = g.attention
        if a.kind == "linear":
            total = total + g.count * a.state_elems() / tp * 4.0  # fp32 state
            continue
        n = np.minimum(context, a.window) if a.window else context
        if a.kind == "mla":
            per_tok = (a.kv_lora_rank + a.rope_dim) * kv_bytes + a.indexer_dim * 1.0
        else:
            per_tok = np.ceil(a.num_kv_heads / tp) * (a.qk_dim + a.v_dim) * kv_bytes
        total = total + g.count * n * per_tok
    return total / par.pp


def activation_bytes(model: Model, tokens_per_rank) -> np.ndarray:
    """Peak transient activations of one step: a few hidden-sized buffers per token."""
    widest = max(max(g.ffn.intermediate * (g.ffn.top_k or 1), model.hidden * 4) for g in model.groups)
    return np.asarray(tokens_per_rank, dtype=float) * (widest + model.vocab / 8) * 2.0


def weight_bytes_split(model: Model, par: Parallel, w_bytes) -> tuple[np.ndarray, np.ndarray]:
    """(attention + embedding bytes, FFN/expert bytes) per GPU, for pools that hold only one side."""
    attn = ffn = 0.0
    for g in model.groups:
        a_params, f_params = layer_params_per_gpu(model, g, par.tp, par.moe_group, count=g.count,
                                                  redundant=par.redundant)
        attn = attn + a_params * w_bytes
        ffn = ffn + f_params * w_bytes
    embed = embedding_bytes_per_gpu(model, par.tp)
    return attn / par.pp + embed, ffn / par.pp
