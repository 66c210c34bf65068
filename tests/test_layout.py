"""The house rules, checked on the source: imports flow one way (module-level and
in-function imports alike), no import circle, no module over 600 lines, no function over
120, and every public module declares `__all__`."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "dse"
# layer of each package, lowest first; a module may import its own layer or lower ones.
# schema, errors, io and pareto (non-dominated sets, hypervolume) sit below everything and may be imported anywhere.
LAYERS = {"schema": 0, "errors": 0, "io": 0, "pareto": 0, "catalog": 1, "model": 2, "deploy": 3, "solvers": 4,
          "search": 5, "report": 5, "fit": 5, "launch": 5, "api": 6, "cli": 7, "__init__": 8}
SIBLINGS_APART = {("search", "report"), ("report", "search"), ("report", "fit"), ("fit", "report"),
                  ("search", "fit"), ("fit", "search"), ("launch", "search"), ("launch", "report"),
                  ("launch", "fit"), ("search", "launch"), ("report", "launch"), ("fit", "launch")}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("dse"):
            deps.add(node.module)
            for a in node.names:    # `from dse.model import ops` imports the module dse.model.ops
                if f"{node.module}.{a.name}" in MODULES:
                    deps.add(f"{node.module}.{a.name}")
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.startswith("dse")}
    return {d for d in deps if d in MODULES}


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_circle():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH[m]):
            if d.startswith(m + "."):       # a package importing its own submodules is no circle
                continue
            if state.get(d) == 1:
                circle = stack[stack.index(d):] + [d]
                pytest.fail("import circle: " + " -> ".join(circle))
            if not state.get(d):
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if not state.get(m):
            visit(m)


def test_imports_flow_one_way():
    bad = []
    for m, deps in GRAPH.items():
        lm = _layer(m)
        for d in deps:
            ld = _layer(d)
            if ld == "__init__" and d == "dse":
                continue          # `from dse.errors import ...` resolves through the package
            if LAYERS[ld] > LAYERS[lm] or (lm, ld) in SIBLINGS_APART:
                bad.append(f"{m} imports {d} ({lm} -> {ld})")
    assert not bad, "\n".join(sorted(bad))


def test_model_imports_only_catalog_and_below():
    for m, deps in GRAPH.items():
        if _layer(m) == "model":
            assert all(_layer(d) in ("model", "catalog", "schema", "errors") for d in deps), (m, deps)


def test_module_and_function_sizes():
    long_modules = [f"{m}: {len(p.read_text().splitlines())}" for m, p in MODULES.items()
                    if len(p.read_text().splitlines()) > 600]
    long_functions = []
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 120:
                    long_functions.append(f"{m}.{node.name}: {n} lines")
    assert not long_modules and not long_functions, "\n".join(long_modules + long_functions)


def test_public_modules_declare_all():
    missing = [m for m, p in MODULES.items()
               if not m.split(".")[-1].startswith("_") and p.name != "__init__.py"
               and "__all__" not in p.read_text()]
    assert not missing, ", ".join(missing)
