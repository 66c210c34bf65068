"""AIConfigurator's three default questions, answered by `dse sweep`, timed as whole processes.

One command: `python bench/aic_bench.py [--repeat 2] [--aic PYTHON]`. Each shipped scenario
search_spaces/aic_*.yaml (best deployment under TTFT 2 s / TPOT 30 ms, agg and disagg,
exactly N GPUs, AIConfigurator's CLI defaults isl 4000 / osl 1000) is run as
`dse sweep FILE --out TMP --force --quiet` in a fresh process, wall time best of --repeat;
the targets are issue #15's (0.6 s, 0.6 s, 1.0 s). If `aiconfigurator` is importable by
this Python or by the one given with --aic (a separate venv: it is not a dse dependency),
`aiconfigurator cli default` is timed on the same question in the same run and the ratio
printed (its predictions are not compared: devices outside ../shared are not ours to tune).
Two shared cores are noisy: rerun before reading much into one number.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# scenario -> (AIConfigurator model, total GPUs, system, dse's target seconds)
QUESTIONS = {
    "aic_qwen3_32b_h200": ("Qwen/Qwen3-32B", 8, "h200_sxm", 0.6),
    "aic_llama31_70b_h100": ("meta-llama/Meta-Llama-3.1-70B", 8, "h100_sxm", 0.6),
    "aic_qwen3_235b_b200": ("Qwen/Qwen3-235B-A22B-FP8", 16, "b200_sxm", 1.0),
}


def wall(cmd: list[str], repeat: int, cwd: Path) -> tuple[float, str]:
    """Best wall time of `repeat` runs (and the last run's stdout); raises on failure."""
    best, out = float("inf"), ""
    for _ in range(repeat):
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        dt = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
        best, out = min(best, dt), proc.stdout
    return best, out


def aic_command(python: str | None) -> list[str] | None:
    """How to run AIConfigurator's CLI (its console script's entry point), or None when
    it is not installed."""
    py = python or sys.executable
    if subprocess.run([py, "-c", "import aiconfigurator.main"], capture_output=True).returncode != 0:
        return None
    return [py, "-c", "import sys; from aiconfigurator.main import main; sys.argv[0] = 'aiconfigurator'; "
                      "sys.exit(main())"]


def dse_command() -> list[str]:
    return [sys.executable, "-m", "dse.cli.main"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--aic", default=None, help="a Python with aiconfigurator installed (default: this one)")
    a = ap.parse_args()
    aic = aic_command(a.aic)
    print(f"{'question':<24} {'deployable':>10} {'dse s':>7} {'target':>7}" + (f" {'aic s':>7} {'aic/dse':>8}" if aic else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, gpus, system, target) in QUESTIONS.items():
            out = Path(tmp) / name
            secs, _ = wall([*dse_command(), "sweep", str(ROOT / "search_spaces" / f"{name}.yaml"), "--out", str(out),
                            "--force", "--quiet"], a.repeat, ROOT)
            run = json.loads((out / "run.json").read_text())
            line = f"{name:<24} {run['n_evaluated']:>10,} {secs:>7.2f} {'met' if secs <= target else 'NOT':>7}"
            if aic:
                try:
                    t_aic, _ = wall([*aic, "cli", "default", "--model", model, "--total-gpus", str(gpus),
                                     "--system", system, "--backend", "trtllm", "--save-dir", str(Path(tmp) / "aic")],
                                    1, Path(tmp))
                    line += f" {t_aic:>7.2f} {t_aic / secs:>7.1f}x"
                except RuntimeError as exc:
                    line += f"  aiconfigurator failed: {str(exc)[-120:]}"
            print(line)
    if not aic:
        print("aiconfigurator not importable: its times not measured (pass --aic PYTHON of a venv that has it)")


if __name__ == "__main__":
    main()
