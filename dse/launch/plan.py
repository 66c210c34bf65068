"""From a results row to what a person runs: the engine's command lines, or why it cannot.

`plan(row, backend)` resolves the configuration's pools (role columns left blank inherit
the generic ones, via dse.deploy.roles), checks that the engine can express every part of
it -- device vendor, serving mode, parallel layout, weight and KV-cache formats -- and
builds the serve and benchmark command lines from the flag names in hardware/engines.yaml.
Anything the engine cannot express becomes a reason and no command: a launch file that
runs something other than what dse predicted would be worse than none.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from dse.catalog import dtypes
from dse.catalog.devices import get_device
from dse.catalog.models import get_model
from dse.catalog.runtime import engine_limit
from dse.deploy import roles
from dse.errors import DSEError
from dse.launch.engines import BACKENDS, engines
from dse.schema import COLUMNS, STRING_COLUMNS

__all__ = ["LaunchPlan", "Pool", "plan", "resolve_row"]

PREDICTED = ("ttft_ms", "tpot_ms", "e2e_ms", "tokens_per_s", "tokens_per_s_per_gpu", "tokens_per_s_per_user",
             "num_gpus", "power_w", "joules_per_token", "usd_per_mtok")
BENCH_ROUNDS = 10      # requests per user when the row models the steady state (bench_rounds = inf)
_QUANT_NAMES = {"fp8": "fp8", "fp4": "nvfp4", "int4": "int4_wo", "int8": "int8"}   # the measured files' words


@dataclass(frozen=True)
class Pool:
    """One kind of worker: its role, device, layout and how many of it run."""
    role: str            # agg, prefill or decode
    device: str
    tp: int
    dp: int
    ep: int
    pp: int
    workers: int
    max_seqs: int        # concurrent sequences one worker admits (0 = leave the engine's default)
    redundant: int = 0   # EPLB replicas of the hottest experts (redundant_experts)

    @property
    def gpus(self) -> int:
        return self.tp * self.dp * self.pp


@dataclass
class LaunchPlan:
    """What to run for one configuration on one engine (or the reasons it cannot run)."""
    config_id: int | None
    backend: str
    mode: str
    model: str
    row: dict[str, Any]
    pools: list[Pool]
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    serve: dict[str, list[str]] = field(default_factory=dict)   # pool role -> argv (after the model)
    extra_options: dict[str, Any] | None = None                # trtllm's extra LLM-API options
    graph: dict[str, Any] | None = None                         # dynamo's DynamoGraphDeployment
    bench: list[str] = field(default_factory=list)
    isl: int = 0
    osl: int = 0
    concurrency: int = 0
    num_prompts: int = 0

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def name(self) -> str:
        cid = "x" if self.config_id is None else str(self.config_id)
        return f"config_{cid}_{self.backend}"

    def predicted(self) -> dict[str, Any]:
        return {k: self.row[k] for k in PREDICTED if k in self.row}


def _cell(v: Any, col: str) -> Any:
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and math.isnan(v) and col in COLUMNS:
        return COLUMNS[col] if COLUMNS[col] is not None else ""
    return v


def resolve_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row as plain values, every configuration column present (a blank cell -- NaN
    once read back from CSV -- is the column's default)."""
    out = {k: _cell(row[k], k) for k in row.keys()}
    for k, default in COLUMNS.items():
        if k not in out:
            if default is None:
                raise DSEError(f"deploy: row has no {k!r} column")
            out[k] = default
    for k in COLUMNS:
        if k in STRING_COLUMNS:
            out[k] = "" if out[k] is None else str(out[k])
    return out


