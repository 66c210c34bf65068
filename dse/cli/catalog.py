"""`dse models` and `dse hardware`: the catalog, listed or one entry with its sources."""
from __future__ import annotations

import argparse
from typing import Any

from dse.errors import DSEError

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    models = sub.add_parser("models", help="model catalog: list, or show one with its source")
    models.add_argument("action", choices=["list", "show"])
    models.add_argument("id", nargs="?", help="model id (Hugging Face name) for `show`")
    models.set_defaults(func=_cmd_models)
    hw = sub.add_parser("hardware", help="device catalog: list, or show one with every figure's source")
    hw.add_argument("action", choices=["list", "show"])
    hw.add_argument("id", nargs="?", help="device id or YAML path for `show`")
    hw.set_defaults(func=_cmd_hardware)


def _show(a: argparse.Namespace, what: str) -> int:
    from dse.cli import show

    if not a.id:
        raise DSEError(f"{what} show: give an id, e.g. `dse {what} show " +
                       ("h100_sxm`" if what == "hardware" else "meta-llama/Llama-3.1-70B`"))
    print(show.show_device(a.id) if what == "hardware" else show.show_model(a.id))
    return 0


def _cmd_models(a: argparse.Namespace) -> int:
    from dse.catalog.models import get_model, model_ids

    if a.action == "show":
        return _show(a, "models")
    for mid in model_ids():
        try:
            m = get_model(mid)
        except DSEError as exc:
            print(f"{mid:<55} unsupported: {str(exc).split(': ', 1)[-1]}")  # drop the file path
            continue
        kinds = "+".join(sorted({g.attention.kind + ("-swa" if g.attention.window else "") for g in m.groups}))
        print(f"{mid:<55} {m.total_params() / 1e9:8.1f}B total {m.active_params() / 1e9:7.1f}B active "
              f"{m.num_layers:4d} layers  {kinds:<12} {'moe' if m.is_moe else 'dense':<5} {m.native_dtype}")
    return 0


def _cmd_hardware(a: argparse.Namespace) -> int:
    from dse.catalog.devices import all_devices

    if a.action == "show":
        return _show(a, "hardware")
    print(f"{'id':<13} {'bf16':>6} {'fp8':>6} {'fp4':>6} {'GB':>5} {'TB/s':>5} {'up GB/s':>7} {'TDP W':>6} "
          f"{'$':>7} {'$/h':>5}  system")
    for d in all_devices():
        pk = d.peak_tflops
        print(f"{d.id:<13} {pk['bf16']:>6.0f} {pk.get('fp8', 0):>6.0f} {pk.get('fp4', 0):>6.0f} {d.memory_gb:>5.0f} "
              f"{d.memory_tb_s:>5.2f} {d.scaleup_gb_s:>7.0f} {d.tdp_w:>6.0f} {d.price_usd:>7.0f} "
              f"{d.rent_usd_per_hour:>5.2f}  {d.system}")
    return 0
