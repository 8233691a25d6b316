"""Discovery metrics: validity, uniqueness, novelty, stability, S.U.N./mSUN, coverage, AMD.

Conventions (documented once, used everywhere)
----------------------------------------------
Denominators
    Every aggregated fraction divides by the number of *submitted* structures ``n_total``,
    including those that failed upstream (``None``: not decodable), failed a check, or have no
    energy. A failure counts as ``False`` for every indicator (not unique, not novel, not
    stable, ...). This is the MatterGen convention (fractions over ``total_submitted_jobs``);
    the number of failures is reported next to each fraction (``n_*`` keys).
Matching
    pymatgen :class:`~pymatgen.analysis.structure_matcher.StructureMatcher` with its defaults,
    which are also Chemeleon2's evaluation flags: ``ltol=0.2, stol=0.3, angle_tol=5``,
    ``primitive_cell=True, scale=True, attempt_supercell=False, allow_subset=False``
    (:data:`DEFAULT_MATCHER_KWARGS`). ``fit`` is not symmetric: like Chemeleon2 a generated
    structure is always ``struct1`` and a reference ``struct2``.
Uniqueness
    Exactly pymatgen's ``group_structures`` (greedy, order dependent): the first structure of
    each group is unique, the others are duplicates.
Novelty
    A structure is novel when ``fit`` matches no reference structure of the same reduced
    formula.
Speed (results identical to the plain pymatgen calls)
    A structure whose reduced formula no other generated or reference structure has is
    unique and novel without any work. The others are reduced (primitive + Niggli, as
    ``fit`` does internally) once, then ``fit(..., skip_structure_reduction=True)`` is
    called only between structures of the same reduced formula *and* the same number of
    sites in the reduced cell (``fit`` returns ``False`` for different site counts when
    ``attempt_supercell=False``). Reduction, SMACT and matching run in ``n_jobs`` worker
    processes.
Stability
    ``stable``: ``e_above_hull <= 0`` (+ ``tol`` = 1e-8 eV/atom of numerical noise);
    ``metastable``: ``e_above_hull < 0.1`` eV/atom, *strict*, as Park & Walsh 2025 write it
    (Chemeleon2's code uses ``<= 0.1``: pass ``metastable_inclusive=True``).
    ``SUN = stable & unique & novel``; ``mSUN = metastable & unique & novel``.
Structural validity
    All interatomic distances (periodic images included) > 0.5 Å, cell volume > 0.1 Å^3.
SMACT validity
    ``smact.screening.smact_validity(composition, oxidation_states_set="icsd24")``
    (charge neutrality + Pauling electronegativity test, pure metals/alloys valid); an
    exception counts as invalid with its reason.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Composition, Structure

logger = logging.getLogger(__name__)

#: pymatgen StructureMatcher defaults (= Chemeleon2's evaluation flags).
DEFAULT_MATCHER_KWARGS: dict[str, Any] = {
    "ltol": 0.2,
    "stol": 0.3,
    "angle_tol": 5.0,
    "primitive_cell": True,
    "scale": True,
    "attempt_supercell": False,
    "allow_subset": False,
}
#: minimal interatomic distance (Å) of a structurally valid structure
MIN_DISTANCE = 0.5
#: Volume per atom (Å^3) below which a structure is not given to an MLIP
#: (:func:`evaluation_rejection`). The densest of the 18,093 MP-20 validation and test crystals
#: has 5.77 Å^3/atom (0th percentile; the 0.1th percentile is 7.40, the 1st 8.86): this guard,
#: below the minimum, rejects no MP-20 crystal. Denser generated cells are implausible and make
#: graph MLIPs (CHGNet with forces) build neighbour and angle graphs of gigabytes: a 14-atom
#: cell at 2.7 Å^3/atom took the process from 0.5 to 1.7 GB.
MIN_VOLUME_PER_ATOM = 5.0
METASTABLE_THRESHOLD = 0.1
STABLE_THRESHOLD = 0.0
STABILITY_TOL = 1e-8

ELEMENT_CATEGORIES = (
    "alkali_metal",
    "alkaline_earth_metal",
    "transition_metal",
    "lanthanide",
    "actinide",
    "post_transition_metal",
    "metalloid",
    "nonmetal",
    "halogen",
    "noble_gas",
)

__all__ = [
    "DEFAULT_MATCHER_KWARGS",
    "ELEMENT_CATEGORIES",
    "MetricsReport",
    "ReferenceSet",
    "add_stability",
    "aggregate",
    "amd_vector",
    "amd_vectors",
    "compute_metrics",
    "coverage",
    "creativity_reward",
    "element_category",
    "mp_start_method",
    "element_category_stats",
    "evaluation_rejection",
    "frechet_distance",
    "make_matcher",
    "min_amd_distances",
    "novelty",
    "smact_valid",
    "stability_flags",
    "structural_validity",
    "uniqueness",
]


# --------------------------------------------------------------------------------------
# simple per-structure checks
# --------------------------------------------------------------------------------------
def structural_validity(structure: Structure | None, min_distance: float = MIN_DISTANCE
                        ) -> tuple[bool, str | None]:
    """Check that all interatomic distances exceed ``min_distance`` (Å).

    Distances include periodic images (minimum image over the distance matrix, and the lattice
    vectors for an atom and its own images). Returns ``(valid, reason)``.
    """
    if structure is None:
        return False, "no structure"
    try:
        if len(structure) == 0:
            return False, "empty structure"
        vol = float(structure.volume)
        if not math.isfinite(vol) or vol < 0.1:
            return False, f"cell volume {vol:.3g} A^3 < 0.1"
        if not np.all(np.isfinite(structure.frac_coords)):
            return False, "non-finite coordinates"
        # shortest lattice vector = distance of an atom to its own periodic image
        lll = structure.lattice.get_lll_reduced_lattice()
        dmin = float(min(lll.abc))
        if len(structure) > 1:
            dm = structure.distance_matrix
            dmin = min(dmin, float(dm[np.triu_indices(len(structure), k=1)].min()))
        if dmin <= min_distance:
            return False, f"min interatomic distance {dmin:.3f} A <= {min_distance} A"
        return True, None
    except Exception as exc:  # noqa: BLE001
        return False, f"{type(exc).__name__}: {exc}"


def evaluation_rejection(structure: Structure | None,
                         min_volume_per_atom: float | None = MIN_VOLUME_PER_ATOM,
                         min_distance: float | None = MIN_DISTANCE) -> str | None:
    """Why ``structure`` is not given to an energy model, or ``None`` when it may be.

    The one guard in front of the MLIP, shared by screening
    (:func:`xtalforge.screening.screen.screen_structures`) and the RL reward
    (:class:`xtalforge.rewards.resources.GuardedEnergyModel`). A rejection is a property of the
    sample, not a failure of the pipeline: screening records it as ``rejected`` and the
    structure counts as neither metastable nor stable.

    Parameters
    ----------
    structure : Structure or None
        ``None`` is not rejected here (it is a failed decode: an error of the stage before).
    min_volume_per_atom : float or None
        Cells denser than this (Å^3/atom) are rejected; ``None`` disables the check.
        Default :data:`MIN_VOLUME_PER_ATOM` (below the densest MP-20 crystal).
    min_distance : float or None
        Structures failing :func:`structural_validity` at this distance (Å) are rejected;
        ``None`` disables the check.

    Returns
    -------
    str or None
        The reason, e.g. ``"structurally invalid (min interatomic distance 0.312 A <= 0.5 A)"``
        or ``"implausibly dense: 2.71 A^3/atom < 5.0"``.
    """
    if structure is None:
        return None
    if min_distance is not None:
        ok, reason = structural_validity(structure, min_distance)
        if not ok:
            return f"structurally invalid ({reason})"
    if min_volume_per_atom is not None and len(structure):
        vpa = float(structure.volume) / len(structure)
        if not math.isfinite(vpa) or vpa < min_volume_per_atom:
            return f"implausibly dense: {vpa:.3g} A^3/atom < {min_volume_per_atom:g}"
    return None


@lru_cache(maxsize=100_000)
def _smact_cached(formula: str, oxidation_states_set: str) -> tuple[bool, str | None]:
    from pymatgen.core import Composition
    from smact.screening import smact_validity

    try:
        ok = bool(smact_validity(Composition(formula), oxidation_states_set=oxidation_states_set))
        return ok, None if ok else "fails charge neutrality / electronegativity (SMACT)"
    except Exception as exc:  # noqa: BLE001 - SMACT raises on exotic inputs
        return False, f"SMACT error: {type(exc).__name__}: {exc}"


#: SMACT enumerates oxidation-state and stoichiometry combinations: its cost explodes with the
#: number of distinct elements (seconds at 9 elements, minutes or more from 10 on, measured on
#: samples of a barely trained generator). Compositions with more distinct elements than this are
#: reported invalid with the reason, not enumerated; MP-20 has at most 7.
SMACT_MAX_ELEMENTS = 8


def smact_valid(composition: Composition | str | Structure | None,
                oxidation_states_set: str = "icsd24",
                max_elements: int | None = SMACT_MAX_ELEMENTS) -> tuple[bool, str | None]:
    """SMACT compositional validity with the ICSD24 oxidation states; ``(valid, reason)``.

    Compositions with more than ``max_elements`` distinct elements are not enumerated
    (see :data:`SMACT_MAX_ELEMENTS`): they count as invalid, with that reason.
    """
    if composition is None:
        return False, "no structure"
    try:
        from pymatgen.core import Composition

        comp = Composition(getattr(composition, "composition", composition))
        formula = comp.reduced_formula
    except Exception as exc:  # noqa: BLE001
        return False, f"bad composition: {exc}"
    if max_elements is not None and len(comp.elements) > max_elements:
        return False, (f"SMACT not enumerated: {len(comp.elements)} distinct elements > "
                       f"{max_elements}")
    return _smact_cached(formula, oxidation_states_set)


def stability_flags(
    e_above_hull: Sequence[float] | np.ndarray,
    stable_threshold: float = STABLE_THRESHOLD,
    metastable_threshold: float = METASTABLE_THRESHOLD,
    metastable_inclusive: bool = False,
    tol: float = STABILITY_TOL,
) -> tuple[np.ndarray, np.ndarray]:
    """Return boolean arrays ``(stable, metastable)``; NaN counts as neither.

    ``stable = e <= stable_threshold + tol``; ``metastable = e < metastable_threshold`` (or
    ``<=`` with ``metastable_inclusive``).
    """
    e = np.asarray(e_above_hull, dtype=float)
    finite = np.isfinite(e)
    ef = np.where(finite, e, np.inf)
    stable = finite & (ef <= stable_threshold + tol)
    meta = ef <= metastable_threshold if metastable_inclusive else ef < metastable_threshold
    return stable, finite & meta


# --------------------------------------------------------------------------------------
# matching machinery
# --------------------------------------------------------------------------------------
def make_matcher(**matcher_kwargs: Any) -> StructureMatcher:
    """Return a ``StructureMatcher`` with :data:`DEFAULT_MATCHER_KWARGS` overridden by kwargs."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    kw = {**DEFAULT_MATCHER_KWARGS, **matcher_kwargs}
    return StructureMatcher(**kw)


