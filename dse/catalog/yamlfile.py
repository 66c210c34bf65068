"""Reading data files safely: one YAML document, plain data, every error one line.

Why not `yaml.safe_load`: it keeps the last of two duplicate keys without a word, expands
aliases (an alias bomb makes a tiny file cost gigabytes once validated), reads `yes`,
`no`, `on` and `off` as booleans (YAML 1.1) and `1e6` as a string. Here duplicate keys
and anchors/aliases are refused with the key path and line, only `true`/`false` are
booleans, `1e6` is a number, and files over `MAX_BYTES` or nested deeper than
`MAX_DEPTH` are refused before any work is done.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from dse.errors import DSEError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "load_yaml", "parse_yaml", "read_mapping"]

MAX_BYTES = 4_000_000
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


_STR, _INT, _SEQ, _MAP = ("tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:seq",
                          "tag:yaml.org,2002:map")
_PLAIN_INT = re.compile(r"^(?:0|-?[1-9][0-9]*)$")
_PLAIN_FLOAT = re.compile(r"^-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?$")


def _resolve_fast(self, kind, value, implicit):
    """Plain decimal integers skip PyYAML's regex loop (the bulk of a long axis)."""
    if kind is yaml.ScalarNode and implicit[0] and _PLAIN_INT.match(value):
        return _INT
    return _Base.resolve(self, kind, value, implicit)


_Loader.resolve = _resolve_fast


def _build(loader, node, path: str, depth: int, where: str) -> Any:
    """The Python value of a node: duplicate keys (with key path and line), merge keys and
    nesting depth refused; plain numbers and strings built without PyYAML's per-object overhead."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR:
            return node.value
        if node.tag == _INT and _PLAIN_INT.match(node.value):
            return int(node.value)
        if node.tag == _FLOAT and _PLAIN_FLOAT.match(node.value):
            return float(node.value)
        return loader.construct_object(node, deep=True)
    if depth >= MAX_DEPTH:
        raise DSEError(f"{where}: {path or '<top>'}: nested deeper than {MAX_DEPTH} levels "
                       f"({_where(node.start_mark)})")
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        return [_build(loader, item, f"{path}[{i}]", depth + 1, where) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
        out: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise DSEError(f"{where}: {path or '<top>'}: merge keys (<<) are not allowed "
                               f"({_where(key_node.start_mark)}); write the keys out")
            if not isinstance(key_node, yaml.ScalarNode):
                raise DSEError(f"{where}: {path or '<top>'}: a key must be a plain value "
                               f"({_where(key_node.start_mark)})")
            key = _build(loader, key_node, path, depth + 1, where)
            sub = f"{path}.{key}" if path else str(key)
            if key in out:
                raise DSEError(f"{where}: {sub}: duplicate key ({_where(key_node.start_mark)}); give each key once")
            out[key] = _build(loader, value_node, sub, depth + 1, where)
        return out
    return loader.construct_object(node, deep=True)    # a tagged collection (!!set, !!omap, ...)


# A long flow sequence of JSON numbers (a 200k-value axis) is read by json.loads, not
# scalar by scalar: PyYAML spends ~5 us per scalar. It is swapped for a placeholder that
# keeps the line count; if a placeholder does not come back as a whole value (it sat in a
# comment or a quoted string), the text is parsed as written.
_NUM = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_LONG_SEQ = re.compile(r"\[[ \t\r\n]*" + _NUM + r"(?:[ \t\r\n]*,[ \t\r\n]*" + _NUM + r"){999,}[ \t\r\n]*\]")
_FAST_FROM = 100_000      # characters; smaller files take the plain path


def _swap_long_sequences(text: str) -> tuple[str, dict[str, list]]:
    found: dict[str, list] = {}

    def swap(m: re.Match) -> str:
        key = f"__dse_seq_{len(found)}__"
        found[key] = json.loads(m.group(0))
        return key + "\n" * m.group(0).count("\n")

    return _LONG_SEQ.sub(swap, text), found


def _put_back(value: Any, found: dict[str, list], used: set) -> Any:
    if isinstance(value, str) and value in found:
        used.add(value)
        return found[value]
    if isinstance(value, list):
        return [_put_back(v, found, used) for v in value]
    if isinstance(value, dict):
        return {k: _put_back(v, found, used) for k, v in value.items()}
    return value


def _parse(text: str, where: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _build(loader, node, "", 0, where)
    finally:
        loader.dispose()


def parse_yaml(text: str, where: str) -> Any:
    """One YAML document from text (see the module docstring for what is refused)."""
    if len(text) > MAX_BYTES:
        raise DSEError(f"{where}: {len(text):,} characters, over the {MAX_BYTES:,} a data file may have")
    try:
        _refuse_anchors(text, where)
        if len(text) >= _FAST_FROM:
            swapped, found = _swap_long_sequences(text)
            if found:
                used: set = set()
                data = _put_back(_parse(swapped, where), found, used)
                if used == set(found):
                    return data
        return _parse(text, where)
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "unreadable"
        raise DSEError(f"{where}: not valid YAML ({problem}, {_where(exc.problem_mark)})") from None
    except yaml.YAMLError as exc:
        raise DSEError(f"{where}: not valid YAML ({(str(exc).splitlines() or ['?'])[0]})") from None
    except TypeError:       # an unhashable key built by a tag
        raise DSEError(f"{where}: not valid YAML (a key that is not a plain value)") from None


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
    except UnicodeDecodeError as exc:
        raise DSEError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                       "expected a YAML file") from None
    except OSError as exc:
        raise DSEError(f"{path}: cannot read ({exc.strerror or type(exc).__name__}); expected a YAML file") from None
    return parse_yaml(text, str(path))


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping."""
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise DSEError(f"{path}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data
