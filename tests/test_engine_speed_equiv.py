"""The engine's fast paths (shared GEMM/attention work between a step's passes, whole-call
dedupe) return what the engine returned before them: the bench's two cases (dense 70B agg
on random columns, a MoE disagg grid), evaluated here and compared with outputs stored from
main's code before those changes (tests/data/engine_speed_main.parquet), 1e-9 relative."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import dse
from dse.deploy import evaluate as evaluate_mod

FIXTURE = Path(__file__).resolve().parent / "data" / "engine_speed_main.parquet"
METRICS = ["ttft_ms", "tpot_ms", "tokens_per_s", "power_w", "usd_per_mtok", "memory_gb_per_gpu",
           "meets_slo_prob", "goodput_tokens_per_s", "ttft_ms_p90", "tpot_ms_p90", "e2e_ms"]


def dense_agg(n: int = 1200, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    return dict(model="meta-llama/Llama-3.1-70B", mode="agg",
                device=rng.choice(["h100_sxm", "h200_sxm", "b200_sxm", "mi300x", "a100_sxm"], n),
                tp=rng.choice([1, 2, 4, 8], n), pp=rng.choice([1, 1, 2], n), batch_size=rng.integers(1, 512, n),
                weight_dtype=rng.choice(["bf16", "fp8", "fp4"], n), kv_dtype=rng.choice(["bf16", "fp8"], n),
                isl=rng.choice([512, 1024, 2048, 8192], n), osl=rng.choice([128, 256, 1024], n),
                prefix_hit=rng.choice([0.0, 0.5], n), ttft_slo_ms=rng.choice([np.inf, 500.0], n),
                tpot_slo_ms=rng.choice([np.inf, 30.0], n))


def moe_disagg(n: int = 1200, seed: int = 8) -> dict:
    """A grid's repeats (each decode pool under many prefill pools and worker counts): a
    small product, tiled, with a random tail so both the deduplicated and the plain paths run."""
    rng = np.random.default_rng(seed)
    axes = dict(prefill_device=["h100_sxm", "b200_sxm"], prefill_tp=[2, 4, 8], prefill_ep=[1, 8],
                decode_device=["h200_sxm", "b200_sxm"], decode_tp=[1, 4], decode_dp=[1, 8], decode_ep=[4, 8],
                decode_batch_size=[16, 128, 512], prefill_workers=[1, 3], decode_workers=[1, 2],
                kv_dtype=["bf16", "fp8"])
    sizes = [len(v) for v in axes.values()]
    idx = np.unravel_index(np.arange(n) % int(np.prod(sizes)), sizes)
    cols = {k: np.asarray(v)[i] for (k, v), i in zip(axes.items(), idx)}
    tail = n // 3
    for k, v in axes.items():
        cols[k][-tail:] = rng.choice(np.asarray(v), tail)
    return dict(model="Qwen/Qwen3-235B-A22B", mode="disagg", device="h200_sxm", weight_dtype="fp8",
                isl=4096, osl=1024, ttft_slo_ms=2000.0, tpot_slo_ms=50.0, **cols)


def outputs() -> pd.DataFrame:
    frames = []
    for name, make in (("dense_agg", dense_agg), ("moe_disagg", moe_disagg)):
        df = dse.evaluate(strict=False, **make())
        frames.append(pd.DataFrame({"case": name, "feasible": df.feasible.to_numpy(),
                                    **{m: df[m].to_numpy(dtype=float) for m in METRICS}}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("chunk", [None, 256])
def test_bench_cases_match_main_before_the_fast_paths(chunk, monkeypatch):
    """chunk: rows per chunk (256: many chunks, so the call memo gathers rows priced in earlier ones)."""
    if chunk:
        monkeypatch.setattr(evaluate_mod, "CHUNK_ROWS", chunk)
    want = pd.read_parquet(FIXTURE)
    got = outputs()
    assert len(got) == len(want) == 2400 and want.feasible.sum() > 500
    assert (got.feasible.to_numpy() == want.feasible.to_numpy()).all()
    for m in METRICS:
        a, b = got[m].to_numpy(), want[m].to_numpy()
        # a probability is compared absolutely: far-tail values (~1e-26) carry the libm of the
        # machine that wrote the fixture in their leading digits, and no use tells them from 0
        atol = 1e-12 if m == "meets_slo_prob" else 0.0
        same = (a == b) | (np.isnan(a) & np.isnan(b)) | np.isclose(a, b, rtol=1e-9, atol=atol)
        bad = np.flatnonzero(~same)
        assert bad.size == 0, f"{m}: {bad.size} rows differ, e.g. row {bad[:1]}: {a[bad[:1]]} vs {b[bad[:1]]}"


if __name__ == "__main__":      # writes the fixture: run on main's code only
    outputs().to_parquet(FIXTURE, index=False, compression="zstd")


def test_moe_routing_is_the_two_routing_functions_exactly():
    """moe_routing shares the popularity law between the experts hit and the imbalance: the
    same numbers bit for bit, on the power branch, the near-1 branch (skew 1) and a mix."""
    from dse.model import kernels
    rng = np.random.default_rng(3)
    n = 4000
    t, ep = rng.uniform(0.5, 20000, n), rng.choice([1.0, 2, 8, 32], n)
    for skew in (1.2, 1.0, 0.0, rng.choice([0.0, 1.0, 1.2], n)):
        for red in (0.0, rng.choice([0.0, 8.0, 32.0], n)):
            hit, imb = kernels.moe_routing(t, 8, 128, ep, skew, red)
            assert np.array_equal(hit, kernels.moe_experts_hit(t, 8, 128, ep, skew, red))
            assert np.array_equal(imb, kernels.moe_imbalance(t, 8, 128, ep, skew, red))
            assert np.all((imb >= 1.0) & (imb <= ep)) and np.all(hit <= (128 + red) / ep)


def test_gemm_parts_keep_gemm_ms_and_its_bytes():
    """gemm_ms through its m-free constants: one matrix's constants priced at two token
    counts give what gemm_ms gives at each, and the bytes are the GEMM's traffic."""
    from dse.model import kernels
    p = {"tile_n": 128.0, "tile_slots": 264.0, "tile_m": 128.0, "split_min_k": 256.0, "eff_compute": 0.8,
         "k_half": 100.0, "eff_memory": 0.85, "floor_us": 5.0}
    n_, k_ = np.array([1024.0, 3000.0, 8192.0]), 8192.0
    c = kernels.gemm_consts(n_, k_, w_bytes=1.0, peak_tflops=989.0, mem_tb_s=3.35, p=p)
    for m in (np.array([1.0, 17.0, 4096.0]), np.array([300.0, 2.0, 64.0])):
        t, nbytes = kernels.gemm_parts(m, c, a_bytes=1.0, c_bytes=2.0)
        assert np.array_equal(t, kernels.gemm_ms(m, n_, k_, a_bytes=1.0, w_bytes=1.0, c_bytes=2.0, peak_tflops=989.0,
                                                 mem_tb_s=3.35, p=p))
        assert np.array_equal(nbytes, m * k_ * 1.0 + k_ * n_ * 1.0 + m * n_ * 2.0)


