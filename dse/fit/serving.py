"""Fit the serving-framework constants from measured deployments.

Kernels say how long a step's math and memory traffic take; a serving framework adds
what no kernel table shows. Per backend (trtllm, vllm, sglang) two constants:
  request_ms  per-request latency outside the GPU (HTTP, tokenisation, admission,
              first-token delivery), in TTFT;
  step_ms     per-iteration cost (scheduler, sampling, launch gaps, small kernels the
              operator list leaves out), on every step;
and one choice: moe_kernel, whether the backend's rows follow a low-latency MoE kernel on
small steps ("min_latency": the kernel tables' moe_torch_flow_min_latency, where a device
measured it, on steps of at most runtime.yaml moe_low_latency_tokens) or the plain one ("");
(the engines' step token budget and running-sequence cap are their documented defaults,
hardware/runtime.yaml engine_limits, not fitted) and two constants of the measured workload:
  rounds      requests per user of the closed-loop benchmark (per backend: each backend's
              rows come from its own benchmark client): its first round starts all
              users at once, whose queue is part of the measured mean TTFT;
  routing_skew  the power-law exponent of expert popularity of the measured traffic
              (0 = every expert equally likely): the default of the routing_skew column.
None is per model or per row. They are fitted by minimising the clipped absolute log
error of TTFT and TPOT (robust to rows the model cannot know about, e.g. speculative
decoding) over the measured rows that record their deployment in full (disagg rows
without worker counts are scored, not fitted), backend by backend, with the engine itself.

`python -m dse.fit.serving [--measurements FILE]` refits on every row, writes
hardware/serving_runtime.yaml with its provenance, and records the cross-system check:
constants fitted on the h100_sxm rows scored on the b200_sxm rows and vice versa.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dse.catalog.runtime import MOE_KERNELS, bench_rounds_of
from dse.errors import DSEError
from dse.io import write_text

__all__ = ["Data", "loss", "fit", "errors", "table", "main", "BACKENDS", "START", "ROUNDS_GRID"]

HW = Path(str(resources.files("dse.hardware")))
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "calibration" / "silicon_h100_b200.csv.gz"
BACKENDS = ("trtllm", "vllm", "sglang")
START = {"request_ms": 50.0, "step_ms": 0.5}
SKEW_GRID = (0.0, 0.3, 0.6, 0.8, 1.0, 1.2, 1.5)   # power-law exponents of expert popularity
ROUNDS_GRID = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0, np.inf)
CLIP = 1.0          # a row contributes at most |log(pred/meas)| = 1 (2.7x) to the loss


class Data:
    """Measured rows mapped to configurations (once), evaluated under any constants."""

    def __init__(self, path: Path):
        from dse.fit import validate

        df = validate.read_measurements(path)
        rows, configs = validate.map_rows(df, bench_rounds=1.0)
        if not configs:
            raise DSEError(f"fit.serving: {path}: no row can be modelled (every row unsupported), nothing to fit")
        self.configs = configs
        self.meta = pd.DataFrame([rows[i] for i, _, _ in configs])
        self.ttft = self.meta.ttft_ms_meas.to_numpy(float)
        self.tpot = self.meta.tpot_ms_meas.to_numpy(float)
        self.n_rows = len(rows)

    def mask(self, system: str | None = None, backend: str | None = None, *, recorded: bool = False) -> np.ndarray:
        """Rows of a system / backend; recorded=True keeps only rows whose deployment the
        file records in full (disagg rows without worker counts cannot inform a constant)."""
        m = np.ones(len(self.meta), dtype=bool)
        if recorded:
            m &= ~self.meta.assumed.str.contains("workers").to_numpy()
        if system:
            m &= (self.meta.system == system).to_numpy()
        if backend:
            m &= (self.meta.backend == backend).to_numpy()
        return m

    def predict(self, runtime: dict, mask: np.ndarray, *, pooled: bool = False) -> tuple[np.ndarray, np.ndarray]:
        from dse.fit import validate

        sel = []
        for j in np.nonzero(mask)[0]:
            i, cfg, r = self.configs[j]
            cfg = {**cfg, "bench_rounds": bench_rounds_of(runtime, "" if pooled else cfg.get("backend", ""))}
            if pooled:
                cfg["backend"] = ""
            sel.append((i, cfg, r))
        pred = validate.predict(sel, serving=runtime)
        return pred.ttft_ms.to_numpy(float), pred.tpot_ms.to_numpy(float)


def loss(data: Data, runtime: dict, mask: np.ndarray, *, pooled: bool = False) -> float:
    ttft, tpot = data.predict(runtime, mask, pooled=pooled)
    e = np.minimum(np.abs(np.log(ttft / data.ttft[mask])), CLIP) + np.minimum(np.abs(np.log(tpot / data.tpot[mask])), CLIP)
    return float(np.mean(e))


def _with(runtime: dict, name: str, consts: dict) -> dict:
    return {**runtime, "backends": {**runtime["backends"], name: consts}}


def _fit_backend(data: Data, runtime: dict, name: str, mask: np.ndarray, *, pooled: bool) -> dict:
    from scipy.optimize import minimize

    def unpack(x):
        return {"request_ms": float(np.exp(x[0])), "step_ms": float(np.exp(x[1]))}

    def f(x):
        return loss(data, _with(runtime, name, unpack(x)), mask, pooled=pooled)

    c = runtime["backends"].get(name, START)
    x0 = np.log([max(c["request_ms"], 1.0), max(c["step_ms"], 0.01)])
    best = minimize(f, x0, method="Nelder-Mead", options={"maxfev": 60, "xatol": 0.02, "fatol": 1e-4,
                                                           "initial_simplex": x0 + np.vstack([np.zeros(2),
                                                                                              np.diag([0.7, 0.7])])})
    return {k: round(v, 4) for k, v in unpack(best.x).items()}


def _moe_kernel(data: Data, runtime: dict, name: str, mask: np.ndarray, *, pooled: bool) -> str:
    """Whether the backend's rows fit best with its small steps on the low-latency MoE kernel
    (a tie keeps the plain one): engines ship more than one MoE kernel for a format, and the
    file does not record which ran."""
    scores = [(loss(data, _with(runtime, name, {**runtime["backends"][name], "moe_kernel": k}), mask, pooled=pooled), k)
              for k in MOE_KERNELS]
    return min(scores)[1]


def fit(data: Data, mask: np.ndarray, *, cycles: int = 2) -> dict:
    """Constants fitted on the rows in `mask`: backends one by one (with the rounds of their
    own benchmark and their MoE kernel), then the pooled rounds and the routing skew on all
    of them; twice round."""
    runtime = {"backends": {b: dict(START) for b in ("default",) + BACKENDS}, "rounds": 6.0, "routing_skew": 0.0}
    for _ in range(cycles):
        for b in BACKENDS:
            m = mask & data.mask(backend=b)
            if m.sum() >= 20:
                runtime["backends"][b] = {**runtime["backends"][b], **_fit_backend(data, runtime, b, m, pooled=False)}
                scores = [(loss(data, _with(runtime, b, {**runtime["backends"][b], "rounds": r}), m), r)
                          for r in ROUNDS_GRID]
                runtime["backends"][b]["rounds"] = float(min(scores)[1])
                runtime["backends"][b]["moe_kernel"] = _moe_kernel(data, runtime, b, m, pooled=False)
        runtime["backends"]["default"] = {**runtime["backends"]["default"],
                                          **_fit_backend(data, runtime, "default", mask, pooled=True)}
        runtime["backends"]["default"]["moe_kernel"] = _moe_kernel(data, runtime, "default", mask, pooled=True)
        scores = [(loss(data, {**runtime, "rounds": r}, mask), r) for r in ROUNDS_GRID]
        runtime["rounds"] = float(min(scores)[1])
        scores = [(loss(data, {**runtime, "routing_skew": a}, mask), a) for a in SKEW_GRID]
        runtime["routing_skew"] = float(min(scores)[1])
    return runtime


def errors(data: Data, runtime: dict, mask: np.ndarray) -> dict:
    """Median / mean absolute percentage errors per system, mode and backend."""
    ttft, tpot = data.predict(runtime, mask)
    d = data.meta[mask].assign(et=np.abs(ttft / data.ttft[mask] - 1) * 100, ep=np.abs(tpot / data.tpot[mask] - 1) * 100)
    out = {}
    for keys, g in [(("all",), d)] + list(d.groupby(["system", "mode"])) + list(d.groupby(["system", "mode", "backend"])):
        name = "/".join(keys) if isinstance(keys, tuple) else keys
        out[name] = {"n": int(len(g)), "ttft_median_ape": round(float(g.et.median()), 1),
                     "ttft_mape": round(float(g.et.mean()), 1), "tpot_median_ape": round(float(g.ep.median()), 1),
                     "tpot_mape": round(float(g.ep.mean()), 1)}
    return out


def table(errs: dict) -> str:
    lines = [f"{'':<28} {'n':>5} {'TTFT med':>9} {'TTFT mean':>10} {'TPOT med':>9} {'TPOT mean':>10}"]
    for k, e in errs.items():
        lines.append(f"{k:<28} {e['n']:>5} {e['ttft_median_ape']:>9.1f} {e['ttft_mape']:>10.1f} "
                     f"{e['tpot_median_ape']:>9.1f} {e['tpot_mape']:>10.1f}")
    return "\n".join(lines)


def _yaml_runtime(runtime: dict) -> dict:
    return {"backends": {k: dict(v) for k, v in runtime["backends"].items()},
            "benchmark": {"rounds": float(runtime["rounds"]), "routing_skew": float(runtime["routing_skew"])}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dse.fit.serving", description=__doc__.splitlines()[0])
    ap.add_argument("--measurements", default=str(DEFAULT_DATA), help="measured deployments (silicon CSV)")
    ap.add_argument("--out", default=str(HW / "serving_runtime.yaml"))
    ap.add_argument("--no-cross", action="store_true", help="skip the cross-system check")
    a = ap.parse_args(argv)
    path = Path(a.measurements)
    data = Data(path)
    everything = np.ones(len(data.meta), dtype=bool)
    cross = {}
    if not a.no_cross:
        for fit_sys, test_sys in (("h100_sxm", "b200_sxm"), ("b200_sxm", "h100_sxm")):
            rt = fit(data, data.mask(system=fit_sys, recorded=True))
            errs = errors(data, rt, data.mask(system=test_sys))
            cross[f"fit_{fit_sys}_score_{test_sys}"] = {"constants": _yaml_runtime(rt), "errors": errs}
            print(f"fitted on {fit_sys}, scored on {test_sys}:\n{table(errs)}\n")
    runtime = fit(data, data.mask(recorded=True))
    errs = errors(data, runtime, everything)
    print(f"fitted on the rows that record their deployment in full, scored on all:\n{table(errs)}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    doc = {**_yaml_runtime(runtime),
           "source": {"command": "python -m dse.fit.serving" + (f" --measurements {a.measurements}"
                                                                 if a.measurements != str(DEFAULT_DATA) else ""),
                      "data": f"{path.name} (sha256 {digest}..., {data.n_rows} rows, {len(data.meta)} modelled); "
                              "measured by NVIDIA AIConfigurator, aiconfigurator-core 0.12.0, Apache-2.0",
                      "date": datetime.date.today().isoformat(),
                      "loss": f"mean over rows of min(|log(pred/meas)|, {CLIP}) for TTFT plus TPOT"},
           "in_sample_errors": errs, "cross_system": cross}
    header = ("# Written by dse/fit_serving.py; do not edit by hand.\n"
              "# Serving-framework constants (see dse/model/serving.py): request_ms per request in TTFT,\n"
              "# step_ms per iteration (the step token budget is the engines' default, runtime.yaml engine_limits);\n"
              "# moe_kernel: the low-latency MoE kernel small steps run ('' = none; runtime.yaml moe_low_latency_tokens);\n"
              "# benchmark.rounds = requests per user of the closed-loop benchmark behind the measurements\n"
              "# (evaluate's steady state uses inf); benchmark.routing_skew = the power-law exponent of expert\n"
              "# popularity that fits the measured MoE deployments (the routing_skew column's default).\n")
    write_text(Path(a.out), header + yaml.safe_dump(doc, sort_keys=False, width=110))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
