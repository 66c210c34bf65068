"""Data files: the safe YAML reader, value ranges and strictness of every file kind,
`dse schema`, the committed JSON Schemas and docs/scenario.md, and random mutations of the
shipped files (each loads or fails with one line naming the file)."""
from __future__ import annotations

import itertools
import json
import os
import math
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dse import cli
from dse.catalog import devices, facility, systems
from dse.catalog.devices import get_device
from dse.catalog.facility import get_facility
from dse.catalog.systems import get_system
from dse.catalog.yamlfile import MAX_BYTES, load_yaml, parse_yaml
from dse.cli import schema as cli_schema
from dse.cli.schema_docs import markdown
from dse.errors import DSEError
from dse.search.space import load_space
from dse.solvers import sizing as sz

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
SCENARIOS = sorted(p for p in SPACES.glob("*.yaml") if not p.name.startswith("sizing"))
SIZING = SPACES / "sizing_example.yaml"
DEVICE_FILES = sorted((ROOT / "hardware" / "devices").glob("*.yaml"))
SYSTEM_FILES = sorted((ROOT / "hardware" / "systems").glob("*.yaml"))
FACILITY_FILE = ROOT / "hardware" / "facility.yaml"
SMALL = {"model": "meta-llama/Llama-3.1-8B", "workload": {"isl": 1024, "osl": 128},
         "axes": {"device": ["h100_sxm"], "tp": [1, 2]}}


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def one_line_error(fn, *args) -> str:
    with pytest.raises(DSEError) as err:
        fn(*args)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


# ----------------------------------------------------------------------------- YAML reader

def test_duplicate_keys_are_refused_with_key_path_and_line():
    text = "axes:\n  tp: [1, 2]\n  device: [h100_sxm]\n  tp: [4]\n"
    msg = one_line_error(parse_yaml, text, "f.yaml")
    assert msg == "f.yaml: axes.tp: duplicate key (line 4, column 3); give each key once"
    msg = one_line_error(parse_yaml, "a: 1\nb: {c: 1, c: 2}\n", "f.yaml")
    assert msg.startswith("f.yaml: b.c: duplicate key (line 2")


def test_anchors_and_aliases_are_refused_and_a_bomb_fails_fast():
    msg = one_line_error(parse_yaml, "a: &x [1, 2]\nb: *x\n", "f.yaml")
    assert "anchor &x at line 1" in msg and "not allowed" in msg
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = "\n".join(levels) + "\n"
    t = time.perf_counter()
    msg = one_line_error(parse_yaml, bomb, "bomb.yaml")
    assert time.perf_counter() - t < 0.5 and msg.startswith("bomb.yaml: anchor &a")


