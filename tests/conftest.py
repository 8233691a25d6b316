"""Shared test fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("XTALFORGE_SHARED_DATA", _ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Path to ``../shared/data``; skips the test cleanly when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A root (``--root`` / ``$XTALFORGE_HOME``) whose embedded store holds the demo campaign.

    ``xtalforge demo --campaign-id demo`` in a new process, once per test session (the CLI and
    README tests read it; none of them writes to it). No wall-clock timeout: the demo's run time
    depends on the machine's load.
    """
    root = tmp_path_factory.mktemp("campaigns")
    p = subprocess.run(
        [sys.executable, "-m", "xtalforge", "demo", "--campaign-id", "demo", "--root", str(root)],
        capture_output=True, text=True, env={**os.environ, "XTALFORGE_STORE": ""},
    )
    assert p.returncode == 0 and "status: completed" in p.stdout, p.stdout + p.stderr
    return root


@pytest.fixture(autouse=True)
def _restore_torch_dtype():
    """MACE changes torch's global default dtype: restore it after every test."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
