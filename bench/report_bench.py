"""Report size and build time for a huge sweep: `python bench/report_bench.py [--rows 10000000]`.

Builds a results directory the way the search writes it (configs.parquet, pareto.csv,
run.json): a real `dse.evaluate` grid of 11,520 configurations (six devices; agg over
tp/pp/batch/dtypes, disagg over device pairs, afd), repeated until `--rows` rows (the
copies are weakly dominated by the originals, so the Pareto set is that of the grid),
then times `write_report` and checks the issue's budget: under 25 MB for 10 million
points. The suite (tests/test_report_html.py) runs the same check on 1 million rows.
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

MODEL = "meta-llama/Llama-3.1-70B"
OBJECTIVES = [{"name": "tpot_ms", "direction": "min"}, {"name": "usd_per_mtok", "direction": "min"},
              {"name": "joules_per_token", "direction": "min"}]


def grid() -> pd.DataFrame:
    import dse

    devs = ["h100_sxm", "h200_sxm", "b200_sxm", "b300_sxm", "mi300x", "mi355x"]
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    frames = []
    g = list(itertools.product(devs, [1, 2, 4, 8], [1, 2], batches, ["bf16", "fp8", "fp4"], ["bf16", "fp8"]))
    d, tp, pp, bs, wd, kd = map(list, zip(*g))
    frames.append(dse.evaluate(model=MODEL, device=d, tp=tp, pp=pp, batch_size=bs, weight_dtype=wd, kv_dtype=kd,
                               strict=False))
    g = list(itertools.product(devs, devs, [2, 8], [4, 8], [1, 2], [1, 2], batches))
    pdv, ddv, ptp, dtp, pw, dw, bs = map(list, zip(*g))
    frames.append(dse.evaluate(model=MODEL, mode="disagg", device=ddv, prefill_device=pdv, decode_device=ddv,
                               prefill_tp=ptp, decode_tp=dtp, tp=dtp, prefill_workers=pw, decode_workers=dw,
                               batch_size=bs, weight_dtype="fp8", strict=False))
    g = list(itertools.product(devs, devs, [4, 8], [4, 8], [1, 4], batches))
    ad, fdv, ag, fg, atp, bs = map(list, zip(*g))
    frames.append(dse.evaluate(model=MODEL, mode="afd", device=ad, attn_device=ad, ffn_device=fdv, attn_gpus=ag,
                               ffn_gpus=fg, attn_tp=atp, batch_size=bs, weight_dtype="fp8", strict=False))
    return pd.concat(frames, ignore_index=True)


def write_dir(path: Path, df: pd.DataFrame, rows: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dse.report.figdata import nondominated_mask

    names = [o["name"] for o in OBJECTIVES]
    feas = df["feasible"].to_numpy(bool)
    is_pareto = np.zeros(len(df), bool)
    is_pareto[np.nonzero(feas)[0][nondominated_mask(df.loc[feas, names].to_numpy(float), ["min"] * 3)]] = True
    df = df.assign(is_pareto=is_pareto)
    path.mkdir(parents=True, exist_ok=True)
    df[is_pareto].drop(columns="is_pareto").to_csv(path / "pareto.csv", index=False)
    first = pa.Table.from_pandas(df, preserve_index=False)
    rest = pa.Table.from_pandas(df.assign(is_pareto=False), preserve_index=False)
    written = 0
    with pq.ParquetWriter(path / "configs.parquet", first.schema) as w:
        while written < rows:
            t = first if written == 0 else rest
            t = t.slice(0, min(len(t), rows - written))
            w.write_table(t)
            written += len(t)
    run = {"scenario": {"name": f"bench-{written}", "model": MODEL}, "strategy": "grid", "seed": 0,
           "objectives": OBJECTIVES, "n_evaluated": written, "n_feasible": None}
    (path / "run.json").write_text(json.dumps(run))
    return written


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--keep", help="write the results directory here instead of a temporary one")
    a = ap.parse_args()
    from dse.report.html import write_report

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(a.keep) if a.keep else Path(tmp) / "run"
        t = time.perf_counter()
        n = write_dir(d, grid(), a.rows)
        t_write = time.perf_counter() - t
        t = time.perf_counter()
        path = write_report(d)
        t_report = time.perf_counter() - t
        size = path.stat().st_size / 1e6
        print(f"{n:,} configurations ({(d / 'configs.parquet').stat().st_size / 1e6:.0f} MB parquet, "
              f"written in {t_write:.1f} s) -> report.html {size:.2f} MB in {t_report:.1f} s")
        budget = 25.0 if n > 1_000_000 else 10.0
        print(f"budget {budget:.0f} MB: {'ok' if size < budget else 'OVER'}")


if __name__ == "__main__":
    main()
