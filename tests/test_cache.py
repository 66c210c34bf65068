"""The per-user cache of arrays derived from shipped files (dse.catalog.cache): built once,
reused while the files and key are the same, rebuilt when an entry is corrupt or fails its
check, harmless when the directory cannot be written, off on request; the interval tables
read through it equal the ones parsed from their CSVs."""
from __future__ import annotations

import numpy as np
import pytest

from dse.catalog.cache import cache_dir, cached_arrays


def test_cached_arrays_build_once_then_reuse_and_rebuild(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DSE_CACHE_DIR", str(root))
    src = tmp_path / "table.csv"
    src.write_text("1,2,3\n")
    calls: list[int] = []

    def build():
        calls.append(1)
        return {"a": np.arange(3.0) * len(calls), "b": np.array([len(calls)])}

    first = cached_arrays("t", [src], "k", build)
    again = cached_arrays("t", [src], "k", build)
    assert len(calls) == 1 and all(np.array_equal(first[k], again[k]) for k in ("a", "b"))
    src.write_text("1,2,4\n")                                   # other bytes: another entry
    assert cached_arrays("t", [src], "k", build)["b"][0] == 2
    assert cached_arrays("t", [src], "other key", build)["b"][0] == 3
    assert len(list(root.glob("t-*.npz"))) == 3
    for p in root.glob("t-*.npz"):
        p.write_bytes(b"not a zip")                             # corrupt: rebuilt and rewritten
    assert cached_arrays("t", [src], "k", build)["b"][0] == 4
    assert cached_arrays("t", [src], "k", build)["b"][0] == 4 and len(calls) == 4
    assert cached_arrays("t", [src], "k", build, check=lambda a: False)["b"][0] == 5
    assert not list(root.glob("*.tmp*"))


@pytest.mark.parametrize("where", ["off", "file"])
def test_cache_off_or_unwritable_only_costs_the_build(tmp_path, monkeypatch, where):
    src = tmp_path / "table.csv"
    src.write_text("x\n")
    monkeypatch.setenv("DSE_CACHE_DIR", "off" if where == "off" else str(src))   # a file: no directory there
    assert (cache_dir() is None) == (where == "off")
    calls: list[int] = []
    for _ in range(2):
        got = cached_arrays("t", [src], "k", lambda: calls.append(1) or {"a": np.ones(2)})
        assert np.array_equal(got["a"], np.ones(2))
    assert len(calls) == 2


def test_interval_tables_from_the_cache_equal_the_csvs(tmp_path, monkeypatch):
    from dse.deploy import intervals as iv

    try:
        monkeypatch.setenv("DSE_CACHE_DIR", "off")
        iv.load_intervals.cache_clear()
        ref = iv.load_intervals()
        monkeypatch.setenv("DSE_CACHE_DIR", str(tmp_path))
        iv.load_intervals.cache_clear()
        iv.load_intervals()                                     # parses the CSVs, writes the entries
        assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.npz")) == ["intervals_tpot", "intervals_ttft"]
        monkeypatch.setattr(iv.pd, "read_csv", lambda *a, **k: pytest.fail("read the CSV despite the cache"))
        iv.load_intervals.cache_clear()
        got = iv.load_intervals()
        for m in iv.METRICS:
            assert got.tables[m].levels == ref.tables[m].levels
            assert np.array_equal(got.tables[m].lo, ref.tables[m].lo) and np.array_equal(got.tables[m].hi, ref.tables[m].hi)
    finally:
        iv.load_intervals.cache_clear()


def test_cached_document_is_parsed_once_and_only_when_json_gives_it_back(tmp_path, monkeypatch):
    import yaml

    from dse.catalog.cache import cached_document

    monkeypatch.setenv("DSE_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "doc.yaml"
    parsed: list[str] = []

    def parse(text):
        parsed.append(text)
        return yaml.safe_load(text)

    src.write_text("a: 1.5\nb: [x, 2]\nc: {d: true}\n")
    for _ in range(2):
        assert cached_document("doc", src, parse) == {"a": 1.5, "b": ["x", 2], "c": {"d": True}}
    assert len(parsed) == 1
    src.write_text("1: one\nnan: .nan\n")                       # int key, NaN: not JSON-exact, never cached
    for _ in range(2):
        doc = cached_document("doc", src, parse)
        assert list(doc) == [1, "nan"] and doc[1] == "one"
    assert len(parsed) == 3
    for p in (tmp_path / "cache").glob("doc-*.json"):
        p.write_text("{broken")                                 # corrupt: parsed again
    src.write_text("a: 1.5\nb: [x, 2]\nc: {d: true}\n")
    assert cached_document("doc", src, parse)["c"] == {"d": True} and len(parsed) == 4
