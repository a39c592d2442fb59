"""The layout rules of README "Architecture", checked on the source itself.

import-linter (``lint-imports``, run by ``make test``) checks the layers
between packages; these tests add what it does not: no import cycle between
any two modules (function-level imports included), compute modules never
import figures or recipes, and one method package uses another only through
that package's public ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("concepts", "saes", "bias", "steering", "likelihood", "inspection", "compare", "scale")
LEAVES = ("models", "activations", "logprobs", "sampling", "paths", "uploads", "hub", "errors", "vectors",
          "progress", "gguf_convert")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / "analysis").rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every analysis module that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in known:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, known) - {name} for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # A submodule importing its own package's __init__ is how Python imports
    # work, not a design cycle; the __init__ re-exports its submodules.
    return {m: {d for d in deps if not (m.startswith(d + ".") and d.count(".") == 1)} for m, deps in graph.items()}


def test_no_import_cycles_between_modules():
    cycles = _cycles(_without_package_inits(_graph()))
    assert cycles == [], f"import cycles: {cycles}"


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_every_method_is_a_package_with_a_public_api():
    for pkg in METHODS:
        init = ROOT / "analysis" / pkg / "__init__.py"
        assert init.is_file(), pkg
        assert "__all__" in init.read_text(), f"analysis/{pkg}/__init__.py names no public API"


@pytest.mark.parametrize("pkg", METHODS)
def test_compute_modules_never_import_figures_or_recipes(pkg):
    graph = _graph()
    for mod, deps in graph.items():
        if not mod.startswith(f"analysis.{pkg}.") or mod.rsplit(".", 1)[1] in ("figures", "recipes"):
            continue
        bad = sorted(d for d in deps if d.rsplit(".", 1)[-1] in ("figures", "recipes") and d != "analysis.recipes")
        assert bad == [], f"{mod} imports {bad}: figures are built in recipes.py, pages and commands"


def test_methods_use_each_other_only_through_the_public_package():
    graph = _graph()
    bad = []
    for mod, deps in graph.items():
        parts = mod.split(".")
        if len(parts) < 3 or parts[1] not in METHODS:
            continue
        for dep in deps:
            dparts = dep.split(".")
            if len(dparts) >= 3 and dparts[1] in METHODS and dparts[1] != parts[1]:
                bad.append(f"{mod} -> {dep}")
    assert bad == [], "import another method through its package (analysis.X), not its internals: " + ", ".join(bad)


def test_leaves_never_import_methods():
    graph = _graph()
    for leaf in LEAVES:
        deps = graph.get(f"analysis.{leaf}", set())
        bad = sorted(d for d in deps if d.count(".") >= 1 and d.split(".")[1] in METHODS)
        assert bad == [], f"leaf analysis.{leaf} imports methods {bad}"


def test_analysis_never_imports_streamlit_or_the_app():
    for path in (ROOT / "analysis").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                top = name.split(".")[0]
                assert top not in ("streamlit", "app", "pages"), f"{path.relative_to(ROOT)} imports {name}"
