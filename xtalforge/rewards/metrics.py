"""Per-batch reward metrics: the provider registry, the built-in providers, the batch context.

A :class:`RewardContext` computes each metric a reward asks for once per batch, through the
metric provider registered for its name (:func:`register_metric`), and hands the same arrays to
every component. The built-in providers call the screening layer (:mod:`xtalforge.screening`);
see :mod:`xtalforge.rewards.base` for the list. The MMD estimators of the diversity rewards
live here too.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xtalforge.rewards.resources import RewardResources

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

__all__ = [
    "MetricProvider",
    "RewardContext",
    "available_metrics",
    "mmd_loo_utilities",
    "provider_for",
    "register_metric",
    "unbiased_mmd2",
]


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


def provider_for(name: str) -> MetricProvider:
    """Return the provider registered for metric ``name`` (exact name, then prefix)."""
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
        records, summary = screen_structures(
            ctx.structures, res.energy_model, res.hull, reference_structures=res.reference,
            n_jobs=res.n_jobs, batch_size=res.energy_batch_size, compute_amd=False,
            min_volume_per_atom=res.min_volume_per_atom)
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
    """Min same-formula AMD distance (:func:`xtalforge.screening.metrics.min_amd_distances`)."""
    from xtalforge.screening.metrics import min_amd_distances

    res = ctx.resources
    return {"min_amd_distance": min_amd_distances(ctx.structures, res.reference, k=res.amd_k)}


@register_metric("structure_embedding", "composition_embedding")
def _embedding_provider(ctx: RewardContext, wanted: frozenset) -> dict[str, np.ndarray]:
    gen = ctx.resources.generator
    if gen is None:
        raise ValueError("embedding metrics need RewardResources.generator")
    dev = ctx.resources.device
    # a sample larger than the embedder encodes (a Wyckoff transformer's 24-atom cell for a
    # 20-atom VAE) gets a NaN row: its diversity rewards fail alone, the batch goes on
    limit = getattr(gen, "max_atoms", None)
    structs = [s if s is None or limit is None or len(s) <= limit else None
               for s in ctx.structures]
    out = {}
    if "structure_embedding" in wanted:
        out["structure_embedding"] = gen.embed_structures(structs, device=dev)
    if "composition_embedding" in wanted:
        out["composition_embedding"] = gen.composition_embeddings(structs, device=dev)
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
            by_provider[provider_for(name)].add(name)
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
