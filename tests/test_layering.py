"""Import direction: data → signals → losses → training → evaluation → report, never backwards.

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
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def distill_imports(module: str) -> set[str]:
    """The distill submodules that `distill/<module>.py` imports, anywhere in the file."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative import
            names = [f"distill.{node.module or alias.name}" for alias in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("distill.") and n.split(".")[1] in MODULES}
    return found


def test_the_parser_sees_imports_inside_functions():
    assert "report" in distill_imports("pipeline")  # imported lazily inside run()
    assert {"config", "errors"} <= distill_imports("models")


@pytest.mark.parametrize(("module", "forbidden"), [
    ("report", {"training", "pipeline", "api", "signals", "evaluate", "bench"}),
    ("evaluate", {"training", "pipeline", "report", "api"}),
    ("bench", {"training", "pipeline", "report", "api"}),
    ("losses", set(MODULES) - {"config", "divergences", "errors"}),
    ("config", set(MODULES) - {"errors"}),
    ("errors", set(MODULES)),
    ("files", set(MODULES) - {"errors"}),  # OutputError: a full disk or no permission, said clearly
    ("divergences", set(MODULES)),
    ("taps", set(MODULES) - {"errors"}),
    ("data", {"signals", "losses", "training", "evaluate", "bench", "report", "pipeline", "api", "cli"}),
    ("signals", {"losses", "training", "evaluate", "report", "pipeline", "api", "cli"}),
    ("training", {"pipeline", "api", "report", "cli"}),
])
def test_import_direction(module, forbidden):
    assert module in MODULES
    wrong = distill_imports(module) & forbidden
    assert not wrong, f"distill.{module} must not import {sorted(wrong)}"


def test_nothing_imports_the_cli():
    assert [m for m in MODULES if "cli" in distill_imports(m)] == []


def test_import_distill_is_cheap():
    code = ("import sys, distill; heavy = {'matplotlib', 'transformers', 'onnx', 'mlflow', 'tensorboard'}; "
            "loaded = sorted(m for m in heavy if m in sys.modules); assert not loaded, loaded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


LM_MODULES = sorted(p.stem for p in (PACKAGE / "lm").glob("*.py") if p.stem != "__init__")


def package_imports(path: str) -> set[str]:
    """The distill modules (`lm.x` for subpackages) that `distill/<path>.py` imports with `from`."""
    tree = ast.parse((PACKAGE / f"{path}.py").read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {n.removeprefix("distill.") for n in names if n.startswith("distill.")}


@pytest.mark.parametrize(("module", "forbidden"), [
    ("text", {"lm.signals", "lm.loss", "lm.train", "lm.evaluate", "lm.pipeline", "training", "pipeline"}),
    ("signals", {"lm.loss", "lm.train", "lm.evaluate", "lm.pipeline", "training", "pipeline"}),
    ("loss", {"lm.train", "lm.evaluate", "lm.pipeline", "lm.models", "training", "pipeline"}),
    ("evaluate", {"lm.train", "lm.pipeline", "training", "pipeline"}),
    ("train", {"lm.pipeline", "pipeline"}),
])
def test_lm_import_direction(module, forbidden):
    assert module in LM_MODULES
    wrong = package_imports(f"lm/{module}") & forbidden
    assert not wrong, f"distill.lm.{module} must not import {sorted(wrong)}"


TEXTKD_MODULES = sorted(p.stem for p in (PACKAGE / "textkd").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize(("module", "forbidden"), [
    # the teacher-signal side never reaches into training, evaluation or the job
    ("teachers", {"textkd.generate", "textkd.filters", "textkd.examples", "textkd.evaluate", "textkd.pipeline",
                  "lm.train", "serve"}),
    ("remote", {"textkd.generate", "textkd.filters", "textkd.examples", "textkd.evaluate", "textkd.pipeline",
                "lm.train", "serve"}),
    ("generate", {"textkd.filters", "textkd.examples", "textkd.evaluate", "textkd.pipeline", "lm.train"}),
    ("filters", {"textkd.examples", "textkd.evaluate", "textkd.pipeline", "lm.train"}),
    ("examples", {"textkd.evaluate", "textkd.pipeline", "lm.train"}),
    ("evaluate", {"textkd.pipeline", "lm.train", "textkd.examples"}),
])
def test_textkd_import_direction(module, forbidden):
    assert module in TEXTKD_MODULES
    wrong = package_imports(f"textkd/{module}") & forbidden
    assert not wrong, f"distill.textkd.{module} must not import {sorted(wrong)}"


def test_serve_is_beside_the_flow_not_in_it():
    assert not distill_imports("serve") & {"training", "pipeline", "report", "evaluate", "api"}
    assert not package_imports("serve") & {"lm.train", "textkd.pipeline"}
