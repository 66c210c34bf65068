"""Kernel family rules: one set of spec-normalised parameters per kernel family, fitted
jointly on several devices' measured tables, so that a device nobody measured (H200,
GB200, B300, H20, ...) is priced from its spec sheet.

Why: a per-device fit says what one GPU does; the rule says what the hardware family
does per unit of spec (tiles per SM, a decode CTA's stream rate as a share of the bandwidth, efficiencies
as fractions of the spec peak of each format, latency floors in clock cycles -- the forms are in
`dse.deploy.kernel_params.FORMS`). The test of a rule is a device it was not fitted on,
so `leave_one_out` fits on all devices but one and predicts that one, for every
device; it also carries the held-out device's sibling's own fit through the same
normalisation, and `carry` records per family which of the two predicts better (what
`load_params` then gives an uncalibrated device).

    python -m dse.fit.family_rules ../shared/calibration/kernels      # fit, print, write rules.yaml

The written file keeps the leave-one-out rules with a hash of what they were fitted on
(tables, spec figures, model code), so `validate_kernels --cross` and the tests reuse
them while they are current and refit otherwise.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import hashlib
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dse import io
from dse.catalog.devices import Device, get_device
from dse.deploy import kernel_params as KP
from dse.errors import DSEError
from dse.fit import calibrate as C

__all__ = ["Prepared", "prepare", "fit_rules", "sibling_of", "leave_one_out", "fit_all", "data_hash",
           "cached_leave_one_out", "write", "loo_lines", "main"]

# Bounds of the rule-unit parameters whose raw bounds depend on the device.
RULE_BOUNDS = {"per_sm": (0.05, 16.0), "us_at_bw": (0.01, 2000.0),
               "k_cycles": (0.5, 500.0)}


class Prepared:
    """One device's table of one family, turned into model arguments once."""

    def __init__(self, family: str, path: Path, df, device: Device):
        self.family, self.path, self.device = family, path, device
        self.fn, self.args, fmt = C.RECIPES[family].prepare(df, device)
        self.masks = None if fmt is None else {str(f): fmt == f for f in np.unique(fmt)}
        self.meas = df.latency.to_numpy(dtype=float)
        self.rows = len(df)

    def predict(self, raw: Mapping[str, float]) -> np.ndarray:
        return C._evaluate(self.fn, self.args, self.masks, raw)

    def predict_rule(self, rule: Mapping[str, float]) -> np.ndarray:
        return self.predict(KP.from_rule(self.family, dict(rule), self.device))


@functools.lru_cache(maxsize=None)
def _prepare(family: str, kernels_dir: str, device_id: str) -> Prepared | None:
    tables = C.read_tables(kernels_dir)
    if family not in tables:
        return None
    path, df = tables[family]
    return Prepared(family, path, df, get_device(device_id))


def prepare(family: str, root: str | Path, devices: list[str]) -> list[Prepared]:
    """The family's table of every device (root/<device>/) that has one."""
    out = [_prepare(family, str(Path(root) / d), d) for d in devices]
    return [p for p in out if p is not None]


def _free(family: str, data: list[Prepared]) -> dict[str, tuple[float, float, float]]:
    """Name -> (start, low, high) in rule units, per-format copies for every format present."""
    recipe = C.RECIPES[family]
    free = {}
    for name, (start, lo, hi) in recipe.free.items():
        form = KP.FORMS[family].get(name)
        if form:
            lo, hi = RULE_BOUNDS[form]
            start = float(np.clip(start / KP._scale(form, data[0].device), lo * 1.01, hi / 1.01))
        free[name] = (start, lo, hi)
    formats = sorted(set().union(*[set(p.masks or {}) for p in data]) - {"bf16"})
    for name in recipe.per_format:
        for key in formats:
            free[f"{name}.{key}"] = free[name]
    return free


def _start(family: str, data: list[Prepared], free: dict) -> dict[str, float]:
    """Geometric mean of the training devices' own shipped fits in rule units (a start
    near the joint optimum), else the recipe's start."""
    own = [KP._calibration(p.device.id) for p in data]
    rules = [KP.to_rule(family, o[family], p.device) for o, p in zip(own, data) if o and family in o]
    out = {}
    for k, (s, lo, hi) in free.items():
        vals = [r[k] for r in rules if k in r] or [r[k.split(".")[0]] for r in rules if k.split(".")[0] in r]
        v = float(np.exp(np.mean(np.log(vals)))) if vals else s
        out[k] = float(np.clip(v, lo * 1.01, hi / 1.01))
    return out


def fit_rules(family: str, data: list[Prepared], *, rounds: int = 2) -> dict[str, float]:
    """Rule parameters minimising the mean over devices of each device's mean capped
    |log error|: every device counts the same, whatever its row count."""
    recipe = C.RECIPES[family]
    free = _free(family, data)
    start = _start(family, data, free)

    def loss(rule: dict[str, float]) -> float:
        return float(np.mean([np.mean(np.minimum(C.log_error(p.predict_rule(rule), p.meas), C.LOSS_CAP))
                              for p in data]))

    return C.search(recipe.grid, free, start, loss, rounds=rounds)


