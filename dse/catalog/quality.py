"""Answer-quality cost of a quantized deployment: sourced measurements and a lookup.

`hardware/quality.yaml` holds measured drops in benchmark score (percentage points) for
weight and KV-cache formats, each with its source, plus a rule for models nobody has
measured: per format x size class x dense/MoE, derived from those rows by `derive_rules`
(so the rule is never typed in by hand). `quality_loss` turns a model and its formats
into (expected loss, p90 loss); the loss is relative to the checkpoint as released, so a
model that ships quantized loses nothing at its native format.
"""
from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from dse.catalog import dtypes
from dse.catalog.models import Model, get_model
from dse.catalog.yamlfile import read_mapping
from dse.errors import DSEError

__all__ = ["Row", "QualityTable", "load_quality", "derive_rules", "quality_loss", "size_class",
           "WEIGHT_FORMATS", "KV_FORMATS", "SIZES", "ARCHS"]

WEIGHT_FORMATS = ("fp8", "int8", "int8_wo", "int4", "fp4")
KV_FORMATS = ("fp8", "int8", "int4")
PARTS = {"weights": WEIGHT_FORMATS, "kv": KV_FORMATS}
SIZES = ("<10B", "10-100B", ">100B")          # total parameters
ARCHS = ("dense", "moe")
# storage bits, to tell an upcast of a native checkpoint (lossless) from a re-quantization
BITS = {"fp32": 32, "bf16": 16, "fp8": 8, "int8": 8, "int8_wo": 8, "fp4": 4, "int4": 4}
_WEIGHT_ALIASES = {"int8_wo": "int8_wo", "w8a16": "int8_wo"}   # formats dtypes.normalize folds away
P90_MIN_ROWS = 3    # fewer rows than this: p90 = loss + the format-wide spread

ROW_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "id": (str, True), "model": (str, True), "checkpoint": (str, False), "params_b": ((int, float), True),
    "moe": (bool, True), "part": (str, True), "format": (str, True), "scheme": (str, False),
    "baseline_format": (str, True), "benchmark": (str, True), "baseline": ((int, float, list), False),
    "quantized": ((int, float, list), False), "loss_pp": ((int, float), False), "bound": (str, False),
    "note": (str, False), "source": (str, True)}
SOURCE_FIELDS = ("title", "year", "url", "where")


@dataclasses.dataclass(frozen=True)
class Row:
    """One sourced measurement: the drop of one model at one format."""
    id: str
    model: str
    part: str
    format: str
    params_b: float
    moe: bool
    loss_pp: float
    baseline_format: str
    source: str
    checkpoint: str = ""
    bound: str = ""          # "upper": the source only bounds the loss from above

    @property
    def expected(self) -> float:
        """The loss to average: a bound b alone says the loss lies in [0, b]; with nothing
        else known (a uniform prior) its expectation is b / 2."""
        return self.loss_pp / 2.0 if self.bound == "upper" else self.loss_pp

    @property
    def high(self) -> float:
        """The row's contribution to the p90: the 90th percentile of [0, b] for a bound."""
        return 0.9 * self.loss_pp if self.bound == "upper" else self.loss_pp

    @property
    def cell(self) -> tuple[str, str]:
        return size_class(self.params_b * 1e9), "moe" if self.moe else "dense"


@dataclasses.dataclass(frozen=True)
class QualityTable:
    rows: tuple[Row, ...]
    rules: dict[str, dict[str, dict[str, dict[str, Any]]]]    # part -> format -> cell -> rule
    sources: dict[str, dict[str, Any]]
    path: str = ""


def size_class(total_params: float) -> str:
    """Size class of a model by total parameter count."""
    return SIZES[0] if total_params < 10e9 else SIZES[1] if total_params <= 100e9 else SIZES[2]


def cell_key(size: str, arch: str) -> str:
    return f"{size} {arch}"


def _default_path() -> Path:
    return Path(str(resources.files("dse.hardware"))) / "quality.yaml"


def _mean(where: str, val: Any) -> float:
    vals = val if isinstance(val, list) else [val]
    if not vals or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in vals):
        raise DSEError(f"{where}: expected a number or a list of numbers, got {val!r}")
    return float(np.mean(vals))


