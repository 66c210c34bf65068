"""Physical properties of the engine on random configurations (hypothesis).

Energy is power x time and a feasible row has finite metrics. And more of any one
resource never hurts: on a device with more memory bandwidth, more FLOPS, more HBM or more
scale-up bandwidth (a `base:` device file with that one figure scaled) throughput never
falls, and at batch 1 TTFT and TPOT never rise. Hypothesis draws a seed and a factor;
each example evaluates ROWS random configurations (models, modes, layouts, formats,
lengths, batch, prefix hits, routing skew, power caps, speculative decoding, backends),
built with numpy from the seed, on the base devices and on every what-if device in one
call, so each property is checked on more than 100,000 configurations in a few seconds.
The examples are derandomized: a failure reproduces on every run.

At higher concurrency a closed loop may trade latency for throughput: a disaggregated
deployment whose prefill or decode pool gets faster admits more sequences to decode
(TPOT up, throughput up), or, bound by its prefill pool, spends less of each request's
cycle decoding and more waiting for prefill (TTFT up, throughput unchanged: Little's law
at a fixed rate). Those are not checked here.
"""
from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dse
from dse.catalog.devices import get_device
from dse.catalog.facility import get_facility
from dse.schema import METRICS, NON_NUMERIC_METRICS

# model -> (tensor-parallel sizes, devices it fits on at those sizes)
MODELS = {
    "Qwen/Qwen3-8B": ((1, 2, 4, 8), ("h100_sxm", "b200_sxm")),                 # dense GQA
    "Qwen/Qwen3-30B-A3B": ((1, 2, 4), ("h100_sxm", "b200_sxm")),              # MoE
    "openai/gpt-oss-20b": ((1, 2, 4), ("h100_sxm", "b200_sxm")),              # sliding window + MoE
    "Qwen/Qwen3.5-35B-A3B": ((1, 2), ("h100_sxm", "b200_sxm")),               # gated delta-net hybrid
    "deepseek-ai/DeepSeek-V3.2": ((8,), ("b200_sxm",)),                       # MLA + DSA indexer
}
FACTORS = (1.1, 1.5, 2.0, 4.0)
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def configs(draw, *, batch=None, modes=("agg", "disagg", "afd")):
    """One configuration as a dict of columns."""
    model = draw(st.sampled_from(sorted(MODELS)))
    tps, devices = MODELS[model]
    tp = draw(st.sampled_from(tps))
    mode = draw(st.sampled_from(modes))
    row = {"model": model, "device": draw(st.sampled_from(devices)), "mode": mode, "tp": tp,
           "batch_size": batch if batch is not None else draw(st.sampled_from((1, 4, 32, 128, 512))),
           "isl": draw(st.sampled_from((16, 128, 1024, 4096, 8192))),
           "osl": draw(st.sampled_from((2, 16, 256, 1024))),
           "weight_dtype": draw(st.sampled_from(("native", "fp8"))),
           "kv_dtype": draw(st.sampled_from(("bf16", "fp8"))),
           "prefix_hit": draw(st.sampled_from((0.0, 0.5))),
           "routing_skew": draw(st.sampled_from((0.0, 1.2))),
           "power_cap": draw(st.sampled_from((1.0, 0.7))),
           "spec_tokens": draw(st.sampled_from((0, 2))),
           "attn_tp": tp, "attn_gpus": tp if mode == "afd" else 0, "ffn_gpus": tp if mode == "afd" else 0}
    return row


def _evaluate(rows: list[dict]):
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    return dse.evaluate(strict=False, **cols)


@SETTINGS
@given(rows=st.lists(configs(), min_size=1, max_size=12))
def test_energy_is_power_times_time_and_feasible_rows_are_finite(rows):
    df = _evaluate(rows)
    ok = df.feasible.to_numpy()
    pue = get_facility().pue
    got = df.joules_per_token.to_numpy()[ok] * df.tokens_per_s.to_numpy()[ok]
    np.testing.assert_allclose(got, df.power_w.to_numpy()[ok] * pue, rtol=1e-9)
    for m in METRICS:
        if m in NON_NUMERIC_METRICS:
            continue
        vals = df[m].to_numpy(dtype=float)[ok]
        assert np.all(np.isfinite(vals)), f"{m}: non-finite on a feasible row: {df[ok][~np.isfinite(vals)].iloc[0].to_dict()}"
    assert np.all(df.tokens_per_s.to_numpy()[ok] > 0) and np.all(df.power_w.to_numpy()[ok] > 0)


# --- more of one resource never hurts --------------------------------------------------------

