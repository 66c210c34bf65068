"""`dse evaluate`: one configuration in detail (metrics, pools, per-operator breakdown), or
the product of comma-separated values as a table, one row per configuration."""
from __future__ import annotations

import argparse
import math
from typing import Any

from dse import schema
from dse.errors import DSEError
from dse.io import to_json

__all__ = ["add_parser"]

_CHOICES = {"mode": schema.MODES, "weight_dtype": ("native", "bf16", "fp8", "int8", "fp4", "int4"),
            "kv_dtype": ("bf16", "fp8", "int8", "int4"), "backend": ("trtllm", "vllm", "sglang")}
_TABLE = ("ttft_ms", "tpot_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_user", "usd_per_mtok", "joules_per_token",
          "num_gpus", "quality_loss")


def add_parser(sub: Any) -> None:
    ev = sub.add_parser(
        "evaluate", help="one configuration's metrics and per-operator breakdown (comma lists: their product)",
        description="Evaluate a configuration. Any flag takes a comma-separated list; the product of all "
                    "lists is evaluated and printed as a table (one configuration: the full breakdown).")
    for name, default in schema.COLUMNS.items():
        flag = "--" + name.replace("_", "-")
        meaning = schema.COLUMN_HELP.get(name, name)
        if name == "own":
            ev.add_argument("--rent", dest="own", action="store_const", const="false", default=None,
                            help="rent the hardware at $/GPU-hour instead of owning it")
            continue
        choices = f"; one of {', '.join(_CHOICES[name])}" if name in _CHOICES else ""
        dflt = "required" if default is None else f"default {default!r}" if default != "" else "default: inherit"
        ev.add_argument(flag, dest=name, metavar="V[,V...]", required=default is None,
                        help=f"{meaning}{choices} ({dflt})")
    ev.add_argument("--json", action="store_true", help="print strict JSON instead of tables")
    ev.set_defaults(func=_cmd_evaluate)


def _parse(name: str, text: str) -> list:
    """A flag's comma-separated values in the column's type; a one-line error names the flag."""
    out = []
    for v in (x.strip() for x in str(text).split(",")):
        if name in schema.STRING_COLUMNS:
            out.append(v)
            continue
        if name == "own":
            out.append(v != "false")
            continue
        try:
            num = float(v)
        except ValueError:
            raise DSEError(f"--{name.replace('_', '-')}: expected a number, got {v!r}") from None
        whole = (name in schema.INT_COLUMNS or name in schema.ROLE_INT_COLUMNS
                 or name in ("spec_tokens", "redundant_experts"))
        if whole and math.isfinite(num) and num == int(num):
            num = int(num)
        out.append(num)
    return out


def _header(row) -> str:
    from dse.search.recommend import describe

    c = describe(row)
    pools = "; ".join(f"{p['role']} {p['gpus']} x {p['device']}"
                      + "".join(f" {k}{p[k]}" for k in ("tp", "pp", "dp", "ep") if p.get(k, 1) != 1)
                      for p in c["pools"])
    return (f"{row['model']} · {c['mode']} · {pools} · weights {row['weight_dtype']}, kv {row['kv_dtype']}, "
            f"batch {row['batch_size']:.0f}, isl {row['isl']:.0f}, osl {row['osl']:.0f}")


def _one(cfg: dict, as_json: bool) -> int:
    from dse import api

    row = api.evaluate(**cfg).iloc[0]           # strict: a layout that cannot exist is an error
    if not row["feasible"]:
        if as_json:
            print(to_json({"metrics": dict(row.items())}))
            return 0
        print(f"INFEASIBLE: {row['infeasible_reason']}")
        print(_header(row))
        return 0
    row, ops, pools = api.explain(**cfg)
    if as_json:
        print(to_json({"metrics": dict(row.items()), "pools": pools.to_dict(orient="records"),
                       "ops": ops.to_dict(orient="records")}))
        return 0
    print(_header(row))
    width = max(len(m) for m in schema.METRICS)
    for m in schema.METRICS:
        v = row[m]
        print(f"  {m:<{width}}  {v:,.4g}" if isinstance(v, float) else f"  {m:<{width}}  {v}")
    fmt = lambda x: f"{x:,.4g}"  # noqa: E731
    print()
    print(pools.to_string(index=False, float_format=fmt))
    print()
    print(ops.to_string(index=False, float_format=fmt))
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from dse import api

    values = {k: _parse(k, v) for k, v in vars(a).items() if k in schema.COLUMNS and v is not None}
    if all(len(v) == 1 for v in values.values()):
        return _one({k: v[0] for k, v in values.items()}, a.json)
    df = api.evaluate(strict=False, **api.grid(**values))
    varying = [k for k, v in values.items() if len(v) > 1]
    if a.json:
        print(to_json(df.to_dict(orient="records")))
        return 0
    df["status"] = df["infeasible_reason"].astype(str).where(~df["feasible"], "ok")
    print(f"{len(df)} configurations ({' x '.join(f'{k} {len(values[k])}' for k in varying)}), "
          f"{int(df['feasible'].sum())} feasible")
    print(df[varying + list(_TABLE) + ["status"]].to_string(index=False, float_format=lambda x: f"{x:,.4g}"))
    return 0
