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
from dse.model import memory, serving
from dse.model.ops import Dtypes, Parallel

__all__ = ["Pools", "structure_errors"]


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
        ffn = max(g.ffn.num_experts if g.ffn.kind == "moe" else g.ffn.intermediate for g in model.groups)
        reasons.flag(plain & (np.mod(ffn, tp * dp) != 0), "structure",
                     f"ffn_gpus must divide {ffn} ({'experts' if model.is_moe else 'FFN width'})")
        if model.is_moe:   # (the check above reads a dense layer's width where it is the widest)
            experts = max(g.ffn.num_experts for g in model.groups)
            reasons.flag(~plain & (np.mod(experts + redundant, tp * dp) != 0), "structure",
                         f"ffn_gpus must divide the {experts} experts + redundant_experts")
        return
    heads = min(g.attention.num_heads for g in model.groups)
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


@functools.lru_cache(maxsize=64)
def _spec_table(pairs: tuple[tuple[str, str, bool], ...]) -> SpecTable:
    return SpecTable(list(pairs))


class Pools:
    """Builds serving pools for one model from per-row columns, sharing the spec table."""

    def __init__(self, model: Model, c: dict[str, np.ndarray], vocab: dict[str, np.ndarray], runtime: dict):
        self.model, self.c, self.vocab = model, c, vocab
        # weight formats: vocabulary entries normalised once ('native' = the checkpoint's)
        names = [dtypes.normalize(model.native_dtype if w in ("native", "") else w, field="weight_dtype")
                 for w in vocab["weight_dtype"]]
        self.wd_names = sorted(set(names))
        self.wd = np.array([self.wd_names.index(x) for x in names])[c["weight_dtype"]]
        kv = [dtypes.BYTES[dtypes.normalize(x or "bf16", field="kv_dtype")] for x in vocab["kv_dtype"]]
        self.kv_bytes = np.array(kv)[c["kv_dtype"]]
        self.rt = runtime
        self.reasons = Reasons(len(c["tp"]))
        self.mem_gb = np.zeros(c["tp"].shape)

    def _specs(self, device) -> tuple[dict, np.ndarray, np.ndarray]:
        """Spec columns per row, the spec-table key code and the weight bytes per parameter."""
        nw = len(self.wd_names)
        # one code per (device, weight format, fp8 KV cache?) triple
        code = (np.asarray(device, dtype=np.int64) * nw + self.wd) * 2 + (self.kv_bytes < 2.0)
        pairs = np.flatnonzero(np.bincount(code))          # the triples present
        lut = np.zeros(pairs[-1] + 1, dtype=np.int64)
        lut[pairs] = np.arange(pairs.size)
        pair_idx = lut[code]
        keys = tuple((str(self.vocab["device"][p // 2 // nw]), self.wd_names[p // 2 % nw], bool(p % 2))
                     for p in pairs)
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
        structure_errors(model, self.reasons, tp, dp, ep, holds, pp=pp, redundant=redundant)
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
        self.reasons.flag(fixed > cap, "memory", f"memory: weights do not fit ({holds} pool)")
        self.reasons.flag(max_seqs < 1, "kv_capacity", "kv_capacity: not one sequence's KV cache fits")
        # memory bounds the batch: more users than KV slots only queue (their wait shows in TTFT)
        self.reasons.flag(seqs_rank > np.maximum(max_seqs / dp, 1.0), "kv_capacity",
                          "kv_capacity: the batch does not fit the KV cache")
        self.mem_gb = np.maximum(self.mem_gb, (fixed + kv_used) / memory.GB)
        pool = serving.Pool(hw=hw, dt=dt, par=par, tdp_w=hwc["tdp_w"], idle_w=hwc["idle_w"],
                            cap_w=c["power_cap"] * hwc["tdp_w"], max_seqs=max_seqs, hw_key=self._key(code, redundant))
        return pool, hwc

    @staticmethod
    def _key(code: np.ndarray, redundant) -> np.ndarray:
        """The pool's dedupe key (prefills are computed once per distinct key and layout): the
        spec-table code, and the replicas, which change a prefill's MoE time but are no layout
        column of that key."""
        if not np.any(redundant):
            return code.astype(float)
        return code + (float(np.max(code)) + 1.0) * np.asarray(redundant, dtype=float)
