"""Kernel-level latency: roofline with shape-dependent efficiency and a latency floor.

Every function is pure numpy and vectorized: each argument (and each value in the
parameter mapping `p`) may be a scalar or an array of one common length N, so one
call can price N rows on N different devices. Times are in milliseconds; peaks in
TFLOPS, memory bandwidth in TB/s, link bandwidth in GB/s (one direction, per GPU).

The parameters are few, dimensionless or in physical units, and fitted by
`dse.fit.calibrate` from measured kernel tables:
  eff_*        fraction of a spec peak (FLOPs or bytes/s) that a large, well-shaped
               kernel reaches: an efficiency ceiling;
  *_half       the size at which a fixed per-tile cost equals the useful work
               (k_half: GEMM reduction depth; d_half: attention head dimension);
  tile_*, tile_slots  tile shape and how many tiles run at once (SMs x CTAs per
               SM): padding and wave quantization;
  *_us         fixed latencies in microseconds (launch floor, per-CTA setup, ...).
Format-specific values are stored as "<name>.<format>" (e.g. "eff_compute.fp8");
`for_format` picks them (a key may also name a kernel variant: "fp4@min_latency").
The values live in hardware/calibration/ (fitted per device, and defaults.yaml for the
rest); the model takes them as arguments and reads no file.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

ArrayLike = Any

__all__ = [
    "for_format", "format_chain", "gemm_ms", "gemm_consts", "gemm_tiles", "gemm_parts", "attn_prefill_tiles",
    "attn_prefill_ms",
    "attn_decode_ms", "moe_ms", "moe_imbalance", "moe_experts_hit", "moe_routing", "allreduce_ms", "allreduce_consts",
    "allreduce_parts", "allgather_ms", "reduce_scatter_ms", "alltoall_ms",
]

# A format key may name a kernel variant ("fp4@min_latency") or a mixed scheme
# ("w4a8": 4-bit weights, fp8 math); a missing override falls back along this chain
# (a block-scaled 4-bit float kernel is nearer an fp8 one than a bf16 one).
_FORMAT_FALLBACK = {"fp8_block": "fp8", "fp4": "fp8", "w4a8": "fp8", "int4": "bf16", "int8_wo": "bf16"}


def format_chain(fmt: str) -> list[str]:
    """Keys to try for a format, most specific first: 'fp8_block@x' -> fp8_block@x,
    fp8_block, fp8."""
    base = fmt.split("@", 1)[0]
    chain = [fmt] if base == fmt else [fmt, base]
    while base in _FORMAT_FALLBACK:
        base = _FORMAT_FALLBACK[base]
        chain.append(base)
    return chain


def for_format(p: Mapping[str, ArrayLike], fmt: str | ArrayLike) -> dict[str, ArrayLike]:
    """The family parameters with "<name>.<format>" overrides applied.

    `fmt` is one format key or an array of keys (one per row). Lookup follows
    `format_chain` and ends at the plain value, so a device calibrated without, say,
    block-scaled fp8 still prices it.
    """
    base = {k: v for k, v in p.items() if "." not in k}
    overridden = {k.split(".", 1)[0] for k in p if "." in k}

    def pick(name: str, f: str) -> ArrayLike:
        for key in format_chain(f):
            if f"{name}.{key}" in p:
                return p[f"{name}.{key}"]
        return base[name]

    fmts = np.asarray(fmt)
    out: dict[str, ArrayLike] = dict(base)
    for name in overridden & set(base):
        if fmts.ndim == 0:
            out[name] = pick(name, str(fmts))
            continue
        vals = np.zeros(fmts.shape, dtype=float)
        for f in np.unique(fmts):
            vals = np.where(fmts == f, np.broadcast_to(pick(name, str(f)), fmts.shape), vals)
        out[name] = vals
    return out


def _f(x: ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=float)


def _ceil_to(x: np.ndarray, tile: ArrayLike) -> np.ndarray:
    return np.ceil(x / tile) * tile


def _at_least(x: np.ndarray, lo: float) -> np.ndarray:
    """np.maximum(x, lo), through clip: numpy's maximum against a scalar takes a loop about
    three times slower than clip's (the same values, NaN kept)."""
    return np.clip(x, lo, np.inf)


def _wave_utilisation(units: np.ndarray, slots: ArrayLike) -> np.ndarray:
    """Fraction of the machine busy when `units` equal tiles run in waves of `slots`."""
    units = _at_least(units, 1.0)
    return units / (np.ceil(units / slots) * slots)


