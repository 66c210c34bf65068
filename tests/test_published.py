"""The engine against NVIDIA's published TensorRT-LLM throughput tables (calibration-side
check: none of these rows is fitted to)."""
from __future__ import annotations

import pytest

from dse.fit import published

pytestmark = pytest.mark.skipif(not published.DEFAULT_CSV.is_file(), reason="../shared/reference not beside the checkout")


@pytest.fixture(scope="module")
def res():
    return published.predict(published.read_rows())


def test_every_published_row_is_modelled(res):
    assert len(res) == 23 and res.pred.notna().all()


def test_published_throughput_within_the_targets(res):
    """Highest-load output tokens/s: the issue's bar is 20 % median APE, 25 % on MoE rows."""
    s = published.summary(res)
    assert s["median_ape"] <= 8.0, s
    assert s["moe_median_ape"] <= 10.0, s
    assert s["max_ape"] <= 20.0, res[["model", "hardware", "ratio"]].to_string()
