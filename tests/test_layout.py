"""The package layout: the library (``sapa``) never imports the book's lab (``sapa.lab``), no
import cycle, each core module imports on its own, and the library needs torch only."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "sapa"


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_dynamic_import(node) -> bool:
    """``importlib.import_module(<not a literal>)`` or ``__import__(<not a literal>)``."""
    if not isinstance(node, ast.Call) or not node.args:
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return name in ("import_module", "__import__") and not isinstance(node.args[0], ast.Constant)


def _import_graph(pkg: Path = PKG, root: Path = ROOT):
    """{module: set of modules of the package it imports}, every edge a module can take.

    Counted: ``import``/``from ... import`` at top level or inside functions, relative or
    absolute, including edges into a parent package (``from . import __version__`` needs the
    parent's ``__init__``); ``importlib.import_module("literal")``; and for a module that calls
    ``import_module``/``__import__`` with a computed name, every module of the package that one
    of its string constants names (``"sapa.backends.cpp"``, or a sibling's bare name as in a
    lazy ``__getattr__`` over a tuple of names): an over-approximation, never a miss.
    Only the implicit import of a module's own parent packages is not an edge.
    """
    files = {_module_name(p, root): p for p in pkg.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text())
        deps = set()

        def resolve(name: str, level: int = 0) -> str:
            if level:
                base = package.split(".")
                base = base[: len(base) - level + 1]
                return ".".join(base + ([name] if name else []))
            return name

        dynamic = False
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = resolve(node.module or "", node.level)
                names = [f"{target}.{a.name}" for a in node.names]
                hits = [n for n in names if n in files]
                deps.update(hits)
                if len(hits) < len(names) and target in files:
                    deps.add(target)  # attributes of the package itself: its __init__
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                    == "import_module":
                arg = node.args[0].value
                level = len(arg) - len(arg.lstrip("."))
                name = resolve(arg.lstrip("."), level) if level else arg
                if name in files:
                    deps.add(name)
            dynamic = dynamic or _is_dynamic_import(node)
        if dynamic:
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    s = node.value.strip(".")
                    for cand in (s, f"{package}.{s}"):
                        if cand in files:
                            deps.add(cand)
        # importing a module imports its parent packages first: that alone is no edge
        graph[mod] = {d for d in deps if d != mod}
    return graph


def _library_modules(graph):
    return sorted(m for m in graph if not (m == "sapa.lab" or m.startswith("sapa.lab.")))


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


def test_library_never_imports_the_lab():
    graph = _import_graph()
    assert "sapa.lab.sweep" in graph and "sapa.official" in graph
    bad = {m: sorted(d for d in graph[m] if d == "sapa.lab" or d.startswith("sapa.lab."))
           for m in _library_modules(graph)}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"library modules import the lab: {bad}"


def test_graph_sees_parent_and_dynamic_edges(tmp_path):
    """The edge finder sees what the old one missed: an edge into a parent package, and an
    ``importlib`` call with a computed name (so the two tests above can fail)."""
    pkg = tmp_path / "pkg"
    (pkg / "lab").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import importlib\n_LAZY = ('util',)\n"
                                   "def __getattr__(n):\n    return importlib.import_module(f'.{n}', __name__)\n"
                                   "from .core import f\n")
    (pkg / "core.py").write_text("def f():\n    from .lab import tool\n")
    (pkg / "util.py").write_text("")
    (pkg / "lab" / "__init__.py").write_text("")
    (pkg / "lab" / "tool.py").write_text("from .. import __version__\n")
    graph = _import_graph(pkg, tmp_path)
    assert "pkg.util" in graph["pkg"]  # the lazy __getattr__
    assert "pkg.lab.tool" in graph["pkg.core"]  # inside a function
    assert "pkg" in graph["pkg.lab.tool"]  # into a parent package
    assert _find_cycle(graph) == ["pkg", "pkg.core", "pkg.lab.tool", "pkg"]


def test_library_modules_import_without_the_lab():
    """Every library module, imported in a fresh interpreter, loads no ``sapa.lab`` module."""
    graph = _import_graph()
    mods = [m for m in _library_modules(graph) if m not in ("sapa.backends.triton", "sapa.hf")]
    code = ("import importlib, sys\n"
            f"for m in {mods!r}:\n    importlib.import_module(m)\n"
            "import sapa; sapa.complexity\n"
            "print(','.join(sorted(m for m in sys.modules if m.startswith('sapa.lab'))))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "", f"the library loaded {res.stdout.strip()}"


_BLOCKER = """
import importlib.abc, sys
BLOCKED = {"numpy", "tqdm", "matplotlib", "safetensors", "PIL", "torchvision", "IPython", "transformers"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
"""


def test_sapa_needs_torch_only():
    """With numpy, tqdm, matplotlib, safetensors (and the lab's other packages) blocked, ``import
    sapa`` works, builds ``sapa.SAPA`` and runs forward and backward; counting works too."""
    code = _BLOCKER + """
import warnings
warnings.simplefilter("ignore")
import torch, sapa
torch.manual_seed(0)
x = torch.randn(2, 8, 5, 6, requires_grad=True)
y = torch.randn(2, 4, 10, 12)
for variant in ("I", "B", "G", "P"):
    up = sapa.SAPA(8, 8 if variant == "I" else 4, variant=variant, backend="torch")
    out = up(x, torch.randn(2, 8, 10, 12) if variant == "I" else y)
    assert out.shape == (2, 8, 10, 12)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
for name in sapa.available_upsamplers():
    up = sapa.build_upsampler(name, 8, 8, 2)
    up(x, torch.randn(2, 8, 10, 12)).sum().backward()
print(sapa.complexity.count_params(sapa.SAPA(8, 4)))
print(",".join(m for m in ("numpy", "tqdm", "matplotlib", "safetensors") if m in sys.modules))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert int(lines[0]) > 0 and (len(lines) == 1 or lines[1] == "")


def test_the_blocker_blocks():
    """The blocker above does stop those imports (else the test before could not fail)."""
    res = subprocess.run([sys.executable, "-c", _BLOCKER + "import numpy"], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode != 0 and "blocked by the test" in res.stderr
