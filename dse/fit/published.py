"""Hold the engine against the published TensorRT-LLM throughput tables (a calibration-side check).

../shared/reference/published_measurements.csv carries NVIDIA's perf-overview tables:
output tokens/s of one deployment at its highest load (infinite request rate, synthetic
fixed-length requests). Each row maps to an agg configuration by fixed rules -- the
table's TP (MoE recipe: attention data parallel with expert parallel across the GPUs),
its precision for the weights and fp8 KV cache (FP16 rows: bf16), the trtllm backend --
and is predicted at the highest throughput over concurrencies 1 ... 4096 that the engine
finds feasible. No row is fitted to; the serving constants come from the deployment
file, the kernels from the kernel tables.

    python -m dse.fit.published [--csv ../shared/reference/published_measurements.csv]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from dse.deploy.evaluate import evaluate

__all__ = ["DEFAULT_CSV", "DEVICES", "MODELS", "read_rows", "predict", "summary", "main"]

DEFAULT_CSV = Path(__file__).resolve().parents[3] / "shared" / "reference" / "published_measurements.csv"
# the tables' hardware and model names -> dse ids (Llama-3.3-70B shares Llama-3.1-70B's architecture)
DEVICES = {"H100-SXM-80GB": "h100_sxm", "H200-SXM-141GB": "h200_sxm", "A100-SXM4-80GB": "a100_sxm",
           "L40S": "l40s", "B200-180GB": "b200_sxm", "GB200-192GB": "gb200"}
MODELS = {"Llama-3.1-8B": "meta-llama/Meta-Llama-3.1-8B", "Llama-3.1-70B": "meta-llama/Meta-Llama-3.1-70B",
          "Llama-3.3-70B": "meta-llama/Meta-Llama-3.1-70B", "Llama-3.1-405B": "meta-llama/Meta-Llama-3.1-405B",
          "Mixtral-8x7B": "mistralai/Mixtral-8x7B-v0.1", "Qwen3-235B-A22B": "Qwen/Qwen3-235B-A22B"}
PRECISION = {"FP8": "fp8", "FP16": "bf16", "FP4": "fp4"}
CONCURRENCY = tuple(2 ** i for i in range(13))


def read_rows(path: str | Path = DEFAULT_CSV) -> pd.DataFrame:
    """The perf-overview throughput rows the engine can model."""
    df = pd.read_csv(path)
    df = df[df.source.str.contains("perf-overview") & (df.metric == "tokens_per_s_total")]
    return df[df.model.isin(MODELS) & df.hardware.isin(DEVICES)].reset_index(drop=True)


def _config(r) -> dict:
    n = int(r.num_accelerators)
    moe = "--ep" in str(r.parallelism)          # the doc's MoE recipe: --ep + enable_attention_dp
    return dict(model=MODELS[r.model], device=DEVICES[r.hardware], tp=1 if moe else n, dp=n if moe else 1,
                ep=n if moe else 1, weight_dtype=PRECISION[r.precision],
                kv_dtype="bf16" if r.precision == "FP16" else "fp8", isl=int(r.isl), osl=int(r.osl),
                backend="trtllm")


def predict(rows: pd.DataFrame) -> pd.DataFrame:
    """rows + pred (tokens/s at the best feasible concurrency) and ratio pred / measured."""
    out = []
    for _, r in rows.iterrows():
        res = evaluate(strict=False, batch_size=list(CONCURRENCY), **_config(r))
        ok = res[res.feasible]
        out.append(float(ok.tokens_per_s.max()) if len(ok) else np.nan)
    res = rows.assign(pred=out)
    return res.assign(ratio=res.pred / res.value)


def summary(res: pd.DataFrame) -> dict:
    ape = (res.ratio - 1.0).abs() * 100
    moe = res.model.isin(("Mixtral-8x7B", "Qwen3-235B-A22B"))
    return {"n": int(res.pred.notna().sum()), "median_ape": float(ape.median()), "max_ape": float(ape.max()),
            "moe_median_ape": float(ape[moe].median()), "dense_median_ape": float(ape[~moe].median())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dse.fit.published", description=__doc__.splitlines()[0])
    ap.add_argument("--csv", default=str(DEFAULT_CSV))
    res = predict(read_rows(ap.parse_args(argv).csv))
    cols = ["model", "hardware", "num_accelerators", "precision", "isl", "osl", "value", "pred", "ratio"]
    print(res[cols].round(3).to_string(index=False))
    s = summary(res)
    print(f"{s['n']} rows: median APE {s['median_ape']:.1f} % (dense {s['dense_median_ape']:.1f}, MoE "
          f"{s['moe_median_ape']:.1f}), max {s['max_ape']:.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
