"""The Python face: `evaluate` maps configuration columns to metric columns.

`evaluate(model=..., device=..., tp=[1, 2, 4], ...)` takes scalars or equal-length
sequences, broadcasts them and returns one DataFrame row per configuration with the
metric columns of the design notes. Infeasible rows stay, flagged with a reason; no
metric is ever NaN.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dse.catalog import dtypes
from dse.catalog.devices import device_ids
from dse.catalog.facility import get_facility
from dse.catalog.models import Model, get_model
from dse.catalog.spec_table import SpecTable
from dse.factorize import factorize
from dse.errors import DSEError
from dse.model import cost, memory, serving
from dse.model.ops import COMM_OPS, Dtypes, Parallel

MODES = ("agg", "disagg", "afd")

# column -> default (None = required). Role columns left at "" / 0 inherit the generic one
# (prefill_device "" -> device, decode_tp 0 -> tp, ...), so one axis can drive every role.
COLUMNS: dict[str, Any] = {
    "model": None,
    "device": None,
    "mode": "agg",
    "tp": 1,            # attention tensor parallel
    "pp": 1,            # pipeline stages
    "dp": 1,            # attention data-parallel ranks inside one worker
    "ep": 1,            # expert parallel (MoE tensor parallel = tp*dp/ep)
    "replicas": 1,      # identical copies of the whole deployment unit
    "weight_dtype": "native",
    "kv_dtype": "bf16",
    "batch_size": 1,    # concurrent requests per replica (agg, afd); decode batch default (disagg)
    "isl": 1024,
    "osl": 256,
    "prefix_hit": 0.0,  # fraction of prompt tokens served from the prefix cache
    "routing_skew": 0.0,  # power-law exponent of expert popularity (0 = balanced)
    "power_cap": 1.0,   # fraction of TDP
    "own": True,        # own (capex + energy + facility) or rent ($/GPU-hour)
    "backend": "",      # serving framework (trtllm / vllm / sglang; "" = their pooled constants)
    "bench_rounds": np.inf,  # requests per user of a closed-loop benchmark (inf = steady state)
    "spec_tokens": 0,   # speculative decoding: tokens drafted per decode step (MTP / EAGLE; 0 = off)
    "spec_acceptance": np.nan,  # chance a draft is kept given the ones before it were (nan = runtime.yaml)
    # disagg: prefill and decode pools
    "prefill_device": "", "prefill_tp": 0, "prefill_dp": 0, "prefill_ep": 0, "prefill_pp": 0,
    "prefill_workers": 1,
    "decode_device": "", "decode_tp": 0, "decode_dp": 0, "decode_ep": 0, "decode_pp": 0,
    "decode_workers": 1, "decode_batch_size": 0,
    # afd: attention pool (attn_gpus GPUs, attention TP attn_tp, the rest data-parallel)
    # and FFN pool (ffn_gpus GPUs: expert parallel for MoE, tensor parallel for dense)
    "attn_device": "", "attn_tp": 1, "attn_gpus": 0, "ffn_device": "", "ffn_gpus": 0,
    # service-level objectives (inf = none)
    "ttft_slo_ms": np.inf, "tpot_slo_ms": np.inf,
}
STRING_COLUMNS = ("model", "device", "mode", "weight_dtype", "kv_dtype", "prefill_device", "decode_device",
                  "attn_device", "ffn_device", "backend")
INT_COLUMNS = ("tp", "pp", "dp", "ep", "replicas", "batch_size", "isl", "osl", "prefill_workers",
               "decode_workers", "attn_tp")
ROLE_INT_COLUMNS = ("prefill_tp", "prefill_dp", "prefill_ep", "prefill_pp", "decode_tp", "decode_dp",
                    "decode_ep", "decode_pp", "decode_batch_size", "attn_gpus", "ffn_gpus")

METRICS = ("ttft_ms", "tpot_ms", "e2e_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
           "power_w", "joules_per_token", "usd_per_mtok", "usd_per_hour", "num_gpus", "memory_gb_per_gpu",
           "capex_usd", "meets_slo", "goodput_tokens_per_s", "usd_per_mtok_at_slo", "feasible", "infeasible_reason",
           "bottleneck")


@functools.lru_cache(maxsize=1)
def _runtime() -> dict[str, float]:
    path = Path(str(resources.files("dse.hardware"))) / "runtime.yaml"
    data = yaml.safe_load(path.read_text())
    return {k: float(v) for k, v in data.items() if k != "sources"}


_RUNTIME_OVERRIDE: list = []


def serving_runtime() -> dict:
    """Per-backend serving constants and the benchmark protocol, as fitted by dse.fit_serving
    (hardware/serving_runtime.yaml), unless `override_serving_runtime` is in effect."""
    return _RUNTIME_OVERRIDE[-1] if _RUNTIME_OVERRIDE else _serving_runtime_file()


@functools.lru_cache(maxsize=1)
def _serving_runtime_file() -> dict:
    path = Path(str(resources.files("dse.hardware"))) / "serving_runtime.yaml"
    return parse_serving_runtime(yaml.safe_load(path.read_text()))


def parse_serving_runtime(data: dict) -> dict:
    backends = {str(k): {n: float(c[n]) for n in ("request_ms", "step_ms", "max_tokens")}
                for k, c in data["backends"].items()}
    return {"backends": backends, "rounds": float(data.get("benchmark", {}).get("rounds", np.inf))}


class override_serving_runtime:
    """Context manager: evaluate with other serving constants (used by dse.fit_serving)."""

    def __init__(self, runtime: dict):
        self.runtime = runtime

    def __enter__(self):
        _RUNTIME_OVERRIDE.append(self.runtime)
        return self

    def __exit__(self, *exc):
        _RUNTIME_OVERRIDE.pop()


def _runtime_arrays(c: dict[str, np.ndarray], vocab: dict[str, np.ndarray]) -> serving.Runtime:
    table = serving_runtime()["backends"]
    names = [str(w) or "default" for w in vocab["backend"]]
    cols = {k: np.array([table[nm][k] for nm in names])[c["backend"]] for k in ("request_ms", "step_ms", "max_tokens")}
    rounds = np.asarray(c["bench_rounds"], dtype=float)
    return serving.Runtime(rounds=np.maximum(rounds, 1.0), **cols)


@functools.lru_cache(maxsize=1)
def _power_coeffs() -> dict[str, float]:
    path = Path(str(resources.files("dse.hardware"))) / "power.yaml"
    data = yaml.safe_load(path.read_text())
    return {"c_compute": float(data["c_compute"]), "c_memory": float(data["c_memory"])}


DEVICE_COLUMNS = ("device", "prefill_device", "decode_device", "attn_device", "ffn_device")


def _vocab_key(name: str) -> str:
    return "device" if name in DEVICE_COLUMNS else name


def _broadcast(columns: dict[str, Any]) -> tuple[dict[str, np.ndarray], int, dict[str, np.ndarray]]:
    """Columns as arrays of one length. String columns become integer codes into a small
    vocabulary (device columns share one), so millions of rows never touch Python strings."""
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise DSEError(f"evaluate: unknown column {unknown[0]!r}; allowed: {', '.join(COLUMNS)}")
    for name, default in COLUMNS.items():
        if default is None and name not in columns:
            raise DSEError(f"evaluate: missing required column {name!r}")
    arrays = {}
    n = 1
    for name, default in COLUMNS.items():
        val = columns.get(name, default)
        arr = np.asarray(val if not isinstance(val, (pd.Series, pd.Index)) else val.to_numpy())
        if arr.ndim > 1:
            raise DSEError(f"evaluate: column {name!r} must be a scalar or a 1-D sequence")
        if arr.ndim == 1 and arr.size != 1:
            if n not in (1, arr.size):
                raise DSEError(f"evaluate: column {name!r} has {arr.size} values, others have {n}")
            n = arr.size
        arrays[name] = arr.reshape(-1)
    out = {}
    raw_codes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, arr in arrays.items():
        kind = arr.dtype.kind
        if name in STRING_COLUMNS:
            raw_codes[name] = factorize(arr)
            continue
        if name == "own":
            arr = arr.astype(bool)
        else:
            try:
                arr = arr.astype(float)
            except ValueError:
                raise DSEError(f"evaluate: column {name!r} must be numeric, got {arr[:3].tolist()}") from None
            whole = kind in "iub"                 # integer input: no fractional values to find
            if name in INT_COLUMNS and (np.any(arr < 1) or (not whole and np.any(arr != np.round(arr)))):
                raise DSEError(f"evaluate: column {name!r} must hold positive integers")
            if name in ROLE_INT_COLUMNS and (np.any(arr < 0) or np.any(arr != np.round(arr))):
                raise DSEError(f"evaluate: column {name!r} must hold integers >= 0 (0 = inherit)")
        out[name] = np.broadcast_to(arr, (n,)) if arr.size == 1 else arr
    vocab: dict[str, np.ndarray] = {}
    for name, (codes, uniq) in raw_codes.items():
        key = _vocab_key(name)
        words = list(vocab.get(key, np.array(["", "native"] if key in ("device", "weight_dtype") else [""],
                                             dtype=object)))
        for w in uniq:
            if w not in words:
                words.append(w)
        vocab[key] = np.array(words, dtype=object)
        lookup = np.array([words.index(w) for w in uniq], dtype=np.int32)
        arr = lookup[codes]
        out[name] = np.broadcast_to(arr, (n,)) if arr.size == 1 else arr
    return out, n, vocab


def _used(cols, vocab, name) -> list[str]:
    codes = np.asarray(cols[name])
    words = vocab[_vocab_key(name)]
    if codes.strides and codes.strides[0] == 0:
        codes = codes[:1]
    present = np.bincount(codes.astype(np.intp, copy=False), minlength=len(words)) > 0
    return [str(w) for w in words[present]]


def _check_categories(cols: dict[str, np.ndarray], vocab: dict[str, np.ndarray]) -> None:
    known_dev = set(device_ids())
    for col in DEVICE_COLUMNS:
        for d in _used(cols, vocab, col):
            if (d or col == "device") and d not in known_dev and not d.endswith((".yaml", ".yml")):
                raise DSEError(f"evaluate: {col}: unknown device {d!r}; known: {', '.join(sorted(known_dev))}")
    for m in _used(cols, vocab, "mode"):
        if m not in MODES:
            raise DSEError(f"evaluate: mode: unknown mode {m!r}; allowed: {', '.join(MODES)}")
    known_backends = set(serving_runtime()["backends"]) | {""}
    for b in _used(cols, vocab, "backend"):
        if b not in known_backends:
            raise DSEError(f"evaluate: backend: unknown backend {b!r}; known: {', '.join(sorted(known_backends - {''}))}")
    if np.any(np.asarray(cols["bench_rounds"]) < 1):
        raise DSEError("evaluate: bench_rounds must be >= 1 (inf = steady state)")
    for name in ("weight_dtype", "kv_dtype"):
        for v in _used(cols, vocab, name):
            if not (name == "weight_dtype" and v == "native"):
                dtypes.normalize(v, field=name)
    bad = (cols["prefix_hit"] < 0) | (cols["prefix_hit"] >= 1)
    if bad.any():
        raise DSEError("evaluate: prefix_hit must be in [0, 1)")
    k = cols["spec_tokens"]
    if np.any((k < 0) | (k != np.round(k))):
        raise DSEError("evaluate: spec_tokens must hold integers >= 0 (0 = no speculative decoding)")
    acc = cols["spec_acceptance"]
    if np.any((acc < 0) | (acc > 1)):
        raise DSEError("evaluate: spec_acceptance must be in [0, 1] (nan = the runtime.yaml default)")
    if np.any(cols["power_cap"] <= 0) or np.any(cols["power_cap"] > 1):
        raise DSEError("evaluate: power_cap is a fraction of TDP in (0, 1]")


def _structure_errors(model: Model, reasons: "Reasons", tp, dp, ep, holds: str = "all") -> None:
    """Flag rows whose parallel layout cannot shard `model`."""
    if holds == "ffn":
        ffn = max(g.ffn.num_experts if g.ffn.kind == "moe" else g.ffn.intermediate for g in model.groups)
        reasons.flag(np.mod(ffn, tp * dp) != 0,
                     f"ffn_gpus must divide {ffn} ({'experts' if model.is_moe else 'FFN width'})")
        return
    heads = min(g.attention.num_heads for g in model.groups)
    reasons.flag(np.mod(heads, tp) != 0, f"tp must divide the {heads} attention heads")
    if holds == "attn":
        return
    if model.is_moe:
        experts = max(g.ffn.num_experts for g in model.groups)
        reasons.flag((np.mod(experts, ep) != 0) | (np.mod(tp * dp, ep) != 0),
                     f"ep must divide the {experts} experts and tp*dp")
    else:
        reasons.flag(ep > 1, "ep > 1 needs a MoE model")


def check_config(**config: Any) -> None:
    """Raise DSEError (one line) if a configuration cannot exist: unknown ids, or a
    parallel layout that does not shard the model. Memory is not checked."""
    cols, n, vocab = _broadcast(config)
    _check_categories(cols, vocab)
    model = get_model(str(vocab["model"][cols["model"][0]]))
    reasons = Reasons(n)
    mode = str(vocab["mode"][cols["mode"][0]])
    roles = {"agg": [""], "disagg": ["prefill_", "decode_"], "afd": [""]}[mode]
    for r in roles:
        tp, dp, ep = (_role(cols, f"{r}{k}", k) if r else cols[k] for k in ("tp", "dp", "ep"))
        _structure_errors(model, reasons, tp, dp, ep)
    first = reasons.first()
    if first:
        raise DSEError(f"evaluate: {model.id}: {first[1]}")


# Rows are evaluated in chunks of this many: the model's ~2,000 array passes then work on
# arrays that stay in the CPU's L2 cache (1M rows at once: ~1.5 s; in chunks of 32k: ~1.0 s).
CHUNK_ROWS = 32_768


def evaluate(*, strict: bool = True, **columns: Any) -> pd.DataFrame:
    """Evaluate configurations given as columns; see COLUMNS for names and defaults.

    With strict=True (the default) a configuration that cannot exist (a TP size that
    does not divide the attention heads, an unknown id) raises DSEError; the search
    passes strict=False to get such rows back flagged infeasible instead.
    """
    cols, n, vocab = _broadcast(columns)
    _check_categories(cols, vocab)
    out: dict[str, Any] = {}
    for name, arr in cols.items():
        if name in STRING_COLUMNS:
            words = vocab[_vocab_key(name)]
            out[name] = pd.Categorical.from_codes(np.asarray(arr), categories=pd.Index(words, dtype=object))
        else:
            out[name] = np.asarray(arr)
    metrics = {m: np.zeros(n) for m in METRICS if m not in ("feasible", "infeasible_reason", "bottleneck")}
    reasons = Reasons(n)
    bottleneck = np.zeros(n, dtype=np.int8)
    model_codes = cols["model"]
    codes = np.unique(model_codes)
    _evaluate_chunks(cols, n, vocab, codes, metrics, reasons, bottleneck, strict=strict)
    out.update(metrics)
    out["num_gpus"] = out["num_gpus"].astype(np.int64)
    out["meets_slo"] = out["meets_slo"].astype(bool)
    out["feasible"] = reasons.codes == 0
    out["infeasible_reason"] = reasons.categorical()
    out["bottleneck"] = pd.Categorical.from_codes(bottleneck, categories=BOTTLENECKS)
    return pd.DataFrame(out, copy=False)   # fresh arrays: no need to copy them into one block


def _evaluate_chunks(cols, n, vocab, codes, metrics, reasons, bottleneck, *, strict: bool) -> None:
    """Each model's rows, CHUNK_ROWS at a time, into the output arrays."""
    model_codes = cols["model"]
    for code in codes:
        rows = np.nonzero(model_codes == code)[0] if len(codes) > 1 else None
        model = get_model(str(vocab["model"][code]))
        size = n if rows is None else rows.size
        for start in range(0, size, CHUNK_ROWS):
            part = (slice(start, min(start + CHUNK_ROWS, size)) if rows is None
                    else rows[start:start + CHUNK_ROWS])
            sub = {k: v[part] for k, v in cols.items()}
            res, sub_reasons = _evaluate_model(model, sub, vocab, strict=strict)
            reasons.merge(part, sub_reasons)
            bottleneck[part] = res.pop("bottleneck")
            for k, v in res.items():
                metrics[k][part] = v


