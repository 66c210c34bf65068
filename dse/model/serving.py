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

agg: one pool, continuous batching with chunked prefill. Each step carries the running
    decodes plus up to `max_tokens` prompt tokens. A prompt costs its marginal prefill
    time p1 (its prefill step minus the weight streaming a decode step already pays).
    Requests whose prompts shared a step finish together and come back together, so
    prompts arrive in groups of g = min(running, max_tokens / isl): a request's TTFT
    is its group's step(s), and the other running requests' prompts are spread over
    its decode steps:
        TTFT = request_ms + ceil(isl / max_tokens) d + g p1
        TPOT = d + (running - g) p1 / (osl - 1),      d = decode step + step_ms.
    A benchmark of `rounds` requests per user starts all users at once: its first round
    queues the whole concurrency's prompts and adds (TTFT_first - TTFT) / rounds to the
    mean (rounds = inf: steady state). More users than KV slots wait for a slot.
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
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd

from dse.catalog.models import Model
from dse.model import ops, power
from dse.model.ops import Dtypes, Hw, Parallel, Step

ATTN_OPS = ("attn_proj", "attn_core", "tp_comm", "lm_head", "pp_comm")
FFN_OPS = ("ffn", "moe")   # AFD: the dispatch to the experts is the pools' transfer, not an all-to-all
AFD_MICROBATCHES = (1, 2, 3)   # micro-batches in flight: 1 = take turns, 2-3 = ping-pong (MegaScale-Infer, Step-3)
AFD_HOP_MS = 0.01               # fixed latency of one attention -> FFN hop (RDMA / NVLink send + completion)
MIN_MARGINAL = 0.1         # a prompt never costs less than this share of its own prefill step


@dataclasses.dataclass
class Runtime:
    """Serving-framework constants, one value per row (see module docstring)."""
    request_ms: np.ndarray
    step_ms: np.ndarray
    max_tokens: np.ndarray
    rounds: np.ndarray         # requests per user of a closed-loop benchmark (inf = steady state)


@dataclasses.dataclass
class Spec:
    """Speculative decoding per row: `tokens` drafted per step (0 = off) and `accept`,
    the probability that a draft is kept given the ones before it were."""
    tokens: np.ndarray
    accept: np.ndarray

    def per_step(self) -> np.ndarray:
        """Expected tokens a sequence gains per decode step."""
        a = np.minimum(np.asarray(self.accept, dtype=float), 1.0 - 1e-9)
        return (1.0 - a ** (np.asarray(self.tokens, dtype=float) + 1.0)) / (1.0 - a)


def draft_ms(model: Model, verify: Step, tokens) -> np.ndarray:
    """Drafting `tokens` tokens: one pass each through a one-layer draft head (DeepSeek's
    MTP module, an EAGLE head) and the LM head, at the cost of one average layer of the
    verification step (an upper bound: that step carries k + 1 tokens per sequence)."""
    head = verify.time_ms["lm_head"]
    layer = (verify.total_ms - head - verify.time_ms["pp_comm"]) / float(model.num_layers)
    return np.asarray(tokens, dtype=float) * (layer + head)


@dataclasses.dataclass
class Pool:
    """One kind of worker: hardware arrays, formats, layout and per-GPU figures."""
    hw: Hw
    dt: Dtypes
    par: Parallel
    tdp_w: np.ndarray
    idle_w: np.ndarray
    cap_w: np.ndarray              # power cap per GPU
    max_seqs: np.ndarray           # sequences one worker's KV memory holds
    hw_key: np.ndarray             # one number per (device, weight format, KV format): dedupe key

    @property
    def gpus(self) -> np.ndarray:
        return self.par.tp * self.par.dp * self.par.pp


@dataclasses.dataclass
class PoolReport:
    role: str
    step_ms: np.ndarray            # the pool's step (prefill of a request, or decode step)
    utilisation: np.ndarray        # busy fraction of the pool's GPUs
    power_w: np.ndarray            # average power per GPU (GPU only)
    gpus: np.ndarray               # GPUs in this role for the whole unit
    transfer_ms: object = None     # what this pool waits on the network for (None: the mode's transfer)


