"""Imports run one way: library rooms never import makers/ or flows/, makers/ and stores/ never
import flows/, and no module imports another module's private name.

The check parses every module of the package (``ast``), lazy imports inside functions and
``TYPE_CHECKING`` blocks included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import xtalforge

ROOT = Path(xtalforge.__file__).parent
LIBRARY_ROOMS = ("data", "models", "rl", "rewards", "screening", "dft", "stores", "reports")
#: room -> package prefixes it must not import
FORBIDDEN = {
    **{room: ("xtalforge.makers", "xtalforge.flows", "xtalforge.cli") for room in LIBRARY_ROOMS},
    "makers": ("xtalforge.flows", "xtalforge.cli"),
}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, imported names)`` of every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg = module_name(path, root)
    if path.name != "__init__.py":
        pkg = pkg.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join([*base, mod] if mod else base)
            out.append((node.lineno, mod, [a.name for a in node.names]))
    return out


def room_of(path: Path, root: Path = ROOT) -> str | None:
    rel = path.relative_to(root).parts
    return rel[0] if len(rel) > 1 else None


def violations(files: list[Path], root: Path = ROOT) -> list[str]:
    bad = []
    for path in files:
        room = room_of(path, root)
        where = path.relative_to(root)
        for line, mod, names in imports(path, root):
            targets = [mod] + [f"{mod}.{n}" for n in names]
            for prefix in FORBIDDEN.get(room, ()):
                if any(t == prefix or t.startswith(prefix + ".") for t in targets):
                    bad.append(f"{where}:{line} imports {mod} ({room} -> {prefix})")
            if mod.startswith("xtalforge"):
                for n in names:
                    if n.startswith("_") and not n.startswith("__"):
                        bad.append(f"{where}:{line} imports private {mod}.{n}")
    return bad


def package_files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_room_is_checked():
    rooms = {room_of(p) for p in package_files()} - {None}
    assert set(LIBRARY_ROOMS) - {"dft"} <= rooms
    assert {"makers", "flows"} <= rooms


def test_imports_run_one_way():
    assert violations(package_files()) == []


@pytest.mark.parametrize(
    ("room", "source", "expected"),
    [
        ("stores", "from xtalforge.flows.remote import x\n", "stores -> xtalforge.flows"),
        ("makers", "def f():\n    from xtalforge.flows import x\n", "makers -> xtalforge.flows"),
        ("rewards", "import xtalforge.makers.rl\n", "rewards -> xtalforge.makers"),
        ("screening", "from xtalforge import makers\n", "screening -> xtalforge.makers"),
        ("reports", "from ..flows.runner import run_campaign\n", "reports -> xtalforge.flows"),
        ("rl", "from xtalforge.rewards.base import _private\n", "private"),
    ],
)
def test_the_check_catches_a_wrong_import(tmp_path, room, source, expected):
    fake_root = tmp_path / "xtalforge"
    (fake_root / room).mkdir(parents=True)
    (fake_root / "__init__.py").write_text("")
    (fake_root / room / "__init__.py").write_text("")
    mod = fake_root / room / "bad.py"
    mod.write_text(source)
    found = violations([mod], root=fake_root)
    assert len(found) == 1 and expected in found[0], found