def _pools(r: dict[str, Any]) -> list[Pool]:
    c = {k: np.asarray([v]) for k, v in r.items() if k in COLUMNS}
    if r["mode"] == "disagg":
        out = []
        for role in ("prefill", "decode"):
            lay = {k: int(roles.layout(c, role, k)[0]) for k in ("tp", "dp", "ep", "pp")}
            lay["redundant"] = int(roles.layout(c, role, "redundant_experts")[0])
            bs = int(roles.layout(c, role, "batch_size")[0]) if role == "decode" else 0
            out.append(Pool(role, str(roles.device(c, role)[0]), workers=int(r[f"{role}_workers"] or 1),
                            max_seqs=bs, **lay))
        return out
    if r["mode"] == "afd":
        attn, ffn = (int(x[0]) for x in roles.afd_gpus(c))
        attn_tp = int(roles.attn_tp(c, np.asarray([attn]))[0])
        return [Pool("attention", str(roles.device(c, "attn")[0]), tp=attn_tp, dp=max(attn // attn_tp, 1), ep=1,
                     pp=int(r["pp"]), workers=1, max_seqs=int(r["batch_size"])),
                Pool("ffn", str(roles.device(c, "ffn")[0]), tp=ffn, dp=1, ep=1, pp=int(r["pp"]), workers=1,
                     max_seqs=0)]
    return [Pool("agg", r["device"], tp=int(r["tp"]), dp=int(r["dp"]), ep=int(r["ep"]), pp=int(r["pp"]),
                 workers=1, max_seqs=int(r["batch_size"]), redundant=int(r["redundant_experts"]))]


def _layout_flags(eng: dict, pool: Pool, moe: bool, name: str,
                  experts: int = 0) -> tuple[list[tuple[str, Any]], list[str]]:
    """The engine's parallel knobs for one pool: [(knob, value)] with knob a key of
    serve.flags (a switch has value True; trtllm: of serve.options), and the reasons it
    cannot be expressed. `experts`: the model's routed experts (for expert slots)."""
    par, out, why = eng["parallel"], [("tp", pool.tp), ("pp", pool.pp)], []
    if pool.dp > 1:
        if par["attention_dp"] == "data_parallel":
            if not moe:
                why.append(f"{name}: dp {pool.dp} is not expressible for a dense model: its data-parallel ranks are "
                           "full replicas, while dse's dp ranks share the FFN (tensor parallel over tp x dp)")
            out.append(("dp", pool.dp))
        elif par["attention_dp"] == "world_tp":
            out = [("tp", pool.tp * pool.dp), ("pp", pool.pp), ("dp", pool.dp), ("dp_switch", True)]
        elif pool.tp > 1:
            why.append(f"{name}: attention TP {pool.tp} with attention DP {pool.dp} is not expressible: its attention "
                       "data parallelism runs one attention rank per GPU")
        else:
            out = [("tp", pool.dp), ("pp", pool.pp), ("dp_switch", True)]
    if pool.ep > 1:
        world = pool.tp * pool.dp
        if par["expert_parallel"] == "world_switch":
            if pool.ep != world:
                why.append(f"{name}: ep {pool.ep} is not expressible: its expert parallelism spans all "
                           f"tp x dp = {world} GPUs of a worker (or is off)")
            out.append(("ep_switch", True))
        elif world % pool.ep:
            why.append(f"{name}: ep {pool.ep} does not divide the worker's tp x dp = {world} GPUs")
        else:
            out.append(("ep", pool.ep))
    if pool.redundant > 0:
        out += _eplb_knobs(par, pool, name, experts, why)
    return out, why


def _eplb_knobs(par: dict, pool: Pool, name: str, experts: int, why: list[str]) -> list[tuple[str, Any]]:
    """The expert load balancer with `pool.redundant` replicas, as engines.yaml
    parallel.redundant_experts says the engine takes it: count (a flag with the number),
    json_config (a JSON config flag), slots (the options' expert slots = experts + replicas)."""
    how = par.get("redundant_experts")
    if how == "count":
        return [("eplb_switch", True), ("redundant_experts", pool.redundant)]
    if how == "json_config":
        return [("eplb_switch", True), ("eplb_config", json.dumps({"num_redundant_experts": pool.redundant}))]
    if how == "slots":
        # online balancing (layer_updates_per_iter > 0), as SGLang's and vLLM's --enable-eplb
        return [("redundant_experts", {"num_slots": experts + pool.redundant, "layer_updates_per_iter": 1})]
    why.append(f"{name}: redundant_experts {pool.redundant} is not expressible: the engine has no expert "
               "load balancer with redundant experts (hardware/engines.yaml parallel.redundant_experts)")
    return []


def _formats(eng: dict, r: dict[str, Any], name: str, notes: list[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """The quantization and KV-cache knobs, and the reasons a format is not expressible."""
    knobs, why = [], []
    wd = r["weight_dtype"] if r["weight_dtype"] == "native" else dtypes.normalize(r["weight_dtype"])
    w = eng["weights"].get(wd)
    if w is None:
        why.append(f"{name}: weights {wd} are not expressible; formats: {', '.join(eng['weights'])}")
    else:
        if w.get("value"):
            knobs.append(("quantization", w["value"]))
        if w.get("checkpoint"):
            notes.append(f"weights {wd}: set MODEL to {w['checkpoint']} of {r['model']}")
    kv = dtypes.normalize(r["kv_dtype"])
    if kv not in eng["kv"]:
        why.append(f"{name}: KV cache {kv} is not expressible; KV-cache formats: {', '.join(eng['kv'])}")
    elif eng["kv"][kv] != "auto":
        knobs.append(("kv_cache_dtype", eng["kv"][kv]))
    return knobs, why


def _checks(spec: dict, backend: str, r: dict[str, Any], pools: list[Pool]) -> list[str]:
    e = spec[backend]
    name = backend
    why = []
    if r["mode"] == "afd":
        why.append(f"{name}: afd (attention/FFN disaggregation) is not expressible: the engine has no "
                   "attention/FFN disaggregation")
    elif r["mode"] not in e["modes"]:
        why.append(f"{name}: {r['mode']} is written as a Dynamo graph of prefill and decode workers: "
                   "use --backend dynamo")
    for dev in dict.fromkeys(p.device for p in pools):
        vendor = get_device(dev).vendor
        if vendor not in e["vendors"]:
            why.append(f"{name}: device {dev} ({vendor}) is not expressible: the engine runs on "
                       f"{', '.join(e['vendors'])} devices")
    if float(r["spec_tokens"] or 0) > 0:
        why.append(f"{name}: speculative decoding (spec_tokens {r['spec_tokens']}) needs a draft or MTP "
                   "configuration dse does not write")
    return why


def _max_tokens(r: dict[str, Any]) -> int:
    """The per-step token budget dse modelled for this row: its max_num_tokens, else its
    backend's default on its device (runtime.yaml engine_limits)."""
    own = float(r.get("max_num_tokens") or 0)
    if own > 0:
        return int(own)
    dev = get_device(r["device"])
    return int(engine_limit(r["backend"] or "default", dev.id, dev.memory_gb)[1])


def _bench(spec: dict, backend: str, p: LaunchPlan, port: int) -> list[str]:
    """The benchmark argv: the engine's own tool, else AIPerf against its OpenAI endpoint."""
    e = spec[backend]
    tool = e["bench"] if isinstance(e["bench"], dict) else spec["aiperf"]
    f = tool["flags"]
    argv = [*tool["command"], *tool["fixed"], f["model"], "$MODEL"]
    argv += [f["url"], f"localhost:{port}", f["tokenizer"], "$MODEL"] if "url" in f else [f["port"], str(port)]
    argv += [f["isl"], str(p.isl), f["osl"], str(p.osl), f["concurrency"], str(p.concurrency),
             f["num_prompts"], str(p.num_prompts)]
    if "result_dir" in f:
        argv += [f["result_dir"], "$OUT"]
    if "result_file" in f:
        argv += [f["result_file"], "$OUT/" + ("bench.jsonl" if tool["result"] == "jsonl" else "bench.json")]
    if "metadata" in f:
        argv += [f["metadata"], f"dse_config_id={p.config_id}", f"isl={p.isl}", f"osl={p.osl}"]
    return argv


def _argv(eng: dict, knobs: list[tuple[str, Any]]) -> list[str]:
    flags, out = eng["serve"]["flags"], []
    for k, v in knobs:
        out += [flags[k]] if v is True else [flags[k], str(v)]
    return out


def _serve(spec: dict, backend: str, p: LaunchPlan, moe: bool, port: int, experts: int = 0) -> None:
    """Fill p.serve (and trtllm's options, dynamo's graph), or add reasons."""
    flags_engine = spec["dynamo"]["engine"] if backend == "dynamo" else backend
    eng = spec[flags_engine]
    name = backend
    fmt, why = _formats(eng, p.row, name, p.notes)
    p.reasons += why
    tokens = _max_tokens(p.row)
    for pool in p.pools:
        lay, why = _layout_flags(eng, pool, moe, f"{name} {pool.role} pool", experts)
        p.reasons += why
        knobs = lay + fmt + [("max_batched_tokens", tokens)]
        if pool.max_seqs:
            knobs.append(("max_seqs", pool.max_seqs))
        if backend != "dynamo":
            knobs.append(("port", port))
        elif p.mode == "disagg" and "kv_transfer" in eng["serve"]["flags"]:
            knobs.append(("kv_transfer", spec["dynamo"]["graph"]["kv_transfer"]))
        if backend == "trtllm":
            p.extra_options = _trtllm_options(eng, knobs)
            knobs = [kv for kv in knobs if kv[0] in eng["serve"]["flags"] and kv[1] is not True
                     and kv[0] not in ("quantization", "kv_cache_dtype")]
            knobs.append(("extra_options", "extra_llm_api_options.yaml"))
        p.serve[pool.role] = _argv(eng, knobs)
    if backend == "dynamo" and p.ok:
        from dse.launch.graph import dynamo_graph

        p.graph = dynamo_graph(spec["dynamo"], p)


def _trtllm_options(eng: dict, knobs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The extra LLM-API options YAML: the same layout and limits, plus what has no flag."""
    keys, out = eng["serve"]["options"], {}
    for k, v in knobs:
        if k in keys:
            node, *rest = keys[k].split(".")
            if rest:
                out.setdefault(node, {})[rest[0]] = v
            else:
                out[node] = v
    return out


def _workload(p: LaunchPlan) -> None:
    """isl / osl as modelled; concurrency = the requests in flight dse assumed for one unit."""
    r = p.row
    p.isl, p.osl = int(r["isl"]), int(r["osl"])
    if r["mode"] == "disagg":
        dec = next(x for x in p.pools if x.role == "decode")
        p.concurrency = dec.max_seqs * dec.workers
    else:
        p.concurrency = int(r["batch_size"])
    rounds = float(r.get("bench_rounds", math.inf))
    rounds = rounds if math.isfinite(rounds) and rounds >= 1 else BENCH_ROUNDS
    p.num_prompts = max(int(round(p.concurrency * rounds)), p.concurrency)
    if int(r["replicas"]) > 1:
        p.notes.append(f"dse counts {r['replicas']} replicas: serve.sh starts one; bench.sh measures one "
                       f"(compare with tokens_per_s / {r['replicas']})")


def plan(row: Mapping[str, Any], backend: str, *, port: int | None = None) -> LaunchPlan:
    """The launch plan of one results row (a pareto.csv row or an evaluate() row) on one
    engine: vllm, sglang, trtllm or dynamo."""
    if backend not in BACKENDS:
        raise DSEError(f"deploy: backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    spec = engines()
    r = resolve_row(row)
    cid = r.get("config_id")
    cid = int(cid) if isinstance(cid, (int, float)) and not (isinstance(cid, float) and math.isnan(cid)) else None
    p = LaunchPlan(config_id=cid, backend=backend, mode=r["mode"], model=r["model"], row=r, pools=_pools(r))
    p.reasons += _checks(spec, backend, r, p.pools)
    if p.mode == "afd":
        return p
    try:
        model = get_model(r["model"])
    except DSEError as exc:
        p.reasons.append(f"{backend}: {exc}")
        return p
    moe = model.is_moe
    experts = max(g.ffn.num_experts for g in model.groups) if moe else 0
    port = port or (spec["dynamo"]["graph"]["port"] if backend == "dynamo" else spec[backend]["serve"]["port"])
    _workload(p)
    _serve(spec, backend, p, moe, port, experts)
    if p.ok:
        p.bench = _bench(spec, backend, p, port)
        if r["backend"] and r["backend"] != (spec["dynamo"]["engine"] if backend == "dynamo" else backend):
            p.notes.append(f"dse predicted this row with the {r['backend']} serving constants")
    else:
        p.serve, p.extra_options, p.graph = {}, None, None
    return p