# the figure each what-if device scales (dse.catalog.devices.DeviceFile)
RESOURCES = {"bw": "memory_tb_s", "flops": "peak_tflops", "hbm": "memory_gb", "scaleup": "scaleup_gb_s"}
BASES = ("h100_sxm", "b200_sxm")
ROWS = 20_000           # configurations per example
EXAMPLES = 6            # hypothesis examples per sweep: > 100,000 compared configurations each
MIN_COMPARED = 100_000
RTOL = 1e-9

# model -> (layouts (tp, dp, ep), devices, afd FFN-pool sizes); every layout divides the model
SPACE = {
    "Qwen/Qwen3-8B": (((1, 1, 1), (2, 1, 1), (4, 1, 1), (8, 1, 1)), BASES, (1, 2, 4)),
    "meta-llama/Llama-3.1-8B": (((1, 1, 1), (2, 1, 1), (4, 1, 1)), BASES, (1, 2, 4)),
    "Qwen/Qwen3-30B-A3B": (((1, 1, 1), (2, 1, 1), (2, 1, 2), (4, 1, 4), (1, 4, 4), (4, 1, 1)), BASES, (1, 2, 4, 8)),
    "openai/gpt-oss-20b": (((1, 1, 1), (2, 1, 2), (4, 1, 4), (1, 2, 2)), BASES, (1, 2, 4)),
    "Qwen/Qwen3.5-35B-A3B": (((1, 1, 1), (2, 1, 2), (2, 1, 1)), BASES, (1, 2, 4)),
    "deepseek-ai/DeepSeek-V3": (((8, 1, 8), (1, 8, 8), (8, 1, 1)), ("b200_sxm",), (4, 8)),   # block-scaled FP8
}
_WEIGHTS = ("native", "native", "fp8", "fp4", "int4", "bf16")
_BACKENDS = ("", "trtllm", "vllm", "sglang")


def _pick(rng, options, n) -> np.ndarray:
    return np.array(options, dtype=object)[rng.integers(0, len(options), n)]


def random_rows(seed: int, n: int, *, batch_one: bool) -> dict[str, np.ndarray]:
    """n random configurations as columns (numpy only: thousands per example cost nothing)."""
    rng = np.random.default_rng(seed)
    names = sorted(SPACE)
    which = rng.integers(0, len(names), n)
    lay = {k: np.zeros(n, dtype=np.int64) for k in ("tp", "dp", "ep", "ptp", "pdp", "pep", "dtp", "ddp", "dep", "ffn")}
    device = np.empty(n, dtype=object)
    for k, name in enumerate(names):
        sel = np.flatnonzero(which == k)
        layouts, devices, ffns = SPACE[name]
        for keys in (("tp", "dp", "ep"), ("ptp", "pdp", "pep"), ("dtp", "ddp", "dep")):
            picked = np.array(layouts)[rng.integers(0, len(layouts), sel.size)]
            for j, key in enumerate(keys):
                lay[key][sel] = picked[:, j]
        device[sel] = _pick(rng, devices, sel.size)
        lay["ffn"][sel] = np.array(ffns)[rng.integers(0, len(ffns), sel.size)]
    mode = _pick(rng, ("agg", "disagg", "afd"), n)
    dis, afd = mode == "disagg", mode == "afd"
    role = {f"{r}_{k}": np.where(dis, lay[r[0] + k], 0) for r in ("prefill", "decode") for k in ("tp", "dp", "ep")}
    return {
        "model": np.array(names, dtype=object)[which], "device": device, "mode": mode,
        "tp": lay["tp"], "dp": lay["dp"], "ep": lay["ep"], "pp": np.where(rng.random(n) < 0.15, 2, 1),
        "batch_size": np.ones(n, dtype=np.int64) if batch_one else 2 ** rng.integers(0, 10, n),
        "isl": np.round(np.exp(rng.uniform(np.log(16), np.log(16384), n))).astype(np.int64),
        "osl": np.round(np.exp(rng.uniform(np.log(2), np.log(2048), n))).astype(np.int64),
        "weight_dtype": _pick(rng, _WEIGHTS, n), "kv_dtype": _pick(rng, ("bf16", "fp8"), n),
        "prefix_hit": np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0, 0.9, n)),
        "routing_skew": np.where(rng.random(n) < 0.5, 0.0, rng.uniform(0, 2, n)),
        "power_cap": np.where(rng.random(n) < 0.6, 1.0, rng.uniform(0.4, 1.0, n)),
        "spec_tokens": np.where(rng.random(n) < 0.3, rng.integers(1, 5, n), 0),
        "spec_acceptance": np.where(rng.random(n) < 0.5, np.nan, rng.uniform(0.3, 0.9, n)),
        "backend": _pick(rng, _BACKENDS, n),
        "bench_rounds": np.where(rng.random(n) < 0.7, np.inf, rng.integers(1, 10, n).astype(float)),
        # the step budget set explicitly: an engine's default depends on the device's memory
        # (runtime.yaml engine_limits), so a what-if device with more HBM would run another setting
        "max_num_tokens": _pick(rng, (2048, 8192, 16384), n),
        **role,
        "prefill_workers": np.where(dis, rng.integers(1, 4, n), 1),
        # batch 1 means one user in the whole deployment: one decode worker
        "decode_workers": np.where(dis & (not batch_one), rng.integers(1, 3, n), 1),
        "attn_tp": np.where(afd, lay["tp"], 1), "attn_gpus": np.where(afd, lay["tp"] * lay["dp"], 0),
        "ffn_gpus": np.where(afd, lay["ffn"], 0),
    }


