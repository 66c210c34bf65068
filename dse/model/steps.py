"""The serving machinery every mode shares: pools, the framework's constants, speculative
decoding, prefill and decode steps under a power cap, and continuous batching.

A *pool* is a set of identical workers (device, parallel layout, formats). Step times
come from `ops.forward`; the modes (dse.model.pd: agg and disagg, dse.model.afd) turn
them into serving behaviour under closed-loop load. dse.model.serving tells the whole
story, including the serving framework's constants (`Runtime`: request_ms, step_ms,
max_tokens, fitted per backend by `python -m dse.fit.serving`).

Speculative decoding (`Spec`, any mode) yields E = (1 - a^(k+1)) / (1 - a) tokens per
decode step (Leviathan et al., ICML 2023); dse.model.serving says how it is priced.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import numpy as np

from dse.catalog.models import Model
from dse.model import ops, power
from dse.model.dedupe import Rows, distinct_rows, memo_rows, take_rows
from dse.model.dedupe import unique_rows as _unique_rows
from dse.model.ops import Dtypes, Hw, Parallel, Step

__all__ = ["Runtime", "Spec", "Pool", "PoolReport", "ModeResult", "rows_of", "draft_ms", "draft_work",
           "phase_power", "clock_bound_ms", "bound_split", "prefill_phase", "decode_phase",
           "new_tokens", "chunked_latency", "mixed_latency", "where_step", "scatter", "pair_link", "distinct_rows", "take", "pool_forward", "PhaseSteps"]


@dataclasses.dataclass
class Runtime:
    """Serving-framework constants, one value per row (see module docstring)."""
    request_ms: np.ndarray
    step_ms: np.ndarray
    max_tokens: np.ndarray
    rounds: np.ndarray         # requests per user of a closed-loop benchmark (inf = steady state)
    max_seqs: np.ndarray | float = np.inf   # the engine's cap on running sequences per rank


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
    return _draft(model, verify.time_ms, tokens)


def _draft(model: Model, per_op: dict, tokens):
    """`tokens` x (one average layer + the LM head) of a per-op figure of a step."""
    head = per_op["lm_head"]
    layer = (sum(per_op.values()) - head - per_op["pp_comm"]) / float(model.num_layers)
    return np.asarray(tokens, dtype=float) * (layer + head)


def draft_work(model: Model, verify: Step, tokens) -> tuple:
    """What drafting adds to a verification step's phase: (ms, FLOPs, bytes)."""
    return tuple(_draft(model, d, tokens) for d in (verify.time_ms, verify.flops, verify.bytes))


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
    cache_bytes: object = None     # HBM per GPU left for cached prefixes beyond the running batch's KV

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
    steps: Mapping                 # phase name -> (Step, Hw of its pool), for the breakdown (PhaseSteps: when read)
    load_fn: object = None         # load_fn(model, state, concurrency) -> (ttft, tpot, tokens_per_s)
    load_state: dict = None        # per-row arrays load_fn needs (subset with rows_of)
    model: object = None
    cache: dict = None             # prefix-cache metrics (dse.deploy.kvcache), None = the fixed prefix_hit

    def load(self, concurrency):
        """(TTFT, TPOT, tokens/s) of the same deployment at another concurrency."""
        return self.load_fn(self.model, self.load_state, np.asarray(concurrency, dtype=float))


def rows_of(res: ModeResult, idx) -> ModeResult:
    """The rows `idx` of a result, enough to call `load` on them (goodput search)."""
    n = len(np.atleast_1d(res.ttft_ms))
    return dataclasses.replace(res, load_state=_take(res.load_state, idx, n))


