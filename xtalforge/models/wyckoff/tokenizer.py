"""Crystal <-> Wyckoff sequence: space group, (letter, element, x, y, z) per site, lattice.

A :class:`WyckoffSequence` is the representation of Cao et al. 2024 (CrystalFormer) used by
Cao & Wang 2025: the space group number, then one entry per symmetry-inequivalent site (its
Wyckoff letter, element and the fractional coordinates of the orbit's representative, which
lies on the position's first symmetry operation, e.g. ``x, x, 1/4``), then the conventional
lattice parameters. Sites are sorted by letter (``a`` first: highest site symmetry), then by
atomic number.

:func:`structure_to_sequence` symmetrises with pymatgen's ``SpacegroupAnalyzer`` (the refined,
conventional standard cell) and reads the Wyckoff sites in the International Tables setting with
``pyxtal`` (``from_seed``, which handles origin choices); :func:`sequence_to_structure` builds
the orbits with pyxtal's symmetry operations and the structure with pymatgen, optionally reduced
to the primitive cell (the cells MP-20 stores).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from xtalforge.models.wyckoff.symmetry import letter_index, symmetrize_lattice, wyckoff_tables

__all__ = ["TokenizeError", "WyckoffSequence", "sequence_to_structure", "structure_to_sequence"]

logger = logging.getLogger(__name__)

#: Smallest volume per atom (Å³) a decoded cell may have; real crystals have more than 5.
MIN_VOLUME_PER_ATOM = 1.0


def _min_distance(structure) -> float:
    """Shortest interatomic distance (Å, periodic); inf for one atom."""
    if len(structure) < 2:
        return float("inf")
    dm = structure.distance_matrix
    return float(dm[~np.eye(len(structure), dtype=bool)].min())


class TokenizeError(ValueError):
    """A structure that cannot be written as a Wyckoff sequence (or a sequence as a structure)."""


@dataclass
class WyckoffSequence:
    """One crystal as a Wyckoff sequence.

    Attributes
    ----------
    group
        Space group number (1..230).
    letters
        ``[n]`` Wyckoff letter indices (``a`` = 1).
    elements
        ``[n]`` atomic numbers.
    coords
        ``[n, 3]`` fractional coordinates of each site's representative, in [0, 1).
    lattice
        ``(a, b, c, alpha, beta, gamma)`` of the conventional cell (Å, degrees).
    """

    group: int
    letters: np.ndarray
    elements: np.ndarray
    coords: np.ndarray
    lattice: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.letters = np.asarray(self.letters, dtype=np.int64).reshape(-1)
        self.elements = np.asarray(self.elements, dtype=np.int64).reshape(-1)
        self.coords = np.asarray(self.coords, dtype=float).reshape(-1, 3)
        self.lattice = np.asarray(self.lattice, dtype=float).reshape(6)

    def __len__(self) -> int:
        return len(self.letters)

    @property
    def num_atoms_conventional(self) -> int:
        """Atoms in the conventional cell (sum of multiplicities)."""
        return int(wyckoff_tables().multiplicity[self.group, self.letters].sum())

    @property
    def num_atoms(self) -> int:
        """Atoms in the primitive cell."""
        return self.num_atoms_conventional // int(wyckoff_tables().centering[self.group])

    def to_string(self) -> str:
        """Readable form, e.g. ``225-a-Na-0-0-0-b-Cl-0.5-0.5-0.5-5.6-5.6-5.6-90-90-90``."""
        from pymatgen.core import Element

        from xtalforge.models.wyckoff.symmetry import letter_of

        parts = [str(self.group)]
        for w, z, x in zip(self.letters, self.elements, self.coords, strict=True):
            parts += [letter_of(int(w)), Element.from_Z(int(z)).symbol, *(f"{v:.3g}" for v in x)]
        parts += [f"{v:.4g}" for v in self.lattice]
        return "-".join(parts)


def _canonical_position(group: int, letter: int, position: np.ndarray) -> np.ndarray:
    """Return an orbit member lying on the position's representative (projection-invariant)."""
    t = wyckoff_tables()
    cands = [np.asarray(position, float)] + list(t.orbit(group, letter, position))
    for p in cands:
        p = p - np.floor(p)
        q = t.project(group, letter, p)
        d = (q - p + 0.5) % 1.0 - 0.5
        if np.all(np.abs(d) < 1e-4):
            return q
    return t.project(group, letter, cands[0])