@dataclasses.dataclass
class ModeResult:
    ttft_ms: np.ndarray
    tpot_ms: np.ndarray
    tokens_per_s: np.ndarray       # output tokens per second of one unit (replica)
    gpus: np.ndarray               # GPUs in one unit
    gpu_power_w: np.ndarray        # sum of average GPU power of the unit
    pools: list                    # PoolReport per role
    transfer_ms: np.ndarray        # KV (disagg) or activation (afd) transfer per request / step
    steps: dict                    # phase name -> (Step, Hw of its pool), for the breakdown
    load_fn: object = None         # load_fn(model, state, concurrency) -> (ttft, tpot, tokens_per_s)
    load_state: dict = None        # per-row arrays load_fn needs (subset with rows_of)
    model: object = None

    def load(self, concurrency):
        """(TTFT, TPOT, tokens/s) of the same deployment at another concurrency."""
        return self.load_fn(self.model, self.load_state, np.asarray(concurrency, dtype=float))


def rows_of(res: ModeResult, idx) -> ModeResult:
    """The rows `idx` of a result, enough to call `load` on them (goodput search)."""
    n = len(np.atleast_1d(res.ttft_ms))
    return dataclasses.replace(res, load_state=_take(res.load_state, idx, n))


def _phase_power(pool: Pool, step: Step, time_ms, coeffs: dict) -> tuple[np.ndarray, np.ndarray]:
    """(capped power per GPU while running this phase, time stretch from the cap)."""
    p = power.gpu_power_w(flops=step.total_flops(), nbytes=step.total_bytes(), time_ms=time_ms,
                          peak_tflops=pool.hw.peak_gemm, mem_tb_s=pool.hw.mem_tb_s,
                          tdp_w=pool.tdp_w, idle_w=pool.idle_w, **coeffs)
    share = compute_bound_share(step, pool.hw)
    capped, stretched = power.apply_cap(p, time_ms, share, cap_w=pool.cap_w)
    return capped, stretched / np.maximum(time_ms, 1e-12)


