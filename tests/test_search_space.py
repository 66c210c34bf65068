"""Scenario loading, the integer encoding, and every bad-scenario error."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dse import api
from dse.catalog.devices import get_device
from dse.errors import DSEError
from dse import cli
from dse.search.space import load_space

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
# sweep scenarios (other tools keep their own scenario files beside them, e.g. `dse size`)
SHIPPED = sorted(p for p in SPACES.glob("*.yaml") if "axes" in (yaml.safe_load(p.read_text()) or {}))
QUICK = load_space(SPACES / "quickstart.yaml")
MOE = load_space(SPACES / "moe_hetero.yaml")

BASE = {
    "name": "tiny",
    "model": "meta-llama/Llama-3.1-8B",
    "workload": {"isl": 1024, "osl": 128},
    "slos": {"tpot_ms": 50},
    "axes": {"device": ["h100_sxm", "b200_sxm"], "tp": [1, 2, 4], "batch_size": {"pow2": [1, 16]}},
}


def write(tmp_path: Path, data, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def with_(path: str, value, base=BASE):
    """A copy of `base` with the dotted key set (value None deletes it)."""
    data = yaml.safe_load(yaml.safe_dump(base))
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return data


# ----------------------------------------------------------------------------- shipped

@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenarios_load(path):
    space = load_space(path)
    assert space.size == sum(int(np.prod([a.size for a in m.axes])) for m in space.modes)
    assert space.size > 0 and 1 <= len(space.objectives) <= 4


def test_required_scenarios_ship():
    names = {p.stem for p in SHIPPED}
    assert {"quickstart", "moe_hetero", "rack_scale", "procurement", "bench_10m"} <= names
    assert {m.name for m in QUICK.modes} == {"agg", "disagg", "afd"}          # all modes
    assert QUICK.size < 200_000                                               # fast enough for the README
    assert load_space(SPACES / "bench_10m.yaml").size >= 10_000_000
    roles = {a.name for m in MOE.modes for a in m.axes}
    assert {"prefill_device", "decode_device", "attn_device", "ffn_device"} <= roles
    disagg = next(m for m in MOE.modes if m.name == "disagg")
    pre = next(a for a in disagg.axes if a.name == "prefill_device").values
    dec = next(a for a in disagg.axes if a.name == "decode_device").values
    assert set(pre) != set(dec)                                               # heterogeneous
    procurement = load_space(SPACES / "procurement.yaml")
    vendors = {get_device(d).vendor for d in next(a for a in procurement.genes if a.name == "device").values}
    assert len(vendors) >= 4
    assert {c.metric for c in procurement.constraints} >= {"capex_usd", "power_w"}


def test_defaults_and_resolution(tmp_path):
    space = load_space(write(tmp_path, BASE))
    assert [(o.name, o.direction) for o in space.objectives] == [
        ("e2e_ms", "min"), ("joules_per_token", "min"), ("usd_per_mtok", "min")]
    assert [m.name for m in space.modes] == ["agg"]
    assert space.size == 2 * 3 * 5
    assert dict(space.fixed)["isl"] == 1024 and dict(space.fixed)["tpot_slo_ms"] == 50.0
    assert space.model == "meta-llama/Meta-Llama-3.1-8B"          # alias resolved
    c = next(c for c in space.constraints if c.key == "slos.tpot_ms")
    assert (c.metric, c.bound, c.limit) == ("tpot_ms", "max", 50.0)


def test_range_forms_and_constraint_mapping(tmp_path):
    data = with_("axes.power_cap", {"linspace": [0.5, 1.0, 3]})
    data = with_("axes.batch_size", {"range": [8, 20, 4]}, data)
    data = with_("axes.pp", {"range": [1, 3]}, data)
    data["constraints"] = {"max_gpus": 8, "max_power_kw": 5, "budget_usd": 1e6,
                           "min": {"tokens_per_s": 100}, "own": False}
    data["objectives"] = [{"name": "tokens_per_s", "direction": "max"}, {"usd_per_mtok": "min"}, "tpot_ms"]
    space = load_space(write(tmp_path, data))
    values = {g.name: g.values for g in space.genes}
    assert values["power_cap"] == (0.5, 0.75, 1.0)
    assert values["batch_size"] == (8, 12, 16, 20)
    assert values["pp"] == (1, 2, 3)
    limits = {c.key: (c.metric, c.bound, c.limit) for c in space.constraints}
    assert limits["constraints.max_power_kw"] == ("power_w", "max", 5000.0)
    assert limits["constraints.budget_usd"] == ("capex_usd", "max", 1e6)
    assert limits["constraints.min.tokens_per_s"] == ("tokens_per_s", "min", 100.0)
    assert dict(space.fixed)["own"] is False
    assert [o.direction for o in space.objectives] == ["max", "min", "min"]


def test_facility_overrides_recorded(tmp_path):
    data = with_("constraints.facility", {"pue": 1.1, "usd_per_kwh": 0.05})
    space = load_space(write(tmp_path, data))
    assert dict(space.facility) == {"pue": 1.1, "usd_per_kwh": 0.05}
    assert space.resolved["facility"]["overrides"] == {"pue": 1.1, "usd_per_kwh": 0.05}
    assert space.facility_overrides().pue == 1.1


def test_facility_overrides_apply_in_the_sweep(tmp_path):
    """A higher $/kWh raises an owned deployment's usd_per_mtok by exactly the energy it buys:
    power x PUE x the price step, per token; a rented one does not move."""
    from dse.catalog.facility import get_facility
    from dse.search.evaluation import evaluate_batch

    base = with_("constraints.own", True)
    cheap = load_space(write(tmp_path, base, "cheap.yaml"))
    dear = load_space(write(tmp_path, with_("constraints.facility", {"usd_per_kwh": 0.30}, base), "dear.yaml"))
    idx = np.arange(cheap.size)
    a, _ = evaluate_batch(cheap, idx)
    b, _ = evaluate_batch(dear, idx)
    step = 0.30 - get_facility().usd_per_kwh
    ok = a.feasible.to_numpy()
    assert ok.sum() > 5
    want = a.power_w / 1e3 * get_facility().pue * step / (a.tokens_per_s * 3600.0) * 1e6
    got = b.usd_per_mtok - a.usd_per_mtok
    assert np.allclose(got[ok], want[ok], rtol=1e-9) and (want[ok] > 0).all()
    rented = load_space(write(tmp_path, with_("constraints.facility", {"usd_per_kwh": 0.30},
                                              with_("constraints.own", False)), "rent.yaml"))
    r0 = load_space(write(tmp_path, with_("constraints.own", False), "rent0.yaml"))
    assert np.array_equal(evaluate_batch(rented, idx)[0].usd_per_mtok, evaluate_batch(r0, idx)[0].usd_per_mtok)


def test_fingerprint_tracks_what_changes_results(tmp_path):
    a = load_space(write(tmp_path, BASE, "a.yaml"))
    b = load_space(write(tmp_path, with_("description", "other words"), "b.yaml"))
    c = load_space(write(tmp_path, with_("axes.tp", [1, 2]), "c.yaml"))
    assert a.fingerprint == b.fingerprint != c.fingerprint


# ----------------------------------------------------------------------------- encoding

@settings(max_examples=60, deadline=None)
@given(st.data())
def test_encoding_round_trips(data):
    """index -> columns -> index, index -> genes -> index, for a three-mode space."""
    for space in (QUICK, MOE):
        idx = np.array(data.draw(st.lists(st.integers(0, space.size - 1), min_size=1, max_size=50)))
        cols = space.decode(idx)
        np.testing.assert_array_equal(space.encode(cols), idx)
        np.testing.assert_array_equal(space.index(space.genotype(idx)), idx)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_gene_vector_is_a_valid_configuration(data):
    sizes = MOE.gene_sizes
    X = np.array([[data.draw(st.integers(0, int(s) - 1)) for s in sizes] for _ in range(5)])
    idx = MOE.index(X)
    assert ((idx >= 0) & (idx < MOE.size)).all()
    # genes that the row's mode reads decide the configuration; the others do not matter
    np.testing.assert_array_equal(MOE.index(MOE.genotype(idx)), idx)


def test_decode_is_mixed_radix_and_fills_other_modes_defaults():
    idx = np.arange(QUICK.size)
    cols = QUICK.decode(idx)
    assert len({tuple(str(cols[c][i]) for c in cols) for i in range(0, QUICK.size, 7)}) == len(range(0, QUICK.size, 7))
    agg = cols["mode"] == "agg"
    assert agg.sum() == QUICK.modes[0].size
    assert (cols["prefill_workers"][agg] == api.COLUMNS["prefill_workers"]).all()
    assert (cols["attn_gpus"][cols["mode"] != "afd"] == api.COLUMNS["attn_gpus"]).all()
    # the last axis varies fastest: consecutive agg indices differ in the last axis only
    last = QUICK.modes[0].axes[-1].name
    assert cols[last][0] != cols[last][1]
    assert all(cols[c][0] == cols[c][1] for c in cols if c != last)


def test_encode_rejects_values_outside_the_space():
    cols = QUICK.decode(np.array([0]))
    cols["device"] = np.array(["l40s"])
    with pytest.raises(DSEError, match="device='l40s' is not a value of the axis"):
        QUICK.encode(cols)


# ----------------------------------------------------------------------------- errors

BAD = [
    # (mutation, expected key path, expected words)
    ({"colour": "blue"}, "colour", "unknown key 'colour'; allowed: name, description, model"),
    (("axes.colour", [1]), "axes.colour", "unknown axis 'colour'; allowed: device"),
    (("axes.tp", ["two"]), "axes.tp[0]", "expected an integer, got 'two'"),
    (("axes.tp", [1.5]), "axes.tp[0]", "expected an integer"),
    (("axes.device", ["h100_sxm", "h999"]), "axes.device[1]", "unknown device 'h999'; known: a100_pcie, a100_sxm"),
    (("axes.weight_dtype", ["fp7"]), "axes.weight_dtype[0]", "unknown dtype 'fp7'; allowed: fp32"),
    (("axes.power_cap", [0.5, 1.5]), "axes.power_cap", "power_cap is a fraction of TDP"),
    (("axes.tp", []), "axes.tp", "empty list"),
    (("axes.tp", {"range": [8, 1]}), "axes.tp.range", "gives no values: the axis is empty"),
    (("axes.tp", {"pow2": [1]}), "axes.tp.pow2", "expected [lo, hi]"),
    (("axes.tp", {"steps": [1, 2]}), "axes.tp", "expected a list of values or one of"),
    (("axes.tp", [1, 1]), "axes.tp", "listed twice"),
    (("axes.mode", ["agg"]), "axes.mode", "list serving modes under modes:"),
    (("axes.device", None), "axes.device", "required: list the device values"),
    (("axes.own", [True, False]), "axes.own", "also fixed elsewhere", {"constraints": {"own": True}}),
    (("model", "acme/NoSuchModel-1B"), "model", "unknown model 'acme/NoSuchModel-1B'"),
    (("model", None), "model", "required: a model id"),
    (("model", 7), "model", "expected a string, got 7"),
    (("workload.context", 5), "workload.context", "unknown column 'context'; allowed: device"),
    (("workload.isl", [1, 2]), "workload.isl", "to sweep it, list it under axes:"),
    (("workload.isl", "long"), "workload.isl", "expected an integer, got 'long'"),
    (("modes", []), "modes", "empty"),
    (("modes", {}), "modes", "empty"),
    (("modes", ["agg", "turbo"]), "modes[1]", "unknown mode 'turbo'; allowed: agg, disagg, afd"),
    (("modes", ["agg", "agg"]), "modes[1]", "listed twice"),
    (("modes", {"turbo": {}}), "modes.turbo", "unknown mode 'turbo'; allowed: agg, disagg, afd"),
    (("objectives", ["speed"]), "objectives[0]", "unknown metric 'speed'; allowed: ttft_ms"),
    (("objectives", ["meets_slo"]), "objectives[0]", "is not a number"),
    (("objectives", [{"name": "e2e_ms", "direction": "down"}]), "objectives[0].direction", "expected one of min, max, got 'down'"),
    (("objectives", []), "objectives", "non-empty list"),
    (("objectives", ["e2e_ms", "e2e_ms"]), "objectives[1]", "listed twice"),
    (("objectives", ["e2e_ms", "tpot_ms", "ttft_ms", "power_w", "num_gpus"]), "objectives", "at most 4"),
    (("slos.latency", 5), "slos.latency", "unknown metric"),
    (("slos.tpot_ms", -5), "slos.tpot_ms", "expected a positive number"),
    (("constraints.gpu", 8), "constraints.gpu", "unknown key 'gpu' (did you mean 'gpus'?); allowed: gpus, max_gpus"),
    (("constraints.gpus", 0), "constraints.gpus", "expected a positive integer, got 0"),
    (("constraints.max_gpus", 2.5), "constraints.max_gpus", "expected an integer, got 2.5"),
    (("constraints.own", "yes"), "constraints.own", "expected true or false, got 'yes'"),
    (("constraints.facility", {"pue": 0.5}), "constraints.facility.pue", "expected a number >= 1.0, got 0.5"),
    (("constraints.facility", {"colour": 1}), "constraints.facility.colour", "unknown override 'colour'; allowed: pue"),
    (("constraints.max", {"speed": 1}), "constraints.max.speed", "unknown metric"),
    (("reference_point", {"e2e_ms": 1}), "reference_point", "one number per objective"),
    (("search.strategy", "random"), "search.strategy", "expected one of auto, grid, nsga2, optuna"),
    (("search.budget", 0), "search.budget", "expected a positive integer"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[1] + ":" + str(i) for i, c in enumerate(BAD)])
def test_bad_scenario_errors_name_file_key_and_allowed(tmp_path, case):
    change, key, words = case[0], case[1], case[2]
    data = yaml.safe_load(yaml.safe_dump(BASE))
    if isinstance(change, dict):
        data.update(change)
    else:
        data = with_(change[0], change[1], data)
    if len(case) > 3:
        data.update(case[3])
    path = write(tmp_path, data)
    with pytest.raises(DSEError) as err:
        load_space(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {key}: "), msg
    if words:
        assert words in msg, msg


@pytest.mark.parametrize("text, words", [
    ("axes: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping with keys name, description, model"),
])
def test_unreadable_scenarios(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(DSEError, match=re.escape(f"{path}: ") + ".*" + re.escape(words)):
        load_space(path)


def test_missing_file():
    with pytest.raises(DSEError, match="nope.yaml: no such scenario file"):
        load_space("nope.yaml")


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    path = write(tmp_path, with_("axes.device", ["h100_sxm", "h999"]))
    assert cli.main(["sweep", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"dse: error: {path}: axes.device[1]: unknown device 'h999'")
    assert not (tmp_path / "run").exists()
