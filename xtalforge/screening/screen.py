"""Screen generated structures: MLIP energies, energy above hull, discovery metrics, ranking.

``screen_structures`` returns one record per input structure (never dropping one) and a
summary; ``rank_candidates`` orders records for DFT validation.
Every record carries the energy model spec and the hull fingerprint; the summary carries the
full hull ``convention`` and model info.

Two kinds of missing values are told apart on every record:

``rejected``
    A reason the sample was not given to the MLIP: it is structurally invalid (atoms closer
    than 0.5 Å) or implausibly dense (less than ``min_volume_per_atom`` Å^3/atom, see
    :func:`xtalforge.screening.metrics.evaluation_rejection`). That is a verdict on the sample,
    not a failure: the record stays in every denominator with no energy, so it is neither
    stable nor metastable (nor S.U.N./mSUN).
``errors``
    What failed in the pipeline on that structure: no structure (failed decode), an MLIP
    or relaxation error, an element the hull does not cover, a matching error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xtalforge.screening.metrics import (
    METASTABLE_THRESHOLD,
    MIN_DISTANCE,
    MIN_VOLUME_PER_ATOM,
    ReferenceSet,
    add_stability,
    compute_metrics,
    evaluation_rejection,
)

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from xtalforge.screening.hull import ReferenceHull
    from xtalforge.screening.mlip import EnergyModel

logger = logging.getLogger(__name__)

__all__ = ["rank_candidates", "screen_structures"]


def screen_structures(
    structures: Sequence[Structure | None],
    energy_model: EnergyModel,
    hull: ReferenceHull,
    reference_structures: ReferenceSet | Sequence[Structure] | None = None,
    embeddings: np.ndarray | None = None,
    reference_embeddings: np.ndarray | None = None,
    relax: bool = False,
    relax_kwargs: Mapping[str, Any] | None = None,
    batch_size: int = 64,
    n_jobs: int = 1,
    compute_amd: bool = False,
    skip_invalid: bool = True,
    min_volume_per_atom: float | None = MIN_VOLUME_PER_ATOM,
    matcher_kwargs: Mapping[str, Any] | None = None,
    metastable_threshold: float = METASTABLE_THRESHOLD,
    metastable_inclusive: bool = False,
    include_structures: bool = False,
    progress: bool = False,
    pipeline: bool = True,
    hull_n_jobs: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Energies, hull distances and metrics for generated structures.

    Parameters
    ----------
    structures : sequence of Structure or None
        Generated structures; ``None`` marks one that failed upstream (kept, counted).
    energy_model : EnergyModel
        From :func:`xtalforge.screening.mlip.get_energy_model`.
    hull : ReferenceHull
        Reference hull on the energy model's total-energy scale (an MLIP hull), or a
        formation hull with the model's chemical potentials.
    reference_structures : ReferenceSet or sequence of Structure, optional
        Reference set for novelty (build a :class:`ReferenceSet` once and reuse it).
    embeddings, reference_embeddings : numpy.ndarray, optional
        Generator embeddings for coverage.
    relax : bool
        Relax with the energy model first (energies, hull distances and matching then use the
        relaxed structures); single points otherwise (Chemeleon2's convention).
    relax_kwargs : dict, optional
        ``backend``: ``"torch-sim"`` (batched, :meth:`EnergyModel.relax_batched`), ``"ase"``
        (one structure at a time, :meth:`EnergyModel.relax`) or ``"auto"`` (default:
        batched where the model has a torch-sim wrapper and torch-sim is installed); the
        other keys go to the relaxation (``fmax``, ``steps``, ``cell_filter``, ``optimizer``
        for ASE, ``max_atoms`` and ``check_every`` for torch-sim).
    batch_size : int
        Single-point batch size.
    n_jobs : int
        Worker processes for matching / SMACT.
    compute_amd : bool
        Min same-formula AMD distances and creativity reward (needs average-minimum-distance).
    skip_invalid : bool
        Do not evaluate structures failing the 0.5 Å structural check (``rejected`` with the
        reason).
    min_volume_per_atom : float or None
        Do not evaluate structures denser than this (Å^3/atom; ``rejected`` with the reason).
        Default :data:`~xtalforge.screening.metrics.MIN_VOLUME_PER_ATOM` (5.0, below the
        densest MP-20 crystal); ``None`` gives every structure to the MLIP.
    matcher_kwargs : dict, optional
        StructureMatcher overrides.
    metastable_threshold, metastable_inclusive : float, bool
        Metastability definition (default ``< 0.1`` eV/atom).
    include_structures : bool
        Put the input (and relaxed) structure dicts in the records.
    progress : bool
        Progress bars.
    pipeline : bool
        Overlap the CPU stages with the energy model. The hull energies at the evaluated
        compositions (:meth:`ReferenceHull.hull_energies`, which do not depend on the
        energies, and relaxation keeps the composition) are computed in a background thread
        driving ``hull_n_jobs`` worker processes while the model runs; once the energies are
        known they are subtracted (the hull's cache hands them over). For single points,
        uniqueness, novelty, SMACT and validity (which do not depend on energies) are
        computed in another background thread with ``n_jobs`` worker processes; the
        stability columns are added once the hull distances are known. With ``relax``
        matching needs the relaxed structures and runs after the relaxation. Same records as
        ``pipeline=False``.
    hull_n_jobs : int, optional
        Worker processes for building chemical-system hulls; default ``n_jobs``. With the
        pipeline the hull and metrics pools run at the same time as each other and as the
        energy model (and its graph workers): both are CPU-bound and off the critical path
        while the accelerator computes energies, so each gets the whole ``n_jobs`` budget
        and the operating system shares the cores between them, rather than a split that
        leaves cores idle when one pool finishes first (the hull's work is a few thousand
        independent chemical systems, the metrics' a few formula buckets with long tails).
        On a CPU-only run, where the energies need the cores too, pass fewer.

    Returns
    -------
    records : list of dict
        One per input, in order: ``index, formula, n_sites, energy, energy_per_atom,
        max_force, e_above_hull, structure_valid, smact_valid, valid, unique, novel, stable,
        metastable, sun, msun, [min_amd_distance, creativity], relaxed, [relax_steps,
        relax_converged, relax_max_force, relax_backend], rejected, errors, energy_model,
        hull_fingerprint``. ``rejected`` is the reason the structure was not evaluated
        (``None`` when it was), ``errors`` what failed on it (module docstring).
    summary : dict
        Aggregated metrics (failure-aware denominators), timings, model info, hull convention,
        ``n_rejected``, ``n_with_errors`` and ``min_volume_per_atom``. ``timings_s``: with the
        pipeline ``hull`` and ``metrics`` are the background stages' own times (overlapped
        with ``energy``) and ``hull_wait``, ``metrics_wait`` what each added after the
        energies; without it each pair is the same number.
    """
    t0 = time.perf_counter()
    n = len(structures)
    errors: list[list[str]] = [[] for _ in range(n)]
    rejected: list[str | None] = [None] * n
    to_eval: list[int] = []
    for i, s in enumerate(structures):
        if s is None:
            errors[i].append("invalid structure (None)")
            continue
        rejected[i] = evaluation_rejection(
            s, min_volume_per_atom=min_volume_per_atom,
            min_distance=MIN_DISTANCE if skip_invalid else None)
        if rejected[i] is None:
            to_eval.append(i)

    energy = np.full(n, np.nan)
    e_pa = np.full(n, np.nan)
    max_force = np.full(n, np.nan)
    final: list[Structure | None] = list(structures)
    relax_info: dict[int, tuple[int, bool, float, str]] = {}
    metrics_kw: dict[str, Any] = {
        "reference": reference_structures,
        "embeddings": embeddings,
        "reference_embeddings": reference_embeddings,
        "compute_amd": compute_amd,
        "n_jobs": n_jobs,
        "matcher_kwargs": matcher_kwargs,
        "metastable_threshold": metastable_threshold,
        "metastable_inclusive": metastable_inclusive,
    }
    hull_jobs = n_jobs if hull_n_jobs is None else hull_n_jobs
    background = None
    hull_background = None
    metrics_elapsed: list[float] = []
    hull_elapsed: list[float] = []
    if pipeline:
        from concurrent.futures import ThreadPoolExecutor

        def _metrics() -> Any:
            t = time.perf_counter()
            rep = compute_metrics(list(structures), e_above_hull=None, **metrics_kw)
            metrics_elapsed.append(time.perf_counter() - t)
            return rep

        def _hull_energies() -> None:
            # fills the hull's cache, from which e_above_hull takes them below
            t = time.perf_counter()
            hull.hull_energies([structures[i].composition for i in to_eval],  # type: ignore[union-attr]
                               n_jobs=hull_jobs)
            hull_elapsed.append(time.perf_counter() - t)

        pool = ThreadPoolExecutor(2, thread_name_prefix="xtalforge-screen")
        if to_eval:
            hull_background = pool.submit(_hull_energies)
        if not relax:
            background = pool.submit(_metrics)
        pool.shutdown(wait=False)

    t_energy = time.perf_counter()
    sub = [structures[i] for i in to_eval]
    backend = None
    if relax:
        rkw = dict(relax_kwargs or {})
        backend = _relax_backend(energy_model, rkw.pop("backend", "auto"))
        if backend == "torch-sim":
            results = energy_model.relax_batched(sub, **rkw, progress=progress)
        else:
            rkw.pop("max_atoms", None)
            rkw.pop("check_every", None)
            results = energy_model.relax(sub, **rkw, progress=progress)
        for i, r in zip(to_eval, results, strict=True):
            relax_info[i] = (r.n_steps, r.converged, r.max_force, r.backend)
            if r.error:
                errors[i].append(f"relaxation: {r.error}")
                continue
            energy[i], e_pa[i] = r.energy, r.energy_per_atom
            max_force[i] = r.max_force
            final[i] = r.structure
    else:
        results_sp = energy_model.predict(sub, batch_size=batch_size, progress=progress)
        for i, r in zip(to_eval, results_sp, strict=True):
            if r.error:
                errors[i].append(f"energy: {r.error}")
                continue
            energy[i], e_pa[i], max_force[i] = r.energy, r.energy_per_atom, r.max_force
    t_energy = time.perf_counter() - t_energy

    t_hull_wait = time.perf_counter()
    if hull_background is not None:
        hull_background.result()
    comps = [s.composition if s is not None else "" for s in final]
    ehull = np.full(n, np.nan)
    idx = [i for i in range(n) if np.isfinite(e_pa[i])]
    if idx:
        vals, reasons = hull.e_above_hull([comps[i] for i in idx], e_pa[idx], kind="total",
                                          return_reasons=True, n_jobs=hull_jobs)
        ehull[idx] = vals
        for i, reason in zip(idx, reasons, strict=True):
            if reason:
                errors[i].append(f"hull: {reason}")
    t_hull_wait = time.perf_counter() - t_hull_wait
    t_hull = hull_elapsed[0] if hull_elapsed else t_hull_wait

    t_metrics = time.perf_counter()
    if background is not None:
        report = add_stability(background.result(), ehull,
                               metastable_threshold=metastable_threshold,
                               metastable_inclusive=metastable_inclusive)
        t_metrics_wait = time.perf_counter() - t_metrics
        t_metrics = metrics_elapsed[0] if metrics_elapsed else t_metrics_wait
    else:
        match_on = final if relax else list(structures)
        report = compute_metrics(match_on, e_above_hull=ehull, **metrics_kw)
        t_metrics = time.perf_counter() - t_metrics
        t_metrics_wait = t_metrics
    df = report.per_structure
    hull_fp = hull.convention.get("fingerprint")
    cols = [c for c in ("structure_valid", "smact_valid", "valid", "unique", "representative",
                        "novel", "stable", "metastable", "sun", "msun", "min_amd_distance",
                        "creativity") if c in df]
    records: list[dict[str, Any]] = []
    for i, s in enumerate(structures):
        row = df.iloc[i]
        rec: dict[str, Any] = {
            "index": i,
            "formula": s.composition.reduced_formula if s is not None else None,
            "n_sites": len(s) if s is not None else 0,
            "energy": _f(energy[i]),
            "energy_per_atom": _f(e_pa[i]),
            "max_force": _f(max_force[i]),
            "e_above_hull": _f(ehull[i]),
        }
        for c in cols:
            v = row[c]
            rec[c] = v.item() if hasattr(v, "item") else v
        if row.get("matching_error"):
            errors[i].append(f"matching: {row['matching_error']}")
        rec["relaxed"] = bool(relax)
        if i in relax_info:
            steps_i, conv_i, fmax_i, backend_i = relax_info[i]
            rec["relax_steps"] = int(steps_i)
            rec["relax_converged"] = bool(conv_i)
            rec["relax_max_force"] = _f(fmax_i)
            rec["relax_backend"] = backend_i
        if include_structures:
            rec["structure"] = s.as_dict() if s is not None else None
            if relax:
                rec["relaxed_structure"] = final[i].as_dict() if final[i] is not None else None
        rec["rejected"] = rejected[i]
        rec["errors"] = errors[i]
        rec["energy_model"] = energy_model.spec
        rec["hull_fingerprint"] = hull_fp
        records.append(rec)

    summary = dict(report.summary)
    summary.update({
        "n_energy_evaluated": len(to_eval),
        "n_energy_failed": int(sum(1 for i in to_eval if not np.isfinite(e_pa[i]))),
        "n_rejected": int(sum(1 for r in rejected if r)),
        "n_with_errors": int(sum(1 for e in errors if e)),
        "min_volume_per_atom": min_volume_per_atom,
        "energy_model": energy_model.info,
        "hull_convention": hull.convention,
        "relaxed": bool(relax),
        "relax_kwargs": dict(relax_kwargs or {}) if relax else None,
        "relax_backend": backend,
        "n_relax_converged": int(sum(1 for v in relax_info.values() if v[1])) if relax
        else None,
        "pipeline": hull_background is not None or background is not None,
        "timings_s": {
            "energy": t_energy,
            # with the pipeline, hull energies and metrics ran alongside the energies: "hull"
            # and "metrics" are their own times, "hull_wait" what the hull added after the
            # energies (wait + subtraction), "metrics_wait" what remained after that
            "hull": t_hull,
            "hull_wait": t_hull_wait,
            "metrics": t_metrics,
            "metrics_wait": t_metrics_wait,
            "total": time.perf_counter() - t0,
        },
    })
    return records, summary


