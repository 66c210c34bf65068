"""The engine end to end: hand-computed FLOPs/bytes, physical properties, clear errors."""
import dataclasses

import numpy as np
import pytest

import dse
from dse import api
from dse.catalog.devices import get_device
from dse.catalog.models import get_model
from dse.errors import DSEError
from dse.model import ops

LLAMA70 = "meta-llama/Llama-3.1-70B"


def _hw(n=1, bw=3.35):
    from dse.deploy.spec_table import SpecTable
    t = SpecTable([("h100_sxm", "bf16")])
    cols = t.gather(np.zeros(n, dtype=int))
    cols["mem_tb_s"] = np.full(n, bw)
    from dse.catalog.runtime import runtime
    return SpecTable.hw(cols, runtime=runtime())


def test_llama_layer_flops_and_bytes_by_hand():
    m = get_model(LLAMA70)
    one_layer = dataclasses.replace(m, groups=(dataclasses.replace(m.groups[0], count=1),))
    par = ops.Parallel(tp=np.ones(1), dp=np.ones(1), ep=np.ones(1), pp=np.ones(1))
    dt = ops.Dtypes(w_bytes=np.full(1, 2.0), a_bytes=np.full(1, 2.0), kv_bytes=np.full(1, 2.0))
    tokens = 512
    step = ops.forward(one_layer, hw=_hw(), par=par, dt=dt, batch=np.ones(1), q_len=np.full(1, tokens),
                       ctx=np.full(1, tokens), lm_head=False)
    layer_params = 150_994_944 + 3 * 8192 * 28672
    gemm_flops = step.flops["attn_proj"] + step.flops["ffn"]
    assert gemm_flops[0] == pytest.approx(2 * tokens * layer_params)
    gemm_weight_bytes = layer_params * 2
    act_bytes = step.bytes["attn_proj"][0] + step.bytes["ffn"][0] - gemm_weight_bytes
    assert act_bytes > 0 and act_bytes < gemm_weight_bytes
    # causal prefill attention: 2 * heads * (qk + v) * s^2 / 2 on 64 heads of 128
    assert step.flops["attn_core"][0] == pytest.approx(2 * 64 * 256 * tokens * tokens / 2)


def test_more_bandwidth_is_never_slower():
    m = get_model(LLAMA70)
    par = ops.Parallel(tp=np.ones(4), dp=np.ones(4), ep=np.ones(4), pp=np.ones(4))
    dt = ops.Dtypes(w_bytes=np.full(4, 1.0), a_bytes=np.full(4, 1.0), kv_bytes=np.full(4, 2.0))
    slow = ops.forward(m, hw=_hw(4, 3.35), par=par, dt=dt, batch=np.array([1, 8, 64, 256.0]),
                       q_len=np.ones(4), ctx=np.full(4, 2048.0)).total_ms
    fast = ops.forward(m, hw=_hw(4, 8.0), par=par, dt=dt, batch=np.array([1, 8, 64, 256.0]),
                       q_len=np.ones(4), ctx=np.full(4, 2048.0)).total_ms
    assert np.all(fast <= slow) and np.all(fast < slow * 0.8)


def test_hypothetical_bandwidth_device_is_faster(tmp_path):
    dev = tmp_path / "h100_8tbs.yaml"
    dev.write_text("base: h100_sxm\nmemory_tb_s: 8.0\nhypothetical: true\n"
                   "sources: {memory_tb_s: 'hypothetical: what-if 8 TB/s'}\n")
    df = dse.evaluate(model=LLAMA70, device=["h100_sxm", str(dev)], tp=4, batch_size=16, weight_dtype="fp8")
    assert df.tpot_ms[1] < df.tpot_ms[0] * 0.8  # 2.4x bandwidth; launch floors do not shrink


def test_throughput_grows_with_batch_until_memory_runs_out():
    batches = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
    df = dse.evaluate(model=LLAMA70, device="h100_sxm", tp=8, batch_size=batches, weight_dtype="fp8",
                      isl=1024, osl=1024)
    fits = df.memory_gb_per_gpu < 80
    tps = df.tokens_per_s[fits].to_numpy()
    assert fits.sum() >= 5
    assert np.all(np.diff(tps) >= 0)
    assert np.all(np.diff(df.tpot_ms.to_numpy()) >= 0)


def test_energy_is_power_times_time():
    df = dse.evaluate(model=LLAMA70, device=["h100_sxm", "b200_sxm"], tp=4, batch_size=[8, 64],
                      weight_dtype="fp8", power_cap=[1.0, 0.7])
    from dse.catalog.facility import get_facility
    fac_pue = get_facility().pue
    assert np.allclose(df.joules_per_token, df.power_w * fac_pue / df.tokens_per_s)
    # usd per million tokens is the hourly cost spread over the hour's tokens
    assert np.allclose(df.usd_per_mtok, df.usd_per_hour / (df.tokens_per_s * 3600) * 1e6)


def test_power_cap_trades_speed_for_watts():
    df = dse.evaluate(model=LLAMA70, device="h100_sxm", tp=4, batch_size=64, weight_dtype="fp8",
                      isl=4096, osl=256, power_cap=[1.0, 0.4])
    assert df.power_w[1] < df.power_w[0]
    assert df.ttft_ms[1] > df.ttft_ms[0]


