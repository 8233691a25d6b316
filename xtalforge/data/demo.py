"""The demo dataset, built from structures that installed packages ship.

What it is
----------
A small, deterministic set of **real crystal prototypes, not a materials database**:

1. the ordered structures of pymatgen's AFLOW prototype library
   (``pymatgen.analysis.prototypes.AFLOW_PROTOTYPE_LIBRARY``, 288 prototypes from the AFLOW
   Encyclopedia of Crystallographic Prototypes) with at most ``max_atoms`` sites;
2. ASE's reference states of the elements (``ase.data.reference_states``: fcc, bcc, hcp,
   diamond), built with ``ase.build.bulk`` at ASE's tabulated lattice constants;
3. an **elemental reference for every element the set holds** that 1. and 2. lack (a hull
   needs one per element): ASE's other reference states that ``ase.build.bulk`` can build
   (rhombohedral Sb, Bi, ...), else a crude molecular crystal of dimers at the tabulated bond
   length (H2, F2, S2, Br2 ...: one dimer in a cubic cell, 2.5 A between molecules). These
   come before the substitutions, so a ``limit`` of 330 or more keeps all of them;
4. element substitutions of the binary prototypes (rock salt, CsCl, zinc blende, wurtzite,
   fluorite, ...) over a fixed list of charge-balanced cation/anion pairs, with the lattice scaled
   by the ratio of covalent radii.

Substituted structures are plausible but not relaxed: they are for exercising the pipeline (and
training a tiny generator on a CPU), not for science. Real datasets come by path
(e.g. ``../shared/data/mp20/val.csv.gz``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure

from xtalforge.data.loaders import LoadReport, build_load_report

logger = logging.getLogger(__name__)

#: The small generator shipped for ``xtalforge demo`` (trained on the demo campaign's dataset by
#: ``scripts/train_demo_generator.py``; its record, with the command and the dataset
#: fingerprint, is :data:`DEMO_GENERATOR_INFO`).
DEMO_GENERATOR = Path(__file__).resolve().parent / "weights" / "demo_generator.pt"
#: JSON record of :data:`DEMO_GENERATOR`.
DEMO_GENERATOR_INFO = DEMO_GENERATOR.with_suffix(".json")

_PAIRS = [
    ("Li", "F"),
    ("Na", "Cl"),
    ("K", "Br"),
    ("Rb", "I"),
    ("Mg", "O"),
    ("Ca", "S"),
    ("Sr", "Se"),
    ("Ba", "Te"),
    ("Zn", "S"),
    ("Cd", "Se"),
    ("Ga", "N"),
    ("Al", "P"),
    ("In", "As"),
    ("Cu", "Cl"),
    ("Ag", "Br"),
    ("Ca", "F"),
    ("Sr", "Cl"),
    ("Ba", "F"),
    ("Ti", "O"),
    ("Sn", "O"),
    ("Zr", "O"),
    ("Na", "F"),
    ("K", "Cl"),
    ("Li", "Cl"),
    ("Mg", "S"),
    ("Be", "O"),
    ("Ni", "O"),
    ("Co", "O"),
]


def _ase_elements(max_atoms: int) -> list[tuple[str, Structure]]:
    from ase.build import bulk
    from ase.data import chemical_symbols, reference_states
    from pymatgen.io.ase import AseAtomsAdaptor

    out = []
    for z, ref in enumerate(reference_states):
        if not ref or ref.get("symmetry") not in {"fcc", "bcc", "hcp", "diamond"}:
            continue
        sym = chemical_symbols[z]
        try:
            atoms = bulk(sym)
        except Exception:  # noqa: BLE001 - ASE lacks data for a few entries
            continue
        if len(atoms) <= max_atoms:
            out.append((f"ase-{sym}-{ref['symmetry']}", AseAtomsAdaptor.get_structure(atoms)))
    return out


#: Bond lengths (A) of homonuclear dimers used as crude molecular-crystal references when
#: ASE has no bulk reference state (ASE's ``diatom`` entries give H, N, O, F; the others are
#: the usual gas-phase values).
_DIMER_BOND = {"H": 0.74, "N": 1.10, "O": 1.21, "F": 1.42, "Cl": 1.99, "Br": 2.28, "I": 2.67,
               "S": 1.89, "Se": 2.17, "P": 1.89}


def _element_references(
    elements: set[str], have: set[str], max_atoms: int
) -> list[tuple[str, Structure]]:
    """Elemental structures for ``elements`` missing from ``have`` (see the module docstring)."""
    from ase import Atoms
    from ase.build import bulk
    from ase.data import atomic_numbers, reference_states
    from pymatgen.io.ase import AseAtomsAdaptor

    out = []
    for sym in sorted(elements - have):
        ref = reference_states[atomic_numbers[sym]] or {}
        atoms = None
        try:
            atoms = bulk(sym)
            tag = ref.get("symmetry", "bulk")
        except Exception:  # noqa: BLE001 - no bulk data: a dimer crystal below
            d = ref.get("d") or _DIMER_BOND.get(sym)
            if d:
                a = d + 2.5
                atoms = Atoms(f"{sym}2", positions=[(0, 0, 0), (d, 0, 0)], cell=[a, a, a],
                              pbc=True)
                tag = "dimer-crystal"
        if atoms is None or len(atoms) > max_atoms:
            logger.warning("demo dataset: no elemental reference for %s", sym)
            continue
        out.append((f"ase-{sym}-{tag}", AseAtomsAdaptor.get_structure(atoms)))
    return out


def _aflow(max_atoms: int) -> list[tuple[str, Structure, dict[str, Any]]]:
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

    out = []
    for d in AFLOW_PROTOTYPE_LIBRARY:
        s = d["snl"].structure
        if not s.is_ordered or len(s) > max_atoms:
            continue
        tags = d["tags"]
        out.append(
            (
                f"aflow-{tags['aflow']}",
                s,
                {"prototype": tags["aflow"], "mineral": tags.get("mineral") or None},
            )
        )
    return out


def _substitute(proto: Structure, cation: str, anion: str) -> Structure:
    elements = sorted(proto.composition.elements, key=lambda e: e.X)
    mapping = {elements[0]: Element(cation), elements[1]: Element(anion)}
    old = sum(e.atomic_radius_calculated or e.atomic_radius or 1.0 for e in elements)
    new = sum(
        Element(x).atomic_radius_calculated or Element(x).atomic_radius or 1.0
        for x in (cation, anion)
    )
    s = proto.copy()
    s.replace_species(mapping)
    s.scale_lattice(proto.volume * float(new / old) ** 3)
    return s


def build_demo_dataset(
    max_atoms: int = 20, n_substitutions: int = 3, progress: bool = False
) -> LoadReport:
    """Build the demo dataset (deterministic; see the module docstring for what it holds).

    Parameters
    ----------
    max_atoms
        Largest cell kept (MP-20 uses 20).
    n_substitutions
        Substitution pairs applied to each binary AB/AB2 prototype (chosen deterministically).
    progress
        Show a progress bar.

    Returns
    -------
    LoadReport
        Entries with ``properties={"source": "aflow"|"ase"|"substitution", ...}``; structures
        that fail validation are reported as rejections like any dataset's.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about missing radii / electronegativities
        return _build(max_atoms, n_substitutions, progress)


