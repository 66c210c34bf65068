"""The low-latency MoE kernel: small steps of a backend that runs it are priced by the
kernel tables' moe_torch_flow_min_latency fit (B200 nvfp4), everything else as before."""
import copy

import numpy as np
import pytest

import dse
from dse.catalog.runtime import MOE_KERNELS, parse_serving_runtime, runtime, serving_runtime
from dse.errors import DSEError
from dse.fit.calibrate import MOE_VARIANTS, load_params, predict, read_tables
from dse.catalog.devices import get_device

MOE = "Qwen/Qwen3-235B-A22B"
KERNELS = "../shared/calibration/kernels"


def _serving(kernel: str) -> dict:
    table = copy.deepcopy(serving_runtime())
    for consts in table["backends"].values():
        consts["moe_kernel"] = kernel
    return table


def _tpot(kernel: str, **cfg) -> np.ndarray:
    base = dict(model=MOE, device="b200_sxm", tp=8, ep=8, weight_dtype="fp4", kv_dtype="fp8", isl=1024, osl=1024,
                backend="trtllm")
    return dse.evaluate(serving_runtime=_serving(kernel), **{**base, **cfg}).tpot_ms.to_numpy()


def test_small_steps_run_faster_on_the_low_latency_kernel_and_large_ones_do_not_change():
    limit = runtime()["moe_low_latency_tokens"]
    plain, low = _tpot("", batch_size=[4, 16, 512]), _tpot("min_latency", batch_size=[4, 16, 512])
    assert (low[:2] < 0.95 * plain[:2]).all()          # decode steps of 4 and 16 tokens
    assert 512 > limit and low[2] == pytest.approx(plain[2], rel=1e-12)


@pytest.mark.parametrize("cfg", [dict(device="h100_sxm", weight_dtype="fp8"),            # no such kernel measured
                                 dict(weight_dtype="fp8"),                                   # not nvfp4
                                 dict(model="meta-llama/Llama-3.1-70B", ep=1)])             # no experts
def test_rows_the_kernel_does_not_serve_are_priced_as_before(cfg):
    cfg = dict(batch_size=[4, 64], **cfg)
    np.testing.assert_allclose(_tpot("min_latency", **cfg), _tpot("", **cfg), rtol=1e-12)


def test_the_fitted_variant_is_faster_where_the_tables_measured_it_faster():
    """The B200 nvfp4 table measures the min-latency kernel at about half the plain one's
    time on small steps; its fitted parameters must price it so (else the choice would
    be a fit artefact)."""
    _, df = read_tables(f"{KERNELS}/b200_sxm")["moe"]
    df = df[(df.moe_dtype == "nvfp4") & (df.num_tokens <= runtime()["moe_low_latency_tokens"])]
    device, params = get_device("b200_sxm"), load_params("b200_sxm")["moe"]
    low = df[df.kernel_source == "moe_torch_flow_min_latency"]
    as_plain = low.assign(kernel_source="moe_torch_flow_cutlass")
    ratio = predict("moe", low, device, params) / predict("moe", as_plain, device, params)
    measured = low.merge(df[df.kernel_source == "moe_torch_flow_cutlass"], suffixes=("", "_plain"),
                         on=["num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
                             "moe_ep_size", "distribution"])
    assert len(measured) >= 10
    assert np.median(ratio) < 0.75 and np.median(measured.latency / measured.latency_plain) < 0.75


def test_the_kernel_names_are_the_calibrated_variants():
    """A backend may choose the plain kernel or a calibrated variant of it; the non-gated
    variant belongs to the FFN (relu^2 experts), not to the engine's choice."""
    assert set(MOE_KERNELS) - {""} <= set(MOE_VARIANTS.values())
    assert "nongated" in MOE_VARIANTS.values() and "nongated" not in MOE_KERNELS


