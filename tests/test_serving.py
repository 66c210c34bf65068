"""Serving modes under load: the known qualitative results, the closed loop, SLO goodput,
workload mixes and the per-pool report."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import dse
from dse import api
from dse.errors import DSEError

LLAMA70 = "meta-llama/Llama-3.1-70B"
QWEN235 = "Qwen/Qwen3-235B-A22B"


def grid(**axes):
    rows = list(itertools.product(*axes.values()))
    return {k: [r[i] for r in rows] for i, k in enumerate(axes)}


def best(df, metric, *, largest=True):
    ok = df[df.feasible & df.meets_slo]
    assert len(ok), "no configuration meets the SLO"
    return ok.loc[ok[metric].idxmax() if largest else ok[metric].idxmin()]


def test_disagg_beats_agg_at_tight_tpot_for_long_prompts():
    """Long prompts in an aggregated replica stretch every decode step (prefill shares the
    steps), so a tight TPOT forces tiny batches; disaggregation keeps prefill off the
    decode steps and wins on tokens/s/GPU."""
    common = dict(model=LLAMA70, device="h100_sxm", weight_dtype="fp8", kv_dtype="fp8", isl=8192, osl=256,
                  tpot_slo_ms=25, strict=False)
    agg = dse.evaluate(mode="agg", **grid(tp=[1, 2, 4, 8], batch_size=[2, 4, 8, 16, 32, 64]), **common)
    dis = dse.evaluate(mode="disagg", **grid(prefill_tp=[2, 4], decode_tp=[1, 2, 4], prefill_workers=[1, 2, 4],
                                             decode_batch_size=[16, 32, 64]), **common)
    a, d = best(agg, "tokens_per_s_per_gpu"), best(dis, "tokens_per_s_per_gpu")
    assert d.tokens_per_s_per_gpu > 1.3 * a.tokens_per_s_per_gpu
    # the reason: in agg the prompts' prefill, not the decode step itself, eats the TPOT budget
    row, _, pools = api.explain(**{**{k: v for k, v in common.items() if k != "strict"}, "mode": "agg",
                                   "tp": int(a.tp), "batch_size": int(a.batch_size)})
    assert pools.step_ms.iloc[0] < 0.7 * row.tpot_ms
    row, _, pools = api.explain(**{**{k: v for k, v in common.items() if k != "strict"}, "mode": "disagg",
                                   "prefill_tp": int(d.prefill_tp), "decode_tp": int(d.decode_tp),
                                   "prefill_workers": int(d.prefill_workers),
                                   "decode_batch_size": int(d.decode_batch_size)})
    assert pools.set_index("role").step_ms["decode"] == pytest.approx(row.tpot_ms)


def test_agg_matches_disagg_for_short_prompts_at_moderate_batch_with_less_energy():
    """Short prompts barely disturb decoding: a collocated chunked-prefill replica does as
    well as a disaggregated one, without a prefill pool idling between prompts."""
    common = dict(model=LLAMA70, device="h100_sxm", weight_dtype="fp8", kv_dtype="fp8", isl=512, osl=512,
                  strict=False)
    agg = dse.evaluate(mode="agg", **grid(tp=[1, 2, 4, 8], batch_size=[16, 32, 64]), **common)
    dis = dse.evaluate(mode="disagg", **grid(prefill_tp=[1, 2, 4], decode_tp=[1, 2, 4, 8], prefill_workers=[1, 2],
                                             decode_workers=[1, 2, 4], decode_batch_size=[16, 32, 64]), **common)
    a, d = best(agg, "tokens_per_s_per_gpu"), best(dis, "tokens_per_s_per_gpu")
    assert a.tokens_per_s_per_gpu >= 0.97 * d.tokens_per_s_per_gpu
    assert a.joules_per_token < d.joules_per_token


def test_afd_with_memory_rich_attention_beats_single_device_in_tokens_per_dollar():
    """Large MoE, long-context decode (prefill on its own H100 workers in every case): the
    KV stream is the bulk of a decode step, so attention on H20 (96 GB, 4 TB/s at ~45 % of
    an H100's price) feeding experts on H100 costs less per token than H100 alone; with
    H100 attention the split does not pay, so the attention device is the reason."""
    common = dict(model=QWEN235, weight_dtype="fp8", kv_dtype="fp8", isl=8192, osl=8192, tpot_slo_ms=60,
                  prefill_device="h100_sxm", prefill_tp=8, prefill_ep=8, prefill_dp=1, strict=False)
    g = grid(tp=[1, 2], dp=[16, 32], batch_size=[1024, 2048], prefill_workers=[1, 2])
    g["ep"] = [t * d for t, d in zip(g["tp"], g["dp"])]
    single = dse.evaluate(mode="disagg", device="h100_sxm", **g, **common)
    f = grid(attn_device=["h20", "h100_sxm"], attn_gpus=[32, 64], attn_tp=[1, 2], ffn_gpus=[8, 16],
             batch_size=[1024, 2048], prefill_workers=[1, 2])
    afd = dse.evaluate(mode="afd", device=f["attn_device"], ffn_device="h100_sxm", **f, **common)
    base = best(single, "usd_per_mtok", largest=False)
    split = best(afd[afd.attn_device == "h20"], "usd_per_mtok", largest=False)
    same = best(afd[afd.attn_device == "h100_sxm"], "usd_per_mtok", largest=False)
    assert split.usd_per_mtok < 0.9 * base.usd_per_mtok
    assert same.usd_per_mtok > split.usd_per_mtok


def test_tight_tpot_slo_lowers_goodput():
    cfg = dict(model=LLAMA70, device="h100_sxm", tp=4, batch_size=128, weight_dtype="fp8", kv_dtype="fp8",
               isl=2048, osl=256)
    free = dse.evaluate(**cfg).iloc[0]
    assert free.goodput_tokens_per_s == pytest.approx(free.tokens_per_s)
    slos = [free.tpot_ms * f for f in (1.5, 0.8, 0.6)]
    df = dse.evaluate(**cfg, tpot_slo_ms=slos)
    assert df.meets_slo.tolist() == [True, False, False]
    gp = df.goodput_tokens_per_s.to_numpy()
    assert gp[0] == pytest.approx(free.tokens_per_s) and 0 < gp[2] < gp[1] < gp[0]
    # cost per token at the load the SLO allows is dearer; the load found really meets the SLO
    assert (df.usd_per_mtok_at_slo.iloc[1:] > df.usd_per_mtok.iloc[1:]).all()
    users = np.arange(1, 129)
    at = dse.evaluate(**{**cfg, "batch_size": users})
    ok = at[at.tpot_ms <= slos[1]]
    assert gp[1] == pytest.approx(ok.tokens_per_s.max(), rel=0.05)
    # no SLO that even one user can meet: no goodput, and an infinite cost at the SLO
    none = dse.evaluate(**cfg, ttft_slo_ms=1.0).iloc[0]
    assert none.goodput_tokens_per_s == 0 and np.isinf(none.usd_per_mtok_at_slo)


@pytest.mark.parametrize("mode,extra", [
    ("agg", dict(tp=4, batch_size=64)),
    ("disagg", dict(prefill_tp=4, decode_tp=4, prefill_workers=2, decode_workers=2, decode_batch_size=64)),
    ("afd", dict(attn_gpus=4, attn_tp=4, ffn_gpus=4, batch_size=64)),
])
def test_closed_loop_identity(mode, extra):
    """concurrency users, one request each in flight: tokens/s = users * osl / e2e."""
    row = dse.evaluate(model=LLAMA70, device="h100_sxm", mode=mode, weight_dtype="fp8", kv_dtype="fp8",
                       isl=2048, osl=512, **extra).iloc[0]
    users = 128 if mode == "disagg" else 64
    assert row.e2e_ms == pytest.approx(row.ttft_ms + 511 * row.tpot_ms)
    assert row.tokens_per_s == pytest.approx(users * 512 / (row.e2e_ms / 1e3), rel=1e-6)


def test_prefill_sharing_steps_stretches_tpot_in_agg_only():
    """Longer prompts: agg TPOT exceeds its decode step by the prompts' prefill spread over
    the output tokens; a disaggregated decode pool's TPOT is its decode step."""
    common = dict(model=LLAMA70, device="h100_sxm", weight_dtype="fp8", kv_dtype="fp8", osl=256, batch_size=32)
    stretch = []
    for isl in (512, 8192):
        row, _, pools = api.explain(mode="agg", tp=4, isl=isl, **common)
        stretch.append(row.tpot_ms / pools.step_ms.iloc[0])
        row, _, pools = api.explain(mode="disagg", prefill_tp=4, decode_tp=4, prefill_workers=4, isl=isl, **common)
        assert row.tpot_ms == pytest.approx(pools.set_index("role").step_ms["decode"])
    assert 1.0 < stretch[0] < 1.5 and stretch[1] > 3.0


def test_backend_constants_and_benchmark_rounds():
    cfg = dict(model=LLAMA70, device="b200_sxm", tp=4, batch_size=32, weight_dtype="fp8", isl=2048, osl=512)
    df = dse.evaluate(**cfg, backend=["trtllm", "vllm", "sglang", ""])
    from dse.catalog.runtime import serving_runtime
    rt = serving_runtime()["backends"]
    assert set(rt) >= {"default", "trtllm", "vllm", "sglang"}
    order = np.argsort([rt[b]["request_ms"] for b in ("trtllm", "vllm", "sglang")])
    assert (np.diff(df.ttft_ms.to_numpy()[:3][order]) > 0).all()   # more per-request cost, later first token
    # a finite benchmark starts all users together: its mean TTFT includes the first round's queue
    runs = dse.evaluate(**cfg, bench_rounds=[np.inf, 4.0, 1.0])
    assert runs.ttft_ms[0] < runs.ttft_ms[1] < runs.ttft_ms[2]
    with pytest.raises(DSEError, match="unknown backend 'tgi'") as exc:
        dse.evaluate(**cfg, backend="tgi")
    assert "\n" not in str(exc.value)


def test_workload_mix_combines_classes():
    cfg = dict(model=LLAMA70, device="h100_sxm", tp=4, batch_size=[16, 64], weight_dtype="fp8", kv_dtype="fp8")
    short = dse.evaluate(**cfg, isl=1024, osl=256)
    long_ = dse.evaluate(**cfg, isl=8192, osl=512)
    one = api.evaluate_mix([(1024, 256, 1.0)], **cfg)
    assert np.allclose(one.tokens_per_s, short.tokens_per_s) and np.allclose(one.tpot_ms, short.tpot_ms)
    mix = api.evaluate_mix([{"isl": 1024, "osl": 256, "weight": 3}, {"isl": 8192, "osl": 512, "weight": 1}], **cfg)
    assert len(mix) == 2 and (mix.mix_classes == 2).all()
    lo = np.minimum(short.tokens_per_s, long_.tokens_per_s)
    hi = np.maximum(short.tokens_per_s, long_.tokens_per_s)
    assert ((mix.tokens_per_s > lo) & (mix.tokens_per_s < hi)).all()
    assert np.allclose(mix.ttft_ms, 0.75 * short.ttft_ms + 0.25 * long_.ttft_ms)
    with pytest.raises(DSEError, match="missing 'weight'"):
        api.evaluate_mix([{"isl": 1024, "osl": 256}], **cfg)


def test_evaluate_prints_each_pool(capsys):
    from dse.cli import main
    args = ["evaluate", "--model", "deepseek-ai/DeepSeek-R1", "--device", "b200_sxm", "--mode", "afd",
            "--attn-device", "h200_sxm", "--ffn-device", "b200_sxm", "--attn-gpus", "8", "--ffn-gpus", "8",
            "--prefill-device", "b200_sxm", "--prefill-tp", "8", "--prefill-ep", "8", "--prefill-workers", "2",
            "--batch-size", "512", "--isl", "2048", "--osl", "1024", "--weight-dtype", "fp8", "--kv-dtype", "fp8",
            "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    pools = {p["role"]: p for p in out["pools"]}
    assert set(pools) == {"prefill", "attention", "ffn"}
    for p in pools.values():
        assert p["step_ms"] > 0 and 0 < p["utilisation"] <= 1 and p["power_w_per_gpu"] > 0 and p["transfer_ms"] > 0
    assert out["metrics"]["num_gpus"] == 16 + 16
    assert main(args[:-1]) == 0
    text = capsys.readouterr().out
    assert all(w in text for w in ("step_ms", "utilisation", "power_w_per_gpu", "transfer_ms", "attention"))