def sibling_of(device_id: str, others: list[str]) -> str:
    """The device whose own fit stands in for `device_id`: its calibration_from when that is
    among `others`, else the one of the same vendor nearest in bf16 peak (log scale)."""
    dev = get_device(device_id)
    if dev.calibration_from in others:
        return dev.calibration_from
    cands = [o for o in others if get_device(o).vendor == dev.vendor] or list(others)
    return min(cands, key=lambda o: (abs(np.log(get_device(o).peak_tflops["bf16"] / dev.peak_tflops["bf16"])), o))


def _seen_rows(target: Prepared, train: list[Prepared]) -> np.ndarray | None:
    """Rows of the target whose format some training device measured (None: all are)."""
    if target.masks is None:
        return None
    seen = set().union(*[set(p.masks or {}) for p in train])
    if set(target.masks) <= seen:
        return None
    return np.any([m for f, m in target.masks.items() if f in seen] or [np.zeros(target.rows, bool)], axis=0)


def _errors(p: Prepared, raw: Mapping[str, float]) -> dict[str, float]:
    return C.error_summary(p.predict(raw), p.meas)


def data_hash(family: str, data: list[Prepared]) -> str:
    """What a fit of `family` on `data` depends on: the tables' bytes, the spec figures the
    model reads, the kernel model's source, how a table becomes model arguments (the
    calibrate module's source, and the dtype / kernel-variant maps as they stand), the
    recipe and the forms."""
    h = hashlib.sha256()
    for p in sorted(data, key=lambda q: q.device.id):
        d = p.device
        h.update(Path(p.path).read_bytes())
        h.update(repr((d.id, sorted(d.peak_tflops.items()), d.memory_tb_s, d.scaleup_gb_s, d.sm_count,
                       KP.clock_ghz(d))).encode())
    recipe = C.RECIPES[family]
    h.update(inspect.getsource(C.K).encode())
    h.update(inspect.getsource(C).encode())
    h.update(repr((C.GEMM_DTYPES, C.MOE_DTYPES, C.MOE_VARIANTS, C.KV_BYTES, C.NCCL_OPS, C.NCCL_ELEMENT_BYTES,
                   C.LOSS_CAP)).encode())
    h.update(repr((sorted(recipe.free.items()), sorted(recipe.grid.items()), recipe.per_format,
                   sorted(KP.FORMS[family].items()), RULE_BOUNDS)).encode())
    return h.hexdigest()[:16]