@dataclass
class _Prepared:
    """A structure reduced the way ``StructureMatcher.fit`` reduces it."""

    formula: str | None
    n_reduced: int
    reduced: Any  # Structure | None
    error: str | None = None
    #: no other structure (generated or reference) has this formula: unique and novel
    #: without any reduction or fit
    alone: bool = False


def _prepare_one(structure: Any, sm: StructureMatcher) -> _Prepared:
    if structure is None:
        return _Prepared(None, -1, None, "no structure")
    try:
        s = sm._process_species([structure])[0]
        red = sm._get_reduced_structure(s, sm._primitive_cell, niggli=True)
        return _Prepared(s.composition.reduced_formula, len(red), red)
    except Exception as exc:  # noqa: BLE001
        return _Prepared(None, -1, None, f"reduction failed: {type(exc).__name__}: {exc}")


def _prepare_chunk(items: list[tuple[Any, bool]], matcher_kwargs: dict[str, Any],
                   smact_set: str | None, min_distance: float | None
                   ) -> list[tuple[_Prepared, tuple[bool, str | None] | None,
                                   tuple[bool, str | None] | None]]:
    """Reduce (when flagged), SMACT- and distance-check ``(structure, needs_reduction)`` items."""
    sm = make_matcher(**matcher_kwargs)
    out = []
    for s, needed in items:
        if needed or s is None:
            prep = _prepare_one(s, sm)
        else:
            prep = _Prepared(s.composition.reduced_formula, -1, None, alone=True)
        sm_res = smact_valid(s, smact_set) if smact_set is not None else None
        val = structural_validity(s, min_distance) if min_distance is not None else None
        out.append((prep, sm_res, val))
    return out


