"""FLOPs, bytes and time of one forward step of a model, per operator class.

Pure functions over column arrays: every argument is a scalar or an array of length N
(one entry per candidate configuration) and every result is an array of length N. One
model per call (its layer groups are the loop; configurations never are). Identical
layers are computed once and multiplied by their count.

Operator classes (the rows of the per-operator breakdown):
  attn_proj  - QKV / MLA / linear-attention projections and the output projection (GEMM)
  attn_core  - softmax attention over the KV cache (prefill or decode kernel), DSA indexer,
               or the gated-delta-net recurrence for linear layers
  ffn        - dense FFN GEMMs, router and shared experts
  moe        - routed experts (grouped GEMM with routing skew)
  tp_comm    - tensor-parallel all-reduce after attention and after the FFN
  ep_comm    - expert-parallel all-to-all dispatch and combine
  pp_comm    - pipeline point-to-point between stages
  lm_head    - logits of the last position of each sequence
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from dse.catalog.models import Model
from dse.model import kernels

OPS = ("attn_proj", "attn_core", "ffn", "moe", "tp_comm", "ep_comm", "pp_comm", "lm_head")
COMM_OPS = ("tp_comm", "ep_comm", "pp_comm")


@dataclasses.dataclass
class Hw:
    """Per-configuration hardware arrays (length N or scalars)."""
    peak_gemm: np.ndarray      # TFLOPS of the compute format the weights run in
    peak_attn: np.ndarray      # TFLOPS of the attention compute format
    peak_bf16: np.ndarray
    mem_tb_s: np.ndarray
    scaleup_gb_s: np.ndarray
    scaleout_gb_s: np.ndarray
    domain: np.ndarray         # GPUs in one scale-up domain
    params: dict               # calibration: family -> name -> array (formats already picked)


@dataclasses.dataclass
class Parallel:
    tp: np.ndarray             # attention tensor parallel
    dp: np.ndarray             # attention data parallel ranks inside one instance
    ep: np.ndarray             # expert parallel
    pp: np.ndarray             # pipeline stages

    @property
    def moe_group(self) -> np.ndarray:
        return self.tp * self.dp

    @property
    def moe_tp(self) -> np.ndarray:
        return self.tp * self.dp / self.ep


@dataclasses.dataclass
class Dtypes:
    w_bytes: np.ndarray        # weight storage bytes/element
    a_bytes: np.ndarray        # activation bytes/element in GEMMs
    kv_bytes: np.ndarray       # KV-cache bytes/element


@dataclasses.dataclass
class Step:
    """Per-op arrays for one forward step (all layers), per GPU of one instance.
    Treated as immutable: totals and the bound split are computed once and kept."""
    time_ms: dict
    flops: dict
    bytes: dict
    split: tuple | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @functools.cached_property
    def total_ms(self) -> np.ndarray:
        return sum(self.time_ms.values())

    def compute_ms(self) -> np.ndarray:
        return sum(v for k, v in self.time_ms.items() if k not in COMM_OPS)

    def comm_ms(self) -> np.ndarray:
        return sum(self.time_ms[k] for k in COMM_OPS)

    def total_flops(self) -> np.ndarray:
        return sum(self.flops.values())

    def total_bytes(self) -> np.ndarray:
        return sum(self.bytes.values())


def _link(group: np.ndarray, hw: Hw) -> np.ndarray:
    """Bandwidth a collective over `group` GPUs sees: scale-up inside a domain, NICs beyond."""
    return np.where(group <= hw.domain, hw.scaleup_gb_s, hw.scaleout_gb_s)


MMA_ROWS = 64.0   # rows of one tensor-core MMA tile: a query block is padded to it


def _mla_decode_ms(b_rank, kv_len, heads, a, hw: Hw, dt: Dtypes):
    """Absorbed MLA decode (FlashMLA / TRT-LLM MLA generation kernels): all query heads of
    a sequence share one latent KV, so the kernel is a flash-attention pass whose query
    block is the heads (padded to an MMA tile), not a per-head GEMV. Its streaming side
    is the generation-attention model (one KV group); its math runs on tensor cores at
    the efficiency of the flash (context) attention kernels. With all 128 heads on one
    rank (attention data parallel) the math, not the KV stream, binds on most devices.
    An fp8 latent cache is multiplied in fp8 (hw.peak_attn is the cache format's rate)."""
    d_qk, d_v = a.kv_lora_rank + a.rope_dim, a.kv_lora_rank
    stream = kernels.attn_decode_ms(b_rank, kv_len, heads, d_qk, d_v, d_qk, peak_tflops=np.inf,
                                    mem_tb_s=hw.mem_tb_s, kv_bytes=dt.kv_bytes, p=hw.params["generation_attention"])
    pc = hw.params["context_attention"]
    d = (d_qk + d_v) / 2.0
    eff = pc["eff_compute"] * d / (d + pc["d_half"])
    rows = np.ceil(heads / MMA_ROWS) * MMA_ROWS
    flops = 2.0 * b_rank * rows * kv_len * (d_qk + d_v)
    peak = hw.peak_attn                 # already the KV cache format's rate
    math = flops / (peak * 1e12 * eff) * 1e3 + hw.params["generation_attention"]["floor_us"] * 1e-3
    return np.maximum(stream, math)


def _gemm(m, n, k, hw: Hw, dt: Dtypes, *, peak=None, w_bytes=None):
    wb = dt.w_bytes if w_bytes is None else w_bytes
    t = kernels.gemm_ms(m, n, k, a_bytes=dt.a_bytes, w_bytes=wb, c_bytes=2.0,
                        peak_tflops=hw.peak_gemm if peak is None else peak,
                        mem_tb_s=hw.mem_tb_s, p=hw.params["gemm"])
    flops = 2.0 * m * n * k
    nbytes = m * k * dt.a_bytes + k * n * wb + m * n * 2.0
    return t, flops, nbytes


def forward(model: Model, *, hw: Hw, par: Parallel, dt: Dtypes, batch, q_len, ctx,
            skew=0.0, lm_head: bool = True, verify: bool = False) -> Step:
    """One forward step of `batch` sequences with `q_len` new tokens each, attending to
    `ctx` tokens (ctx includes the new tokens). Returns per-GPU time, FLOPs and bytes.

    verify=True is a speculative-decoding verification step: the q_len tokens of a
    sequence (its last token and the drafts) go through the decode attention kernels as
    q_len times the query heads over one read of the KV cache (as TensorRT-LLM's XQA and
    FlashMLA treat draft tokens), and every one of them gets logits."""
    batch = np.asarray(batch, dtype=float)
    q_len = np.asarray(q_len, dtype=float)
    ctx = np.asarray(ctx, dtype=float)
    tp, dp, pp = par.tp, par.dp, par.pp
    h = float(model.hidden)
    b_rank = np.maximum(batch / dp, 1.0)          # sequences on one attention rank
    t_rank = b_rank * q_len                        # tokens on one attention rank
    t_all = batch * q_len                          # tokens entering the MoE layer group
    prefill = (q_len > 1) if not verify else np.zeros(q_len.shape, dtype=bool)
    zero = np.zeros(np.broadcast(batch, q_len, ctx, tp).shape)
    time: dict = {}
    flops: dict = {}
    byts: dict = {}

    def add(op, count, res):
        for acc, x in zip((time, flops, byts), res):
            x = x if count == 1.0 else count * x
            acc[op] = acc[op] + x if op in acc else zero + x   # zero + x: a fresh full-size array

    ar_link = _link(tp, hw)
    for g in model.groups:
        a, f, n = g.attention, g.ffn, float(g.count)
        # --- attention projections: replicated low-rank parts + TP-split parts
        if a.kind == "mla":
            rep = h * (a.q_lora_rank + a.kv_lora_rank + a.rope_dim)
            width = rep / h + (a.params(model.hidden) - rep) / (h * tp)
        else:
            width = a.params(model.hidden) / (h * tp)
        add("attn_proj", n, _gemm(t_rank, width, h, hw, dt))
        # --- attention core
        heads = np.ceil(a.num_heads / tp)
        q_heads = heads * q_len if verify else heads   # query rows of the decode kernels
        if a.kind == "linear":
            # gated delta-net: state read+write per token step (fp32), chunked matmuls in prefill
            state = a.state_elems() / tp
            v_heads = a.lin_v_heads / tp
            f_core = t_rank * v_heads * a.lin_k_dim * a.lin_v_dim * 6.0
            b_core = b_rank * state * 4.0 * 2.0 + t_rank * (a.lin_k_heads * a.lin_k_dim * 2 + a.lin_v_heads * a.lin_v_dim) / tp * 2.0
            p = hw.params["generation_attention"]
            t_core = kernels.attn_decode_ms(b_rank, np.ones_like(ctx), v_heads, a.lin_k_dim, a.lin_v_dim,
                                            0.0, peak_tflops=hw.peak_bf16, mem_tb_s=hw.mem_tb_s,
                                            kv_bytes=dt.kv_bytes, p=p)
            t_core = t_core + np.maximum(f_core / (hw.peak_bf16 * 1e9 * 0.5), b_core / (hw.mem_tb_s * 1e9 * 0.8))
            add("attn_core", n, (t_core, f_core, b_core))
        else:
            kv_len = np.minimum(ctx, a.window) if a.window else ctx
            if a.sparse_topk:
                kv_len = np.minimum(kv_len, a.sparse_topk)
            some_pre, all_pre = bool(np.any(prefill)), bool(np.all(prefill))
            if a.kind == "mla":
                # decode: absorbed MQA over the latent; prefill: decompressed MHA
                kv_tok = a.kv_lora_rank + a.rope_dim
                if not all_pre:
                    dec = _mla_decode_ms(b_rank, kv_len, q_heads, a, hw, dt)
                    f_dec = 2.0 * b_rank * q_heads * kv_len * (2 * a.kv_lora_rank + a.rope_dim)
                if some_pre:
                    pre = kernels.attn_prefill_ms(b_rank, q_len, heads, a.qk_dim, a.v_dim,
                                                  heads * (a.qk_dim + a.v_dim), a.window, prefix_len=ctx - q_len,
                                                  peak_tflops=hw.peak_attn, mem_tb_s=hw.mem_tb_s,
                                                  kv_bytes=dt.kv_bytes, p=hw.params["context_attention"])
                    f_pre = (2.0 * b_rank * heads * q_len * kv_len * (a.qk_dim + a.v_dim)
                             * np.where(ctx > q_len, 1.0, 0.5))
            else:
                kv_heads = np.ceil(a.num_kv_heads / tp)
                kv_tok = kv_heads * (a.qk_dim + a.v_dim)
                f_dec = 2.0 * b_rank * q_heads * kv_len * (a.qk_dim + a.v_dim)
                if not all_pre:
                    dec = kernels.attn_decode_ms(b_rank, kv_len, q_heads, a.qk_dim, a.v_dim, kv_tok,
                                                 peak_tflops=hw.peak_attn, mem_tb_s=hw.mem_tb_s,
                                                 kv_bytes=dt.kv_bytes, p=hw.params["generation_attention"])
                if some_pre:
                    pre = kernels.attn_prefill_ms(b_rank, q_len, heads, a.qk_dim, a.v_dim, kv_tok, a.window,
                                                  prefix_len=ctx - q_len, peak_tflops=hw.peak_attn,
                                                  mem_tb_s=hw.mem_tb_s, kv_bytes=dt.kv_bytes,
                                                  p=hw.params["context_attention"])
                    f_pre = f_dec * q_len * np.where(ctx > q_len, 1.0, 0.5)
            # a step is usually all prefill or all decode: compute only the kernel it runs
            if all_pre:
                t_core, f_core = pre, f_pre
            elif not some_pre:
                t_core, f_core = dec, f_dec
            else:
                t_core, f_core = np.where(prefill, pre, dec), np.where(prefill, f_pre, f_dec)
            b_core = b_rank * kv_len * kv_tok * dt.kv_bytes
            if a.indexer_heads:
                # DSA lightning indexer scores every cached token (fp8 keys) before top-k
                f_idx = 2.0 * t_rank * a.indexer_heads * a.indexer_dim * ctx
                b_idx = b_rank * ctx * a.indexer_dim * 1.0
                t_core = t_core + np.maximum(f_idx / (hw.peak_attn * 1e9 * 0.5), b_idx / (hw.mem_tb_s * 1e9 * 0.8))
                f_core, b_core = f_core + f_idx, b_core + b_idx
            add("attn_core", n, (t_core, f_core, b_core))
        # --- FFN
        if f.kind == "dense":
            add("ffn", n, _gemm(t_rank, (f.mats - 1) * f.intermediate / tp, h, hw, dt))
            add("ffn", n, _gemm(t_rank, h, f.intermediate / tp, hw, dt))
        else:
            add("ffn", n, _gemm(t_rank, float(f.num_experts), h, hw, dt, w_bytes=2.0))  # router, bf16
            if f.shared_intermediate:
                add("ffn", n, _gemm(t_rank, (f.mats - 1) * f.shared_intermediate / tp, h, hw, dt))
                add("ffn", n, _gemm(t_rank, h, f.shared_intermediate / tp, hw, dt))
            t_moe = kernels.moe_ms(t_all, h, f.intermediate, f.top_k, f.num_experts, par.moe_tp, par.ep,
                                   skew=skew, gated=f.gated, w_bytes=dt.w_bytes, a_bytes=dt.a_bytes,
                                   peak_tflops=hw.peak_gemm, mem_tb_s=hw.mem_tb_s, p=hw.params["moe"])
            group = par.moe_group
            f_moe = 2.0 * t_all * f.top_k * f.mats * h * f.intermediate / group
            hit = np.minimum(f.num_experts, t_all * f.top_k) / f.num_experts
            b_moe = f.num_experts * hit * f.mats * h * f.intermediate * dt.w_bytes / group
            add("moe", n, (t_moe, f_moe, b_moe))
            # expert parallel all-to-all: dispatch (activation dtype) and combine (bf16)
            ep_payload = t_all / group * f.top_k * h
            ep_link = _link(par.ep, hw)
            t_ep = (kernels.alltoall_ms(ep_payload * dt.a_bytes, par.ep, link_gb_s=ep_link, p=hw.params["nccl"])
                    + kernels.alltoall_ms(ep_payload * 2.0, par.ep, link_gb_s=ep_link, p=hw.params["nccl"]))
            add("ep_comm", n, (t_ep, zero, ep_payload * (dt.a_bytes + 2.0)))
        # --- TP all-reduce after attention and after the FFN (bf16 activations)
        ar_bytes = t_rank * h * 2.0
        inside = tp <= hw.domain
        custom = (kernels.allreduce_ms(ar_bytes, tp, link_gb_s=ar_link, p=hw.params["custom_allreduce"])
                  if np.any(inside) else 0.0)
        nccl = (kernels.allreduce_ms(ar_bytes, tp, link_gb_s=ar_link, p=hw.params["nccl"])
                if not np.all(inside) else 0.0)
        t_ar = np.where(inside, custom, nccl)
        add("tp_comm", n, (2.0 * t_ar, zero, 2.0 * ar_bytes * (tp > 1)))
    # --- pipeline hand-offs and the LM head
    pp_bytes = t_rank * h * 2.0
    t_pp = (pp - 1) * (pp_bytes / (_link(pp * tp * dp, hw) * 1e6) + 0.01)
    add("pp_comm", 1.0, (t_pp, zero, (pp - 1) * pp_bytes))
    if lm_head:
        rows = b_rank * q_len if verify else b_rank
        add("lm_head", 1.0, _gemm(rows, model.vocab / tp, h, hw, dt, peak=hw.peak_bf16, w_bytes=2.0))
    order = {op: zero for op in OPS}                 # every op present, in OPS order
    return Step(time_ms={**order, **time}, flops={**order, **flops}, bytes={**order, **byts})