def test_call_memo_keys_mean_the_same_pool_in_every_chunk(monkeypatch):
    """Rows priced in one chunk are gathered in later ones only where every input matches.
    Two 256-row chunks whose spec-table codes span different ranges (chunk 1: h200 only,
    codes 10-11; chunk 2: h200 and h100, codes 10-15), with 32 EPLB replicas in the first
    and 24 in the second: a pool key scaled by the chunk's own largest code gave both
    h200/bf16 decode pools the key 10 + 12 x 32 = 10 + 16 x 24, and the second chunk the
    first one's steps. Many small chunks must give what one chunk gives."""
    n = 512
    cols = dict(model="Qwen/Qwen3-235B-A22B", mode="disagg", device="h200_sxm", prefill_device="h200_sxm",
                decode_device=np.r_[np.full(256, "h200_sxm"), np.tile(["h200_sxm", "h100_sxm"], 128)],
                kv_dtype=np.tile(["bf16", "fp8"], n // 2), weight_dtype="fp8", isl=2048, osl=512,
                prefill_tp=8, prefill_ep=8, decode_tp=1, decode_dp=8, decode_ep=8, decode_batch_size=64,
                decode_redundant_experts=np.r_[np.full(256, 32), np.full(256, 24)], prefill_workers=1,
                decode_workers=1)
    whole = dse.evaluate(strict=False, **cols)
    monkeypatch.setattr(evaluate_mod, "CHUNK_ROWS", 256)
    chunked = dse.evaluate(strict=False, **cols)
    assert whole.feasible.sum() > n // 4
    for m in METRICS + ["power_w", "num_gpus"]:
        a, b = chunked[m].to_numpy(dtype=float), whole[m].to_numpy(dtype=float)
        assert np.array_equal(a, b, equal_nan=True), m
