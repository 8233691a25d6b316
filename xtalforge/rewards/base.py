"""Verifiable reward library: reward components and their weighted composite.

The library is four modules that import one way (``registry -> components -> base, metrics ->
resources``): :mod:`xtalforge.rewards.resources` (long-lived inputs), :mod:`~.metrics` (metric
providers, the per-batch :class:`~xtalforge.rewards.metrics.RewardContext`, MMD),
this module (:class:`RewardComponent`, :class:`CompositeReward`, normalisation) and
:mod:`~.registry` (names, entry points, presets, :func:`~xtalforge.rewards.registry.build_reward`).

Overview
--------
A reward is a weighted sum of :class:`RewardComponent` objects (:class:`CompositeReward`). Each
component declares the per-structure metrics it needs (``required_metrics``); a
:class:`RewardContext` built for one batch computes the union of those metrics **once**, through
metric providers that call the screening layer (:mod:`xtalforge.screening`), and hands the same
arrays to every component. Long-lived resources (energy model, hull, novelty reference set,
generator for embeddings, reference embeddings, property surrogates, caches) live in a
:class:`RewardResources` object reused across RL steps.

Metrics (built-in providers)
----------------------------
``structure_valid``, ``smact_valid``, ``unique``, ``novel``
    :func:`xtalforge.screening.metrics.compute_metrics` (StructureMatcher defaults; novelty
    against ``resources.reference``).
``e_above_hull``, ``energy_per_atom``
    :func:`xtalforge.screening.screen.screen_structures` with ``resources.energy_model`` and
    ``resources.hull`` (single points on the as-generated structures, Chemeleon2's convention;
    structures failing the 0.5 Å structural check are not evaluated: NaN). When requested, the
    same call also provides the four metrics above (one matching pass, not two).
``min_amd_distance``
    Minimum Chebyshev distance between AMD vectors (``resources.amd_k`` = 100 neighbours) of a
    structure and every *other* structure of the same reduced formula, generated (this batch)
    or reference (Park & Walsh 2025, creativity reward). Uses the ``average-minimum-distance``
    package when importable, else :func:`amd_vector` (the same definition, computed with pymatgen
    neighbour lists). NaN when no same-formula partner exists or the structure is ``None``.
``structure_embedding``, ``composition_embedding``
    ``resources.generator.embed_structures`` / ``composition_embeddings`` (VAE posterior means
    mean-pooled; stoichiometric pooling of the atom-type embeddings). NaN rows for ``None``.
``predicted:<property>``
    ``resources.surrogates[<property>]`` applied to the VAE encoding of each structure
    (:class:`xtalforge.rewards.surrogate.PropertySurrogate`). NaN for ``None``.

Users add metrics with :func:`register_metric` and components with :func:`register_reward`
(or an entry point in the ``xtalforge.rewards`` group, or a ``"module:Class"`` path).

Normalisation and failures
--------------------------
``RewardComponent.compute`` returns raw values with NaN for structures it cannot score. NaN is
replaced by the component's documented ``failure_value`` (a number, or ``"min"``: the lowest
finite value of the batch, 0 when none). The filled values are then min-max scaled to [0, 1]
(``normalize="minmax"``, the choice of Park & Walsh 2025; ``"std"`` z-scores; ``None`` keeps raw
values) over the whole batch of rollouts (``normalize_scope="batch"``, the default: Chemeleon2's
released code scales each component over all C x G rollouts of a step, and only the *total*
reward is standardised per group, in the GRPO advantage) or within each group of rollouts that
share a condition (``"group"``). A constant block scales to 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from xtalforge.rewards.metrics import RewardContext

__all__ = [
    "NORMALIZERS",
    "CompositeReward",
    "RewardBreakdown",
    "RewardComponent",
    "normalize_values",
]

#: Accepted ``normalize`` methods of a component.
NORMALIZERS = (None, "none", "minmax", "std")


def normalize_values(values: np.ndarray, method: str | None,
                     groups: np.ndarray | None = None) -> np.ndarray:
    """Normalise ``values`` within each group (or over all values when ``groups`` is None).

    ``"minmax"``: ``(v - min) / (max - min)`` (0 for a constant block); ``"std"``:
    ``(v - mean) / std`` (0 for a constant block); ``None``/``"none"``: unchanged.
    """
    if method not in NORMALIZERS:
        raise ValueError(f"normalize must be one of {NORMALIZERS}, got {method!r}")
    v = np.asarray(values, dtype=np.float64)
    if method in (None, "none") or len(v) == 0:
        return v.copy()
    out = np.zeros_like(v)
    blocks = [np.arange(len(v))] if groups is None else [
        np.flatnonzero(groups == g) for g in np.unique(groups)]
    for idx in blocks:
        b = v[idx]
        if method == "minmax":
            lo, hi = b.min(), b.max()
            out[idx] = (b - lo) / (hi - lo) if hi - lo > 1e-12 else 0.0
        else:
            sd = b.std()
            out[idx] = (b - b.mean()) / sd if sd > 1e-12 else 0.0
    return out


class RewardComponent(ABC):
    """One term of a composite reward.

    Subclasses set ``required_metrics`` (class attribute or per instance) and implement
    :meth:`compute`, returning raw per-structure values with NaN where the structure cannot be
    scored; :meth:`values` fills those with ``failure_value``.

    Parameters
    ----------
    weight
        Weight in the composite sum (default: the class's ``default_weight``).
    normalize
        ``"minmax"`` (default, Park & Walsh 2025), ``"std"`` or ``None``.
    failure_value
        Value for NaN entries: a number or ``"min"`` (lowest finite value in the batch; 0
        when there is none). Default: the class's ``default_failure_value``.
    label
        Name in outputs (default: the registered name); lets one reward use a component twice.
    """

    #: registered name (set by :func:`register_reward`)
    name: ClassVar[str] = "component"
    #: metric names computed once per batch by the context
    required_metrics: tuple[str, ...] = ()
    default_weight: ClassVar[float] = 1.0
    default_failure_value: ClassVar[float | str] = 0.0

    def __init__(self, weight: float | None = None, normalize: str | None = "minmax",
                 failure_value: float | str | None = None, label: str | None = None) -> None:
        if normalize not in NORMALIZERS:
            raise ValueError(f"normalize must be one of {NORMALIZERS}, got {normalize!r}")
        self.weight = float(self.default_weight if weight is None else weight)
        self.normalize = normalize
        fv = self.default_failure_value if failure_value is None else failure_value
        if isinstance(fv, str) and fv != "min":
            raise ValueError("failure_value must be a number or 'min'")
        self.failure_value = fv
        self.label = label or self.name
        self._kwargs: dict[str, Any] = {}

    @abstractmethod
    def compute(self, ctx: RewardContext) -> np.ndarray:
        """Raw per-structure values ``[n]`` (NaN = cannot be scored)."""

    def values(self, ctx: RewardContext) -> tuple[np.ndarray, int]:
        """Raw values with failures filled; returns ``(values, n_failed)``."""
        v = np.asarray(self.compute(ctx), dtype=np.float64).reshape(-1)
        if len(v) != len(ctx):
            raise ValueError(f"{self.label}: {len(v)} values for {len(ctx)} structures")
        bad = ~np.isfinite(v)
        if bad.any():
            if self.failure_value == "min":
                fill = float(v[~bad].min()) if (~bad).any() else 0.0
            else:
                fill = float(self.failure_value)
            v = np.where(bad, fill, v)
        return v, int(bad.sum())

    def config(self) -> dict[str, Any]:
        """Plain dict that :func:`build_reward` turns back into this component."""
        return {"name": self.name, "weight": self.weight, "normalize": self.normalize,
                "failure_value": self.failure_value, "label": self.label, **self._kwargs}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight}, normalize={self.normalize!r})"


@dataclass
class RewardBreakdown:
    """Rewards of one batch.

    Attributes
    ----------
    total
        ``[n]`` weighted sum of the normalised components (what advantages are built from).
    raw
        Component label -> ``[n]`` raw values (failures filled).
    normalized
        Component label -> ``[n]`` normalised values.
    weights
        Component label -> weight.
    n_failed
        Component label -> number of filled (failed) entries.
    raw_total
        ``[n]`` weighted sum of the *raw* values: comparable across steps (the normalised total
        is not, since min-max scaling is per batch); used for plateau detection.
    """

    total: np.ndarray
    raw: dict[str, np.ndarray]
    normalized: dict[str, np.ndarray]
    weights: dict[str, float]
    n_failed: dict[str, int]
    raw_total: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means and stds per component (raw), normalised and raw totals, failure counts.

        The batch mean of a leave-one-out diversity utility is 0 by construction (the mean of
        the leave-one-out U-statistics is the full U-statistic): its std carries the signal.
        """
        out = {"reward_total": float(self.total.mean()) if len(self.total) else math.nan,
               "reward_raw_total": float(self.raw_total.mean()) if len(self.total) else math.nan}
        for k, v in self.raw.items():
            out[f"reward/{k}"] = float(v.mean()) if len(v) else math.nan
            out[f"reward_std/{k}"] = float(v.std()) if len(v) else math.nan
            out[f"failed/{k}"] = float(self.n_failed[k])
        return out


class CompositeReward:
    """Weighted sum of normalised reward components.

    Parameters
    ----------
    components
        :class:`RewardComponent` instances (labels must be distinct).
    normalize_scope
        ``"batch"`` (default, Chemeleon2's code: each component scaled over all rollouts of a
        step) or ``"group"`` (within rollouts sharing a condition; the whole batch when no
        groups are given).
    """

    def __init__(self, components: Sequence[RewardComponent], normalize_scope: str = "batch"
                 ) -> None:
        if not components:
            raise ValueError("a reward needs at least one component")
        labels = [c.label for c in components]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate component labels {labels}: pass label=")
        if normalize_scope not in ("group", "batch"):
            raise ValueError("normalize_scope must be 'group' or 'batch'")
        self.components = list(components)
        self.normalize_scope = normalize_scope

    @property
    def required_metrics(self) -> list[str]:
        """Union of the components' required metrics (in order)."""
        return list(dict.fromkeys(m for c in self.components for m in c.required_metrics))

    def __call__(self, ctx: RewardContext, groups: Sequence[int] | np.ndarray | None = None
                 ) -> RewardBreakdown:
        """Compute every required metric once, then each component; return the breakdown."""
        ctx.compute(self.required_metrics)
        g = ctx.groups if groups is None else np.asarray(groups)
        scope = g if self.normalize_scope == "group" else None
        raw, norm, weights, failed = {}, {}, {}, {}
        n = len(ctx)
        total = np.zeros(n)
        raw_total = np.zeros(n)
        for c in self.components:
            v, nf = c.values(ctx)
            nv = normalize_values(v, c.normalize, scope)
            raw[c.label], norm[c.label], weights[c.label], failed[c.label] = v, nv, c.weight, nf
            total += c.weight * nv
            raw_total += c.weight * v
        if not np.all(np.isfinite(total)):
            raise FloatingPointError("non-finite total reward")
        return RewardBreakdown(total, raw, norm, weights, failed, raw_total)

    def config(self) -> dict[str, Any]:
        """Plain dict for :func:`build_reward` (recorded with RL outputs)."""
        return {"normalize_scope": self.normalize_scope,
                "components": [c.config() for c in self.components]}

    def __repr__(self) -> str:
        return f"CompositeReward({self.components}, scope={self.normalize_scope!r})"

