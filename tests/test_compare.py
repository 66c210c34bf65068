"""Deciding and comparing: `dse recommend` prints a finished run's picks again, and
`dse compare` on two quickstart runs at different electricity prices reports how the
recommendation moved (console and HTML)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import dse
from dse.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    data = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    dear = dict(data, constraints={**data["constraints"], "facility": {"usd_per_kwh": 0.60}})
    (tmp / "dear.yaml").write_text(yaml.safe_dump(dear))
    a = dse.sweep(ROOT / "search_spaces" / "quickstart.yaml", out=tmp / "a").run_dir
    b = dse.sweep(tmp / "dear.yaml", out=tmp / "b").run_dir
    return a, b, tmp


def test_recommend_prints_the_run_s_picks(two_runs, capsys):
    a, _, _ = two_runs
    assert main(["recommend", str(a)]) == 0
    out = capsys.readouterr().out
    rec = json.loads((a / "recommendation.json").read_text())
    assert out.startswith("Recommended (") and set(rec["best"]) == {"e2e_ms", "joules_per_token", "usd_per_mtok"}
    for name in ("mi355x", "weights", "batch"):
        assert name in out
    assert main(["recommend", str(a), "--objective", "usd_per_mtok"]) == 0
    assert "best cost" in capsys.readouterr().out
    assert main(["recommend", str(a), "--objective", "nope"]) == 2
    assert "not an objective" in capsys.readouterr().err


def test_compare_reports_the_moved_recommendation(two_runs, capsys):
    a, b, tmp = two_runs
    assert main(["compare", str(a), str(b), "--html", str(tmp / "cmp.html")]) == 0
    out = capsys.readouterr().out
    cost = next(r for r in __import__("dse.report.compare", fromlist=["x"]).compare_runs(a, b)["recommendations"]
                if r["pick"] == "usd_per_mtok")
    # energy at 7.4x the price makes every owned token dearer: the cheapest pick's cost rises
    va, vb, rel = cost["deltas"]["usd_per_mtok"]
    assert vb > va and rel > 0.05
    assert "usd_per_mtok:" in out or "cost" in out
    assert "hypervolume in a common box" in out and ("entered" in out and "left" in out)
    page = (tmp / "cmp.html").read_text()
    assert "id='recommendations'" in page and "id='entered'" in page and "compare-0" in page


def test_compare_refuses_runs_of_other_questions(two_runs, tmp_path, capsys):
    a, _, _ = two_runs
    other = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    other["objectives"] = ["tpot_ms", "usd_per_mtok"]
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(other))
    o = dse.sweep(tmp_path / "o.yaml", out=tmp_path / "o").run_dir
    assert main(["compare", str(a), str(o)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "objectives" in err