def bound_split(step: Step, hw: Hw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time of the step's operators that are compute-bound, memory-bound, communication
    (kept on the step: a step is split several times, always on its own hardware)."""
    if step.split is not None and step.split[0] is hw:
        return step.split[1]
    comp = 0.0
    ridge = hw.peak_gemm / hw.mem_tb_s
    for op, t in step.time_ms.items():
        if op not in ops.COMM_OPS:
            comp = comp + t * (step.flops[op] >= step.bytes[op] * ridge)
    comm = step.comm_ms()
    out = (comp, np.maximum(step.total_ms - comm - comp, 0.0), comm)
    step.split = (hw, out)
    return out


def compute_bound_share(step: Step, hw: Hw) -> np.ndarray:
    comp, mem, comm = bound_split(step, hw)
    return comp / np.maximum(comp + mem + comm, 1e-12)


def _take(x, idx, n):
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, dict):
        return {k: _take(v, idx, n) for k, v in x.items()}
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: _take(getattr(x, f.name), idx, n) for f in dataclasses.fields(x) if f.init})
    return np.broadcast_to(np.asarray(x, dtype=float), (n,))[idx]


# Square roots of distinct primes are linearly independent over the rationals, so
# integer-valued columns (codes, sizes, lengths) cannot cancel out in the weighted sum.
# (Powers of one number, used before, do: two of them summed to exactly 1.)
_KEY_WEIGHTS = tuple(np.sqrt([2.0, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61]))


def _unique_rows(*cols) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first row of each distinct combination of `cols`, and each row's group.

    One hash pass over a weighted sum of the columns, then a check that every column is
    constant inside each group (the exact column-by-column factorisation if not)."""
    n = max(np.size(c) for c in cols)
    arrs = [np.broadcast_to(np.asarray(c, dtype=float), (n,)) for c in cols]
    if len(arrs) <= len(_KEY_WEIGHTS):
        key = sum(a * w for a, w in zip(arrs, _KEY_WEIGHTS))
        inverse, uniq = pd.factorize(key)
        first = np.zeros(len(uniq), dtype=np.int64)
        first[inverse[::-1]] = np.arange(n)[::-1]
        if all(np.array_equal(a[first][inverse], a) for a in arrs if a.strides[0]):
            return first, inverse
    key = np.zeros(n, dtype=np.int64)
    for a in arrs:
        codes, uniq = pd.factorize(a)
        key = pd.factorize(key * len(uniq) + codes)[0]  # stays < n: no overflow
    inverse, uniq_keys = pd.factorize(key)
    first = np.zeros(len(uniq_keys), dtype=np.int64)
    first[inverse[::-1]] = np.arange(n)[::-1]
    return first, inverse


class _Gathered(Mapping):
    """src[k][idx] for each op k, gathered when first read: a prefill step's per-op arrays
    are only read for a breakdown, so most evaluations never pay for the gather."""

    def __init__(self, src: Mapping, idx):
        self.src, self.idx, self.done = src, idx, {}

    def __getitem__(self, k):
        if k not in self.done:
            self.done[k] = self.src[k][self.idx]
        return self.done[k]

    def __iter__(self):
        return iter(self.src)

    def __len__(self) -> int:
        return len(self.src)


def _gather_step(step: Step, idx) -> Step:
    return Step(time_ms=_Gathered(step.time_ms, idx), flops=_Gathered(step.flops, idx),
                bytes=_Gathered(step.bytes, idx))


def prefill_phase(model: Model, pool: Pool, isl, prefix_hit, skew, coeffs):
    """Prefill of one request's uncached prompt on every attention rank (the cached prefix
    is attended, not recomputed): (its Step, time under the power cap, power per GPU,
    marginal time p1 of one more prompt in a step that already streams the weights).

    It does not depend on the batch, so a sweep's many rows share few distinct prefills:
    each distinct (hardware, layout, formats, prompt) is computed once and gathered."""
    n = np.broadcast(isl, pool.par.tp, pool.hw.peak_gemm).shape[0] if np.ndim(isl) or np.ndim(pool.par.tp) else 1
    isl = np.broadcast_to(np.asarray(isl, dtype=float), (n,))
    cached = np.floor(isl * prefix_hit)
    new = np.maximum(isl - cached, 1.0)
    skew = np.broadcast_to(np.asarray(skew, dtype=float), (n,))
    key_cols = (pool.hw_key, pool.par.tp, pool.par.dp, pool.par.ep, pool.par.pp, pool.dt.kv_bytes, new, cached,
                skew, pool.cap_w)
    first, inverse = _unique_rows(*key_cols)
    sub = _take(pool, first, n)
    step = ops.forward(model, hw=sub.hw, par=sub.par, dt=sub.dt, batch=sub.par.dp, q_len=new[first],
                       ctx=(cached + new)[first], skew=skew[first])
    p_pre, stretch = _phase_power(sub, step, step.total_ms, coeffs)
    t_pre = step.total_ms * stretch
    p1 = marginal_prefill_ms(step, sub.hw, t_pre)
    return _gather_step(step, inverse), t_pre[inverse], p_pre[inverse], p1[inverse]


def _decode_step(model: Model, pool: Pool, batch, ctx, skew, spec: Spec | None = None) -> Step:
    """One decode step of `batch` sequences, pipelined over pp stages as pp micro-batches:
    a token's step crosses every stage once, so TPOT is one micro-batch through all layers.
    With speculative decoding it is the verification step of 1 + k tokens per sequence."""
    micro = np.maximum(np.asarray(batch, dtype=float) / pool.par.pp, 1.0)
    q = np.ones_like(micro) if spec is None else (1.0 + spec.tokens) * np.ones_like(micro)
    return ops.forward(model, hw=pool.hw, par=pool.par, dt=pool.dt, batch=micro, q_len=q, ctx=ctx, skew=skew,
                       verify=spec is not None)


def _decode(model: Model, pool: Pool, batch, st: dict):
    """A decode step of `batch` sequences on `pool`: (its time with step_ms and drafting,
    tokens per sequence it yields, its Step, power per GPU)."""
    spec = st.get("spec")
    dec = _decode_step(model, pool, batch, st["ctx"], st["skew"], spec)
    p_dec, s_dec = _phase_power(pool, dec, dec.total_ms, st["coeffs"])
    d = dec.total_ms * s_dec + st["rt"].step_ms
    if spec is None:
        return d, 1.0, dec, p_dec
    return d + draft_ms(model, dec, spec.tokens) * s_dec, spec.per_step(), dec, p_dec


def marginal_prefill_ms(step: Step, hw: Hw, time_ms) -> np.ndarray:
    """What one more prompt adds to a step that already streams the weights: the prefill
    step without its memory-bound (weight-streaming) operators, at least MIN_MARGINAL of it."""
    _, mem, _ = bound_split(step, hw)
    scale = time_ms / np.maximum(step.total_ms, 1e-12)
    return np.maximum(time_ms - mem * scale, MIN_MARGINAL * time_ms)


def new_tokens(isl, prefix_hit) -> np.ndarray:
    isl = np.asarray(isl, dtype=float)
    return np.maximum(isl - np.floor(isl * prefix_hit), 1.0)


def chunked_latency(*, n, running, d, p1, isl_new, osl, rt: Runtime, per_step=1.0):
    """TTFT and TPOT of one attention rank under continuous batching with chunked prefill.

    n users on the rank, `running` of them hold a KV slot; d = decode step (with the
    framework's step cost), p1 = marginal prefill of one prompt, per_step = tokens a
    sequence gains per decode step (speculative decoding). See the module docstring."""
    osl1 = np.maximum(np.asarray(osl, dtype=float) - 1.0, 1.0)
    group = np.clip(rt.max_tokens / isl_new, 1.0, running)
    chunks = np.maximum(isl_new / rt.max_tokens, 1.0)
    ttft = rt.request_ms + chunks * d + group * p1
    tpot = d / per_step + np.maximum(running - group, 0.0) * p1 / osl1
    steps_first = np.maximum(running * isl_new / rt.max_tokens, 1.0)
    first = rt.request_ms + (steps_first + 1.0) / 2.0 * (d + running * p1 / steps_first)
    ttft = ttft + np.maximum(first - ttft, 0.0) / rt.rounds
    life = ttft + osl1 * tpot
    ttft = np.maximum(ttft, n / running * life - osl1 * tpot)       # wait for a KV slot
    return ttft, tpot


def agg(model: Model, pool: Pool, *, concurrency, isl, osl, prefix_hit, skew, coeffs, rt: Runtime,
        spec: Spec | None = None) -> ModeResult:
    conc = np.maximum(np.asarray(concurrency, dtype=float), 1.0)
    osl = np.asarray(osl, dtype=float)
    pre, _, p_pre, p1 = prefill_phase(model, pool, isl, prefix_hit, skew, coeffs)
    st = dict(pool=pool, rt=rt, skew=skew, coeffs=coeffs, osl=osl, isl_new=new_tokens(isl, prefix_hit),
              ctx=np.asarray(isl, dtype=float) + osl / 2.0, p1=p1, spec=spec)
    ttft, tpot, x, d, dec, p_dec = _agg_at(model, st, conc, keep=True)
    share = np.minimum(x / pool.par.dp * st["p1"], 1.0)               # prefill share of GPU time
    gpu_w = share * p_pre + (1.0 - share) * p_dec
    rep = PoolReport("agg", d, np.ones_like(d), gpu_w, pool.gpus)
    return ModeResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=x * osl * 1e3, gpus=pool.gpus,
                      gpu_power_w=gpu_w * pool.gpus, pools=[rep], transfer_ms=np.zeros_like(ttft),
                      steps={"prefill": (pre, pool.hw), "decode": (dec, pool.hw)},
                      load_fn=_agg_at, load_state=st, model=model)


