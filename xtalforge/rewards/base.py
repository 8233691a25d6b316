"""Verifiable reward library: shared per-batch metrics, reward components, registry, composite.

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

import importlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from xtalforge.models.generator import LatentDiffusionGenerator
    from xtalforge.rewards.surrogate import PropertySurrogate
    from xtalforge.screening.hull import ReferenceHull
    from xtalforge.screening.metrics import ReferenceSet
    from xtalforge.screening.mlip import EnergyModel

logger = logging.getLogger(__name__)

__all__ = [
    "ENTRY_POINT_GROUP",
    "CompositeReward",
    "GuardedEnergyModel",
    "RewardBreakdown",
    "RewardComponent",
    "RewardContext",
    "RewardResources",
    "amd_vector",
    "amd_vectors",
    "available_metrics",
    "available_rewards",
    "build_reward",
    "get_reward_class",
    "mmd_loo_utilities",
    "normalize_values",
    "register_metric",
    "register_reward",
    "unbiased_mmd2",
]

#: Entry-point group through which installed packages add reward components.
ENTRY_POINT_GROUP = "xtalforge.rewards"

_NORMALIZERS = (None, "none", "minmax", "std")


# --------------------------------------------------------------------------------------------
# resources shared across steps
# --------------------------------------------------------------------------------------------
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
        angle graphs exhaust memory (seen with CHGNet). The densest MP-20 crystal has 5.8.
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
    min_volume_per_atom: float = 2.0
    device: str | None = None
    _ref_amd: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

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
            "amd_backend": _amd_backend(),
        }

    def reference_amd(self, formula: str, k: int) -> np.ndarray:
        """AMD vectors of the reference structures of ``formula`` (cached across calls)."""
        if self.reference is None:
            return np.zeros((0, k))
        idx = self.reference.by_formula.get(formula, [])
        todo = [i for i in idx if i not in self._ref_amd or self._ref_amd[i].shape[0] != k]
        if todo:
            vecs = amd_vectors([self.reference.structures[i] for i in todo], k=k)
            for i, v in zip(todo, vecs, strict=True):
                self._ref_amd[i] = v
        return np.stack([self._ref_amd[i] for i in idx]) if idx else np.zeros((0, k))


def _nrows(x: np.ndarray | None) -> int:
    return 0 if x is None else int(len(x))


class GuardedEnergyModel:
    """An energy model that refuses implausibly dense cells before they reach the MLIP.

    Wraps any :class:`~xtalforge.screening.mlip.EnergyModel` (attributes pass through);
    :meth:`predict` gives an error result, without evaluation, for structures with less than
    ``min_volume_per_atom`` Å^3 per atom.
    """

    def __init__(self, model: EnergyModel, min_volume_per_atom: float = 2.0) -> None:
        self.model = model
        self.min_volume_per_atom = float(min_volume_per_atom)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def reason(self, structure: Structure | None) -> str | None:
        """Why ``structure`` is refused, or ``None``."""
        if structure is None or len(structure) == 0:
            return None
        vpa = float(structure.volume) / len(structure)
        if not math.isfinite(vpa) or vpa < self.min_volume_per_atom:
            return (f"not evaluated: {vpa:.3g} A^3/atom < {self.min_volume_per_atom} "
                    "(implausibly dense cell)")
        return None

    def predict(self, structures: Sequence[Any], *args: Any, **kwargs: Any) -> list:
        """``model.predict`` with refused structures replaced by error results."""
        reasons = [self.reason(s) for s in structures]
        sub = [None if r else s for s, r in zip(structures, reasons, strict=True)]
        results = self.model.predict(sub, *args, **kwargs)
        for res, r in zip(results, reasons, strict=True):
            if r:
                res.error = r
        return results


# --------------------------------------------------------------------------------------------
# AMD
# --------------------------------------------------------------------------------------------
def _amd_backend() -> str:
    try:
        from xtalforge.screening.metrics import _amd_module

        _amd_module()
        return "average-minimum-distance"
    except ImportError:
        return "xtalforge.rewards (pymatgen neighbour lists)"


def amd_vector(structure: Structure, k: int = 100) -> np.ndarray:
    """Average Minimum Distance vector of a periodic structure (Widdowson et al. 2022).

    ``AMD_j`` is the distance from an atom to its ``j``-th nearest neighbour (all periodic
    images, any species), averaged over the atoms of the unit cell, ``j = 1..k``. This is
    ``amd.AMD(periodicset_from_pymatgen_structure(s), k)`` computed with pymatgen neighbour
    lists, used when the ``average-minimum-distance`` package is absent. Invariant to the
    choice of (super)cell.

    Parameters
    ----------
    structure
        pymatgen ``Structure``.
    k
        Number of neighbours.

    Returns
    -------
    numpy.ndarray
        ``[k]`` (Å).
    """
    n = len(structure)
    vol = float(structure.volume)
    if n == 0 or not math.isfinite(vol) or vol <= 0:
        raise ValueError("empty structure or degenerate cell")
    density = n / vol
    r = (3.0 * (k + 1) / (4.0 * math.pi * density)) ** (1.0 / 3.0) * 1.15 + 0.5
    for _ in range(12):
        centers, _, _, dists = structure.get_neighbor_list(r)
        counts = np.bincount(centers, minlength=n)
        if counts.min() >= k:
            break
        r *= 1.3
    else:  # pragma: no cover - pathological cells
        raise ValueError(f"could not find {k} neighbours within {r:.1f} Å")
    order = np.lexsort((dists, centers))
    centers, dists = centers[order], dists[order]
    starts = np.searchsorted(centers, np.arange(n))
    rows = np.stack([dists[s : s + k] for s in starts])
    return rows.mean(0)


def amd_vectors(structures: Sequence[Structure | None], k: int = 100) -> np.ndarray:
    """AMD vectors ``[n, k]``; NaN rows for ``None`` or failures.

    Uses :func:`xtalforge.screening.metrics.amd_vectors` (the ``average-minimum-distance``
    package) when it is importable, else :func:`amd_vector`.
    """
    try:
        from xtalforge.screening.metrics import _amd_module
        from xtalforge.screening.metrics import amd_vectors as _screen_amd

        _amd_module()
        return _screen_amd(structures, k=k)
    except ImportError:
        pass
    out = np.full((len(structures), k), np.nan)
    for i, s in enumerate(structures):
        if s is None:
            continue
        try:
            out[i] = amd_vector(s, k)
        except Exception as exc:  # noqa: BLE001 - a failed AMD is a NaN row
            logger.debug("AMD failed for structure %d: %s", i, exc)
    return out


class _ResourceAMD:
    """Adapter giving :func:`xtalforge.screening.metrics.min_amd_distances` the cached reference."""

    def __init__(self, resources: RewardResources) -> None:
        self.resources = resources

    def amd(self, formula: str, k: int = 100) -> np.ndarray:
        return self.resources.reference_amd(formula, k)


def _min_amd_distances(structures: Sequence[Structure | None], resources: RewardResources
                       ) -> np.ndarray:
    """Min same-formula AMD distance, via the screening layer's implementation."""
    from xtalforge.screening.metrics import min_amd_distances

    k = resources.amd_k
    return min_amd_distances(structures, reference=_ResourceAMD(resources), k=k,
                             amds=amd_vectors(structures, k=k))


