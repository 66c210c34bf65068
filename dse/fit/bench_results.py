"""Benchmark results back into measured-deployment rows, for `dse validate --measurements`.

Reads what the benchmarks written by `dse deploy` save:
  * `vllm bench serve --save-result` JSON (one object; `--append-result` writes one per
    line) and `python -m sglang.bench_serving --output-file` JSON lines: mean_ttft_ms,
    mean_tpot_ms (p99_*, median_*), request_throughput, output_throughput,
    max_concurrency, total_input_tokens / total_output_tokens over completed;
  * AIPerf (and GenAI-Perf) profile_export_aiperf.json -- per metric {unit, avg, p50,
    p99, ...}: time_to_first_token, inter_token_latency (= (latency - TTFT) / (OSL - 1),
    the TPOT), output_token_throughput, request_throughput, input/output_sequence_length,
    and input_config (loadgen.concurrency) -- and its profile_export_aiperf.csv.
A benchmark file does not say how the server was deployed: that comes from the
deployment.json `dse deploy` writes beside bench.sh (found in the result's directory or
a parent), or from the `deployment` argument.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from dse.errors import DSEError

__all__ = ["MEASURED_COLUMNS", "read_bench_results", "read_result_file", "find_deployment", "main"]

# the column set of the measured-deployment files (../shared/calibration/silicon_*.csv.gz)
MEASURED_COLUMNS = (
    "id", "silicon_data_source", "backend", "backend_version", "model_path", "system", "precision", "mode", "isl",
    "osl", "gemm_quant_mode", "moe_quant_mode", "batch_size", "tp_size", "pp_size", "attention_dp_size",
    "moe_tp_size", "moe_ep_size", "prefill_batch_size", "prefill_num_workers", "prefill_tp_size", "prefill_pp_size",
    "prefill_attention_dp_size", "prefill_moe_tp_size", "prefill_moe_ep_size", "decode_batch_size",
    "decode_num_workers", "decode_tp_size", "decode_pp_size", "decode_attention_dp_size", "decode_moe_tp_size",
    "decode_moe_ep_size", "silicon_ttft_ms", "silicon_tpot_ms")
EXTRA_COLUMNS = ("concurrency", "kv_dtype", "dse_config_id", "tool", "median_ttft_ms", "p99_ttft_ms",
                 "median_tpot_ms", "p99_tpot_ms", "request_throughput", "output_tokens_per_s", "completed",
                 "source_file", "predicted_ttft_ms", "predicted_tpot_ms", "predicted_tokens_per_s")
# files a results directory holds that are not run summaries: ours, AIPerf's inputs and
# per-request records (the run summary is profile_export_aiperf.json beside them)
_NOT_RESULTS = ("deployment.json", "inputs.json", "profile_export.jsonl")
_AIPERF = {"time_to_first_token": "ttft", "inter_token_latency": "tpot"}
_AIPERF_CSV = {"Time to First Token (ms)": "time_to_first_token", "Inter Token Latency (ms)": "inter_token_latency",
               "Output Token Throughput (tokens/sec)": "output_token_throughput",
               "Request Throughput (requests/sec)": "request_throughput",
               "Input Sequence Length (tokens)": "input_sequence_length",
               "Output Sequence Length (tokens)": "output_sequence_length",
               "Request Count": "request_count"}


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def _serving_record(d: Mapping[str, Any], path: Path, i: int) -> dict[str, Any]:
    """One vllm / sglang result object as measurements."""
    if not _num(d.get("mean_ttft_ms")) >= 0 or not _num(d.get("mean_tpot_ms")) >= 0:
        raise DSEError(f"bench: {path}: record {i}: no mean_ttft_ms / mean_tpot_ms (run the benchmark with its "
                       "default --percentile-metrics, or keep ttft,tpot in them)")
    done = _num(d.get("completed"))
    lens = {k: _num(d.get(f"total_{k}_tokens")) / done if done > 0 else math.nan for k in ("input", "output")}
    isl = _num(d.get("random_input_len", d.get("isl")))
    osl = _num(d.get("random_output_len", d.get("osl")))
    return {"tool": "sglang.bench_serving" if "random_input_len" in d else "vllm bench serve",
            "silicon_ttft_ms": _num(d["mean_ttft_ms"]), "silicon_tpot_ms": _num(d["mean_tpot_ms"]),
            "median_ttft_ms": _num(d.get("median_ttft_ms")), "p99_ttft_ms": _num(d.get("p99_ttft_ms")),
            "median_tpot_ms": _num(d.get("median_tpot_ms")), "p99_tpot_ms": _num(d.get("p99_tpot_ms")),
            "request_throughput": _num(d.get("request_throughput")),
            "output_tokens_per_s": _num(d.get("output_throughput")), "completed": done,
            "concurrency": _num(d.get("max_concurrency")),
            "isl": isl if isl > 0 else lens["input"], "osl": osl if osl > 0 else lens["output"],
            "config_id": d.get("dse_config_id")}


def _aiperf_record(metrics: Mapping[str, Any], concurrency: float, isl: float, osl: float) -> dict[str, Any]:
    def stat(tag: str, key: str = "avg") -> float:
        m = metrics.get(tag)
        return _num(m.get(key)) if isinstance(m, Mapping) else math.nan

    rec = {"tool": "aiperf", "completed": stat("request_count"), "concurrency": concurrency,
           "request_throughput": stat("request_throughput"), "output_tokens_per_s": stat("output_token_throughput"),
           "isl": isl if isl > 0 else stat("input_sequence_length"),
           "osl": osl if osl > 0 else stat("output_sequence_length")}
    for tag, short in _AIPERF.items():
        rec[f"silicon_{short}_ms"] = stat(tag)
        rec[f"median_{short}_ms"], rec[f"p99_{short}_ms"] = stat(tag, "p50"), stat(tag, "p99")
    return rec


def _aiperf_json(d: Mapping[str, Any], path: Path) -> dict[str, Any]:
    cfg = d.get("input_config") or {}
    prompt = (cfg.get("input") or {}).get("prompt") or {}
    rec = _aiperf_record(d, _num((cfg.get("loadgen") or {}).get("concurrency")),
                         _num((prompt.get("input_tokens") or {}).get("mean")),
                         _num((prompt.get("output_tokens") or {}).get("mean")))
    if not rec["silicon_ttft_ms"] >= 0 or not rec["silicon_tpot_ms"] >= 0:
        raise DSEError(f"bench: {path}: no time_to_first_token / inter_token_latency (profile with --streaming)")
    return rec


def _aiperf_csv(path: Path) -> dict[str, Any]:
    """The two-section CSV: per-request metrics (Metric, avg, min, max, p1 ... p99, std),
    a blank line, then run metrics (Metric, Value)."""
    metrics: dict[str, dict[str, float]] = {}
    header: list[str] = []
    with path.open(newline="") as fh:
        for row in csv.reader(fh):
            if not row:
                continue
            if row[0] == "Metric":
                header = row
                continue
            tag = _AIPERF_CSV.get(row[0])
            if tag and header:
                keys = ["avg"] if header[1:] == ["Value"] else header[1:]
                metrics[tag] = {k: _num(v) for k, v in zip(keys, row[1:])}
    if "time_to_first_token" not in metrics or "inter_token_latency" not in metrics:
        raise DSEError(f"bench: {path}: not an AIPerf profile_export_aiperf.csv with Time to First Token (ms) and "
                       "Inter Token Latency (ms) rows")
    return _aiperf_record(metrics, math.nan, math.nan, math.nan)


def read_result_file(path: str | Path) -> list[dict[str, Any]]:
    """The measurements in one benchmark result file (several for an appended JSON-lines file)."""
    path = Path(path)
    if not path.is_file():
        raise DSEError(f"bench: {path}: no such file")
    if path.suffix == ".csv":
        return [_aiperf_csv(path)]
    text = path.read_text()
    try:
        objs = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            objs = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DSEError(f"bench: {path}: not JSON or JSON lines ({exc.msg}, line {exc.lineno})") from None
    out = []
    for i, d in enumerate(objs):
        if not isinstance(d, dict):
            raise DSEError(f"bench: {path}: record {i}: expected an object, got {type(d).__name__}")
        out.append(_aiperf_json(d, path) if "time_to_first_token" in d or "input_config" in d
                   else _serving_record(d, path, i))
    if not out:
        raise DSEError(f"bench: {path}: no results in the file")
    return out


def find_deployment(path: str | Path) -> dict[str, Any]:
    """deployment.json in the result file's directory or the nearest parent holding one."""
    start = Path(path).resolve()
    for d in [start if start.is_dir() else start.parent, *start.parents]:
        f = d / "deployment.json"
        if f.is_file():
            try:
                return json.loads(f.read_text())
            except json.JSONDecodeError as exc:
                raise DSEError(f"bench: {f}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    raise DSEError(f"bench: {path}: no deployment.json beside it or above it; pass the deployment "
                   "(the deployment.json `dse deploy` wrote beside bench.sh)")


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in (".json", ".jsonl") and f.name not in _NOT_RESULTS
                           and not f.name.endswith(".pytorch.json"))
            if not found:
                raise DSEError(f"bench: {p}: no benchmark result files (*.json, *.jsonl) in it")
            out += found
        else:
            out.append(p)
    return out


