"""The package's floor plan: folders that are the data flow, imported in one direction only.

core ← data ← models ← teachers ← losses ← eval ← training ← compress / export / serve ← recipes ← api ← cli

Imports are read with `ast`, so imports inside functions count too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import distill

PACKAGE = Path(distill.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(module: str) -> set[str]:
    """The distill modules that `module` imports, anywhere in the file (a package's name when the
    import names the package itself)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name not in (module, "distill"):
                found.add(name)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def folder(module: str) -> str:
    """`distill.losses.terms` → `losses`; top-level modules (`distill.api`) are their own folder."""
    return module.split(".")[1] if "." in module else module


BELOW = ["core", "data", "models", "teachers", "losses", "eval", "training"]
ALLOWED = {
    **{name: set(BELOW[:i]) for i, name in enumerate(BELOW)},
    "compress": set(BELOW),
    "export": {"core", "data", "models", "eval"},
    "serve": {"core", "models", "teachers"},
    "recipes": set(BELOW) | {"compress", "export", "serve"},
    "api": set(BELOW) | {"compress", "export", "serve", "recipes"},
    "cli": set(BELOW) | {"compress", "export", "serve", "recipes", "api"},
    "distill": {"api", "core", "data", "losses", "models", "recipes", "training"},  # __init__: the public face
}


def test_the_parser_sees_imports_inside_functions_and_packages():
    assert "distill.eval.report" in GRAPH["distill.recipes.classify.pipeline"]  # imported inside run()
    assert "distill.data.speech" in GRAPH["distill.data.datasets"]  # imported only for audio
    assert "distill.models.causal_lm" in GRAPH["distill.recipes.lm.pipeline"]  # `from distill.models import x`


def test_every_folder_is_known():
    assert {folder(m) for m in MODULES} - {"distill"} == set(ALLOWED) - {"distill"}


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_folders_import_only_the_folders_below(name):
    wrong = sorted(f"{m} → {d}" for m in MODULES if folder(m) == name for d in GRAPH[m]
                   if folder(d) != name and folder(d) not in ALLOWED[name])
    assert not wrong, f"{name} must import only {sorted(ALLOWED[name])}: {wrong}"


def test_no_import_cycles():
    """No module reaches itself through its imports (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_report_renders_and_never_computes():
    assert {d for d in GRAPH["distill.eval.report"] if folder(d) != "core"} <= {"distill.eval.figures"}
    assert {folder(d) for d in GRAPH["distill.eval.figures"]} <= {"core"}  # drawing only


def test_nothing_imports_the_cli():
    assert [m for m in MODULES if "distill.cli" in GRAPH[m]] == []


def test_serve_imports_no_recipe():
    assert not [d for m in MODULES if folder(m) == "serve" for d in GRAPH[m] if folder(d) == "recipes"]


def test_import_distill_is_cheap():
    code = ("import sys, distill; heavy = {'matplotlib', 'transformers', 'onnx', 'mlflow', 'tensorboard'}; "
            "loaded = sorted(m for m in heavy if m in sys.modules); assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_modules_are_small():
    """About 400 lines at most: a module is one job (a longer one is a sign it holds two)."""
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def test_every_module_says_what_it_is_for():
    missing = [m for m, p in MODULES.items() if not p.name == "__init__.py"
               and not ((doc := ast.get_docstring(ast.parse(p.read_text()))) and "TODO" not in doc)]
    assert missing == []
