"""Serving pools from per-row columns: hardware specs gathered per (device, weight format,
KV format), the parallel layout, and what memory allows (weights, activations, KV slots)."""
from __future__ import annotations

import functools

import numpy as np

from dse.catalog import dtypes
from dse.catalog.models import Model
from dse.deploy import roles
from dse.deploy.reasons import Reasons
from dse.deploy.spec_table import SpecTable
from dse.model import dedupe, memory, serving
from dse.model.ops import Dtypes, Parallel

__all__ = ["Pools", "structure_errors", "block_rows", "block_errors", "context_errors"]


def structure_errors(model: Model, reasons: Reasons, tp, dp, ep, holds: str = "all", pp=None,
                     redundant=0) -> None:
    """Flag rows whose parallel layout cannot shard `model` (`redundant`: EPLB replicas,
    so that the group holds experts + redundant experts)."""
    if pp is not None:      # a stage holds at least one layer: more stages would be idle GPUs
        reasons.flag(pp > model.num_layers, "structure", f"pp must not exceed the {model.num_layers} layers")
    reasons.flag(dp != np.floor(dp), "structure", "the GPUs must split into whole data-parallel ranks "
                 "(afd: attn_tp must divide attn_gpus)")
    if holds != "attn":
        _redundant_errors(model, reasons, ep, redundant)
    plain = np.asarray(redundant) == 0
    if holds == "ffn":
        if not model.is_moe:
            width = max(g.ffn.intermediate for g in model.groups)
            reasons.flag(np.mod(width, tp * dp) != 0, "structure", f"ffn_gpus must divide {width} (FFN width)")
            return
        # the FFN pool spreads the experts (a dense layer's width, e.g. DeepSeek's first
        # layers, is no substitute: 18432 divides by 72, 256 experts do not)
        experts = max(g.ffn.num_experts for g in model.groups if g.ffn.kind == "moe")
        reasons.flag(plain & (np.mod(experts, tp * dp) != 0), "structure", f"ffn_gpus must divide {experts} (experts)")
        reasons.flag(~plain & (np.mod(experts + redundant, tp * dp) != 0), "structure",
                     f"ffn_gpus must divide the {experts} experts + redundant_experts")
        return
    heads = min(g.attention.num_heads for g in model.groups)
    # a TP rank holds at least one head; more attention ranks are data-parallel (dp), not tp
    reasons.flag(tp > heads, "structure", f"tp must not exceed the {heads} attention heads (use dp for more "
                 "attention ranks)")
    reasons.flag(np.mod(heads, tp) != 0, "structure", f"tp must divide the {heads} attention heads")
    if holds == "attn":
        return
    if model.is_moe:
        experts = max(g.ffn.num_experts for g in model.groups)
        reasons.flag(plain & ((np.mod(experts, ep) != 0) | (np.mod(tp * dp, ep) != 0)), "structure",
                     f"ep must divide the {experts} experts and tp*dp")
        reasons.flag(~plain & ((np.mod(experts + redundant, ep) != 0) | (np.mod(tp * dp, ep) != 0)), "structure",
                     f"ep must divide the {experts} experts + redundant_experts, and tp*dp")
    else:
        reasons.flag(ep > 1, "structure", "ep > 1 needs a MoE model")


def _redundant_errors(model: Model, reasons: Reasons, ep, redundant) -> None:
    """EPLB replicas need experts to copy, a second rank to put them on (SGLang, vLLM and
    TensorRT-LLM balance over the expert-parallel ranks), and at most one copy per expert
    on average (as deployed: DeepSeek-V3 32 over 256, Kimi-K2 96 over 384)."""
    r = np.asarray(redundant)
    if not np.any(r > 0):
        return
    if not model.is_moe:
        reasons.flag(r > 0, "structure", "redundant_experts needs a MoE model")
        return
    experts = max(g.ffn.num_experts for g in model.groups)
    reasons.flag(r > experts, "structure", f"redundant_experts must not exceed the {experts} experts")
    reasons.flag((r > 0) & (ep <= 1), "structure", "redundant_experts needs ep > 1 (replicas sit on other ranks)")


