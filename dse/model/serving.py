"""What a deployment delivers: TTFT, TPOT, throughput and power of a serving mode.

A *pool* is a set of identical workers (device, parallel layout, formats). Step times
come from `ops.forward`; this module turns them into serving behaviour under closed-loop
load: `concurrency` users each keep one request in flight, so throughput X and request
lifetime L obey L = concurrency / X (TTFT + (osl - 1) TPOT = L).

The serving framework is a few measured constants (`Runtime`, one set per backend,
fitted by `python -m dse.fit.serving` from measured deployments):
  request_ms   per-request latency outside the GPU (HTTP, tokenisation, admission,
               first-token delivery): added to TTFT, overlaps with other work;
  step_ms      per-iteration cost the kernels do not show (scheduler, sampling,
               launch gaps, small elementwise kernels): added to every step;
  max_tokens   token budget of one iteration (max_num_batched_tokens / chunked-prefill
               size): how much prompt one step may carry.

agg: one pool, continuous batching with chunked prefill. A step holds at most
    `max_tokens` tokens: the running decodes, then prompt chunks in the rest. Every step
    is priced whole through the kernels (ops.forward with a chunk): its GEMMs, experts and
    collectives see the decode and prompt tokens together, its attention runs the decode
    kernel over the decodes and the prefill kernel over the chunks. In steady state the
    other running requests' prompts are spread over a request's decode steps, so
        TPOT = step(running decodes + their mean prompt tokens per step) + step_ms,
    and a request's own prompt (with the group of prompts that arrive with it) fills
    ceil(group x isl / budget) steps, the later ones overlapped across pipeline stages:
        TTFT = request_ms + step(others' decodes + the group's chunk) (1 + (chunks - 1) / pp).
    A benchmark of `rounds` requests per user starts all users at once: its first round
    queues the whole concurrency's prompts and adds (TTFT_first - TTFT) / rounds to the
    mean (rounds = inf: steady state). More users than KV slots (or than the engine's
    `max_seqs`) wait for a slot; prompts beyond the steps' prompt capacity queue in TTFT.
disagg: a prefill pool and a decode pool, possibly of different devices. Prefill
    workers batch whole prompts up to `max_tokens`; the KV cache of each prompt moves
    to a decode worker (scale-up fabric inside one domain, NICs otherwise) and its time
    adds to TTFT; decode steps carry no prefill. Throughput is the least of the closed
    loop, the prefill pool's and the decode pool's rates; the excess queues in TTFT.
afd: attention (with the KV cache) on one pool, FFN / experts on another. Per layer a
    micro-batch's activations go to the FFN GPUs holding its experts and back (once per
    distinct GPU inside a scale-up domain, once per node across the network). With m
    micro-batches in flight the pools work on different micro-batches at once
    (ping-pong): a layer costs max(m max(t_attn, t_ffn, t_link), t_attn + t_ffn +
    t_round_trip) for micro-batches of batch/m. Memory-bound experts are streamed once
    per micro-batch, so m (1 = the pools take turns, 2 or 3) is whichever is fastest.
    Prefill runs through the same pools (chunked, as in agg), or on separate prefill
    workers that hand the KV cache to the attention pool (prefill_device given).

Speculative decoding (`Spec`, any mode): a decode step drafts k tokens per sequence
(MTP heads, EAGLE: one draft layer and the LM head per token) and verifies them with
the sequence's last token in one step of k + 1 query tokens. Each draft is kept with
probability a if every draft before it was, so a step yields E = (1 - a^(k+1)) / (1 - a)
tokens (Leviathan et al., ICML 2023) and TPOT = (verify + drafting + step_ms) / E.

Pricing per pool: a disaggregated candidate is a prefill (or attention) pool x a decode
(or FFN) pool x worker counts, and a sweep holds each pool many times over. The prefill
step, the decode step at the configured batch, each afd pool's forward, MoE routing and
the layout checks are priced once per distinct row of their own inputs (dse.model.dedupe,
within a chunk of rows, when a sample shows repeats) and gathered; the join -- rate
matching of the pools, KV transfer, the lesser pool's throughput, the SLOs -- runs row by
row. Rows the prefill pool starves are priced again alone. The numbers are the row-by-row
path's (tests/test_pool_eval.py).

The code: dse.model.steps (pools, steps, batching), dse.model.pd (agg, disagg),
dse.model.afd; this module is their face.
"""
from __future__ import annotations

from dse.model.afd import AFD_MICROBATCHES, ATTN_OPS, FFN_OPS, afd
from dse.model.pd import agg, disagg, kv_transfer_ms
from dse.model.steps import (ModeResult, Pool, PoolReport, Runtime, Spec, bound_split,
                             chunked_latency, draft_ms, mixed_latency,
                             new_tokens, prefill_phase, rows_of)

__all__ = ["agg", "disagg", "afd", "Runtime", "Spec", "Pool", "PoolReport", "ModeResult", "rows_of", "bound_split",
           "prefill_phase", "new_tokens",
           "chunked_latency", "mixed_latency", "draft_ms", "kv_transfer_ms", "ATTN_OPS", "FFN_OPS", "AFD_MICROBATCHES"]