def test_size_cap_depth_cap_and_merge_keys(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: '" + "x" * (MAX_BYTES + 10) + "'\n")
    assert "over the" in one_line_error(load_yaml, big)
    deep = "a: " + "[" * 40 + "]" * 40 + "\n"
    assert "nested deeper than" in one_line_error(parse_yaml, deep, "f.yaml")
    assert "merge keys" in one_line_error(parse_yaml, "a:\n  <<: {b: 1}\n", "f.yaml")


def test_yaml_12_booleans_and_floats():
    data = parse_yaml("a: yes\nb: no\nc: on\nd: true\ne: False\nf: 1e6\ng: 2.5E-3\nh: .inf\ni: 0x10\nj: '1e6'\n", "f")
    assert data == {"a": "yes", "b": "no", "c": "on", "d": True, "e": False, "f": 1e6, "g": 2.5e-3,
                    "h": math.inf, "i": 16, "j": "1e6"}
    assert isinstance(data["f"], float)


def test_not_yaml_is_one_line(tmp_path):
    msg = one_line_error(load_yaml, write(tmp_path / "x.yaml", "axes: [1, 2\n"))
    assert "not valid YAML" in msg and "line" in msg


@pytest.mark.parametrize("form", ["list", "range"])
def test_a_200k_value_axis_loads_fast(tmp_path, form):
    n = 200_000
    axis = "[" + ", ".join(str(i) for i in range(1, n + 1)) + "]" if form == "list" else f"{{range: [1, {n}]}}"
    path = write(tmp_path / "big.yaml", f"model: meta-llama/Llama-3.1-8B\naxes:\n  device: [h100_sxm]\n"
                                        f"  isl: {axis}\n")
    load_space(path)                      # warm caches (model, devices, engine tables)
    t = time.perf_counter()
    space = load_space(path)
    assert time.perf_counter() - t < 0.8
    assert space.size == n and space.genes[-1].values[-1] == n


def test_long_sequence_fast_path_keeps_yaml_meaning():
    """The json fast path gives what PyYAML gives, and steps aside inside strings and comments."""
    nums = ", ".join(str(i) for i in range(20_000))
    text = f"a: [{nums}]\nb: [{nums.replace('1', '1.5', 3)}]\n# [{nums}]\nc: '[{nums}]'\n"
    assert parse_yaml(text, "f") == yaml.safe_load(text)


# ----------------------------------------------------------------------------- scenario values

@pytest.mark.parametrize("change, key, words", [
    (("constraints", {"own": "no"}), "constraints.own", "expected true or false, got 'no'"),
    (("constraints", {"own": "yes"}), "constraints.own", "expected true or false, got 'yes'"),
    (("axes", {"device": ["h100_sxm"], "power_cap": [float("nan")]}), "axes.power_cap[0]", "finite number"),
    (("slos", {"tpot_ms": float("nan")}), "slos.tpot_ms", "got nan"),
    (("constraints", {"budget_usd": -1}), "constraints.budget_usd", "expected a positive number, got -1"),
    (("search", {"seed": -1}), "search.seed", "expected a non-negative integer, got -1"),
    (("search", {"tol": float("nan")}), "search.tol", "finite number"),
    (("objectives", ["placed_gain"]), "objectives[0]", "needs a placement: section"),
    (("modes", {"disagg": {"prefill_workers": [1, 2, "x"]}}), "modes.disagg.prefill_workers[2]",
     "expected an integer, got 'x'"),
    (("axes", {"device": ["h100_sxm"], "batch_size": {"range": [1, 1e9]}}), "axes.batch_size.range",
     "more than the 1,000,000 an axis may have"),
])
def test_scenario_values_refused(tmp_path, change, key, words):
    data = dict(SMALL, **{change[0]: change[1]})
    path = write(tmp_path / "s.yaml", data)
    msg = one_line_error(load_space, path)
    assert msg.startswith(f"{path}: {key}: ") and words in msg, msg


def test_infinity_means_no_limit(tmp_path):
    data = dict(SMALL, slos={"ttft_ms": math.inf}, constraints={"max_power_kw": math.inf})
    space = load_space(write(tmp_path / "s.yaml", data))
    limits = {c.key: c.limit for c in space.constraints}
    assert limits == {"slos.ttft_ms": math.inf, "constraints.max_power_kw": math.inf, "slo_confidence": 0.9}


def test_space_size_is_exact_and_bounded_by_the_index(tmp_path):
    axes = {"device": ["h100_sxm"], "isl": {"range": [1, 1000]}, "osl": {"range": [1, 1000]},
            "batch_size": {"range": [1, 1000]}, "prefill_workers": {"range": [1, 1000]},
            "decode_workers": {"range": [1, 1000]}, "decode_batch_size": {"range": [1, 1000]}}
    small = {"model": SMALL["model"], "axes": axes}
    space = load_space(write(tmp_path / "big.yaml", small))
    assert space.size == 10**18 and isinstance(space.size, int)
    axes["replicas"] = {"range": [1, 100]}
    msg = one_line_error(load_space, write(tmp_path / "huge.yaml", small))
    assert f"{10**20:,} configurations" in msg and msg.startswith(f"{tmp_path / 'huge.yaml'}: axes: ")


# ----------------------------------------------------------------------------- hardware values

def _device(**changes) -> dict:
    data = yaml.safe_load((devices._devices_dir() / "h100_sxm.yaml").read_text())
    data.update(id="x", **changes)
    return data


@pytest.mark.parametrize("changes, words", [
    ({"idle_w": 800}, "idle_w: idle power above TDP (700 W), got 800"),
    ({"tdp_w": 0}, "tdp_w: expected a positive number, got 0"),
    ({"memory_gb": float("inf")}, "memory_gb: expected a finite number"),
    ({"memory_tb_s": float("nan")}, "memory_tb_s: expected a finite number"),
    ({"price_usd": -5}, "price_usd: expected a non-negative number, got -5"),
    ({"calibration_from": "h999"}, "calibration_from: unknown device 'h999'; known: a100_pcie, a100_sxm"),
    ({"system": "dgx9"}, "system: unknown system 'dgx9'; known:"),
    ({"hypothetical": "yes"}, "hypothetical: expected true or false, got 'yes'"),
    ({"peak_tflops": {"bf16": -1}}, "peak_tflops.bf16: expected a positive number, got -1"),
    ({"sources": {"memory_gb": "x", "colour": "y"}}, "sources.colour: not a sourced figure"),
])
def test_device_values_refused(tmp_path, changes, words):
    path = write(tmp_path / "x.yaml", _device(**changes))
    msg = one_line_error(get_device, str(path))
    assert msg.startswith(str(path)) and words in msg, msg


def test_base_override_needs_its_source(tmp_path):
    path = write(tmp_path / "fast.yaml", {"base": "h100_sxm", "tdp_w": 900})
    assert "sources.tdp_w: an overridden figure needs its own source" in one_line_error(get_device, str(path))
    path = write(tmp_path / "fast2.yaml", {"base": "h100_sxm", "tdp_w": 900, "sources": {"tdp_w": "what-if"}})
    d = get_device(str(path))
    assert d.tdp_w == 900 and d.id == "fast2" and d.sources["tdp_w"] == "what-if"
    path = write(tmp_path / "loop.yaml", {"base": str(tmp_path / "loop.yaml")})
    assert "base: " in one_line_error(get_device, str(path))


@pytest.mark.parametrize("changes, words", [
    ({"gpus_per_node": 0}, "gpus_per_node: expected an integer >= 1, got 0"),
    ({"rack_power_kw": 0, "sources": {}}, "rack_power_kw: expected a positive number"),
    ({"host_power_w": float("nan")}, "host_power_w: expected a finite number"),
])
def test_system_values_refused(tmp_path, changes, words):
    data = yaml.safe_load((systems._systems_dir() / "hgx8.yaml").read_text())
    data.update(id="s", **{k: v for k, v in changes.items() if k != "sources"})
    path = write(tmp_path / "s.yaml", data)
    msg = one_line_error(get_system, str(path))
    assert words in msg, msg


def test_facility_values_refused(tmp_path):
    good = yaml.safe_load(facility._default_path().read_text())
    for change, words in (({"pue": float("nan")}, "pue: expected a finite number"),
                          ({"usd_per_kwh": -0.1}, "usd_per_kwh: expected a non-negative number"),
                          ({"amortization_years": 0}, "amortization_years: expected a positive number")):
        path = write(tmp_path / "f.yaml", dict(good, **change))
        assert words in one_line_error(get_facility, path)
    assert "pue: expected a finite number" in one_line_error(lambda: get_facility(pue=math.inf))


def test_sizing_infinity_is_no_limit_and_values_checked(tmp_path):
    text = SIZING.read_text().replace("power_kw: 400", "power_kw: .inf")
    scn = sz.load_sizing(write(tmp_path / "s.yaml", text))
    assert scn["limits"].power_kw is None and scn["limits"].budget_usd == 12e6
    text = SIZING.read_text().replace("own: true", "own: yes")
    assert "own: expected true or false, got 'yes'" in one_line_error(sz.load_sizing, write(tmp_path / "t.yaml", text))
    text = SIZING.read_text().replace("weight_dtype: fp8", "weight_dtype: fp7")
    assert "weight_dtype: unknown dtype 'fp7'" in one_line_error(sz.load_sizing, write(tmp_path / "u.yaml", text))


# ----------------------------------------------------------------------------- schema and docs

@pytest.mark.parametrize("kind", cli_schema.KINDS)
def test_committed_json_schema_is_current(kind, capsys):
    committed = (ROOT / "docs" / "schemas" / f"{kind}.schema.json").read_text()
    assert committed == cli_schema.schema_text(kind), "run `python -m dse.cli.schema --write`"
    assert cli.main(["schema", kind]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(committed)


def test_committed_docs_are_current():
    assert (ROOT / "docs" / "scenario.md").read_text() == markdown(), "run `python -m dse.cli.schema --write`"


def test_docs_name_every_scenario_key():
    from dse.search import scenario as sc
    from dse.search.scenario_columns import AXIS_COLUMNS, NUMERIC_METRICS

    doc = (ROOT / "docs" / "scenario.md").read_text()
    keys = set(sc.Scenario.model_fields) | set(sc.Constraints.model_fields) | set(sc.Search.model_fields)
    keys |= set(sc.Placement.model_fields) | set(AXIS_COLUMNS) | set(NUMERIC_METRICS)
    missing = [k for k in sorted(keys) if f"| `{k}` |" not in doc]
    assert not missing, missing
    for section in ("## Device files", "## System files", "## Facility file", "## Sizing files"):
        assert section in doc


def _files_by_kind():
    return {"scenario": SCENARIOS, "sizing": [SIZING], "device": DEVICE_FILES, "system": SYSTEM_FILES,
            "facility": [FACILITY_FILE]}


@pytest.mark.parametrize("kind", cli_schema.KINDS)
def test_shipped_files_point_at_and_satisfy_their_json_schema(kind):
    jsonschema = pytest.importorskip("jsonschema")
    committed = json.loads((ROOT / "docs" / "schemas" / f"{kind}.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(committed)
    for path in _files_by_kind()[kind]:
        first = path.read_text().splitlines()[0]
        target = first.split("$schema=")[1]
        assert first.startswith("# yaml-language-server: $schema=") and (path.parent / target).resolve() == \
            (ROOT / "docs" / "schemas" / f"{kind}.schema.json").resolve()
        data = load_yaml(path)
        assert not list(validator.iter_errors(data)), path
        bad = dict(data, colour="blue")
        assert list(validator.iter_errors(bad)), "the schema must refuse unknown keys"


# ----------------------------------------------------------------------------- mutations

def _leaves(data, path=()):
    """Every (key path) of a nested structure, mappings and lists alike."""
    yield path
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _leaves(v, path + (i,))


def _set(data, path, value):
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                 st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
_COUNTER = itertools.count()
MUTATIONS = int(os.environ.get("DSE_MUTATIONS", "60"))
LOADERS = {"scenario": load_space, "device": lambda p: get_device(str(p)), "system": lambda p: get_system(str(p)),
           "facility": get_facility, "sizing": sz.load_sizing}


@settings(max_examples=MUTATIONS, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_random_mutations_load_or_fail_in_one_line(tmp_path, data):
    kind = data.draw(st.sampled_from(sorted(_files_by_kind())))
    src = data.draw(st.sampled_from(_files_by_kind()[kind]))
    doc = load_yaml(src)
    paths = [p for p in _leaves(doc) if p]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(JUNK)
    _set(doc, path, value)
    target = tmp_path / f"{next(_COUNTER)}_{src.name}"   # a new path each time: loaders cache by path
    target.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        LOADERS[kind](target)
    except DSEError as exc:
        msg = str(exc)
        assert "\n" not in msg and "Traceback" not in msg, msg
        assert msg.startswith(str(target)) or msg.startswith(("device:", "system:", "size:")), msg
        assert len(msg) < 600, msg