def structure_to_sequence(structure, symprec: float = 0.01, angle_tolerance: float = 5.0
                          ) -> WyckoffSequence:
    """Symmetrise ``structure`` and write it as a :class:`WyckoffSequence`.

    Parameters
    ----------
    structure
        A pymatgen ``Structure`` (ordered).
    symprec, angle_tolerance
        ``SpacegroupAnalyzer`` tolerances (``symprec`` is also pyxtal's tolerance).

    Raises
    ------
    TokenizeError
        When the structure is disordered or pyxtal cannot assign Wyckoff positions.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
    from pyxtal import pyxtal

    if not structure.is_ordered:
        raise TokenizeError("disordered structure")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sga = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=angle_tolerance)
            refined = sga.get_refined_structure()
            xtal = pyxtal()
            try:
                xtal.from_seed(refined, tol=symprec)
            except Exception:  # noqa: BLE001 - pyxtal's own retry tolerance (as CrystalFormer)
                xtal.from_seed(refined, tol=1e-4)
    except Exception as exc:  # noqa: BLE001 - any symmetry failure is this structure's error
        raise TokenizeError(f"symmetry analysis failed: {type(exc).__name__}: {exc}") from exc
    g = int(xtal.group.number)
    rows = []
    from pymatgen.core import Element

    for site in xtal.atom_sites:
        w = letter_index(site.wp.letter)
        z = Element(str(site.specie)).Z
        rows.append((w, z, _canonical_position(g, w, np.asarray(site.position, float))))
    rows.sort(key=lambda r: (r[0], r[1], tuple(np.round(r[2], 6))))
    params = symmetrize_lattice(wyckoff_tables().lattice_type[g],
                                np.asarray(xtal.lattice.get_para(degree=True), dtype=float))
    return WyckoffSequence(g, [r[0] for r in rows], [r[1] for r in rows],
                           np.array([r[2] for r in rows]).reshape(-1, 3), params,
                           info={"spacegroup_analyzer": sga.get_space_group_number()})


def sequence_to_structure(seq: WyckoffSequence, primitive: bool = True, merge_tol: float = 1e-3):
    """Assemble the crystal of a sequence with pymatgen.

    Parameters
    ----------
    seq
        The sequence.
    primitive
        Reduce a centred conventional cell to the primitive cell.
    merge_tol
        Orbit points closer than this (fractional) are one site (a coordinate sampled onto a
        special position).

    Raises
    ------
    TokenizeError
        On an impossible lattice (non-finite, non-positive lengths, angles that do not make a
        cell) or an empty sequence.
    """
    from pymatgen.core import Element, Lattice, Structure

    t = wyckoff_tables()
    if len(seq) == 0:
        raise TokenizeError("no atoms")
    p = np.asarray(seq.lattice, float)
    if not np.all(np.isfinite(p)) or np.any(p[:3] <= 0) or np.any(p[3:] <= 0) or np.any(
            p[3:] >= 180):
        raise TokenizeError(f"invalid lattice parameters {np.round(p, 3).tolist()}")
    try:
        lattice = Lattice.from_parameters(*p)
        if not np.isfinite(lattice.volume) or lattice.volume <= 1e-3:
            raise TokenizeError(f"degenerate lattice {np.round(p, 3).tolist()}")
    except (ValueError, ZeroDivisionError) as exc:
        raise TokenizeError(f"invalid lattice {np.round(p, 3).tolist()}: {exc}") from exc
    species, coords = [], []
    for w, z, x in zip(seq.letters, seq.elements, seq.coords, strict=True):
        pts = t.orbit(seq.group, int(w), t.project(seq.group, int(w), x))
        keep: list[np.ndarray] = []
        for q in pts:
            if all(np.abs((q - k + 0.5) % 1.0 - 0.5).max() > merge_tol for k in keep):
                keep.append(q)
        el = Element.from_Z(int(z))
        species += [el] * len(keep)
        coords += keep
    s = Structure(lattice, species, np.array(coords))
    if s.volume / len(s) < MIN_VOLUME_PER_ATOM:
        # a sampled lattice far below any real crystal's density (spglib crashes on some)
        raise TokenizeError(f"unphysical cell: {s.volume / len(s):.3g} A^3 per atom "
                            f"(lattice {np.round(p, 3).tolist()})")
    if primitive and int(t.centering[seq.group]) > 1 and _min_distance(s) > 0.5:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prim = SpacegroupAnalyzer(s, symprec=0.01).find_primitive()
            if prim is not None and len(prim) < len(s):
                s = prim
        except Exception:  # noqa: BLE001 - keep the conventional cell
            logger.debug("primitive reduction failed for %s", seq.to_string())
    return s
