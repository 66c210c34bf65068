"""`dse schema KIND`: the JSON Schema of a data file, generated from the pydantic models.

Why: an editor with yaml-language-server completes and checks scenario and hardware files
as they are typed (the shipped files point at docs/schemas/*.schema.json), and
docs/scenario.md is generated from the same models, so the documentation cannot drift
from what the loader accepts. Regenerate both with `python -m dse.cli.schema --write`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["KINDS", "model_of", "json_schema", "schema_text", "write_all", "add_parser", "main"]

KINDS = ("scenario", "device", "system", "facility", "sizing")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def model_of(kind: str):
    """The pydantic model that validates files of this kind."""
    if kind == "scenario":
        from dse.search.scenario import Scenario
        return Scenario
    if kind == "device":
        from dse.catalog.devices import DeviceFile
        return DeviceFile
    if kind == "system":
        from dse.catalog.systems import SystemFile
        return SystemFile
    if kind == "facility":
        from dse.catalog.facility import FacilityFile
        return FacilityFile
    if kind == "sizing":
        from dse.solvers.sizing_problem import SizingFile
        return SizingFile
    from dse.errors import DSEError
    raise DSEError(f"schema: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")


def json_schema(kind: str) -> dict:
    """JSON Schema (2020-12) of one kind of file."""
    body = model_of(kind).model_json_schema()
    return {"$schema": SCHEMA_DIALECT, "$id": f"{kind}.schema.json", **body}


def schema_text(kind: str) -> str:
    return json.dumps(json_schema(kind), indent=2, sort_keys=False) + "\n"


def write_all(docs: Path = DOCS) -> list[Path]:
    """docs/schemas/KIND.schema.json for every kind, and docs/scenario.md."""
    from dse.cli.schema_docs import markdown

    out = []
    (docs / "schemas").mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        p = docs / "schemas" / f"{kind}.schema.json"
        p.write_text(schema_text(kind))
        out.append(p)
    p = docs / "scenario.md"
    p.write_text(markdown())
    out.append(p)
    return out


def _cmd(a: argparse.Namespace) -> int:
    if a.markdown:
        from dse.cli.schema_docs import markdown
        sys.stdout.write(markdown())
    else:
        sys.stdout.write(schema_text(a.kind))
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("schema", help="JSON Schema of a data file (scenario, device, system, facility, sizing)")
    p.add_argument("kind", choices=KINDS, nargs="?", default="scenario")
    p.add_argument("--markdown", action="store_true", help="print the data-file reference (docs/scenario.md)")
    p.set_defaults(func=_cmd)


def main(argv: list[str] | None = None) -> int:
    """`python -m dse.cli.schema [KIND] [--markdown] [--write]`."""
    ap = argparse.ArgumentParser(prog="python -m dse.cli.schema")
    ap.add_argument("kind", choices=KINDS, nargs="?", default="scenario")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--write", action="store_true", help="regenerate docs/schemas/*.json and docs/scenario.md")
    a = ap.parse_args(argv)
    if a.write:
        for p in write_all():
            print(f"wrote {p}")
        return 0
    return _cmd(a)


if __name__ == "__main__":
    sys.exit(main())
