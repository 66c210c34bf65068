"""The what-if notebooks run top to bottom (nbclient, a real Jupyter kernel), in under
two minutes each, and match their generator notebooks/build_notebooks.py."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["procurement_whatif.ipynb", "opdisagg_whatif.ipynb", "kv_tiers_whatif.ipynb"]


def _builder():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS / "build_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", NAMES)
def test_notebook_matches_its_generator(name):
    built = _builder().build(_builder().NOTEBOOKS[name])
    committed = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], (
        f"{name} differs from notebooks/build_notebooks.py: run `python notebooks/build_notebooks.py`")
    assert all(not c.get("outputs") for c in committed.cells if c.cell_type == "code"), "commit without outputs"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, monkeypatch, tmp_path):
    monkeypatch.setenv("PLOTLY_RENDERER", "json")  # the kernel inherits it: figures as JSON, no browser
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    t = time.perf_counter()
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    took = time.perf_counter() - t
    print(f"{name}: executed in {took:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert took < 120
    # every figure cell produced a figure
    figs = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if o.output_type in ("display_data", "execute_result") and "application/json" in o.get("data", {}))
    assert figs >= 2
