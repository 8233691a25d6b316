"""Shared test fixtures."""

from __future__ import annotations

import os
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
