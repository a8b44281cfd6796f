"""The architecture, checked on the import graph of the whole package (docs/architecture.md).

Every `import` counts, function-local ones too. Layers, lowest first; each may import only from
its own layer and the ones below:

  preprocessing, encoders          libraries: know nothing of mmrec
  mmrec core                       config, data, losses, heads, evaluation
  mmrec.synthetic                  the research test-bed, a plug-in of the core
  mmrec program                    training, sweep, export, evaluate, transfer, the CLI
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mmrec", "encoders", "preprocessing", "configs")
PROGRAM = ("mmrec.cli", "mmrec.__main__", "mmrec.training", "mmrec.sweep", "mmrec.export", "mmrec.transfer",
           "mmrec.plots", "mmrec.extract_features")
SYNTHETIC = ("mmrec.synthetic",)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _targets(module: str, path: Path, node: ast.AST, mods: dict) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            if path.name != "__init__.py":
                parts = parts[:-1]
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
        # `from pkg import sub` imports the module pkg.sub; other names come from pkg itself
        names = subs + ([base] if len(subs) < len(node.names) else [])
    out = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[m].update(_targets(m, p, node, mods))
    return graph


def _in(module: str, layer: tuple[str, ...]) -> bool:
    return any(module == x or module.startswith(x + ".") for x in layer)


def layer(module: str) -> int:
    if module.startswith(("preprocessing", "encoders", "configs")):
        return 0
    if _in(module, PROGRAM):
        return 3
    if _in(module, SYNTHETIC):
        return 2
    return 1


def test_the_graph_is_read():
    g = import_graph()
    assert "mmrec.training.trainer" in g and "mmrec.models.base" in g["mmrec.models.mmrec_model"]


def test_no_import_cycle():
    g = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m)


def test_dependencies_point_down():
    g = import_graph()
    bad = sorted(f"{m} -> {n}" for m, deps in g.items() for n in deps if layer(n) > layer(m))
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_libraries_know_nothing_of_mmrec():
    g = import_graph()
    bad = sorted(f"{m} -> {n}" for m, deps in g.items() if m.startswith(("encoders", "preprocessing"))
                 for n in deps if n.startswith("mmrec"))
    assert not bad, bad