def _row(meas: dict[str, Any], dep: Mapping[str, Any], path: Path, n: int) -> dict[str, Any]:
    row: dict[str, Any] = {c: dep.get(c) for c in MEASURED_COLUMNS if c in dep}
    conc = meas["concurrency"] if meas["concurrency"] > 0 else _num(dep.get("concurrency"))
    if not conc > 0:
        raise DSEError(f"bench: {path}: the concurrency is neither in the file nor in the deployment")
    planned = _num(dep.get("concurrency"))
    if planned > 0 and conc != planned:          # the benchmark ran at another concurrency: rescale
        for col in ("batch_size", "decode_batch_size"):
            if col in row and row[col] is not None:
                row[col] = float(row[col]) * conc / planned
    for k in ("isl", "osl"):
        v = meas[k] if meas[k] > 0 else _num(dep.get(k))
        row[k] = int(round(v))
    cid = meas.pop("config_id", None) or dep.get("dse_config_id")
    pred = dep.get("predicted") or {}
    row.update({k: v for k, v in meas.items() if k not in ("isl", "osl")}, concurrency=conc,
               kv_dtype=dep.get("kv_dtype"), dse_config_id=cid, source_file=str(path),
               predicted_ttft_ms=_num(pred.get("ttft_ms")), predicted_tpot_ms=_num(pred.get("tpot_ms")),
               predicted_tokens_per_s=_num(pred.get("tokens_per_s")))
    row["id"] = f"dse{cid}_{dep.get('launch_backend', dep.get('backend'))}_{row['isl']}x{row['osl']}_c{conc:g}_{n}"
    row["silicon_data_source"] = f"{meas['tool']}; {path.name}; concurrency={conc:g}"
    return row


