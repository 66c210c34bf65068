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
import operator

import numpy as np

from dse.catalog.models import Attention, LayerGroup, Model
from dse.model import kernels
from dse.model.dedupe import distinct_rows, take_rows
from dse.model.sharding import attn_params_per_gpu

__all__ = ["OPS", "COMM_OPS", "Hw", "Parallel", "Dtypes", "Step", "forward", "MMA_ROWS"]

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
    hop_ms: float              # fixed latency of one point-to-point hand-off (runtime.yaml p2p_hop_ms)
    kv_handoff_ms: float       # fixed handshake of one KV-cache transfer (runtime.yaml kv_handoff_ms)
    moe_low_tokens: float      # largest step the MOE_LOW kernel serves (runtime.yaml moe_low_latency_tokens)
    # m-free GEMM parts by weight matrix, kept for the next step priced on this hardware
    # (a Hw is treated as immutable once priced, as a Step is)
    consts: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)


# the parameter family of the low-latency MoE kernel a row's engine runs on small steps, with
# "on" (1 where the row's engine runs it, else 0; steps of at most Hw.moe_low_tokens tokens):
# dse.deploy.spec_table fills it
MOE_LOW = "moe_low"
# the parameters of the bf16 GEMM kernel, for the GEMMs every checkpoint keeps in bf16 whatever
# the row's weight format (the LM head): dse.deploy.spec_table fills it
GEMM_BF16 = "gemm_bf16"