# --------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------
def _poly_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, c: float = 1.0) -> np.ndarray:
    d = x.shape[1]
    return (x @ y.T / d + c) ** degree


def unbiased_mmd2(x: np.ndarray, y: np.ndarray, degree: int = 3, c: float = 1.0) -> float:
    """Unbiased MMD^2 between samples ``x [M, d]`` and ``y [N, d]``.

    Kernel ``K(a, b) = (a.b / d + c)^degree``; ``mean_{i!=j} K(x_i, x_j) + mean_{i!=j}
    K(y_i, y_j) - 2 mean K(x_i, y_j)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("need at least 2 samples per set")
    kxx = _poly_kernel(x, x, degree, c)
    kyy = _poly_kernel(y, y, degree, c)
    kxy = _poly_kernel(x, y, degree, c)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean())


def mmd_loo_utilities(x: np.ndarray, y: np.ndarray, degree: int = 3, c: float = 1.0
                      ) -> np.ndarray:
    r"""Leave-one-out marginal utility of each generated sample for the unbiased MMD^2.

    ``r_i = MMD^2(X \\ {x_i}, Y) - MMD^2(X, Y)``: positive when sample ``i`` brings the batch
    closer to the reference distribution (or makes it less redundant). Computed in closed form
    from the kernel row sums (``O(M^2 + M N)``); the reference-reference term cancels.

    Parameters
    ----------
    x
        ``[M, d]`` generated embeddings (``M >= 3``).
    y
        ``[N, d]`` reference embeddings.
    degree, c
        Polynomial kernel ``(a.b / d + c)^degree`` (Chemeleon2: 3, 1).

    Returns
    -------
    numpy.ndarray
        ``[M]``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m = len(x)
    if m < 3:
        raise ValueError("leave-one-out MMD needs at least 3 generated samples")
    kxx = _poly_kernel(x, x, degree, c)
    np.fill_diagonal(kxx, 0.0)
    s_row = kxx.sum(1)
    s_all = s_row.sum()
    c_row = _poly_kernel(x, y, degree, c).mean(1)
    c_all = c_row.sum()
    full = s_all / (m * (m - 1)) - 2.0 * c_all / m
    loo = (s_all - 2.0 * s_row) / ((m - 1) * (m - 2)) - 2.0 * (c_all - c_row) / (m - 1)
    return loo - full


