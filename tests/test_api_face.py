"""The Python face and the files it writes: `dse.grid` crosses axes (evaluate pairs them),
and every JSON the project writes or prints is strict (no NaN / Infinity tokens)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dse
from dse.cli import main
from dse.errors import DSEError
from dse.io import to_json

LLAMA8 = "meta-llama/Llama-3.1-8B"


def _strict_loads(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_grid_crosses_axes_and_evaluate_pairs_them():
    g = dse.grid(model=LLAMA8, device=["h100_sxm", "b200_sxm"], tp=[1, 2, 4], batch_size=8)
    assert {len(v) for v in g.values()} == {6}
    assert list(g["device"]) == ["h100_sxm"] * 3 + ["b200_sxm"] * 3
    assert list(g["tp"]) == [1, 2, 4, 1, 2, 4]
    df = dse.evaluate(**g)
    assert len(df) == 6 and set(zip(df.device.astype(str), df.tp)) == {(d, t) for d in ("h100_sxm", "b200_sxm")
                                                                        for t in (1, 2, 4)}
    paired = dse.evaluate(model=LLAMA8, device=["h100_sxm", "b200_sxm"], tp=[1, 2])
    assert len(paired) == 2


def test_grid_refuses_empty_and_huge_axes():
    with pytest.raises(DSEError, match="empty"):
        dse.grid(model=LLAMA8, tp=[])
    with pytest.raises(DSEError, match="combinations"):
        dse.grid(a=range(10_000), b=range(10_000), c=range(10))


def test_to_json_is_strict():
    text = to_json({"nan": np.nan, "inf": np.inf, "neg": -np.inf, "arr": np.array([1.0, np.nan]),
                    "n": np.int64(3), "b": np.bool_(True)})
    assert _strict_loads(text) == {"nan": None, "inf": "inf", "neg": "-inf", "arr": [1.0, None], "n": 3, "b": True}


def test_evaluate_json_output_is_strict(capsys):
    # no SLO: the SLO columns are inf; a batch that cannot fit makes usd_per_mtok_at_slo inf
    assert main(["evaluate", "--model", LLAMA8, "--device", "h100_sxm", "--batch-size", "4096", "--json"]) == 0
    out = _strict_loads(capsys.readouterr().out)
    assert out["metrics"]["ttft_slo_ms"] == "inf"


def test_validate_json_is_strict(tmp_path):
    src = tmp_path / "m.csv"
    import pandas as pd
    from pathlib import Path
    data = Path(__file__).resolve().parents[2] / "shared" / "calibration" / "silicon_h100_b200.csv.gz"
    if not data.is_file():
        pytest.skip("shared calibration data not beside the checkout")
    pd.read_csv(data).head(40).to_csv(src, index=False)
    out = tmp_path / "v.json"
    assert main(["validate", "--measurements", str(src), "--json", str(out)]) == 0
    _strict_loads(out.read_text())


def test_version_and_catalog_show(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"dse {dse.__version__}"
    assert main(["hardware", "show", "h100_sxm"]) == 0
    out = capsys.readouterr().out
    mem = next(line for line in out.splitlines() if line.strip().startswith("memory_tb_s"))
    assert "3.35" in mem and "hardware_specs.csv" in mem          # the figure beside its source
    assert main(["models", "show", "deepseek-ai/DeepSeek-V3"]) == 0
    out = capsys.readouterr().out
    assert "256 experts, top-8" in out and "mla" in out and "Apache-2.0" in out
    assert main(["models", "show"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give an id" in err


def test_evaluate_cli_products_headers_and_infeasible_first(capsys):
    assert main(["evaluate", "--model", LLAMA8, "--device", "h100_sxm,b200_sxm", "--tp", "1,2",
                 "--batch-size", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("4 configurations (device 2 x tp 2)") and len(out) == 2 + 4
    assert main(["evaluate", "--model", "meta-llama/Llama-3.1-70B", "--device", "h100_sxm", "--tp", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("INFEASIBLE: memory")               # the verdict first, not seventeen lines down
    assert main(["evaluate", "--model", LLAMA8, "--device", "h200_sxm", "--mode", "disagg",
                 "--prefill-device", "b200_sxm", "--decode-tp", "2"]) == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert "prefill 1 x b200_sxm" in head and "decode 2 x h200_sxm tp2" in head   # real per-role devices
    assert main(["evaluate", "--model", LLAMA8, "--device", "h100_sxm", "--tp", "two"]) == 2
    assert capsys.readouterr().err.strip() == "dse: error: --tp: expected a number, got 'two'"