# --------------------------------------------------------------------------- GEMM
def gemm_ms(m: ArrayLike, n: ArrayLike, k: ArrayLike, *, a_bytes: ArrayLike,
            w_bytes: ArrayLike, c_bytes: ArrayLike, peak_tflops: ArrayLike,
            mem_tb_s: ArrayLike, p: Mapping[str, ArrayLike]) -> np.ndarray:
    """Dense GEMM C[m,n] = A[m,k] W[k,n] (m = tokens).

    Compute runs in output tiles of tile_m x tile_n (a shorter m-tile, down to 16 rows,
    when m is small), tile_slots at a time, so a shape
    pays for its padded tiles and for the idle slots of its last wave; small tile
    counts are split along k (split-K) to fill the machine. Each tile's fixed
    prologue/epilogue is worth k_half of reduction depth, so efficiency is
    eff_compute * k/(k + k_half). Small m is bound by reading the weights once
    (bytes / (bandwidth x eff_memory)). Plus a launch floor.
    """
    consts = gemm_consts(n, k, w_bytes=w_bytes, peak_tflops=peak_tflops, mem_tb_s=mem_tb_s, p=p)
    return gemm_parts(m, consts, a_bytes=a_bytes, c_bytes=c_bytes)[0]


def gemm_consts(n: ArrayLike, k: ArrayLike, *, w_bytes: ArrayLike, peak_tflops: ArrayLike, mem_tb_s: ArrayLike,
                p: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """The parts of gemm_ms that do not depend on m: computed once for a weight matrix
    that several steps (decode, chunk-carrying, prefill) multiply by their tokens."""
    n, k = _f(n), _f(k)
    tn = _f(p["tile_n"])
    tiles_n = np.ceil(n / tn)
    return {"n": n, "k": k, "tiles_n": tiles_n, "n_pad": tiles_n * tn, "slots": _f(p["tile_slots"]),
            "tile_m": _f(p["tile_m"]), "split_cap": np.maximum(1.0, np.floor(k / _f(p["split_min_k"]))),
            "eff": _f(p["eff_compute"]), "k_half": _f(p["k_half"]), "peak": _f(peak_tflops) * 1e12,
            "knw": k * n * _f(w_bytes), "bw": _f(mem_tb_s) * 1e12 * _f(p["eff_memory"]),
            "floor": _f(p["floor_us"]) * 1e-6}


def gemm_tiles(m: ArrayLike, tile_m: ArrayLike) -> tuple[np.ndarray, ...]:
    """The parts of gemm_ms that depend on m alone (and the device's tile_m): computed once
    for the several weight matrices a step multiplies by the same tokens. Skinny GEMMs pick
    a short m-tile (tensor-core instructions go down to 16 rows), so a decode GEMM is not
    charged 64 or 128 padded rows of math. Returns (m, m-tile, tiles along m, 2 x padded m)."""
    m = _f(m)
    tm = np.clip(np.ceil(m * 0.0625) * 16.0, 16.0, _f(tile_m))     # m up to a multiple of 16, in [16, tile_m]
    tiles_m = np.ceil(m / tm)
    return m, tm, tiles_m, 2.0 * (tiles_m * tm)


def gemm_parts(m: ArrayLike, c: Mapping[str, np.ndarray], *, a_bytes: ArrayLike,
               c_bytes: ArrayLike, tiles: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """gemm_ms of `m` tokens through the matrix of gemm_consts `c`: (time, bytes moved).
    `tiles`: gemm_tiles of the same m and tile_m, if already at hand."""
    m, tm, tiles_m, rows2 = gemm_tiles(m, c["tile_m"]) if tiles is None else tiles
    n, k, slots = c["n"], c["k"], c["slots"]
    tiles = tiles_m * c["tiles_n"]
    # split-K: cut k so that tiles x splits fill the slots, pieces no shorter than split_min_k
    split = np.clip(np.floor(slots / tiles), 1.0, c["split_cap"])
    k_piece = k / split
    util = _wave_utilisation(tiles * split, slots)
    eff = c["eff"] * k_piece / (k_piece + c["k_half"]) * util
    flops = rows2 * c["n_pad"] * k
    t_compute = flops / (c["peak"] * eff)
    nbytes = m * k * _f(a_bytes) + c["knw"] + m * n * _f(c_bytes)
    t_memory = nbytes / c["bw"]
    return (np.maximum(t_compute, t_memory) + c["floor"]) * 1e3, nbytes


# ---------------------------------------------------------------------- attention
def _causal_pairs(q_len: np.ndarray, prefix: np.ndarray, window: np.ndarray,
                  tile: ArrayLike, tile_kv: ArrayLike) -> np.ndarray:
    """(query, key) pairs a tiled causal kernel computes.

    Queries come in tiles of `tile`; tile j (1-based) sees keys up to prefix + j*tile,
    at most window + tile of them (the window slides across the tile) loaded in
    whole blocks of tile_kv, and computes all of them for each of its rows (the
    diagonal and window-edge blocks are computed whole, then masked).
    """
    tiles = np.ceil(q_len / tile)
    reach = np.where(window > 0, _ceil_to(window + tile, tile_kv), np.inf)   # keys per tile
    # tiles j <= c still see their whole history prefix + j*tile
    c = np.clip(np.floor((reach - prefix) / tile), 0.0, tiles)
    c = np.where(np.isfinite(c), c, tiles)
    growing = c * prefix + tile * c * (c + 1.0) / 2.0
    capped = (tiles - c) * np.where(np.isfinite(reach), reach, 0.0)
    return tile * (growing + capped)


def attn_prefill_tiles(q_len: ArrayLike, prefix_len: ArrayLike, window: ArrayLike,
                       p: Mapping[str, ArrayLike]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parts of attn_prefill_ms that depend on the prompt's shape alone (and the kernel's
    tiles), not on the batch or the heads: (the causal tiles' (query, key) pairs, the padded
    query length, the prefix tokens read). Computed once for prompt chunks several steps carry."""
    s, prefix, win = _f(q_len), _f(prefix_len), _f(window)
    tq = _f(p["tile_q"])
    return (_causal_pairs(s, prefix, win, tq, _f(p["tile_kv"])), _ceil_to(s, tq),
            np.where(win > 0, np.minimum(prefix, win), prefix))


def attn_prefill_ms(batch: ArrayLike, q_len: ArrayLike, num_heads: ArrayLike,
                    qk_dim: ArrayLike, v_dim: ArrayLike, kv_elems_per_token: ArrayLike,
                    window: ArrayLike, *, prefix_len: ArrayLike = 0,
                    peak_tflops: ArrayLike, mem_tb_s: ArrayLike, kv_bytes: ArrayLike,
                    p: Mapping[str, ArrayLike], tiles: tuple | None = None) -> np.ndarray:
    """Causal (flash) attention over q_len new tokens after prefix_len cached ones.

    FLOPs = 2 x heads x (qk_dim + v_dim) x (query, key) pairs, the pairs bounded by
    the window (0 = full) and counted whole tiles at a time. A CTA owns tile_q
    queries of one head of one sequence, so short sequences pay padded tiles, few
    CTAs leave slots idle, and every CTA has a
    fixed cost (cta_us: load Q, set up, write O) paid wave by wave -- which is what a
    large batch of short prompts costs. Softmax work per score is worth d_half of
    head dimension: math runs at eff_compute x d/(d + d_half) of the peak. `tiles`:
    attn_prefill_tiles of the same prompt shape, if already at hand.
    """
    b, s, h = _f(batch), _f(q_len), _f(num_heads)
    dqk, dv = _f(qk_dim), _f(v_dim)
    tq, slots = _f(p["tile_q"]), _f(p["tile_slots"])
    pairs, s_pad, read = attn_prefill_tiles(q_len, prefix_len, window, p) if tiles is None else tiles
    flops = 2.0 * b * h * (dqk + dv) * pairs
    d = (dqk + dv) / 2.0
    ctas = b * h * (s_pad / tq)
    eff = _f(p["eff_compute"]) * d / (d + _f(p["d_half"])) * _wave_utilisation(ctas, slots)
    t_compute = (flops / (_f(peak_tflops) * 1e12 * eff)
                 + np.ceil(ctas / slots) * _f(p["cta_us"]) * 1e-6)
    # The preprocessing pass (rotary on q and k, append K/V to the cache) is a separate
    # memory-bound kernel: read and rewrite q, read k/v in bf16, write the cache. The
    # prefix is read inside the attention kernel, overlapped with its math.
    kv = _f(kv_elems_per_token)
    new_bytes = b * s * (h * dqk * 2.0 * 2.0 + kv * (2.0 + _f(kv_bytes)))
    prefix_bytes = b * read * kv * _f(kv_bytes)
    bw = _f(mem_tb_s) * 1e12 * _f(p["eff_memory"])
    t_attention = np.maximum(t_compute, prefix_bytes / bw)
    return (t_attention + new_bytes / bw + _f(p["floor_us"]) * 1e-6) * 1e3


def attn_decode_ms(batch: ArrayLike, kv_len: ArrayLike, num_heads: ArrayLike,
                   qk_dim: ArrayLike, v_dim: ArrayLike, kv_elems_per_token: ArrayLike, *,
                   peak_tflops: ArrayLike, mem_tb_s: ArrayLike, kv_bytes: ArrayLike,
                   p: Mapping[str, ArrayLike], kv_heads: ArrayLike | None = None) -> np.ndarray:
    """One decode step: each of `batch` sequences reads its kv_len cached tokens.

    Memory bound: bytes = batch x kv_len x kv_elems x kv_bytes (+ q and o), at best
    streamed at eff_memory of the bandwidth. Two kernels serve it (TensorRT-LLM's XQA and
    masked-MHA, as other engines have a grouped and a per-head decode kernel): the fused
    GQA kernel cuts the work into CTAs of one (sequence, KV head) -- or cta_heads query
    heads of it -- and serves up to max_group query heads per KV head on tensor cores;
    the MHA kernel, which runs one query head per KV head and (when `kv_heads` is given)
    groups larger than max_group, cuts it into a CTA per (sequence, query head), on CUDA
    cores at eff_fallback of the peak for those large groups. Long contexts are also cut
    into blocks of block_tokens (split-KV "multi-block" mode, at most enough blocks to
    fill tile_slots). One CTA streams at most cta_bw_frac of the memory bandwidth and
    pays its kernel's set-up (cta_us, mha_cta_us); CTAs run tile_slots at a time. So few
    sequences (cannot fill the GPU) and many short ones (set-up dominates) are both
    slower than the bandwidth roofline. Without mha_cta_us (an older calibration) every
    row takes the GQA kernel's CTAs.
    """
    b, ctx, h = _f(batch), _f(kv_len), _f(num_heads)
    dqk, dv = _f(qk_dim), _f(v_dim)
    nbytes = b * ctx * _f(kv_elems_per_token) * _f(kv_bytes) + b * h * (dqk + dv) * 2.0
    groups = (_f(kv_heads) if kv_heads is not None
              else np.maximum(_f(kv_elems_per_token) / (dqk + dv), 1.0))
    g = h / groups
    t_stream = nbytes / (_f(mem_tb_s) * 1e12 * _f(p["eff_memory"]))
    slots = _f(p["tile_slots"])
    fallback = (g > _f(p["max_group"])) if kv_heads is not None else False
    # the MHA kernel (one query head per KV head, or a group too large for the fused
    # kernel) runs a CTA per query head with its own set-up; the fused GQA kernel a CTA
    # per cta_heads query heads of one KV head
    items = b * groups * np.ceil(g / np.minimum(_f(p["cta_heads"]), g))
    cta_us = _f(p["cta_us"])
    mha = (g <= 1.0) | fallback if "mha_cta_us" in p else False
    if np.any(mha):
        items, cta_us = np.where(mha, b * h, items), np.where(mha, _f(p["mha_cta_us"]), cta_us)
    blocks = np.clip(np.floor(slots / items), 1.0, np.ceil(ctx / _f(p["block_tokens"])))
    ctas = items * blocks
    t_cta = cta_us * 1e-6 + nbytes / ctas / (_f(mem_tb_s) * 1e12 * _f(p["cta_bw_frac"]))
    t_memory = np.maximum(t_stream, np.ceil(ctas / slots) * t_cta)
    flops = 2.0 * b * h * ctx * (dqk + dv)
    eff = np.where(fallback, _f(p["eff_fallback"]), _f(p["eff_compute"]))
    t_compute = flops / (_f(peak_tflops) * 1e12 * eff)
    # the memory pipeline takes a while to reach its stream rate
    ramp = _f(p["ramp_us"]) * 1e-6 * nbytes / (nbytes + _f(p["ramp_mb"]) * 1e6)
    return (np.maximum(t_memory, t_compute) + ramp + _f(p["floor_us"]) * 1e-6) * 1e3


# ---------------------------------------------------------------------------- MoE
def _quantile_powers(alpha: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple | None:
    """The q-free parts of _pareto_quantile's power branch, None when a row needs the other."""
    a1 = 1.0 - alpha
    if np.any(np.abs(a1) < 1e-6):
        return None
    low = lo ** a1
    return hi ** a1 - low, low, 1.0 / a1


def _pareto_quantile(q: np.ndarray, alpha: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                     powers: tuple | None = None) -> np.ndarray:
    """Quantile q of the power law on [lo, hi]; `powers`: _quantile_powers of the same law."""
    powers = powers or _quantile_powers(alpha, lo, hi)
    if powers is not None:      # no row at skew 1 (the fitted default is 0.8): the power branch alone
        span, low, inv = powers
        return np.abs(span * q + low) ** inv
    a1 = 1.0 - alpha
    near1 = np.abs(a1) < 1e-6
    a1s = np.where(near1, 1.0, a1)
    pw = np.where(near1, lo, (hi ** a1s - lo ** a1s) * q + lo ** a1s)
    return np.where(near1, lo * (hi / lo) ** q, np.abs(pw) ** (1.0 / a1s))


def _pareto_mean(alpha: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    def integral(power: np.ndarray) -> np.ndarray:   # int_lo^hi x^power dx
        e = power + 1.0
        small = np.abs(e) < 1e-6
        es = np.where(small, 1.0, e)
        return np.where(small, np.log(hi / lo), (hi ** es - lo ** es) / es)
    return integral(1.0 - alpha) / integral(-alpha)


def _popularity_range(tokens: np.ndarray, topk: np.ndarray, experts: np.ndarray):
    """Support of the per-expert popularity law (as in AIConfigurator's generator:
    up to 0.8 x tokens when there are more picks than experts, else [0.01, 2])."""
    many = tokens * topk > experts
    lo = np.where(many, 1.0, 0.01)
    hi = np.where(many, np.maximum(0.8 * tokens, 1.0 + 1e-3), 2.0)
    return lo, hi


# Expected maximum of n independent standard normals (n = 1, 2, 4, ..., 1024).
_NORMAL_MAX = np.array([0.0, 0.5642, 1.0294, 1.4236, 1.7660, 2.0697, 2.3353, 2.5744,
                        2.7912, 2.9895, 3.1720])
# Gauss-Legendre nodes/weights on (0, 1) for averaging over the largest draw.
_GL_X, _GL_W = np.polynomial.legendre.leggauss(12)
_GL_X, _GL_W = (_GL_X + 1.0) / 2.0, _GL_W / 2.0


def _replica_relief(alpha: np.ndarray, lo: np.ndarray, hi: np.ndarray, e: np.ndarray,
                    r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What r redundant experts buy (EPLB): (the hottest physical copy's load over the
    hottest expert's, the spread (cv) of the E + r physical loads over that of the E).

    The E loads are the law's order statistics (the k-th hottest at quantile
    1 - (k - 1/2)/E). Replicas go to the hottest experts and split each one's tokens
    evenly over its copies, the next replica to the copy carrying the most (DeepSeek's
    EPLB replicate step), which in the continuous limit fills to one level
    L = max_m S_m / (r + m), S_m the m hottest loads' sum: every expert above L is cut
    into copies of load L. L falls strictly with r; at r = 0 it is the hottest load.
    Computed once per distinct (law, E, r)."""
    shape = np.shape(alpha)
    keys = np.stack([np.ravel(v) for v in np.broadcast_arrays(alpha, lo, hi, e, r)])
    uniq, inv = np.unique(keys, axis=1, return_inverse=True)
    a, lo_u, hi_u, e_u, r_u = (v[:, None] for v in uniq)
    k = np.arange(1.0, float(uniq[3].max()) + 1.0)[None, :]
    valid = k <= e_u
    x = np.where(valid, _pareto_quantile(np.clip(1.0 - (k - 0.5) / e_u, 0.0, 1.0), a, lo_u, hi_u), 0.0)
    s = np.cumsum(x, axis=1)
    level = np.max(np.where(valid, s / (r_u + k), 0.0), axis=1, keepdims=True)
    total = s[:, -1:]
    sq_phys = np.sum(np.where(x > level, x * level, x * x), axis=1, keepdims=True)
    cv_phys = np.sqrt(np.maximum((e_u + r_u) * sq_phys / total ** 2 - 1.0, 0.0))
    cv_0 = np.sqrt(np.maximum(e_u * np.sum(x * x, axis=1, keepdims=True) / total ** 2 - 1.0, 0.0))
    spread = np.where(cv_0 > 0, np.minimum(cv_phys / np.where(cv_0 > 0, cv_0, 1.0), 1.0), 1.0)
    inv = np.ravel(inv)
    return (level / x[:, :1])[:, 0][inv].reshape(shape), spread[:, 0][inv].reshape(shape)


def moe_imbalance(tokens: ArrayLike, topk: ArrayLike, num_experts: ArrayLike,
                  ep: ArrayLike, skew: ArrayLike, redundant: ArrayLike = 0.0) -> np.ndarray:
    """Load of the busiest expert-parallel rank relative to an even split (1 <= . <= ep).

    Expert popularity is drawn from a power law p(x) ~ x^-skew (skew 0 = balanced),
    on [1, 0.8 x tokens] when there are more picks than experts (else [0.01, 2]) --
    the routing model of AIConfigurator's measurements. Two ways a rank ends up
    busiest, the larger wins: it holds the most popular expert (expected share
    (x_max + (g-1) mean) / (x_max + (E-1) mean) over the law of the max of E draws,
    g = E/ep experts per rank), or its g ordinary experts add up high (the max of ep
    sums: 1 + z_ep x cv / sqrt(g)).

    `redundant` replicas (EPLB) split the hottest experts' tokens over copies
    (_replica_relief): the hottest copy carries rho x x_max, and the ep sums run over
    g' = (E + r)/ep physical experts of a smaller spread. r = 0 is the plain layout.
    """
    rows, law = _routing_law(tokens, topk, num_experts, ep, skew, redundant)
    return _imbalance(rows, law, _f(num_experts))


def _routing_law(tokens, topk, num_experts, ep, skew, redundant) -> tuple[list, tuple]:
    """The routing functions' rows, broadcast together, and their popularity law (_law)."""
    rows = np.broadcast_arrays(_f(tokens), _f(topk), _f(num_experts), _f(ep), _f(skew), _f(redundant))
    return rows, _law(*rows)


def _law(t, k, e, ep_, a, r) -> tuple:
    """The rows' expert-popularity law: (lo, hi, alpha, mean, _quantile_powers), which the
    imbalance and the experts hit share."""
    lo, hi = _popularity_range(t, k, e)
    alpha = np.where(a > 0, a, 2.0)
    return lo, hi, alpha, _pareto_mean(alpha, lo, hi), _quantile_powers(alpha, lo, hi)


def _imbalance(rows: list, law: tuple, e0: np.ndarray) -> np.ndarray:
    t, k, e, ep_, a, r = rows
    lo, hi, alpha, mean, powers = law
    skewed = a > 0
    g = e / ep_
    # E over the largest of E draws: its CDF is F^E, so F(x_max) = v^(1/E), v uniform
    v = _GL_X.reshape((-1,) + (1,) * t.ndim)
    # one expert count (a model's) for every row: the nodes' powers once, not once per row
    x_max = _pareto_quantile(v ** (1.0 / (e0 if e0.ndim == 0 else e)), alpha, lo, hi, powers)
    top, spread, g_phys = x_max, 1.0, g
    if np.any(r > 0):
        rho, spread = _replica_relief(alpha, lo, hi, e, r)
        rho, spread = np.where(r > 0, rho, 1.0), np.where(r > 0, spread, 1.0)
        top, g_phys = rho * x_max, (e + r) / ep_
    share = np.tensordot(_GL_W, (top + (g - 1.0) * mean) / (x_max + (e - 1.0) * mean), axes=1)
    by_top = share * ep_
    second = _pareto_mean(alpha - 1.0, lo, hi) * mean   # E[x^2]
    cv = np.sqrt(np.maximum(second - mean ** 2, 0.0)) / mean
    z = np.interp(np.log2(np.maximum(ep_, 1.0)), np.arange(len(_NORMAL_MAX)), _NORMAL_MAX)
    by_sum = 1.0 + z * cv * spread / np.sqrt(g_phys)
    return np.where(skewed, np.clip(np.maximum(by_top, by_sum), 1.0, ep_), 1.0)


def moe_experts_hit(tokens: ArrayLike, topk: ArrayLike, num_experts: ArrayLike,
                    ep: ArrayLike, skew: ArrayLike, redundant: ArrayLike = 0.0) -> np.ndarray:
    """Expected number of distinct experts on the busiest rank that receive a token.

    Their weights must be read, which is what decode pays. With tokens x topk picks,
    an expert of popularity share s is hit with probability 1 - exp(-picks s);
    balanced routing has s = 1/E, skewed routing averages over the popularity law
    (and the busiest rank holds the most popular expert, which is always hit).
    With `redundant` replicas a rank holds (E + r)/ep physical experts, the picks
    spread over E + r copies (balanced); the replicated ones are the hottest, still hit.
    """
    return _experts_hit(*_routing_law(tokens, topk, num_experts, ep, skew, redundant))


def moe_routing(tokens: ArrayLike, topk: ArrayLike, num_experts: ArrayLike, ep: ArrayLike, skew: ArrayLike,
                redundant: ArrayLike = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(moe_experts_hit, moe_imbalance) of the same rows, their popularity law computed once."""
    rows, law = _routing_law(tokens, topk, num_experts, ep, skew, redundant)
    return _experts_hit(rows, law), _imbalance(rows, law, _f(num_experts))


def _experts_hit(rows: list, law: tuple) -> np.ndarray:
    t, k, e, ep_, a, r = rows
    lo, hi, alpha, mean, powers = law
    g = (e + r) / ep_
    picks = t * k
    even = g * -np.expm1(-picks / (e + r))
    x = _pareto_quantile(_GL_X.reshape((-1,) + (1,) * t.ndim), alpha, lo, hi, powers)
    p_hit = np.tensordot(_GL_W, -np.expm1(-picks * x / (e * mean)), axes=1)
    skewed = 1.0 + (g - 1.0) * p_hit
    return np.clip(np.where(a > 0, skewed, even), np.minimum(1.0, g), g)


def moe_ms(tokens: ArrayLike, hidden: ArrayLike, inter: ArrayLike, topk: ArrayLike,
           num_experts: ArrayLike, moe_tp: ArrayLike, moe_ep: ArrayLike, *, skew: ArrayLike,
           gated: ArrayLike = True, w_bytes: ArrayLike, a_bytes: ArrayLike,
           peak_tflops: ArrayLike, mem_tb_s: ArrayLike, p: Mapping[str, ArrayLike],
           imbalance: ArrayLike | None = None, experts_hit: ArrayLike | None = None,
           redundant: ArrayLike = 0.0) -> np.ndarray:
    """Fused MoE FFN on one GPU: `tokens` enter, each routed to topk of num_experts.

    The GPU holds (num_experts + redundant)/moe_ep experts (redundant: EPLB replicas of
    the hottest), each sliced to inter/moe_tp columns;
    gated FFNs have 3 matrices (up, gate, down), non-gated 2. Weight traffic = the
    distinct local experts actually hit x expert bytes (decode is dominated by it);
    compute = the busiest rank's tokens (even share x imbalance from `skew`), padded
    to tile_m rows per hit expert, through both GEMMs at eff_compute x k/(k + k_half).
    Permuting tokens to experts and back are extra passes over the activations.
    `imbalance` / `experts_hit` may be passed when already computed (they depend on
    the routing only, not on the device).
    """
    t, hid, inter_l = _f(tokens), _f(hidden), _f(inter) / _f(moe_tp)
    e, ep_, k = _f(num_experts), _f(moe_ep), _f(topk)
    mats = np.where(np.asarray(gated, dtype=bool), 3.0, 2.0)
    hit = _f(experts_hit) if experts_hit is not None else moe_experts_hit(t, k, e, ep_, skew, redundant)
    if imbalance is None:
        imbalance = moe_imbalance(t, k, e, ep_, skew, redundant)
    rows = t * k / ep_ * _f(imbalance)
    tile = _f(p["tile_m"])
    rows_pad = hit * _ceil_to(rows / np.maximum(hit, 1e-9), tile)
    k_half = _f(p["k_half"])
    eff = _f(p["eff_compute"])
    flops_up = 2.0 * rows_pad * hid * inter_l * (mats - 1.0)
    flops_down = 2.0 * rows_pad * inter_l * hid
    peak = _f(peak_tflops) * 1e12
    t_compute = (flops_up / (eff * hid / (hid + k_half))
                 + flops_down / (eff * inter_l / (inter_l + k_half))) / peak
    bw = _f(mem_tb_s) * 1e12 * _f(p["eff_memory"])
    t_weights = hit * mats * hid * inter_l * _f(w_bytes) / bw
    # Separate passes over the activations: permute (and quantize) the tokens into
    # expert order, the gated activation between the GEMMs, the weighted un-permute.
    acts = t * hid * 4.0 + rows * (hid * (_f(a_bytes) + 2.0) + inter_l * mats * 2.0)
    return (np.maximum(t_compute, t_weights) + acts / bw + _f(p["floor_us"]) * 1e-6) * 1e3


# ------------------------------------------------------------------ communication
def _collective_ms(bus_bytes: np.ndarray, steps: np.ndarray, n: np.ndarray,
                   link_gb_s: ArrayLike, p: Mapping[str, ArrayLike],
                   ll_bytes: np.ndarray | None = None, ll_steps: np.ndarray | None = None) -> np.ndarray:
    """The faster of two protocols, as NCCL's tuner picks: a low-latency one (few
    microseconds, eff_ll of the link) and a bandwidth one (bw_extra_us more setup,
    eff_bw of the link). Each pays base_us plus step_us per algorithm step."""
    c = _collective_consts(steps, n, link_gb_s, p, ll_steps)
    return _collective_parts(bus_bytes, bus_bytes if ll_bytes is None else ll_bytes, c)


def _collective_consts(steps, n, link_gb_s, p: Mapping[str, ArrayLike], ll_steps=None) -> dict[str, np.ndarray]:
    """The parts of _collective_ms that do not depend on the bytes moved."""
    bw = _f(link_gb_s) * 1e9
    ll_steps = steps if ll_steps is None else ll_steps
    base = _f(p["base_us"]) * 1e-6
    return {"ll_ms": base + ll_steps * _f(p["step_us"]) * 1e-6, "ll_bw": bw * _f(p["eff_ll"]),
            "bw_ms": base + _f(p["bw_extra_us"]) * 1e-6 + steps * _f(p["step_us"]) * 1e-6,
            "bw_bw": bw * _f(p["eff_bw"]), "on": _f(n) > 1}


def _collective_parts(bus_bytes, ll_bytes, c: Mapping[str, np.ndarray]) -> np.ndarray:
    t_ll = c["ll_ms"] + ll_bytes / c["ll_bw"]
    t_bw = c["bw_ms"] + bus_bytes / c["bw_bw"]
    return np.where(c["on"], np.minimum(t_ll, t_bw) * 1e3, 0.0)


def allreduce_ms(nbytes: ArrayLike, n: ArrayLike, *, link_gb_s: ArrayLike,
                 p: Mapping[str, ArrayLike]) -> np.ndarray:
    """All-reduce of an nbytes tensor held by each of n GPUs.

    Ring/two-shot: 2(n-1) steps moving 2(n-1)/n x nbytes per GPU. With one_shot = 1
    (TensorRT-LLM custom all-reduce) the low-latency path instead reads all n-1 peers'
    buffers in one step: (n-1) x nbytes, which wins for small messages.
    """
    return allreduce_parts(nbytes, allreduce_consts(n, link_gb_s=link_gb_s, p=p))


def allreduce_consts(n: ArrayLike, *, link_gb_s: ArrayLike, p: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """The parts of allreduce_ms that do not depend on the bytes: computed once for an
    all-reduce that several steps (decode, chunk-carrying, prefill) run on the same GPUs."""
    n = _f(n)
    one = _f(p.get("one_shot", 0.0)) > 0.5
    c = _collective_consts(2.0 * (n - 1.0), n, link_gb_s, p, np.where(one, 1.0, 2.0 * (n - 1.0)))
    return {**c, "bus": 2.0 * (n - 1.0) / np.maximum(n, 1.0), "peers": n - 1.0, "one": one}


def allreduce_parts(nbytes: ArrayLike, c: Mapping[str, np.ndarray]) -> np.ndarray:
    """allreduce_ms of nbytes through the allreduce_consts `c`."""
    nb = _f(nbytes)
    bus = c["bus"] * nb
    return _collective_parts(bus, np.where(c["one"], c["peers"] * nb, bus), c)


def allgather_ms(nbytes: ArrayLike, n: ArrayLike, *, link_gb_s: ArrayLike,
                 p: Mapping[str, ArrayLike]) -> np.ndarray:
    """All-gather whose gathered result is nbytes on each GPU: ring of n-1 steps,
    each GPU receives (n-1)/n x nbytes."""
    nb, n = _f(nbytes), _f(n)
    return _collective_ms((n - 1.0) / np.maximum(n, 1.0) * nb, n - 1.0, n, link_gb_s, p)


def reduce_scatter_ms(nbytes: ArrayLike, n: ArrayLike, *, link_gb_s: ArrayLike,
                      p: Mapping[str, ArrayLike]) -> np.ndarray:
    """Reduce-scatter of an nbytes input per GPU (each keeps nbytes/n): n-1 steps,
    (n-1)/n x nbytes sent per GPU."""
    nb, n = _f(nbytes), _f(n)
    return _collective_ms((n - 1.0) / np.maximum(n, 1.0) * nb, n - 1.0, n, link_gb_s, p)


def alltoall_ms(nbytes: ArrayLike, n: ArrayLike, *, link_gb_s: ArrayLike,
                p: Mapping[str, ArrayLike]) -> np.ndarray:
    """All-to-all of an nbytes send buffer per GPU: (n-1)/n of it leaves the GPU, to
    all peers at once, so the latency is one step regardless of n."""
    nb, n = _f(nbytes), _f(n)
    return _collective_ms((n - 1.0) / np.maximum(n, 1.0) * nb, np.ones_like(n), n, link_gb_s, p)
