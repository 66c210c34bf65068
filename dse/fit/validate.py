"""Hold the model against measured deployments (TTFT and TPOT).

Reads measured rows in the column set of AIConfigurator's silicon tables (agg rows:
batch_size per attention-DP rank; disagg rows: prefill_*/decode_* columns), maps each to
an `evaluate` configuration by fixed rules -- never per row or per model -- and reports
absolute percentage errors per system, mode and backend. A row that cannot be modelled
(unknown model or system, unsupported architecture, unknown concurrency) is reported
with its reason, never a crash.

Mapping rules (checked against the file; see `row_config`):
  * layout: attention TP = tp_size, attention DP = attention_dp_size, EP = moe_ep_size,
    PP = pp_size; MoE tensor parallel follows as tp * dp / ep. Some rows write a
    tp x ep deployment as products (tp_size or attention_dp_size = N^2 with
    moe_tp_size = moe_ep_size = N): they are read as N GPUs, unless the weights would
    then not fit (a measured deployment ran, so it fit).
  * concurrency: agg batch_size is per attention-DP rank (concurrency = batch_size x
    attention_dp_size); disagg concurrency = decode_batch_size x decode_attention_dp_size
    x decode_num_workers. Where those columns are blank, a `concurrency` column or the
    `silicon_concurrency=` entry of silicon_data_source is used; blank worker counts
    are taken as one prefill and one decode worker (the row is marked `assumed`).
  * formats: weights from moe_quant_mode / gemm_quant_mode / precision; the KV cache in
    fp8 when the weights are fp8 or fp4.
  * backend: the row's serving framework selects its runtime constants; the benchmark is
    a closed loop of `bench_rounds` requests per user (hardware/serving_runtime.yaml).
  * speculative decoding: off (the file does not record it). `repeats` counts rows whose
    identical recorded inputs measured TPOTs far apart; `speculative_check` tests whether
    those groups look like drafting switched on in some runs. Neither changes a prediction.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from dse.catalog import dtypes
from dse.catalog.devices import device_ids
from dse.catalog.models import get_model
from dse.catalog.runtime import bench_rounds_of, serving_runtime
from dse.deploy.evaluate import evaluate
from dse.deploy.explain import check_config
from dse.deploy.roles import fewest_redundant
from dse.errors import DSEError
from dse.fit.coverage import annotate_validation
from dse.schema import COLUMNS

__all__ = ["REQUIRED", "BACKENDS", "read_measurements", "row_config", "map_rows", "predict", "validate_measurements",
           "repeats", "speculative_check", "summarize"]

_UNMODELLED = ("structure", "numeric")      # infeasible codes that mean "cannot be modelled"
REQUIRED = ("id", "model_path", "system", "mode", "isl", "osl", "batch_size", "tp_size",
            "silicon_ttft_ms", "silicon_tpot_ms")
BACKENDS = ("trtllm", "vllm", "sglang")
# system names measurement files use for a device under another id: AIConfigurator's earlier
# releases named these systems so (ai-dynamo/aiconfigurator src/aiconfigurator/systems/:
# data/gb200_sxm/, h20_sxm.yaml); its 0.12 names (gb200, gb300, b300_sxm, l4, ...) are dse's ids
SYSTEM_NAMES = {"gb200_sxm": "gb200", "h20_sxm": "h20"}


def _num(v) -> float:
    """A finite measured figure, else NaN (text, true/false and inf are no measurement)."""
    if isinstance(v, (bool, np.bool_)):
        return float("nan")
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return f if np.isfinite(f) else float("nan")


def _blank(v) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (np.ndim(v) == 0 and bool(pd.isna(v)))


def _count(row: pd.Series, col: str, default: int | None = None, *, zero_blank: bool = False) -> int:
    """A whole number >= 1 from the row; blank gives `default` (None: the column is needed).
    Anything else (text, 0, negative, fractional, inf) makes the row unsupported: a
    nonsense figure is never modelled as 1. zero_blank: 0 means "not used" (moe_tp_size /
    moe_ep_size of dense models), like a blank."""
    v = row.get(col)
    f = float("nan") if _blank(v) else _float(v)
    if _blank(v) or (zero_blank and f == 0):
        if default is None:
            raise DSEError(f"{col} is blank")
        return default
    if not (np.isfinite(f) and f >= 1 and f == int(f)):
        raise DSEError(f"{col} {v!r} is not a whole number >= 1")
    return int(f)


def _positive(row: pd.Series, col: str) -> float | None:
    """A finite number > 0 from the row, None when blank; anything else: unsupported row."""
    v = row.get(col)
    if _blank(v):
        return None
    f = _float(v)
    if not (np.isfinite(f) and f > 0):
        raise DSEError(f"{col} {v!r} is not a number > 0")
    return f


def _float(v) -> float:
    if isinstance(v, (bool, np.bool_)):
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _weight_dtype(row: pd.Series, moe: bool) -> str:
    for col in (("moe_quant_mode", "gemm_quant_mode") if moe else ("gemm_quant_mode",)) + ("precision",):
        val = row.get(col)
        if isinstance(val, str) and val:
            try:
                return dtypes.normalize(val)
            except DSEError:
                continue
    return "bf16"


def _layout(row: pd.Series, prefix: str, moe: bool, *, literal: bool = False) -> dict:
    """Attention TP and DP, and expert parallelism, of one worker."""
    tp = _count(row, f"{prefix}tp_size")
    dp = _count(row, f"{prefix}attention_dp_size", 1)
    mtp = _count(row, f"{prefix}moe_tp_size", 1, zero_blank=True)
    mep = _count(row, f"{prefix}moe_ep_size", 1, zero_blank=True)
    world = tp * dp
    if moe and not literal and mtp == mep > 1 and mtp * mep == world and world in (tp, dp):
        # product encoding of an N-GPU tp x ep deployment: N = moe_ep_size GPUs
        if tp == world:
            tp = mep
        else:
            dp = mep
    return {"tp": tp, "dp": dp, "ep": mep if moe else 1, "pp": _count(row, f"{prefix}pp_size", 1)}


def _concurrency(row: pd.Series) -> tuple[float, str]:
    """Users of the closed-loop benchmark and where the figure came from."""
    if row["mode"] == "disagg":
        bs = _positive(row, "decode_batch_size")
        if bs is not None:
            return bs * _count(row, "decode_attention_dp_size", 1) * _count(row, "decode_num_workers", 1), ""
    else:
        bs = _positive(row, "batch_size")
        if bs is not None:
            return bs * _count(row, "attention_dp_size", 1), ""
    c = _positive(row, "concurrency")
    if c is not None:
        return c, "concurrency"
    m = re.search(r"silicon_concurrency=(\d+)", str(row.get("silicon_data_source", "")))
    if m and int(m.group(1)) >= 1:
        return float(m.group(1)), "concurrency"
    raise DSEError("concurrency unknown (no batch_size, concurrency or silicon_concurrency)")


def row_config(row: pd.Series, *, literal: bool = False) -> tuple[dict, list[str]]:
    """The evaluate() configuration of one measured row and what had to be assumed
    (raises DSEError when the row cannot be modelled)."""
    system = SYSTEM_NAMES.get(str(row["system"]), str(row["system"]))
    if system not in device_ids():
        raise DSEError(f"unknown system {row['system']!r}")
    model = get_model(str(row["model_path"]))
    wd = _weight_dtype(row, model.is_moe)
    conc, source = _concurrency(row)
    assumed = [source] if source else []
    backend = str(row.get("backend", "") or "")
    cfg = {"model": str(row["model_path"]), "device": system, "weight_dtype": wd,
           "kv_dtype": "fp8" if wd in ("fp8", "fp4") else "bf16", "backend": backend if backend in BACKENDS else "",
           "isl": _count(row, "isl"), "osl": _count(row, "osl")}
    if row["mode"] == "disagg":
        pre = _layout(row, "prefill_", model.is_moe, literal=literal)
        dec = _layout(row, "decode_", model.is_moe, literal=literal)
        if _blank(row.get("decode_num_workers")) or _blank(row.get("prefill_num_workers")):
            assumed.append("workers")
        dw = _count(row, "decode_num_workers", 1)
        batch = max(int(round(conc / dw)), 1)
        cfg.update(mode="disagg", **{f"prefill_{k}": v for k, v in pre.items()},
                   **{f"decode_{k}": v for k, v in dec.items()},
                   prefill_workers=_count(row, "prefill_num_workers", 1), decode_workers=dw,
                   decode_batch_size=batch, batch_size=batch, **dec)
    elif row["mode"] == "agg":
        cfg.update(mode="agg", batch_size=max(int(round(conc)), 1), **_layout(row, "", model.is_moe, literal=literal))
    else:
        raise DSEError(f"unknown mode {row['mode']!r}")
    if model.is_moe:
        _eplb(cfg, max(g.ffn.num_experts for g in model.groups), assumed)
    return cfg, assumed


def _eplb(cfg: dict, experts: int, assumed: list[str]) -> None:
    """An expert-parallel size that does not divide the routed experts runs with redundant
    experts (EPLB: DeepSeek, SGLang and TensorRT-LLM deploy wide EP so); the files do not
    record how many, so the fewest that make each pool divide (roles.fewest_redundant, as a
    scenario's `eplb: true` derives them: 256 experts over EP 48 or 72 take 32 more, 288
    slots) are assumed and said in `assumed`."""
    extra = {k: int(v[0]) for k, v in fewest_redundant(cfg, experts).items() if v[0]}
    if extra:
        cfg.update(extra)
        assumed.append("redundant_experts")


def _ape(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.abs(pred - meas) / meas * 100.0


def _summary(d: pd.DataFrame) -> dict:
    n = len(d)
    return {"n": int(n), "ttft_mape": float(d.ttft_ape.mean()) if n else None,
            "ttft_median_ape": float(d.ttft_ape.median()) if n else None,
            "tpot_mape": float(d.tpot_ape.mean()) if n else None,
            "tpot_median_ape": float(d.tpot_ape.median()) if n else None}


def read_measurements(path: str | Path) -> pd.DataFrame:
    """The measured deployments of a CSV (the columns of silicon_h100_b200.csv.gz), or of
    benchmark result files (`vllm bench serve --save-result` JSON, sglang.bench_serving
    JSON lines, AIPerf / GenAI-Perf profile exports; a directory of them) beside the
    deployment.json `dse deploy` wrote."""
    path = Path(path)
    if path.is_dir() or path.suffix in (".json", ".jsonl"):
        from dse.fit.bench_results import read_bench_results
        return read_bench_results(path)
    if not path.is_file():
        raise DSEError(f"validate: {path}: no such file")
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DSEError(f"validate: {path}: empty file (no header, no rows); "
                       f"required columns: {', '.join(REQUIRED)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError, zlib.error) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise DSEError(f"validate: {path}: not a readable CSV ({first})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DSEError(f"validate: {path}: missing column {missing[0]!r}; required: {', '.join(REQUIRED)}")
    if df.empty:
        raise DSEError(f"validate: {path}: no rows (a header only)")
    return df


def map_rows(df: pd.DataFrame, *, bench_rounds: float | None = None) -> tuple[list[dict], list[tuple[int, dict]]]:
    """Per-row records and the (row, configuration) pairs that can be modelled."""

    table = serving_runtime()
    rows, configs = [], []
    for i, (_, r) in enumerate(df.iterrows()):
        rec = {"id": str(r["id"]), "system": str(r["system"]), "mode": str(r["mode"]),
               "backend": str(r.get("backend", "")), "model": str(r["model_path"]),
               "ttft_ms_meas": _num(r["silicon_ttft_ms"]), "tpot_ms_meas": _num(r["silicon_tpot_ms"]),
               "ttft_ms_pred": None, "tpot_ms_pred": None, "supported": False, "reason": "", "assumed": ""}
        try:
            if not (rec["ttft_ms_meas"] > 0 and rec["tpot_ms_meas"] > 0):
                raise DSEError("no measured TTFT/TPOT")
            cfg, assumed = row_config(r)
            check_config(**cfg)          # structure only: layout divides the model, ids known
            cfg["bench_rounds"] = bench_rounds if bench_rounds is not None else bench_rounds_of(table, cfg.get("backend"))
            rec["assumed"] = ",".join(assumed)
            configs.append((i, cfg, r))
        except DSEError as exc:
            rec["reason"] = str(exc).split("evaluate: ", 1)[-1]
        rows.append(rec)
    return rows, _screen(rows, configs)


def _screen(rows: list[dict], configs: list) -> list:
    """The configurations the engine can model: a layout it finds impossible (pp above the
    layers, ...) or a figure it cannot compute makes the row unsupported, with the reason,
    so it never enters the error figures."""
    if not configs:
        return configs
    cfgs = [c for _, c, _ in configs]
    cols = {k: [c.get(k, COLUMNS[k]) for c in cfgs] for k in sorted({k for c in cfgs for k in c})}
    pred = evaluate(strict=False, **cols)
    bad = pred.infeasible_code.isin(_UNMODELLED).to_numpy()
    for j in np.flatnonzero(bad):
        rows[configs[j][0]]["reason"] = str(pred.infeasible_reason.iloc[j])
    return [c for c, b in zip(configs, bad) if not b]


def predict(configs: list, *, serving: dict | None = None) -> "pd.DataFrame":
    """Evaluate the mapped configurations in one vectorized call; product-encoded layouts
    whose weights would not fit fall back to the literal reading of the row."""

    cfgs = [c for _, c, _ in configs]
    keys = sorted({k for c in cfgs for k in c})
    cols = {k: [c.get(k, COLUMNS[k]) for c in cfgs] for k in keys}
    pred = evaluate(strict=False, serving_runtime=serving, **cols)
    bad = (pred.infeasible_code == "memory").to_numpy()
    if bad.any():
        redo = []
        for j in np.nonzero(bad)[0]:
            i, cfg, r = configs[j]
            lit, _ = row_config(r, literal=True)
            if lit != {k: v for k, v in cfg.items() if k != "bench_rounds"}:
                redo.append((j, {**lit, "bench_rounds": cfg["bench_rounds"]}))
        if redo:
            keys2 = sorted({k for _, c in redo for k in c})
            cols2 = {k: [c.get(k, COLUMNS[k]) for _, c in redo] for k in keys2}
            p2 = evaluate(strict=False, serving_runtime=serving, **cols2)
            ok = (p2.infeasible_code != "memory").to_numpy()
            for (j, _), good, (_, row) in zip(redo, ok, p2.iterrows()):
                if good:
                    pred.loc[j, ["ttft_ms", "tpot_ms", "infeasible_reason"]] = row[["ttft_ms", "tpot_ms",
                                                                                   "infeasible_reason"]].to_numpy()
    return pred


def validate_measurements(path: str | Path, *, bench_rounds: float | None = None) -> dict:
    """Predicted vs measured TTFT/TPOT for every row of a measurement CSV."""
    df = read_measurements(path)
    rows, configs = map_rows(df, bench_rounds=bench_rounds)
    if configs:
        pred = predict(configs)
        for (i, cfg, _), ttft, tpot, code, bn in zip(configs, pred.ttft_ms, pred.tpot_ms, pred.infeasible_code,
                                                     pred.bottleneck.astype(str)):
            if code in _UNMODELLED or not (np.isfinite(ttft) and np.isfinite(tpot)):
                rows[i]["reason"] = "no finite prediction"
                continue
            rows[i].update(ttft_ms_pred=float(ttft), tpot_ms_pred=float(tpot), supported=True, config=cfg, bottleneck=bn)
    res = pd.DataFrame(rows)
    out = summarize(res.drop(columns=[c for c in ("config", "bottleneck") if c in res.columns]))
    if "config" in res.columns:
        annotate_validation(res, out)       # p10 / p90 per row, 80 % coverage and width in the summary
    groups = _repeat_keys(df)
    rep = repeats(df, groups)
    out["repeats"] = rep
    if rep:
        out["table"] += ("\nrows whose recorded inputs repeat with measured TPOT differing more than "
                         f"{REPEAT_SPREAD:g}x (a setting the file does not record differs):\n"
                         + "\n".join(f"  {k:<32} {v['n']:>5} of {v['of']}  (up to {v['max_spread']:.2f}x)"
                                      for k, v in rep.items()))
        spec = speculative_check(df, configs, groups)
        out["speculative_check"] = spec
        if spec["groups"]:
            out["table"] += (f"\n  {spec['groups']} such groups; {spec['mtp_model_groups']} are of models whose "
                             f"checkpoint ships MTP heads (of {spec['plain_groups']} repeated-input groups of models "
                             f"without, {spec['plain_groups_over']} differ); in "
                             f"{spec['within']} the measured slow/fast TPOT ratio lies within "
                             f"{SPEC_TOLERANCE:g}x of the model's speculative-decoding speed-up "
                             f"(drafts {SPEC_DRAFTS[0]}-{SPEC_DRAFTS[-1]}, default acceptance)")
    return out


REPEAT_SPREAD = 1.3
MEASURED = ("id", "silicon_data_source", "backend_version", "silicon_ttft_ms", "silicon_tpot_ms")


def repeats(df: pd.DataFrame, groups=None) -> dict:
    """Per system/mode: rows in groups of identical recorded inputs (every column but the
    id, provenance and measurements; concurrency from the provenance where it is kept
    there) whose measured TPOT spreads more than REPEAT_SPREAD. No model of these
    columns can be right on all of them: it is the floor of any validation on the file.
    `groups`: _repeat_keys(df), when the caller has it already."""
    _, spread = _repeat_keys(df) if groups is None else groups
    out = {}
    for (system, mode), idx in df.groupby(["system", "mode"]).groups.items():
        sp = spread[df.index.get_indexer(idx)]
        bad = sp > REPEAT_SPREAD
        if bad.any():
            out[f"{system}/{mode}"] = {"n": int(bad.sum()), "of": int(len(idx)), "max_spread": float(np.nanmax(sp))}
    return out


SPEC_DRAFTS = (1, 2, 3)
SPEC_TOLERANCE = 1.2


def _repeat_keys(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(group key per row, max/min measured TPOT of the row's group)."""
    inputs = df.drop(columns=[c for c in MEASURED if c in df.columns]).astype(str)
    if "silicon_data_source" in df.columns:
        inputs["concurrency"] = df["silicon_data_source"].astype(str).str.extract(r"silicon_concurrency=(\d+)")[0]
    key = pd.factorize(pd.MultiIndex.from_frame(inputs.fillna("")))[0]
    tpot = pd.to_numeric(df["silicon_tpot_ms"].map(_num), errors="coerce")
    g = tpot.groupby(key)
    return key, (g.transform("max") / g.transform("min")).to_numpy()