def _agg_at(model: Model, st: dict, c, *, keep=False):
    pool, rt, osl = st["pool"], st["rt"], st["osl"]
    dp = pool.par.dp
    n = np.maximum(c / dp, 1.0)
    running = np.minimum(n, np.maximum(pool.max_seqs / dp, 1.0))
    d, per_step, dec, p_dec = _decode(model, pool, running * dp, st)
    ttft, tpot = chunked_latency(n=n, running=running, d=d, p1=st["p1"], isl_new=st["isl_new"], osl=osl, rt=rt,
                                 per_step=per_step)
    x = c / (ttft + np.maximum(osl - 1.0, 0.0) * tpot)                # requests per ms, whole replica
    if not keep:
        return ttft, tpot, x * osl * 1e3
    return ttft, tpot, x, d, dec, p_dec


def kv_transfer_ms(model: Model, *, isl, kv_bytes, same_domain, src: Pool, dst: Pool) -> np.ndarray:
    """Moving one prompt's KV cache from a prefill worker to a decode worker: every
    prefill GPU sends its shard in parallel over its own link (scale-up inside one
    domain, its NIC otherwise), plus a fixed handshake of 20 us."""
    elems = model.kv_elems_per_token(1) * np.asarray(isl, dtype=float)
    nbytes = elems * kv_bytes
    link = np.where(same_domain, np.minimum(src.hw.scaleup_gb_s, dst.hw.scaleup_gb_s),
                    np.minimum(src.hw.scaleout_gb_s, dst.hw.scaleout_gb_s))
    lanes = np.minimum(src.gpus, dst.gpus)
    return nbytes / (link * 1e9 * lanes) * 1e3 + 0.02