def test_rows_never_dropped_nor_nan():
    df = dse.evaluate(model=LLAMA70, device=["h100_sxm", "l40s", "b200_sxm"], tp=[1, 1, 8], batch_size=64,
                      weight_dtype="bf16", isl=8192, osl=1024, strict=False)
    assert len(df) == 3
    assert not df[[m for m in api.METRICS if m not in ("infeasible_reason", "bottleneck")]].isna().any().any()
    assert df.feasible.tolist() == [False, False, True]
    assert df.infeasible_reason[0].startswith("memory")


@pytest.mark.parametrize("kw,match", [
    (dict(device="h900"), "unknown device 'h900'; known: a100_pcie, a100_sxm"),
    (dict(model="nope/none"), "unknown model 'nope/none'"),
    (dict(weight_dtype="fp3"), "weight_dtype: unknown dtype 'fp3'; allowed: fp32, bf16"),
    (dict(tp=3), "tp must divide the 64 attention heads"),
    (dict(colour="red"), "unknown column 'colour'"),
])
def test_bad_input_is_one_line_error(kw, match):
    cfg = {**dict(model=LLAMA70, device="h100_sxm", tp=4), **kw}
    with pytest.raises(DSEError, match=match) as exc:
        dse.evaluate(**cfg)
    assert "\n" not in str(exc.value)


def test_cli_error_is_one_line_without_traceback(capsys):
    from dse.cli import main
    assert main(["evaluate", "--model", LLAMA70, "--device", "h900"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "unknown device 'h900'" in err


def test_modes_report_their_pools():
    row, ops_df, pools = api.explain(model="deepseek-ai/DeepSeek-R1", mode="disagg", device="b200_sxm",
                                     tp=8, ep=8, weight_dtype="fp4", kv_dtype="fp8", batch_size=64,
                                     prefill_workers=2, decode_workers=1, isl=4096, osl=512)
    assert list(pools.role) == ["prefill", "decode"]
    assert pools.transfer_ms.iloc[0] > 0 and (pools.step_ms > 0).all()
    assert set(ops_df.phase) == {"prefill", "decode"} and "moe" in set(ops_df.op)
    row, ops_df, pools = api.explain(model="deepseek-ai/DeepSeek-R1", mode="afd", device="h200_sxm",
                                     ffn_device="b200_sxm", attn_gpus=8, ffn_gpus=8, weight_dtype="fp8",
                                     kv_dtype="fp8", batch_size=128, isl=2048, osl=512)
    assert list(pools.role) == ["attention", "ffn"] and row.num_gpus == 16


def test_afd_pools_are_priced_and_powered_by_the_ops_they_run():
    """An afd attention pool runs attention, the TP all-reduces, the LM head; the FFN pool
    only the FFN / experts: each decode breakdown holds only its pool's ops, and the FFN
    pool's busy power does not grow with the attention's KV reads (a longer context)."""
    kw = dict(model="deepseek-ai/DeepSeek-R1", mode="afd", device="h200_sxm", ffn_device="b200_sxm", attn_gpus=8,
              ffn_gpus=8, weight_dtype="fp8", kv_dtype="fp8", batch_size=128, osl=512)
    _, ops_df, pools = api.explain(isl=2048, **kw)
    assert set(ops_df[ops_df.phase == "decode_ffn"].op) == {"moe", "ffn"}     # the dispatch is the transfer
    assert set(ops_df[ops_df.phase == "decode"].op) <= {"attn_proj", "attn_core", "tp_comm", "lm_head", "pp_comm"}
    assert "attn_core" in set(ops_df[ops_df.phase == "decode"].op)
    _, _, long_pools = api.explain(isl=16384, **kw)
    idle = get_device("b200_sxm").idle_w

    def ffn_busy_w(p):      # the FFN pool's power while it runs: its report is idle + util x (busy - idle)
        f = p.set_index("role").loc["ffn"]
        return idle + (f.power_w_per_gpu - idle) / f.utilisation
    assert ffn_busy_w(long_pools) == pytest.approx(ffn_busy_w(pools), rel=1e-9)


def test_attention_runs_in_the_kv_cache_format_not_the_weights():
    """Prefill attention time depends on the KV cache's format (fp8 cache: fp8 FMHA at the
    fp8 rate) and not on the weights' format (the GEMMs are what fp8 weights speed up)."""
    def attn_core(wd, kv):
        _, ops_df, _ = api.explain(model="meta-llama/Llama-3.1-70B", device="b200_sxm", tp=1, batch_size=4,
                                   isl=8192, osl=1024, weight_dtype=wd, kv_dtype=kv)
        row = ops_df[(ops_df.phase == "prefill") & (ops_df.op == "attn_core")].iloc[0]
        proj = ops_df[(ops_df.phase == "prefill") & (ops_df.op == "attn_proj")].iloc[0]
        return row.time_ms, proj.time_ms

    bf16_bf16, proj_bf16 = attn_core("bf16", "bf16")
    fp8_bf16, proj_fp8 = attn_core("fp8", "bf16")
    fp8_fp8, _ = attn_core("fp8", "fp8")
    assert fp8_bf16 == pytest.approx(bf16_bf16, rel=1e-12)
    assert proj_fp8 < 0.8 * proj_bf16                    # the weights' format speeds the GEMMs
    assert 0.4 * fp8_bf16 < fp8_fp8 < 0.95 * fp8_bf16     # the cache's format speeds attention
