"""The generator interface that every generator family implements.

Pretraining, sampling, RL, screening, DFT and the reports reach a generator through this
interface only, so a campaign runs with either family:

``latent_diffusion``
    :class:`~xtalforge.models.generator.LatentDiffusionGenerator` (Park & Walsh 2025), through
    :class:`LatentDiffusionFamily`, an adapter that calls the generator's own methods and
    changes nothing in its behaviour.
``wyckoff_transformer``
    :class:`~xtalforge.models.wyckoff.generator.WyckoffTransformerGenerator` (Cao & Wang 2025),
    which implements the interface directly.

What a family provides (:class:`CrystalGenerator`)
--------------------------------------------------
``sample(n, conditions, seed=..., device=..., batch_size=...)``
    ``n`` crystals (``None`` + a reason where a sample is not a crystal), optionally
    conditioned (:class:`SampleConditions`: atom counts, space groups, properties; a family
    raises ``ValueError`` on a condition it does not support, listed in
    ``supported_conditions``).
``rollout(n, conditions, seed=..., device=...)`` and ``log_prob(rollout)``
    Samples with their log-probabilities recorded at sampling time, and the same
    log-probabilities recomputed under the current parameters, differentiably (for RL). For a
    diffusion model a sample's log-probability is that of its denoising trajectory.
``embed_structures(structures)``
    ``[n, d]`` embeddings (NaN rows for ``None``) for the coverage and diversity metrics.
``save(path)`` / ``load(path)``
    One checkpoint file; :func:`load_any_generator` reads either family's by its format tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "FAMILIES",
    "CrystalGenerator",
    "GeneratorRollout",
    "LatentDiffusionFamily",
    "SampleConditions",
    "SampledCrystals",
    "as_family",
    "checkpoint_family",
    "load_any_generator",
]

#: Generator families by name.
FAMILIES = ("latent_diffusion", "wyckoff_transformer")


@dataclass
class SampleConditions:
    """Optional per-sample conditions (each ``None`` or a length-``n`` sequence / tensor).

    Attributes
    ----------
    num_atoms
        Atoms in the (primitive) cell.
    space_group
        Space group numbers.
    properties
        Property name -> ``[n]`` values (families trained with property conditioning).
    """

    num_atoms: Any = None
    space_group: Any = None
    properties: dict[str, Any] = field(default_factory=dict)

    def given(self) -> set[str]:
        """Names of the conditions that are set."""
        out = {k for k in ("num_atoms", "space_group") if getattr(self, k) is not None}
        return out | ({"properties"} if self.properties else set())

    def check(self, n: int, supported: frozenset[str] | set[str], family: str) -> None:
        """Raise ``ValueError`` on an unsupported condition or a length other than ``n``."""
        bad = self.given() - set(supported)
        if bad:
            raise ValueError(f"the {family} generator does not support the condition(s) "
                             f"{sorted(bad)}; supported: {sorted(supported)}")
        for k in ("num_atoms", "space_group"):
            v = getattr(self, k)
            if v is not None and len(v) != n:
                raise ValueError(f"{k} has {len(v)} entries for {n} samples")
        for k, v in self.properties.items():
            if len(v) != n:
                raise ValueError(f"property condition {k!r} has {len(v)} entries for {n} samples")


@dataclass
class SampledCrystals:
    """Output of :meth:`CrystalGenerator.sample`.

    Attributes
    ----------
    structures, reasons
        ``Structure`` or ``None`` per sample, and why a sample is ``None``.
    num_atoms
        ``[n]`` atom counts of the samples (the condition where one was given).
    space_groups
        ``[n]`` space groups the samples were generated in (``None`` for families that do not
        generate in a space group).
    log_probs
        ``[n]`` sampling log-probabilities where the family records them at no extra cost.
    timings, settings
        Seconds per stage; sampler settings for provenance.
    """

    structures: list
    reasons: list
    num_atoms: np.ndarray
    space_groups: np.ndarray | None = None
    log_probs: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_valid(self) -> int:
        """Samples that are crystals."""
        return sum(s is not None for s in self.structures)

    def __len__(self) -> int:
        return len(self.structures)


@dataclass
class GeneratorRollout:
    """Samples for RL: structures, recorded log-probabilities and what recomputes them.

    Attributes
    ----------
    structures, reasons
        As in :class:`SampledCrystals`.
    log_probs
        ``[n]`` log-probabilities recorded at sampling (detached, on the sampling device).
    payload
        Family-specific record of the samples (token sequences, denoising trajectories).
    groups
        ``[n]`` condition index of each sample (samples that share a condition).
    """

    structures: list
    reasons: list
    log_probs: torch.Tensor
    payload: Any
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.structures)


@runtime_checkable
class CrystalGenerator(Protocol):
    """What a generator family implements (see the module docstring)."""

    family: str
    supported_conditions: frozenset[str]

    @property
    def max_atoms(self) -> int:
        """Largest primitive cell the generator makes."""
        ...

    def sample(self, n: int, conditions: SampleConditions | None = None, *, seed: int = 0,
               device: str | torch.device = "cpu", batch_size: int = 1000) -> SampledCrystals:
        """Draw ``n`` crystals."""
        ...

    def rollout(self, n: int, conditions: SampleConditions | None = None, *, seed: int = 0,
                device: str | torch.device = "cpu") -> GeneratorRollout:
        """Draw ``n`` crystals with their log-probabilities, for RL."""
        ...

    def log_prob(self, rollout: GeneratorRollout) -> torch.Tensor:
        """Recompute ``[n]`` log-probabilities of a rollout (differentiable)."""
        ...

    def embed_structures(self, structures: Sequence, batch_size: int = 512,
                         device: str | torch.device | None = None) -> np.ndarray:
        """``[n, d]`` embeddings (NaN rows for ``None``)."""
        ...

    def save(self, path: str | Path) -> str:
        """Write one checkpoint file; return its sha256."""
        ...


class LatentDiffusionFamily:
    """:class:`CrystalGenerator` adapter of a latent diffusion generator.

    Every call goes to the wrapped generator's own methods with their defaults, so sampling
    through the adapter gives what ``generator.generate`` gives.

    Parameters
    ----------
    generator
        The wrapped generator (``.generator``).
    steps, eta
        DDIM settings of :meth:`sample` (defaults: the generator's own ``generate`` defaults)
        and of :meth:`rollout` (``rollout_eta`` must be > 0: a deterministic sampler has no
        log-probabilities).
    """

    family = "latent_diffusion"
    supported_conditions = frozenset({"num_atoms", "properties"})

    def __init__(self, generator, steps: int = 50, eta: float = 0.0, rollout_eta: float = 1.0
                 ) -> None:
        if rollout_eta <= 0:
            raise ValueError("rollout_eta must be > 0")
        self.generator = generator
        self.steps, self.eta, self.rollout_eta = int(steps), float(eta), float(rollout_eta)

    @property
    def max_atoms(self) -> int:
        """Padded atom count of the generator."""
        return self.generator.max_atoms

    def sample(self, n: int, conditions: SampleConditions | None = None, *, seed: int = 0,
               device: str | torch.device = "cpu", batch_size: int = 1000) -> SampledCrystals:
        """``generator.generate`` with the conditions mapped to its arguments."""
        c = conditions or SampleConditions()
        c.check(n, self.supported_conditions, self.family)
        props = ({k: torch.as_tensor(np.asarray(v)) for k, v in c.properties.items()}
                 if c.properties else None)
        res = self.generator.generate(n, num_atoms=c.num_atoms, seed=seed, batch_size=batch_size,
                                      device=device, steps=self.steps, eta=self.eta,
                                      conditions=props)
        return SampledCrystals(res.structures, res.reasons, np.asarray(res.num_atoms),
                               timings=res.timings, settings=res.settings)

    def rollout(self, n: int, conditions: SampleConditions | None = None, *, seed: int = 0,
                device: str | torch.device = "cpu") -> GeneratorRollout:
        """Sample trajectories with the trainable denoiser (``eta = rollout_eta``) and decode."""
        from xtalforge.models.crystal import batch_to_structures_with_reasons, num_atoms_to_mask

        c = conditions or SampleConditions()
        c.check(n, {"num_atoms"}, self.family)
        gen = self.generator.to(device)
        counts = (gen.sample_num_atoms(n, torch.Generator().manual_seed(seed))
                  if c.num_atoms is None else torch.as_tensor(np.asarray(c.num_atoms)))
        na = counts.long().to(device)
        with torch.no_grad():
            z0, traj = gen.ldm.sample(na, steps=self.steps, eta=self.rollout_eta, seed=seed + 1,
                                      return_trajectory=True, use_ema=False, reduce="sum")
            batch = gen.vae.decode_batch(z0.float(), num_atoms_to_mask(na, gen.max_atoms))
        structures, reasons = batch_to_structures_with_reasons(batch.to("cpu"))
        lp = traj.log_probs[traj.stochastic].sum(0)
        return GeneratorRollout(structures, reasons, lp.detach(), traj)

    def log_prob(self, rollout: GeneratorRollout) -> torch.Tensor:
        """Sum of the recomputed transition log-densities of each trajectory."""
        traj = rollout.payload
        return self.generator.ldm.step_log_probs(traj, steps=traj.stochastic_steps).sum(0)

    def embed_structures(self, structures: Sequence, batch_size: int = 512,
                         device: str | torch.device | None = None) -> np.ndarray:
        """Return the VAE embeddings of :meth:`LatentDiffusionGenerator.embed_structures`."""
        return self.generator.embed_structures(structures, batch_size=batch_size, device=device)

    def save(self, path: str | Path) -> str:
        """:meth:`LatentDiffusionGenerator.save`."""
        return self.generator.save(path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu"
             ) -> LatentDiffusionFamily:
        """Load a latent diffusion checkpoint and wrap it."""
        from xtalforge.models.generator import LatentDiffusionGenerator

        return cls(LatentDiffusionGenerator.load(path, map_location=map_location))


def checkpoint_family(path: str | Path) -> str:
    """Family name of a checkpoint file from its format tag.

    Raises
    ------
    xtalforge.models.checkpoint.CheckpointError
        When the file is missing, corrupt or not a checkpoint of a known family
        (``not an xtalforge generator checkpoint: PATH (reason)``).
    """
    from xtalforge.models.checkpoint import load_checkpoint_file
    from xtalforge.models.generator import CHECKPOINT_FORMAT
    from xtalforge.models.wyckoff.generator import WYCKOFF_CHECKPOINT_FORMAT

    # a missing, corrupt or foreign file: CheckpointError "not an xtalforge generator checkpoint"
    ckpt = load_checkpoint_file(path, (CHECKPOINT_FORMAT, WYCKOFF_CHECKPOINT_FORMAT),
                                "xtalforge generator checkpoint", mmap=True)
    return "latent_diffusion" if ckpt["format"] == CHECKPOINT_FORMAT else "wyckoff_transformer"


def load_any_generator(path: str | Path, map_location: str | torch.device = "cpu"):
    """Load a checkpoint of either family as its native model.

    Returns the :class:`~xtalforge.models.generator.LatentDiffusionGenerator` or the
    :class:`~xtalforge.models.wyckoff.generator.WyckoffTransformerGenerator`; wrap with
    :func:`as_family` for the interface.
    """
    family = checkpoint_family(path)
    if family == "latent_diffusion":
        from xtalforge.models.generator import LatentDiffusionGenerator

        return LatentDiffusionGenerator.load(path, map_location=map_location)
    from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator

    return WyckoffTransformerGenerator.load(path, map_location=map_location)


def as_family(generator) -> CrystalGenerator:
    """Return the :class:`CrystalGenerator` view of a native model (latent diffusion: adapter)."""
    from xtalforge.models.generator import LatentDiffusionGenerator

    if isinstance(generator, LatentDiffusionGenerator):
        return LatentDiffusionFamily(generator)
    if isinstance(generator, CrystalGenerator):
        return generator
    raise TypeError(f"{type(generator).__name__} is not a generator of a known family")
