"""xtalforge.data: dataset loaders, validation and the demo set.

::

    from xtalforge.data import load_dataset
    report = load_dataset("structures.csv")   # CDVAE CSV, pymatgen JSON, extxyz or ASE db
    len(report.entries), len(report.rejected)

The names below are imported on first use, so ``import xtalforge.data`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from xtalforge.data.demo import build_demo_dataset
    from xtalforge.data.loaders import (
        DatasetEntry,
        LoadReport,
        Rejection,
        load_dataset,
        validate_structure,
    )

__all__ = [
    "DatasetEntry",
    "LoadReport",
    "Rejection",
    "build_demo_dataset",
    "load_dataset",
    "validate_structure",
]

_LAZY = {
    "DatasetEntry": "xtalforge.data.loaders",
    "LoadReport": "xtalforge.data.loaders",
    "Rejection": "xtalforge.data.loaders",
    "load_dataset": "xtalforge.data.loaders",
    "validate_structure": "xtalforge.data.loaders",
    "build_demo_dataset": "xtalforge.data.demo",
}


def __getattr__(name: str) -> Any:
    """Import the public names lazily (pymatgen is loaded on first use)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xtalforge.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