def context_errors(model: Model, reasons: Reasons, isl, osl) -> None:
    """Flag rows whose prompt + output exceed the checkpoint's context: an engine refuses
    such a request (vLLM vllm/entrypoints/openai/serving_engine.py _validate_input: "This
    model's maximum context length is ... tokens")."""
    if model.max_context:
        reasons.flag(np.asarray(isl) + np.asarray(osl) > model.max_context, "context",
                     f"context: isl + osl exceed the model's {model.max_context}-token context")


def block_rows(model: Model, weight_codes, vocab: dict[str, np.ndarray]) -> np.ndarray:
    """Per row: are the weights block-scaled FP8? The checkpoint's own FP8 (a config with
    quantization_config.weight_block_size) served as native or fp8, or `fp8_block` asked for
    (then 128 x 128 blocks, the DeepSeek-V3 layout); fp8 on a bf16 checkpoint is per-tensor."""
    flags = []
    for w in vocab["weight_dtype"]:
        word = str(w).strip().lower()
        fmt = dtypes.normalize(model.native_dtype if word in ("native", "") else word, field="weight_dtype")
        flags.append(fmt == "fp8" and (bool(model.weight_block) or word == "fp8_block"))
    return np.array(flags, dtype=bool)[np.asarray(weight_codes)]


def block_errors(model: Model, reasons: Reasons, par: Parallel, block, holds: str = "all") -> None:
    """Flag block-scaled FP8 rows whose weight shards cut through the scale blocks: each
    shard of a blocked weight must hold whole (block_n x block_k) blocks, or the engine
    refuses to load it. Enforced (and only these, sourced):
      routed experts: moe_intermediate_size / moe_tp a multiple of block_n, and of block_k
        when moe_tp > 1 (vLLM and SGLang vllm|sglang/.../layers/quantization/fp8.py
        Fp8MoEMethod.create_weights: "The output_size of gate's and up's weight = ... is
        not divisible by weight quantization block_n");
      the attention output projection (row parallel): its input, heads x v_dim / tp, a
        multiple of block_k when tp > 1 (vLLM layers/quantization/utils/fp8_utils.py
        validate_fp8_block_shape, "Required by row parallel").
    Not enforced: merged column-parallel GEMMs (QKV, gate/up), which vLLM lets through
    (layers/linear.py _maybe_allow_fp8_block_shape_mismatch), and the dense / shared-expert
    FFN, which SGLang served sliced finer than 128 (DeepSeek-R1 fp8_block at tp 64 in
    ../shared/calibration/silicon_h100_b200.csv.gz: 18432 / 64 = 288)."""
    block = np.asarray(block, dtype=bool)
    if not block.any():
        return
    bn, bk = model.weight_block or (128, 128)
    if holds != "attn" and model.is_moe:
        inter = max(g.ffn.intermediate for g in model.groups if g.ffn.kind == "moe")
        moe_tp = np.asarray(par.moe_tp, dtype=float)
        per = inter / moe_tp
        bad = (np.mod(per, bn) != 0) | ((moe_tp > 1) & (np.mod(per, bk) != 0))
        reasons.flag(block & bad, "structure", f"block-scaled FP8 ({bn}x{bk}): moe_intermediate_size {inter} / "
                     f"moe_tp (tp*dp/ep) must be a multiple of {bn}")
    if holds != "ffn":
        tp = np.asarray(par.tp, dtype=float)
        for a in dict.fromkeys(g.attention for g in model.groups):
            width = a.lin_v_heads * a.lin_v_dim if a.kind == "linear" else a.num_heads * a.v_dim
            reasons.flag(block & (tp > 1) & (np.mod(width / tp, bk) != 0), "structure",
                         f"block-scaled FP8 ({bn}x{bk}): the attention output projection's {width} inputs / tp "
                         f"must be a multiple of {bk}")