# --------------------------------------------------------------------------------------------
# metric providers
# --------------------------------------------------------------------------------------------
MetricProvider = Callable[["RewardContext", frozenset], Mapping[str, np.ndarray]]

_METRIC_PROVIDERS: dict[str, MetricProvider] = {}
_METRIC_PREFIX_PROVIDERS: dict[str, MetricProvider] = {}


def register_metric(*names: str, prefix: str | None = None
                    ) -> Callable[[MetricProvider], MetricProvider]:
    """Register a metric provider for ``names`` (or every name starting with ``prefix``).

    A provider is called as ``provider(ctx, wanted)`` with the :class:`RewardContext` and the
    frozenset of requested names it serves, and returns ``{name: array [n]}`` (it may return
    more names than asked: they are cached too). It is called at most once per batch for all
    the names requested together.

    Examples
    --------
    >>> @register_metric("num_sites")
    ... def _num_sites(ctx, wanted):
    ...     return {"num_sites": np.array([len(s) if s else np.nan for s in ctx.structures])}
    """

    def deco(fn: MetricProvider) -> MetricProvider:
        for n in names:
            _METRIC_PROVIDERS[n] = fn
        if prefix is not None:
            _METRIC_PREFIX_PROVIDERS[prefix] = fn
        return fn

    return deco


def available_metrics() -> list[str]:
    """Names (and ``prefix*`` patterns) of the registered metrics."""
    return sorted(_METRIC_PROVIDERS) + sorted(f"{p}*" for p in _METRIC_PREFIX_PROVIDERS)


def _provider_for(name: str) -> MetricProvider:
    if name in _METRIC_PROVIDERS:
        return _METRIC_PROVIDERS[name]
    for p, fn in _METRIC_PREFIX_PROVIDERS.items():
        if name.startswith(p):
            return fn
    raise KeyError(f"no provider for metric {name!r}; available: {available_metrics()}")


_SCREEN_ONLY = frozenset({"e_above_hull", "energy_per_atom"})
_MATCH_METRICS = frozenset({"structure_valid", "smact_valid", "unique", "novel"})