def phase_power(pool: Pool, step: Step, time_ms, coeffs: dict, draft=None) -> tuple[np.ndarray, np.ndarray]:
    """(capped power per GPU while running this phase, time stretch from the cap).
    `draft` (tokens, model): the phase also drafts that many tokens per step (draft_ms),
    under the same cap: the stretch is then of time_ms + the drafting. The clock-bound
    time is only worked out when some row is over its cap."""
    flops, nbytes, base_ms = step.total_flops(), step.total_bytes(), time_ms
    if draft is not None:
        extra = draft_work(draft[1], step, draft[0])
        time_ms, flops, nbytes = (a + b for a, b in zip((time_ms, flops, nbytes), extra))

    def clock():
        each = clock_bound_ms(step, pool.hw)
        out = sum(each.values()) / np.maximum(step.total_ms, 1e-12) * base_ms
        return out if draft is None else out + _draft(draft[1], each, draft[0])

    kw = dict(flops=flops, nbytes=nbytes, peak_tflops=pool.hw.peak_gemm, mem_tb_s=pool.hw.mem_tb_s,
              tdp_w=pool.tdp_w, idle_w=pool.idle_w, **coeffs)
    p = power.gpu_power_w(time_ms=time_ms, **kw)
    capped, stretched = power.apply_cap(p, time_ms, clock, cap_w=pool.cap_w, **kw)
    return capped, stretched / np.maximum(time_ms, 1e-12)


def clock_bound_ms(step: Step, hw: Hw) -> dict[str, np.ndarray]:
    """Per operator, the part of its time the core clock sets: its time, but at most its
    FLOPs at the device's GEMM compute ceiling (the rest is memory, latency or
    communication; collectives none). Never grows with more bandwidth or more FLOPS, which
    keeps the capped step monotone (dse.model.power.apply_cap)."""
    rate = hw.peak_gemm * 1e9 * np.asarray(hw.params["gemm"]["eff_compute"], dtype=float)   # FLOPs per ms
    return {op: np.minimum(t, step.flops[op] / rate) if op not in ops.COMM_OPS else 0.0 * t
            for op, t in step.time_ms.items()}