def disagg(model: Model, pre_pool: Pool, dec_pool: Pool, *, prefill_workers, decode_workers, concurrency,
           isl, osl, prefix_hit, skew, coeffs, same_domain, rt: Runtime, spec: Spec | None = None) -> ModeResult:
    """Prefill workers run batches of whole prompts (up to max_tokens) and hand each KV
    cache to a decode worker; decode steps carry no prefill. Closed loop over both."""
    osl = np.asarray(osl, dtype=float)
    pw = np.asarray(prefill_workers, dtype=float)
    dw = np.asarray(decode_workers, dtype=float)
    st, pre, p_pre = _prefill_pool_state(model, pre_pool, dec_pool, prefill_workers=pw, isl=isl, prefix_hit=prefix_hit,
                                         skew=skew, coeffs=coeffs, same_domain=same_domain, rt=rt)
    t_pre, xfer = st["t_pre"], st["xfer"]
    st.update(dec_pool=dec_pool, rt=rt, skew=skew, coeffs=coeffs, osl=osl, ctx=np.asarray(isl, dtype=float) + osl / 2.0,
              d_ranks=dw * dec_pool.par.dp, spec=spec)
    conc = np.maximum(np.asarray(concurrency, dtype=float), 1.0)
    ttft, tpot, x, dec, p_dec = _disagg_at(model, st, conc, keep=True)
    util_pre = np.minimum(x / st["pre_rate"], 1.0)
    util_dec = np.ones_like(util_pre)                    # decode steps run while any sequence is running
    gp = util_pre * p_pre + (1 - util_pre) * pre_pool.idle_w
    gd = util_dec * p_dec + (1 - util_dec) * dec_pool.idle_w
    g_pre, g_dec = pre_pool.gpus * pw, dec_pool.gpus * dw
    pools = [PoolReport("prefill", t_pre, util_pre, gp, g_pre), PoolReport("decode", tpot, util_dec, gd, g_dec)]
    return ModeResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=x * osl * 1e3, gpus=g_pre + g_dec,
                      gpu_power_w=gp * g_pre + gd * g_dec, pools=pools, transfer_ms=xfer,
                      steps={"prefill": (pre, pre_pool.hw), "decode": (dec, dec_pool.hw)},
                      load_fn=_disagg_at, load_state=st, model=model)


def _disagg_at(model: Model, st: dict, c, *, keep=False):
    pool = st["dec_pool"]
    running = np.minimum(np.maximum(c / st["d_ranks"], 1.0), np.maximum(pool.max_seqs / pool.par.dp, 1.0))

    def decode(batch):
        d, per_step, dec, p_dec = _decode(model, pool, batch * pool.par.dp, st)
        return d / per_step, dec, p_dec

    ttft, tpot, x, (_, dec, p_dec) = _pd_loop(st, c, running, decode)
    if not keep:
        return ttft, tpot, x * st["osl"] * 1e3
    return ttft, tpot, x, dec, p_dec


def _prefill_pool_state(model: Model, pre_pool: Pool, dst: Pool, *, prefill_workers, isl, prefix_hit, skew, coeffs,
                        same_domain, rt: Runtime) -> tuple[dict, Step, np.ndarray]:
    """What a separate prefill pool contributes: its step, batching, KV hand-off and rate."""
    isl_new = new_tokens(isl, prefix_hit)
    pre, t_pre, p_pre, p1 = prefill_phase(model, pre_pool, isl, prefix_hit, skew, coeffs)
    t_pre = t_pre + rt.step_ms
    xfer = kv_transfer_ms(model, isl=isl, kv_bytes=dst.dt.kv_bytes, same_domain=same_domain, src=pre_pool, dst=dst)
    full = np.maximum(rt.max_tokens / isl_new, 1.0)      # prompts in a full prefill batch
    p_ranks = np.asarray(prefill_workers, dtype=float) * pre_pool.par.dp
    st = dict(t_pre=t_pre, p1=p1, xfer=xfer, full=full, p_ranks=p_ranks,
              pre_rate=p_ranks * full / (t_pre + (full - 1.0) * p1))   # requests per ms the prefill pool sustains
    return st, pre, p_pre