@pytest.fixture(scope="module")
def whatif(tmp_path_factory) -> str:
    """A directory of what-if devices BASE_RESOURCE_xF.yaml: the base with one figure x F."""
    root = tmp_path_factory.mktemp("whatif")
    for base in BASES:
        dev = get_device(base)
        for res, field in RESOURCES.items():
            for f in FACTORS:
                if field == "peak_tflops":
                    value = "{" + ", ".join(f"{k}: {v * f!r}" for k, v in dev.peak_tflops.items()) + "}"
                else:
                    value = repr(getattr(dev, field) * f)
                (root / f"{base}_{res}_x{f}.yaml").write_text(
                    f"base: {base}\n{field}: {value}\nhypothetical: true\nsources: {{{field}: 'hypothetical: x{f}'}}\n")
    return str(root)


def _whatif_path(root: str, base: str, res: str, f: float) -> str:
    return f"{root}/{base}_{res}_x{f}.yaml"


def test_whatif_devices_scale_exactly_one_figure(whatif):
    base = get_device("h100_sxm")
    got = {r: get_device(_whatif_path(whatif, "h100_sxm", r, 2.0)) for r in RESOURCES}
    assert got["bw"].memory_tb_s == 2.0 * base.memory_tb_s and got["bw"].peak_tflops == base.peak_tflops
    assert got["flops"].peak_tflops == {k: 2.0 * v for k, v in base.peak_tflops.items()}
    assert got["flops"].memory_tb_s == base.memory_tb_s
    assert got["hbm"].memory_gb == 2.0 * base.memory_gb and got["hbm"].memory_tb_s == base.memory_tb_s
    assert got["scaleup"].scaleup_gb_s == 2.0 * base.scaleup_gb_s and got["scaleup"].memory_gb == base.memory_gb
    assert {d.calibration_from for d in got.values()} == {"h100_sxm"}


_KEEP = ("ttft_ms", "tpot_ms", "tokens_per_s")


@functools.lru_cache(maxsize=None)
def _sweep(root: str, batch_one: bool) -> dict[str, dict]:
    """Per resource: base and what-if metrics of every configuration feasible on both,
    with the mode, the seed and the row (to rebuild a reproducer) and the factor."""
    parts: dict[str, list] = {r: [] for r in RESOURCES}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2 ** 32 - 1), factor=st.sampled_from(FACTORS))
    def collect(seed, factor):
        cols = random_rows(seed, ROWS, batch_one=batch_one)
        devs = [cols["device"]] + [np.array([_whatif_path(root, d, r, factor) for d in cols["device"]], dtype=object)
                                   for r in RESOURCES]
        df = dse.evaluate(strict=False, **{k: (np.concatenate(devs) if k == "device" else np.tile(v, len(devs)))
                                           for k, v in cols.items()})
        ok = df.feasible.to_numpy().reshape(len(devs), ROWS)
        vals = {m: df[m].to_numpy().reshape(len(devs), ROWS) for m in _KEEP}
        for i, r in enumerate(RESOURCES, start=1):
            both = np.flatnonzero(ok[0] & ok[i])
            parts[r].append(pd.DataFrame({"mode": cols["mode"][both], "seed": seed, "row": both, "factor": factor,
                                          **{f"{m}_base": vals[m][0, both] for m in _KEEP},
                                          **{f"{m}_more": vals[m][i, both] for m in _KEEP}}))

    collect()
    return {r: pd.concat(p, ignore_index=True) for r, p in parts.items()}


def _reproducer(root: str, res: str, rec, batch_one: bool) -> str:
    """`dse evaluate` of one compared row on its base device (add --device of the what-if file)."""
    cols = random_rows(int(rec.seed), ROWS, batch_one=batch_one)
    i = int(rec.row)
    flags = []
    for k, v in cols.items():
        v = v[i]
        if (k in ("backend",) and v == "") or (isinstance(v, float) and np.isnan(v)) or \
                (k.startswith(("prefill_", "decode_", "attn_", "ffn_")) and v == 0 and k != "prefill_workers"):
            continue
        v = ".inf" if isinstance(v, float) and np.isinf(v) else (f"{v:.6g}" if isinstance(v, float) else v)
        flags.append(f"--{k.replace('_', '-')} {v}")
    what = _whatif_path(root, cols["device"][i], res, float(rec.factor))
    return f"dse evaluate {' '.join(flags)}  (what-if: --device {what})"


