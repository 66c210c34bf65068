"""hardware/engines.yaml: the serving engines' real flag names, read and checked once.

Keeping the names in a data file (with the version and page each was read from) lets a
user correct a renamed flag without touching code, and lets the tests check that every
flag dse writes is one the file lists.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from dse.catalog.runtime import hardware_dir
from dse.catalog.yamlfile import read_mapping
from dse.errors import DSEError

__all__ = ["ENGINES", "BACKENDS", "engines", "flag_names", "load_engines"]

BACKENDS = ("vllm", "sglang", "trtllm", "dynamo")
ENGINES = BACKENDS + ("aiperf",)
_REQUIRED = {"vllm": ("version", "sources", "vendors", "modes", "serve", "parallel", "weights", "kv", "bench"),
             "sglang": ("version", "sources", "vendors", "modes", "serve", "parallel", "weights", "kv", "bench"),
             "trtllm": ("version", "sources", "vendors", "modes", "serve", "parallel", "weights", "kv", "bench"),
             "dynamo": ("version", "sources", "vendors", "modes", "engine", "graph", "bench"),
             "aiperf": ("version", "sources", "command", "flags", "fixed", "names", "result")}


def load_engines(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The engines file as a mapping, every engine present with its required keys."""
    path = Path(path) if path is not None else hardware_dir() / "engines.yaml"
    if not path.is_file():
        raise DSEError(f"{path}: no such file")
    data = read_mapping(path)
    for name, keys in _REQUIRED.items():
        spec = data.get(name)
        if not isinstance(spec, dict):
            raise DSEError(f"{path}: {name}: missing engine; required: {', '.join(ENGINES)}")
        missing = [k for k in keys if k not in spec]
        if missing:
            raise DSEError(f"{path}: {name}.{missing[0]}: missing; required: {', '.join(keys)}")
        if not all(str(v).strip() for v in spec["sources"].values()):
            raise DSEError(f"{path}: {name}.sources: every entry needs its page or file")
    engine = data["dynamo"]["engine"]
    if engine not in ("vllm", "sglang", "trtllm"):
        raise DSEError(f"{path}: dynamo.engine: {engine!r}; allowed: vllm, sglang, trtllm")
    return data


@lru_cache(maxsize=1)
def engines() -> dict[str, dict[str, Any]]:
    """The shipped engines file (read once)."""
    return load_engines()


def flag_names(name: str, spec: dict[str, dict[str, Any]] | None = None) -> set[str]:
    """Every command-line flag the file lists for one engine: its serve and bench flags
    (for dynamo: its worker engine's serve flags and the graph's own flags)."""
    spec = engines() if spec is None else spec
    e = spec[name]
    if name == "aiperf":
        return set(e["flags"].values()) | set(e["names"])
    if name == "dynamo":
        g = e["graph"]
        return flag_names(e["engine"], spec) | {g["model"], g["role_flag"]}
    out = set(e["serve"]["flags"].values())
    if e["serve"]["model"] != "positional":
        out.add(e["serve"]["model"])
    bench = e["bench"]
    if isinstance(bench, dict):
        out |= set(bench["flags"].values()) | set(bench["names"])
    return out
