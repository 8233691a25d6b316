"""Export structures from the store as CIF or extxyz."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

logger = logging.getLogger(__name__)

_META = (
    "structure_id",
    "campaign_id",
    "stage",
    "formula",
    "e_above_hull",
    "novel",
    "unique",
    "msun",
    "dft_e_above_hull",
    "job_uuid",
)


def export_structures(results: Any, df: pd.DataFrame, output: str | Path, fmt: str = "cif") -> int:
    """Write the structures of the rows of ``df`` (from ``CampaignResults``) to ``output``.

    Parameters
    ----------
    results
        A :class:`~xtalforge.stores.results.CampaignResults`.
    df
        Rows with a ``structure_id`` column.
    output
        Directory for ``cif`` (one ``<structure_id>.cif`` each), file path for ``extxyz``.
    fmt
        ``"cif"`` or ``"extxyz"``.

    Returns
    -------
    int
        Number of structures written.
    """
    if df.empty:
        return 0
    structures = results.structures(list(df["structure_id"]))
    output = Path(output)
    rows = df.set_index("structure_id")
    if fmt == "cif":
        from pymatgen.io.cif import CifWriter

        output.mkdir(parents=True, exist_ok=True)
        for sid, s in structures.items():
            CifWriter(s).write_file(output / f"{sid}.cif")
        return len(structures)
    if fmt == "extxyz":
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        frames = []
        for sid, s in structures.items():
            atoms = AseAtomsAdaptor.get_atoms(s)
            for k in _META:
                v = (
                    sid
                    if k == "structure_id"
                    else rows.loc[sid].get(k)
                    if k in rows.columns
                    else None
                )
                if v is not None and v == v:
                    atoms.info[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
            frames.append(atoms)
        output.parent.mkdir(parents=True, exist_ok=True)
        write(str(output), frames, format="extxyz")
        return len(frames)
    raise ValueError(f"unknown export format {fmt!r}: use cif or extxyz")