@register_metric(*(_SCREEN_ONLY | _MATCH_METRICS))
def _screening_provider(ctx: RewardContext, wanted: frozenset) -> dict[str, np.ndarray]:
    res = ctx.resources
    n = len(ctx.structures)
    if "novel" in wanted and res.reference is None:
        raise ValueError("metric 'novel' needs RewardResources.reference (a ReferenceSet)")
    if wanted & _SCREEN_ONLY:
        from xtalforge.screening.screen import screen_structures

        if res.energy_model is None or res.hull is None:
            raise ValueError("metric 'e_above_hull' needs RewardResources.energy_model and .hull")
        model = GuardedEnergyModel(res.energy_model, res.min_volume_per_atom)
        records, summary = screen_structures(
            ctx.structures, model, res.hull, reference_structures=res.reference,
            n_jobs=res.n_jobs, batch_size=res.energy_batch_size, compute_amd=False)
        ctx.info["screen_summary"] = {k: v for k, v in summary.items()
                                      if isinstance(v, (int, float, str, bool))}
        out = {"e_above_hull": _col(records, "e_above_hull", float),
               "energy_per_atom": _col(records, "energy_per_atom", float)}
        present = set(records[0]) if records else set(_MATCH_METRICS)
        for name in ("structure_valid", "smact_valid", "unique", "novel"):
            if name in present:
                out[name] = _col(records, name, bool) if n else np.zeros(0, dtype=bool)
        return out
    from xtalforge.screening.metrics import compute_metrics

    report = compute_metrics(ctx.structures, reference=res.reference, n_jobs=res.n_jobs)
    df = report.per_structure
    out = {}
    for name in ("structure_valid", "smact_valid", "unique", "novel"):
        if name in df:
            out[name] = df[name].fillna(False).to_numpy(dtype=bool)
    return out


def _col(records: Sequence[Mapping[str, Any]], key: str, kind: type) -> np.ndarray:
    if kind is bool:
        return np.array([bool(r.get(key) or False) for r in records], dtype=bool)
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records],
                    dtype=float)


@register_metric("min_amd_distance")
def _amd_provider(ctx: RewardContext, wanted: frozenset) -> dict[str, np.ndarray]:
    return {"min_amd_distance": _min_amd_distances(ctx.structures, ctx.resources)}


@register_metric("structure_embedding", "composition_embedding")
def _embedding_provider(ctx: RewardContext, wanted: frozenset) -> dict[str, np.ndarray]:
    gen = ctx.resources.generator
    if gen is None:
        raise ValueError("embedding metrics need RewardResources.generator")
    dev = ctx.resources.device
    out = {}
    if "structure_embedding" in wanted:
        out["structure_embedding"] = gen.embed_structures(ctx.structures, device=dev)
    if "composition_embedding" in wanted:
        out["composition_embedding"] = gen.composition_embeddings(ctx.structures, device=dev)
    return out


@register_metric(prefix="predicted:")
def _surrogate_provider(ctx: RewardContext, wanted: frozenset) -> dict[str, np.ndarray]:
    res = ctx.resources
    if res.generator is None:
        raise ValueError("surrogate metrics need RewardResources.generator (its VAE encodes)")
    out = {}
    for name in wanted:
        prop = name.split(":", 1)[1]
        if prop not in res.surrogates:
            raise KeyError(f"metric {name!r}: no surrogate {prop!r} configured in "
                           f"RewardResources.surrogates (have {sorted(res.surrogates)})")
        out[name] = res.surrogates[prop].predict_structures(res.generator, ctx.structures,
                                                            device=res.device)
    return out


