"""Results are held to the golden files of tests/golden (written by make_golden.py before the
code was moved): every metric of 126k configurations over every mode and model kind, and the
Pareto sets of the shipped scenarios, identical to 1e-12 relative."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import make_golden  # noqa: E402

# scenarios whose results changed on purpose since the golden files were written, and why
CHANGED_ON_PURPOSE: dict[str, str] = {}


def assert_frames_equal(got: pd.DataFrame, want: pd.DataFrame, where: str) -> None:
    assert list(got.columns) == list(want.columns), where
    assert len(got) == len(want), where
    for col in want.columns:
        a, b = got[col].to_numpy(), want[col].to_numpy()
        if want[col].dtype.kind in "iuf":
            a, b = a.astype(float), b.astype(float)
            same = (a == b) | (np.isnan(a) & np.isnan(b)) | np.isclose(a, b, rtol=1e-12, atol=0.0)
            bad = np.flatnonzero(~same)
            assert bad.size == 0, f"{where}: {col}: {bad.size} rows differ, e.g. row {bad[:1]}: {a[bad[:1]]} vs {b[bad[:1]]}"
        else:
            bad = np.flatnonzero(a.astype(str) != b.astype(str))
            assert bad.size == 0, f"{where}: {col}: {bad.size} rows differ, e.g. {a[bad[:1]]} vs {b[bad[:1]]}"


def test_engine_sample_is_unchanged():
    want = pd.read_parquet(GOLDEN / "engine_sample.parquet")
    got = make_golden.engine_sample()
    assert len(want) >= 100_000 and set(make_golden.sample_columns()["mode"]) == {"agg", "disagg", "afd"}
    assert_frames_equal(got, want, "engine sample")


@pytest.mark.parametrize("name", make_golden.SCENARIOS)
def test_shipped_pareto_sets_are_unchanged(name, tmp_path):
    if name in CHANGED_ON_PURPOSE:
        pytest.skip(CHANGED_ON_PURPOSE[name])
    import dse
    res = dse.sweep(make_golden.ROOT / "search_spaces" / f"{name}.yaml", out=tmp_path / name)
    got = pd.read_csv(Path(res.run_dir) / "pareto.csv")
    want = pd.read_csv(GOLDEN / f"pareto_{name}.csv")
    key = "config_id" if "config_id" in want.columns else want.columns[0]
    got, want = (d.sort_values(key).reset_index(drop=True) for d in (got, want))
    assert_frames_equal(got[want.columns], want, name)


def test_slo_confidence_zero_is_the_point_prediction_exactly(tmp_path):
    """slo_confidence: 0 gives the point-prediction feasibility of before the intervals: the
    quickstart front then equals the one written before they existed (pareto_quickstart_point)."""
    import yaml

    import dse
    data = yaml.safe_load((make_golden.ROOT / "search_spaces" / "quickstart.yaml").read_text())
    data["slo_confidence"] = 0
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    res = dse.sweep(path, out=tmp_path / "q")
    want = pd.read_csv(GOLDEN / "pareto_quickstart_point.csv")
    got = pd.read_csv(Path(res.run_dir) / "pareto.csv")
    got, want = (d.sort_values("config_id").reset_index(drop=True) for d in (got, want))
    assert_frames_equal(got[want.columns], want, "quickstart at slo_confidence 0")
    shipped = pd.read_csv(GOLDEN / "pareto_quickstart.csv")
    assert (shipped.meets_slo_prob >= 0.9).all() and len(shipped) != len(want)     # the default moves the front
