"""Per-op-group costs of a model on device pools, from the engine, for the placement solver.

An op group is the unit the placement moves between pools: a layer's attention (its
projections, the attention kernel and its KV cache), its FFN (dense) or its experts
(MoE: router, shared experts, routed experts and the expert all-to-all), and the model's
embedding table and LM head. For each layer group (identical layers), op group and pool
this module returns one layer's time per step (ms) and per-GPU memory (bytes), computed
by `ops.forward` on a one-layer copy of the model and vectorized over pools (arrays of
length n_pools). Within a pool the GPUs run tensor parallel inside the scale-up domain,
attention data parallel beyond it and expert parallel over the whole pool, unless the
pool says otherwise. The TP all-reduces of a layer are split evenly between its
attention and its FFN (one all-reduce follows each).

Transfers: when consecutive op groups sit on different pools the step's activations
(tokens x hidden x 2 bytes) cross between them. Every GPU of a pool holds a shard of
them (TP ranks a slice of the hidden vector, DP ranks their sequences), so a pool moves
them over all its NICs: one hop occupies pool p for hop_ms[p] = bytes / (n_p x bw_p) +
latency, on the sending and on the receiving side alike, with bw_p the per-GPU scale-out
bandwidth, or the scale-up bandwidth when all pools sit in one scale-up domain (one
system, together no larger than the domain), and latency the point-to-point hop of
runtime.yaml (p2p_hop_ms, as a pipeline hop of the engine). Charging each side its own
NIC time is what a buffered pipeline's throughput sees: the slower side's stage carries
the longer time.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from dse.catalog import dtypes
from dse.catalog.devices import get_device
from dse.catalog.facility import get_facility
from dse.catalog.models import LayerGroup, Model
from dse.catalog.runtime import routing_skew_of, runtime, serving_runtime
from dse.catalog.systems import get_system
from dse.deploy.columns import check_scalar
from dse.deploy.spec_table import SpecTable
from dse.errors import DSEError
from dse.model import cost, memory, ops
from dse.model.ops import Dtypes, Parallel
from dse.model.sharding import embedding_bytes_per_gpu, layer_params_per_gpu

__all__ = ["Pool", "parse_pool", "GroupCost", "OpCosts", "resolve_pools", "op_costs", "ACT_BYTES"]

ACT_BYTES = 2.0         # activations cross pools in bf16


@dataclasses.dataclass(frozen=True)
class Pool:
    """`count` GPUs of one device type; tp/dp/ep 0 = choose automatically."""
    device: str
    count: int
    tp: int = 0
    dp: int = 0
    ep: int = 0
    name: str = ""


def parse_pool(text: str) -> Pool:
    """`h20:16`, `h100_sxm:8,tp=8` or `b200_sxm:16,tp=8,dp=2,ep=16,name=fast`."""
    head, *opts = text.split(",")
    m = re.fullmatch(r"\s*([^:\s]+)\s*:\s*(\d+)\s*", head)
    if not m:
        raise DSEError(f"--pool {text!r}: expected DEVICE:COUNT[,tp=N][,dp=N][,ep=N][,name=LABEL]")
    kw: dict = {"device": m.group(1), "count": int(m.group(2))}
    for opt in opts:
        key, _, val = opt.partition("=")
        key = key.strip()
        if key not in ("tp", "dp", "ep", "name") or not val.strip():
            raise DSEError(f"--pool {text!r}: unknown option {opt!r}; allowed: tp=N, dp=N, ep=N, name=LABEL")
        if key == "name":
            kw["name"] = val.strip()
        else:
            if not val.strip().isdigit() or int(val) < 1:
                raise DSEError(f"--pool {text!r}: {key} must be a positive integer")
            kw[key] = int(val)
    if kw["count"] < 1:
        raise DSEError(f"--pool {text!r}: count must be >= 1")
    return Pool(**kw)


@dataclasses.dataclass
class GroupCost:
    """One layer group: `count` identical layers, each with two op groups in order."""
    index: int
    count: int
    label: str                  # e.g. "mla+moe"
    ops: tuple[str, str]        # ("attn", "ffn") or ("attn", "moe")
    time_ms: dict               # op -> array(n_pools): one layer's op time per step
    mem_bytes: dict             # op -> array(n_pools): one layer's op memory per GPU (weights, KV / kv fraction)


@dataclasses.dataclass
class OpCosts:
    model: Model
    pools: tuple[Pool, ...]     # resolved: names, tp, dp, ep filled in
    groups: tuple[GroupCost, ...]
    embed_time_ms: np.ndarray
    embed_mem_bytes: np.ndarray
    head_time_ms: np.ndarray
    head_mem_bytes: np.ndarray
    tied_embeddings: bool       # embed and head share one table when on the same pool
    capacity_bytes: np.ndarray  # per GPU, for weights + KV/kv_fraction (reserve, activations removed)
    memory_bytes: np.ndarray    # per GPU, physical
    hop_ms: np.ndarray          # per pool: time one activation hop in or out occupies the pool
    usd_per_hour: np.ndarray    # per pool (nameplate power for the energy share when owned)
    tokens_per_step: float      # tokens one step produces (decode: batch; prefill: batch x isl)
    phase: str
    batch: float
    isl: float
    osl: float

    @property
    def n_pools(self) -> int:
        return len(self.pools)

    @property
    def pool_names(self) -> list[str]:
        return [p.name for p in self.pools]

    def pool_index(self, name: str) -> int:
        for i, p in enumerate(self.pools):
            if p.name == name:
                return i
        raise DSEError(f"pool: unknown pool {name!r}; pools: {', '.join(self.pool_names)}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def resolve_pools(model: Model, pools: list[Pool]) -> tuple[Pool, ...]:
    """Fill in names and parallel layouts; a layout that cannot shard the model is an error."""
    if len(pools) < 1:
        raise DSEError("place: give at least one pool (--pool DEVICE:COUNT)")
    heads = min(g.attention.num_heads for g in model.groups)
    experts = max((g.ffn.num_experts for g in model.groups if g.ffn.kind == "moe"), default=0)
    seen: dict[str, int] = {}
    out = []
    for p in pools:
        dev = get_device(p.device)
        domain = get_system(dev.system).scaleup_domain
        n = int(p.count)
        where = f"pool {p.device}:{n}"
        if p.tp:
            tp = p.tp
            if n % tp:
                raise DSEError(f"{where}: tp={tp} must divide the pool's {n} GPUs")
            if heads % tp:
                raise DSEError(f"{where}: tp={tp} must divide the {heads} attention heads of {model.id}")
        else:
            tp = max(d for d in _divisors(n) if heads % d == 0 and d <= domain)
        dp = p.dp or n // tp
        if tp * dp != n:
            raise DSEError(f"{where}: tp x dp = {tp} x {dp} must equal the pool's {n} GPUs")
        if experts:
            ep = p.ep or max(d for d in _divisors(n) if experts % d == 0)
            if experts % ep or n % ep:
                raise DSEError(f"{where}: ep={ep} must divide the {experts} experts and the pool's {n} GPUs")
        else:
            if p.ep not in (0, 1):
                raise DSEError(f"{where}: ep > 1 needs a MoE model")
            ep = 1
        name = p.name or p.device
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        out.append(Pool(device=p.device, count=n, tp=tp, dp=dp, ep=ep, name=name))
    return tuple(out)


def op_costs(model: Model, pools: list[Pool], *, batch: float = 64, isl: float = 1024, osl: float = 256,
             phase: str = "decode", weight_dtype: str = "native", kv_dtype: str = "bf16",
             routing_skew: float = float("nan"), own: bool = True, rt: dict | None = None) -> OpCosts:
    """Per-op-group time and memory of `model` on each pool, for one step of `batch` sequences.

    decode: one token per sequence at the mean context isl + osl/2; prefill: the whole
    prompt of each sequence. KV memory is held at the full context isl + osl. `rt`: the
    runtime facts (runtime.yaml's, unless given).
    """
    if phase not in ("decode", "prefill"):
        raise DSEError(f"place: phase: unknown phase {phase!r}; allowed: decode, prefill")
    for name, v in (("batch", batch), ("isl", isl), ("osl", osl)):
        if not v >= 1:
            raise DSEError(f"place: {name} must be >= 1, got {v!r}")
    check_scalar("routing_skew", routing_skew, "place")        # a negative skew is no power law
    pools_r = resolve_pools(model, pools)
    n_p = len(pools_r)
    wd = model.native_dtype if weight_dtype == "native" else dtypes.normalize(weight_dtype, field="weight_dtype")
    kv_b = dtypes.BYTES[dtypes.normalize(kv_dtype, field="kv_dtype")]
    table = SpecTable([(p.device, wd, kv_b < 2.0, "", model.mxfp4) for p in pools_r])
    hwc = table.gather(np.arange(n_p))
    rt = runtime() if rt is None else rt
    hw = SpecTable.hw(hwc, runtime=rt)
    w_bytes = np.full(n_p, dtypes.BYTES[wd])
    dt = Dtypes(w_bytes=w_bytes, a_bytes=hwc["a_bytes"], kv_bytes=np.full(n_p, kv_b))
    tp = np.array([p.tp for p in pools_r], dtype=float)
    dp = np.array([p.dp for p in pools_r], dtype=float)
    ep = np.array([p.ep for p in pools_r], dtype=float)
    par = Parallel(tp=tp, dp=dp, ep=ep, pp=np.ones(n_p))
    b = np.full(n_p, float(batch))
    if phase == "decode":
        q_len, ctx = np.ones(n_p), np.full(n_p, isl + osl / 2.0)
        tokens = float(batch)
    else:
        q_len, ctx = np.full(n_p, float(isl)), np.full(n_p, float(isl))
        tokens = float(batch) * float(isl)
    seqs_rank = np.maximum(b / dp, 1.0)

    groups = []
    head_t = None
    skew = float(routing_skew_of(routing_skew, serving_runtime()))
    for gi, g in enumerate(model.groups):
        one = dataclasses.replace(model, groups=(LayerGroup(count=1, attention=g.attention, ffn=g.ffn),))
        step = ops.forward(one, hw=hw, par=par, dt=dt, batch=b, q_len=q_len, ctx=ctx, skew=skew,
                           lm_head=head_t is None)
        t = step.time_ms
        if head_t is None:
            head_t = np.asarray(t["lm_head"], dtype=float)
        tp_half = np.asarray(t["tp_comm"], dtype=float) / 2.0
        attn_t = t["attn_proj"] + t["attn_core"] + tp_half
        ffn_t = t["ffn"] + t["moe"] + t["ep_comm"] + tp_half
        second = "moe" if g.ffn.kind == "moe" else "ffn"
        attn_w, ffn_w = layer_params_per_gpu(model, g, par.tp, par.moe_group)
        kv = memory.kv_bytes_per_seq(one, par, kv_b, np.full(n_p, isl + osl)) * seqs_rank
        mem = {"attn": attn_w * w_bytes + kv / rt["kv_memory_fraction"], second: ffn_w * w_bytes}
        groups.append(GroupCost(index=gi, count=g.count,
                                label=f"{g.attention.kind}{'-swa' if g.attention.window else ''}+{g.ffn.kind}",
                                ops=("attn", second),
                                time_ms={"attn": np.asarray(attn_t, float), second: np.asarray(ffn_t, float)},
                                mem_bytes={k: np.broadcast_to(np.asarray(v, float), (n_p,)).copy()
                                           for k, v in mem.items()}))
    table_bytes = embedding_bytes_per_gpu(model, tp, tables=1)   # one table, vocab split over TP
    # transient activations: a prefill chunk of isl tokens (as evaluate) or the step's own tokens
    act = memory.activation_bytes(model, np.maximum(np.maximum(float(isl), seqs_rank), q_len * seqs_rank))
    cap_phys = hwc["memory_gb"] * memory.GB
    capacity = cap_phys - rt["activation_reserve_gb"] * memory.GB - act

    # transfers: each pool's own NICs (or the shared scale-up fabric when every pool is in one domain)
    devs = [get_device(p.device) for p in pools_r]
    one_domain = (len({d.system for d in devs}) == 1
                  and sum(p.count for p in pools_r) <= get_system(devs[0].system).scaleup_domain)
    bw = hwc["scaleup_gb_s"] if one_domain else hwc["scaleout_gb_s"]
    n_gpus = np.array([p.count for p in pools_r], dtype=float)
    hop = tokens * model.hidden * ACT_BYTES / (n_gpus * bw * 1e6) + hw.hop_ms

    fac = get_facility()
    nameplate = n_gpus * (hwc["tdp_w"] + hwc["host_w_per_gpu"])
    usd = cost.usd_per_hour(own=own, capex_usd=n_gpus * (hwc["price_usd"] + hwc["host_usd_per_gpu"]),
                            rent_usd_per_hour=n_gpus * hwc["rent_usd_per_hour"],
                            power_w=nameplate, provisioned_w=nameplate, pue=fac.pue, usd_per_kwh=fac.usd_per_kwh,
                            amortization_years=fac.amortization_years,
                            facility_usd_per_kw_month=fac.facility_usd_per_kw_month)
    return OpCosts(model=model, pools=pools_r, groups=tuple(groups),
                   embed_time_ms=np.zeros(n_p), embed_mem_bytes=np.asarray(table_bytes, float),
                   head_time_ms=np.asarray(head_t, float), head_mem_bytes=np.asarray(table_bytes, float),
                   tied_embeddings=bool(model.tie_embeddings), capacity_bytes=np.asarray(capacity, float),
                   memory_bytes=np.asarray(cap_phys, float), hop_ms=np.asarray(hop, float),
                   usd_per_hour=np.asarray(usd, float), tokens_per_step=tokens, phase=phase,
                   batch=float(batch), isl=float(isl), osl=float(osl))
