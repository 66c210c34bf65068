"""Hardware catalog: shipped devices, systems and facility load; bad files are rejected."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dse.catalog import devices, facility, systems
from dse.catalog.devices import get_device
from dse.catalog.facility import get_facility
from dse.catalog.systems import get_system
from dse.deploy.kernel_params import calibration_dir
from dse.errors import DSEError

EXPECTED_DEVICES = {
    "a100_sxm", "h100_sxm", "h100_pcie", "h200_sxm", "h20", "b200_sxm", "b300_sxm", "gb200",
    "gb300", "mi300x", "mi325x", "mi355x", "l40s", "gaudi3", "ascend_910c", "tpu_v5e", "tpu_v6e",
    "a100_pcie", "a30", "l4", "rtx_pro_6000_server", "b60",
}
EXPECTED_SYSTEMS = {"hgx8", "pcie8", "nvl72", "gb300_nvl72", "cloudmatrix384", "tpu_v5e_pod",
                    "tpu_v6e_pod"}
FAMILIES = {"hopper", "ampere", "ada", "blackwell", "blackwell_rtx", "cdna3", "cdna4", "gaudi3", "ascend", "tpu",
            "xe2"}
DEVICE_IDS = devices.device_ids()
SYSTEM_IDS = systems.system_ids()


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _raw_device(ref: str) -> dict:
    return yaml.safe_load((devices._devices_dir() / f"{ref}.yaml").read_text())


# ---------------------------------------------------------------- shipped devices

def test_expected_devices_and_systems_ship():
    assert EXPECTED_DEVICES <= set(DEVICE_IDS)
    assert EXPECTED_SYSTEMS <= set(SYSTEM_IDS)


@pytest.mark.parametrize("ref", DEVICE_IDS)
def test_every_device_loads_with_bf16_and_a_known_system(ref):
    d = get_device(ref)
    assert d.id == ref == Path(d.path).stem
    assert d.peak_tflops["bf16"] > 0
    assert set(d.peak_tflops) <= set(devices.COMPUTE_FORMATS)
    assert d.family in FAMILIES
    assert d.system in SYSTEM_IDS, f"{ref}: system {d.system!r} has no file in hardware/systems"
    get_system(d.system)
    assert 0 < d.idle_w < d.tdp_w
    assert d.memory_gb > 0 and d.memory_tb_s > 0 and d.price_usd > 0 and d.rent_usd_per_hour > 0
    for field in devices.SOURCED:
        if getattr(d, field) is not None:       # sm_count is optional (TPU, Gaudi, Ascend)
            assert d.sources[field].strip(), f"{ref}: sources.{field} is empty"


MEASURED = {p.stem for p in calibration_dir().glob("*.yaml")} - {"defaults", "rules"}


@pytest.mark.parametrize("ref", DEVICE_IDS)
def test_calibration_comes_from_a_measured_device(ref):
    """A device without kernel tables of its own borrows from one that has them, of its own
    architecture family where one was measured (so its fit is carried whole)."""
    d = get_device(ref)
    if ref in ("h100_sxm", "b200_sxm"):
        assert d.calibration_from == ""
    elif ref not in MEASURED:
        assert d.calibration_from in MEASURED, ref
        same = {m for m in MEASURED if get_device(m).family == d.family}
        assert not same or d.calibration_from in same, (ref, same)


@pytest.mark.parametrize("ref", DEVICE_IDS)
def test_estimates_are_labelled(ref):
    """A number without a shared/reference or search citation must say it is an estimate."""
    for field, text in get_device(ref).sources.items():
        cited = re.search(r"hardware_specs\.csv|README\.md|search|docs\.|\.com|\.ai|arXiv|"
                          r"MLPerf|Google Cloud", text)
        assert cited or text.startswith("estimate"), f"{ref}: sources.{field}: {text!r}"


def test_native_format_support():
    assert "fp8" not in get_device("a100_sxm").peak_tflops
    assert get_device("a100_sxm").peak_tflops["int8"] == 624
    assert "fp8" in get_device("l40s").peak_tflops
    assert "fp8" in get_device("h20").peak_tflops
    for tpu in ("tpu_v5e", "tpu_v6e"):
        assert "int8" in get_device(tpu).peak_tflops and "fp8" not in get_device(tpu).peak_tflops
    assert "int8" not in get_device("gaudi3").peak_tflops
    assert "fp8" not in get_device("ascend_910c").peak_tflops
    for blackwell in ("b200_sxm", "b300_sxm", "gb200", "gb300", "mi355x"):
        assert "fp4" in get_device(blackwell).peak_tflops
    for no_fp4 in ("h100_sxm", "h200_sxm", "mi300x", "mi325x", "gaudi3"):
        assert "fp4" not in get_device(no_fp4).peak_tflops


def test_dense_not_sparse_figures():
    # Dense figures only: the vendors' headline sparse numbers are twice these.
    assert get_device("h100_sxm").peak_tflops["bf16"] == 989
    assert get_device("l40s").peak_tflops["bf16"] == 362
    assert get_device("mi300x").peak_tflops["fp8"] == 2615
    for ref in DEVICE_IDS:
        p = get_device(ref).peak_tflops
        if "fp8" in p:
            assert 1.0 <= p["fp8"] / p["bf16"] <= 2.05, ref


def test_pcie_cards_use_pcie_as_scaleup_path():
    for ref in ("h100_pcie", "l40s"):
        d = get_device(ref)
        assert d.system == "pcie8"
        assert 30 <= d.scaleup_gb_s <= 64
        assert "PCIe" in d.sources["scaleup_gb_s"]


def test_rack_scale_devices_sit_in_their_domains():
    assert get_system(get_device("gb200").system).scaleup_domain == 72
    assert get_system(get_device("gb300").system).scaleup_domain == 72
    assert get_system(get_device("ascend_910c").system).scaleup_domain == 384
    assert get_system(get_device("tpu_v6e").system).scaleup_domain == 256
    assert get_system(get_device("h100_sxm").system).scaleup_domain == 8


def test_tpu_price_is_labelled_estimate():
    for tpu in ("tpu_v5e", "tpu_v6e"):
        assert get_device(tpu).sources["price_usd"].startswith("estimate")
        assert "not sold" in get_device(tpu).sources["price_usd"]


# ------------------------------------------------------- derived / bad device files

def test_hypothetical_device_inherits_from_base(tmp_path):
    path = _write(tmp_path / "h100_fastmem.yaml", {
        "base": "h100_sxm",
        "id": "h100_fastmem",
        "name": "H100 with 8 TB/s HBM (what-if)",
        "hypothetical": True,
        "memory_tb_s": 8.0,
        "sources": {"memory_tb_s": "what-if: HBM3e at B200 bandwidth"},
    })
    d = get_device(str(path))
    base = get_device("h100_sxm")
    assert d.memory_tb_s == 8.0
    assert d.id == "h100_fastmem" and d.hypothetical
    assert d.peak_tflops == base.peak_tflops
    assert d.memory_gb == base.memory_gb and d.tdp_w == base.tdp_w and d.system == base.system
    assert d.calibration_from == "h100_sxm"
    assert d.sources["memory_tb_s"] == "what-if: HBM3e at B200 bandwidth"
    assert d.sources["tdp_w"] == base.sources["tdp_w"]


def test_unknown_device_field_names_file_and_field(tmp_path):
    data = _raw_device("h100_sxm")
    data["id"] = "bad_field"
    data["memory_gbs"] = 80
    path = _write(tmp_path / "bad_field.yaml", data)
    with pytest.raises(DSEError) as err:
        get_device(str(path))
    msg = str(err.value)
    assert str(path) in msg and "'memory_gbs'" in msg
    assert "\n" not in msg


def test_missing_device_source_raises(tmp_path):
    data = _raw_device("h100_sxm")
    data["id"] = "no_source"
    del data["sources"]["idle_w"]
    path = _write(tmp_path / "no_source.yaml", data)
    with pytest.raises(DSEError, match=r"sources\.idle_w"):
        get_device(str(path))


def test_device_without_bf16_or_with_bad_format_raises(tmp_path):
    data = _raw_device("h100_sxm")
    data["id"] = "nobf16"
    data["peak_tflops"] = {"fp8": 1979}
    with pytest.raises(DSEError, match=r"peak_tflops\.bf16"):
        get_device(str(_write(tmp_path / "nobf16.yaml", data)))
    data["id"] = "fp6"
    data["peak_tflops"] = {"bf16": 989, "fp6": 3000}
    with pytest.raises(DSEError, match=r"peak_tflops\.fp6"):
        get_device(str(_write(tmp_path / "fp6.yaml", data)))


# ---------------------------------------------------------------------- systems

@pytest.mark.parametrize("ref", SYSTEM_IDS)
def test_every_system_loads(ref):
    s = get_system(ref)
    assert s.id == ref == Path(s.path).stem
    assert s.gpus_per_node >= 1 and s.scaleup_domain >= 1
    assert s.host_power_w > 0 and s.host_price_usd > 0
    for field in systems.SOURCED:
        if field != "rack_power_kw" or s.rack_power_kw is not None:
            assert s.sources[field].strip(), f"{ref}: sources.{field} is empty"


def test_system_figures():
    assert get_system("hgx8").host_power_w == 10200 - 8 * 700
    nvl72 = get_system("nvl72")
    assert (nvl72.gpus_per_node, nvl72.scaleup_domain) == (4, 72)
    assert nvl72.rack_power_kw is not None and 100 <= nvl72.rack_power_kw <= 140
    assert get_system("cloudmatrix384").scaleup_domain == 384
    assert get_system("pcie8").host_power_w_per_gpu == pytest.approx(1850 / 8)


def _system_data(**changes) -> dict:
    data = yaml.safe_load((systems._systems_dir() / "hgx8.yaml").read_text())
    data.update(changes)
    return data


def test_system_unknown_field_names_file_and_field(tmp_path):
    path = _write(tmp_path / "s1.yaml", _system_data(id="s1", gpus_per_rack=32))
    with pytest.raises(DSEError) as err:
        get_system(str(path))
    assert str(path) in str(err.value) and "'gpus_per_rack'" in str(err.value)


def test_system_missing_field_and_source(tmp_path):
    data = _system_data(id="s2")
    del data["host_price_usd"]
    with pytest.raises(DSEError, match=r"missing field 'host_price_usd'"):
        get_system(str(_write(tmp_path / "s2.yaml", data)))
    data = _system_data(id="s3", rack_power_kw=40)
    with pytest.raises(DSEError, match=r"sources\.rack_power_kw"):
        get_system(str(_write(tmp_path / "s3.yaml", data)))


@pytest.mark.parametrize("field,value,pattern", [
    ("gpus_per_node", 8.0, r"gpus_per_node: expected an integer, got (8.0|True)"),
    ("gpus_per_node", True, r"gpus_per_node: expected an integer, got (8.0|True)"),
    ("scaleup_domain", 0, r"scaleup_domain: expected an integer >= 1"),
    ("scaleup_domain", 12, r"scaleup_domain: 12 must divide or be a multiple"),
    ("host_power_w", "4.6 kW", r"host_power_w: expected a number, got .4.6 kW."),
    ("host_price_usd", -1, r"host_price_usd: expected a non-negative number"),
])
def test_system_wrong_values(tmp_path, field, value, pattern):
    path = _write(tmp_path / f"bad_{field}.yaml", _system_data(id="bad", **{field: value}))
    with pytest.raises(DSEError, match=pattern) as err:
        get_system(str(path))
    assert str(path) in str(err.value)


def test_unknown_system_id_lists_known():
    with pytest.raises(DSEError, match=r"unknown system 'dgx9'.*hgx8"):
        get_system("dgx9")


# ---------------------------------------------------------------------- facility

def test_default_facility():
    f = get_facility()
    assert 1.0 <= f.pue <= 2.0
    assert 0.02 <= f.usd_per_kwh <= 0.5
    assert 3 <= f.amortization_years <= 7
    assert f.facility_usd_per_kw_month > 0 and f.rack_power_kw > 0
    for field in facility.NUMBERS:
        assert f.sources[field].strip()


def test_facility_overrides():
    base = get_facility()
    f = get_facility(pue=1.1, usd_per_kwh=0.05)
    assert (f.pue, f.usd_per_kwh) == (1.1, 0.05)
    assert f.rack_power_kw == base.rack_power_kw
    assert f.sources["pue"].startswith("override") and f.sources["rack_power_kw"] == base.sources["rack_power_kw"]
    assert get_facility().pue == base.pue  # the cached default is not mutated


def test_facility_rejects_bad_overrides():
    with pytest.raises(DSEError) as err:
        get_facility(puee=1.2)
    assert "'puee'" in str(err.value) and "usd_per_kwh" in str(err.value)
    with pytest.raises(DSEError, match=r"pue: expected a number >= 1"):
        get_facility(pue=0.9)
    with pytest.raises(DSEError, match=r"amortization_years: expected a number"):
        get_facility(amortization_years="five")


def test_facility_file_errors(tmp_path):
    good = yaml.safe_load(facility._default_path().read_text())
    bad = dict(good, colo_usd=100)
    path = _write(tmp_path / "site.yaml", bad)
    with pytest.raises(DSEError) as err:
        get_facility(path)
    assert str(path) in str(err.value) and "'colo_usd'" in str(err.value)
    no_src = dict(good, sources={k: v for k, v in good["sources"].items() if k != "pue"})
    with pytest.raises(DSEError, match=r"sources\.pue"):
        get_facility(_write(tmp_path / "site2.yaml", no_src))
    missing = {k: v for k, v in good.items() if k != "usd_per_kwh"}
    with pytest.raises(DSEError, match=r"missing field 'usd_per_kwh'"):
        get_facility(_write(tmp_path / "site3.yaml", missing))
    custom = get_facility(_write(tmp_path / "site4.yaml", dict(good, pue=1.12)))
    assert custom.pue == 1.12