BOTTLENECKS = ["compute", "memory", "comm", "kv_capacity"]


class Reasons:
    """Why rows are infeasible, as small-integer codes into a list of texts (0 = feasible)."""

    def __init__(self, n: int):
        self.codes = np.zeros(n, dtype=np.int16)
        self.texts = [""]

    def flag(self, mask, text: str) -> None:
        mask = np.asarray(mask) & (self.codes == 0)
        if mask.any():
            if text not in self.texts:
                self.texts.append(text)
            self.codes[mask] = self.texts.index(text)

    def merge(self, rows, other: "Reasons") -> None:
        lookup = np.array([self._code(t) for t in other.texts], dtype=np.int16)
        self.codes[rows] = lookup[other.codes]

    def _code(self, text: str) -> int:
        if text not in self.texts:
            self.texts.append(text)
        return self.texts.index(text)

    def first(self) -> tuple[int, str] | None:
        bad = np.nonzero(self.codes)[0]
        return (int(bad[0]), self.texts[self.codes[bad[0]]]) if len(bad) else None

    def text_array(self) -> np.ndarray:
        return np.array(self.texts, dtype=object)[self.codes]

    def categorical(self) -> pd.Categorical:
        return pd.Categorical.from_codes(self.codes, categories=pd.Index(self.texts, dtype=object))


