"""Kernel latency model: hand-computed cases, physical properties, vectorization,
MoE routing imbalance, calibration I/O and accuracy against the measured tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from dse.fit import calibrate
from dse.catalog.devices import get_device
from dse.errors import DSEError
from dse.model import kernels as K
from dse.fit.validate_kernels import validate

KERNELS = Path(__file__).resolve().parents[2] / "shared" / "calibration" / "kernels"
DEVICES = ("h100_sxm", "b200_sxm")
H100 = get_device("h100_sxm")


def params(device: str, family: str, fmt: str = "bf16") -> dict:
    return K.for_format(calibrate.load_params(device)[family], fmt)


# ----------------------------------------------------------------- hand-computed
def test_large_bf16_gemm_is_flops_over_peak_times_efficiency():
    p = {"eff_compute": 0.8, "eff_memory": 0.8, "k_half": 256.0, "tile_m": 128.0, "tile_n": 128.0,
         "tile_slots": 64.0, "split_min_k": 1e9, "floor_us": 5.0}
    # 64 x 64 tiles = 64 full waves of 64 slots: no quantization loss
    got = K.gemm_ms(8192, 8192, 8192, a_bytes=2, w_bytes=2, c_bytes=2, peak_tflops=989.0,
                    mem_tb_s=3.35, p=p)
    eff = 0.8 * 8192 / (8192 + 256)
    want = (2 * 8192**3 / (989e12 * eff) + 5e-6) * 1e3
    assert got == pytest.approx(want, rel=1e-12)


def test_small_m_gemm_reads_the_weights_once():
    p = {"eff_compute": 0.8, "eff_memory": 0.8, "k_half": 256.0, "tile_m": 128.0, "tile_n": 128.0,
         "tile_slots": 64.0, "split_min_k": 256.0, "floor_us": 5.0}
    got = K.gemm_ms(1, 16384, 16384, a_bytes=2, w_bytes=2, c_bytes=2, peak_tflops=989.0,
                    mem_tb_s=3.35, p=p)
    nbytes = 16384 * 2 + 16384 * 16384 * 2 + 16384 * 2
    assert got == pytest.approx((nbytes / (3.35e12 * 0.8) + 5e-6) * 1e3, rel=1e-12)


def test_decode_attention_streams_known_bytes():
    p = {"eff_memory": 0.9, "eff_compute": 0.5, "tile_slots": 132.0, "block_tokens": 256.0,
         "cta_heads": 8.0, "cta_us": 0.0, "cta_bw_frac": 1e6, "ramp_us": 0.0, "ramp_mb": 1.0,
         "floor_us": 8.0, "max_group": 32.0, "eff_fallback": 0.01}
    batch, ctx, heads, d, kv_heads = 8, 4096, 64, 128, 8
    got = K.attn_decode_ms(batch, ctx, heads, d, d, 2 * kv_heads * d, peak_tflops=989.0,
                           mem_tb_s=3.35, kv_bytes=2.0, p=p, kv_heads=kv_heads)
    nbytes = batch * ctx * 2 * kv_heads * d * 2 + batch * heads * 2 * d * 2
    assert got == pytest.approx((nbytes / (3.35e12 * 0.9) + 8e-6) * 1e3, rel=1e-9)


def test_causal_prefill_counts_half_the_square():
    p = {"eff_compute": 0.5, "eff_memory": 1e9, "cta_us": 0.0, "d_half": 0.0, "tile_q": 1.0,
         "tile_kv": 1.0, "tile_slots": 1.0, "floor_us": 0.0}
    s, h, d = 4096, 32, 128
    got = K.attn_prefill_ms(1, s, h, d, d, 2 * 8 * d, 0, peak_tflops=1000.0, mem_tb_s=3.0,
                            kv_bytes=2.0, p=p)
    flops = 2 * h * 2 * d * s * (s + 1) / 2          # 4 b h d s^2 / 2 for causal
    assert got == pytest.approx(flops / (1000e12 * 0.5) * 1e3, rel=1e-9)
    # a sliding window bounds the work: 128-token window over 4096 tokens
    windowed = K.attn_prefill_ms(1, s, h, d, d, 2 * 8 * d, 128, peak_tflops=1000.0,
                                 mem_tb_s=3.0, kv_bytes=2.0, p=p)
    assert windowed < got / 10


@pytest.mark.parametrize("fn", [K.allreduce_ms, K.allgather_ms, K.reduce_scatter_ms, K.alltoall_ms])
def test_collectives_on_one_gpu_cost_nothing(fn):
    p = calibrate.load_params("h100_sxm")["nccl"]
    assert fn(1e9, 1, link_gb_s=450.0, p=p) == 0.0
    assert fn(1e9, 8, link_gb_s=450.0, p=p) > 0.0


def test_large_allreduce_is_bus_bytes_over_link_bandwidth():
    p = {"base_us": 5.0, "step_us": 1.0, "eff_ll": 0.2, "eff_bw": 0.75, "bw_extra_us": 20.0}
    got = K.allreduce_ms(1e9, 8, link_gb_s=450.0, p=p)
    want = (5e-6 + 20e-6 + 14 * 1e-6 + 2 * 7 / 8 * 1e9 / (450e9 * 0.75)) * 1e3
    assert got == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------- properties
RNG = np.random.default_rng(7)
N = 400


def _gemm(dev: str, mem: float = 1.0, peak: float = 1.0, m=None):
    m = RNG.integers(1, 16384, N) if m is None else m
    return K.gemm_ms(m, 4096, 8192, a_bytes=2, w_bytes=2, c_bytes=2,
                     peak_tflops=get_device(dev).peak_tflops["bf16"] * peak,
                     mem_tb_s=get_device(dev).memory_tb_s * mem, p=params(dev, "gemm"))


def _shapes():
    return dict(batch=RNG.integers(1, 256, N), heads=RNG.choice([8, 32, 64], N),
                ctx=RNG.integers(1, 32768, N), kvh=RNG.choice([1, 2, 8], N))


@pytest.mark.parametrize("dev", DEVICES)
def test_more_bandwidth_or_flops_is_never_slower(dev):
    d = get_device(dev)
    s = _shapes()
    m = RNG.integers(1, 16384, N)
    assert np.all(_gemm(dev, mem=2.0, m=m) <= _gemm(dev, m=m))
    assert np.all(_gemm(dev, peak=2.0, m=m) <= _gemm(dev, m=m))

    def decode(mem=1.0, peak=1.0):
        return K.attn_decode_ms(s["batch"], s["ctx"], s["heads"], 128, 128, 2 * s["kvh"] * 128,
                                peak_tflops=d.peak_tflops["bf16"] * peak, mem_tb_s=d.memory_tb_s * mem,
                                kv_bytes=2.0, p=params(dev, "generation_attention"), kv_heads=s["kvh"])

    def prefill(mem=1.0, peak=1.0):
        return K.attn_prefill_ms(s["batch"], s["ctx"] // 8 + 1, s["heads"], 128, 128, 2 * s["kvh"] * 128,
                                 0, peak_tflops=d.peak_tflops["bf16"] * peak,
                                 mem_tb_s=d.memory_tb_s * mem, kv_bytes=2.0,
                                 p=params(dev, "context_attention"))

    def moe(mem=1.0, peak=1.0):
        return K.moe_ms(s["batch"] * 16, 4096, 2048, 8, 128, 1, 8, skew=1.2, w_bytes=2, a_bytes=2,
                        peak_tflops=d.peak_tflops["bf16"] * peak, mem_tb_s=d.memory_tb_s * mem,
                        p=params(dev, "moe"))

    for fn in (decode, prefill, moe):
        assert np.all(fn(mem=2.0) <= fn()), fn.__name__
        assert np.all(fn(peak=2.0) <= fn()), fn.__name__


@pytest.mark.parametrize("dev", DEVICES)
def test_more_tokens_is_never_faster(dev):
    d = get_device(dev)
    tokens = np.arange(1, 8193)
    for fmt in ("bf16", "fp8"):
        t = K.gemm_ms(tokens, 7168, 2048, a_bytes=2, w_bytes=2, c_bytes=2,
                      peak_tflops=d.peak_tflops[fmt], mem_tb_s=d.memory_tb_s, p=params(dev, "gemm", fmt))
        assert np.all(np.diff(t) >= -1e-12)
    for skew in (0.0, 1.2):
        t = K.moe_ms(tokens, 7168, 2048, 8, 256, 1, 8, skew=skew, w_bytes=1, a_bytes=1,
                     peak_tflops=d.peak_tflops["fp8"], mem_tb_s=d.memory_tb_s, p=params(dev, "moe", "fp8"))
        assert np.all(np.diff(t) >= -1e-12 * t[1:])
    t = K.attn_prefill_ms(4, tokens, 32, 128, 128, 2048, 0, peak_tflops=d.peak_tflops["bf16"],
                          mem_tb_s=d.memory_tb_s, kv_bytes=2.0, p=params(dev, "context_attention"))
    assert np.all(np.diff(t) >= 0)
    t = K.attn_decode_ms(16, tokens * 8, 32, 128, 128, 2048, peak_tflops=d.peak_tflops["bf16"],
                         mem_tb_s=d.memory_tb_s, kv_bytes=2.0, p=params(dev, "generation_attention"))
    assert np.all(np.diff(t) >= 0)


# ------------------------------------------------------------------ vectorization
def test_array_params_per_row_match_scalar_calls():
    """Rows on different devices in one call give what one call per row gives."""
    devs = ["h100_sxm", "b200_sxm"] * 3
    m = np.array([1, 37, 512, 4096, 129, 8192])
    peak = np.array([get_device(d).peak_tflops["fp8"] for d in devs])
    mem = np.array([get_device(d).memory_tb_s for d in devs])
    per_dev = {d: params(d, "gemm", "fp8") for d in set(devs)}
    stacked = {k: np.array([per_dev[d][k] for d in devs]) for k in per_dev["h100_sxm"]}
    together = K.gemm_ms(m, 4096, 7168, a_bytes=1, w_bytes=1, c_bytes=2, peak_tflops=peak,
                         mem_tb_s=mem, p=stacked)
    alone = [K.gemm_ms(m[i], 4096, 7168, a_bytes=1, w_bytes=1, c_bytes=2, peak_tflops=peak[i],
                       mem_tb_s=mem[i], p=per_dev[d]) for i, d in enumerate(devs)]
    np.testing.assert_allclose(together, alone, rtol=1e-12)

    fam = "moe"
    per_dev = {d: params(d, fam, "fp8") for d in set(devs)}
    stacked = {k: np.array([per_dev[d][k] for d in devs]) for k in per_dev["h100_sxm"]}
    tokens = np.array([1, 16, 256, 4096, 3, 9000])
    skew = np.array([0.0, 1.2, 1.01, 0.0, 1.2, 1.01])
    together = K.moe_ms(tokens, 7168, 2048, 8, 256, 1, 8, skew=skew, w_bytes=1, a_bytes=1,
                        peak_tflops=peak, mem_tb_s=mem, p=stacked)
    alone = [K.moe_ms(tokens[i], 7168, 2048, 8, 256, 1, 8, skew=skew[i], w_bytes=1, a_bytes=1,
                      peak_tflops=peak[i], mem_tb_s=mem[i], p=per_dev[d]) for i, d in enumerate(devs)]
    np.testing.assert_allclose(together, alone, rtol=1e-12)


def test_for_format_falls_back_along_the_chain():
    p = {"eff_compute": 0.8, "eff_compute.fp8": 0.6, "floor_us": 3.0}
    assert K.for_format(p, "fp8_block")["eff_compute"] == 0.6
    assert K.for_format(p, "fp4")["eff_compute"] == 0.6          # 4-bit float -> fp8
    assert K.for_format(p, "int4")["eff_compute"] == 0.8         # weight-only int4 -> bf16 math
    rows = K.for_format(p, np.array(["bf16", "fp8", "fp8_block@x"]))
    np.testing.assert_allclose(rows["eff_compute"], [0.8, 0.6, 0.6])


# ------------------------------------------------------------------ MoE imbalance
def test_imbalance_balanced_is_one_and_skew_raises_it_up_to_the_worst_case():
    tokens = np.array([1, 8, 64, 512, 4096, 16384])
    for ep in (1, 2, 8, 32):
        bal = K.moe_imbalance(tokens, 8, 256, ep, 0.0)
        np.testing.assert_allclose(bal, 1.0)
        mild = K.moe_imbalance(tokens, 8, 256, ep, 1.01)
        hard = K.moe_imbalance(tokens, 8, 256, ep, 1.2)
        assert np.all(mild >= 1.0) and np.all(hard <= ep)
        if ep > 1:
            assert np.all(mild > 1.0) and np.all(hard >= mild)
        else:
            np.testing.assert_allclose(hard, 1.0)


def test_imbalance_follows_the_power_law_it_is_derived_from():
    """Computed, not fitted: agree with a Monte-Carlo of the skewed routing."""
    rng = np.random.default_rng(0)
    for tokens, topk, experts, ep, alpha in [(4096, 8, 256, 8, 1.2), (256, 8, 256, 8, 1.01),
                                             (8192, 2, 8, 8, 1.2)]:
        lo, hi = 1.0, 0.8 * tokens
        u = rng.random((400, experts))
        x = ((hi ** (1 - alpha) - lo ** (1 - alpha)) * u + lo ** (1 - alpha)) ** (1 / (1 - alpha))
        ranks = x.reshape(400, ep, experts // ep).sum(-1)
        mc = np.mean(ranks.max(-1) / ranks.sum(-1)) * ep
        assert K.moe_imbalance(tokens, topk, experts, ep, alpha) == pytest.approx(mc, rel=0.2)


def test_experts_hit_grows_with_tokens_and_is_bounded_by_the_local_experts():
    tokens = np.array([1, 2, 8, 64, 1024, 65536])
    for skew in (0.0, 1.2):
        hit = K.moe_experts_hit(tokens, 8, 256, 8, skew)
        assert np.all(np.diff(hit) >= 0) and np.all(hit <= 32) and np.all(hit >= 1)
    assert K.moe_experts_hit(1, 8, 256, 1, 0.0) == pytest.approx(8, rel=0.05)


# ------------------------------------------------------------- calibration files
def test_shipped_calibrations_carry_provenance():
    for dev in DEVICES + ("a100_sxm", "l40s"):
        path = Path(str(calibrate.calibration_dir())) / f"{dev}.yaml"
        doc = yaml.safe_load(path.read_text())
        prov = doc["provenance"]
        assert prov["tool"] == "dse calibrate" and "AIConfigurator" in prov["attribution"]
        assert set(doc["params"]) == set(calibrate.FAMILIES)
        assert all(prov["sources"][f]["rows"] > 0 for f in calibrate.FAMILIES)


def test_write_then_load_roundtrip(tmp_path, monkeypatch):
    result = {"params": {"nccl": {"base_us": 1.0, "step_us": 2.0, "eff_ll": 0.3, "eff_bw": 0.7,
                                  "bw_extra_us": 9.0, "one_shot": 0.0}},
              "errors": {"nccl": {"n": 3, "median_ape": 1.0, "mape": 2.0}},
              "sources": {"nccl": {"path": "/x/shared/calibration/kernels/h100_sxm/nccl.csv.gz",
                                   "rows": 3}}}
    path = calibrate.write(result, "h100_sxm", tmp_path)
    assert path.name == "h100_sxm.yaml" and not list(tmp_path.glob(".*tmp"))
    from dse.deploy import kernel_params
    monkeypatch.setattr(kernel_params, "calibration_dir", lambda: tmp_path)
    loaded = calibrate.load_params("h100_sxm")
    assert loaded["nccl"]["base_us"] == 1.0
    assert loaded["gemm"] == kernel_params.default_params()["gemm"]   # missing family -> defaults


def test_uncalibrated_device_is_built_from_rules_and_sibling(tmp_path):
    """A hypothetical variant of H100 keeps H100's own fit (formats H100 has no table for
    from the rule); a device without a sibling gets the rule on its spec sheet."""
    from dse.deploy import kernel_params as KP
    derived = tmp_path / "h100_hypo.yaml"
    derived.write_text("id: h100_hypo\nbase: h100_sxm\nname: hypothetical\nhypothetical: true\n")
    got, h100 = calibrate.load_params(str(derived)), calibrate.load_params("h100_sxm")
    rules = KP.load_rules()
    for fam in calibrate.FAMILIES:
        want = KP.from_rule(fam, rules["rules"][fam], H100)      # formats H100 has no table for
        want.update(h100[fam])
        assert got[fam] == pytest.approx(want, rel=1e-12), fam
    raw = yaml.safe_load(Path(get_device("h100_sxm").path).read_text())
    raw["id"] = "lonely_gpu"
    lonely = tmp_path / "lonely_gpu.yaml"
    lonely.write_text(yaml.safe_dump(raw))
    got = calibrate.load_params(str(lonely))
    for fam in calibrate.FAMILIES:
        assert got[fam] == pytest.approx(KP.from_rule(fam, rules["rules"][fam], H100), rel=1e-12)
    assert got["unfitted"] == {"eff_compute": got["gemm"]["eff_compute"],   # the rule's own, derived
                               "eff_memory": got["generation_attention"]["eff_memory"]}


def test_defaults_file_has_provenance_and_every_family():
    """The defaults say where they come from and cover every family the engine reads
    (`unfitted` is derived per device, not carried)."""
    from dse.deploy.kernel_params import default_params, defaults_path
    from dse.deploy.spec_table import FAMILIES
    doc = yaml.safe_load(defaults_path().read_text())
    assert {"tool", "method", "sources", "clock_ghz"} <= set(doc["provenance"])
    assert doc["provenance"]["tool"] == "python -m dse.fit.defaults"
    d = default_params()
    assert set(FAMILIES) - {"unfitted"} <= set(d) and "unfitted" not in d
    d["gemm"]["eff_compute"] = 0.0                    # a copy: the cached defaults stay put
    assert default_params()["gemm"]["eff_compute"] > 0.5


def test_defaults_are_what_the_fits_give():
    """Every default is the reference fit's value (fp4 keys: b200_sxm's), rounded: a refit
    that is not followed by `python -m dse.fit.defaults` fails here."""
    from dse.deploy.kernel_params import calibration_dir, default_params
    from dse.fit import defaults as D
    built = D.build()["params"]
    assert built == default_params()
    fits = {d: yaml.safe_load((calibration_dir() / f"{d}.yaml").read_text())["params"]
            for d in (D.REFERENCE, D.FP4_FROM)}
    n = 0
    for fam, kv in built.items():
        for key, val in kv.items():
            fit = fits[D.FP4_FROM if key.endswith(".fp4") else D.REFERENCE][fam][key]
            assert val == pytest.approx(fit, rel=5e-4), (fam, key)
            n += 1
    assert n == sum(map(len, D.KEYS.values())) >= 60


def test_defaults_refuse_a_fit_without_a_carried_key(tmp_path):
    """A reference fit that lost a key the defaults carry is an error naming file and key."""
    from dse.deploy.kernel_params import calibration_dir
    from dse.fit import defaults as D
    for d in (D.REFERENCE, D.FP4_FROM):
        doc = yaml.safe_load((calibration_dir() / f"{d}.yaml").read_text())
        if d == D.REFERENCE:
            del doc["params"]["moe"]["floor_us.int4"]
        (tmp_path / f"{d}.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(DSEError, match=r"h100_sxm\.yaml: params\.moe\.floor_us\.int4: expected a fitted value"):
        D.build(tmp_path)


def test_unfitted_kernels_take_the_devices_own_efficiencies():
    """The roofline of kernels no table measures runs at the device's fitted GEMM compute and
    decode-attention streaming efficiencies (so L40S and B200 differ), not one typed-in pair."""
    got = {d: calibrate.load_params(d) for d in ("h100_sxm", "l40s", "b200_sxm")}
    for d, p in got.items():
        assert p["unfitted"] == {"eff_compute": p["gemm"]["eff_compute"],
                                 "eff_memory": p["generation_attention"]["eff_memory"]}, d
    assert got["l40s"]["unfitted"] != got["b200_sxm"]["unfitted"]


def test_bad_calibration_file_is_one_line_error(tmp_path, monkeypatch):
    from dse.deploy import kernel_params
    (tmp_path / "h100_sxm.yaml").write_text("params:\n  gemm:\n    eff_compute: fast\n")
    monkeypatch.setattr(kernel_params, "calibration_dir", lambda: tmp_path)
    with pytest.raises(DSEError, match=r"h100_sxm\.yaml: params\.gemm\.eff_compute: expected a number, got 'fast'"):
        kernel_params.load_params("h100_sxm")


# -------------------------------------------------------------- measured tables
needs_tables = pytest.mark.skipif(not KERNELS.is_dir(), reason="calibration tables not present")
TARGETS = {"gemm": 15.0, "context_attention": 15.0, "generation_attention": 15.0,
           "moe": 25.0, "nccl": 25.0, "custom_allreduce": 25.0}


@needs_tables
@pytest.mark.parametrize("dev", DEVICES)
def test_model_meets_accuracy_targets_on_measured_tables(dev):
    result = validate(KERNELS / dev, dev)
    assert set(result["families"]) == set(TARGETS)
    for family, target in TARGETS.items():
        assert result["families"][family]["median_ape"] < target, (family, result["families"][family])


@needs_tables
def test_nccl_blocks_are_the_collectors_four_ops_in_elements():
    _, df = calibrate.read_tables(KERNELS / "h100_sxm")["nccl"]
    ops = calibrate.nccl_ops(df)
    for n in (2, 4, 8):
        sel = df.num_gpus.to_numpy() == n
        assert {op: int((ops[sel] == op).sum()) for op in calibrate.NCCL_OPS} == \
            dict.fromkeys(calibrate.NCCL_OPS, 42)
    # message_size counts elements: an int8 run at 2x the count times like the half run
    # at 1x (same bytes); at the same count it would be ~2x faster at large sizes
    for n in (2, 4, 8):
        block = df[(ops == "all_gather") & (df.num_gpus == n)]
        half = block[block.nccl_dtype == "half"].set_index("message_size").latency
        int8 = block[block.nccl_dtype == "int8"].set_index("message_size").latency
        sizes = [s for s in half.index if 2 * s in int8.index]
        ratio = np.median([int8[2 * s] / half[s] for s in sizes])
        assert ratio == pytest.approx(1.0, abs=0.05)


@needs_tables
def test_fit_is_deterministic():
    _, df = calibrate.read_tables(KERNELS / "h100_sxm")["custom_allreduce"]
    first = calibrate.fit_family("custom_allreduce", df, H100)
    assert first == calibrate.fit_family("custom_allreduce", df, H100)
    assert first["one_shot"] == 1.0          # small messages take TensorRT-LLM's one-shot path


def test_the_lm_head_runs_the_bf16_kernel_whatever_the_weight_format():
    """Checkpoints keep the LM head in bf16: on an fp4 or fp8 row it is the same bf16 GEMM
    (bf16 bytes, peak and fitted bf16 parameters), so its time does not depend on the format
    of the other weights (it did: the row format's efficiencies priced the bf16 matrix)."""
    import dse
    cfg = dict(model="meta-llama/Llama-3.1-8B", device="b200_sxm", tp=1, batch_size=64, isl=1024, osl=256,
               kv_dtype="fp8", backend="trtllm")
    ops = {w: dse.explain(weight_dtype=w, **cfg)[1] for w in ("bf16", "fp8", "fp4")}
    head = {w: float(o.query("phase == 'decode' and op == 'lm_head'").time_ms.iloc[0]) for w, o in ops.items()}
    proj = {w: float(o.query("phase == 'decode' and op == 'attn_proj'").mbytes.iloc[0]) for w, o in ops.items()}
    assert proj["fp4"] < proj["fp8"] < proj["bf16"]               # the quantized matrices are quantized
    assert head["fp4"] == pytest.approx(head["bf16"], rel=1e-12) and head["fp8"] == pytest.approx(head["bf16"], rel=1e-12)
