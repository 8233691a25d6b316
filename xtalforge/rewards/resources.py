"""Long-lived inputs of the reward metrics, reused across RL steps.

:class:`RewardResources` holds the energy model, hull, novelty reference set, generator (for
embeddings), reference embeddings and property surrogates that the metric providers of
:mod:`xtalforge.rewards.metrics` read. :class:`GuardedEnergyModel` keeps implausibly dense cells
away from the MLIP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xtalforge.screening.metrics import MIN_VOLUME_PER_ATOM, evaluation_rejection

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from xtalforge.models.generator import LatentDiffusionGenerator
    from xtalforge.rewards.surrogate import PropertySurrogate
    from xtalforge.screening.hull import ReferenceHull
    from xtalforge.screening.metrics import ReferenceSet
    from xtalforge.screening.mlip import EnergyModel

__all__ = ["AMD_BACKEND", "GuardedEnergyModel", "RewardResources"]

#: Implementation of the AMD vectors (:func:`xtalforge.screening.metrics.amd_vectors`).
AMD_BACKEND = "average-minimum-distance"


@dataclass
class RewardResources:
    """Long-lived inputs of the metric providers (reused across RL steps).

    Attributes
    ----------
    energy_model
        MLIP for ``e_above_hull`` (:func:`xtalforge.screening.mlip.get_energy_model`).
    hull
        :class:`~xtalforge.screening.hull.ReferenceHull` on the energy model's scale (or a
        formation hull with its chemical potentials).
    reference
        :class:`~xtalforge.screening.metrics.ReferenceSet` for novelty and AMD distances
        (usually the generator's training set).
    generator
        The generator whose VAE embeds structures (diversity, surrogates).
    reference_structure_embeddings, reference_composition_embeddings
        ``[N, d]`` embeddings of the reference distribution for the diversity MMD.
    surrogates
        Property predictors by name (``predicted:<name>`` metrics).
    n_jobs
        Worker processes for matching / SMACT.
    amd_k
        AMD neighbours (100 in Park & Walsh 2025).
    energy_batch_size
        Single-point batch size.
    min_volume_per_atom
        Structures denser than this (Å^3/atom) are not given to the MLIP (their energy is a
        failure): a diverging policy can decode cells so dense that the MLIP's neighbour and
        angle graphs exhaust memory (seen with CHGNet). Default
        :data:`~xtalforge.screening.metrics.MIN_VOLUME_PER_ATOM`, the guard screening applies
        (:func:`~xtalforge.screening.metrics.evaluation_rejection`; the densest MP-20 crystal
        has 5.77).
    device
        Device for embeddings and surrogates (default: the generator's).
    """

    energy_model: EnergyModel | None = None
    hull: ReferenceHull | None = None
    reference: ReferenceSet | None = None
    generator: LatentDiffusionGenerator | None = None
    reference_structure_embeddings: np.ndarray | None = None
    reference_composition_embeddings: np.ndarray | None = None
    surrogates: dict[str, PropertySurrogate] = field(default_factory=dict)
    n_jobs: int = 1
    amd_k: int = 100
    energy_batch_size: int = 64
    min_volume_per_atom: float = MIN_VOLUME_PER_ATOM
    device: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description (recorded with RL outputs)."""
        return {
            "energy_model": getattr(self.energy_model, "info", None),
            "hull": dict(self.hull.convention) if self.hull is not None else None,
            "n_reference": len(self.reference) if self.reference is not None else 0,
            "n_reference_structure_embeddings": _nrows(self.reference_structure_embeddings),
            "n_reference_composition_embeddings": _nrows(self.reference_composition_embeddings),
            "surrogates": {k: getattr(v, "describe", lambda: {})() for k, v in
                           self.surrogates.items()},
            "amd_k": self.amd_k,
            "amd_backend": AMD_BACKEND,
        }

    def embed_reference(self, structures: Sequence[Structure], required: Sequence[str], *,
                        max_structures: int | None = None,
                        rng: np.random.Generator | None = None) -> int:
        """Embed the diversity reference with :attr:`generator` (what ``required`` asks for).

        The diversity rewards (Park & Walsh 2025) compare each sample's embedding with the
        reference distribution's. Any generator with ``embed_structures`` can embed structures;
        composition embeddings need one with ``composition_embeddings`` (a latent diffusion
        VAE), which is how a Wyckoff transformer's RL gets diversity rewards: its embedder is a
        latent diffusion checkpoint.

        Parameters
        ----------
        structures
            Reference crystals (those with more atoms than the generator's ``max_atoms`` are
            left out).
        required
            The reward's required metrics; only ``structure_embedding`` and
            ``composition_embedding`` matter here.
        max_structures, rng
            With both given, at most this many structures are embedded, a random subset drawn
            from ``rng``.

        Returns
        -------
        int
            The number of reference structures embedded (0 when nothing is required).

        Raises
        ------
        ValueError
            When an embedding is required and :attr:`generator` is missing or cannot give it.
        """
        need = {"structure_embedding", "composition_embedding"} & set(required)
        if not need:
            return 0
        gen = self.generator
        if gen is None:
            raise ValueError("the diversity rewards need RewardResources.generator to embed "
                             "structures (give a latent diffusion checkpoint as embedder)")
        if "composition_embedding" in need and not hasattr(gen, "composition_embeddings"):
            raise ValueError(f"composition diversity needs composition embeddings, which a "
                             f"{type(gen).__name__} does not give: embed with a latent "
                             "diffusion checkpoint")
        small = [s for s in structures if len(s) <= gen.max_atoms]
        if rng is not None and max_structures is not None and len(small) > max_structures:
            pick = rng.choice(len(small), max_structures, replace=False)
            small = [small[i] for i in sorted(pick)]
        if "structure_embedding" in need:
            self.reference_structure_embeddings = gen.embed_structures(small, device=self.device)
        if "composition_embedding" in need:
            self.reference_composition_embeddings = gen.composition_embeddings(
                small, device=self.device)
        return len(small)

    def reference_amd(self, formula: str, k: int) -> np.ndarray:
        """AMD vectors of the reference structures of ``formula`` (cached by the reference set)."""
        if self.reference is None:
            return np.zeros((0, k))
        return self.reference.amd(formula, k)


def _nrows(x: np.ndarray | None) -> int:
    return 0 if x is None else int(len(x))


class GuardedEnergyModel:
    """An energy model that refuses implausibly dense cells before they reach the MLIP.

    Wraps any :class:`~xtalforge.screening.mlip.EnergyModel` (attributes pass through);
    :meth:`predict` gives an error result, without evaluation, for structures with less than
    ``min_volume_per_atom`` Å^3 per atom (the density test of
    :func:`~xtalforge.screening.metrics.evaluation_rejection`). For code that calls an energy
    model directly; :func:`~xtalforge.screening.screen.screen_structures` applies the same guard
    itself and records the reason as ``rejected``.
    """

    def __init__(self, model: EnergyModel,
                 min_volume_per_atom: float = MIN_VOLUME_PER_ATOM) -> None:
        self.model = model
        self.min_volume_per_atom = float(min_volume_per_atom)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def reason(self, structure: Structure | None) -> str | None:
        """Why ``structure`` is refused, or ``None``."""
        reason = evaluation_rejection(structure, self.min_volume_per_atom, min_distance=None)
        return f"not evaluated: {reason}" if reason else None

    def predict(self, structures: Sequence[Any], *args: Any, **kwargs: Any) -> list:
        """``model.predict`` with refused structures replaced by error results."""
        reasons = [self.reason(s) for s in structures]
        sub = [None if r else s for s, r in zip(structures, reasons, strict=True)]
        results = self.model.predict(sub, *args, **kwargs)
        for res, r in zip(results, reasons, strict=True):
            if r:
                res.error = r
        return results