def _pd_loop(st: dict, c, running, decode):
    """Closed loop over a prefill pool and decode ranks whose time per output token at a
    given batch per rank is decode(batch)[0]: (TTFT, TPOT, requests per ms, decode(...) at
    the served load)."""
    rt, osl = st["rt"], st["osl"]
    osl1 = np.maximum(osl - 1.0, 0.0)
    p_ranks, d_ranks, full, p1, t_pre = st["p_ranks"], st["d_ranks"], st["full"], st["p1"], st["t_pre"]
    out = decode(running)
    tpot = out[0]
    # prompts come back in groups (one decode step finishes them together) and share a batch
    group = np.clip(c / p_ranks, 1.0, full)
    ttft = rt.request_ms + t_pre + (group - 1.0) * p1 + st["xfer"]
    steps_first = np.maximum(c / p_ranks / full, 1.0)
    first = (rt.request_ms + (steps_first + 1.0) / 2.0 * (t_pre + (np.minimum(c / p_ranks, full) - 1.0) * p1)
             + st["xfer"])
    ttft = ttft + np.maximum(first - ttft, 0.0) / rt.rounds
    loop = c / (ttft + osl1 * tpot)
    dec_rate = d_ranks * running / np.maximum(osl1 * tpot, 1e-9)
    x = np.minimum(np.minimum(loop, st["pre_rate"]), dec_rate)
    starved = x < np.minimum(loop, dec_rate) * 0.999
    if np.any(starved):
        # prefill-bound: fewer sequences decode at once (Little: x * decode time), so steps are shorter
        out2 = decode(np.clip(x * osl1 * tpot / d_ranks, 1.0, running))
        out = tuple(_where_any(starved, b, a) for a, b in zip(out, out2))
        tpot = out[0]
    ttft = np.maximum(ttft, c / x - osl1 * tpot)          # the backlog waits for prefill or a decode slot
    return ttft, tpot, x, out


def _where_any(mask, a, b):
    if isinstance(a, Step):
        return _where_step(mask, a, b)
    return np.where(mask, a, b)


def _sum_ops(step: Step, names) -> np.ndarray:
    return sum(step.time_ms[k] for k in names)