def leave_one_out(root: str | Path, devices: list[str], families=C.FAMILIES,
                  cache: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """{held-out device: {family: {"hash", "fit_on", "rules", "rule", "sibling_from", "sibling",
    "raw_sibling"}}}: the rule fitted on the other devices and the sibling's own fit (carried
    through the normalisation, and raw as it was inherited before), scored on the held-out
    device's table. Entries of `cache` whose hash still matches are reused."""
    out: dict[str, dict[str, Any]] = {}
    for held in devices:
        others = [d for d in devices if d != held]
        sib_id = sibling_of(held, others)
        sib_own = KP._calibration(sib_id) or {}
        out[held] = {}
        for fam in families:
            target = prepare(fam, root, [held])
            train = prepare(fam, root, others)
            if not target or not train:
                continue
            h = data_hash(fam, train + target)
            entry = dict((cache or {}).get(held, {}).get(fam) or {})
            if entry.get("hash") != h:
                entry = {"hash": h, "fit_on": [p.device.id for p in train],
                         "rules": fit_rules(fam, train)}
            rules = entry["rules"]
            raw = KP.from_rule(fam, rules, target[0].device)
            entry["rule"] = _errors(target[0], raw)
            seen = _seen_rows(target[0], train)
            if seen is not None:       # rows of formats no training device measured fall back
                entry["rule_seen_formats"] = C.error_summary(target[0].predict(raw)[seen], target[0].meas[seen])
            entry["sibling_from"] = sib_id
            if fam in sib_own:
                carried = KP.carried_params(target[0].device, {fam: rules},
                                            (get_device(sib_id), {fam: sib_own[fam]}), {fam: "sibling"})
                entry["sibling"] = _errors(target[0], carried[fam])
                entry["raw_sibling"] = _errors(target[0], sib_own[fam])
            out[held][fam] = entry
    return out


def _carry(loo: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Per family, 'sibling' when carrying the sibling's fit has the lower mean
    leave-one-out median APE over the held-out devices, else 'rule'."""
    out = {}
    for fam in C.FAMILIES:
        rows = [e[fam] for e in loo.values() if fam in e and "sibling" in e[fam]]
        if rows:
            rule = np.mean([r["rule"]["median_ape"] for r in rows])
            sib = np.mean([r["sibling"]["median_ape"] for r in rows])
            out[fam] = "sibling" if sib < rule else "rule"
    return out


def fit_all(root: str | Path, devices: list[str], cache: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Rules fitted on every device, the leave-one-out evidence, and the carry choice."""
    rules, hashes, rows = {}, {}, {}
    for fam in C.FAMILIES:
        data = prepare(fam, root, devices)
        if not data:
            continue
        hashes[fam] = data_hash(fam, data)
        old = (cache or {}).get("data", {}).get("hash", {}).get(fam)
        cached_rules = (cache or {}).get("rules", {}).get(fam)
        rules[fam] = cached_rules if old == hashes[fam] and cached_rules else fit_rules(fam, data)
        rows[fam] = {p.device.id: p.rows for p in data}
    loo = leave_one_out(root, devices, cache=(cache or {}).get("leave_one_out"))
    return {"devices": list(devices), "hash": hashes, "rows": rows, "rules": rules,
            "leave_one_out": loo, "carry": _carry(loo)}


def _read(path: Path | None = None) -> dict[str, Any]:
    path = path or KP.rules_path()
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def cached_leave_one_out(root: str | Path, devices: list[str], families=C.FAMILIES) -> dict[str, Any]:
    """leave_one_out, reusing the shipped rules file's folds whose hash still matches."""
    return leave_one_out(root, devices, families, cache=_read().get("leave_one_out"))


def write(result: Mapping[str, Any], path: Path | None = None) -> Path:
    """The rules file, with provenance and the leave-one-out evidence."""
    path = path or KP.rules_path()
    doc = {
        "provenance": {
            "tool": "python -m dse.fit.family_rules",
            "date": _dt.date.today().isoformat(),
            "attribution": C.ATTRIBUTION,
            "sources": {fam: {d: {"path": f"shared/calibration/kernels/{d}/{fam}.csv.gz", "rows": n}
                              for d, n in r.items()} for fam, r in result["rows"].items()},
            "method": (f"numpy Nelder-Mead on the rule-unit parameters, minimising the mean over devices of "
                       f"each device's mean min(|log(model/measured)|, {C.LOSS_CAP}); tile sizes by grid; "
                       "started from the geometric mean of the devices' own fits"),
            "forms": {f"{fam}.{k}": KP.FORM_UNITS[v] for fam, d in KP.FORMS.items() for k, v in d.items()},
            "carry": ("what an uncalibrated device gets per family: 'rule' (the rules on its spec sheet) or "
                      "'sibling' (its calibration_from device's own fit carried through the same forms), "
                      "whichever has the lower mean leave-one-out median APE"),
        },
        "data": {"devices": result["devices"], "hash": result["hash"]},
        "carry": result["carry"],
        "rules": result["rules"],
        "leave_one_out": result["leave_one_out"],
    }
    io.write_text(path, yaml.safe_dump(doc, sort_keys=False, width=110))
    KP.load_rules.cache_clear()
    return path


def loo_lines(loo: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The leave-one-device-out table: rule, carried sibling, and the raw sibling (the old
    inheritance), median APE / MAPE in percent."""
    head = (f"{'device':<10} {'family':<21} {'rows':>6} {'rule med':>9} {'MAPE':>6} {'seen fmt':>9}   "
            f"{'sibling':<9} {'carried':>8} {'raw sib':>8}")
    lines = [head]
    nan = {"median_ape": float("nan")}
    for dev, fams in loo.items():
        for fam, e in fams.items():
            r = e["rule"]
            seen = e.get("rule_seen_formats", r)["median_ape"]
            sib = e.get("sibling", nan)["median_ape"]
            raw = e.get("raw_sibling", nan)["median_ape"]
            lines.append(f"{dev:<10} {fam:<21} {r['n']:>6} {r['median_ape']:>9.1f} {r['mape']:>6.1f} "
                         f"{seen:>9.1f}   {e['sibling_from']:<9} {sib:>8.1f} {raw:>8.1f}")
    lines.append("seen fmt: median APE over the rows whose format some training device measured "
                 "(the others fall back along kernels.format_chain)")
    return lines


def main(argv: list[str] | None = None) -> int:
    """python -m dse.fit.family_rules KERNELS_ROOT [--devices ...] [--refit] [--check]"""
    ap = argparse.ArgumentParser(prog="python -m dse.fit.family_rules", description=__doc__.split("\n")[0])
    ap.add_argument("kernels_root", help="directory holding one sub-directory of tables per device")
    ap.add_argument("--devices", nargs="*", help="device ids (default: every sub-directory)")
    ap.add_argument("--refit", action="store_true", help="ignore the shipped file's cached fits")
    ap.add_argument("--out", default=None, help="write here instead of hardware/calibration/rules.yaml")
    args = ap.parse_args(argv)
    root = Path(args.kernels_root)
    try:
        if not root.is_dir():
            raise DSEError(f"{root}: not a directory of per-device kernel tables")
        devices = args.devices or sorted(p.name for p in root.iterdir() if p.is_dir())
        result = fit_all(root, devices, cache=None if args.refit else _read())
        path = write(result, Path(args.out) if args.out else None)
    except DSEError as exc:
        print(f"dse: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(loo_lines(result["leave_one_out"])))
    print("carry:", result["carry"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