def read_bench_results(paths: str | Path | Iterable[str | Path],
                       deployment: Mapping[str, Any] | str | Path | None = None) -> pd.DataFrame:
    """Measured-deployment rows (MEASURED_COLUMNS, then extras) from benchmark result files
    or directories of them. `deployment` is the deployment.json mapping or its path; by
    default each file's own (found beside or above it)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if isinstance(deployment, (str, Path)):
        p = Path(deployment)
        if not p.is_file():
            raise DSEError(f"bench: {p}: no such deployment file")
        deployment = find_deployment(p)
    rows = []
    for f in _files(paths):
        dep = deployment if deployment is not None else find_deployment(f)
        for meas in read_result_file(f):
            rows.append(_row(meas, dep, f, len(rows)))
    df = pd.DataFrame(rows)
    cols = [c for c in MEASURED_COLUMNS + EXTRA_COLUMNS if c in df.columns]
    return df[cols + [c for c in df.columns if c not in cols]]


def main(argv: list[str] | None = None) -> int:
    """`python -m dse.fit.bench_results RESULTS... [--deployment FILE] --out measured.csv`."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m dse.fit.bench_results", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="benchmark result files or directories")
    ap.add_argument("--deployment", help="deployment.json (default: found beside or above each result)")
    ap.add_argument("--out", required=True, help="CSV to write (the input of dse validate --measurements)")
    a = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from dse.io import write_text

        df = read_bench_results(a.paths, a.deployment)
        write_text(a.out, df.to_csv(index=False))
    except DSEError as exc:
        print(f"dse: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {a.out} ({len(df)} measured deployment{'s' if len(df) != 1 else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