class _Pools:
    """Builds serving pools for one model from per-row columns, sharing the spec table."""

    def __init__(self, model: Model, c: dict[str, np.ndarray], vocab: dict[str, np.ndarray]):
        self.model, self.c, self.vocab = model, c, vocab
        # weight formats: vocabulary entries normalised once ('native' = the checkpoint's)
        names = [dtypes.normalize(model.native_dtype if w in ("native", "") else w, field="weight_dtype")
                 for w in vocab["weight_dtype"]]
        self.wd_names = sorted(set(names))
        self.wd = np.array([self.wd_names.index(x) for x in names])[c["weight_dtype"]]
        kv = [dtypes.BYTES[dtypes.normalize(x or "bf16", field="kv_dtype")] for x in vocab["kv_dtype"]]
        self.kv_bytes = np.array(kv)[c["kv_dtype"]]
        self.rt = _runtime()
        self.reasons = Reasons(len(c["tp"]))
        self.mem_gb = np.zeros(c["tp"].shape)

    def make(self, device, tp, dp, ep, pp, *, holds: str = "all", running=None) -> tuple[serving.Pool, dict]:
        c, model = self.c, self.model
        nw = len(self.wd_names)
        # one code per (device, weight format, fp8 KV cache?) triple
        code = (np.asarray(device, dtype=np.int64) * nw + self.wd) * 2 + (self.kv_bytes < 2.0)
        pairs = np.flatnonzero(np.bincount(code))          # the triples present
        lut = np.zeros(pairs[-1] + 1, dtype=np.int64)
        lut[pairs] = np.arange(pairs.size)
        pair_idx = lut[code]
        keys = tuple((str(self.vocab["device"][p // 2 // nw]), self.wd_names[p // 2 % nw], bool(p % 2))
                     for p in pairs)
        table = _spec_table(keys)
        hwc = table.gather(pair_idx)
        hw = SpecTable.hw(hwc)
        w_bytes = np.array([dtypes.BYTES[k[1]] for k in keys])[pair_idx]
        dt = Dtypes(w_bytes=w_bytes, a_bytes=hwc["a_bytes"], kv_bytes=self.kv_bytes)
        par = Parallel(tp=tp, dp=dp, ep=ep, pp=pp)
        _structure_errors(model, self.reasons, tp, dp, ep, holds)
        # memory: weights + activations + reserve must fit; the rest (x kv fraction) holds KV
        attn_w, ffn_w = memory.weight_bytes_split(model, par, w_bytes)
        total_w = memory.weight_bytes_per_gpu(model, par, w_bytes, split=(attn_w, ffn_w))
        weights = {"all": total_w, "attn": attn_w, "ffn": ffn_w}[holds]
        if holds != "ffn" and np.any(c["spec_tokens"] > 0):
            # the draft heads (the checkpoint's MTP layers, else one EAGLE-style layer) sit with
            # the attention: each about one average layer of the whole model
            layer = total_w / model.num_layers
            weights = weights + np.where(c["spec_tokens"] > 0, layer * max(model.mtp_heads, 1), 0.0)
        seqs_rank = np.maximum((c["batch_size"] if running is None else running) / dp, 1.0)
        act = memory.activation_bytes(model, np.maximum(c["isl"], seqs_rank))
        fixed = weights + act + self.rt["activation_reserve_gb"] * memory.GB
        cap = hwc["memory_gb"] * memory.GB
        kv_seq = memory.kv_bytes_per_seq(model, par, self.kv_bytes, c["isl"] + c["osl"])
        if holds == "ffn":
            max_seqs = np.full(tp.shape, np.inf)
            kv_used = 0.0
        else:
            max_seqs = np.floor(np.maximum(cap - fixed, 0) * self.rt["kv_memory_fraction"] / kv_seq) * dp
            kv_used = kv_seq * np.minimum(seqs_rank, np.maximum(max_seqs / dp, 1.0))
        self.reasons.flag(fixed > cap, f"memory: weights do not fit ({holds} pool)")
        self.reasons.flag(max_seqs < 1, "kv_capacity: not one sequence's KV cache fits")
        # memory bounds the batch: more users than KV slots only queue (their wait shows in TTFT)
        self.reasons.flag(seqs_rank > np.maximum(max_seqs / dp, 1.0), "kv_capacity: the batch does not fit the KV cache")
        self.mem_gb = np.maximum(self.mem_gb, (fixed + kv_used) / memory.GB)
        pool = serving.Pool(hw=hw, dt=dt, par=par, tdp_w=hwc["tdp_w"], idle_w=hwc["idle_w"],
                            cap_w=c["power_cap"] * hwc["tdp_w"], max_seqs=max_seqs, hw_key=code.astype(float))
        return pool, hwc


@functools.lru_cache(maxsize=64)
def _spec_table(pairs: tuple[tuple[str, str, bool], ...]) -> SpecTable:
    return SpecTable(list(pairs))


def _spec(c: dict[str, np.ndarray]) -> serving.Spec | None:
    """Speculative decoding of the rows, or None when no row drafts (the plain decode path)."""
    if not np.any(c["spec_tokens"] > 0):
        return None
    acc = np.asarray(c["spec_acceptance"], dtype=float)
    return serving.Spec(tokens=c["spec_tokens"], accept=np.where(np.isnan(acc), _runtime()["spec_acceptance"], acc))


def _role(c, name, generic):
    return np.where(c[name] > 0, c[name], c[generic]) if name in c else c[generic]


def _evaluate_model(model: Model, c: dict[str, np.ndarray], vocab: dict[str, np.ndarray], *, strict: bool,
                    keep: dict | None = None) -> tuple[dict[str, np.ndarray], "Reasons"]:
    modes = np.unique(c["mode"])
    if len(modes) > 1:  # each mode is its own vectorized path
        out: dict[str, np.ndarray] = {}
        reasons = Reasons(len(c["mode"]))
        for code in modes:
            rows = np.nonzero(c["mode"] == code)[0]
            res, sub = _evaluate_model(model, {k: v[rows] for k, v in c.items()}, vocab, strict=strict)
            reasons.merge(rows, sub)
            for k, v in res.items():
                out.setdefault(k, np.empty(len(c["mode"]), dtype=v.dtype))[rows] = v
        return out, reasons
    mode = str(vocab["mode"][modes[0]])
    pools = _Pools(model, c, vocab)
    no_dev = _code(vocab, "device", "")
    skew, coeffs = c["routing_skew"], _power_coeffs()
    rt = _runtime_arrays(c, vocab)
    common = dict(isl=c["isl"], osl=c["osl"], prefix_hit=c["prefix_hit"], skew=skew, coeffs=coeffs, rt=rt,
                  spec=_spec(c))
    if mode == "agg":
        pool, hwc = pools.make(c["device"], c["tp"], c["dp"], c["ep"], c["pp"])
        res = serving.agg(model, pool, concurrency=c["batch_size"], **common)
        roles = [(hwc, res.gpus)]
    elif mode == "disagg":
        pdev = np.where(c["prefill_device"] != no_dev, c["prefill_device"], c["device"])
        ddev = np.where(c["decode_device"] != no_dev, c["decode_device"], c["device"])
        dbatch = _role(c, "decode_batch_size", "batch_size")
        ppool, phwc = pools.make(pdev, _role(c, "prefill_tp", "tp"), _role(c, "prefill_dp", "dp"),
                                 _role(c, "prefill_ep", "ep"), _role(c, "prefill_pp", "pp"), running=np.ones_like(dbatch))
        dpool, dhwc = pools.make(ddev, _role(c, "decode_tp", "tp"), _role(c, "decode_dp", "dp"),
                                 _role(c, "decode_ep", "ep"), _role(c, "decode_pp", "pp"), running=dbatch)
        g = ppool.gpus * c["prefill_workers"] + dpool.gpus * c["decode_workers"]
        same = (pdev == ddev) & (g <= dhwc["domain"])
        res = serving.disagg(model, ppool, dpool, prefill_workers=c["prefill_workers"],
                             decode_workers=c["decode_workers"], concurrency=dbatch * c["decode_workers"],
                             same_domain=same, **common)
        roles = [(phwc, ppool.gpus * c["prefill_workers"]), (dhwc, dpool.gpus * c["decode_workers"])]
    else:  # afd
        adev = np.where(c["attn_device"] != no_dev, c["attn_device"], c["device"])
        fdev = np.where(c["ffn_device"] != no_dev, c["ffn_device"], c["device"])
        agpus = np.where(c["attn_gpus"] > 0, c["attn_gpus"], c["tp"] * c["dp"])
        fgpus = np.where(c["ffn_gpus"] > 0, c["ffn_gpus"], np.maximum(c["ep"], c["tp"]))
        atp = np.minimum(c["attn_tp"], agpus)
        apool, ahwc = pools.make(adev, atp, np.maximum(agpus / atp, 1.0), np.ones_like(agpus), c["pp"], holds="attn")
        if model.is_moe:
            fpool, fhwc = pools.make(fdev, np.ones_like(fgpus), fgpus, fgpus, c["pp"], holds="ffn")
        else:
            fpool, fhwc = pools.make(fdev, fgpus, np.ones_like(fgpus), np.ones_like(fgpus), c["pp"], holds="ffn")
        same = (adev == fdev) & (agpus + fgpus <= ahwc["domain"])
        roles = [(ahwc, apool.gpus), (fhwc, fpool.gpus)]
        pd_rows = c["prefill_device"] != no_dev
        if pd_rows.any():
            # prefill on its own workers (prefill_device, prefill_tp/dp/ep/pp, prefill_workers) in
            # front of the attention/FFN decode; the whole column set must agree on it
            if not pd_rows.all():
                raise DSEError("evaluate: afd: give prefill_device for every afd row or for none")
            ppool, phwc = pools.make(c["prefill_device"], _role(c, "prefill_tp", "tp"), _role(c, "prefill_dp", "dp"),
                                     _role(c, "prefill_ep", "ep"), _role(c, "prefill_pp", "pp"),
                                     running=np.ones_like(agpus))
            psame = (c["prefill_device"] == adev) & (ppool.gpus * c["prefill_workers"] + agpus <= ahwc["domain"])
            res = serving.afd(model, apool, fpool, concurrency=c["batch_size"], same_domain=same, pre_pool=ppool,
                              prefill_workers=c["prefill_workers"], pre_same_domain=psame, **common)
            roles.append((phwc, ppool.gpus * c["prefill_workers"]))
        else:
            res = serving.afd(model, apool, fpool, concurrency=c["batch_size"], same_domain=same, **common)
    reasons = pools.reasons
    first = reasons.first()
    if strict and first and not first[1].startswith(("memory", "kv_capacity")):
        i = first[0]
        raise DSEError(f"evaluate: {model.id}: tp={int(c['tp'][i])}, dp={int(c['dp'][i])}, ep={int(c['ep'][i])}: "
                       f"{first[1]}")
    if keep is not None:
        keep.update(result=res, pools=pools)

    replicas = c["replicas"]
    num_gpus = res.gpus * replicas
    host_w = sum(h["host_w_per_gpu"] * g for h, g in roles) * replicas
    power_w = res.gpu_power_w * replicas + host_w
    tokens_per_s = res.tokens_per_s * replicas
    fac = get_facility()
    capex = sum((h["price_usd"] + h["host_usd_per_gpu"]) * g for h, g in roles) * replicas
    rent = sum(h["rent_usd_per_hour"] * g for h, g in roles) * replicas
    provisioned = sum((h["tdp_w"] + h["host_w_per_gpu"]) * g for h, g in roles) * replicas
    usd_hour = np.where(
        c["own"],
        capex / (fac.amortization_years * cost.HOURS_PER_YEAR) + power_w / 1e3 * fac.pue * fac.usd_per_kwh
        + provisioned / 1e3 * fac.facility_usd_per_kw_month / cost.HOURS_PER_MONTH,
        rent)
    meets = (res.ttft_ms <= c["ttft_slo_ms"]) & (res.tpot_ms <= c["tpot_slo_ms"]) & (reasons.codes == 0)
    load = c["batch_size"] if mode != "disagg" else _role(c, "decode_batch_size", "batch_size") * c["decode_workers"]
    goodput = _goodput(res, load, c["ttft_slo_ms"], c["tpot_slo_ms"], meets) * replicas
    goodput = np.where(reasons.codes == 0, goodput, 0.0)
    return {
        "ttft_ms": res.ttft_ms,
        "tpot_ms": res.tpot_ms,
        "e2e_ms": res.ttft_ms + np.maximum(c["osl"] - 1, 0) * res.tpot_ms,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / num_gpus,
        "tokens_per_s_per_user": 1e3 / res.tpot_ms,
        "power_w": power_w,
        "joules_per_token": power_w * fac.pue / tokens_per_s,
        "usd_per_mtok": cost.usd_per_mtok(usd_hour, tokens_per_s),
        "usd_per_hour": usd_hour,
        "num_gpus": num_gpus,
        "memory_gb_per_gpu": pools.mem_gb,
        "capex_usd": capex,
        "meets_slo": meets,
        "goodput_tokens_per_s": goodput,
        "usd_per_mtok_at_slo": np.where(goodput > 0, cost.usd_per_mtok(usd_hour, goodput), np.inf),
        "bottleneck": _bottleneck(*res.steps["decode"], reasons),
    }, reasons


GOODPUT_STEPS = 7   # bisection steps over log2(concurrency): the answer is within 2^(log2 C / 2^7)


def _goodput(res: "serving.ModeResult", load, ttft_slo, tpot_slo, meets) -> np.ndarray:
    """Output tokens/s of one unit at the highest concurrency (<= the configured one) at
    which TTFT and TPOT still meet their limits; 0 when not even one user does.

    Latencies grow with load, so a few vectorised bisection steps over log(concurrency)
    find it; only rows with a finite SLO that fail at the configured load are searched."""
    load = np.asarray(load, dtype=float)
    out = np.where(meets, res.tokens_per_s, 0.0)
    search = ~meets & (np.isfinite(ttft_slo) | np.isfinite(tpot_slo)) & (load > 1)
    if not search.any() or res.load is None:
        return out
    idx = np.nonzero(search)[0]
    sub = serving.rows_of(res, idx)
    ts, ps = np.asarray(ttft_slo, dtype=float)[idx], np.asarray(tpot_slo, dtype=float)[idx]
    lo, hi = np.zeros(len(idx)), np.log2(load[idx])      # meets at 2^lo is unknown until checked
    ok_lo = np.zeros(len(idx), dtype=bool)
    best = np.zeros(len(idx))
    t, p, tok = sub.load(np.ones(len(idx)))
    ok_lo = (t <= ts) & (p <= ps)
    best = np.where(ok_lo, tok, 0.0)
    for _ in range(GOODPUT_STEPS):
        mid = (lo + hi) / 2.0
        t, p, tok = sub.load(np.exp2(mid))
        ok = (t <= ts) & (p <= ps) & ok_lo
        best = np.where(ok, np.maximum(best, tok), best)
        lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
    out[idx] = best
    return out


def _code(vocab, key: str, word: str) -> int:
    words = list(vocab[key])
    return words.index(word) if word in words else -1


def _bottleneck(step, hw, reasons: "Reasons") -> np.ndarray:
    """Code into BOTTLENECKS of what binds the decode step (kv_capacity when memory does)."""
    comp, mem, comm = serving.bound_split(step, hw)
    out = np.argmax(np.stack(np.broadcast_arrays(comp, mem, comm)), axis=0).astype(np.int8)
    kv = np.array([t.startswith("kv_capacity") for t in reasons.texts])[reasons.codes]
    return np.where(kv, 3, out).astype(np.int8)


def explain(**config: Any) -> tuple[pd.Series, pd.DataFrame, pd.DataFrame]:
    """One configuration's metrics, its per-operator breakdown (prefill and decode steps:
    time, FLOPs, bytes, arithmetic intensity, binding resource) and its pools (step time,
    utilisation, power per GPU, GPUs, transfer time), so a user sees where the time goes."""
    cols, n, vocab = _broadcast(config)
    if n != 1:
        raise DSEError("explain: give one configuration (scalars), not sequences")
    _check_categories(cols, vocab)
    model = get_model(str(vocab["model"][cols["model"][0]]))
    keep: dict = {}
    _evaluate_model(model, dict(cols), vocab, strict=True, keep=keep)
    row = evaluate(**config).iloc[0]
    res = keep["result"]
    recs = []
    for phase, (step, hw) in res.steps.items():
        total = float(step.total_ms[0])
        for op, t in step.time_ms.items():
            t, f, b = float(t[0]), float(step.flops[op][0]), float(step.bytes[op][0])
            if t <= 0:
                continue
            if op in COMM_OPS:
                bound = "comm"
            else:
                bound = "compute" if f / float(hw.peak_gemm[0]) >= b / float(hw.mem_tb_s[0]) else "memory"
            recs.append({"phase": phase, "op": op, "time_ms": t, "share": t / total if total else 0.0,
                         "gflop": f / 1e9, "mbytes": b / 1e6, "flop_per_byte": f / b if b else float("inf"),
                         "bound": bound})
    pools = pd.DataFrame([{"role": p.role, "gpus": float(np.broadcast_to(p.gpus, (1,))[0]),
                           "step_ms": float(p.step_ms[0]), "utilisation": float(np.broadcast_to(p.utilisation, (1,))[0]),
                           "power_w_per_gpu": float(p.power_w[0]),
                           "transfer_ms": float(np.broadcast_to(res.transfer_ms if p.transfer_ms is None else p.transfer_ms,
                                                                (1,))[0])} for p in res.pools])
    return row, pd.DataFrame(recs), pools


def evaluate_mix(mix: Any, *, strict: bool = True, **columns: Any) -> pd.DataFrame:
    """Evaluate configurations serving a mix of request shapes (a workload histogram).

    `mix` is a table (DataFrame, list of dicts or of (isl, osl, weight) tuples) of request
    classes with columns isl, osl, weight (share of requests; normalised) and optionally
    prefix_hit. Each class is evaluated on the configuration at its full concurrency, in
    one vectorized call, and the classes are combined as a closed loop in which every
    user's next request is drawn from the mix: the mean request cycle is the
    weight-averaged one, so tokens/s = sum(w osl) / sum(w osl / tokens_per_s_k); TTFT
    and e2e are request-weighted, TPOT is token-weighted, power is time-weighted. A
    configuration meets its SLOs when every class does; its goodput is the load at which
    the tightest class still does. Exact when the classes' step times are alike (an
    approximation of truly mixed batches otherwise). Returns one row per configuration.
    """
    cls = pd.DataFrame(list(mix) if not isinstance(mix, pd.DataFrame) else mix)
    if cls.shape[1] == 3 and list(cls.columns) == [0, 1, 2]:
        cls.columns = ["isl", "osl", "weight"]
    for need in ("isl", "osl", "weight"):
        if need not in cls.columns:
            raise DSEError(f"evaluate_mix: mix needs columns isl, osl, weight; missing {need!r}")
    if (cls.weight < 0).any() or cls.weight.sum() <= 0:
        raise DSEError("evaluate_mix: weights must be >= 0 and not all zero")
    for k in ("isl", "osl", "prefix_hit"):
        if k in columns and k in cls.columns:
            raise DSEError(f"evaluate_mix: {k} comes from the mix, not from the columns")
    w = cls.weight.to_numpy(float) / cls.weight.sum()
    kk = len(cls)
    _, n, _ = _broadcast(dict(columns))
    base = {}
    for k, v in columns.items():
        arr = np.asarray(v.to_numpy() if isinstance(v, (pd.Series, pd.Index)) else v)
        base[k] = np.repeat(arr, kk) if arr.ndim == 1 and arr.size > 1 else (arr.reshape(-1)[0] if arr.ndim else v)
    base.update(isl=np.tile(cls.isl.to_numpy(), n), osl=np.tile(cls.osl.to_numpy(), n))
    if "prefix_hit" in cls.columns:
        base["prefix_hit"] = np.tile(cls.prefix_hit.to_numpy(float), n)
    df = evaluate(strict=strict, **base)
    shape = (n, kk)
    def g(metric):
        return df[metric].to_numpy(float).reshape(shape)

    osl = g("osl")
    tps = np.maximum(g("tokens_per_s"), 1e-30)
    time_share = w * osl / tps                                   # time per request of each class, weighted
    t_tot = time_share.sum(axis=1)
    tokens = (w * osl).sum(axis=1) / t_tot
    tw = time_share / t_tot[:, None]
    watts = (tw * g("power_w")).sum(axis=1)
    usd_hour = (tw * g("usd_per_hour")).sum(axis=1)
    fac = get_facility()
    ttft = (w * g("ttft_ms")).sum(axis=1)
    osl1 = np.maximum(osl - 1.0, 1.0)
    tpot = (w * osl1 * g("tpot_ms")).sum(axis=1) / (w * osl1).sum(axis=1)
    feasible = df["feasible"].to_numpy().reshape(shape).all(axis=1)
    meets = df["meets_slo"].to_numpy().reshape(shape).all(axis=1) & feasible
    good_frac = np.min(g("goodput_tokens_per_s") / tps, axis=1)
    goodput = np.where(feasible, tokens * np.minimum(good_frac, 1.0), 0.0)
    first = df.iloc[::kk].reset_index(drop=True)
    reasons = df["infeasible_reason"].astype(str).to_numpy().reshape(shape)
    reason = np.array([next((r for r in row if r), "") for row in reasons], dtype=object)
    out = first.drop(columns=["isl", "osl"] + (["prefix_hit"] if "prefix_hit" in cls.columns else []))
    out.insert(0, "mix_classes", kk)
    out["ttft_ms"] = ttft
    out["tpot_ms"] = tpot
    out["e2e_ms"] = (w * g("e2e_ms")).sum(axis=1)
    out["tokens_per_s"] = tokens
    out["tokens_per_s_per_gpu"] = tokens / first["num_gpus"].to_numpy(float)
    out["tokens_per_s_per_user"] = 1e3 / tpot
    out["power_w"] = watts
    out["joules_per_token"] = watts * fac.pue / tokens
    out["usd_per_hour"] = usd_hour
    out["usd_per_mtok"] = cost.usd_per_mtok(usd_hour, tokens)
    out["memory_gb_per_gpu"] = g("memory_gb_per_gpu").max(axis=1)
    out["meets_slo"] = meets
    out["goodput_tokens_per_s"] = goodput
    out["usd_per_mtok_at_slo"] = np.where(goodput > 0, cost.usd_per_mtok(usd_hour, goodput), np.inf)
    out["feasible"] = feasible
    out["infeasible_reason"] = pd.Categorical(reason)
    return out


def sweep(space: Any, **options: Any):
    """Search a scenario (a path to a YAML file or a loaded Space) and write its results
    directory, with the interactive report; see dse.search.run.sweep for the options."""
    from dse.report.html import write_report
    from dse.search.run import sweep as _sweep

    res = _sweep(space, **options)
    write_report(res.run_dir)
    return res


def load_space(path: Any):
    """Read and validate a scenario YAML file into a Space."""
    from dse.search.space import load_space as _load

    return _load(path)
