"""Built-in reward components (Park & Walsh 2025, Note S1; Cao & Wang 2025 figure of merit).

Components (raw value; failure value, documented):

``creativity``
    1 if unique and novel, 0 if neither, else the min same-formula AMD (k = 100) Chebyshev
    distance clipped to [0, 1]. Failure: 0 (a ``None`` structure is neither unique nor novel);
    a NaN AMD distance (no same-formula partner) gives 1.
``stability``
    ``-clip(E_hull, 0, 1)`` from the MLIP and hull. Failure: -1 (no energy: ``None``,
    structurally invalid, MLIP error, chemical system not covered by the hull).
``composition_diversity`` / ``structure_diversity``
    Leave-one-out MMD^2 utility on composition / structure embeddings. Failure: ``"min"``
    (the batch's lowest value: a failed decode adds nothing).
``property_target``
    ``-(P_pred - target)^2`` from a surrogate. Failure: ``"min"``.
``property``
    ``P_pred`` (maximised), optionally clipped. Failure: ``"min"``.
``dielectric_fom``
    ``eps_elec * E_g`` from two surrogates. Failure: ``"min"``.

Presets (:data:`REWARD_PRESETS`): ``"dng"`` (Park & Walsh 2025 de novo weights: creativity 1,
stability 1, compositional diversity 1, structural diversity 0.1), ``"dng_no_diversity"`` (the
Fig. 2c ablation: creativity 1, stability 1), ``"msun"`` (``-clip(E_hull, 0, 1) + creativity``,
both un-normalised: it pays for metastable and for unique novel crystals; with it PPO raised the
Wyckoff transformer's mSUN from 14% to 18%, ``benchmarks/RESULTS.md``), ``"bandgap"`` (Note
S1: band gap target 3 eV weight 1, compositional diversity 0.5) and ``"dielectric"`` (Cao & Wang
2025: ``eps_elec * E_g``). In the de novo presets creativity is left un-normalised, as in
Chemeleon2's released ``rl_dng`` config: it already lies in [0, 1], and min-max scaling would
stretch a batch whose creativities are 1 and 0.97 (one near-duplicate by AMD) into 1 and 0, a
full-range signal from a tiny difference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xtalforge.rewards.base import RewardComponent
from xtalforge.rewards.metrics import RewardContext, mmd_loo_utilities

__all__ = [
    "BUILTIN_REWARDS",
    "REWARD_PRESETS",
    "CompositionDiversityReward",
    "CreativityReward",
    "DielectricFoMReward",
    "PropertyReward",
    "PropertyTargetReward",
    "StabilityReward",
    "StructureDiversityReward",
]


class CreativityReward(RewardComponent):
    """Park & Walsh 2025 creativity: uniqueness and novelty with a continuous AMD fallback.

    ``1`` if unique and novel, ``0`` if neither, otherwise the minimum AMD (k = 100)
    Chebyshev distance to the other generated and the reference structures of the same reduced
    formula, clipped to ``[0, clip]`` (via
    :func:`xtalforge.screening.metrics.creativity_reward`).
    """

    name = "creativity"

    required_metrics = ("unique", "novel", "min_amd_distance")
    default_failure_value = 0.0

    def __init__(self, clip: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.clip = float(clip)
        self._kwargs = {"clip": self.clip}

    def compute(self, ctx: RewardContext) -> np.ndarray:
        """Creativity per structure (``None`` structures: 0)."""
        from xtalforge.screening.metrics import creativity_reward

        r = creativity_reward(ctx["unique"], ctx["novel"], ctx["min_amd_distance"],
                              clip=self.clip)
        r = np.asarray(r, dtype=float)
        r[[s is None for s in ctx.structures]] = np.nan  # explicit failure -> failure_value
        return r


class StabilityReward(RewardComponent):
    """``-clip(E_hull, 0, clip)`` from the energy model and hull of the screening layer."""

    name = "stability"

    required_metrics = ("e_above_hull",)
    default_failure_value = -1.0

    def __init__(self, clip: float = 1.0, **kw: Any) -> None:
        if kw.get("failure_value") is None:
            kw["failure_value"] = -float(clip)
        super().__init__(**kw)
        self.clip = float(clip)
        self._kwargs = {"clip": self.clip}

    def compute(self, ctx: RewardContext) -> np.ndarray:
        """Negative clipped energy above hull (NaN where no energy)."""
        e = np.asarray(ctx["e_above_hull"], dtype=float)
        return -np.clip(e, 0.0, self.clip)


class _DiversityReward(RewardComponent):
    r"""Leave-one-out marginal utility of each sample for the unbiased polynomial-kernel MMD^2.

    ``r_i = MMD^2(X \\ {x_i}, Y) - MMD^2(X, Y)`` over the whole batch ``X`` of valid
    generated embeddings against the reference embeddings ``Y`` (subsampled to
    ``max_reference`` rows with a fixed seed); kernel ``(x.y / d + 1)^3``.

    With ``standardize`` (default) both sets are first divided by the reference set's RMS
    entry ``sqrt(mean(Y^2))``, so that ``x.y / d`` is of order one whatever the scale of the
    VAE's embeddings: the polynomial kernel with ``c = 1`` is otherwise nearly linear for
    small embeddings (the MMD then compares little more than the means).
    """

    embedding: str = ""
    reference_attr: str = ""
    default_failure_value = "min"

    def __init__(self, degree: int = 3, c: float = 1.0, max_reference: int = 20000,
                 seed: int = 0, standardize: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.degree, self.c, self.max_reference, self.seed = int(degree), float(c), \
            int(max_reference), int(seed)
        self.standardize = bool(standardize)
        self._kwargs = {"degree": self.degree, "c": self.c,
                        "max_reference": self.max_reference, "seed": self.seed,
                        "standardize": self.standardize}
        self._ref_cache: tuple[int, np.ndarray, float] | None = None

    @property
    def required_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        """The embedding metric this component scores."""
        return (self.embedding,)

    def _reference(self, ctx: RewardContext) -> np.ndarray:
        ref = getattr(ctx.resources, self.reference_attr)
        if ref is None:
            raise ValueError(f"{self.label} needs RewardResources.{self.reference_attr}")
        key = id(ref)
        if self._ref_cache is None or self._ref_cache[0] != key:
            ref = np.asarray(ref, dtype=np.float64)
            ref = ref[np.all(np.isfinite(ref), axis=1)]
            if len(ref) > self.max_reference:
                rng = np.random.default_rng(self.seed)
                ref = ref[np.sort(rng.choice(len(ref), self.max_reference, replace=False))]
            scale = float(np.sqrt(np.mean(ref**2))) if self.standardize and ref.size else 1.0
            scale = scale if scale > 0 else 1.0
            self._ref_cache = (key, ref / scale, scale)
        return self._ref_cache[1]

    def compute(self, ctx: RewardContext) -> np.ndarray:
        """Per-sample marginal utilities (NaN for rows without an embedding)."""
        x = np.asarray(ctx[self.embedding], dtype=np.float64)
        ok = np.all(np.isfinite(x), axis=1)
        out = np.full(len(x), np.nan)
        if ok.sum() >= 3:
            ref = self._reference(ctx)
            out[ok] = mmd_loo_utilities(x[ok] / self._ref_cache[2], ref, self.degree, self.c)
        return out


class CompositionDiversityReward(_DiversityReward):
    """Compositional diversity: LOO MMD utility on VAE composition embeddings."""

    name = "composition_diversity"

    embedding = "composition_embedding"
    reference_attr = "reference_composition_embeddings"


class StructureDiversityReward(_DiversityReward):
    """Structural diversity: LOO MMD utility on VAE structure embeddings (paper weight 0.1)."""

    name = "structure_diversity"

    embedding = "structure_embedding"
    reference_attr = "reference_structure_embeddings"
    default_weight = 0.1


class PropertyTargetReward(RewardComponent):
    """``-(P_pred - target)^2`` from a surrogate (Note S1: band gap, target 3 eV).

    Parameters
    ----------
    property
        Key of the surrogate in ``RewardResources.surrogates``.
    target
        Target value (eV for a band gap).
    """

    name = "property_target"

    default_failure_value = "min"

    def __init__(self, property: str = "band_gap", target: float = 3.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.property, self.target = str(property), float(target)
        self._kwargs = {"property": self.property, "target": self.target}

    @property
    def required_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        """``predicted:<property>``."""
        return (f"predicted:{self.property}",)

    def compute(self, ctx: RewardContext) -> np.ndarray:
        """Negative squared deviation from the target."""
        p = np.asarray(ctx[f"predicted:{self.property}"], dtype=float)
        return -((p - self.target) ** 2)


class PropertyReward(RewardComponent):
    """The surrogate prediction itself (maximised), optionally clipped to ``[lo, hi]``."""

    name = "property"

    default_failure_value = "min"

    def __init__(self, property: str = "band_gap", clip_min: float | None = None,
                 clip_max: float | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.property, self.clip_min, self.clip_max = str(property), clip_min, clip_max
        self._kwargs = {"property": self.property, "clip_min": clip_min, "clip_max": clip_max}

    @property
    def required_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        """``predicted:<property>``."""
        return (f"predicted:{self.property}",)

    def compute(self, ctx: RewardContext) -> np.ndarray:
        """Clipped prediction."""
        p = np.asarray(ctx[f"predicted:{self.property}"], dtype=float)
        if self.clip_min is not None or self.clip_max is not None:
            p = np.clip(p, self.clip_min, self.clip_max)
        return p


class DielectricFoMReward(RewardComponent):
    """Cao & Wang 2025 figure of merit ``eps_elec * E_g`` from two configured surrogates.

    Predictions are clipped at 0 from below (negative gaps or permittivities are surrogate
    artefacts). Both surrogates must be present in ``RewardResources.surrogates``.
    """

    name = "dielectric_fom"

    default_failure_value = "min"

    def __init__(self, dielectric_property: str = "dielectric_electronic",
                 gap_property: str = "band_gap", **kw: Any) -> None:
        super().__init__(**kw)
        self.dielectric_property, self.gap_property = dielectric_property, gap_property
        self._kwargs = {"dielectric_property": dielectric_property,
                        "gap_property": gap_property}

    @property
    def required_metrics(self) -> tuple[str, ...]:  # type: ignore[override]
        """Both predictions."""
        return (f"predicted:{self.dielectric_property}", f"predicted:{self.gap_property}")

    def compute(self, ctx: RewardContext) -> np.ndarray:
        """``max(eps, 0) * max(Eg, 0)``."""
        eps = np.asarray(ctx[f"predicted:{self.dielectric_property}"], dtype=float)
        gap = np.asarray(ctx[f"predicted:{self.gap_property}"], dtype=float)
        return np.clip(eps, 0.0, None) * np.clip(gap, 0.0, None)


#: Named reward configurations (lists of component dicts for :func:`build_reward`).
REWARD_PRESETS: dict[str, list[dict[str, Any]]] = {
    "dng": [
        {"name": "creativity", "weight": 1.0, "normalize": None},
        {"name": "stability", "weight": 1.0},
        {"name": "composition_diversity", "weight": 1.0},
        {"name": "structure_diversity", "weight": 0.1},
    ],
    "dng_no_diversity": [
        {"name": "creativity", "weight": 1.0, "normalize": None},
        {"name": "stability", "weight": 1.0},
    ],
    "msun": [
        {"name": "stability", "weight": 1.0, "normalize": None, "clip": 1.0},
        {"name": "creativity", "weight": 1.0, "normalize": None},
    ],
    "bandgap": [
        {"name": "property_target", "property": "band_gap", "target": 3.0, "weight": 1.0},
        {"name": "composition_diversity", "weight": 0.5},
    ],
    "dielectric": [
        {"name": "dielectric_fom", "weight": 1.0},
        {"name": "composition_diversity", "weight": 0.5},
    ],
}

#: Components registered under their ``name`` by :mod:`xtalforge.rewards.registry`.
BUILTIN_REWARDS: tuple[type[RewardComponent], ...] = (
    CreativityReward,
    StabilityReward,
    CompositionDiversityReward,
    StructureDiversityReward,
    PropertyTargetReward,
    PropertyReward,
    DielectricFoMReward,
)
