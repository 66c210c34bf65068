"""AIConfigurator's three default questions, answered by `dse sweep`, timed as whole processes.

One command: `python bench/aic_bench.py [--repeat 2] [--aic PYTHON] [--baseline DIR]`. Each
shipped scenario search_spaces/aic_*.yaml (best deployment under TTFT 2 s / TPOT 30 ms, agg
and disagg, exactly N GPUs, AIConfigurator's CLI defaults isl 4000 / osl 1000), then the
quickstart, is run as `dse sweep FILE --out TMP --force --quiet` in a fresh process, wall
time best of --repeat; the targets are issue #15's (0.6 s, 0.6 s, 1.0 s; quickstart 1.0 s).
`dse --version` is timed last. If `aiconfigurator` is importable by this Python or by the
one given with --aic (a separate venv: it is not a dse dependency), `aiconfigurator cli
default` is timed on the same question in the same run and the ratio printed (its
predictions are not compared: devices outside ../shared are not ours to tune).
--baseline DIR (another checkout of dse, e.g. a worktree of main) runs the same commands
with DIR's code, interleaved with this checkout's, and prints base s / dse s. Every command
runs once untimed first (the per-user cache and the bytecode warm: bytecode is written even
under PYTHONDONTWRITEBYTECODE, as an installed package has it). Two shared cores are noisy:
rerun before reading much into one number.
"""
from __future__ import annotations

import argparse
import json
import os
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
    "quickstart": (None, 0, "", 1.0),           # no AIConfigurator counterpart
}
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def walls(cmds: dict[str, tuple[list[str], Path]], repeat: int) -> dict[str, float]:
    """Best wall time of each named (command, cwd) over `repeat` rounds, the commands
    interleaved within a round, after one untimed run of each; raises on failure."""
    best = dict.fromkeys(cmds, float("inf"))
    for i in range(repeat + 1):
        for name, (cmd, cwd) in cmds.items():
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
            dt = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
            if i:
                best[name] = min(best[name], dt)
    return best


def aic_command(python: str | None) -> list[str] | None:
    """How to run AIConfigurator's CLI (its console script's entry point), or None when
    it is not installed."""
    py = python or sys.executable
    if subprocess.run([py, "-c", "import aiconfigurator.main"], capture_output=True).returncode != 0:
        return None
    return [py, "-c", "import sys; from aiconfigurator.main import main; sys.argv[0] = 'aiconfigurator'; "
                      "sys.exit(main())"]


def dse_command() -> list[str]:
    """`dse` of the checkout that is the working directory (python -m puts it first on sys.path)."""
    return [sys.executable, "-m", "dse.cli.main"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--aic", default=None, help="a Python with aiconfigurator installed (default: this one)")
    ap.add_argument("--baseline", type=Path, default=None, help="another dse checkout, timed in the same run")
    a = ap.parse_args()
    aic = aic_command(a.aic)
    sides = {"dse": ROOT, **({"base": a.baseline.resolve()} if a.baseline else {})}
    print(f"{'question':<24} {'deployable':>10} {'dse s':>7} {'target':>7}"
          + (f" {'base s':>7} {'base/dse':>8}" if a.baseline else "") + (f" {'aic s':>7} {'aic/dse':>8}" if aic else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for name, (model, gpus, system, target) in QUESTIONS.items():
            space = str(ROOT / "search_spaces" / f"{name}.yaml")
            t = walls({side: ([*dse_command(), "sweep", space, "--out", str(Path(tmp) / side / name), "--force",
                               "--quiet"], cwd) for side, cwd in sides.items()}, a.repeat)
            secs = t["dse"]
            run = json.loads((Path(tmp) / "dse" / name / "run.json").read_text())
            line = f"{name:<24} {run['n_evaluated']:>10,} {secs:>7.2f} {'met' if secs <= target else 'NOT':>7}"
            if a.baseline:
                line += f" {t['base']:>7.2f} {t['base'] / secs:>7.2f}x"
            if aic and model:
                try:
                    cmd = [*aic, "cli", "default", "--model", model, "--total-gpus", str(gpus), "--system", system,
                           "--backend", "trtllm", "--save-dir", str(Path(tmp) / "aic")]
                    t_aic = walls({"aic": (cmd, Path(tmp))}, 1)["aic"]
                    line += f" {t_aic:>7.2f} {t_aic / secs:>7.1f}x"
                except RuntimeError as exc:
                    line += f"  aiconfigurator failed: {str(exc)[-120:]}"
            print(line)
    t = walls({side: ([*dse_command(), "--version"], cwd) for side, cwd in sides.items()}, a.repeat)
    print(f"{'dse --version':<24} {'':>10} {t['dse']:>7.2f} {'':>7}"
          + (f" {t['base']:>7.2f} {t['base'] / t['dse']:>7.2f}x" if a.baseline else ""))
    if not aic:
        print("aiconfigurator not importable: its times not measured (pass --aic PYTHON of a venv that has it)")


if __name__ == "__main__":
    main()