@dataclasses.dataclass
class Parallel:
    tp: np.ndarray             # attention tensor parallel
    dp: np.ndarray             # attention data parallel ranks inside one instance
    ep: np.ndarray             # expert parallel
    pp: np.ndarray             # pipeline stages
    redundant: np.ndarray | float = 0.0   # EPLB replicas of the hottest experts (rank holds (E + r)/ep)

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
    Treated as immutable: totals and the bound split are computed once and kept. `zero`: the
    zeros array every op that adds nothing holds (forward's), left out of the sums."""
    time_ms: dict
    flops: dict
    bytes: dict
    split: tuple | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    zero: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    @functools.cached_property
    def total_ms(self) -> np.ndarray:
        return self.sum(self.time_ms.values())

    def compute_ms(self) -> np.ndarray:
        return self.sum(v for k, v in self.time_ms.items() if k not in COMM_OPS)

    def comm_ms(self) -> np.ndarray:
        return self.sum(self.time_ms[k] for k in COMM_OPS)

    def total_flops(self) -> np.ndarray:
        return self.sum(self.flops.values())

    def total_bytes(self) -> np.ndarray:
        return self.sum(self.bytes.values())

    def sum(self, arrays) -> np.ndarray:
        """sum() without its first pass (0 + the first array) and without the zero ops: the
        same values, fewer passes."""
        return functools.reduce(operator.add, [a for a in arrays if a is not self.zero] or [self.zero])


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


def _gemm(m, n, k, hw: Hw, dt: Dtypes, *, w_bytes=None, site=None, par=None, bf16: bool = False):
    """A GEMM's (time, FLOPs, bytes). `site` names the weight matrix (with `par`, the layout
    its n and k came from): its m-free parts are kept on `hw` for the next step on it.
    bf16: a matrix kept in bf16 whatever the row's format, run by the bf16 kernel."""
    consts = _gemm_consts(site, par, dt, hw) if site is not None else None
    if consts is None:
        w = 2.0 if bf16 else dt.w_bytes if w_bytes is None else w_bytes
        consts = kernels.gemm_consts(n, k, w_bytes=w, peak_tflops=hw.peak_bf16 if bf16 else hw.peak_gemm,
                                     mem_tb_s=hw.mem_tb_s, p=hw.params[GEMM_BF16 if bf16 else "gemm"])
        if site is not None:
            hw.consts[site] = (par, dt, consts)
    t, nbytes = kernels.gemm_parts(m, consts, a_bytes=2.0 if bf16 else dt.a_bytes, c_bytes=2.0,
                                   tiles=_gemm_tiles(m, hw))
    flops = 2.0 * m * consts["n"] * consts["k"]
    return t, flops, nbytes


def _gemm_tiles(m, hw: Hw) -> tuple:
    """kernels.gemm_tiles of m on hw, kept for the next GEMM of the same tokens (a layer's
    projections and FFN matrices all multiply the step's tokens)."""
    kept = hw.consts.get("gemm_tiles")
    if kept is None or kept[0] is not m:
        kept = (m, kernels.gemm_tiles(m, hw.params["gemm"]["tile_m"]))
        hw.consts["gemm_tiles"] = kept
    return kept[1]


def _gemm_consts(site, par, dt, hw: Hw) -> dict | None:
    """The kept m-free parts of GEMM `site`, when computed on this hw, layout and formats."""
    kept = hw.consts.get(site)
    return kept[2] if kept is not None and kept[0] is par and kept[1] is dt else None


class _Acc:
    """Per-op sums of (time, FLOPs, bytes) over the layer groups of one step."""

    def __init__(self, zero: np.ndarray):
        self.zero = zero
        self.time: dict = {}
        self.flops: dict = {}
        self.bytes: dict = {}

    def add(self, op: str, count: float, res) -> None:
        """Add count x res (time, FLOPs, bytes) to op; `zero` adds nothing (an op only it is
        added to stays `zero`, which Step's sums skip)."""
        for acc, x in zip((self.time, self.flops, self.bytes), res):
            if x is self.zero:
                continue
            x = x if count == 1.0 else count * x
            if op in acc:
                acc[op] = acc[op] + x
            elif count != 1.0 and _full(x, self.zero):
                acc[op] = x                 # count * x is already a fresh full-size array
            else:
                acc[op] = self.zero + x     # zero + x: a fresh full-size array

    def step(self) -> Step:
        order = {op: self.zero for op in OPS}                  # every op present, in OPS order
        return Step(time_ms={**order, **self.time}, flops={**order, **self.flops}, bytes={**order, **self.bytes},
                    zero=self.zero)


def _full(x, zero: np.ndarray) -> bool:
    return isinstance(x, np.ndarray) and x.shape == zero.shape and x.dtype == zero.dtype


@dataclasses.dataclass
class _Shape:
    """The step's shape on one attention rank (arrays of length N)."""
    b_rank: np.ndarray         # sequences on one attention rank
    t_rank: np.ndarray         # tokens on one attention rank
    t_all: np.ndarray          # tokens entering the MoE layer group
    q_len: np.ndarray
    ctx: np.ndarray
    prefill: np.ndarray        # rows whose step is a prefill
    verify: bool


def _roofline_ms(flops, nbytes, peak_tflops, hw: Hw) -> np.ndarray:
    """A kernel without a fitted model: plain roofline at the `unfitted` efficiencies."""
    p = hw.params["unfitted"]
    return np.maximum(flops / (peak_tflops * 1e9 * p["eff_compute"]), nbytes / (hw.mem_tb_s * 1e9 * p["eff_memory"]))


def _linear_core(a: Attention, tp, sh: _Shape, hw: Hw, dt: Dtypes):
    """Gated delta-net: state read+write per token step (fp32), chunked matmuls in prefill."""
    state = a.state_elems() / tp
    v_heads = a.lin_v_heads / tp
    f_core = sh.t_rank * v_heads * a.lin_k_dim * a.lin_v_dim * 6.0
    b_core = (sh.b_rank * state * 4.0 * 2.0
              + sh.t_rank * (a.lin_k_heads * a.lin_k_dim * 2 + a.lin_v_heads * a.lin_v_dim) / tp * 2.0)
    t_core = kernels.attn_decode_ms(sh.b_rank, np.ones_like(sh.ctx), v_heads, a.lin_k_dim, a.lin_v_dim,
                                    0.0, peak_tflops=hw.peak_bf16, mem_tb_s=hw.mem_tb_s,
                                    kv_bytes=dt.kv_bytes, p=hw.params["generation_attention"])
    t_core = t_core + _roofline_ms(f_core, b_core, hw.peak_bf16, hw)
    return t_core, f_core, b_core


def _mla_kernels(a: Attention, heads, q_heads, kv_len, sh: _Shape, hw: Hw, dt: Dtypes, need: tuple[bool, bool]):
    """MLA decode (absorbed MQA over the latent) and prefill (decompressed MHA) kernels:
    (decode time, decode FLOPs, prefill time, prefill FLOPs, KV elements per token);
    a kernel not `need`ed (decode, prefill) is None."""
    kv_tok = a.kv_lora_rank + a.rope_dim
    dec = f_dec = pre = f_pre = None
    if need[0]:
        dec = _mla_decode_ms(sh.b_rank, kv_len, q_heads, a, hw, dt)
        f_dec = 2.0 * sh.b_rank * q_heads * kv_len * (2 * a.kv_lora_rank + a.rope_dim)
    if need[1]:
        prefix, tiles, half = _prompt_shape(sh, a.window, hw)
        pre = kernels.attn_prefill_ms(sh.b_rank, sh.q_len, heads, a.qk_dim, a.v_dim,
                                      heads * (a.qk_dim + a.v_dim), a.window, prefix_len=prefix,
                                      peak_tflops=hw.peak_attn, mem_tb_s=hw.mem_tb_s,
                                      kv_bytes=dt.kv_bytes, p=hw.params["context_attention"], tiles=tiles)
        f_pre = 2.0 * sh.b_rank * heads * sh.q_len * kv_len * (a.qk_dim + a.v_dim) * half
    return dec, f_dec, pre, f_pre, kv_tok


def _prompt_shape(sh: _Shape, window, hw: Hw) -> tuple:
    """The prefill kernel's parts that depend on the prompts' shape alone: (prefix length,
    kernels.attn_prefill_tiles, the causal half of the FLOPs). Kept on hw for the next step
    whose chunks have the same length and context (agg's chunk-carrying steps share them)."""
    site = ("prompt_shape", window)
    kept = hw.consts.get(site)
    if kept is None or kept[0] is not sh.q_len or kept[1] is not sh.ctx:
        prefix = sh.ctx - sh.q_len
        kept = (sh.q_len, sh.ctx, (prefix, kernels.attn_prefill_tiles(sh.q_len, prefix, window,
                                                                      hw.params["context_attention"]),
                                   np.where(sh.ctx > sh.q_len, 1.0, 0.5)))
        hw.consts[site] = kept
    return kept[2]


def _gqa_kernels(a: Attention, tp, heads, q_heads, kv_len, sh: _Shape, hw: Hw, dt: Dtypes, need: tuple[bool, bool]):
    """MHA/GQA decode and prefill kernels, as _mla_kernels."""
    kv_heads = np.ceil(a.num_kv_heads / tp)
    kv_tok = kv_heads * (a.qk_dim + a.v_dim)
    f_dec = 2.0 * sh.b_rank * q_heads * kv_len * (a.qk_dim + a.v_dim)
    dec = pre = f_pre = None
    if need[0]:
        dec = kernels.attn_decode_ms(sh.b_rank, kv_len, q_heads, a.qk_dim, a.v_dim, kv_tok,
                                     peak_tflops=hw.peak_attn, mem_tb_s=hw.mem_tb_s,
                                     kv_bytes=dt.kv_bytes, p=hw.params["generation_attention"])
    if need[1]:
        prefix, tiles, half = _prompt_shape(sh, a.window, hw)
        pre = kernels.attn_prefill_ms(sh.b_rank, sh.q_len, heads, a.qk_dim, a.v_dim, kv_tok, a.window,
                                      prefix_len=prefix, peak_tflops=hw.peak_attn, mem_tb_s=hw.mem_tb_s,
                                      kv_bytes=dt.kv_bytes, p=hw.params["context_attention"], tiles=tiles)
        f_pre = f_dec * sh.q_len * half
    return dec, f_dec, pre, f_pre, kv_tok


def _softmax_core(a: Attention, tp, sh: _Shape, hw: Hw, dt: Dtypes):
    """Softmax attention over the KV cache (window / DSA top-k bounded), plus the DSA
    indexer: (time, FLOPs, bytes)."""
    heads = np.ceil(a.num_heads / tp)
    q_heads = heads * sh.q_len if sh.verify else heads   # query rows of the decode kernels
    kv_len = np.minimum(sh.ctx, a.window) if a.window else sh.ctx
    if a.sparse_topk:
        kv_len = np.minimum(kv_len, a.sparse_topk)
    some_pre, all_pre = bool(np.any(sh.prefill)), bool(np.all(sh.prefill))
    need = (not all_pre, some_pre)
    if a.kind == "mla":
        dec, f_dec, pre, f_pre, kv_tok = _mla_kernels(a, heads, q_heads, kv_len, sh, hw, dt, need)
    else:
        dec, f_dec, pre, f_pre, kv_tok = _gqa_kernels(a, tp, heads, q_heads, kv_len, sh, hw, dt, need)
    # a step is usually all prefill or all decode: compute only the kernel it runs
    if all_pre:
        t_core, f_core = pre, f_pre
    elif not some_pre:
        t_core, f_core = dec, f_dec
    else:
        t_core, f_core = np.where(sh.prefill, pre, dec), np.where(sh.prefill, f_pre, f_dec)
    b_core = sh.b_rank * kv_len * kv_tok * dt.kv_bytes
    if a.indexer_heads:
        # DSA lightning indexer scores every cached token (fp8 keys) before top-k
        f_idx = 2.0 * sh.t_rank * a.indexer_heads * a.indexer_dim * sh.ctx
        b_idx = sh.b_rank * sh.ctx * a.indexer_dim * 1.0
        t_core = t_core + _roofline_ms(f_idx, b_idx, hw.peak_attn, hw)
        f_core, b_core = f_core + f_idx, b_core + b_idx
    return t_core, f_core, b_core


def _moe_ms(t_all, h: float, f, par: Parallel, skew, hw: Hw, dt: Dtypes, p, imbalance, hit):
    """The routed experts' grouped GEMMs under kernel parameters `p`."""
    return kernels.moe_ms(t_all, h, f.intermediate, f.top_k, f.num_experts, par.moe_tp, par.ep, skew=skew,
                          gated=f.gated, w_bytes=dt.w_bytes, a_bytes=dt.a_bytes, peak_tflops=hw.peak_gemm,
                          mem_tb_s=hw.mem_tb_s, p=p, redundant=par.redundant, imbalance=imbalance, experts_hit=hit)


def _ffn(acc: _Acc, model: Model, g: LayerGroup, sh: _Shape, hw: Hw, par: Parallel, dt: Dtypes, skew,
         site: tuple = ()) -> None:
    """Dense FFN GEMMs, or router + shared experts + routed experts + the expert all-to-all."""
    f, n, h, tp = g.ffn, float(g.count), float(model.hidden), par.tp
    t_rank, t_all = sh.t_rank, sh.t_all
    kw = dict(par=par)
    if f.kind == "dense":
        acc.add("ffn", n, _gemm(t_rank, (f.mats - 1) * f.intermediate / tp, h, hw, dt, site=(*site, "up"), **kw))
        acc.add("ffn", n, _gemm(t_rank, h, f.intermediate / tp, hw, dt, site=(*site, "down"), **kw))
        return
    acc.add("ffn", n, _gemm(t_rank, float(f.num_experts), h, hw, dt, w_bytes=2.0, site=(*site, "router"),
                            **kw))  # router, bf16
    if f.shared_intermediate:
        acc.add("ffn", n, _gemm(t_rank, (f.mats - 1) * f.shared_intermediate / tp, h, hw, dt,
                                site=(*site, "shared_up"), **kw))
        acc.add("ffn", n, _gemm(t_rank, h, f.shared_intermediate / tp, hw, dt, site=(*site, "shared_down"), **kw))
    hit, imbalance = _routing(t_all, f, par, skew)
    t_moe = _moe_ms(t_all, h, f, par, skew, hw, dt, hw.params["moe"], imbalance, hit)
    low = hw.params.get(MOE_LOW)
    small = (t_all <= hw.moe_low_tokens) & (low["on"] > 0) if f.gated and low else False
    if np.any(small):       # a small step runs the engine's low-latency kernel (its own parameters)
        t_moe = np.where(small, _moe_ms(t_all, h, f, par, skew, hw, dt, low, imbalance, hit), t_moe)
    group = par.moe_group
    f_moe = 2.0 * t_all * f.top_k * f.mats * h * f.intermediate / group
    phys = f.num_experts + par.redundant            # physical experts (replicas included)
    hit = np.minimum(phys, t_all * f.top_k) / phys
    b_moe = phys * hit * f.mats * h * f.intermediate * dt.w_bytes / group
    acc.add("moe", n, (t_moe, f_moe, b_moe))
    # expert parallel all-to-all: dispatch (activation dtype) and combine (bf16)
    ep_payload = t_all / group * f.top_k * h
    ep_link = _link(par.ep, hw)
    t_ep = (kernels.alltoall_ms(ep_payload * dt.a_bytes, par.ep, link_gb_s=ep_link, p=hw.params["nccl"])
            + kernels.alltoall_ms(ep_payload * 2.0, par.ep, link_gb_s=ep_link, p=hw.params["nccl"]))
    acc.add("ep_comm", n, (t_ep, acc.zero, ep_payload * (dt.a_bytes + 2.0)))


def _routing(t_all, f, par: Parallel, skew) -> tuple[np.ndarray, np.ndarray]:
    """(experts hit on the busiest rank, its load imbalance): functions of the routing alone
    (tokens, ep, skew, replicas), which a step's many rows share a few values of, and the
    dearest part of pricing experts (a 12-node quadrature each): computed per distinct one."""
    cols = [t_all, par.ep, skew, par.redundant]
    args = (f.top_k, f.num_experts)
    groups = distinct_rows(cols)
    if groups is None:
        return kernels.moe_routing(t_all, *args, par.ep, skew, par.redundant)
    first, inverse, n = groups
    t, ep, sk, r = (take_rows(c, first, n) for c in cols)
    hit, imbalance = kernels.moe_routing(t, *args, ep, sk, r)
    return hit.take(inverse), imbalance.take(inverse)


def _tp_allreduce_ms(ar_bytes, par: Parallel, hw: Hw) -> np.ndarray:
    """One TP all-reduce: the custom (one-shot) kernel inside a scale-up domain, NCCL beyond.
    Their byte-free parts are kept on hw for the next step on the same layout."""
    kept = hw.consts.get("tp_allreduce")
    if kept is None or kept[0] is not par:
        inside = par.tp <= hw.domain
        link = _link(par.tp, hw)
        kernels_of = {"custom_allreduce": bool(np.any(inside)), "nccl": not np.all(inside)}
        kept = (par, inside, {f: kernels.allreduce_consts(par.tp, link_gb_s=link, p=hw.params[f])
                              for f, used in kernels_of.items() if used})
        hw.consts["tp_allreduce"] = kept
    _, inside, consts = kept
    t = {f: kernels.allreduce_parts(ar_bytes, c) for f, c in consts.items()}
    if "nccl" not in t:
        return t["custom_allreduce"]          # every row inside its domain
    return np.where(inside, t.get("custom_allreduce", 0.0), t["nccl"])


def _shape(batch, q_len, ctx, dp, verify: bool, *, floor: float = 1.0) -> _Shape:
    b_rank = np.maximum(batch / dp, floor)
    prefill = (q_len > 1) if not verify else np.zeros(q_len.shape, dtype=bool)
    return _Shape(b_rank=b_rank, t_rank=b_rank * q_len, t_all=batch * q_len, q_len=q_len, ctx=ctx,
                  prefill=prefill, verify=verify)


def _chunk_shape(chunk, dp) -> _Shape:
    """The prompt chunks a mixed step carries: `seqs` sequences (all ranks; a mean, may be
    fractional or 0) of `q_len` new tokens each, attending to `ctx` tokens."""
    seqs, q_len, ctx = (np.asarray(x, dtype=float) for x in chunk)
    b_rank = seqs / dp
    return _Shape(b_rank=b_rank, t_rank=b_rank * q_len, t_all=seqs * q_len, q_len=q_len, ctx=ctx,
                  prefill=np.ones(np.broadcast(seqs, q_len).shape, dtype=bool), verify=False)


def _joint(sh: _Shape, sc: _Shape | None) -> _Shape:
    """The token counts every per-token operator (GEMMs, experts, collectives) sees in a
    step that carries both decodes and prompt chunks."""
    if sc is None:
        return sh
    return dataclasses.replace(sh, t_rank=sh.t_rank + sc.t_rank, t_all=sh.t_all + sc.t_all)


def _masked(res, on):
    """A kernel's (time, FLOPs, bytes) where it runs at all (a step without any prompt
    chunk, or without decodes, does not pay that kernel's launch floor)."""
    if np.all(on):
        return tuple(res)
    return tuple(np.where(on, x, 0.0) for x in res)


def _decode_core(core, a: Attention, sh: _Shape, site: tuple, hw: Hw, par: Parallel, dt: Dtypes, *,
                 keep: bool = False):
    """The attention core over the step's decodes. A chunk-carrying step on the same pool
    whose decodes are a decode-only step's (the same sequences per rank, query lengths and
    contexts: agg's mixed step beside its decode-only one) reuses that step's kernels;
    keep=True keeps this one's for such a step."""
    site = (*site, "decode_core")
    kept = hw.consts.get(site)
    if (kept is not None and kept[0] is par and kept[1] is dt and kept[2] == sh.verify
            and all(np.array_equal(x, y) for x, y in zip(kept[3], (sh.b_rank, sh.q_len, sh.ctx)))):
        return kept[4]
    res = core(a, par.tp, sh, hw, dt)
    if keep:
        hw.consts[site] = (par, dt, sh.verify, (sh.b_rank, sh.q_len, sh.ctx), res)
    return res


def _attention(acc: _Acc, model: Model, g: LayerGroup, sh: _Shape, sc, st: _Shape, hw: Hw, par: Parallel,
               dt: Dtypes, site: tuple) -> None:
    """A layer group's attention: projections (replicated low-rank + TP-split parts) and
    the core (decode kernel over the decodes, prefill kernel over a mixed step's chunks)."""
    a, n, h = g.attention, float(g.count), float(model.hidden)
    acc.add("attn_proj", n, _gemm(st.t_rank, attn_params_per_gpu(model.hidden, a, par.tp) / h, h, hw, dt,
                                  site=(*site, "attn_proj"), par=par))
    core = _linear_core if a.kind == "linear" else _softmax_core
    if sc is None:
        acc.add("attn_core", n, _decode_core(core, a, sh, site, hw, par, dt, keep=True))
    else:
        with np.errstate(divide="ignore", invalid="ignore"):     # rows without decodes / chunks
            acc.add("attn_core", n, _masked(_decode_core(core, a, sh, site, hw, par, dt), sh.b_rank > 0))
            acc.add("attn_core", n, _masked(core(a, par.tp, sc, hw, dt), sc.b_rank > 0))


def forward(model: Model, *, hw: Hw, par: Parallel, dt: Dtypes, batch, q_len, ctx,
            skew=0.0, lm_head: bool = True, verify: bool = False, chunk=None, part: str = "all") -> Step:
    """One forward step of `batch` sequences with `q_len` new tokens each, attending to
    `ctx` tokens (ctx includes the new tokens). Returns per-GPU time, FLOPs and bytes.

    verify=True is a speculative-decoding verification step: the q_len tokens of a
    sequence (its last token and the drafts) go through the decode attention kernels as
    q_len times the query heads over one read of the KV cache (as TensorRT-LLM's XQA and
    FlashMLA treat draft tokens), and every one of them gets logits.

    chunk=(seqs, q_len, ctx) makes it a mixed step (chunked prefill): besides the batch's
    decodes it carries `seqs` prompt chunks of q_len tokens (seqs may be fractional, the
    mean of a steady state, or 0; batch may then be 0 too). Every per-token operator runs
    once over the step's decode and prompt tokens together, at their combined shape; the
    attention runs the decode kernel over the decodes and the prefill kernel over the
    chunks. So a prompt costs what the kernels say it adds to the step, never less.

    part="ffn" prices only the FFN / MoE ops, part="attention" all but those (the pools of
    afd run one or the other); the ops left out are zero."""
    batch = np.asarray(batch, dtype=float)
    q_len = np.asarray(q_len, dtype=float)
    ctx = np.asarray(ctx, dtype=float)
    tp, dp, pp = par.tp, par.dp, par.pp
    h = float(model.hidden)
    sh = _shape(batch, q_len, ctx, dp, verify, floor=1.0 if chunk is None else 0.0)
    sc = None if chunk is None else _chunk_shape(chunk, dp)
    st = _joint(sh, sc)
    acc = _Acc(np.zeros(np.broadcast(batch, q_len, ctx, tp, *(() if chunk is None else chunk)).shape))
    for gi, g in enumerate(model.groups):
        n, site = float(g.count), (model.id, gi)
        if part != "ffn":
            _attention(acc, model, g, sh, sc, st, hw, par, dt, site)
        if part != "attention":
            _ffn(acc, model, g, st, hw, par, dt, skew, site)
        if part != "ffn":
            # TP all-reduce after attention and after the FFN (bf16 activations)
            ar_bytes = st.t_rank * h * 2.0
            acc.add("tp_comm", n, (2.0 * _tp_allreduce_ms(ar_bytes, par, hw), acc.zero, 2.0 * ar_bytes * (tp > 1)))
    if part == "ffn":
        return acc.step()
    # pipeline hand-offs and the LM head
    pp_bytes = st.t_rank * h * 2.0
    t_pp = (pp - 1) * (pp_bytes / (_link(pp * tp * dp, hw) * 1e6) + hw.hop_ms)
    acc.add("pp_comm", 1.0, (t_pp, acc.zero, (pp - 1) * pp_bytes))
    if lm_head:
        rows = sh.b_rank * q_len if verify else sh.b_rank
        if sc is not None:
            rows = np.maximum(rows + sc.b_rank, 1.0)     # a chunk's last position gets logits
        acc.add("lm_head", 1.0, _gemm(rows, model.vocab / tp, h, hw, dt, bf16=True, site=(model.id, "lm_head"),
                                      par=par))
    return acc.step()
