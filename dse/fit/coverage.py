"""How well the shipped prediction intervals cover measured deployments: the interval
features of a mapped configuration, and the p10/p90, coverage and width that
`dse validate --measurements` reports (dse.deploy.intervals holds the table)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from dse.catalog.models import get_model
from dse.deploy import intervals as rt
from dse.errors import DSEError

__all__ = ["config_features", "annotate_validation"]


def config_features(cfgs: list[dict], bottleneck, recorded, *, ttft) -> dict[str, np.ndarray]:
    """Interval features of evaluate() configurations (as dse.fit.validate maps rows) and
    their point TTFT (ms)."""
    flags = {m: rt.model_flags(get_model(m)) for m in {c["model"] for c in cfgs}}
    mode = np.array([c["mode"] for c in cfgs], dtype=object)
    conc = rt.concurrency(mode, [c.get("batch_size", 1) for c in cfgs], [c.get("decode_batch_size", 0) for c in cfgs],
                          [c.get("decode_workers", 1) for c in cfgs])
    return {"mode": mode,
            "recorded": np.asarray(recorded, dtype=bool),
            "moe": np.array([flags[c["model"]]["moe"] for c in cfgs], dtype=bool),
            "mla": np.array([flags[c["model"]]["mla"] for c in cfgs], dtype=bool),
            "backend": np.array([c.get("backend", "") for c in cfgs], dtype=object),
            "bottleneck": np.asarray(bottleneck, dtype=object).astype(str),
            "concurrency": conc, "isl": np.array([c["isl"] for c in cfgs], dtype=float),
            "osl": np.array([c["osl"] for c in cfgs], dtype=float),
            "ttft": np.asarray(ttft, dtype=float)}


def annotate_validation(rows_df: pd.DataFrame, summary: dict, table: rt.Intervals | None = None) -> None:
    """Add ttft_ms_p10/_p90, tpot_ms_p10/_p90 to the rows of a validate_measurements result
    and the 80 % coverage and median width to its summary. `rows_df` holds the per-row
    records with the mapped `config` and the engine's `bottleneck` of supported rows;
    `summary` is what dse.fit.validate.summarize returned for them (rows in the same order)."""
    for col in ("config", "bottleneck", "supported", "assumed"):
        if col not in rows_df.columns:
            raise DSEError(f"annotate_validation: rows need a {col!r} column")
    ok = rows_df.supported.to_numpy(bool)
    d = rows_df[ok]
    feats = config_features(list(d.config), d.bottleneck.astype(str).to_numpy(),
                            ~d.assumed.astype(str).str.contains("workers").to_numpy(),
                            ttft=d.ttft_ms_pred.to_numpy(float))
    f = rt.intervals(feats, table)
    band = {}
    for m, lo, hi in (("ttft", f.ttft_lo, f.ttft_hi), ("tpot", f.tpot_lo, f.tpot_hi)):
        pred, meas = d[f"{m}_ms_pred"].to_numpy(float), d[f"{m}_ms_meas"].to_numpy(float)
        band[f"{m}_ms_p10"], band[f"{m}_ms_p90"] = pred * lo, pred * hi
        inside = (meas >= pred * lo) & (meas <= pred * hi)
        summary["summary"][f"{m}_coverage_80"] = float(inside.mean()) if len(d) else None
        summary["summary"][f"{m}_width_80"] = float(np.median(hi / lo)) if len(d) else None
    rows = summary["rows"]
    for k in range(len(rows)):
        rows[k].update({c: None for c in band})
    for j, k in enumerate(np.nonzero(ok)[0]):
        rows[k].update({c: float(v[j]) for c, v in band.items()})
    s = summary["summary"]
    if len(d) and "table" in summary:
        summary["table"] += (f"\n80 % intervals (hardware/intervals.yaml): TTFT coverage {s['ttft_coverage_80']:.0%}, "
                             f"median p90/p10 {s['ttft_width_80']:.2f}; TPOT coverage {s['tpot_coverage_80']:.0%}, "
                             f"median p90/p10 {s['tpot_width_80']:.2f}")