def afd(model: Model, attn_pool: Pool, ffn_pool: Pool, *, concurrency, isl, osl, prefix_hit, skew, coeffs,
        same_domain, rt: Runtime, pre_pool: Pool | None = None, prefill_workers=1,
        pre_same_domain=False, spec: Spec | None = None) -> ModeResult:
    """Attention/FFN disaggregation: per layer, each micro-batch runs attention on the
    attention pool, ships its activations to the FFN pool and back. With m micro-batches
    in flight the pools overlap: a layer costs max(m t_a, m t_f, m t_x) plus one
    micro-batch's pipeline fill (MegaScale-Infer's ping-pong pipeline); memory-bound
    experts are streamed once per micro-batch, so m is chosen per step (1 = take turns).
    Prompts are prefilled through the same pools (chunked, as in agg), or, given
    `pre_pool`, on separate prefill workers that hand the KV cache to the attention pool
    (prefill/decode disaggregation in front of an attention/FFN-disaggregated decode)."""
    conc = np.maximum(np.asarray(concurrency, dtype=float), 1.0)
    osl = np.asarray(osl, dtype=float)
    isl = np.asarray(isl, dtype=float)
    link = np.where(same_domain, np.minimum(attn_pool.hw.scaleup_gb_s, ffn_pool.hw.scaleup_gb_s),
                    np.minimum(attn_pool.hw.scaleout_gb_s, ffn_pool.hw.scaleout_gb_s))
    if model.is_moe:
        # a token goes once to every distinct FFN GPU among its top-k experts inside one
        # scale-up domain; across the network once per FFN node (forwarded on over NVLink,
        # as DeepEP's internode dispatch does), the node's NICs sharing the traffic
        k = float(max(g.ffn.top_k for g in model.groups if g.ffn.kind == "moe"))
        targets = np.where(same_domain, ffn_pool.gpus, np.maximum(ffn_pool.gpus / ffn_pool.hw.domain, 1.0))
        copies = np.where(targets > 1, targets * -np.expm1(k * np.log1p(-1.0 / np.maximum(targets, 1.0 + 1e-9))), 1.0)
    else:
        copies = np.ones_like(np.asarray(ffn_pool.gpus, dtype=float))
    st = dict(attn_pool=attn_pool, ffn_pool=ffn_pool, link=link, rt=rt, skew=skew, coeffs=coeffs, osl=osl,
              isl_new=new_tokens(isl, prefix_hit), ctx=isl + osl / 2.0, copies=copies, spec=spec)
    dp = attn_pool.par.dp
    pools = []
    if pre_pool is not None:
        pst, pre_step, p_pre = _prefill_pool_state(model, pre_pool, attn_pool, prefill_workers=prefill_workers, isl=isl,
                                                   prefix_hit=prefix_hit, skew=skew, coeffs=coeffs,
                                                   same_domain=pre_same_domain, rt=rt)
        st.update(pst, pd=True, d_ranks=dp)
        prefill = (pre_step, pre_pool.hw)
    else:
        one = np.ones_like(st["isl_new"])
        t_pre, pa_busy, pf_busy, _, pre_a, pre_f = _pingpong(model, st, dp * one, st["isl_new"], isl, one)
        st["p1"] = np.maximum(t_pre - marginal_floor(pre_a, attn_pool.hw, pa_busy)
                              - marginal_floor(pre_f, ffn_pool.hw, pf_busy), MIN_MARGINAL * t_pre)
        prefill = (pre_a, attn_pool.hw)
    ttft, tpot, x, d, da_busy, df_busy, tx, dec_a, dec_f, micro = _afd_at(model, st, conc, keep=True)
    if pre_pool is not None:
        share = np.zeros_like(ttft)
        ua, uf = da_busy / d, df_busy / d
        util_pre = np.minimum(x / st["pre_rate"], 1.0)
        gp = util_pre * p_pre + (1 - util_pre) * pre_pool.idle_w
        g_pre = pre_pool.gpus * np.asarray(prefill_workers, dtype=float)
        pools.append(PoolReport("prefill", st["t_pre"], util_pre, gp, g_pre, transfer_ms=st["xfer"]))
    else:
        share = np.minimum(x / dp * st["p1"], 1.0)
        ua = share * pa_busy / np.maximum(t_pre, 1e-9) + (1 - share) * da_busy / d
        uf = share * pf_busy / np.maximum(t_pre, 1e-9) + (1 - share) * df_busy / d
        gp, g_pre = 0.0, 0.0
    pa, _ = _phase_power(attn_pool, dec_a, np.maximum(da_busy / micro, 1e-9), coeffs)
    pf, _ = _phase_power(ffn_pool, dec_f, np.maximum(df_busy / micro, 1e-9), coeffs)
    ga = attn_pool.idle_w + np.minimum(ua, 1.0) * (pa - attn_pool.idle_w)
    gf = ffn_pool.idle_w + np.minimum(uf, 1.0) * (pf - ffn_pool.idle_w)
    pools += [PoolReport("attention", d, np.minimum(ua, 1.0), ga, attn_pool.gpus),
              PoolReport("ffn", d, np.minimum(uf, 1.0), gf, ffn_pool.gpus)]
    return ModeResult(ttft_ms=ttft, tpot_ms=tpot, tokens_per_s=x * osl * 1e3,
                      gpus=attn_pool.gpus + ffn_pool.gpus + g_pre,
                      gpu_power_w=ga * attn_pool.gpus + gf * ffn_pool.gpus + gp * g_pre, pools=pools, transfer_ms=tx,
                      steps={"prefill": prefill, "decode": (dec_a, attn_pool.hw), "decode_ffn": (dec_f, ffn_pool.hw)},
                      load_fn=_afd_at, load_state=st, model=model)


def _pingpong(model: Model, st: dict, batch, q_len, ctx, micro, verify: bool = False):
    """One step of `batch` sequences through both pools in `micro` micro-batches:
    (step time, attention busy, FFN busy, transfer busy, attention Step, FFN Step).

    The attention pool sends each token's activations straight to the FFN GPUs that hold
    its experts (the dispatch replaces the expert-parallel all-to-all) and gets the
    weighted sum back: a token crosses to every distinct FFN GPU among its top-k experts."""
    ap, fp = st["attn_pool"], st["ffn_pool"]
    sa = ops.forward(model, hw=ap.hw, par=ap.par, dt=ap.dt, batch=batch / micro, q_len=q_len, ctx=ctx, skew=st["skew"],
                     verify=verify)
    sf = ops.forward(model, hw=fp.hw, par=fp.par, dt=fp.dt, batch=batch / micro, q_len=q_len, ctx=ctx, skew=st["skew"],
                     verify=verify)
    ta, tf = _sum_ops(sa, ATTN_OPS), _sum_ops(sf, FFN_OPS)
    tokens = batch / micro * q_len
    per_gpu = tokens * st["copies"] * float(model.hidden) / np.minimum(ap.gpus, fp.gpus)
    layers = float(model.num_layers)
    t_out = layers * (per_gpu * ap.dt.a_bytes / (st["link"] * 1e9) * 1e3 + AFD_HOP_MS)   # dispatch
    t_back = layers * (per_gpu * 2.0 / (st["link"] * 1e9) * 1e3 + AFD_HOP_MS)            # combine (bf16)
    tx = t_out + t_back
    # per layer a micro-batch goes attention -> link -> FFN -> link; with m in flight each
    # resource serves m of them per layer (links are full duplex), and no micro-batch can
    # go round faster than its own round trip
    busy = micro * np.maximum(np.maximum(ta, tf), np.maximum(t_out, t_back))
    t = np.maximum(busy, ta + tf + tx)
    return t, micro * ta, micro * tf, micro * tx, sa, sf