# Where the property still fails, and the mechanism. Empty since the power cap balances
# energy (dse.model.power.apply_cap): it used to stretch a capped step's compute-bound
# share by (demand/cap)^(1/3), and more bandwidth, raising the demand and making more
# operators compute-bound, made a capped step longer. The chunked-prefill marginal credit
# that failed 12.7 % of agg rows (bandwidth, throughput) and 22.4 % (TTFT at batch 1) is
# gone too: the mixed step is priced whole (dse.model.steps.mixed_latency).
KNOWN: dict[tuple[str, str, str], str] = {}
# ("scaleup", "tokens_per_s", "afd") failed on 1 of 39,009 rows (-0.003 %, Qwen3.5-35B-A3B afd on b200
# at scale-up x1.5) until the afd pools were priced once per distinct row; on this sample it now holds.


def _cases():
    for res in RESOURCES:
        for metric in ("tokens_per_s", "ttft_ms", "tpot_ms"):
            for mode in ("agg", "disagg", "afd"):
                reason = KNOWN.get((res, metric, mode))
                marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)] if reason else []
                yield pytest.param(res, metric, mode, marks=marks, id=f"{res}-{metric}-{mode}")


@pytest.mark.parametrize("res,metric,mode", list(_cases()))
def test_more_of_one_resource_never_hurts(whatif, res, metric, mode):
    """Throughput never falls (any batch); at batch 1 TTFT and TPOT never rise."""
    batch_one = metric != "tokens_per_s"
    df = _sweep(whatif, batch_one)[res]
    assert len(df) >= MIN_COMPARED, f"only {len(df)} configurations feasible on both devices"
    df = df[df["mode"] == mode]
    a, b = df[f"{metric}_base"].to_numpy(), df[f"{metric}_more"].to_numpy()
    worse = (b < a * (1 - RTOL)) if metric == "tokens_per_s" else (b > a * (1 + RTOL))
    if worse.any():
        j = np.flatnonzero(worse)[np.argmax(np.abs(b[worse] / a[worse] - 1))]
        rec = df.iloc[j]
        raise AssertionError(f"{res} x{rec.factor}: {metric} {a[j]:.6g} -> {b[j]:.6g} on {int(worse.sum())} of "
                             f"{len(df)} {mode} configurations ({worse.mean():.3%}); worst: "
                             f"{_reproducer(whatif, res, rec, batch_one)}")


# Minimal configurations of the old marginal prefill credit at batch 1 (fixed when the mixed
# step was priced whole; kept as regression cases); the largest seen then: DeepSeek-V3.2 agg on
# b200_sxm, tp 8, isl 8192: TTFT 268 -> 378 ms at x1.1 bandwidth.
TTFT_BW_FAILURES = [
    pytest.param({"model": "Qwen/Qwen3-8B", "device": "b200_sxm", "mode": "agg", "tp": 2, "batch_size": 1,
                  "isl": 128, "osl": 256}, 1.1, id="agg-qwen3-8b-b200-tp2-isl128-bw1.1"),      # 88.93 -> 89.38 ms
    pytest.param({"model": "Qwen/Qwen3-30B-A3B", "device": "h100_sxm", "mode": "afd", "tp": 1, "attn_tp": 1,
                  "attn_gpus": 1, "ffn_gpus": 1, "batch_size": 1, "isl": 128, "osl": 256, "weight_dtype": "fp8"},
                 4.0, id="afd-qwen3-30b-h100-fp8-isl128-bw4"),                                   # 93.18 -> 93.29 ms
]


def _pair(row: dict, root: str, factor: float) -> pd.DataFrame:
    more = {**row, "device": _whatif_path(root, row["device"], "bw", factor)}
    return _evaluate([row, more])


@pytest.mark.parametrize("row,factor", TTFT_BW_FAILURES)
def test_ttft_bandwidth_failures_are_feasible_rows(row, factor, whatif):
    """The regression cases below are feasible rows (they test the model, not a refusal)."""
    assert _pair(row, whatif, factor).feasible.all()


@pytest.mark.parametrize("row,factor", TTFT_BW_FAILURES)
def test_batch_one_chunked_prefill_ttft_never_rises_with_bandwidth(row, factor, whatif):
    ttft = _pair(row, whatif, factor).ttft_ms.to_numpy()
    assert ttft[1] <= ttft[0] * (1 + RTOL), f"TTFT {ttft[0]:.6g} -> {ttft[1]:.6g} ms at x{factor} bandwidth"