def test_an_unknown_kernel_in_the_serving_file_is_a_one_line_error():
    doc = {"backends": {"trtllm": {"request_ms": 1.0, "step_ms": 0.1, "moe_kernel": "fastest"}}}
    with pytest.raises(DSEError, match=r"backends\.trtllm\.moe_kernel: expected one of '', 'min_latency'") as exc:
        parse_serving_runtime(doc)
    assert "\n" not in str(exc.value)


def test_the_step_limit_is_the_evaluation_contexts_runtime_fact():
    """The low-latency kernel's step limit comes from the Context the call carries
    (runtime.yaml by default), not from the file the hardware table cached: a limit of 0
    prices every step on the plain kernel, the shipped limit keeps the small steps fast."""
    import dataclasses

    from dse.deploy.columns import broadcast
    from dse.deploy.context import make_context
    from dse.deploy.evaluate import evaluate_columns

    cfg = dict(model=MOE, device="b200_sxm", tp=8, ep=8, weight_dtype="fp4", kv_dtype="fp8", isl=1024,
               osl=1024, backend="trtllm", batch_size=[4, 16])
    cols, n, vocab = broadcast(cfg)
    ctx = make_context(serving=_serving("min_latency"))
    off = dataclasses.replace(ctx, runtime={**ctx.runtime, "moe_low_latency_tokens": 0})
    shipped = evaluate_columns(cols, n, vocab, ctx, strict=True).tpot_ms.to_numpy()
    none = evaluate_columns(cols, n, vocab, off, strict=True).tpot_ms.to_numpy()
    np.testing.assert_allclose(shipped, _tpot("min_latency", batch_size=[4, 16]), rtol=1e-12)
    np.testing.assert_allclose(none, _tpot("", batch_size=[4, 16]), rtol=1e-12)
    assert (shipped < 0.95 * none).all()


def test_an_mxfp4_checkpoint_is_marked_and_an_nvfp4_one_is_not():
    from dse.catalog.models import get_model
    assert get_model("openai/gpt-oss-120b").mxfp4 and get_model("openai/gpt-oss-120b").native_dtype == "fp4"
    assert not get_model("nvidia/DeepSeek-R1-NVFP4").mxfp4 and not get_model(MOE).mxfp4


def test_mxfp4_experts_on_b200_are_priced_as_the_tables_w4a8_kernel_fit():
    """gpt-oss's experts at fp4 on B200 run the MXFP4 x MXFP8 grouped GEMM the B200 table times
    at gpt-oss's shapes (w4a8_mxfp4_mxfp8): the engine's MoE figures for that row key give the
    calibration's prediction of those very rows (its efficiency restated against the fp4 peak)."""
    from dse.deploy.spec_table import _pair_row
    from dse.fit.calibrate import _args_moe
    from dse.model import kernels as K
    _, df = read_tables(f"{KERNELS}/b200_sxm")["moe"]
    df = df[df.moe_dtype == "w4a8_mxfp4_mxfp8"]
    assert len(df) >= 20
    device = get_device("b200_sxm")
    want = predict("moe", df, device, load_params("b200_sxm")["moe"])
    row = _pair_row("b200_sxm", "fp4", False, "", True)
    p = {k.split(":", 1)[1]: v for k, v in row.items() if k.startswith("moe:")}
    _, args, _ = _args_moe(df, device)
    got = K.moe_ms(**{**args, "peak_tflops": row["peak_gemm"]}, p=p)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    plain = _pair_row("b200_sxm", "fp4", False, "", False)
    assert plain["moe:floor_us"] > 1.5 * row["moe:floor_us"]     # the NVFP4 kernel's fixed cost is not gpt-oss's


@pytest.mark.parametrize("device", ["h100_sxm", "h200_sxm"])
def test_mxfp4_changes_nothing_where_there_are_no_fp4_tensor_cores(device):
    from dse.deploy.spec_table import _pair_row
    assert _pair_row(device, "fp4", True, "min_latency", True) == _pair_row(device, "fp4", True, "min_latency", False)
