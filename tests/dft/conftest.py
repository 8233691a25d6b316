"""Fixtures of the DFT tests."""

from __future__ import annotations

import gzip

import pandas as pd
import pytest


def write_mini_mp20(path, phases, missing=()):
    """Write a tiny MP-20-like folder: ``phases`` = [(material_id, structure, e_hull)]."""
    rows, cifs = [], []
    for mid, s, e in phases:
        rows.append({"material_id": mid, "split": "val", "pretty_formula":
                     s.composition.reduced_formula, "num_atoms": len(s),
                     "formation_energy_per_atom": 0.0, "e_hull_mp20_only": e})
        cifs.append({"material_id": mid, "cif": s.to(fmt="cif")})
    for mid, formula in missing:
        rows.append({"material_id": mid, "split": "train", "pretty_formula": formula,
                     "num_atoms": 2, "formation_energy_per_atom": -0.5,
                     "e_hull_mp20_only": 0.0})
    path.mkdir(parents=True, exist_ok=True)
    with gzip.open(path / "mp20_all_formation_energies_ehull.csv.gz", "wt") as fh:
        pd.DataFrame(rows).to_csv(fh, index=False)
    with gzip.open(path / "val.csv.gz", "wt") as fh:
        pd.DataFrame(cifs).to_csv(fh, index=False)
    return path


@pytest.fixture
def mini_mp20():
    """Return :func:`write_mini_mp20` (a tiny MP-20-like data folder)."""
    return write_mini_mp20