def _build(max_atoms: int, n_substitutions: int, progress: bool) -> LoadReport:
    items: list[tuple[str, Any, dict[str, Any]]] = []
    aflow = _aflow(max_atoms)
    for sid, s, props in aflow:
        items.append((sid, s, {"source": "aflow", **props}))
    for sid, s in _ase_elements(max_atoms):
        items.append((sid, s, {"source": "ase-reference-state"}))
    present: set[str] = {str(e) for _, st, _ in items for e in st.composition.elements}
    present |= {x for pair in _PAIRS for x in pair}
    have = {str(st.composition.elements[0]) for _, st, _ in items
            if len(st.composition.elements) == 1}
    for sid, s in _element_references(present, have, max_atoms):
        items.append((sid, s, {"source": "elemental-reference"}))
    rng = np.random.default_rng(0)
    binaries = [
        (sid, s, p) for sid, s, p in aflow if len(s.composition.elements) == 2 and len(s) <= 12
    ]
    for sid, s, props in binaries:
        for k in rng.choice(len(_PAIRS), size=min(n_substitutions, len(_PAIRS)), replace=False):
            cat, an = _PAIRS[int(k)]
            items.append(
                (
                    f"{sid}-sub-{cat}{an}",
                    (lambda s=s, c=cat, a=an: _substitute(s, c, a)),
                    {"source": "substitution", "prototype": props["prototype"], "parent": sid},
                )
            )
    return build_load_report("demo", None, items, progress)
