"""Reading data files safely: one YAML document, plain data, every error one line.

Why not `yaml.safe_load`: it keeps the last of two duplicate keys without a word, expands
aliases (an alias bomb makes a tiny file cost gigabytes once validated), reads `yes`,
`no`, `on` and `off` as booleans (YAML 1.1) and `1e6` as a string. Here duplicate keys
and anchors/aliases are refused with the key path and line, only `true`/`false` are
booleans, `1e6` is a number, and files over `MAX_BYTES` or nested deeper than
`MAX_DEPTH` are refused before any work is done.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from dse.errors import DSEError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "load_yaml", "parse_yaml", "read_mapping"]

MAX_BYTES = 1_000_000
MAX_DEPTH = 32

_BOOL = "tag:yaml.org,2002:bool"
_FLOAT = "tag:yaml.org,2002:float"
_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # libyaml when present: 200k values in ~0.2 s


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """Safe loader with YAML 1.2 booleans (true/false only) and floats (1e6, 2.5E-3)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_FLOAT, re.compile(
    r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)"
    r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def _where(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


def _refuse_anchors(text: str, where: str) -> None:
    """Anchors and aliases are refused at the first one (before anything is built)."""
    if "&" not in text and "*" not in text:
        return
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise DSEError(f"{where}: {kind}{event.anchor} at {_where(event.start_mark)}: anchors and aliases "
                           "are not allowed in data files; write the values out")


def _key_text(node) -> str:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else "<complex key>"


def _check_nodes(root, where: str) -> None:
    """Duplicate keys (with key path and line) and nesting depth, in one O(n) pass."""
    stack = [(root, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DSEError(f"{where}: {path or '<top>'}: nested deeper than {MAX_DEPTH} levels "
                           f"({_where(node.start_mark)})")
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = _key_text(key)
                sub = f"{path}.{name}" if path else name
                if name in seen:
                    raise DSEError(f"{where}: {sub}: duplicate key ({_where(key.start_mark)}); give each key once")
                seen.add(name)
                if not isinstance(value, yaml.ScalarNode):
                    stack.append((value, sub, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                if not isinstance(item, yaml.ScalarNode):
                    stack.append((item, f"{path}[{i}]", depth + 1))


def parse_yaml(text: str, where: str) -> Any:
    """One YAML document from text (see the module docstring for what is refused)."""
    if len(text) > MAX_BYTES:
        raise DSEError(f"{where}: {len(text):,} characters, over the {MAX_BYTES:,} a data file may have")
    try:
        _refuse_anchors(text, where)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_nodes(node, where)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "unreadable"
        raise DSEError(f"{where}: not valid YAML ({problem}, {_where(exc.problem_mark)})") from None
    except yaml.YAMLError as exc:
        raise DSEError(f"{where}: not valid YAML ({(str(exc).splitlines() or ['?'])[0]})") from None


def load_yaml(path: str | Path) -> Any:
    """The document of a YAML file; the size cap is checked before reading."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise DSEError(f"{path}: no such file") from None
    if size > MAX_BYTES:
        raise DSEError(f"{path}: {size:,} bytes, over the {MAX_BYTES:,} a data file may have")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DSEError(f"{path}: cannot read ({type(exc).__name__})") from None
    return parse_yaml(text, str(path))


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise DSEError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data