def speculative_check(df: pd.DataFrame, configs: list, groups=None) -> dict:
    """Whether the repeat groups look like speculative decoding switched on in some runs:
    for each group, the measured slow/fast TPOT ratio against the model's predicted
    speed-up of drafting SPEC_DRAFTS tokens (spec off / spec on, at the default
    acceptance), and whether the model's checkpoint ships MTP heads. A diagnostic of the
    file, never used to pick a prediction. `groups` as in `repeats`."""

    key, spread = _repeat_keys(df) if groups is None else groups
    heads = {}
    for m in df["model_path"].astype(str).unique():
        try:
            heads[m] = get_model(m).mtp_heads
        except DSEError:
            heads[m] = 0
    multi = pd.DataFrame({"key": key, "mtp": df["model_path"].astype(str).map(heads).to_numpy() > 0,
                          "over": spread > REPEAT_SPREAD})
    multi = multi[multi.groupby("key").key.transform("size") > 1].groupby("key").first()
    plain = multi[~multi.mtp]
    base = {"plain_groups": int(len(plain)), "plain_groups_over": int(plain.over.sum())}
    first: dict[int, dict] = {}
    for i, cfg, _ in configs:
        if spread[i] > REPEAT_SPREAD and key[i] not in first:
            first[key[i]] = cfg
    if not first:
        return {"groups": 0, "mtp_model_groups": 0, "within": 0, "rows": [], **base}
    cfgs = [{**c, "spec_tokens": k} for c in first.values() for k in (0, *SPEC_DRAFTS)]
    cols = {k: [c.get(k, COLUMNS[k]) for c in cfgs] for k in sorted({k for c in cfgs for k in c})}
    tpot = evaluate(strict=False, **cols).tpot_ms.to_numpy().reshape(len(first), 1 + len(SPEC_DRAFTS))
    meas = pd.to_numeric(df["silicon_tpot_ms"].map(_num), errors="coerce").groupby(key).agg(["min", "max"])
    out = []
    for (k, cfg), t in zip(first.items(), tpot):
        ratio = float(meas.loc[k, "max"] / meas.loc[k, "min"])
        lo, hi = float(t[0] / t[1]), float(t[0] / t[-1])
        out.append({"model": cfg["model"], "mode": cfg["mode"], "mtp_heads": get_model(cfg["model"]).mtp_heads,
                    "measured_ratio": ratio, "predicted_ratio_min": lo, "predicted_ratio_max": hi,
                    "within": bool(lo / SPEC_TOLERANCE <= ratio <= hi * SPEC_TOLERANCE)})
    return {"groups": len(out), "mtp_model_groups": sum(r["mtp_heads"] > 0 for r in out),
            "within": sum(r["within"] for r in out), "rows": out, **base}