# --------------------------------------------------------------------------------------------
# context
# --------------------------------------------------------------------------------------------
class RewardContext:
    """Per-batch view: the structures and the metrics computed for them (each at most once).

    Parameters
    ----------
    structures
        Decoded structures (``None`` for failed decodes).
    resources
        Shared :class:`RewardResources`.
    groups
        Optional ``[n]`` group index of each structure (rollouts sharing a condition).
    latents, mask
        Optional sampled VAE latents ``[n, N, d]`` and atom mask ``[n, N]`` (for custom
        components that score latents directly).
    """

    def __init__(
        self,
        structures: Sequence[Structure | None],
        resources: RewardResources | None = None,
        groups: Sequence[int] | np.ndarray | None = None,
        latents: Any = None,
        mask: Any = None,
    ) -> None:
        self.structures = list(structures)
        self.resources = resources if resources is not None else RewardResources()
        self.groups = None if groups is None else np.asarray(groups)
        self.latents = latents
        self.mask = mask
        self.metrics: dict[str, np.ndarray] = {}
        self.provider_calls: Counter[str] = Counter()
        self.timings: dict[str, float] = defaultdict(float)
        self.info: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.structures)

    def compute(self, names: Iterable[str]) -> None:
        """Compute every missing metric in ``names``: one call per provider for all of them."""
        missing = [n for n in dict.fromkeys(names) if n not in self.metrics]
        by_provider: dict[MetricProvider, set[str]] = defaultdict(set)
        for name in missing:
            by_provider[_provider_for(name)].add(name)
        for fn, wanted in by_provider.items():
            t = time.perf_counter()
            produced = fn(self, frozenset(wanted))
            key = getattr(fn, "__name__", repr(fn))
            self.provider_calls[key] += 1
            self.timings[key] += time.perf_counter() - t
            for k, v in produced.items():
                arr = np.asarray(v)
                if len(arr) != len(self.structures):
                    raise ValueError(f"metric {k!r} has {len(arr)} rows for "
                                     f"{len(self.structures)} structures")
                self.metrics.setdefault(k, arr)
            absent = wanted - set(produced)
            if absent:
                raise KeyError(f"provider {key} did not produce {sorted(absent)}")

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.metrics:
            self.compute([name])
        return self.metrics[name]

    def batch_summary(self) -> dict[str, float]:
        """Batch fractions of the computed metrics (for training curves)."""
        n = len(self.structures)
        out: dict[str, float] = {"n": float(n)}
        if n == 0:
            return out
        out["frac_decoded"] = sum(s is not None for s in self.structures) / n
        formulas = {s.composition.reduced_formula for s in self.structures if s is not None}
        out["n_distinct_formulas"] = float(len(formulas))
        m = self.metrics
        for name in ("structure_valid", "smact_valid", "unique", "novel"):
            if name in m:
                out[f"frac_{name}"] = float(np.mean(m[name]))
        if "e_above_hull" in m:
            e = m["e_above_hull"].astype(float)
            fin = np.isfinite(e)
            meta = fin & (np.where(fin, e, np.inf) < 0.1)
            out["frac_metastable"] = float(meta.mean())
            out["mean_e_above_hull"] = float(e[fin].mean()) if fin.any() else math.nan
            out["frac_energy_failed"] = float((~fin).mean())
            if "unique" in m and "novel" in m:
                out["frac_msun"] = float((meta & m["unique"] & m["novel"]).mean())
        return out


# --------------------------------------------------------------------------------------------
# components
# --------------------------------------------------------------------------------------------
def normalize_values(values: np.ndarray, method: str | None,
                     groups: np.ndarray | None = None) -> np.ndarray:
    """Normalise ``values`` within each group (or over all values when ``groups`` is None).

    ``"minmax"``: ``(v - min) / (max - min)`` (0 for a constant block); ``"std"``:
    ``(v - mean) / std`` (0 for a constant block); ``None``/``"none"``: unchanged.
    """
    if method not in _NORMALIZERS:
        raise ValueError(f"normalize must be one of {_NORMALIZERS}, got {method!r}")
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
        if normalize not in _NORMALIZERS:
            raise ValueError(f"normalize must be one of {_NORMALIZERS}, got {normalize!r}")
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


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
_REWARDS: dict[str, type[RewardComponent]] = {}


