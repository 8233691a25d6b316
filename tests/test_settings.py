"""XtalforgeSettings: one BaseSettings object for every XTALFORGE_* variable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

import xtalforge
from xtalforge.settings import DEFAULT_HOME, XtalforgeSettings, get_settings

_VARS = ("STORE", "HOME", "CACHE", "MP_START", "DEBUG")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in _VARS:
        monkeypatch.delenv(f"XTALFORGE_{name}", raising=False)


def test_defaults():
    s = get_settings()
    assert s.STORE == ""
    assert s.HOME is None
    assert s.campaigns_home == DEFAULT_HOME
    assert s.CACHE == Path.home() / ".cache" / "xtalforge"
    assert s.MP_START is None
    assert s.DEBUG is False


def test_environment_is_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("XTALFORGE_STORE", "montydb:///x/store")
    monkeypatch.setenv("XTALFORGE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XTALFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XTALFORGE_MP_START", "spawn")
    monkeypatch.setenv("XTALFORGE_DEBUG", "1")
    s = get_settings()
    assert s.STORE == "montydb:///x/store"
    assert s.campaigns_home == tmp_path / "home"
    assert s.CACHE == tmp_path / "cache"
    assert s.MP_START == "spawn"
    assert s.DEBUG is True
    assert get_settings(STORE="embedded").STORE == "embedded"


@pytest.mark.parametrize(
    ("value", "expected"), [("", False), ("0", False), ("false", False), ("1", True), ("yes", True)]
)
def test_debug_flag(monkeypatch, value, expected):
    monkeypatch.setenv("XTALFORGE_DEBUG", value)
    assert get_settings().DEBUG is expected


def test_empty_values_mean_unset(monkeypatch):
    monkeypatch.setenv("XTALFORGE_HOME", "")
    monkeypatch.setenv("XTALFORGE_MP_START", "")
    s = get_settings()
    assert s.HOME is None and s.MP_START is None


def test_bad_start_method_is_an_error(monkeypatch):
    monkeypatch.setenv("XTALFORGE_MP_START", "threads")
    with pytest.raises(ValidationError, match="MP_START"):
        get_settings()


def test_fields_have_descriptions():
    for name, field in XtalforgeSettings.model_fields.items():
        assert field.description, name


def test_package_users_follow_the_settings(monkeypatch, tmp_path):
    from xtalforge.screening.metrics import mp_start_method
    from xtalforge.stores.artifacts import cache_dir
    from xtalforge.stores.config import resolve_setting
    from xtalforge.stores.results import default_root

    monkeypatch.setenv("XTALFORGE_STORE", "mongodb://db.example/x")
    monkeypatch.setenv("XTALFORGE_HOME", str(tmp_path / "campaigns"))
    monkeypatch.setenv("XTALFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XTALFORGE_MP_START", "forkserver")
    assert resolve_setting(None) == "mongodb://db.example/x"
    assert resolve_setting("embedded") == "embedded"
    assert default_root() == tmp_path / "campaigns"
    assert cache_dir() == tmp_path / "cache" / "checkpoints"
    assert mp_start_method() == "forkserver"


def test_no_module_reads_the_environment_directly():
    """Every xtalforge module reads its settings through XtalforgeSettings."""
    root = Path(xtalforge.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "settings.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                if isinstance(node.value, ast.Name) and node.value.id == "os":
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    # the DFT room reads and sets the variables of pymatgen and atomate2 themselves
    # (PMG_VASP_PSP_DIR, PMG_CP2K_DATA_DIR, ATOMATE2_CP2K_CMD, pymatgen's CP2K defaults), as those
    # libraries read them; xtalforge's own XTALFORGE_* variables are read nowhere but settings.py
    third_party = ("dft/tasks.py", "dft/cp2k.py")
    offenders = [o for o in offenders if not o.startswith(third_party)]
    assert offenders == []
    own = [f"{p.relative_to(root)}:{i}" for p in sorted(root.rglob("*.py"))
           if p.name != "settings.py"
           for i, line in enumerate(p.read_text().splitlines(), 1)
           if "environ" in line and "XTALFORGE_" in line]
    assert own == []