def _structure_errors_once(model: Model, reasons: Reasons, tp, dp, ep, holds: str, pp, redundant) -> None:
    """structure_errors, run once per distinct layout (a sweep has few) and spread to the rows."""
    cols = [tp, dp, ep, pp, redundant]
    groups = dedupe.distinct_rows(cols)
    if groups is None:
        structure_errors(model, reasons, tp, dp, ep, holds, pp=pp, redundant=redundant)
        return
    first, inverse, n = groups
    sub = Reasons(len(first))
    t, d, e, p, r = (dedupe.take_rows(c, first, n) for c in cols)
    structure_errors(model, sub, t, d, e, holds, pp=p, redundant=r)
    reasons.absorb(inverse, sub)


@functools.lru_cache(maxsize=64)
def _spec_table(pairs: tuple[tuple[str, str, bool, str, bool], ...]) -> SpecTable:
    return SpecTable(list(pairs))


class Pools:
    """Builds serving pools for one model from per-row columns, sharing the spec table."""

    def __init__(self, model: Model, c: dict[str, np.ndarray], vocab: dict[str, np.ndarray], runtime: dict,
                 moe_kernels: tuple[tuple[str, ...], np.ndarray] = (("",), np.zeros(1, dtype=np.int64))):
        """moe_kernels: the MoE kernel variants the rows' serving frameworks run (names, and
        each row's code into them; spec_table prices each)."""
        self.model, self.c, self.vocab = model, c, vocab
        self.moe_names, self.moe_code = moe_kernels[0], np.broadcast_to(moe_kernels[1], c["tp"].shape)
        # weight formats: vocabulary entries normalised once ('native' = the checkpoint's)
        names = [dtypes.normalize(model.native_dtype if w in ("native", "") else w, field="weight_dtype")
                 for w in vocab["weight_dtype"]]
        self.wd_names = sorted(set(names))
        self.wd = np.array([self.wd_names.index(x) for x in names])[c["weight_dtype"]]
        kv = [dtypes.BYTES[dtypes.normalize(x or "bf16", field="kv_dtype")] for x in vocab["kv_dtype"]]
        self.kv_bytes = np.array(kv)[c["kv_dtype"]]
        self.rt = runtime
        self.reasons = Reasons(len(c["tp"]))
        self.block = block_rows(model, c["weight_dtype"], vocab)
        context_errors(model, self.reasons, c["isl"], c["osl"])
        self.mem_gb = np.zeros(c["tp"].shape)

    def _specs(self, device) -> tuple[dict, np.ndarray, np.ndarray]:
        """Spec columns per row, the spec-table key code and the weight bytes per parameter."""
        nw, nk = len(self.wd_names), len(self.moe_names)
        # one code per (device, weight format, fp8 KV cache?, MoE kernel) key, below _code_range()
        code = ((np.asarray(device, dtype=np.int64) * nw + self.wd) * 2 + (self.kv_bytes < 2.0)) * nk + self.moe_code
        pairs = np.flatnonzero(np.bincount(code))          # the keys present
        lut = np.zeros(pairs[-1] + 1, dtype=np.int64)
        lut[pairs] = np.arange(pairs.size)
        pair_idx = lut[code]
        keys = tuple((str(self.vocab["device"][p // nk // 2 // nw]), self.wd_names[p // nk // 2 % nw],
                      bool(p // nk % 2), self.moe_names[p % nk], self.model.mxfp4) for p in pairs)
        hwc = _spec_table(keys).gather(pair_idx)
        w_bytes = np.array([dtypes.BYTES[k[1]] for k in keys])[pair_idx]
        return hwc, code, w_bytes

    def _weights(self, par: Parallel, w_bytes, holds: str):
        model, c = self.model, self.c
        attn_w, ffn_w = memory.weight_bytes_split(model, par, w_bytes)
        total_w = memory.weight_bytes_per_gpu(model, par, w_bytes, split=(attn_w, ffn_w))
        weights = {"all": total_w, "attn": attn_w, "ffn": ffn_w}[holds]
        if holds != "ffn" and np.any(c["spec_tokens"] > 0):
            # the draft heads (the checkpoint's MTP layers, else one EAGLE-style layer) sit with
            # the attention: each about one average layer of the whole model
            layer = total_w / model.num_layers
            weights = weights + np.where(c["spec_tokens"] > 0, layer * max(model.mtp_heads, 1), 0.0)
        return weights

    def make(self, device, tp, dp, ep, pp, *, holds: str = "all", running=None,
             role: str = "") -> tuple[serving.Pool, dict]:
        """A pool of `role` ("" = the generic columns; prefill / decode read their own
        redundant_experts, 0 = the generic one); an attention-only pool holds no experts."""
        c, model = self.c, self.model
        hwc, code, w_bytes = self._specs(device)
        hw = SpecTable.hw(hwc, runtime=self.rt)
        dt = Dtypes(w_bytes=w_bytes, a_bytes=hwc["a_bytes"], kv_bytes=self.kv_bytes)
        redundant = 0.0 if holds == "attn" else (roles.layout(c, role, "redundant_experts") if role
                                                else c["redundant_experts"])
        par = Parallel(tp=tp, dp=dp, ep=ep, pp=pp, redundant=redundant)
        _structure_errors_once(model, self.reasons, tp, dp, ep, holds, pp, redundant)
        block_errors(model, self.reasons, par, self.block, holds)
        # memory: weights + activations + reserve must fit; the rest (x kv fraction) holds KV
        weights = self._weights(par, w_bytes, holds)
        seqs_rank = np.maximum((c["batch_size"] if running is None else running) / dp, 1.0)
        act = memory.activation_bytes(model, np.maximum(c["isl"], seqs_rank))
        fixed = weights + act + self.rt["activation_reserve_gb"] * memory.GB
        cap = hwc["memory_gb"] * memory.GB
        kv_seq = memory.kv_bytes_per_seq(model, par, self.kv_bytes, c["isl"] + c["osl"])
        if holds == "ffn":
            max_seqs = np.full(tp.shape, np.inf)
            kv_used = 0.0
        else:
            max_seqs = np.floor(np.maximum(cap - fixed, 0) * self.rt["kv_memory_fraction"] / kv_seq) * dp
            kv_used = kv_seq * np.minimum(seqs_rank, np.maximum(max_seqs / dp, 1.0))
        self.reasons.flag(fixed > cap, "memory", f"memory: weights and activations do not fit ({holds} pool)")
        self.reasons.flag(max_seqs < 1, "kv_capacity", "kv_capacity: not one sequence's KV cache fits")
        # memory bounds the batch: more users than KV slots only queue (their wait shows in TTFT)
        self.reasons.flag(seqs_rank > np.maximum(max_seqs / dp, 1.0), "kv_capacity",
                          "kv_capacity: the batch does not fit the KV cache")
        self.mem_gb = np.maximum(self.mem_gb, (fixed + kv_used) / memory.GB)
        self.reasons.flag(c["power_cap"] * hwc["tdp_w"] <= hwc["idle_w"], "structure",
                          "structure: power_cap x TDP is at or below the device's idle power: no clock holds it")
        pool = serving.Pool(hw=hw, dt=dt, par=par, tdp_w=hwc["tdp_w"], idle_w=hwc["idle_w"],
                            cap_w=c["power_cap"] * hwc["tdp_w"], max_seqs=max_seqs, hw_key=self._key(code, redundant),
                            cache_bytes=np.maximum(np.maximum(cap - fixed, 0) * self.rt["kv_memory_fraction"] - kv_used,
                                                   0.0))
        return pool, hwc

    def _key(self, code: np.ndarray, redundant) -> np.ndarray:
        """The pool's dedupe key (prefills are computed once per distinct key and layout): the
        spec-table code, and the replicas, which change a prefill's MoE time but are no layout
        column of that key. The code's range is the vocabulary's, not the rows': a key means
        the same pool in every chunk of a call (dedupe.call_memo keeps steps across them)."""
        if not np.any(redundant):
            return code.astype(float)
        return code + float(self._code_range()) * np.asarray(redundant, dtype=float)

    def _code_range(self) -> int:
        """How many spec-table codes _specs can give: devices x weight formats x (KV fp8 or not)
        x MoE kernels."""
        return len(self.vocab["device"]) * len(self.wd_names) * 2 * len(self.moe_names)
