"""Launch plans to files: per configuration a directory a person can run and compare.

Each directory holds serve.sh (or the Dynamo graph it applies), trtllm's extra LLM-API
options where used, bench.sh (the matching benchmark at the same isl, osl and
concurrency), deployment.json (the deployment in the column set `dse validate
--measurements` reads, for dse.fit.bench_results) and a README with what dse predicted.
Plans that cannot run get no directory, only their reasons in the top-level README.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Iterable

import yaml

from dse.catalog import dtypes
from dse.catalog.models import get_model
from dse.io import write_json, write_text
from dse.launch.engines import engines
from dse.launch.plan import _QUANT_NAMES, LaunchPlan

__all__ = ["write", "deployment_record", "shell_line"]

_HOWTO = {"vllm": "vLLM", "sglang": "SGLang", "trtllm": "TensorRT-LLM", "dynamo": "NVIDIA Dynamo"}


def shell_line(argv: list[str]) -> str:
    """argv as one shell line; tokens naming $MODEL / $OUT stay expandable."""
    return " ".join(f'"{a}"' if a.startswith("$") else shlex.quote(a) for a in argv)


def _serve_sh(p: LaunchPlan) -> str:
    spec = engines()[p.backend]
    head = ["#!/usr/bin/env bash", f"# dse configuration {p.config_id}: {p.mode} on {p.backend} ({spec['version']})",
            *[f"# note: {n}" for n in p.notes], "set -euo pipefail", 'cd "$(dirname "$0")"',
            f'MODEL="${{MODEL:-{p.model}}}"']
    if p.backend == "dynamo":
        name = p.graph["metadata"]["name"]
        return "\n".join(head + ["# the graph's workers carry the model id; edit dynamo_graph.yaml to change it",
                                 "kubectl apply -f dynamo_graph.yaml",
                                 f"echo 'then: kubectl port-forward svc/{name}-frontend "
                                 f"{engines()['dynamo']['graph']['port']}:{engines()['dynamo']['graph']['port']}'"]) + "\n"
    serve = spec["serve"]
    model = ["$MODEL"] if serve["model"] == "positional" else [serve["model"], "$MODEL"]
    (argv,) = p.serve.values()
    return "\n".join(head + ["exec " + shell_line([*serve["command"], *model, *argv])]) + "\n"


def _bench_sh(p: LaunchPlan) -> str:
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# dse configuration {p.config_id}: the benchmark at dse's workload: isl {p.isl}, osl {p.osl}, "
        f"concurrency {p.concurrency} ({p.num_prompts} requests)",
        "set -euo pipefail",
        f'MODEL="${{MODEL:-{p.model}}}"',
        'OUT="${OUT:-$(cd "$(dirname "$0")" && pwd)/results}"',
        'mkdir -p "$OUT"',
        shell_line(p.bench),
        'echo "then: python -m dse.fit.bench_results \\"$OUT\\" --out measured.csv && '
        'dse validate --measurements measured.csv"',
    ]) + "\n"


def _precision(p: LaunchPlan) -> str:
    wd = p.row["weight_dtype"]
    return get_model(p.model).native_dtype if wd == "native" else dtypes.normalize(wd)


def _layout_fields(prefix: str, pool, moe: bool) -> dict[str, Any]:
    world = pool.tp * pool.dp
    return {f"{prefix}tp_size": pool.tp, f"{prefix}pp_size": pool.pp, f"{prefix}attention_dp_size": pool.dp,
            f"{prefix}moe_tp_size": world // pool.ep if moe else world, f"{prefix}moe_ep_size": pool.ep if moe else 1}


def deployment_record(p: LaunchPlan) -> dict[str, Any]:
    """The deployment in the measured-deployment column set (without the measurements);
    batch sizes are per attention-DP rank, as those files count them."""
    spec = engines()
    engine = spec["dynamo"]["engine"] if p.backend == "dynamo" else p.backend
    moe = get_model(p.model).is_moe
    prec = _precision(p)
    quant = _QUANT_NAMES.get(prec)
    rec: dict[str, Any] = {"backend": engine, "backend_version": spec[p.backend]["version"], "model_path": p.model,
                           "system": p.pools[0].device, "precision": prec, "mode": p.mode, "isl": p.isl,
                           "osl": p.osl, "gemm_quant_mode": quant, "moe_quant_mode": quant if moe else None,
                           "kv_dtype": dtypes.normalize(p.row["kv_dtype"]), "concurrency": p.concurrency,
                           "dse_config_id": p.config_id, "launch_backend": p.backend}
    if p.mode == "disagg":
        pre, dec = p.pools
        rec["system"] = dec.device
        rec.update(_layout_fields("prefill_", pre, moe), prefill_num_workers=pre.workers, prefill_batch_size=1)
        rec.update(_layout_fields("decode_", dec, moe), decode_num_workers=dec.workers,
                   decode_batch_size=dec.max_seqs / dec.dp)
    else:
        (pool,) = p.pools
        rec.update(_layout_fields("", pool, moe), batch_size=p.concurrency / pool.dp)
    return rec


def _readme(p: LaunchPlan) -> str:
    spec = engines()[p.backend]
    pred = p.predicted()
    lines = [f"# dse configuration {p.config_id} on {_HOWTO[p.backend]}", "",
             f"{p.model}, {p.mode}; engine names for {spec['version']}.", "", "## What dse predicted", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:,.4g} |" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"| {k} | {v} |"
              for k, v in pred.items()]
    lines += ["", f"at isl {p.isl}, osl {p.osl} and {p.concurrency} requests in flight.", "", "## Deployment", ""]
    for pool in p.pools:
        eplb = f", {pool.redundant} redundant experts (EPLB)" if pool.redundant else ""
        lines.append(f"- {pool.role}: {pool.workers} x {pool.gpus} {pool.device} (tp {pool.tp}, dp {pool.dp}, "
                     f"ep {pool.ep}, pp {pool.pp}{eplb})")
    lines.append(f"- weights {p.row['weight_dtype']}, KV cache {p.row['kv_dtype']}")
    lines += [f"- note: {n}" for n in p.notes]
    run = ("`./serve.sh` applies `dynamo_graph.yaml` (kubectl); port-forward the frontend" if p.backend == "dynamo"
           else "`./serve.sh` starts the server")
    lines += ["", "## Run and compare", "", f"1. {run}.", "2. `./bench.sh` runs the benchmark against it and "
              "writes results/.", "3. `python -m dse.fit.bench_results results --out measured.csv` reads them back "
              "with this deployment (deployment.json) into the measured-deployment columns;",
              "   `dse validate --measurements measured.csv` holds dse's model against them.", "",
              "Engine flag names and their sources: hardware/engines.yaml.", ""]
    return "\n".join(lines)


def _index(plans: list[LaunchPlan]) -> str:
    lines = ["# dse deploy", "", "| configuration | engine | mode | written |", "|---|---|---|---|"]
    for p in plans:
        lines.append(f"| {p.config_id} | {p.backend} | {p.mode} | "
                     f"{p.name + '/' if p.ok else 'no: ' + '; '.join(p.reasons)} |")
    return "\n".join(lines) + "\n"


def write(plans: Iterable[LaunchPlan], out_dir: str | Path) -> list[Path]:
    """Write each runnable plan's directory under out_dir (and an index README); returns
    the directories written."""
    plans, out = list(plans), Path(out_dir)
    dirs = []
    for p in plans:
        if not p.ok:
            continue
        d = out / p.name
        write_text(d / "serve.sh", _serve_sh(p))
        if p.extra_options is not None:
            write_text(d / "extra_llm_api_options.yaml", yaml.safe_dump(p.extra_options, sort_keys=False))
        if p.graph is not None:
            write_text(d / "dynamo_graph.yaml", yaml.safe_dump(p.graph, sort_keys=False))
        write_text(d / "bench.sh", _bench_sh(p))
        write_json(d / "deployment.json", {**deployment_record(p), "predicted": p.predicted()})
        write_text(d / "README.md", _readme(p))
        for sh in ("serve.sh", "bench.sh"):
            (d / sh).chmod(0o755)
        dirs.append(d)
    write_text(out / "README.md", _index(plans))
    return dirs

