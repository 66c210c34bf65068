"""The HTML report as a file: self-contained, bounded in size, rebuilt by `dse report DIR`.

The sizes asserted here are the issue's budgets: a quickstart-sized sweep under 10 MB,
a huge sweep under 25 MB. The suite uses 1 million rows for the huge one (the drawn
sample is bounded, so the size does not grow with the sweep); bench/report_bench.py
runs the same check on 10 million.
"""
from __future__ import annotations

import argparse
import re
import time

import pytest

from dse.errors import DSEError
from dse.cli import report as report_cli
from dse.report.html import write_report
from test_report_data import OBJECTIVES, quickstart_grid, write_results_dir

MB = 1e6


@pytest.fixture(scope="module")
def quickstart_df():
    return quickstart_grid()


def _check_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert len(re.findall(r"plotly\.js v\d", page)) == 1, "plotly.js must be inlined exactly once"
    assert not re.search(r"<script[^>]+src=", page), "no external scripts (works offline)"
    assert "<link" not in page


def test_quickstart_report_is_self_contained_and_under_10_mb(tmp_path, quickstart_df):
    d = write_results_dir(tmp_path / "qs", quickstart_df,
                          validation={"summary": {"ttft_mape": 11.0, "tpot_mape": 7.5}})
    t = time.perf_counter()
    path = write_report(d)
    took = time.perf_counter() - t
    page = path.read_text()
    _check_self_contained(page)
    size = path.stat().st_size
    print(f"quickstart-size report: {len(quickstart_df):,} configurations -> {size / MB:.2f} MB in {took:.1f} s")
    assert size < 10 * MB
    for div in ("recommended", "standard-0", "pair-0", "pair-1", "pair-2", "why-infeasible", "model-accuracy",
                "question", "parcoords", "pareto-table", "run"):
        assert f'id="{div}"' in page
    assert 'id="view-3d"' not in page                       # the 3-D scatter is gone
    # sections in the planner's order: decision first, the run's facts last
    order = [page.index(f'id="{s}"') for s in ("recommended", "standard-view", "objective-pairs", "why-infeasible",
                                               "model-accuracy", "question", "run")]
    assert order == sorted(order)
    assert "This run's validation file" in page and "tpot_mape" in page
    assert "test-70b" in page and "hypervolume" in page and "strategy" in page
    assert '"bdata"' in page  # numeric arrays travel as typed base64, not JSON number lists


def test_huge_sweep_report_is_bounded(tmp_path, quickstart_df):
    # 1,002,240 rows: the quickstart sweep 87 times over (only the first copy can be Pareto)
    tile = 87
    d = write_results_dir(tmp_path / "huge", quickstart_df, tile=tile)
    t = time.perf_counter()
    path = write_report(d)
    took = time.perf_counter() - t
    size = path.stat().st_size
    print(f"huge report: {len(quickstart_df) * tile:,} configurations -> {size / MB:.2f} MB in {took:.1f} s")
    assert size < 25 * MB
    page = path.read_text()
    _check_self_contained(page)
    assert f"{len(quickstart_df) * tile:,}" in page


def test_cli_report_rebuilds_and_errors_name_the_file(tmp_path, quickstart_df, capsys):
    d = write_results_dir(tmp_path / "r", quickstart_df.head(300), objectives=OBJECTIVES[:2])
    parser = argparse.ArgumentParser(prog="dse")
    report_cli.add_parser(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["report", str(d)])
    assert args.func(args) == 0
    assert (d / "report.html").stat().st_size > 1 * MB
    assert "wrote" in capsys.readouterr().out
    page = (d / "report.html").read_text()
    assert 'id="pair-0"' in page and 'id="pair-1"' not in page and 'id="view-3d"' not in page  # 2 objectives

    with pytest.raises(DSEError, match="not a directory"):
        args = parser.parse_args(["report", str(tmp_path / "missing")])
        args.func(args)
    (d / "run.json").unlink()
    with pytest.raises(DSEError, match=r"run\.json: not found"):
        args = parser.parse_args(["report", str(d)])
        args.func(args)
    assert report_cli.main([str(d)]) == 2
    assert "run.json" in capsys.readouterr().err


def test_report_without_configs_parquet(tmp_path, quickstart_df):
    d = write_results_dir(tmp_path / "r", quickstart_df.head(500))
    (d / "configs.parquet").unlink()
    page = write_report(d).read_text()
    assert "configs.parquet not found" in page and 'id="pair-0"' in page


def test_figures_are_the_json_plotly_writes_for_them(tmp_path, quickstart_df):
    """The report builds its figures as dicts and encodes them itself (no plotly.graph_objects):
    given to plotly (validated) and written by plotly.io.to_json, every one gives the same JSON."""
    import json

    import plotly.graph_objects as go
    import plotly.io as pio

    from dse.report import figdata as fd, html, rundata
    from dse.report.figjson import fig_json

    rd = rundata.load_run(write_results_dir(tmp_path / "qs", quickstart_df))
    sets, hm = fd.point_sets(rd), fd.hover_metrics(rd)
    figs = [html.scatter_figure(fd.scatter_data(rd, pair, sets), rd.groups, hm)
            for pair in fd.objective_pairs(rd.objectives, rd.pareto.columns)]
    figs.append(html.scatter_figure(fd.scatter_data(rd, rd.objectives[:3], sets), rd.groups, hm))   # 3-D
    figs.append(html.parcoords_figure(fd.parcoords_data(rd)))
    kinds, bars = set(), 0
    for fig in figs:
        ours = json.loads(fig_json(fig))
        assert ours == json.loads(pio.to_json(go.Figure(fig), validate=True))
        kinds |= {t["type"] for t in ours["data"]}
        bars += sum("error_x" in t for t in ours["data"])
    assert {"scatter", "scattergl", "scatter3d", "parcoords"} <= kinds and bars > 0