def _match_buckets(tasks: list[tuple[list[Any], list[Any]]], matcher_kwargs: dict[str, Any]
                   ) -> list[tuple[list[int], list[bool] | None]]:
    """For each bucket (generated reduced structures, reference reduced structures or None).

    Returns, per bucket, the local index of the group representative of every generated
    structure (pymatgen ``group_structures`` greedy order) and its novelty flags.
    """
    sm = make_matcher(**matcher_kwargs)
    out = []
    for gen, refs in tasks:
        rep = list(range(len(gen)))
        unmatched = list(range(len(gen)))
        while unmatched:
            i = unmatched.pop(0)
            keep = []
            for j in unmatched:
                if sm.fit(gen[i], gen[j], skip_structure_reduction=True):
                    rep[j] = i
                else:
                    keep.append(j)
            unmatched = keep
        novel: list[bool] | None = None
        if refs is not None:
            novel = [not any(sm.fit(g, r, skip_structure_reduction=True) for r in refs)
                     for g in gen]
        out.append((rep, novel))
    return out


_EXECUTORS: dict[tuple[int, str], Executor] = {}


def mp_start_method() -> str:
    """Worker start method: ``$XTALFORGE_MP_START`` or ``fork`` where available.

    ``fork`` starts workers in milliseconds and works from unguarded scripts and notebooks;
    the workers only run pymatgen/numpy code (never torch). Set ``XTALFORGE_MP_START=spawn``
    (or ``forkserver``) to avoid forking a process that holds threads.
    """
    methods = multiprocessing.get_all_start_methods()
    from xtalforge.settings import get_settings

    wanted = get_settings().MP_START
    if wanted:
        return wanted
    return "fork" if "fork" in methods else "spawn"


def _executor(n_jobs: int) -> Executor:
    """Return a cached process pool of ``n_jobs`` workers."""
    key = (n_jobs, mp_start_method())
    ex = _EXECUTORS.get(key)
    if ex is None or getattr(ex, "_broken", False):
        ex = ProcessPoolExecutor(max_workers=n_jobs,
                                 mp_context=multiprocessing.get_context(key[1]))
        _EXECUTORS[key] = ex
    return ex


@atexit.register
def _shutdown_executors() -> None:
    for ex in _EXECUTORS.values():
        ex.shutdown(wait=False, cancel_futures=True)
    _EXECUTORS.clear()


def _resolve_jobs(n_jobs: int | None) -> int:
    if n_jobs is None or n_jobs == 0:
        return 1
    if n_jobs < 0:
        return max(os.cpu_count() or 1, 1)
    return int(n_jobs)


