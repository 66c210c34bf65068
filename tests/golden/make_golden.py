"""Write the golden results the refactors are held to: the metrics of a fixed random sample
of configurations over every mode, dense, MoE, MLA, sliding-window and hybrid models, and the
Pareto sets of the shipped scenarios.

    python tests/golden/make_golden.py            # rewrite tests/golden/*
A change that moves results on purpose (a model fix) reruns this and says so in its commit.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = ("meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-8B", "Qwen/Qwen3-30B-A3B",
          "deepseek-ai/DeepSeek-V3", "openai/gpt-oss-120b", "Qwen/Qwen3.5-35B-A3B", "mistralai/Mixtral-8x7B-v0.1")
DEVICES = ("h100_sxm", "h200_sxm", "b200_sxm", "gb200", "mi300x", "mi355x", "gaudi3", "a100_sxm", "l40s", "h20")
ROWS_PER_MODEL = 18_000
METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
           "power_w", "joules_per_token", "usd_per_mtok", "usd_per_hour", "num_gpus", "memory_gb_per_gpu",
           "capex_usd", "meets_slo", "goodput_tokens_per_s", "usd_per_mtok_at_slo", "feasible", "infeasible_reason",
           "bottleneck")
SCENARIOS = ("quickstart", "moe_hetero", "opdisagg", "procurement", "rack_scale")


def sample_columns(seed: int = 20261201) -> pd.DataFrame:
    """Random configurations: every column drawn from a plausible range, most rows feasible."""
    rng = np.random.default_rng(seed)
    n = ROWS_PER_MODEL
    parts = []
    for model in MODELS:
        ch = lambda vals: rng.choice(np.asarray(vals, dtype=object), n)   # noqa: E731
        p2 = lambda hi: 2 ** rng.integers(0, hi + 1, n)                  # noqa: E731
        df = pd.DataFrame({
            "model": model, "device": ch(DEVICES), "mode": ch(["agg", "disagg", "afd"]),
            "tp": p2(3), "pp": rng.choice([1, 1, 1, 2, 4], n), "dp": p2(2), "ep": p2(3),
            "replicas": rng.choice([1, 1, 2, 4], n),
            "weight_dtype": ch(["native", "bf16", "fp8", "int8", "int4", "fp4"]),
            "kv_dtype": ch(["bf16", "fp8", "int8"]),
            "batch_size": rng.choice([1, 2, 4, 8, 16, 32, 64, 128, 256, 512], n),
            "isl": rng.choice([128, 512, 1024, 2048, 4096, 8192], n),
            "osl": rng.choice([16, 128, 256, 1024], n),
            "prefix_hit": rng.choice([0.0, 0.0, 0.3, 0.8], n),
            "routing_skew": rng.choice([0.0, 0.0, 0.5, 1.2], n),
            "power_cap": rng.choice([1.0, 1.0, 0.8, 0.6], n),
            "own": rng.random(n) < 0.7,
            "backend": ch(["", "trtllm", "vllm", "sglang"]),
            "bench_rounds": rng.choice([np.inf, np.inf, 4.0], n),
            "spec_tokens": rng.choice([0, 0, 0, 1, 3], n),
            "spec_acceptance": rng.choice([np.nan, 0.6], n),
            "prefill_device": ch(["", "", "h100_sxm", "b200_sxm"]), "prefill_tp": rng.choice([0, 1, 2, 4, 8], n),
            "prefill_dp": rng.choice([0, 1, 2], n), "prefill_ep": rng.choice([0, 1, 2, 8], n),
            "prefill_pp": rng.choice([0, 1, 2], n), "prefill_workers": rng.choice([1, 2, 3], n),
            "decode_device": ch(["", "", "h200_sxm", "gb200"]), "decode_tp": rng.choice([0, 1, 2, 4, 8], n),
            "decode_dp": rng.choice([0, 1, 4], n), "decode_ep": rng.choice([0, 1, 4, 8], n),
            "decode_pp": rng.choice([0, 1], n), "decode_workers": rng.choice([1, 2, 4], n),
            "decode_batch_size": rng.choice([0, 0, 32, 256], n),
            "attn_device": ch(["", "h20", "h200_sxm"]), "attn_tp": rng.choice([1, 2, 4, 8], n),
            "attn_gpus": rng.choice([0, 4, 8, 16], n), "ffn_device": ch(["", "b200_sxm", "h100_sxm"]),
            "ffn_gpus": rng.choice([0, 4, 8, 16], n),
            "ttft_slo_ms": rng.choice([np.inf, 500.0, 2000.0], n), "tpot_slo_ms": rng.choice([np.inf, 30.0, 80.0], n),
        })
        # afd rows: a prefill pool on all or none of the rows of one call (evaluate's rule)
        df.loc[df["mode"] == "afd", "prefill_device"] = ""
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def engine_sample() -> pd.DataFrame:
    import dse
    cols = sample_columns()
    out = dse.evaluate(strict=False, **{k: cols[k].to_numpy() for k in cols})
    out = out[[m for m in METRICS if m in out.columns]].copy()   # the inputs are regenerated from the seed
    for k in out.columns:
        if isinstance(out[k].dtype, pd.CategoricalDtype):
            out[k] = out[k].astype(str)
    return out


def pareto_sets() -> dict[str, pd.DataFrame]:
    import dse
    sets = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in SCENARIOS:
            res = dse.sweep(ROOT / "search_spaces" / f"{name}.yaml", out=Path(tmp) / name)
            sets[name] = pd.read_csv(Path(res.run_dir) / "pareto.csv")
        sets["quickstart_point"] = point_front(Path(tmp))
    return sets


def point_front(tmp: Path) -> pd.DataFrame:
    """The quickstart at slo_confidence 0: the point-prediction feasibility, in the columns
    the front had before intervals existed (tests/test_golden.py compares them)."""
    import yaml

    import dse
    data = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    data["slo_confidence"] = 0
    path = tmp / "quickstart_point.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    got = pd.read_csv(Path(dse.sweep(path, out=tmp / "point").run_dir) / "pareto.csv")
    return got[pd.read_csv(HERE / "pareto_quickstart_point.csv", nrows=0).columns]


def main() -> None:
    eng = engine_sample()
    eng.to_parquet(HERE / "engine_sample.parquet", compression="zstd", index=False)
    print(f"engine_sample.parquet: {len(eng):,} rows, {int(eng['feasible'].sum()):,} feasible, "
          f"{len(eng.columns)} metrics")
    for name, df in pareto_sets().items():
        df.to_csv(HERE / f"pareto_{name}.csv", index=False, float_format="%.17g")
        print(f"pareto_{name}.csv: {len(df)} rows")


if __name__ == "__main__":
    sys.exit(main())
