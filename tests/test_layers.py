"""The layers of docs/ARCHITECTURE.md: every import of a project module points down.

Imports inside functions count too (they are how upward imports used to hide).
"""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# lower number = lower layer; a module may import its own package and any lower layer
LAYER = {"utils": 0, "clip": 1, "models": 2, "datasets": 2, "attacks": 3, "evaluation": 4, "training": 5, "apps": 6}
ENTRY_SCRIPTS = {"main", "main_advtrain", "main_attack", "infer", "demo", "gradcam"}


def project_imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in LAYER or top in ENTRY_SCRIPTS:
                yield node.lineno, name


MODULES = sorted(p for pkg in LAYER for p in (REPO / pkg).glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_down(path):
    own = path.parent.name
    upward = [f"{path.relative_to(REPO)}:{line} imports {name}" for line, name in project_imports(path)
              if name.split(".")[0] in ENTRY_SCRIPTS or LAYER[name.split(".")[0]] > LAYER[own]
              or (LAYER[name.split(".")[0]] == LAYER[own] and name.split(".")[0] != own)]
    assert not upward, "\n".join(upward)


def test_every_package_is_placed():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert packages <= set(LAYER), f"packages without a layer: {sorted(packages - set(LAYER))}"