def _check_fields(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise DSEError(f"{where}: expected a mapping of fields, got {raw!r}")
    unknown = sorted(set(raw) - set(ROW_FIELDS))
    if unknown:
        raise DSEError(f"{where}: unknown field {unknown[0]!r}; allowed: {', '.join(ROW_FIELDS)}")
    for name, (typ, required) in ROW_FIELDS.items():
        if name not in raw:
            if required:
                raise DSEError(f"{where}: missing field {name!r}")
            continue
        val = raw[name]
        if (typ is not bool and isinstance(val, bool)) or not isinstance(val, typ):
            raise DSEError(f"{where}.{name}: expected {getattr(typ, '__name__', 'a number')}, got {val!r}")
    return raw


def _parse_row(where: str, raw: Any, sources: dict[str, Any]) -> Row:
    raw = _check_fields(where, raw)
    part = raw["part"]
    if part not in PARTS:
        raise DSEError(f"{where}.part: {part!r}; allowed: {', '.join(PARTS)}")
    if raw["format"] not in PARTS[part]:
        raise DSEError(f"{where}.format: {raw['format']!r}; allowed for {part}: {', '.join(PARTS[part])}")
    if raw["baseline_format"] not in ("bf16", "fp8"):
        raise DSEError(f"{where}.baseline_format: {raw['baseline_format']!r}; allowed: bf16, fp8")
    if raw["params_b"] <= 0:
        raise DSEError(f"{where}.params_b: expected a positive number, got {raw['params_b']!r}")
    if not str(raw["source"]).strip():
        raise DSEError(f"{where}.source: every row needs its source")
    if raw["source"] not in sources:
        raise DSEError(f"{where}.source: {raw['source']!r} is not a key of sources")
    if "loss_pp" in raw:
        if "baseline" in raw or "quantized" in raw:
            raise DSEError(f"{where}: give loss_pp or baseline + quantized, not both")
        loss = float(raw["loss_pp"])
    elif "baseline" in raw and "quantized" in raw:
        b, q = raw["baseline"], raw["quantized"]
        if isinstance(b, list) != isinstance(q, list) or (isinstance(b, list) and len(b) != len(q)):
            raise DSEError(f"{where}: baseline and quantized must both be numbers or lists of one length")
        loss = _mean(f"{where}.baseline", b) - _mean(f"{where}.quantized", q)
    else:
        raise DSEError(f"{where}: missing field 'loss_pp' (or 'baseline' and 'quantized')")
    return Row(id=raw["id"], model=raw["model"], part=part, format=raw["format"], params_b=float(raw["params_b"]),
               moe=raw["moe"], loss_pp=loss, baseline_format=raw["baseline_format"], source=raw["source"],
               checkpoint=raw.get("checkpoint", ""), bound=_bound(where, raw.get("bound", "")))


def _bound(where: str, val: Any) -> str:
    if val not in ("", "upper"):
        raise DSEError(f"{where}.bound: {val!r}; allowed: upper (the source bounds the loss from above)")
    return val


def _parse_sources(path: Path, raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict) or not raw:
        raise DSEError(f"{path}: sources: expected a mapping of source id -> title, year, url, where")
    for key, src in raw.items():
        if not isinstance(src, dict):
            raise DSEError(f"{path}: sources.{key}: expected a mapping, got {src!r}")
        for f in SOURCE_FIELDS:
            if not str(src.get(f, "")).strip():
                raise DSEError(f"{path}: sources.{key}: missing field {f!r} (every source needs title, year, url, where)")
        if not (src.get("authors") or src.get("publisher")):
            raise DSEError(f"{path}: sources.{key}: missing field 'authors' or 'publisher'")
    return raw


def parse_rows(path: Path | str, data: dict[str, Any]) -> tuple[tuple[Row, ...], dict[str, dict[str, Any]]]:
    """The rows and sources of a quality file's contents, validated."""
    sources = _parse_sources(Path(path), data.get("sources"))
    raw_rows = data.get("rows")
    if not isinstance(raw_rows, list) or not raw_rows:
        raise DSEError(f"{path}: rows: expected a list of measurements")
    rows, seen = [], set()
    for i, raw in enumerate(raw_rows):
        rid = raw.get("id", i) if isinstance(raw, dict) else i
        row = _parse_row(f"{path}: rows[{rid}]", raw, sources)
        if row.id in seen:
            raise DSEError(f"{path}: rows[{row.id}]: duplicate id")
        seen.add(row.id)
        rows.append(row)
    return tuple(rows), sources


def _pool(rows: list[Row], size: str, arch: str) -> tuple[str, list[Row]]:
    """The rows a cell's rule summarises: its own, else its size, else its arch, else all."""
    for label, keep in ((cell_key(size, arch), lambda r: r.cell == (size, arch)),
                        (cell_key(size, "any"), lambda r: r.cell[0] == size),
                        (cell_key("any", arch), lambda r: r.cell[1] == arch),
                        ("all", lambda r: True)):
        chosen = [r for r in rows if keep(r)]
        if chosen:
            return label, chosen
    return "all", rows


def derive_rules(rows: tuple[Row, ...] | list[Row]) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """Rule per part, format and size x arch cell: mean loss (>= 0) and p90 of the rows it pools
    (a row that only bounds the loss counts as half its bound, and as 0.9 of it for the p90).

    A cell with fewer than P90_MIN_ROWS rows takes the format-wide spread (p90 - mean of all
    that format's rows) on top of its own mean, so one lucky row does not claim certainty.
    """
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for part, formats in PARTS.items():
        for fmt in formats:
            frows = [r for r in rows if r.part == part and r.format == fmt]
            if not frows:
                continue
            all_loss = np.array([r.expected for r in frows])
            spread = float(np.percentile(all_loss, 90) - all_loss.mean()) if len(frows) >= P90_MIN_ROWS else \
                float(all_loss.max() - all_loss.mean())
            cells = {}
            for size in SIZES:
                for arch in ARCHS:
                    label, pooled = _pool(frows, size, arch)
                    loss_arr = np.array([r.expected for r in pooled])
                    loss = max(0.0, float(loss_arr.mean()))
                    p90 = (float(np.percentile([r.high for r in pooled], 90)) if len(pooled) >= P90_MIN_ROWS
                           else max(loss + spread, max(r.high for r in pooled)))
                    cells[cell_key(size, arch)] = {"loss_pp": round(loss, 2), "p90_pp": round(max(p90, loss), 2),
                                                   "from": label, "rows": [r.id for r in pooled]}
            out.setdefault(part, {})[fmt] = cells
    return out


@functools.lru_cache(maxsize=8)
def load_quality(path: str | None = None) -> QualityTable:
    """The quality file (default hardware/quality.yaml), validated; rules as committed."""
    p = Path(path) if path else _default_path()
    data = read_mapping(p)
    rows, sources = parse_rows(p, data)
    rules = data.get("rules")
    if not isinstance(rules, dict):
        raise DSEError(f"{p}: rules: missing; run `python -m dse.catalog.quality {p}` to derive them from rows")
    for part, formats in PARTS.items():
        for fmt in formats:
            if any(r.part == part and r.format == fmt for r in rows):
                cells = (rules.get(part) or {}).get(fmt)
                if not isinstance(cells, dict) or set(cells) != {cell_key(s, a) for s in SIZES for a in ARCHS}:
                    raise DSEError(f"{p}: rules.{part}.{fmt}: missing or incomplete; re-derive with "
                                   f"`python -m dse.catalog.quality {p}`")
    return QualityTable(rows=rows, rules=rules, sources=sources, path=str(p))


def _weight_format(name: str, native: str) -> str:
    key = str(name).strip().lower()
    if key in ("native", ""):
        return native
    return _WEIGHT_ALIASES.get(key) or dtypes.normalize(key, field="weight_dtype")


def _rule(table: QualityTable, model: Model, part: str, fmt: str) -> tuple[float, float]:
    cells = table.rules.get(part, {}).get(fmt)
    if not cells:
        return float("nan"), float("nan")    # no sourced figure for this format
    size = size_class(model.total_params())
    cell = cells[cell_key(size, "moe" if model.is_moe else "dense")]
    return float(cell["loss_pp"]), float(cell["p90_pp"])


def _measured(table: QualityTable, model: Model, part: str, fmt: str, baseline: str) -> tuple[float, float] | None:
    """A listed checkpoint's own figure at this format, if its rows start from `baseline`."""
    own = [r for r in table.rows if r.checkpoint == model.id and r.part == part
           and r.format == fmt and r.baseline_format == baseline]
    if not own:
        return None
    loss = max(0.0, float(np.mean([r.expected for r in own])))
    rule_loss, rule_p90 = _rule(table, model, part, fmt)
    return loss, max(max(r.high for r in own), loss + (rule_p90 - rule_loss), loss)


def _part_loss(table: QualityTable, model: Model, part: str, fmt: str, native: str) -> tuple[float, float]:
    """Loss of one part at `fmt` relative to the released checkpoint at `native`."""
    if fmt in ("bf16", "fp32") or fmt == native or BITS[fmt] > BITS.get(native, 16):
        return 0.0, 0.0                      # the native values, or an upcast that holds them exactly
    if native in ("bf16", "fp8"):            # sourced rows start from a bf16 or native-fp8 release
        hit = _measured(table, model, part, fmt, native)
        if hit is not None:
            return hit
    loss, p90 = _rule(table, model, part, fmt)
    if native not in ("bf16", "fp32"):       # a quantized release: only the extra drop counts
        n_loss, _ = _rule(table, model, part, native)
        n_loss = 0.0 if np.isnan(n_loss) else n_loss
        loss, p90 = max(0.0, loss - n_loss), max(0.0, p90 - n_loss)
    return loss, max(p90, loss)


def _pair_loss(table: QualityTable, model: Model, weight: str, kv: str) -> tuple[float, float]:
    w = _weight_format(weight, model.native_dtype)
    k = dtypes.normalize(kv or "bf16", field="kv_dtype")
    wl, wp = _part_loss(table, model, "weights", w, model.native_dtype)
    kl, kp = _part_loss(table, model, "kv", k, "bf16")
    return wl + kl, wp + kp


def _codes(values: Any, vocab: Any, name: str) -> tuple[np.ndarray, list[str], bool]:
    """(integer codes, words, was-scalar) for a str, an array of str, or codes plus a vocabulary."""
    if isinstance(values, str):
        return np.zeros(1, dtype=np.int64), [values], True
    arr = np.asarray(values)
    if vocab is not None:
        if arr.dtype.kind not in "iu":
            raise DSEError(f"quality_loss: {name}: codes must be integers when a vocabulary is given")
        return arr.astype(np.int64, copy=False), [str(w) for w in vocab], arr.ndim == 0
    words, inverse = np.unique(arr.astype(str), return_inverse=True)
    return inverse.reshape(arr.shape), [str(w) for w in words], arr.ndim == 0


def quality_loss(model: Model | str, weight_dtype: Any, kv_dtype: Any, *, weight_vocab: Any = None,
                 kv_vocab: Any = None, path: str | None = None) -> tuple[Any, Any]:
    """(expected loss, p90 loss) in benchmark percentage points, per row.

    `weight_dtype` / `kv_dtype`: a format name, an array of names, or integer codes into
    `weight_vocab` / `kv_vocab` (the engine's column vocabularies; 'native' and '' allowed).
    Computed once per distinct (weight, kv) pair, then gathered, so millions of rows cost a
    handful of lookups. NaN marks a format no source covers.
    """
    m = model if isinstance(model, Model) else get_model(model)
    table = load_quality(path)
    wc, wwords, w_scalar = _codes(weight_dtype, weight_vocab, "weight_dtype")
    kc, kwords, k_scalar = _codes(kv_dtype, kv_vocab, "kv_dtype")
    wc, kc = np.broadcast_arrays(wc, kc)
    key = wc * len(kwords) + kc
    uniq, inverse = np.unique(key, return_inverse=True)
    loss = np.empty(uniq.size)
    p90 = np.empty(uniq.size)
    for i, k in enumerate(uniq):
        loss[i], p90[i] = _pair_loss(table, m, wwords[k // len(kwords)], kwords[k % len(kwords)])
    loss_rows, p90_rows = loss[inverse].reshape(key.shape), p90[inverse].reshape(key.shape)
    if w_scalar and k_scalar:
        return float(loss_rows.reshape(-1)[0]), float(p90_rows.reshape(-1)[0])
    return loss_rows, p90_rows


def _main(argv: list[str] | None = None) -> None:
    """Print the rules derived from a quality file's rows, as YAML to paste under `rules:`."""
    import sys

    import yaml
    args = sys.argv[1:] if argv is None else argv
    p = Path(args[0]) if args else _default_path()
    rows, _ = parse_rows(p, read_mapping(p))
    print(yaml.safe_dump({"rules": derive_rules(rows)}, sort_keys=False, width=120), end="")


if __name__ == "__main__":
    _main()