def register_reward(name: str) -> Callable[[type[RewardComponent]], type[RewardComponent]]:
    """Class decorator registering a :class:`RewardComponent` subclass under ``name``.

    Examples
    --------
    >>> @register_reward("atomic_density")
    ... class AtomicDensity(RewardComponent):
    ...     required_metrics = ()
    ...     def compute(self, ctx):
    ...         return np.array([len(s) / s.volume if s else np.nan for s in ctx.structures])
    """

    def deco(cls: type[RewardComponent]) -> type[RewardComponent]:
        if not (isinstance(cls, type) and issubclass(cls, RewardComponent)):
            raise TypeError(f"{cls!r} is not a RewardComponent subclass")
        old = _REWARDS.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"reward {name!r} is already registered to {old.__qualname__}")
        cls.name = name
        _REWARDS[name] = cls
        return cls

    return deco


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    try:
        eps = entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # pragma: no cover - Python < 3.10
        eps = entry_points().get(ENTRY_POINT_GROUP, [])
    return {ep.name: ep for ep in eps}


def available_rewards() -> list[str]:
    """Return the registered component names plus installed entry points."""
    return sorted(set(_REWARDS) | set(_entry_points()))


def get_reward_class(name: str) -> type[RewardComponent]:
    """Resolve a component class: registry, then ``"module:Class"``, then entry points.

    Raises
    ------
    KeyError
        When ``name`` is none of those.
    """
    if name in _REWARDS:
        return _REWARDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, RewardComponent)):
            raise TypeError(f"{name} is not a RewardComponent subclass")
        return obj
    eps = _entry_points()
    if name in eps:
        obj = eps[name].load()
        if not (isinstance(obj, type) and issubclass(obj, RewardComponent)):
            raise TypeError(f"entry point {name} ({eps[name].value}) is not a RewardComponent")
        _REWARDS.setdefault(name, obj)
        return obj
    raise KeyError(f"unknown reward component {name!r}; available: {available_rewards()} "
                   f"(or 'module:Class', or an entry point in group {ENTRY_POINT_GROUP!r})")


def build_reward(spec: str | Sequence[Mapping[str, Any] | RewardComponent] | Mapping[str, Any]
                 | CompositeReward, normalize_scope: str | None = None) -> CompositeReward:
    """Build a :class:`CompositeReward` from a preset name, a list of dicts, or a config dict.

    Parameters
    ----------
    spec
        A preset name (``"dng"``, ``"dng_no_diversity"``, ``"bandgap"``, ``"dielectric"``; see
        :data:`xtalforge.rewards.components.REWARD_PRESETS`); a list of component dicts
        ``{"name": ..., "weight": ..., **kwargs}`` (``name`` may be ``"module:Class"``) or
        instances; a dict ``{"components": [...], "normalize_scope": ...}`` (the output of
        :meth:`CompositeReward.config`); or a ready :class:`CompositeReward`.
    normalize_scope
        Override of the scope.
    """
    from xtalforge.rewards.components import REWARD_PRESETS

    if isinstance(spec, CompositeReward):
        if normalize_scope:
            spec.normalize_scope = normalize_scope
        return spec
    scope = "batch"
    if isinstance(spec, str):
        if spec not in REWARD_PRESETS:
            raise KeyError(f"unknown reward preset {spec!r}; presets: {sorted(REWARD_PRESETS)}")
        items: Sequence[Any] = REWARD_PRESETS[spec]
    elif isinstance(spec, Mapping):
        items = spec["components"]
        scope = spec.get("normalize_scope", scope)
    else:
        items = spec
    comps: list[RewardComponent] = []
    for item in items:
        if isinstance(item, RewardComponent):
            comps.append(item)
            continue
        kw = dict(item)
        cls = get_reward_class(kw.pop("name"))
        comps.append(cls(**kw))
    return CompositeReward(comps, normalize_scope=normalize_scope or scope)
