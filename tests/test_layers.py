"""The layers of docs/design.md, read from the source with ``ast``: every import points down, and only
``web/`` shapes protocol messages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What each package may import of the project (docs/design.md, "Layers").
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "memory": {"errors"},
    "stream": {"errors"},
    "models": {"errors", "memory"},
    "store": {"errors", "memory"},
    "engine": {"errors", "memory", "stream", "models", "store"},
    "cluster": {"errors", "memory", "stream", "models", "engine", "store"},
    "web": {"errors", "memory", "stream", "models", "engine", "store"},
    "livesight": {"errors", "memory", "stream", "models", "engine", "cluster", "web", "store"},
    # beside the served layers: trains the demo model through the real memory, adapter and engine rules
    "train": {"errors", "memory", "stream", "models", "engine"},
}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_packages(tree: ast.AST) -> set[str]:
    """Top-level names of everything a module imports, at any depth (imports inside functions count)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package: str) -> None:
    ours = set(ALLOWED)
    bad = []
    for path in modules(package):
        tree = ast.parse(path.read_text(), str(path))
        for name in sorted(imported_packages(tree) & ours - {package} - ALLOWED[package]):
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", sorted(set(ALLOWED) - {"web"}))
def test_only_web_shapes_protocol_messages(package: str) -> None:
    """A dict literal with a ``"type"`` key is a wire message; they are made in web/protocol.py."""
    bad = []
    for path in modules(package):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "type" for k in node.keys):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "protocol-shaped dicts outside web/: " + ", ".join(bad)


def test_the_checks_see_what_they_look_for() -> None:
    """The walkers find an upward import and a wire dict when there is one (they cannot pass vacuously)."""
    tree = ast.parse("def f():\n    from web.protocol import parse\n    return {'type': 'answer'}\n")
    assert imported_packages(tree) == {"web"}
    assert any(isinstance(n, ast.Dict) for n in ast.walk(tree))
    for package in ALLOWED:
        assert modules(package), package
