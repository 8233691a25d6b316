"""Padded tensor representation of crystals, C = (A, L, X).

Public API
----------
``CrystalBatch``
    Dataclass of torch tensors: ``atom_types`` (Long ``[B, N]``, atomic number, 0 = padding),
    ``frac_coords`` (``[B, N, 3]`` in ``[0, 1)``), ``lattice`` (``[B, 3, 3]``, row vectors, Å),
    ``mask`` (bool ``[B, N]``) and ``num_atoms`` (Long ``[B]``). ``.to(device)``, ``.cart_coords``,
    ``len(batch)``, ``batch[idx]`` (index / slice / index tensor).
``structures_to_batch(structures, max_atoms=20)``
    pymatgen ``Structure`` objects to a padded batch.
``batch_to_structures(batch)`` / ``batch_to_structures_with_reasons(batch)``
    Back to ``Structure`` objects; an invalid entry (no atoms, unknown species, non-finite or
    degenerate lattice, non-finite coordinates) decodes to ``None`` and, in the second form, a
    reason string in a parallel list (``None`` for valid entries).
``random_translation(batch, generator)``, ``random_rotation(batch, generator)``, ``augment(...)``
    Data augmentation: a random shift of all fractional coordinates of a crystal (mod 1) and a
    random proper rotation of the lattice (fractional coordinates unchanged, so Cartesian
    coordinates rotate with it).
``lattice_to_params(lattice)`` / ``params_to_lattice(lengths, angles)``
    Batched lattice matrix <-> (lengths in Å, angles in radians), pymatgen's convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

__all__ = [
    "MAX_ATOMIC_NUMBER",
    "CrystalBatch",
    "augment",
    "batch_to_structures",
    "batch_to_structures_with_reasons",
    "lattice_metric_det",
    "lattice_to_params",
    "params_to_lattice",
    "random_rotation",
    "random_translation",
    "structures_to_batch",
]

#: Largest atomic number the models know about (species vocabulary is ``0..MAX_ATOMIC_NUMBER``,
#: 0 being padding).
MAX_ATOMIC_NUMBER = 100

#: Smallest cell volume (Å^3) that still decodes to a structure.
MIN_VOLUME = 1e-3


@dataclass
class CrystalBatch:
    """A padded batch of crystals.

    Attributes
    ----------
    atom_types
        Long tensor ``[B, N]`` of atomic numbers, 0 at padded positions.
    frac_coords
        Float tensor ``[B, N, 3]`` of fractional coordinates (0 at padded positions).
    lattice
        Float tensor ``[B, 3, 3]``; row ``i`` is lattice vector ``i`` in Å.
    mask
        Bool tensor ``[B, N]``, True for real atoms.
    num_atoms
        Long tensor ``[B]``, number of real atoms of each crystal.
    """

    atom_types: torch.Tensor
    frac_coords: torch.Tensor
    lattice: torch.Tensor
    mask: torch.Tensor
    num_atoms: torch.Tensor

    def __len__(self) -> int:
        return int(self.atom_types.shape[0])

    @property
    def max_atoms(self) -> int:
        """Padded number of atom slots ``N``."""
        return int(self.atom_types.shape[1])

    @property
    def device(self) -> torch.device:
        """Device of the tensors."""
        return self.atom_types.device

    @property
    def cart_coords(self) -> torch.Tensor:
        """Cartesian coordinates ``[B, N, 3]`` in Å (``frac @ lattice``)."""
        return torch.einsum("bni,bij->bnj", self.frac_coords, self.lattice)

    def to(self, device: torch.device | str) -> CrystalBatch:
        """Return a copy with every tensor on ``device`` (float dtypes unchanged)."""
        return CrystalBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, idx: int | slice | torch.Tensor | Sequence[int]) -> CrystalBatch:
        """Select crystals (keeps the batch dimension, also for an integer index)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        elif not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        return CrystalBatch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @classmethod
    def cat(cls, batches: Sequence[CrystalBatch]) -> CrystalBatch:
        """Concatenate batches with the same padded size along the batch dimension."""
        return cls(
            **{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)}
        )

    def clone(self) -> CrystalBatch:
        """Deep copy of the tensors."""
        return CrystalBatch(**{f.name: getattr(self, f.name).clone() for f in fields(self)})


