"""Start-up and the AIConfigurator scenarios: a command imports only what it uses, and the
three shipped aic_* questions load, enumerate exactly their GPU budget and sweep."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "plotly", "optuna", "ortools", "pymoo", "scipy", "pyarrow", "pydantic")


def _imported(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_version_and_parser_import_nothing_heavy():
    assert _imported("from dse.cli.main import main\nimport contextlib, io\n"
                     "with contextlib.redirect_stdout(io.StringIO()): main(['--version'])") == []
    assert _imported("from dse.cli.main import build_parser\nbuild_parser()") == []


def test_grid_sweep_imports_no_optimiser_solver_or_plotting(tmp_path):
    """A grid sweep without a report loads neither Optuna, pymoo, OR-Tools nor plotly."""
    path = tmp_path / "tiny.yaml"
    path.write_text("model: meta-llama/Llama-3.1-8B\naxes: {device: [h100_sxm], tp: [1, 2], batch_size: [1, 8]}\n"
                    "modes: {agg: {}, disagg: {decode_workers: [1, 2]}}\nconstraints: {max_gpus: 4}\n")
    got = _imported(f"from dse.search.run import sweep\nsweep({str(path)!r}, strategy='grid', "
                    f"out={str(tmp_path / 'run')!r})")
    assert not {"optuna", "pymoo", "ortools", "plotly"} & set(got)
    assert {"pandas", "pyarrow"} <= set(got)


# GPUs, deployable rows, deployable layouts per mode (agg, disagg: rows / batch sizes 46, 96)
AIC = {"aic_qwen3_32b_h200": (8, 2_872, (4, 28)), "aic_llama31_70b_h100": (8, 2_872, (4, 28)),
       "aic_qwen3_235b_b200": (16, 114_782, (41, 1_176))}


@pytest.mark.parametrize("name", AIC)
def test_aic_scenarios_enumerate_their_budget_and_sweep(name, tmp_path):
    import dse
    from dse.catalog.yamlfile import load_yaml
    from dse.search.space import load_space, space_from_dict

    gpus, deployable, layouts = AIC[name]
    path = ROOT / "search_spaces" / f"{name}.yaml"
    space = load_space(path)
    assert space.deployable_size == deployable == layouts[0] * 46 + layouts[1] * 96
    assert space.size > 100 * deployable
    assert {m.name for m in space.modes} == {"agg", "disagg"}
    # a sample of the deployable rows, through the engine: every one on exactly the budget
    ids = space.positions(0, space.deployable_size)[::97]
    df = dse.evaluate(strict=False, **space.columns(ids))
    assert (df["num_gpus"] == gpus).all() and (df["infeasible_code"].astype(str) != "structure").all()
    # the whole question over two batch sizes per mode: a grid of the deployable rows only
    data = load_yaml(path)
    for spec in data["modes"].values():
        spec["batch_size"] = [8, 64]
    small = space_from_dict(data, where=str(path), default_name=name)
    res = dse.sweep(small, out=tmp_path / "run")
    assert res.run["n_evaluated"] == small.deployable_size == 2 * sum(layouts)
    configs = res.configs()
    assert len(configs) == small.deployable_size and set(configs["num_gpus"]) == {gpus}
    assert configs["feasible"].any() and len(res.pareto) > 0
    assert set(configs["mode"].astype(str)) == {"agg", "disagg"}
    assert np.isfinite(res.pareto["tokens_per_s_per_gpu"]).all()


def test_cli_sweep_with_its_report_imports_no_optimiser_solver_or_plotly_figures(tmp_path):
    """The whole `dse sweep` command, report included, loads neither Optuna, pymoo nor
    OR-Tools, nor scipy (the SLO chance of a small sweep's rows takes the stdlib's erfc:
    dse.deploy.intervals._ndtr), and not plotly's figure classes or plotly.io (the report
    writes its figures as dicts: their validators were most of its time)."""
    path = tmp_path / "tiny.yaml"
    path.write_text("model: meta-llama/Llama-3.1-8B\naxes: {device: [h100_sxm], tp: [1, 2], batch_size: [1, 8]}\n"
                    "modes: {agg: {}, disagg: {decode_workers: [1, 2]}}\nconstraints: {max_gpus: 4}\n")
    code = ("from dse.cli.main import main\nimport contextlib, io, json, sys\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    rc = main(['sweep', {str(path)!r}, '--out', {str(tmp_path / 'run')!r}, '--quiet'])\n"
            "print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('optuna', 'pymoo', 'ortools', 'plotly', 'scipy'))]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    rc, mods = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and (tmp_path / "run" / "report.html").stat().st_size > 1_000_000   # plotly.js inlined
    assert not {m.split(".")[0] for m in mods} & {"optuna", "pymoo", "ortools", "scipy"}, mods
    assert "plotly.colors" in mods                      # the palettes: the report did run
    assert not [m for m in mods if m.startswith(("plotly.graph_objs", "plotly.graph_objects", "plotly.io",
                                                 "plotly.basedatatypes"))], mods


def test_cli_process_tuning_and_its_results_match_the_api(tmp_path):
    """`dse` as the program (main reading sys.argv, numpy not yet imported) limits OpenBLAS to
    one thread before numpy starts its pool (a value the user set is kept; not for the fits),
    raises the collector's thresholds and freezes every object when the command returns; a
    caller's main(argv) leaves its process alone. The sweep gives exactly the rows the library
    gives in this process (a MoE scenario: the routing law's tensordot goes through BLAS)."""
    import os

    import pandas as pd

    import dse
    from dse.cli.main import GC_THRESHOLDS

    path = tmp_path / "moe.yaml"
    path.write_text("model: Qwen/Qwen3-235B-A22B-FP8\nworkload: {isl: 4000, osl: 1000}\n"
                    "slos: {ttft_ms: 2000, tpot_ms: 30}\naxes: {device: [b200_sxm], batch_size: [1, 64]}\n"
                    "modes: {agg: {tp: [4, 8], ep: [1, 8]}, disagg: {prefill_tp: [4], prefill_ep: [4], decode_tp: [8], "
                    "decode_ep: [8]}}\nconstraints: {max_gpus: 16}\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}

    def cli(args: list[str], program: bool = True, **extra: str) -> list:
        call = f"sys.argv = ['dse', *{args!r}]\n    rc = main()" if program else f"rc = main({args!r})"
        code = ("import contextlib, gc, io, json, os, sys\nfrom dse.cli.main import main\n"
                f"with contextlib.redirect_stdout(io.StringIO()):\n    {call}\n"
                "print(json.dumps([rc, os.environ.get('OPENBLAS_NUM_THREADS'), list(gc.get_threshold()), "
                "gc.get_freeze_count() > 0]))")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**env, **extra}).stdout
        return json.loads(out.strip().splitlines()[-1])

    tuned = list(GC_THRESHOLDS)
    assert cli(["sweep", str(path), "--out", str(tmp_path / "cli"), "--quiet"]) == [0, "1", tuned, True]
    assert cli(["schema", "scenario"], OPENBLAS_NUM_THREADS="2") == [0, "2", tuned, True]
    assert cli(["calibrate", "--kernels", str(tmp_path / "none"), "--device", "h100_sxm"])[1:] == [None, tuned, True]
    assert cli(["schema", "scenario"], program=False) == [0, None, [700, 10, 10], False]
    assert cli(["--version"]) == [0, None, [700, 10, 10], False]
    api = dse.sweep(str(path), out=tmp_path / "api").configs()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cli" / "configs.parquet"), api, check_exact=True)
    assert api["feasible"].any() and (api["mode"].astype(str) == "disagg").any()


def test_python_m_dse_cli_runs_the_command_without_warnings():
    """`python -m dse.cli` is the command without its script, and Python warns of nothing."""
    ok = subprocess.run([sys.executable, "-W", "error", "-m", "dse.cli", "--version"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("dse ") and ok.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "dse.cli", "sweep", "no_such_file.yaml"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "no_such_file.yaml" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
