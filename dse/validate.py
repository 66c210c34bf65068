"""Hold the model against measured deployments (TTFT and TPOT).

Reads measured rows in the column set of AIConfigurator's silicon tables (agg rows:
batch_size is the concurrency; disagg rows: prefill_*/decode_* columns), maps each to
an `evaluate` configuration by fixed rules — never per row or per model — and reports
absolute percentage errors per system and mode. A row that cannot be modelled (unknown
model or system, unsupported architecture) is reported with its reason, never a crash.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dse.catalog import dtypes
from dse.catalog.devices import device_ids
from dse.catalog.models import get_model
from dse.errors import DSEError

REQUIRED = ("id", "model_path", "system", "mode", "isl", "osl", "batch_size", "tp_size",
            "silicon_ttft_ms", "silicon_tpot_ms")


def _int(v, default: int = 1) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return int(f) if np.isfinite(f) and f >= 1 else default


def _weight_dtype(row: pd.Series, moe: bool) -> str:
    for col in (("moe_quant_mode", "gemm_quant_mode") if moe else ("gemm_quant_mode",)) + ("precision",):
        val = row.get(col)
        if isinstance(val, str) and val:
            try:
                return dtypes.normalize(val)
            except DSEError:
                continue
    return "bf16"


def _layout(row: pd.Series, prefix: str, moe: bool) -> dict:
    """Attention TP and DP, and expert parallelism, of one worker."""
    tp = _int(row.get(f"{prefix}tp_size"))
    dp = _int(row.get(f"{prefix}attention_dp_size"))
    ep = _int(row.get(f"{prefix}moe_ep_size")) if moe else 1
    return {"tp": tp, "dp": dp, "ep": ep, "pp": _int(row.get(f"{prefix}pp_size"))}


def row_config(row: pd.Series) -> dict:
    """The evaluate() configuration of one measured row (raises DSEError when unsupported)."""
    if row["system"] not in device_ids():
        raise DSEError(f"unknown system {row['system']!r}")
    model = get_model(str(row["model_path"]))
    wd = _weight_dtype(row, model.is_moe)
    cfg = {"model": str(row["model_path"]), "device": str(row["system"]), "weight_dtype": wd,
           "kv_dtype": "fp8" if wd in ("fp8", "fp4") else "bf16",
           "isl": _int(row["isl"]), "osl": _int(row["osl"])}
    if row["mode"] == "disagg":
        pre, dec = _layout(row, "prefill_", model.is_moe), _layout(row, "decode_", model.is_moe)
        cfg.update(mode="disagg", **{f"prefill_{k}": v for k, v in pre.items()},
                   **{f"decode_{k}": v for k, v in dec.items()},
                   prefill_workers=_int(row.get("prefill_num_workers")),
                   decode_workers=_int(row.get("decode_num_workers")),
                   decode_batch_size=_int(row.get("decode_batch_size")),
                   batch_size=_int(row.get("decode_batch_size")), **{k: v for k, v in dec.items()})
    else:
        cfg.update(mode="agg", batch_size=_int(row["batch_size"]), **_layout(row, "", model.is_moe))
    return cfg


def _ape(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.abs(pred - meas) / meas * 100.0


def validate_measurements(path: str | Path) -> dict:
    """Predicted vs measured TTFT/TPOT for every row of a measurement CSV."""
    from dse import api

    path = Path(path)
    if not path.is_file():
        raise DSEError(f"validate: {path}: no such file")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DSEError(f"validate: {path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DSEError(f"validate: {path}: missing column {missing[0]!r}; required: {', '.join(REQUIRED)}")
    rows, configs = [], []
    for _, r in df.iterrows():
        rec = {"id": str(r["id"]), "system": str(r["system"]), "mode": str(r["mode"]),
               "backend": str(r.get("backend", "")), "model": str(r["model_path"]),
               "ttft_ms_meas": float(r["silicon_ttft_ms"]), "tpot_ms_meas": float(r["silicon_tpot_ms"]),
               "ttft_ms_pred": None, "tpot_ms_pred": None, "supported": False, "reason": ""}
        try:
            cfg = row_config(r)
            api.evaluate(strict=True, **cfg)  # structural check, one row
            configs.append((len(rows), cfg))
        except DSEError as exc:
            rec["reason"] = str(exc).split("evaluate: ", 1)[-1]
        rows.append(rec)
    # evaluate supported rows in one vectorized call per column set
    if configs:
        keys = sorted({k for _, c in configs for k in c})
        cols = {k: [c.get(k, api.COLUMNS[k]) for _, c in configs] for k in keys}
        pred = api.evaluate(strict=False, **cols)
        for (i, _), ttft, tpot in zip(configs, pred.ttft_ms, pred.tpot_ms):
            rows[i].update(ttft_ms_pred=float(ttft), tpot_ms_pred=float(tpot), supported=True)
    res = pd.DataFrame(rows)
    ok = res[res.supported].copy()
    ok["ttft_ape"] = _ape(ok.ttft_ms_pred.to_numpy(float), ok.ttft_ms_meas.to_numpy(float))
    ok["tpot_ape"] = _ape(ok.tpot_ms_pred.to_numpy(float), ok.tpot_ms_meas.to_numpy(float))

    def summary(d: pd.DataFrame) -> dict:
        return {"n": int(len(d)), "ttft_mape": float(d.ttft_ape.mean()) if len(d) else None,
                "ttft_median_ape": float(d.ttft_ape.median()) if len(d) else None,
                "tpot_mape": float(d.tpot_ape.mean()) if len(d) else None,
                "tpot_median_ape": float(d.tpot_ape.median()) if len(d) else None}

    overall = summary(ok)
    overall["n_unsupported"] = int((~res.supported).sum())
    groups = {f"{s}/{m}": summary(g) for (s, m), g in ok.groupby(["system", "mode"])}
    by_backend = {f"{s}/{m}/{b}": summary(g) for (s, m, b), g in ok.groupby(["system", "mode", "backend"])}
    reasons = res[~res.supported].reason.value_counts().to_dict()
    lines = [f"{'system/mode':<28} {'n':>5} {'TTFT MAPE':>10} {'TTFT med':>9} {'TPOT MAPE':>10} {'TPOT med':>9}"]
    for name, s in {**groups, **by_backend, "all": overall}.items():
        if s["n"]:
            lines.append(f"{name:<28} {s['n']:>5} {s['ttft_mape']:>10.1f} {s['ttft_median_ape']:>9.1f} "
                         f"{s['tpot_mape']:>10.1f} {s['tpot_median_ape']:>9.1f}")
    lines.append(f"unsupported rows: {overall['n_unsupported']} of {len(res)}")
    lines += [f"  {n:>4}  {r}" for r, n in reasons.items()]
    keep = ["id", "ttft_ms_pred", "tpot_ms_pred", "ttft_ms_meas", "tpot_ms_meas", "supported", "reason"]
    return {"summary": overall, "groups": groups, "by_backend": by_backend, "unsupported_reasons": reasons,
            "rows": res[keep].to_dict(orient="records"), "table": "\n".join(lines)}
