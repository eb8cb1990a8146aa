"""The house holds: every import points down the layers drawn in CONTRIBUTING.md, and every source file says what
it owns in its opening lines; no file of callbacks/ or codec/ grows past 450 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_compress"

#: Each room's floor, from the bottom up: a room imports only rooms on lower floors (CONTRIBUTING.md's map).
FLOORS = {
    "arguments": 0,
    "functional": 0,
    "data": 0,
    "tracking": 0,
    "schedules": 0,
    "conf": 0,
    "codec": 1,
    "representation": 2,
    "surgery": 2,
    "saving": 3,
    "layers": 4,
    "report": 4,
    "module": 4,
    "models": 5,
    "callbacks.randomness": 5,
    "callbacks.memory": 6,
    "callbacks.optimizer_surgery": 6,
    "callbacks.holds": 6,
    "callbacks.calibration": 6,
    "callbacks.plan": 6,
    "callbacks.state": 6,
    "callbacks.events": 7,
    "callbacks.guard": 7,
    "callbacks.event_guard": 8,
    "callbacks.validation": 7,
    "callbacks.base": 8,
    "callbacks.neuron_elimination": 9,
    "callbacks.successive_pruning": 9,
    "callbacks.ternarization": 9,
    "callbacks.weight_sharing": 9,
    "callbacks.rate_aware": 9,
    "callbacks.artifact": 9,
    "callbacks.distillation": 9,
    "callbacks": 10,
    "sweep": 10,
    "cli": 11,
    "": 12,  # the package's __init__: the public API
}
#: The most lines a file of callbacks/ or codec/ holds (a method's callback that needs more is a package of rooms).
MAX_LINES = 450


def _room(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return ""
    if parts[0] == "callbacks" and len(parts) > 1:
        return f"callbacks.{parts[1]}"
    return parts[0]


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def _imports(path: Path) -> set[str]:
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_compress"):
            folder = PACKAGE.parent.joinpath(*node.module.split("."))
            for alias in node.names:  # `from package import submodule` imports the submodule, not the package
                submodule = folder / f"{alias.name}.py"
                targets.add(f"{node.module}.{alias.name}" if submodule.is_file() else node.module)
        elif isinstance(node, ast.Import):
            targets.update(a.name for a in node.names if a.name.startswith("lightning_compress"))
    return targets


@pytest.mark.parametrize(("name", "path"), _modules(), ids=[n for n, _ in _modules()])
def test_every_import_points_down(name: str, path: Path) -> None:
    room = _room(name)
    assert room in FLOORS, f"{name}: room {room!r} has no floor in tests/test_architecture.py (and CONTRIBUTING.md)"
    for target in _imports(path):
        other = _room(target)
        if other == room or (room == "callbacks" and other.startswith("callbacks.")):
            continue
        assert other in FLOORS, f"{name} imports {target}: room {other!r} has no floor"
        assert FLOORS[other] < FLOORS[room], f"{name} (floor {FLOORS[room]}) imports {target} (floor {FLOORS[other]})"


@pytest.mark.parametrize(("name", "path"), _modules(), ids=[n for n, _ in _modules()])
def test_every_file_says_what_it_owns(name: str, path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring, f"{path.relative_to(PACKAGE.parent)} opens without a line saying what it owns"
    lines = len(path.read_text().splitlines())
    if _room(name).split(".")[0] in ("callbacks", "codec"):
        assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)}: {lines} lines; split it by concern"