def _afd_at(model: Model, st: dict, c, *, keep=False):
    """Decode steps at concurrency c; the number of micro-batches (1 = the pools take
    turns, 2-3 = ping-pong) is whichever gives the shortest step."""
    ap, rt, osl = st["attn_pool"], st["rt"], st["osl"]
    dp = ap.par.dp
    n = np.maximum(c / dp, 1.0)
    running = np.minimum(n, np.maximum(ap.max_seqs / dp, 1.0))
    if st.get("pd"):
        ttft, tpot, x, (_, d, da, df, tx, dec_a, dec_f, micro) = _pd_loop(st, c, running,
                                                                         lambda b: _afd_token(model, st, b))
        if not keep:
            return ttft, tpot, x * osl * 1e3
        return ttft, tpot, x, d, da, df, tx, dec_a, dec_f, micro
    d, da, df, tx, dec_a, dec_f, micro = _afd_step(model, st, running)
    ttft, tpot = chunked_latency(n=n, running=running, d=d, p1=st["p1"], isl_new=st["isl_new"], osl=osl, rt=rt,
                                 per_step=_per_step(st))
    x = c / (ttft + np.maximum(osl - 1.0, 0.0) * tpot)
    if not keep:
        return ttft, tpot, x * osl * 1e3
    return ttft, tpot, x, d, da, df, tx, dec_a, dec_f, micro


def _per_step(st: dict):
    spec = st.get("spec")
    return 1.0 if spec is None else spec.per_step()


def _afd_token(model: Model, st: dict, running):
    """_afd_step with the time per output token in front (for _pd_loop)."""
    out = _afd_step(model, st, running)
    return (out[0] / _per_step(st),) + out


def _afd_step(model: Model, st: dict, running):
    """The best of 1-3 micro-batches for a decode step of `running` sequences per
    attention rank: (step incl. step_ms and drafting, attn busy, FFN busy, transfer,
    Steps, micro)."""
    ap = st["attn_pool"]
    dp = ap.par.dp
    spec = st.get("spec")
    q = np.ones_like(running) if spec is None else (1.0 + spec.tokens) * np.ones_like(running)
    best = None
    for m in AFD_MICROBATCHES:
        micro = np.minimum(float(m), np.maximum(running * dp, 1.0))
        out = _pingpong(model, st, running * dp, q, st["ctx"], micro, verify=spec is not None)
        if best is None:
            best = list(out) + [micro]
            continue
        better = out[0] < best[0]
        best[:4] = [np.where(better, o, b) for o, b in zip(out[:4], best[:4])]
        best[4], best[5] = (_where_step(better, out[4], best[4]), _where_step(better, out[5], best[5]))
        best[6] = np.where(better, micro, best[6])
    best[0] = best[0] + st["rt"].step_ms
    if spec is not None:   # the draft head (attention and FFN of one layer) runs on the attention pool
        best[0] = best[0] + draft_ms(model, best[4], spec.tokens)
    return tuple(best)


def _where_step(mask, a: Step, b: Step) -> Step:
    return Step(time_ms={k: np.where(mask, a.time_ms[k], b.time_ms[k]) for k in a.time_ms},
                flops={k: np.where(mask, a.flops[k], b.flops[k]) for k in a.flops},
                bytes={k: np.where(mask, a.bytes[k], b.bytes[k]) for k in a.bytes})


def marginal_floor(step: Step, hw: Hw, busy_ms) -> np.ndarray:
    """The memory-bound (weight-streaming) share of `busy_ms` of a pool's step."""
    _, mem, _ = bound_split(step, hw)
    return busy_ms * mem / np.maximum(step.total_ms, 1e-12)
