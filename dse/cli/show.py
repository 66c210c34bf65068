"""`dse hardware show ID` and `dse models show ID`: one catalog entry, every figure beside
the source it carries, so a user can check what a prediction stands on."""
from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["show_device", "show_model"]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def show_device(ref: str) -> str:
    from dse.catalog.devices import get_device

    d = get_device(ref)
    lines = [f"{d.id}: {d.name} ({d.vendor}, {d.family})  file {d.path}"]
    skip = {"id", "name", "vendor", "family", "sources", "path", "notes"}
    for f in dataclasses.fields(d):
        if f.name in skip:
            continue
        v = getattr(d, f.name)
        src = d.sources.get(f.name, "")
        lines.append(f"  {f.name:<18} {_fmt(v):<40} {src}")
    if getattr(d, "notes", ""):
        lines.append(f"  notes: {d.notes}")
    return "\n".join(lines)


def show_model(ref: str) -> str:
    from dse.catalog.models import get_model

    m = get_model(ref)
    lines = [f"{m.id}: {m.model_type}, {m.total_params() / 1e9:.1f}B total, {m.active_params() / 1e9:.1f}B active, "
             f"{m.num_layers} layers, hidden {m.hidden}, vocab {m.vocab}, "
             f"native {m.native_dtype}{' (MXFP4)' if m.mxfp4 else ''}, "
             f"{'MoE' if m.is_moe else 'dense'}, MTP heads {m.mtp_heads}",
             f"  source: {m.source} (Hugging Face config.json, redistributed in aiconfigurator-core 0.12.0, "
             "Apache-2.0, Copyright NVIDIA CORPORATION & AFFILIATES)"]
    for i, g in enumerate(m.groups):
        a, f = g.attention, g.ffn
        att = f"{a.kind} attention, {a.num_heads} heads / {a.num_kv_heads} KV"
        if a.window:
            att += f", window {a.window}"
        ffn = (f"MoE {f.num_experts} experts, top-{f.top_k}" if f.kind == "moe" else f"dense FFN {f.intermediate}")
        lines.append(f"  group {i}: {g.count} layers: {att}; {ffn}")
    return "\n".join(lines)