# --------------------------------------------------------------------------------------------
# lattice helpers
# --------------------------------------------------------------------------------------------
def lattice_to_params(lattice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lengths (Å) and angles (radians, alpha beta gamma) of row-vector lattices ``[..., 3, 3]``.

    Parameters
    ----------
    lattice
        Lattice matrices, rows are the lattice vectors a, b, c.

    Returns
    -------
    tuple of Tensor
        ``lengths [..., 3]`` and ``angles [..., 3]`` (alpha = angle(b, c), beta = angle(a, c),
        gamma = angle(a, b)).
    """
    lengths = torch.linalg.norm(lattice, dim=-1)
    a, b, c = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]

    def _angle(u: torch.Tensor, v: torch.Tensor, nu: torch.Tensor, nv: torch.Tensor):
        cos = (u * v).sum(-1) / (nu * nv).clamp_min(1e-12)
        return torch.arccos(cos.clamp(-1.0, 1.0))

    alpha = _angle(b, c, lengths[..., 1], lengths[..., 2])
    beta = _angle(a, c, lengths[..., 0], lengths[..., 2])
    gamma = _angle(a, b, lengths[..., 0], lengths[..., 1])
    return lengths, torch.stack([alpha, beta, gamma], dim=-1)


def lattice_metric_det(angles: torch.Tensor) -> torch.Tensor:
    """``1 - cos²α - cos²β - cos²γ + 2 cosα cosβ cosγ`` (> 0 iff the angles form a cell).

    Parameters
    ----------
    angles
        ``[..., 3]`` angles in radians.

    Returns
    -------
    Tensor
        ``[...]``; the cell volume is ``a b c sqrt(det)``.
    """
    ca, cb, cg = torch.cos(angles).unbind(-1)
    return 1.0 - ca**2 - cb**2 - cg**2 + 2.0 * ca * cb * cg


def params_to_lattice(lengths: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Row-vector lattice matrices from lengths (Å) and angles (radians).

    Uses the convention of ``pymatgen.core.Lattice.from_parameters`` (c along z). Angle triples
    that do not form a cell (see :func:`lattice_metric_det`) give NaN matrices, so that
    :func:`batch_to_structures` flags them instead of silently building a different cell.

    Parameters
    ----------
    lengths, angles
        ``[..., 3]`` tensors.

    Returns
    -------
    Tensor
        ``[..., 3, 3]``.
    """
    a, b, c = lengths.unbind(-1)
    alpha, beta, gamma = angles.unbind(-1)
    ca, cb, cg = torch.cos(alpha), torch.cos(beta), torch.cos(gamma)
    sa, sb = torch.sin(alpha), torch.sin(beta)
    val = ((ca * cb - cg) / (sa * sb).clamp_min(1e-12)).clamp(-1.0, 1.0)
    gamma_star = torch.arccos(val)
    zeros = torch.zeros_like(a)
    va = torch.stack([a * sb, zeros, a * cb], dim=-1)
    vb = torch.stack([-b * sa * torch.cos(gamma_star), b * sa * torch.sin(gamma_star), b * ca], -1)
    vc = torch.stack([zeros, zeros, c], dim=-1)
    lattice = torch.stack([va, vb, vc], dim=-2)
    bad = lattice_metric_det(angles) <= 1e-6
    return torch.where(bad[..., None, None], torch.full_like(lattice, float("nan")), lattice)


# --------------------------------------------------------------------------------------------
# Structure <-> batch
# --------------------------------------------------------------------------------------------
def structures_to_batch(
    structures: Sequence,
    max_atoms: int = 20,
    dtype: torch.dtype = torch.float32,
) -> CrystalBatch:
    """Convert pymatgen structures to a padded :class:`CrystalBatch` (on the CPU).

    Parameters
    ----------
    structures
        Ordered ``pymatgen.core.Structure`` objects (disordered sites are not supported).
    max_atoms
        Padded size ``N``; a structure with more sites raises ``ValueError``.
    dtype
        Float dtype of coordinates and lattice.

    Returns
    -------
    CrystalBatch
    """
    n = len(structures)
    atom_types = np.zeros((n, max_atoms), dtype=np.int64)
    frac = np.zeros((n, max_atoms, 3), dtype=np.float64)
    lattice = np.zeros((n, 3, 3), dtype=np.float64)
    num_atoms = np.zeros(n, dtype=np.int64)
    for i, s in enumerate(structures):
        k = len(s)
        if k > max_atoms:
            raise ValueError(
                f"structure {i} ({s.composition.reduced_formula}) has {k} sites "
                f"> max_atoms={max_atoms}"
            )
        if k == 0:
            raise ValueError(f"structure {i} has no sites")
        if not s.is_ordered:
            raise ValueError(f"structure {i} is disordered; only ordered structures are supported")
        atom_types[i, :k] = [site.specie.Z for site in s]
        frac[i, :k] = np.mod(s.frac_coords, 1.0)
        lattice[i] = s.lattice.matrix
        num_atoms[i] = k
    if (atom_types > MAX_ATOMIC_NUMBER).any():
        raise ValueError(f"atomic numbers above {MAX_ATOMIC_NUMBER} are not supported")
    # mod 1 in float64 can still give exactly 1.0 after the float32 cast
    frac_t = torch.as_tensor(frac, dtype=dtype)
    frac_t = torch.where(frac_t >= 1.0, frac_t - 1.0, frac_t)
    at = torch.as_tensor(atom_types)
    return CrystalBatch(
        atom_types=at,
        frac_coords=frac_t,
        lattice=torch.as_tensor(lattice, dtype=dtype),
        mask=at > 0,
        num_atoms=torch.as_tensor(num_atoms),
    )


def batch_to_structures_with_reasons(batch: CrystalBatch) -> tuple[list, list[str | None]]:
    """Convert a batch to pymatgen structures, keeping invalid decodes as ``None`` with a reason.

    Parameters
    ----------
    batch
        A :class:`CrystalBatch` (any device).

    Returns
    -------
    structures : list of Structure or None
        One entry per crystal of the batch.
    reasons : list of str or None
        ``None`` where the structure is valid, else why it could not be built.
    """
    from pymatgen.core import Lattice, Structure

    atom_types = batch.atom_types.detach().cpu().numpy()
    frac = batch.frac_coords.detach().float().cpu().numpy().astype(np.float64)
    lattice = batch.lattice.detach().float().cpu().numpy().astype(np.float64)
    mask = batch.mask.detach().cpu().numpy()
    structures: list = []
    reasons: list[str | None] = []
    for i in range(len(atom_types)):
        m = mask[i]
        z = atom_types[i][m]
        reason = None
        if z.size == 0:
            reason = "no atoms"
        elif (z < 1).any() or (z > MAX_ATOMIC_NUMBER).any():
            reason = f"invalid atomic number(s) {sorted(set(z[(z < 1) | (z > 100)].tolist()))}"
        elif not np.isfinite(lattice[i]).all():
            reason = "invalid lattice (non-finite or impossible angles)"
        elif not np.isfinite(frac[i][m]).all():
            reason = "non-finite fractional coordinates"
        else:
            vol = abs(float(np.linalg.det(lattice[i])))
            if not vol > MIN_VOLUME:
                reason = f"degenerate lattice (volume {vol:.3g} A^3)"
        if reason is not None:
            structures.append(None)
            reasons.append(reason)
            continue
        try:
            s = Structure(Lattice(lattice[i]), [int(v) for v in z], np.mod(frac[i][m], 1.0))
        except Exception as exc:  # pragma: no cover - pymatgen edge cases
            structures.append(None)
            reasons.append(f"pymatgen error: {exc}")
            continue
        structures.append(s)
        reasons.append(None)
    return structures, reasons


def batch_to_structures(batch: CrystalBatch) -> list:
    """Convert a batch to pymatgen structures (``None`` for invalid decodes).

    See :func:`batch_to_structures_with_reasons` for the reasons.
    """
    return batch_to_structures_with_reasons(batch)[0]


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------
def random_translation(
    batch: CrystalBatch, generator: torch.Generator | None = None
) -> CrystalBatch:
    """Shift all fractional coordinates of each crystal by one uniform random vector (mod 1).

    Parameters
    ----------
    batch
        Input batch (not modified).
    generator
        Random generator on the batch's device.

    Returns
    -------
    CrystalBatch
    """
    b = len(batch)
    shift = torch.rand(
        (b, 1, 3), generator=generator, device=batch.device, dtype=batch.frac_coords.dtype
    )
    frac = torch.remainder(batch.frac_coords + shift, 1.0)
    frac = torch.where(frac >= 1.0, frac - 1.0, frac) * batch.mask[..., None]
    return CrystalBatch(batch.atom_types, frac, batch.lattice, batch.mask, batch.num_atoms)


def random_rotation_matrices(
    n: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` Haar-random proper rotation matrices ``[n, 3, 3]``.

    Built from normalised Gaussian quaternions (uniform on SO(3)); only elementwise ops, so it
    is cheap and does not synchronise on a GPU.
    """
    q = torch.randn((n, 4), generator=generator, device=device, dtype=torch.float32)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - z * w),
            2 * (x * z + y * w),
            2 * (x * y + z * w),
            1 - 2 * (x * x + z * z),
            2 * (y * z - x * w),
            2 * (x * z - y * w),
            2 * (y * z + x * w),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).view(n, 3, 3)
    return rot.to(dtype)


def random_rotation(batch: CrystalBatch, generator: torch.Generator | None = None) -> CrystalBatch:
    """Rotate each lattice (and hence the Cartesian coordinates) by a random proper rotation.

    Fractional coordinates are unchanged; ``L' = L R^T`` so that every lattice vector ``v``
    becomes ``R v``.

    Parameters
    ----------
    batch
        Input batch (not modified).
    generator
        Random generator on the batch's device.

    Returns
    -------
    CrystalBatch
    """
    rot = random_rotation_matrices(len(batch), generator, batch.device, batch.lattice.dtype)
    lattice = batch.lattice @ rot.transpose(-1, -2)
    return CrystalBatch(batch.atom_types, batch.frac_coords, lattice, batch.mask, batch.num_atoms)


def augment(
    batch: CrystalBatch,
    generator: torch.Generator | None = None,
    translate: bool = True,
    rotate: bool = True,
) -> CrystalBatch:
    """Apply :func:`random_translation` and/or :func:`random_rotation`."""
    if translate:
        batch = random_translation(batch, generator)
    if rotate:
        batch = random_rotation(batch, generator)
    return batch


def num_atoms_to_mask(num_atoms: torch.Tensor, max_atoms: int) -> torch.Tensor:
    """Bool mask ``[B, max_atoms]`` with the first ``num_atoms[b]`` slots True."""
    ar = torch.arange(max_atoms, device=num_atoms.device)
    return ar[None, :] < num_atoms[:, None]


def angles_deg(angles: torch.Tensor) -> torch.Tensor:
    """Radians to degrees (helper for logging)."""
    return angles * (180.0 / math.pi)
