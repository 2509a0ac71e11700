"""The package layout: no import cycle inside ``sapa``; each core module imports on its own."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "sapa"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph():
    """{module: set of sapa modules it imports (at top level or inside functions)}."""
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [f"{target}.{a.name}" for a in node.names]
                hits = [n for n in names if n in files]
                deps.update(hits if hits else [target] if target in files else [])
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
        # importing a module imports its parent packages first: that is no cycle
        graph[mod] = {d for d in deps if d != mod and not mod.startswith(d + ".")}
    return graph


def _find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_import_graph_has_no_cycle():
    graph = _import_graph()
    assert "sapa.backends" in graph and "sapa.functional" in graph
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["sapa.backends.triton", "sapa.functional", "sapa.modules"])
def test_module_imports_first_in_a_fresh_interpreter(module):
    code = (f"import {module}, sapa; "
            "assert set(sapa.available_backends()) >= {'reference', 'torch'}")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if res.returncode and module.endswith("triton") and "needs Triton" in res.stderr:
        pytest.skip("triton is not installed")
    assert res.returncode == 0, res.stderr[-3000:]


def test_import_sapa_is_light():
    """``import sapa`` imports torch and the operator, not the compiler, Triton, ONNX, matplotlib."""
    heavy = ["torch._dynamo", "triton", "onnx", "torch.onnx", "matplotlib", "onnxruntime"]
    code = ("import sys, sapa; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "", f"import sapa imported {res.stdout.strip()}"
