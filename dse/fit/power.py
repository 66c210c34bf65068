"""Fit the power model's activity coefficients from published per-phase GPU power.

The model says P = idle + (TDP - idle) x min(1, c_compute x u_compute + c_memory x u_memory),
where u are the utilisations of the math units and of memory bandwidth over a step.
Each observation in hardware/power_observations.yaml is replayed through the engine to
get its u's; the two coefficients are then the least-squares solution of
c_compute u_c + c_memory u_m = (P - idle) / (TDP - idle). Run `python -m dse.fit.power`
to rewrite hardware/power.yaml.
"""
from __future__ import annotations

import datetime
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from dse.io import write_text

__all__ = ["utilisations", "fit", "main"]

HW = Path(str(resources.files("dse.hardware")))


def utilisations(obs: dict) -> tuple[float, float]:
    from dse.catalog.models import get_model
    from dse.deploy.columns import broadcast
    from dse.deploy.context import make_context
    from dse.deploy.evaluate import evaluate_model

    setup = dict(obs["setup"])
    keep: dict = {}
    cols, _, vocab = broadcast({"device": obs["device"], **setup})
    evaluate_model(get_model(setup["model"]), dict(cols), vocab, make_context(), strict=True, keep=keep)
    step, hw = keep["result"].steps[obs["phase"]]
    t = float(step.total_ms[0]) * 1e-3
    u_c = float(step.total_flops()[0]) / (float(hw.peak_gemm[0]) * 1e12 * t)
    u_m = float(step.total_bytes()[0]) / (float(hw.mem_tb_s[0]) * 1e12 * t)
    return min(u_c, 1.0), min(u_m, 1.0)


def fit(path: Path | None = None) -> dict:
    from dse.catalog.devices import get_device

    data = yaml.safe_load((path or HW / "power_observations.yaml").read_text())
    rows, target = [], []
    for obs in data["observations"]:
        dev = get_device(obs["device"])
        u_c, u_m = utilisations(obs)
        rows.append([u_c, u_m])
        target.append(min((obs["gpu_w"] - dev.idle_w) / (dev.tdp_w - dev.idle_w), 1.0))
    a, b = np.asarray(rows), np.asarray(target)
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    coef = np.maximum(coef, 0.0)
    pred = np.minimum(a @ coef, 1.0)
    return {"c_compute": round(float(coef[0]), 4), "c_memory": round(float(coef[1]), 4),
            "fit_rms_error_tdp_fraction": round(float(np.sqrt(np.mean((pred - b) ** 2))), 4),
            "n_observations": int(len(b))}


def main() -> None:
    res = fit()
    doc = {**res, "source": "fitted by `python -m dse.fit.power` from hardware/power_observations.yaml "
                            f"(Splitwise per-phase GPU power) on {datetime.date.today().isoformat()}"}
    write_text(HW / "power.yaml", "# Written by dse/fit_power.py; do not edit by hand.\n" + yaml.safe_dump(doc, sort_keys=False))
    print(yaml.safe_dump(doc, sort_keys=False))


if __name__ == "__main__":
    main()