def _run_chunks(fn: Callable[..., list[Any]], items: list[Any], n_jobs: int, *args: Any,
                chunk_size: int | None = None, progress: str | None = None) -> list[Any]:
    """Apply ``fn(chunk, *args)`` over chunks of ``items`` (in worker processes when n_jobs>1)."""
    if not items:
        return []
    if n_jobs <= 1:
        return fn(items, *args)
    if chunk_size is None:
        chunk_size = max(1, math.ceil(len(items) / (n_jobs * 8)))
    chunks = [items[k : k + chunk_size] for k in range(0, len(items), chunk_size)]
    ex = _executor(n_jobs)
    futures = [ex.submit(fn, c, *args) for c in chunks]
    it: Any = futures
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(futures, desc=progress, unit="chunk", leave=False)
    out: list[Any] = []
    for f in it:
        out.extend(f.result())
    return out


class ReferenceSet:
    """Reference structures for novelty, bucketed by reduced formula, reduced lazily and cached.

    Build it once (e.g. the 9,047 MP-20 validation structures) and reuse it across calls (RL
    steps): a reference is reduced (primitive + Niggli) only when a query of its formula
    arrives, then kept. Matching flags are fixed at construction.

    Parameters
    ----------
    structures : sequence of Structure
        Reference structures.
    ids : sequence of str, optional
        Identifiers.
    matcher_kwargs : dict, optional
        Overrides of :data:`DEFAULT_MATCHER_KWARGS`.
    """

    def __init__(self, structures: Sequence[Structure], ids: Sequence[str] | None = None,
                 matcher_kwargs: Mapping[str, Any] | None = None) -> None:
        self.structures = list(structures)
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(structures))]
        self.matcher_kwargs = {**DEFAULT_MATCHER_KWARGS, **dict(matcher_kwargs or {})}
        self.by_formula: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(self.structures):
            self.by_formula[s.composition.reduced_formula].append(i)
        self._prepared: dict[int, _Prepared] = {}
        self._amd: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.structures)

    def prepare(self, formulas: Sequence[str], n_jobs: int = 1) -> None:
        """Reduce (once) every reference whose reduced formula is in ``formulas``."""
        todo = sorted({i for f in set(formulas) for i in self.by_formula.get(f, ())
                       if i not in self._prepared})
        if not todo:
            return
        res = _run_chunks(_prepare_chunk, [(self.structures[i], True) for i in todo], n_jobs,
                          self.matcher_kwargs, None, None)
        for i, (prep, _, _) in zip(todo, res, strict=True):
            self._prepared[i] = prep

    def prepared(self, formula: str) -> list[_Prepared]:
        """Return the prepared references of a formula (call :meth:`prepare` first)."""
        return [self._prepared[i] for i in self.by_formula.get(formula, ())]

    def amd(self, formula: str, k: int = 100) -> np.ndarray:
        """AMD vectors (``k``) of the references of ``formula`` (cached)."""
        idx = self.by_formula.get(formula, [])
        todo = [i for i in idx if i not in self._amd or self._amd[i].shape[0] != k]
        if todo:
            for i, v in zip(todo, amd_vectors([self.structures[i] for i in todo], k=k),
                            strict=True):
                self._amd[i] = v
        return np.stack([self._amd[i] for i in idx]) if idx else np.zeros((0, k))