def _relax_backend(energy_model: EnergyModel, backend: str) -> str:
    """Resolve the relaxation backend (``"torch-sim"`` or ``"ase"``)."""
    if backend not in ("auto", "torch-sim", "ase"):
        raise ValueError(f"relax backend must be 'auto', 'torch-sim' or 'ase', not {backend!r}")
    if backend != "auto":
        return backend
    if not energy_model.supports_batched_relax:
        return "ase"
    try:
        import torch_sim  # noqa: F401
    except ImportError:
        logger.warning("torch-sim not installed: relaxing one structure at a time with ASE")
        return "ase"
    if getattr(energy_model, "effective_mode", "fast") != "fast" and \
            energy_model.name == "chgnet":
        return "ase"
    return "torch-sim"


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def rank_candidates(
    records: Sequence[Mapping[str, Any]],
    policy: str = "msun_first",
    one_per_composition: bool = True,
    k: int | None = None,
    max_e_above_hull: float | None = None,
    require_valid: bool = False,
) -> list[dict[str, Any]]:
    """Order screened records for DFT validation.

    Parameters
    ----------
    records : sequence of dict
        Output of :func:`screen_structures`.
    policy : {"msun_first", "ehull"}
        ``"msun_first"``: mSUN records first, then other unique-and-novel ones, then the rest,
        each by increasing energy above hull. ``"ehull"``: by energy above hull only.
    one_per_composition : bool
        Keep only the best record of each reduced formula.
    k : int, optional
        Return at most ``k`` records.
    max_e_above_hull : float, optional
        Drop records above this energy above hull (eV/atom).
    require_valid : bool
        Keep only structurally and SMACT-valid records.

    Returns
    -------
    list of dict
        Copies of the chosen records with a ``rank`` field (0 = best). Records without a
        finite energy above hull are never ranked.
    """
    if policy not in ("msun_first", "ehull"):
        raise ValueError("policy must be 'msun_first' or 'ehull'")
    pool = []
    for r in records:
        e = r.get("e_above_hull")
        if e is None or not math.isfinite(e):
            continue
        if max_e_above_hull is not None and e > max_e_above_hull:
            continue
        if require_valid and not r.get("valid", False):
            continue
        pool.append(r)

    def key(r: Mapping[str, Any]) -> tuple:
        un = bool(r.get("unique")) and bool(r.get("novel"))
        if policy == "msun_first":
            return (not bool(r.get("msun")), not un, r["e_above_hull"], r.get("index", 0))
        return (r["e_above_hull"], r.get("index", 0))

    pool.sort(key=key)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in pool:
        f = r.get("formula")
        if one_per_composition and f in seen:
            continue
        seen.add(f)
        out.append({**r, "rank": len(out)})
        if k is not None and len(out) >= k:
            break
    return out
