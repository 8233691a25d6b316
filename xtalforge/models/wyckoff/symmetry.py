"""Wyckoff-position tables of the 230 space groups, read from pyxtal (no hand-written tables).

The Wyckoff transformer needs, for every space group ``g`` and Wyckoff letter ``w``:

* the multiplicity (conventional cell) and the number of free coordinates (``dof``);
* which of ``x, y, z`` are free: the rows of the position's first symmetry operation (its
  representative, e.g. ``x, x, 1/4``) that equal the identity row. For all 1,731 Wyckoff
  positions this reproduces ``pyxtal``'s ``get_dof()`` and the operation is a projection
  (applying it twice equals applying it once), checked in the tests;
* the projection itself (rotation matrix and translation of that first operation), which maps a
  sampled point onto the position;
* the orbit (``pyxtal``'s ``apply_ops``) to assemble a structure.

Letters are indexed from 1 in alphabetical order (``a`` = 1, ..., ``z`` = 26, ``A`` = 27, as
the International Tables name the 27 positions of Pmmm); 0 is the padding / end token. The
lattice of a crystal system has free parameters ``(a, b, c, alpha, beta, gamma)``:

=============  ==========================  ========================================
lattice type   free                        tied / fixed
=============  ==========================  ========================================
triclinic      all six
monoclinic     a, b, c, beta               alpha = gamma = 90 (unique axis b)
orthorhombic   a, b, c                     angles 90
tetragonal     a, c                        b = a, angles 90
trigonal       a, c                        b = a, alpha = beta = 90, gamma = 120
hexagonal      a, c                        (pyxtal's hexagonal setting of R groups)
cubic          a                           b = c = a, angles 90
=============  ==========================  ========================================

Tables are built lazily (about 3 s for all groups) and cached per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LATTICE_FREE",
    "MAX_LETTERS",
    "WyckoffTables",
    "centering_factor",
    "letter_index",
    "letter_of",
    "symmetrize_lattice",
    "wyckoff_tables",
]

#: Most Wyckoff positions of one space group (Pmmm, No. 47).
MAX_LETTERS = 27
_LETTERS = "abcdefghijklmnopqrstuvwxyzA"

#: Free lattice parameters ``(a, b, c, alpha, beta, gamma)`` of each lattice type.
LATTICE_FREE: dict[str, tuple[bool, ...]] = {
    "triclinic": (True, True, True, True, True, True),
    "monoclinic": (True, True, True, False, True, False),
    "orthorhombic": (True, True, True, False, False, False),
    "tetragonal": (True, False, True, False, False, False),
    "trigonal": (True, False, True, False, False, False),
    "hexagonal": (True, False, True, False, False, False),
    "cubic": (True, False, False, False, False, False),
}


def letter_index(letter: str) -> int:
    """Index of a Wyckoff letter (``a`` = 1, ..., ``A`` = 27)."""
    i = _LETTERS.find(letter)
    if i < 0 or len(letter) != 1:
        raise ValueError(f"not a Wyckoff letter: {letter!r}")
    return i + 1


def letter_of(index: int) -> str:
    """Inverse of :func:`letter_index`."""
    if not 1 <= index <= MAX_LETTERS:
        raise ValueError(f"Wyckoff letter index must be in 1..{MAX_LETTERS}, got {index}")
    return _LETTERS[index - 1]


def centering_factor(symbol: str) -> int:
    """Lattice points per conventional cell from a Hermann-Mauguin symbol's first letter."""
    return {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}[symbol[0]]


