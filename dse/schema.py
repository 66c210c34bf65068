"""The contract every layer shares: configuration columns, metrics (unit, label, direction),
serving modes, bottlenecks and infeasibility reason codes.

Nothing here computes; it names. The engine writes these columns, the search optimises
them, the report labels them, and a results directory is read back by them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

__all__ = ["COLUMNS", "COLUMN_HELP", "STRING_COLUMNS", "INT_COLUMNS", "ROLE_INT_COLUMNS", "DEVICE_COLUMNS", "METRICS",
           "METRIC_INFO", "Metric", "PERCENTILE_METRICS", "MODES", "BOTTLENECKS", "REASON_CODES", "NON_NUMERIC_METRICS",
           "direction", "metric_label"]

MODES = ("agg", "disagg", "afd")

# column -> default (None = required). Role columns left at "" / 0 inherit the generic one
# (prefill_device "" -> device, decode_tp 0 -> tp, ...), so one axis can drive every role.
COLUMNS: dict[str, Any] = {
    "model": None,
    "device": None,
    "mode": "agg",
    "tp": 1,            # attention tensor parallel
    "pp": 1,            # pipeline stages
    "dp": 1,            # attention data-parallel ranks inside one worker
    "ep": 1,            # expert parallel (MoE tensor parallel = tp*dp/ep)
    "redundant_experts": 0,  # EPLB replicas of the hottest experts: ep divides experts + this
    "replicas": 1,      # identical copies of the whole deployment unit
    "weight_dtype": "native",
    "kv_dtype": "bf16",
    "batch_size": 1,    # concurrent requests per replica (agg, afd); decode batch default (disagg)
    "isl": 1024,
    "osl": 256,
    "prefix_hit": 0.0,  # fraction of prompt tokens served from the prefix cache
    # reuse workloads and KV-cache tiers (dse.deploy.kvcache): the hit rate from capacity
    "turns": 1,         # turns per session (1 = no session reuse)
    "think_time_s": 0.0,  # user think time between a session's turns, s
    "system_prompt": 0,  # tokens of a system prompt every request shares (part of isl)
    "trace": "",        # a request trace (Mooncake JSONL) whose prefix reuse replaces turns / system_prompt
    "kv_tier": "hbm",   # where cached prefixes live beyond HBM: hbm (no offload), host, fabric, ssd
    "kv_tier_gb": 0.0,  # GB per GPU given to the cache in that tier
    "kv_tier_gb_s": 0.0,  # the tier link's GB/s per GPU (0 = hardware/kv_tiers.yaml's): a what-if knob
    "routing": "",      # how requests reach replicas: random, least_loaded, prefix_affinity, dual_hash
    "routing_skew": math.nan,  # power-law exponent of expert popularity (0 = balanced; nan = fitted typical)
    "power_cap": 1.0,   # fraction of TDP
    "own": True,        # own (capex + energy + facility) or rent ($/GPU-hour)
    "backend": "",      # serving framework (trtllm / vllm / sglang; "" = their pooled constants)
    "bench_rounds": math.inf,  # requests per user of a closed-loop benchmark (inf = steady state)
    "max_num_tokens": 0,  # token budget of one engine step (max_num_batched_tokens; 0 = the backend's default)
    "spec_tokens": 0,   # speculative decoding: tokens drafted per decode step (MTP / EAGLE; 0 = off)
    "spec_acceptance": math.nan,  # chance a draft is kept given the ones before it were (nan = runtime.yaml)
    # disagg: prefill and decode pools
    "prefill_device": "", "prefill_tp": 0, "prefill_dp": 0, "prefill_ep": 0, "prefill_pp": 0,
    "prefill_redundant_experts": 0, "prefill_workers": 1,
    "decode_device": "", "decode_tp": 0, "decode_dp": 0, "decode_ep": 0, "decode_pp": 0,
    "decode_redundant_experts": 0, "decode_workers": 1, "decode_batch_size": 0,
    # afd: attention pool (attn_gpus GPUs, attention TP attn_tp, the rest data-parallel)
    # and FFN pool (ffn_gpus GPUs: expert parallel for MoE, tensor parallel for dense)
    "attn_device": "", "attn_tp": 1, "attn_gpus": 0, "ffn_device": "", "ffn_gpus": 0,
    # service-level objectives (inf = none), and how sure a configuration must be to meet them
    "ttft_slo_ms": math.inf, "tpot_slo_ms": math.inf, "slo_confidence": 0.0,
    # open-loop traffic (0 = the closed loop at batch_size users) and percentile SLOs
    "arrival_rate": 0.0, "ttft_p99_slo_ms": math.inf, "tpot_p99_slo_ms": math.inf,
}
STRING_COLUMNS = ("model", "device", "mode", "weight_dtype", "kv_dtype", "prefill_device", "decode_device",
                  "attn_device", "ffn_device", "backend", "kv_tier", "routing", "trace")
INT_COLUMNS = ("tp", "pp", "dp", "ep", "replicas", "batch_size", "isl", "osl", "prefill_workers",
               "decode_workers", "attn_tp", "turns")
ROLE_INT_COLUMNS = ("prefill_tp", "prefill_dp", "prefill_ep", "prefill_pp", "decode_tp", "decode_dp",
                    "decode_ep", "decode_pp", "decode_batch_size", "attn_gpus", "ffn_gpus",
                    "prefill_redundant_experts", "decode_redundant_experts")
DEVICE_COLUMNS = ("device", "prefill_device", "decode_device", "attn_device", "ffn_device")

# what each column means, with its unit: the CLI's --help, the scenario docs and schema say this
COLUMN_HELP = {
    "device": "accelerator id (`dse hardware list`) or a device YAML file",
    "tp": "attention tensor-parallel degree",
    "pp": "pipeline-parallel stages",
    "dp": "attention data-parallel ranks inside one worker",
    "ep": "expert-parallel degree (MoE tensor parallel = tp x dp / ep)",
    "redundant_experts": "EPLB: extra copies of the hottest experts, so that ep divides experts + this "
                         "(0 to the expert count; agg, and afd's FFN pool)",
    "replicas": "identical copies of the whole deployment unit",
    "weight_dtype": "weight format: native (the checkpoint's), bf16, fp8, int8, fp4, int4",
    "kv_dtype": "KV-cache format: bf16, fp8, int8, fp4",
    "batch_size": "concurrent requests per replica (agg, afd); the decode batch default (disagg)",
    "isl": "prompt (input) tokens per request",
    "osl": "generated (output) tokens per request",
    "prefix_hit": "fraction of prompt tokens served from the prefix cache, in [0, 1)",
    "turns": "turns per session: each turn's prompt is the previous prompt and answer plus new tokens, isl the "
             "mean prompt over the turns (agg)",
    "think_time_s": "user think time between two turns of a session, s (sessions thinking hold cache too)",
    "system_prompt": "tokens of a system prompt shared by every request, part of isl",
    "trace": "request trace (Mooncake JSONL: timestamp, input_length, output_length, hash_ids): its prefix reuse "
             "sets the hit rate ('' = turns / system_prompt)",
    "kv_tier": "where cached prefixes live beyond HBM: hbm (no offload), host (CPU memory), fabric (memory pooled "
               "over the scale-up fabric), ssd (local NVMe); hardware/kv_tiers.yaml",
    "kv_tier_gb": "GB per GPU given to the prefix cache in kv_tier (0 with hbm)",
    "kv_tier_gb_s": "GB/s per GPU of the link to kv_tier, one direction (0 = the figure of hardware/kv_tiers.yaml)",
    "routing": "how requests reach replicas: random, least_loaded, prefix_affinity, dual_hash ('' = round robin: "
               "even load, no affinity)",
    "routing_skew": ("power-law exponent of expert popularity (0 = balanced routing; nan, the default = the typical "
                     "skew fitted from measured MoE deployments, serving_runtime.yaml benchmark.routing_skew)"),
    "power_cap": "GPU power cap as a fraction of TDP, in (0, 1]",
    "own": "true: own the hardware (capex + energy + facility); false: rent it ($/GPU-hour)",
    "backend": "serving framework constants: trtllm, vllm, sglang ('' = pooled)",
    "bench_rounds": "requests per user of a closed-loop benchmark (.inf = steady state)",
    "max_num_tokens": ("token budget of one engine step: decodes plus prompt chunks (vLLM max_num_batched_tokens, "
                       "SGLang chunked_prefill_size, TensorRT-LLM max_num_tokens; 0 = the backend's default, "
                       "hardware/runtime.yaml engine_limits)"),
    "spec_tokens": "speculative decoding: tokens drafted per decode step (0 = off)",
    "spec_acceptance": "chance a draft token is kept given the ones before it were (default: runtime.yaml)",
    "prefill_device": "disagg: device of the prefill pool ('' = device)",
    "prefill_tp": "disagg: prefill tensor parallel (0 = tp)",
    "prefill_dp": "disagg: prefill attention data parallel (0 = dp)",
    "prefill_ep": "disagg: prefill expert parallel (0 = ep)",
    "prefill_pp": "disagg: prefill pipeline stages (0 = pp)",
    "prefill_redundant_experts": "disagg: prefill EPLB redundant experts (0 = redundant_experts)",
    "prefill_workers": "disagg: prefill workers (with decode_workers: the prefill:decode ratio)",
    "decode_device": "disagg: device of the decode pool ('' = device)",
    "decode_tp": "disagg: decode tensor parallel (0 = tp)",
    "decode_dp": "disagg: decode attention data parallel (0 = dp)",
    "decode_ep": "disagg: decode expert parallel (0 = ep)",
    "decode_pp": "disagg: decode pipeline stages (0 = pp)",
    "decode_redundant_experts": "disagg: decode EPLB redundant experts (0 = redundant_experts)",
    "decode_workers": "disagg: decode workers",
    "decode_batch_size": "disagg: decode batch per worker (0 = batch_size)",
    "attn_device": "afd: device of the attention pool ('' = device)",
    "attn_tp": "afd: attention tensor parallel inside the attention pool",
    "attn_gpus": "afd: GPUs of the attention pool (0 = the engine's choice)",
    "ffn_device": "afd: device of the FFN pool ('' = device)",
    "ffn_gpus": "afd: GPUs of the FFN pool: expert parallel (MoE) or tensor parallel (dense) (0 = the engine's choice)",
    "ttft_slo_ms": "TTFT target for goodput, ms (set by slos.ttft_ms; .inf = none)",
    "tpot_slo_ms": "TPOT target for goodput, ms (set by slos.tpot_ms; .inf = none)",
    "slo_confidence": "probability with which the SLOs must hold, in [0, 1) (0 = the point prediction decides)",
    "arrival_rate": ("open-loop traffic: requests/s offered to the whole deployment (replicas included), Poisson "
                     "arrivals; batch_size is then the running-request limit per replica (0 = the closed loop of "
                     "batch_size users)"),
    "ttft_p99_slo_ms": "p99 TTFT target for goodput, ms (set by slos.ttft_p99_ms; .inf = none)",
    "tpot_p99_slo_ms": "p99 TPOT target for goodput, ms (set by slos.tpot_p99_ms; .inf = none)",
}

# latency percentiles over requests (open-loop traffic: dse.model.openloop; closed loop: the mean)
PERCENTILE_METRICS = ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms")
# the engine's output columns, in this order
METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
           "power_w", "joules_per_token", "usd_per_mtok", "usd_per_hour", "num_gpus", "memory_gb_per_gpu",
           "capex_usd", "meets_slo", "meets_slo_prob", "goodput_tokens_per_s", "usd_per_mtok_at_slo", "quality_loss",
           "quality_loss_p90", *(f"{m}_{q}" for m in ("ttft_ms", "tpot_ms", "tokens_per_s", "tokens_per_s_per_gpu",
                                                       "tokens_per_s_per_user", "usd_per_mtok", "joules_per_token",
                                                       "goodput_tokens_per_s") for q in ("p10", "p90")),
           "cache_hit_rate", "load_imbalance", *PERCENTILE_METRICS, "feasible", "infeasible_reason", "bottleneck")
NON_NUMERIC_METRICS = ("feasible", "infeasible_reason", "bottleneck", "meets_slo")


@dataclass(frozen=True)
class Metric:
    label: str          # short human label
    unit: str           # "" for a count or a ratio
    direction: str      # "min" or "max": which way is better


METRIC_INFO: dict[str, Metric] = {
    "ttft_ms": Metric("TTFT", "ms", "min"),
    "tpot_ms": Metric("TPOT", "ms", "min"),
    "e2e_ms": Metric("end-to-end", "ms", "min"),
    "tokens_per_s": Metric("throughput", "tok/s", "max"),
    "tokens_per_s_per_gpu": Metric("throughput per GPU", "tok/s/GPU", "max"),
    "tokens_per_s_per_user": Metric("speed per user", "tok/s/user", "max"),
    "goodput_tokens_per_s": Metric("goodput", "tok/s", "max"),
    "power_w": Metric("power", "W", "min"),
    "joules_per_token": Metric("energy", "J/token", "min"),
    "usd_per_mtok": Metric("cost", "$/Mtok", "min"),
    "usd_per_mtok_at_slo": Metric("cost at the SLO", "$/Mtok", "min"),
    "usd_per_hour": Metric("cost rate", "$/h", "min"),
    "capex_usd": Metric("capex", "$", "min"),
    "num_gpus": Metric("GPUs", "", "min"),
    "memory_gb_per_gpu": Metric("memory per GPU", "GB", "min"),
    "meets_slo_prob": Metric("chance of meeting the SLOs", "", "max"),
    "ttft_p50_ms": Metric("TTFT p50", "ms", "min"),
    "ttft_p99_ms": Metric("TTFT p99", "ms", "min"),
    "tpot_p50_ms": Metric("TPOT p50", "ms", "min"),
    "tpot_p99_ms": Metric("TPOT p99", "ms", "min"),
    # expected drop in answer quality from the weight and KV formats (hardware/quality.yaml)
    "quality_loss": Metric("quality loss", "pp", "min"),
    "quality_loss_p90": Metric("quality loss (p90)", "pp", "min"),
    # the prefix cache and routing over replicas (dse.deploy.kvcache)
    "cache_hit_rate": Metric("prefix-cache hit rate", "", "max"),
    "load_imbalance": Metric("load imbalance (busiest replica / mean)", "x", "min"),
    # afd candidates at their optimal op placement (scenarios with a `placement:` section)
    "placed_tokens_per_s": Metric("placed throughput", "tok/s", "max"),
    "placed_tpot_ms": Metric("placed TPOT", "ms", "min"),
    "placed_usd_per_mtok": Metric("placed cost", "$/Mtok", "min"),
    "placed_bottleneck_ms": Metric("placed bottleneck stage", "ms", "min"),
    "placed_num_gpus": Metric("placed GPUs", "", "min"),
    "placed_gain": Metric("placement gain over the split", "x", "max"),
}

# the 80 % prediction interval of a metric: its p10 and p90 (dse.deploy.intervals)
for _m in ("ttft_ms", "tpot_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user", "usd_per_mtok",
           "joules_per_token", "goodput_tokens_per_s"):
    for _q in ("p10", "p90"):
        METRIC_INFO[f"{_m}_{_q}"] = Metric(f"{METRIC_INFO[_m].label} {_q}", METRIC_INFO[_m].unit, METRIC_INFO[_m].direction)

# what binds the decode step (the `bottleneck` column's categories, in code order)
BOTTLENECKS = ["compute", "memory", "comm", "kv_capacity"]

# why a row is infeasible: the code is the first word of its text ("memory: weights and activations do not fit")
# and is what code branches on; the text says the rest
REASON_CODES = ("memory", "kv_capacity", "structure", "context", "placement", "constraint", "numeric",
                "saturated")


def direction(metric: str) -> str:
    """'min' or 'max' for a metric; unknown metrics are minimised."""
    info = METRIC_INFO.get(metric)
    return info.direction if info else "min"


def metric_label(name: str, *, unit: bool = True) -> str:
    info = METRIC_INFO.get(name)
    if info is None:
        return name
    return f"{info.label} ({info.unit})" if unit and info.unit else info.label
