"""The layering contracts in pyproject.toml ([tool.importlinter]) hold on the real
tree, and they are a check that can fail: the same contracts, run on a tiny tree
with one forbidden import, name the contract it breaks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports of this environment on the tree at ``cwd`` (its pyproject.toml)."""
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True))"
    )
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def importlinter_sections() -> str:
    """The [tool.importlinter] sections of the real pyproject.toml, verbatim."""
    out, inside = [], False
    for line in PYPROJECT.read_text(encoding="utf-8").splitlines():
        header = line.strip()
        if header.startswith("["):
            inside = header.strip("[]").startswith("tool.importlinter")
        if inside:
            out.append(line)
    return "\n".join(out) + "\n"


def config() -> dict[str, Any]:
    return tomllib.loads(importlinter_sections())["tool"]["importlinter"]


def contract(**match: str) -> str:
    """The name of the contract whose lists hold each given value (e.g. source_modules="edge")."""
    names = [
        c["name"]
        for c in config()["contracts"]
        if all(value in c.get(field, []) for field, value in match.items())
    ]
    assert len(names) == 1, (match, names)
    return names[0]


def cloud_layers() -> list[list[str]]:
    """The layers of cloud/, top first; packages in one layer are independent."""
    (layers,) = [c for c in config()["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in entry.split("|")] for entry in layers["layers"]]


def tiny_tree(root: Path) -> Path:
    """shared/, edge/ and cloud/<every layer>/, each layer importing the one below it
    (as the real pipeline does), with the real contracts in its pyproject.toml."""
    (root / "pyproject.toml").write_text(importlinter_sections(), encoding="utf-8")
    for package in ("shared", "edge", "cloud"):
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
    (root / "edge" / "daemon.py").write_text("import shared\n")
    layers = cloud_layers()
    for layer, below in zip(layers, [*layers[1:], None], strict=True):
        source = f"import cloud.{below[0]}\n" if below else "import shared\nimport torch\n"
        for package in layer:
            (root / "cloud" / package).mkdir()
            (root / "cloud" / package / "__init__.py").write_text("")
            (root / "cloud" / package / "stage.py").write_text(source)
    return root


def test_the_real_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(config()['contracts'])} kept, 0 broken" in result.stdout


def test_the_tiny_tree_keeps_every_contract(tmp_path):
    # the control: what breaks below is the one import each test adds, not the tree
    result = lint_imports(tiny_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("path", "source", "broken"),
    [
        ("cloud/data/upward.py", "import cloud.api\n", {"containers": "cloud"}),
        (
            "edge/upward.py",
            "from cloud import data\n",
            {"source_modules": "edge", "forbidden_modules": "cloud"},
        ),
        (
            "shared/heavy.py",
            "import torch\n",
            {"source_modules": "shared", "forbidden_modules": "torch"},
        ),
        (
            "cloud/learning/edge_code.py",
            "import edge.daemon\n",
            {"source_modules": "cloud", "forbidden_modules": "edge"},
        ),
        ("cloud/rollout/sibling.py", "import cloud.trainer\n", {"containers": "cloud"}),
    ],
)
def test_one_forbidden_import_breaks_its_contract(tmp_path, path, source, broken):
    root = tiny_tree(tmp_path)
    (root / path).write_text(source)
    result = lint_imports(root)
    assert result.returncode != 0
    name = contract(**broken)
    assert f"{name} BROKEN" in result.stdout, result.stdout
    # and it says which import: the module that has it
    assert path.removesuffix(".py").replace("/", ".") in result.stdout, result.stdout
    assert "1 broken" in result.stdout, result.stdout