def bound_split(step: Step, hw: Hw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time of the step's operators that are compute-bound, memory-bound, communication
    (kept on the step: a step is split several times, always on its own hardware)."""
    if step.split is not None and step.split[0] is hw:
        return step.split[1]
    if isinstance(step, _Joined):            # each row's own step's split: three joins, not one per op
        a, b, join, sub = step.parts
        b_hw = hw if sub is None else _take(hw, *sub)
        out = tuple(join(x, y) for x, y in zip(bound_split(a, hw), bound_split(b, b_hw)))
    else:
        comp = 0.0
        ridge = hw.peak_gemm / hw.mem_tb_s
        for op, t in step.time_ms.items():
            if op not in ops.COMM_OPS and t is not step.zero:
                comp = comp + t * (step.flops[op] >= step.bytes[op] * ridge)
        comm = step.comm_ms()
        out = (comp, np.maximum(step.total_ms - comm - comp, 0.0), comm)
    step.split = (hw, out)
    return out


def take(x, idx, n: int):
    """The rows `idx` (integer positions) of x (n rows): arrays, scalars (broadcast), and the
    dicts and dataclasses (pools, states, Specs) made of them."""
    return _take(x, idx, n)


def _take(x, idx, n):
    """take(); idx: integer positions (ndarray.take gathers them faster than indexing)."""
    if isinstance(x, np.ndarray) and x.dtype == np.float64 and x.shape == (n,):
        return x.take(idx)                 # the common case, without a broadcast view
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, Rows):
        return x.take(idx)
    if isinstance(x, dict):
        return {k: _take(v, idx, n) for k, v in x.items()}
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: _take(getattr(x, f.name), idx, n) for f in dataclasses.fields(x) if f.init})
    return np.broadcast_to(np.asarray(x, dtype=float), (n,)).take(idx)


class LazyOps(Mapping):
    """A Step's per-op arrays made from another Step's when first read (a breakdown reads
    them; the hot path mostly reads totals and the bound split): the op k of `keys` is
    make(k), kept once made."""

    def __init__(self, keys: Mapping):
        self.keys_of, self.done = keys, {}

    def make(self, k):
        raise NotImplementedError

    def __getitem__(self, k):
        if k not in self.done:
            self.done[k] = self.make(k)
        return self.done[k]

    def __iter__(self):
        return iter(self.keys_of)

    def __len__(self) -> int:
        return len(self.keys_of)


class PhaseSteps(LazyOps):
    """ModeResult.steps made when first read: phase -> make() giving (Step, Hw). A phase that
    only the breakdown reads (agg's prefill: its time is in the mixed steps) is then never
    priced by an evaluation that does not ask for one."""

    def make(self, k):
        return self.keys_of[k]()


class _Gathered(LazyOps):
    """src[k][idx] for each op k: a prefill step's per-op arrays are only read for a
    breakdown, so most evaluations never pay for the gather."""

    def __init__(self, src: Mapping, idx):
        super().__init__(src)
        self.src, self.idx = src, idx

    def make(self, k):
        return np.take(self.src[k], self.idx)


def _gather_step(step: Step, idx, hw: tuple[Hw, Hw] | None = None) -> Step:
    """`step`'s rows idx; hw = (the hardware its rows were priced on, the gathered rows'):
    a bound split already taken on the first is gathered too, for the second."""
    out = Step(time_ms=_Gathered(step.time_ms, idx), flops=_Gathered(step.flops, idx),
               bytes=_Gathered(step.bytes, idx))
    if hw is not None and step.split is not None and step.split[0] is hw[0]:
        m = len(np.atleast_1d(step.total_ms))
        out.split = (hw[1], tuple(np.broadcast_to(x, (m,))[idx] for x in step.split[1]))
    return out


class _Where(LazyOps):
    """np.where(mask, a[k], b[k]) for each op k (a breakdown reads them; the bottleneck reads
    the bound split, which where_step chooses from the two steps' own)."""

    def __init__(self, mask, a: Mapping, b: Mapping):
        super().__init__(a)
        self.mask, self.a, self.b = mask, a, b

    def make(self, k):
        return np.where(self.mask, self.a[k], self.b[k])


def prefill_phase(model: Model, pool: Pool, isl, prefix_hit, skew, coeffs, full=None):
    """Prefill of one request's uncached prompt on every attention rank (the cached prefix
    is attended, not recomputed): (its Step, time under the power cap, power per GPU, and
    -- given `full`, prompts per rank in a full prefill batch -- that batch's time).

    It does not depend on the concurrency, so a sweep's many rows share few distinct
    prefills: each distinct (hardware, layout, formats, prompt) is computed once and gathered."""
    n = np.broadcast(isl, pool.par.tp, pool.hw.peak_gemm).shape[0] if np.ndim(isl) or np.ndim(pool.par.tp) else 1
    isl = np.broadcast_to(np.asarray(isl, dtype=float), (n,))
    cached = np.floor(isl * prefix_hit)
    new = np.maximum(isl - cached, 1.0)
    skew = np.broadcast_to(np.asarray(skew, dtype=float), (n,))
    fl = np.broadcast_to(np.asarray(1.0 if full is None else full, dtype=float), (n,))
    key_cols = (pool.hw_key, pool.par.tp, pool.par.dp, pool.par.ep, pool.par.pp, pool.dt.kv_bytes, new, cached,
                skew, pool.cap_w, fl)
    first, inverse = _unique_rows(*key_cols)

    def run(rows, prompts):
        sub = _take(pool, rows, n)
        step = ops.forward(model, hw=sub.hw, par=sub.par, dt=sub.dt, batch=sub.par.dp * prompts, q_len=new[rows],
                           ctx=(cached + new)[rows], skew=skew[rows])
        p, stretch = phase_power(sub, step, step.total_ms, coeffs)
        return step, step.total_ms * stretch, p

    def values(sel):
        rows = first[sel]
        step, t_pre, p_pre = run(rows, 1.0)
        out = {"t_pre": t_pre, "p_pre": p_pre, **_step_values(step, len(rows))}
        return out if full is None else {**out, "t_full": run(rows, fl[rows])[1]}

    kept = memo_rows(("prefill", model.id, full is None), [take_rows(c, first, n) for c in key_cols], values)
    vals, idx = (values(slice(None)), inverse) if kept is None else (kept[0], kept[1].take(inverse))
    return (_values_step(vals, idx), vals["t_pre"].take(idx), vals["p_pre"].take(idx),
            None if full is None else vals["t_full"].take(idx))


def _step_values(step: Step, m: int, hw: Hw | None = None) -> dict[str, np.ndarray]:
    """A Step's per-op arrays (and its bound split on `hw`) as flat named columns of m rows."""
    out = {f"{name}:{op}": np.broadcast_to(np.asarray(v, dtype=float), (m,))
           for name, d in (("t", step.time_ms), ("f", step.flops), ("b", step.bytes)) for op, v in d.items()}
    if hw is not None:
        out.update({f"s:{i}": np.broadcast_to(x, (m,)) for i, x in enumerate(bound_split(step, hw))})
    return out


def _values_step(vals: dict[str, np.ndarray], idx, hw: Hw | None = None) -> Step:
    """The Step of rows idx of _step_values columns (its bound split set for `hw`, if kept)."""
    out = Step(**{name: _Gathered({k.split(":", 1)[1]: v for k, v in vals.items() if k.startswith(p + ":")}, idx)
                  for name, p in (("time_ms", "t"), ("flops", "f"), ("bytes", "b"))})
    if hw is not None:
        out.split = (hw, tuple(vals[f"s:{i}"].take(idx) for i in range(3)))
    return out


def _decode_step(model: Model, pool: Pool, batch, ctx, skew, spec: Spec | None = None, chunk=None) -> Step:
    """One decode step of `batch` sequences, pipelined over pp stages as pp micro-batches:
    a token's step crosses every stage once, so TPOT is one micro-batch through all layers.
    With speculative decoding it is the verification step of 1 + k tokens per sequence.
    `chunk` (seqs, q_len, ctx): the prompt chunks one micro-batch carries (ops.forward)."""
    b = np.asarray(batch, dtype=float) / pool.par.pp
    micro = np.maximum(b, 1.0) if chunk is None else b
    q = np.ones_like(micro) if spec is None else (1.0 + spec.tokens) * np.ones_like(micro)
    return ops.forward(model, hw=pool.hw, par=pool.par, dt=pool.dt, batch=micro, q_len=q, ctx=ctx, skew=skew,
                       verify=spec is not None, chunk=chunk)


def decode_phase(model: Model, pool: Pool, batch, st: dict, chunk=None, *, dedupe: bool = True):
    """A decode step of `batch` sequences on `pool` (carrying prompt `chunk`s, if given):
    (its time with step_ms and drafting, tokens per sequence it yields, its Step, power per GPU).

    Rows that share the step's every input (pool, batch, context, chunks) share its result:
    when a sample of the rows shows few distinct ones (a sweep's decode pool under many
    prefill pools, worker counts or prices), each distinct step is priced once and gathered.
    dedupe=False skips the look (a caller that knows the rows hardly repeat)."""
    spec = st.get("spec")
    batch = np.asarray(batch, dtype=float)
    cols = [pool.hw_key, pool.par.tp, pool.par.dp, pool.par.ep, pool.par.pp, pool.dt.kv_bytes, pool.cap_w, batch,
            st["ctx"], st["skew"], st["rt"].step_ms]
    cols += [] if spec is None else [spec.tokens, spec.accept]
    cols += [] if chunk is None else list(chunk)
    groups = distinct_rows(cols) if dedupe else None
    if groups is None:
        return _decode_phase(model, pool, batch, st["ctx"], st["skew"], spec, st["coeffs"], st["rt"].step_ms, chunk)
    first, inverse, n = groups

    def values(sel):
        rows = first[sel]
        sub = [_take(x, rows, n) for x in (pool, batch, st["ctx"], st["skew"], spec, st["coeffs"], st["rt"].step_ms)]
        d, per_step, dec, p_dec = _decode_phase(model, *sub,
                                                None if chunk is None else tuple(_take(x, rows, n) for x in chunk))
        m = len(rows)
        return {"d": d, "per_step": np.broadcast_to(per_step, (m,)), "p": p_dec, **_step_values(dec, m, sub[0].hw)}

    kept = memo_rows(("decode", model.id, spec is None, chunk is None), [take_rows(c, first, n) for c in cols], values)
    vals, idx = (values(slice(None)), inverse) if kept is None else (kept[0], kept[1].take(inverse))
    per_step = 1.0 if spec is None else vals["per_step"].take(idx)
    return vals["d"].take(idx), per_step, _values_step(vals, idx, pool.hw), vals["p"].take(idx)


def pool_forward(model: Model, pool: Pool, *, batch, q_len, ctx, skew, verify: bool = False,
                 part: str = "all") -> Step:
    """ops.forward on `pool`, once per distinct row of (pool, batch, q_len, ctx, skew): the
    attention and the FFN pool of afd are priced each on its own (an attention pool serves
    under many FFN pools in a sweep, and the other way round), then joined row by row."""
    cols = [pool.hw_key, pool.par.tp, pool.par.dp, pool.par.ep, pool.par.pp, pool.dt.kv_bytes, batch, q_len, ctx, skew]
    groups = distinct_rows(cols)
    if groups is None:
        return ops.forward(model, hw=pool.hw, par=pool.par, dt=pool.dt, batch=batch, q_len=q_len, ctx=ctx, skew=skew,
                           verify=verify, part=part)
    first, inverse, n = groups
    sub = _take(pool, first, n)
    b, q, c, sk = (_take(x, first, n) for x in (batch, q_len, ctx, skew))
    step = ops.forward(model, hw=sub.hw, par=sub.par, dt=sub.dt, batch=b, q_len=q, ctx=c, skew=sk, verify=verify,
                       part=part)
    return _gather_step(step, inverse)


def _decode_phase(model: Model, pool: Pool, batch, ctx, skew, spec: Spec | None, coeffs: dict, step_ms, chunk):
    dec = _decode_step(model, pool, batch, ctx, skew, spec, chunk)
    if spec is None:
        p_dec, s_dec = phase_power(pool, dec, dec.total_ms, coeffs)
        return dec.total_ms * s_dec + step_ms, 1.0, dec, p_dec
    p_dec, s_dec = phase_power(pool, dec, dec.total_ms, coeffs, draft=(spec.tokens, model))
    return (dec.total_ms + draft_ms(model, dec, spec.tokens)) * s_dec + step_ms, spec.per_step(), dec, p_dec


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


def mixed_latency(model: Model, st: dict, n, running):
    """TTFT, TPOT and the prompt capacity of one attention rank whose steps mix decodes and
    prompt chunks (continuous batching with chunked prefill, agg).

    A step holds at most max_tokens tokens: the running decodes first, prompt chunks in the
    rest (`budget`), each pipeline micro-batch its own. A prompt enters in whole chunks of
    up to `budget` tokens. In steady state the other running requests' prompts arrive
    spread over a request's decode steps: when they average k chunks per step, a share
    min(k, 1) of the steps carries max(k, 1) chunks and the rest none, each kind of step
    priced whole through the kernels (so TPOT is a mean of steps that really run). A
    request's own prompt (with the group of prompts that arrive with it) fills steps of
    up to `budget` prompt tokens. Returns (TTFT, TPOT, requests per ms the rank can
    prefill, the decode-only step's time, the typical Step (chunk-carrying where most steps
    carry one), mean power per GPU)."""
    pool, rt, osl = st["pool"], st["rt"], st["osl"]
    dp, pp = pool.par.dp, pool.par.pp
    spec = st.get("spec")
    q_dec = 1.0 if spec is None else 1.0 + spec.tokens
    isl_new, cached = st["isl_new"], st["cached"]
    osl1 = np.maximum(osl - 1.0, 1.0)
    budget = np.maximum(rt.max_tokens - running / pp * q_dec, 1.0)       # prompt tokens per micro-batch step
    chunk_len = np.minimum(isl_new, budget)
    chunk_ctx = cached + chunk_len + (isl_new - chunk_len) / 2.0          # mean position of a chunk
    group = np.clip(budget / isl_new, 1.0, running)
    per_step = 1.0 if spec is None else spec.per_step()
    demand = (running - group) * isl_new * per_step / osl1                 # others' prompt tokens per step
    k = np.minimum(demand, pp * budget) / pp / chunk_len                  # chunks per micro-batch step
    share = np.minimum(k, 1.0)
    d0, per_step, dec0, p0 = decode_phase(model, pool, running * dp, st)
    # the chunk-carrying steps have the decode-only step's inputs and more: when its rows did
    # not repeat enough to dedupe, theirs do not either (and the look costs a pass over them)
    again = isinstance(dec0.time_ms, _Gathered)
    dk, _, deck, pk = decode_phase(model, pool, running * dp, st, chunk=(dp * np.maximum(k, 1.0), chunk_len, chunk_ctx),
                                   dedupe=again)
    d = (1.0 - share) * d0 + share * dk
    p_mean = ((1.0 - share) * d0 * p0 + share * dk * pk) / np.maximum(d, 1e-12)
    tpot = d / per_step
    own = group * isl_new
    steps_own = np.maximum(own / budget, 1.0)
    s_own, _, _, _ = decode_phase(model, pool, (running - group) * dp, st,
                                  chunk=(dp * own / steps_own / chunk_len, chunk_len, chunk_ctx), dedupe=again)
    # the group's prompts finish chunk by chunk: on average halfway through the steps after
    # a prompt's own chunks (a single long prompt waits for all of its chunks)
    chunks = np.maximum(isl_new / budget, 1.0)
    mean_steps = chunks + (steps_own - chunks) / 2.0
    ttft = rt.request_ms + s_own * (1.0 + (mean_steps - 1.0) / pp)
    steps_first = np.maximum(running * isl_new / (pp * budget), 1.0)       # a benchmark's first round
    first = rt.request_ms + (steps_first + 1.0) / 2.0 * s_own
    ttft = ttft + np.maximum(first - ttft, 0.0) / rt.rounds
    life = ttft + osl1 * tpot
    ttft = np.maximum(ttft, n / running * life - osl1 * tpot)           # wait for a KV slot
    capacity = pp * budget / isl_new / dk                                  # requests per ms the rank prefills
    dec = where_step(share >= 0.5, deck, dec0)          # the kind of step most steps are
    return ttft, tpot, capacity, d0, dec, p_mean


@dataclasses.dataclass
class _Joined(Step):
    """A Step joined row by row from two others (where_step, scatter); its bound split is
    joined the same way from theirs (a row's split is its own step's), when first read."""
    parts: tuple = None     # (a, b, join(x, y) of their arrays, b's (rows, n) among a's or None: the same rows)


def where_step(mask, a: Step, b: Step) -> Step:
    """Row by row a's step where mask, else b's: per-op arrays and the bound split when read."""
    return _Joined(time_ms=_Where(mask, a.time_ms, b.time_ms), flops=_Where(mask, a.flops, b.flops),
                   bytes=_Where(mask, a.bytes, b.bytes), parts=(a, b, functools.partial(np.where, mask), None))


def scatter(a, rows, b, n: int):
    """`a` (n rows) with its rows `rows` replaced by `b`: arrays, or Steps (their per-op arrays
    and bound split when read; b was priced on those rows of a's hardware)."""
    if isinstance(a, Step):
        def join(x, y):
            return scatter(x, rows, y, n)
        return _Joined(time_ms=_Scattered(a.time_ms, rows, b.time_ms, n), flops=_Scattered(a.flops, rows, b.flops, n),
                       bytes=_Scattered(a.bytes, rows, b.bytes, n), parts=(a, b, join, (rows, n)))
    out = np.array(np.broadcast_to(a, (n,)), dtype=float)
    out[rows] = b
    return out


class _Scattered(LazyOps):
    """scatter(a[k], rows, b[k], n) for each op k."""

    def __init__(self, a: Mapping, rows, b: Mapping, n: int):
        super().__init__(a)
        self.a, self.rows, self.b, self.n = a, rows, b, n

    def make(self, k):
        return scatter(self.a[k], self.rows, self.b[k], self.n)


def pair_link(a: Pool, b: Pool, same_domain) -> np.ndarray:
    """GB/s between two pools: the slower scale-up fabric inside one domain, the slower NIC otherwise."""
    return np.where(same_domain, np.minimum(a.hw.scaleup_gb_s, b.hw.scaleup_gb_s),
                    np.minimum(a.hw.scaleout_gb_s, b.hw.scaleout_gb_s))