def summarize(res: pd.DataFrame) -> dict:
    """Error figures of the supported rows whose deployment the file records in full; a
    disagg row without worker counts is "deployment not recorded": predicted as one prefill
    and one decode worker, it is counted (n_not_recorded) and scored in its own group, never
    in the accuracy figures, which it would dominate without telling about the model."""
    sup = res[res.supported].copy()
    sup["ttft_ape"] = _ape(sup.ttft_ms_pred.to_numpy(float), sup.ttft_ms_meas.to_numpy(float))
    sup["tpot_ape"] = _ape(sup.tpot_ms_pred.to_numpy(float), sup.tpot_ms_meas.to_numpy(float))
    not_recorded = sup.assumed.astype(str).str.contains("workers")
    ok = sup[~not_recorded]
    overall = _summary(ok)
    overall["n_unsupported"] = int((~res.supported).sum())
    overall["n_not_recorded"] = int(not_recorded.sum())
    groups = {f"{s}/{m}": _summary(g) for (s, m), g in ok.groupby(["system", "mode"])}
    by_backend = {f"{s}/{m}/{b}": _summary(g) for (s, m, b), g in ok.groupby(["system", "mode", "backend"])}
    extra = {}
    if not_recorded.any():
        extra["deployment not recorded (not scored above)"] = _summary(sup[not_recorded])
    reasons = res[~res.supported].reason.value_counts().to_dict()
    lines = [f"{'system/mode[/backend]':<34} {'n':>5} {'TTFT MAPE':>10} {'TTFT med':>9} {'TPOT MAPE':>10} {'TPOT med':>9}"]
    for name, s in {**groups, **by_backend, **extra, "all": overall}.items():
        if s["n"]:
            lines.append(f"{name:<34} {s['n']:>5} {s['ttft_mape']:>10.1f} {s['ttft_median_ape']:>9.1f} "
                         f"{s['tpot_mape']:>10.1f} {s['tpot_median_ape']:>9.1f}")
    lines.append(f"unsupported rows: {overall['n_unsupported']} of {len(res)}; deployment not recorded "
                 f"(disagg without worker counts): {overall['n_not_recorded']}")
    lines += [f"  {n:>4}  {r}" for r, n in reasons.items()]
    keep = ["id", "ttft_ms_pred", "tpot_ms_pred", "ttft_ms_meas", "tpot_ms_meas", "supported", "reason", "assumed"]
    return {"summary": overall, "groups": groups, "by_backend": by_backend, "unsupported_reasons": reasons,
            "rows": res[keep].to_dict(orient="records"), "table": "\n".join(lines)}
