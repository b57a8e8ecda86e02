"""Each subpackage's face (its ``__init__.py``): it says what the layer is and every name it offers
resolves. Which module may import which is import-linter's (``lint-imports``, run by ``.ci/run``,
contracts in ``pyproject.toml``)."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from paths import REPO

ROOT = REPO
PACKAGE = ROOT / "deepsc_tune"
FACES = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE)


def _submod_attrs(face: str) -> dict[str, list[str]]:
    """The ``submod_attrs`` a face passes to ``lazy_loader.attach`` (read from its source)."""
    tree = ast.parse((ROOT / Path(*face.split(".")) / "__init__.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "submod_attrs":
            return ast.literal_eval(node.value)
    return {}


@pytest.mark.parametrize("face", FACES)
def test_every_face_says_what_its_layer_is(face):
    doc = importlib.import_module(face).__doc__ or ""
    assert len(doc.split()) >= 25 and "TODO" not in doc, f"{face}: the docstring should say what the layer is"


@pytest.mark.parametrize("face", [f for f in FACES if _submod_attrs(f)])
def test_every_name_of_a_face_lives_in_the_module_it_names(face):
    """A name is offered by the module that defines it, not one that only imports it from elsewhere."""
    for module, names in _submod_attrs(face).items():
        assert module.startswith("_"), f"{face}.{module}: implementation modules are private"
        tree = ast.parse((ROOT / Path(*face.split(".")) / f"{module}.py").read_text())
        defined = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    names_of = target.elts if isinstance(target, ast.Tuple) else [target]
                    defined |= {t.id for t in names_of if isinstance(t, ast.Name)}
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.add(node.target.id)
        missing = sorted(set(names) - defined)
        assert not missing, f"{face}.{module} does not define {missing}"


def test_every_face_resolves_eagerly_and_lightly():
    """Importing each face loads nothing heavy; resolving every name (lazy_loader's EAGER_IMPORT)
    finds each one, so a typo in a face fails here rather than at a user's first call."""
    heavy = ("torch", "scanpy", "anndata", "sklearn", "plotly")
    code = (
        "import importlib, sys\n"
        f"for face in {FACES!r}: importlib.import_module(face)\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    lazy = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert lazy.stdout.strip() == "[]", lazy.stdout
    eager = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "EAGER_IMPORT": "1"},
    )
    assert eager.returncode == 0, eager.stderr
    assert "torch" in eager.stdout  # EAGER_IMPORT really resolved the names (the built-in face's need torch)


def test_every_subpackage_is_installed():
    """pyproject lists the packages: a wheel without one would fail at its first import."""
    tomllib = pytest.importorskip("tomllib")
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert {"deepsc_tune", *FACES} <= packages, sorted({"deepsc_tune", *FACES} - packages)