def _match_all(
    prepared: list[_Prepared],
    reference: ReferenceSet | None,
    matcher_kwargs: dict[str, Any],
    n_jobs: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Uniqueness (representative index) and novelty for prepared structures."""
    n = len(prepared)
    rep = np.full(n, -1, dtype=int)
    novel = np.zeros(n, dtype=bool) if reference is not None else None
    buckets: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, p in enumerate(prepared):
        if p.alone:
            rep[i] = i
            if novel is not None:
                novel[i] = True
        elif p.reduced is not None:
            buckets[(p.formula, p.n_reduced)].append(i)
    if reference is not None:
        reference.prepare([f for f, _ in buckets], n_jobs=n_jobs)
    tasks, owners = [], []
    for (formula, nred), idx in buckets.items():
        refs = None
        if reference is not None:
            refs = [r.reduced for r in reference.prepared(formula)
                    if r.reduced is not None and r.n_reduced == nred]
        if len(idx) == 1 and not refs:
            rep[idx[0]] = idx[0]
            if novel is not None:
                novel[idx[0]] = True
            continue
        gen = [prepared[i].reduced for i in idx]
        tasks.append((gen, refs))
        owners.append(idx)
    # big buckets first so that workers stay busy
    order = sorted(range(len(tasks)), key=lambda t: -len(tasks[t][0]) * (
        len(tasks[t][0]) + len(tasks[t][1] or ())))
    tasks = [tasks[t] for t in order]
    owners = [owners[t] for t in order]
    results = _run_chunks(_match_buckets, tasks, n_jobs, matcher_kwargs,
                          chunk_size=max(1, math.ceil(len(tasks) / (max(n_jobs, 1) * 16))))
    for idx, (local_rep, local_novel) in zip(owners, results, strict=True):
        for k, i in enumerate(idx):
            rep[i] = idx[local_rep[k]]
            if novel is not None and local_novel is not None:
                novel[i] = local_novel[k]
    unique = rep == np.arange(n)
    return unique, rep, novel


def _prepare_all(structures: Sequence[Any], matcher_kwargs: dict[str, Any], n_jobs: int,
                 smact_set: str | None = None, min_distance: float | None = None,
                 reference: ReferenceSet | None = None) -> list[tuple[_Prepared, Any, Any]]:
    """Prepare structures (reduction, SMACT, distance check).

    Only structures sharing their reduced formula with another generated or reference
    structure are reduced; the others are trivially unique and novel.
    """
    formulas = [s.composition.reduced_formula if s is not None else None for s in structures]
    counts: dict[str | None, int] = defaultdict(int)
    for f in formulas:
        counts[f] += 1
    items = [
        (s, s is not None and (counts[f] > 1 or (reference is not None
                                                  and f in reference.by_formula)))
        for s, f in zip(structures, formulas, strict=True)
    ]
    return _run_chunks(_prepare_chunk, items, n_jobs, matcher_kwargs, smact_set, min_distance)


def uniqueness(structures: Sequence[Structure | None], n_jobs: int = 1,
               matcher_kwargs: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure uniqueness within the set (same result as ``group_structures``).

    Returns
    -------
    unique : numpy.ndarray of bool
        ``True`` for the first structure of each group; ``False`` for duplicates and ``None``.
    representative : numpy.ndarray of int
        Index of each structure's group representative (-1 for ``None``/failures).
    """
    kw = {**DEFAULT_MATCHER_KWARGS, **dict(matcher_kwargs or {})}
    n_jobs = _resolve_jobs(n_jobs)
    prepared = [p for p, _, _ in _prepare_all(structures, kw, n_jobs)]
    unique, rep, _ = _match_all(prepared, None, kw, n_jobs)
    return unique, rep


def novelty(structures: Sequence[Structure | None],
            reference: ReferenceSet | Sequence[Structure], n_jobs: int = 1,
            matcher_kwargs: Mapping[str, Any] | None = None) -> np.ndarray:
    """Per-structure novelty against a reference set (``None`` -> ``False``)."""
    if not isinstance(reference, ReferenceSet):
        reference = ReferenceSet(reference, matcher_kwargs=matcher_kwargs)
    kw = reference.matcher_kwargs
    n_jobs = _resolve_jobs(n_jobs)
    prepared = [p for p, _, _ in _prepare_all(structures, kw, n_jobs, reference=reference)]
    _, _, novel = _match_all(prepared, reference, kw, n_jobs)
    assert novel is not None
    return novel


# --------------------------------------------------------------------------------------
# AMD
# --------------------------------------------------------------------------------------
def _amd_module() -> Any:
    try:
        import amd  # the 'average-minimum-distance' package
    except ImportError as exc:
        raise ImportError("AMD metrics need the 'average-minimum-distance' package "
                          "(pip install average-minimum-distance; import name 'amd')") from exc
    if not (hasattr(amd, "AMD") and hasattr(amd, "periodicset_from_pymatgen_structure")):
        raise ImportError(
            "the importable 'amd' module is not average-minimum-distance (the PyPI package "
            "'AMD' is an unrelated Arduino library): pip install average-minimum-distance")
    return amd


def amd_vector(structure: Structure, k: int = 100) -> np.ndarray:
    """Average Minimum Distance vector of a periodic structure (Widdowson et al. 2022).

    ``AMD_j`` is the distance from an atom to its ``j``-th nearest neighbour (all periodic
    images, any species), averaged over the atoms of the unit cell, ``j = 1..k``. This is
    ``amd.AMD(periodicset_from_pymatgen_structure(s), k)`` computed with pymatgen neighbour
    lists: the definition written out, which checks :func:`amd_vectors` (the package's
    implementation, used by every metric). Invariant to the choice of (super)cell.

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
    """Average Minimum Distance vectors (``amd.AMD``, ``k`` neighbours); NaN rows for failures."""
    amd = _amd_module()
    out = np.full((len(structures), k), np.nan)
    for i, s in enumerate(structures):
        if s is None:
            continue
        try:
            pset = amd.periodicset_from_pymatgen_structure(s)
            out[i] = np.asarray(amd.AMD(pset, k), dtype=float)
        except Exception as exc:  # noqa: BLE001
            logger.debug("AMD failed for structure %d: %s", i, exc)
    return out


def min_amd_distances(
    structures: Sequence[Structure | None],
    reference: ReferenceSet | None = None,
    k: int = 100,
    amds: np.ndarray | None = None,
) -> np.ndarray:
    """Min Chebyshev (L-inf) AMD distance to any *other* structure of the same reduced formula.

    The comparison set of structure ``i`` is the other generated structures and the reference
    structures with ``f(y) == f(x_i)`` (Park & Walsh 2025, creativity reward). NaN when the set
    is empty or the AMD failed.
    """
    if amds is None:
        amds = amd_vectors(structures, k=k)
    out = np.full(len(structures), np.nan)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(structures):
        if s is not None and np.all(np.isfinite(amds[i])):
            groups[s.composition.reduced_formula].append(i)
    for formula, idx in groups.items():
        a = amds[idx]
        d = np.abs(a[:, None, :] - a[None, :, :]).max(-1)
        np.fill_diagonal(d, np.inf)
        best = d.min(axis=1)
        if reference is not None:
            r = reference.amd(formula, k=k)
            r = r[np.all(np.isfinite(r), axis=1)]
            if len(r):
                best = np.minimum(best, np.abs(a[:, None, :] - r[None, :, :]).max(-1).min(1))
        best[~np.isfinite(best)] = np.nan
        out[idx] = best
    return out


def creativity_reward(unique: Sequence[bool], novel: Sequence[bool],
                      min_amd: Sequence[float], clip: float = 1.0) -> np.ndarray:
    """Creativity reward (Park & Walsh 2025): 1 if unique and novel, 0 if neither, else min AMD.

    The AMD branch is clipped to ``[0, clip]``; a NaN distance (no same-formula partner) gives 1.
    """
    u = np.asarray(unique, dtype=bool)
    v = np.asarray(novel, dtype=bool)
    d = np.clip(np.nan_to_num(np.asarray(min_amd, dtype=float), nan=clip), 0.0, clip)
    return np.where(u & v, 1.0, np.where(~u & ~v, 0.0, d))


# --------------------------------------------------------------------------------------
# distribution metrics
# --------------------------------------------------------------------------------------
def frechet_distance(x_gen: np.ndarray, x_ref: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets (FMD).

    ``||mu_g - mu_r||^2 + Tr(S_g + S_r - 2 (S_g S_r)^(1/2))``. The trace of the matrix square
    root is computed from the symmetric form: ``Tr((S_g S_r)^(1/2))`` is the sum of the square
    roots of the eigenvalues of ``S_g^(1/2) S_r S_g^(1/2)`` (positive semi-definite, so
    ``numpy.linalg.eigh`` is exact and cannot fail the way ``scipy.linalg.sqrtm`` of the
    non-symmetric product can on nearly singular covariances). ``eps`` is kept for callers.
    Rows with a non-finite value (structures that could not be embedded: failed decodes give
    NaN rows) are left out; fewer than 2 finite rows in a set is a ``ValueError``.
    """
    x_gen = np.asarray(x_gen, dtype=np.float64)
    x_ref = np.asarray(x_ref, dtype=np.float64)
    if x_gen.ndim != 2 or x_ref.ndim != 2 or x_gen.shape[1] != x_ref.shape[1]:
        raise ValueError("embeddings must be 2-D arrays with the same feature dimension")
    x_gen = x_gen[np.isfinite(x_gen).all(axis=1)]
    x_ref = x_ref[np.isfinite(x_ref).all(axis=1)]
    if len(x_gen) < 2 or len(x_ref) < 2:
        raise ValueError("need at least 2 finite embeddings per set")
    mu1, mu2 = x_gen.mean(0), x_ref.mean(0)
    s1 = np.atleast_2d(np.cov(x_gen, rowvar=False))
    s2 = np.atleast_2d(np.cov(x_ref, rowvar=False))
    w1, v1 = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    m = root1 @ s2 @ root1
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def coverage(x_gen: np.ndarray, x_ref: np.ndarray) -> float:
    """Coverage score ``1 / (1 + FMD)`` (Park & Walsh 2025)."""
    return 1.0 / (1.0 + max(frechet_distance(x_gen, x_ref), 0.0))


@lru_cache(maxsize=256)
def element_category(symbol: str) -> str:
    """Exclusive category of an element (lanthanides/actinides before transition metals)."""
    from pymatgen.core.periodic_table import Element

    el = Element(symbol)
    if el.is_lanthanoid:
        return "lanthanide"
    if el.is_actinoid:
        return "actinide"
    if el.is_transition_metal:
        return "transition_metal"
    if el.is_alkali:
        return "alkali_metal"
    if el.is_alkaline:
        return "alkaline_earth_metal"
    if el.is_post_transition_metal:
        return "post_transition_metal"
    if el.is_metalloid:
        return "metalloid"
    if el.is_halogen:
        return "halogen"
    if el.is_noble_gas:
        return "noble_gas"
    return "nonmetal"


def element_category_stats(compositions: Sequence[Any]) -> dict[str, float]:
    """Element-category statistics of a set of structures or compositions.

    Returns ``frac_with_<category>`` (fraction of the *given, non-None* items containing at
    least one element of the category) and ``share_<category>`` (share of the category among
    all (item, distinct element) occurrences: the pie-chart proportions of Park & Walsh 2025).
    """
    present = [getattr(c, "composition", c) for c in compositions if c is not None]
    n = len(present)
    counts = dict.fromkeys(ELEMENT_CATEGORIES, 0)
    with_cat = dict.fromkeys(ELEMENT_CATEGORIES, 0)
    total = 0
    from pymatgen.core import Composition

    for c in present:
        cats = [element_category(el.symbol) for el in Composition(c).elements]
        for cat in cats:
            counts[cat] += 1
        total += len(cats)
        for cat in set(cats):
            with_cat[cat] += 1
    out: dict[str, float] = {}
    for cat in ELEMENT_CATEGORIES:
        out[f"frac_with_{cat}"] = with_cat[cat] / n if n else math.nan
        out[f"share_{cat}"] = counts[cat] / total if total else math.nan
    return out


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
@dataclass
class MetricsReport:
    """Per-structure metrics table and aggregated summary.

    Attributes
    ----------
    per_structure : pandas.DataFrame
        One row per submitted structure (failures included), columns described in
        :func:`compute_metrics`.
    summary : dict
        Output of :func:`aggregate` plus settings.
    """

    per_structure: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Summary dict (the per-structure table is kept out)."""
        return dict(self.summary)


def aggregate(df: pd.DataFrame, n_total: int | None = None) -> dict[str, Any]:
    """Aggregate a per-structure table with failure-aware denominators.

    Every ``frac_*`` divides by ``n_total`` (default: rows of ``df``, i.e. all submitted
    structures); missing indicators (NaN/None) count as ``False``. Columns absent from ``df``
    give NaN. ``mean_e_above_hull`` averages finite values only (``n_with_e_above_hull``).
    """
    n = int(n_total if n_total is not None else len(df))
    out: dict[str, Any] = {"n_total": n}

    def frac(col: str) -> float:
        if col not in df or df[col].isna().all():
            return math.nan
        return float(df[col].fillna(False).astype(bool).sum()) / n if n else math.nan

    for col in ("structure_valid", "smact_valid", "valid", "unique", "novel",
                "unique_novel", "stable", "metastable", "sun", "msun"):
        out[f"frac_{col}"] = frac(col)
        out[f"n_{col}"] = int(df[col].fillna(False).astype(bool).sum()) if col in df else 0
    if "structure" in df:
        out["n_failed_input"] = int((~df["structure"].astype(bool)).sum())
    if "e_above_hull" in df:
        e = pd.to_numeric(df["e_above_hull"], errors="coerce")
        out["n_with_e_above_hull"] = int(np.isfinite(e).sum())
        out["mean_e_above_hull"] = float(e[np.isfinite(e)].mean()) if np.isfinite(e).any() \
            else math.nan
        out["median_e_above_hull"] = float(e[np.isfinite(e)].median()) if np.isfinite(e).any() \
            else math.nan
    if "min_amd_distance" in df:
        out["mean_min_amd_distance"] = float(np.nanmean(df["min_amd_distance"])) \
            if df["min_amd_distance"].notna().any() else math.nan
    # aliases for the usual names
    out["uniqueness"] = out["frac_unique"]
    out["novelty"] = out["frac_novel"]
    out["smact_validity"] = out["frac_smact_valid"]
    out["structural_validity"] = out["frac_structure_valid"]
    out["stability"] = out["frac_stable"]
    out["metastability"] = out["frac_metastable"]
    out["SUN"] = out["frac_sun"]
    out["mSUN"] = out["frac_msun"]
    return out


def compute_metrics(
    structures: Sequence[Structure | None],
    e_above_hull: Sequence[float] | None = None,
    reference: ReferenceSet | Sequence[Structure] | None = None,
    embeddings: np.ndarray | None = None,
    reference_embeddings: np.ndarray | None = None,
    compute_amd: bool = False,
    amd_k: int = 100,
    n_jobs: int = 1,
    matcher_kwargs: Mapping[str, Any] | None = None,
    smact_oxidation_states_set: str = "icsd24",
    min_distance: float | None = MIN_DISTANCE,
    metastable_threshold: float = METASTABLE_THRESHOLD,
    metastable_inclusive: bool = False,
    stable_tol: float = STABILITY_TOL,
) -> MetricsReport:
    """Compute all metrics for a set of generated structures.

    Parameters
    ----------
    structures : sequence of Structure or None
        Generated structures; ``None`` for ones that failed to decode (kept in denominators).
    e_above_hull : sequence of float, optional
        Energies above the hull (eV/atom), NaN for failures. Without them the stability
        columns are absent (NaN fractions).
    reference : ReferenceSet or sequence of Structure, optional
        Reference set for novelty (and AMD distances).
    embeddings, reference_embeddings : numpy.ndarray, optional
        Generator embeddings for coverage ``1/(1+FMD)``.
    compute_amd : bool
        Also compute min same-formula AMD distances and the creativity reward (needs the
        ``average-minimum-distance`` package).
    amd_k : int
        AMD neighbours (100 in Park & Walsh 2025).
    n_jobs : int
        Worker processes (-1: all cores).
    matcher_kwargs : dict, optional
        Overrides of :data:`DEFAULT_MATCHER_KWARGS` (ignored when ``reference`` is a
        ReferenceSet, whose flags are used).
    smact_oxidation_states_set : str
        SMACT oxidation-state set.
    min_distance : float or None
        Structural-validity distance threshold (Å); ``None`` skips the check (NaN column).
    metastable_threshold, metastable_inclusive, stable_tol
        See :func:`stability_flags`.

    Returns
    -------
    MetricsReport
        ``per_structure`` columns: ``formula, n_sites, structure`` (False for None inputs),
        ``structure_valid, structure_reason, smact_valid, smact_reason, valid`` (both),
        ``unique, representative, novel, unique_novel, e_above_hull, stable, metastable, sun,
        msun`` and with AMD ``min_amd_distance, creativity``.
    """
    n_jobs = _resolve_jobs(n_jobs)
    if reference is not None and not isinstance(reference, ReferenceSet):
        reference = ReferenceSet(reference, matcher_kwargs=matcher_kwargs)
    kw = reference.matcher_kwargs if reference is not None else \
        {**DEFAULT_MATCHER_KWARGS, **dict(matcher_kwargs or {})}
    prep = _prepare_all(structures, kw, n_jobs, smact_oxidation_states_set, min_distance,
                        reference)
    prepared = [p for p, _, _ in prep]
    unique, rep, novel = _match_all(prepared, reference, kw, n_jobs)
    n = len(structures)
    df = pd.DataFrame({
        "formula": [s.composition.reduced_formula if s is not None else None
                    for s in structures],
        "n_sites": [len(s) if s is not None else 0 for s in structures],
        "structure": [s is not None for s in structures],
        "structure_valid": [v[0] if v is not None else None for _, _, v in prep],
        "structure_reason": [v[1] if v is not None else None for _, _, v in prep],
        "smact_valid": [v[0] for _, v, _ in prep],
        "smact_reason": [v[1] for _, v, _ in prep],
        "unique": unique,
        "representative": rep,
        "matching_error": [p.error if s is not None else None
                           for p, s in zip(prepared, structures, strict=True)],
    })
    if min_distance is not None:
        df["valid"] = df["structure_valid"] & df["smact_valid"]
    if novel is not None:
        df["novel"] = novel
        df["unique_novel"] = df["unique"] & df["novel"]
    if e_above_hull is not None and len(e_above_hull) != n:
        raise ValueError("e_above_hull length differs from structures")
    if compute_amd:
        dmin = min_amd_distances(structures, reference, k=amd_k)
        df["min_amd_distance"] = dmin
        if novel is not None:
            df["creativity"] = creativity_reward(unique, novel, dmin)
    summary = aggregate(df, n_total=n)
    summary["n_failed_input"] = int(sum(s is None for s in structures))
    summary.update(element_category_stats([s for s in structures if s is not None]))
    if embeddings is not None and reference_embeddings is not None:
        try:  # coverage is a summary statistic: its failure must not lose the screening
            fmd = frechet_distance(embeddings, reference_embeddings)
        except (ValueError, np.linalg.LinAlgError) as exc:
            summary["coverage_error"] = f"{type(exc).__name__}: {exc}"
        else:
            summary["fmd"] = fmd
            summary["coverage"] = 1.0 / (1.0 + max(fmd, 0.0))
            summary["n_embedded"] = int(np.isfinite(np.asarray(embeddings, float)).all(1).sum())
    summary["settings"] = {
        "matcher_kwargs": kw,
        "smact_oxidation_states_set": smact_oxidation_states_set,
        "min_distance": min_distance,
        "stable": f"e_above_hull <= 0 + {stable_tol:g}",
        "metastable": (f"e_above_hull {'<=' if metastable_inclusive else '<'} "
                       f"{metastable_threshold:g}"),
        "denominator": "all submitted structures (failures count as False)",
        "n_reference": len(reference) if reference is not None else 0,
        "amd_k": amd_k if compute_amd else None,
    }
    report = MetricsReport(per_structure=df, summary=summary)
    if e_above_hull is not None:
        report = add_stability(report, e_above_hull, metastable_threshold=metastable_threshold,
                               metastable_inclusive=metastable_inclusive, stable_tol=stable_tol)
    return report


def add_stability(
    report: MetricsReport,
    e_above_hull: Sequence[float],
    metastable_threshold: float = METASTABLE_THRESHOLD,
    metastable_inclusive: bool = False,
    stable_tol: float = STABILITY_TOL,
) -> MetricsReport:
    """Add stability, S.U.N. and mSUN to a report computed without energies.

    Matching, SMACT and validity do not depend on energies, so a pipelined screen computes
    them while the energy model runs and adds the stability columns afterwards; the result
    is the one :func:`compute_metrics` gives with ``e_above_hull``.

    Parameters
    ----------
    report : MetricsReport
        From :func:`compute_metrics` (any ``e_above_hull`` columns are replaced).
    e_above_hull : sequence of float
        Energies above the hull (eV/atom), NaN for failures, one per row.
    metastable_threshold, metastable_inclusive, stable_tol
        See :func:`stability_flags`.

    Returns
    -------
    MetricsReport
        A new report (the input is not modified).
    """
    df = report.per_structure.copy()
    e = np.asarray(e_above_hull, dtype=float)
    if len(e) != len(df):
        raise ValueError("e_above_hull length differs from structures")
    stable, meta = stability_flags(e, metastable_threshold=metastable_threshold,
                                   metastable_inclusive=metastable_inclusive, tol=stable_tol)
    df["e_above_hull"] = e
    df["stable"] = stable
    df["metastable"] = meta
    if "unique_novel" in df:
        df["sun"] = stable & df["unique_novel"].to_numpy()
        df["msun"] = meta & df["unique_novel"].to_numpy()
    summary = dict(report.summary)
    summary.update(aggregate(df, n_total=len(df)))
    settings = dict(summary.get("settings") or {})
    settings["stable"] = f"e_above_hull <= 0 + {stable_tol:g}"
    settings["metastable"] = (f"e_above_hull {'<=' if metastable_inclusive else '<'} "
                              f"{metastable_threshold:g}")
    summary["settings"] = settings
    return MetricsReport(per_structure=df, summary=summary)