@dataclass(frozen=True)
class WyckoffTables:
    """Per space group and letter arrays (index ``[g, w]``, ``g`` in 1..230, ``w`` in 0..27).

    Attributes
    ----------
    num_letters
        ``[231]`` number of Wyckoff positions of each group.
    multiplicity
        ``[231, 28]`` multiplicities in the conventional cell (0 where no such letter).
    dof
        ``[231, 28]`` free coordinates.
    free
        ``[231, 28, 3]`` which of ``x, y, z`` are free.
    rotation, translation
        ``[231, 28, 3, 3]`` and ``[231, 28, 3]``: the projection onto the position.
    wp_index
        ``[231, 28]`` a global index of each Wyckoff position (1..1731; 0 for padding).
    lattice_free
        ``[231, 6]`` free lattice parameters of each group.
    lattice_type
        ``[231]`` pyxtal lattice type names (``""`` at index 0).
    centering
        ``[231]`` lattice points per conventional cell.
    symbol
        ``[231]`` Hermann-Mauguin symbols.
    """

    num_letters: np.ndarray
    multiplicity: np.ndarray
    dof: np.ndarray
    free: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    wp_index: np.ndarray
    lattice_free: np.ndarray
    lattice_type: tuple[str, ...]
    centering: np.ndarray
    symbol: tuple[str, ...]

    @property
    def num_wyckoff_positions(self) -> int:
        """Number of Wyckoff positions of all groups (1731)."""
        return int(self.wp_index.max())

    def orbit(self, group: int, letter: int, xyz: np.ndarray) -> np.ndarray:
        """Return the orbit ``[multiplicity, 3]`` of ``xyz`` (fractional, wrapped to [0, 1))."""
        wp = _group(group).Wyckoff_positions[self._pyxtal_pos(group, letter)]
        pts = np.asarray(wp.apply_ops(np.asarray(xyz, dtype=float)), dtype=float)
        return pts - np.floor(pts)

    def project(self, group: int, letter: int, xyz: np.ndarray) -> np.ndarray:
        """Map ``xyz`` onto the position's representative form (wrapped to [0, 1))."""
        p = self.rotation[group, letter] @ np.asarray(xyz, float) + self.translation[group, letter]
        return p - np.floor(p)

    def _pyxtal_pos(self, group: int, letter: int) -> int:
        n = int(self.num_letters[group])
        if not 1 <= letter <= n:
            raise ValueError(f"space group {group} has no Wyckoff letter index {letter}")
        return n - letter  # pyxtal lists positions from the general one down to 'a'


@functools.cache
def _group(number: int):
    from pyxtal.symmetry import Group

    return Group(int(number))


@functools.lru_cache(maxsize=1)
def wyckoff_tables() -> WyckoffTables:
    """Build (once per process) the :class:`WyckoffTables` of all 230 space groups."""
    n_g, n_w = 231, MAX_LETTERS + 1
    num = np.zeros(n_g, dtype=np.int64)
    mult = np.zeros((n_g, n_w), dtype=np.int64)
    dof = np.zeros((n_g, n_w), dtype=np.int64)
    free = np.zeros((n_g, n_w, 3), dtype=bool)
    rot = np.zeros((n_g, n_w, 3, 3))
    trans = np.zeros((n_g, n_w, 3))
    wpi = np.zeros((n_g, n_w), dtype=np.int64)
    lfree = np.zeros((n_g, 6), dtype=bool)
    ltype, symbols = [""], [""]
    cent = np.ones(n_g, dtype=np.int64)
    k = 0
    for g in range(1, 231):
        grp = _group(g)
        wps = grp.Wyckoff_positions
        num[g] = len(wps)
        ltype.append(grp.lattice_type)
        symbols.append(grp.symbol)
        lfree[g] = LATTICE_FREE[grp.lattice_type]
        cent[g] = centering_factor(grp.symbol)
        for wp in wps:
            w = letter_index(wp.letter)
            op = wp.ops[0]
            r, t = np.asarray(op.rotation_matrix, float), np.asarray(op.translation_vector, float)
            f = [bool(np.allclose(r[i], np.eye(3)[i]) and abs(t[i]) < 1e-9) for i in range(3)]
            if sum(f) != int(wp.get_dof()):
                raise RuntimeError(f"unexpected representative {op.as_xyz_str()} of {g}{wp.letter}")
            k += 1
            mult[g, w], dof[g, w], free[g, w], wpi[g, w] = wp.multiplicity, sum(f), f, k
            rot[g, w], trans[g, w] = r, t
    return WyckoffTables(num, mult, dof, free, rot, trans, wpi, lfree, tuple(ltype), cent,
                         tuple(symbols))


def symmetrize_lattice(lattice_type: str, params: np.ndarray) -> np.ndarray:
    """Tie / fix the non-free lattice parameters ``[..., 6]`` (a, b, c, angles in degrees)."""
    p = np.array(params, dtype=float, copy=True)
    if lattice_type in ("cubic", "tetragonal", "trigonal", "hexagonal"):
        p[..., 1] = p[..., 0]
    if lattice_type == "cubic":
        p[..., 2] = p[..., 0]
    if lattice_type != "triclinic":
        p[..., 3] = 90.0
        p[..., 5] = 90.0
        if lattice_type != "monoclinic":
            p[..., 4] = 90.0
    if lattice_type in ("trigonal", "hexagonal"):
        p[..., 5] = 120.0
    return p
