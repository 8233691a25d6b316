"""Reference convex hulls and energies above the hull.

A :class:`ReferenceHull` holds reference entries (composition + energy) on one energy scale
and answers ``e_above_hull`` queries with pymatgen :class:`~pymatgen.analysis.phase_diagram.
PhaseDiagram` objects built per chemical system (the entries of every sub-system of the
query's elements) and cached. For a query in chemical system ``S`` this is the same hull that
a :class:`~pymatgen.analysis.phase_diagram.PatchedPhaseDiagram` over all entries gives, without
building the patches up front; PatchedPhaseDiagram pickles (as Chemeleon2 and
matbench-discovery distribute them) are read by taking their entries.

Energy scales
-------------
``energy_kind="total"``
    Absolute energies (DFT or MLIP total energies). Elemental references are the lowest-energy
    elemental entries of the set; a chemical system without one for each element is not
    covered (NaN, reason ``missing terminal entries``).
``energy_kind="formation"``
    Formation energies with every element at 0 (e.g. MP-20's ``formation_energy_per_atom``).
    Total-energy queries are converted with elemental chemical potentials
    ``E_form = E_total - sum_a mu_a n_a`` (Park & Walsh 2025, Methods), where ``mu_a`` must come
    from the same energy model as the queried energies (:func:`elemental_chemical_potentials`).

Hull energies
-------------
The hull energy at a composition (:meth:`ReferenceHull.hull_energies`) depends on the
composition only, not on the queried energy: a screen computes it while the energy model runs
(:func:`xtalforge.screening.screen.screen_structures`), over chemical systems in worker
processes, and keeps it in a cache keyed by atomic fractions that later rounds (RL loops)
reuse. ``e_above_hull`` is the queried energy, on the hull's scale, minus that hull energy.

Every hull carries a :attr:`ReferenceHull.convention` dict (energy source, MLIP, relaxed,
reference set, correction scheme, energy kind, entry count, fingerprint) to be recorded with
every result computed from it.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import pickle
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Composition, Structure

    from xtalforge.screening.mlip import EnergyModel

logger = logging.getLogger(__name__)

__all__ = ["ReferenceHull", "elemental_chemical_potentials", "mlip_chemical_potentials"]

_CORRECTIONS = ("none", "MP2020", "as_is")

#: Fewer chemical systems to build than this are done in-process: starting workers and
#: sending them the queries then costs more than it saves.
MIN_PARALLEL_SYSTEMS = 8

#: Prefix of the per-composition reason of a failed hull query (never cached: it names the
#: composition).
_QUERY_FAILED = "hull query failed: "

_CompositionKey = tuple[tuple[str, float], ...]


def _composition_key(c: Composition) -> _CompositionKey:
    """Atomic fractions by element: all that a phase diagram's hull energy depends on.

    :meth:`PhaseDiagram.get_hull_energy_per_atom` sees a composition only through
    ``get_atomic_fraction`` (``pd_coords``), so two compositions with the same key get the
    same hull energy, bit for bit (``Li2O4`` and ``LiO2`` share one).
    """
    return tuple(sorted((el.symbol, c.get_atomic_fraction(el)) for el in c.elements))


def _comp(c: Any) -> Composition:
    from pymatgen.core import Composition

    if isinstance(c, Composition):
        return c
    if isinstance(c, Mapping):
        return Composition(c)
    if hasattr(c, "composition"):
        return c.composition
    return Composition(str(c))


class ReferenceHull:
    """Convex hull of reference entries, queried per chemical system.

    Parameters
    ----------
    compositions : sequence of Composition-like
        Reference compositions (formula strings, dicts or Compositions).
    energies : sequence of float
        Total energy of each reference entry (eV per formula unit as written in
        ``compositions``, i.e. ``energy_per_atom * n_atoms``), on the scale given by
        ``energy_kind``.
    energy_kind : {"total", "formation"}
        Energy scale of the entries (see module docstring).
    entry_ids : sequence of str, optional
        Identifiers (e.g. Materials Project ids).
    chemical_potentials : mapping of str to float, optional
        Elemental chemical potentials ``mu_a`` (eV/atom) of the *queried* energy model. For a
        formation hull they convert total-energy queries; for a total hull they override the
        hull's own elemental references when converting formation-energy queries.
    convention : dict, optional
        Description of how the hull was built (merged into :attr:`convention`).
    max_cache : int
        Max number of cached per-chemical-system phase diagrams (the in-process path of
        :meth:`hull_energies`).
    max_elements : int or None
        Largest chemical system (number of elements) whose hull is built. A convex hull in
        k dimensions costs time exponential in k (on the MP-20 entries: 2 s for 8 elements,
        55 s for 9), and an undertrained or collapsed generator proposes compositions of 10
        and more elements; those queries get NaN with a reason instead of stalling a
        screening run. The default, 8, covers every MP-20 composition (at most 7 elements).
        ``None``: no limit.
    max_energy_cache : int
        Max number of cached hull energies (one per distinct atomic-fraction composition,
        a few hundred bytes each): what later queries of the same compositions reuse. A screen
        relies on it to hand the energies computed alongside the energy model to
        :meth:`e_above_hull`; keep it above the number of distinct compositions of a round.
    """

    def __init__(
        self,
        compositions: Sequence[Any],
        energies: Sequence[float],
        energy_kind: str = "total",
        entry_ids: Sequence[str] | None = None,
        chemical_potentials: Mapping[str, float] | None = None,
        convention: Mapping[str, Any] | None = None,
        max_cache: int = 50_000,
        max_elements: int | None = 8,
        max_energy_cache: int = 1_000_000,
    ) -> None:
        if energy_kind not in ("total", "formation"):
            raise ValueError("energy_kind must be 'total' or 'formation'")
        if len(compositions) != len(energies):
            raise ValueError("compositions and energies differ in length")
        comps = [_comp(c) for c in compositions]
        energies_arr = np.asarray(energies, dtype=float)
        keep = np.isfinite(energies_arr)
        if not keep.all():
            logger.warning("dropping %d reference entries with non-finite energy",
                           int((~keep).sum()))
        self.energy_kind = energy_kind
        ids = list(entry_ids) if entry_ids is not None else [f"ref-{i}" for i in
                                                               range(len(comps))]
        self.compositions = [c for c, k in zip(comps, keep, strict=True) if k]
        self.energies = energies_arr[keep]
        self.entry_ids = [str(i) for i, k in zip(ids, keep, strict=True) if k]
        self.chemical_potentials = dict(chemical_potentials or {})
        self.max_cache = max_cache
        self.max_elements = max_elements
        self._by_chemsys: dict[frozenset[str], list[int]] = defaultdict(list)
        for i, c in enumerate(self.compositions):
            self._by_chemsys[frozenset(el.symbol for el in c.elements)].append(i)
        self.elements = frozenset(itertools.chain.from_iterable(self._by_chemsys))
        self.max_energy_cache = max_energy_cache
        self._pd_cache: dict[frozenset[str], PhaseDiagram | str] = {}
        self._energy_cache: dict[_CompositionKey, tuple[float, str | None]] = {}
        self._cached_max_elements = max_elements
        self._elemental_refs: dict[str, float] | None = None
        conv = {
            "energy_kind": energy_kind,
            "energy_source": None,
            "mlip": None,
            "relaxed": None,
            "reference_set": None,
            "correction": None,
            "chemical_potentials_source": None,
        }
        conv.update(dict(convention or {}))
        conv["max_elements"] = max_elements
        conv["n_entries"] = len(self.compositions)
        conv["fingerprint"] = self.fingerprint()
        self.convention: dict[str, Any] = conv

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_formation_energies(
        cls,
        compositions: Sequence[Any],
        e_form_per_atom: Sequence[float],
        entry_ids: Sequence[str] | None = None,
        chemical_potentials: Mapping[str, float] | None = None,
        convention: Mapping[str, Any] | None = None,
        max_elements: int | None = 8,
    ) -> ReferenceHull:
        """Hull from a formation-energy table (elemental references at 0 eV/atom).

        Parameters
        ----------
        compositions : sequence of Composition-like
            Compositions of the reference phases.
        e_form_per_atom : sequence of float
            Formation energies (eV/atom), e.g. MP-20's ``formation_energy_per_atom``.
        entry_ids : sequence of str, optional
            Identifiers.
        chemical_potentials : mapping, optional
            ``mu_a`` of the energy model whose *total* energies will be queried.
        convention : dict, optional
            Extra convention fields (``reference_set``, ``correction`` ...).
        max_elements : int or None
            See the class docstring.
        """
        comps = [_comp(c) for c in compositions]
        energies = [float(e) * c.num_atoms for c, e in zip(comps, e_form_per_atom, strict=True)]
        elements = sorted({el.symbol for c in comps for el in c.elements})
        from pymatgen.core import Composition

        comps += [Composition(el) for el in elements]
        energies += [0.0] * len(elements)
        ids = list(entry_ids) if entry_ids is not None else [f"ref-{i}" for i in
                                                               range(len(e_form_per_atom))]
        ids += [f"element-{el}" for el in elements]
        conv = {"energy_source": "formation-energy table"}
        conv.update(dict(convention or {}))
        return cls(comps, energies, "formation", ids, chemical_potentials, conv,
                   max_elements=max_elements)

    @classmethod
    def from_total_energies(
        cls,
        compositions: Sequence[Any],
        energies_per_atom: Sequence[float],
        entry_ids: Sequence[str] | None = None,
        chemical_potentials: Mapping[str, float] | None = None,
        convention: Mapping[str, Any] | None = None,
    ) -> ReferenceHull:
        """Hull from total energies per atom (DFT or MLIP) of reference phases.

        The reference set must contain elemental phases for every element of a queried
        chemical system; otherwise that system is not covered.
        """
        comps = [_comp(c) for c in compositions]
        energies = [float(e) * c.num_atoms for c, e in zip(comps, energies_per_atom,
                                                            strict=True)]
        return cls(comps, energies, "total", entry_ids, chemical_potentials, convention)

    @classmethod
    def from_entries(
        cls,
        entries: Iterable[Any],
        correction: str = "none",
        convention: Mapping[str, Any] | None = None,
    ) -> ReferenceHull:
        """Hull from pymatgen entries (``ComputedEntry``, ``ComputedStructureEntry``, ``PDEntry``).

        Parameters
        ----------
        entries : iterable of Entry
            Reference entries.
        correction : {"none", "MP2020", "as_is"}
            ``"none"``: uncorrected energies (``entry.uncorrected_energy``; Chemeleon2's
            convention); ``"MP2020"``: re-processed with ``MaterialsProject2020Compatibility``
            (entries it cannot process are dropped and counted); ``"as_is"``: ``entry.energy``.
        convention : dict, optional
            Extra convention fields.
        """
        if correction not in _CORRECTIONS:
            raise ValueError(f"correction must be one of {_CORRECTIONS}")
        entries = list(entries)
        n_in = len(entries)
        if correction == "MP2020":
            from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

            try:
                compat = MaterialsProject2020Compatibility(check_potcar=False)
            except TypeError:  # pragma: no cover - older pymatgen
                compat = MaterialsProject2020Compatibility()
            entries = compat.process_entries(entries, clean=True, on_error="ignore")
            energies = [e.energy for e in entries]
        elif correction == "none":
            energies = [getattr(e, "uncorrected_energy", e.energy) for e in entries]
        else:
            energies = [e.energy for e in entries]
        ids = [str(getattr(e, "entry_id", None) or f"ref-{i}") for i, e in enumerate(entries)]
        conv = {"correction": correction, "n_entries_in": n_in,
                "n_entries_dropped_by_correction": n_in - len(entries)}
        conv.update(dict(convention or {}))
        return cls([e.composition for e in entries], energies, "total", ids, None, conv)

    @classmethod
    def from_entries_file(
        cls,
        path: str | Path,
        correction: str = "none",
        convention: Mapping[str, Any] | None = None,
    ) -> ReferenceHull:
        """Hull from an entries file.

        Reads ``*.json``/``*.json.gz`` (a list or dict of entries, or a serialised
        ``PhaseDiagram``/``PatchedPhaseDiagram``) with monty's ``loadfn``, or a
        ``*.pkl``/``*.pkl.gz`` pickle of a (Patched)PhaseDiagram or a list of entries.
        """
        path = Path(path)
        name = path.name.lower()
        if ".pkl" in name or ".pickle" in name:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as fh:
                obj = pickle.load(fh)  # noqa: S301 - user-provided reference file
        else:
            from monty.serialization import loadfn

            obj = loadfn(path)
        if hasattr(obj, "all_entries"):
            entries = list(obj.all_entries)
        elif isinstance(obj, Mapping):
            entries = list(obj.values())
        else:
            entries = list(obj)
        conv = {"reference_set": str(path.name), "energy_source": "entries file"}
        conv.update(dict(convention or {}))
        return cls.from_entries(entries, correction=correction, convention=conv)

    @classmethod
    def from_structures(
        cls,
        structures: Sequence[Structure],
        energy_model: EnergyModel,
        relax: bool = False,
        relax_kwargs: Mapping[str, Any] | None = None,
        entry_ids: Sequence[str] | None = None,
        batch_size: int = 64,
        reference_set: str | None = None,
        progress: bool = False,
    ) -> ReferenceHull:
        """MLIP-consistent hull: reference structures evaluated with ``energy_model``.

        Structures the model fails on are left out; their number is recorded in the
        convention (``n_failed``). Save the result with :meth:`save` to reuse it.
        """
        ids = list(entry_ids) if entry_ids is not None else [f"ref-{i}" for i in
                                                               range(len(structures))]
        if relax:
            rr = energy_model.relax(structures, **dict(relax_kwargs or {}), progress=progress)
            e_pa = [r.energy_per_atom for r in rr]
            errors = [r.error for r in rr]
        else:
            # energies only: no forces, so no autograd graph over a whole batch (memory)
            res = energy_model.predict(structures, batch_size=batch_size, compute_forces=False,
                                       progress=progress)
            e_pa = [r.energy_per_atom for r in res]
            errors = [r.error for r in res]
        ok = [i for i, err in enumerate(errors) if err is None and np.isfinite(e_pa[i])]
        conv = {
            "energy_source": "mlip",
            "mlip": energy_model.info,
            "relaxed": bool(relax),
            "relax_kwargs": dict(relax_kwargs or {}) if relax else None,
            "reference_set": reference_set,
            "correction": "none",
            "n_failed": len(structures) - len(ok),
        }
        return cls.from_total_energies(
            [structures[i].composition for i in ok], [e_pa[i] for i in ok],
            [ids[i] for i in ok], convention=conv,
        )

    # ------------------------------------------------------------------ properties
    def fingerprint(self) -> str:
        """SHA-256 over the entries, energy kind and chemical potentials."""
        h = hashlib.sha256()
        h.update(self.energy_kind.encode())
        rows = sorted(
            (c.formula, round(float(e), 8)) for c, e in zip(self.compositions, self.energies,
                                                            strict=True)
        )
        h.update(json.dumps(rows).encode())
        h.update(json.dumps(sorted((k, round(v, 8)) for k, v in
                                   self.chemical_potentials.items())).encode())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.compositions)

    def __repr__(self) -> str:
        fp = self.convention["fingerprint"][:12]
        return (f"ReferenceHull({len(self)} entries, {self.energy_kind}, "
                f"{len(self.elements)} elements, fingerprint={fp})")

    def with_chemical_potentials(
        self, chemical_potentials: Mapping[str, float], source: str | None = None
    ) -> ReferenceHull:
        """Return a copy using ``chemical_potentials`` for total/formation conversions."""
        conv = dict(self.convention)
        conv.pop("fingerprint", None)
        conv["chemical_potentials_source"] = source
        return ReferenceHull(self.compositions, self.energies, self.energy_kind, self.entry_ids,
                             chemical_potentials, conv, self.max_cache,
                             max_elements=self.max_elements,
                             max_energy_cache=self.max_energy_cache)

    @property
    def elemental_references(self) -> dict[str, float]:
        """Lowest energy per atom of each element's elemental entries (eV/atom)."""
        if self._elemental_refs is None:
            refs: dict[str, float] = {}
            for chemsys, idx in self._by_chemsys.items():
                if len(chemsys) != 1:
                    continue
                (el,) = chemsys
                refs[el] = min(self.energies[i] / self.compositions[i].num_atoms for i in idx)
            self._elemental_refs = refs
        return self._elemental_refs

    # ------------------------------------------------------------------ phase diagrams
    def phase_diagram(self, elements: Iterable[str]) -> PhaseDiagram:
        """Return the (cached) phase diagram of a chemical system; raise if not covered."""
        pd = self._get_pd(frozenset(elements))
        if isinstance(pd, str):
            raise ValueError(pd)
        return pd

    def _system_reason(self, chemsys: frozenset[str]) -> str | None:
        """Why the hull of ``chemsys`` is not built (``None``: it is), without building it."""
        missing = sorted(chemsys - self.elements)
        if missing:
            return f"element(s) {', '.join(missing)} not covered by the reference hull"
        if self.max_elements is not None and len(chemsys) > self.max_elements:
            return (f"chemical system of {len(chemsys)} elements: hulls are built up to "
                    f"max_elements={self.max_elements}")
        return None

    def _system_entries(self, chemsys: frozenset[str]) -> list[int]:
        """Return the indices of the entries of every sub-system of ``chemsys``."""
        idx: list[int] = []
        els = sorted(chemsys)
        for r in range(1, len(els) + 1):
            for sub in itertools.combinations(els, r):
                idx.extend(self._by_chemsys.get(frozenset(sub), ()))
        return idx

    def _get_pd(self, chemsys: frozenset[str], cache: bool = True) -> PhaseDiagram | str:
        self._check_caches()
        cached = self._pd_cache.get(chemsys)
        if cached is not None:
            return cached
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core.periodic_table import Element

        result: PhaseDiagram | str | None = self._system_reason(chemsys)
        if result is None:
            els = sorted(chemsys)
            entries = [PDEntry(self.compositions[i], float(self.energies[i]),
                               name=self.entry_ids[i]) for i in self._system_entries(chemsys)]
            try:
                result = PhaseDiagram(entries, elements=[Element(e) for e in els])
            except Exception as exc:  # noqa: BLE001 - e.g. missing terminal entries
                result = f"cannot build hull for {'-'.join(els)}: {exc}"
        if not cache:
            return result
        if len(self._pd_cache) >= self.max_cache:
            self._pd_cache.pop(next(iter(self._pd_cache)))
        self._pd_cache[chemsys] = result
        return result

    def _check_caches(self) -> None:
        """Drop cached hulls and hull energies made under another ``max_elements``."""
        if self._cached_max_elements != self.max_elements:
            self._pd_cache.clear()
            self._energy_cache.clear()
            self._cached_max_elements = self.max_elements

    def clear_cache(self) -> None:
        """Forget cached phase diagrams and hull energies."""
        self._pd_cache.clear()
        self._energy_cache.clear()

    def _system_hull_energies(
        self, chemsys: frozenset[str], comps: Sequence[Composition], cache_pd: bool = True,
    ) -> tuple[list[float], list[str | None]]:
        """Hull energies per atom of compositions of one chemical system (in this process).

        Compositions with the same atomic fractions are queried once; a failed query is
        repeated for each composition so that its reason names it. ``cache_pd=False`` (the
        workers, which see each system once) does not keep the phase diagram.
        """
        pd = self._get_pd(chemsys, cache=cache_pd)
        if isinstance(pd, str):
            return [math.nan] * len(comps), [pd] * len(comps)
        vals: list[float] = []
        reasons: list[str | None] = []
        done: dict[_CompositionKey, float] = {}
        for c in comps:
            key = _composition_key(c)
            if key in done:
                vals.append(done[key])
                reasons.append(None)
                continue
            try:
                v = float(pd.get_hull_energy_per_atom(c))
            except Exception as exc:  # noqa: BLE001
                vals.append(math.nan)
                reasons.append(f"{_QUERY_FAILED}{exc}")
                continue
            done[key] = v
            vals.append(v)
            reasons.append(None)
        return vals, reasons

    # ------------------------------------------------------------------ queries
    def _mu(self) -> dict[str, float]:
        if self.energy_kind == "total":
            return {**self.elemental_references, **self.chemical_potentials}
        return dict(self.chemical_potentials)

    def hull_energies(
        self,
        compositions: Sequence[Any],
        n_jobs: int = 1,
        progress: bool = False,
    ) -> tuple[np.ndarray, list[str | None]]:
        """Hull energy per atom at each composition, on the hull's own energy scale.

        The lowest energy per atom of any combination of reference phases at that
        composition (:meth:`PhaseDiagram.get_hull_energy_per_atom` of the composition's
        chemical system): a total energy for ``energy_kind="total"``, a formation energy for
        ``"formation"``. It does not depend on any queried energy, so it can be computed
        before (or while) the energies are.

        Chemical systems whose hull is not cached yet are built in ``n_jobs`` worker processes
        (start method ``fork`` where available, ``$XTALFORGE_MP_START`` overrides), the most
        costly first; with ``n_jobs=1``, or fewer than :data:`MIN_PARALLEL_SYSTEMS` systems to
        build, in this process, where the phase diagrams stay cached. The two give the same
        numbers bit for bit: each system's hull is built and queried by the same code from
        the same entries. Results are cached by atomic fractions (``max_energy_cache``), so
        repeated queries, e.g. later rounds of an RL loop, reuse them.

        Parameters
        ----------
        compositions : sequence of Composition-like
            Query compositions (structures are accepted too: their composition is used).
        n_jobs : int
            Worker processes (``-1``: one per CPU core).
        progress : bool
            Progress bar over chemical systems.

        Returns
        -------
        values : numpy.ndarray
            Hull energy per atom (eV/atom); NaN where the composition is not covered.
        reasons : list of str or None
            Why a value is NaN (empty composition, element not in the hull, chemical system
            above ``max_elements``, hull not buildable, query failed); ``None`` when OK.
        """
        self._check_caches()
        comps = [_comp(c) for c in compositions]
        out = np.full(len(comps), np.nan)
        reasons: list[str | None] = [None] * len(comps)
        groups: dict[frozenset[str], list[int]] = defaultdict(list)
        keys: list[_CompositionKey | None] = [None] * len(comps)
        for i, c in enumerate(comps):
            if c.num_atoms == 0:
                reasons[i] = "empty composition"
                continue
            key = keys[i] = _composition_key(c)
            hit = self._energy_cache.get(key)
            if hit is not None:
                out[i], reasons[i] = hit
                continue
            groups[frozenset(el.symbol for el in c.elements)].append(i)
        todo: list[tuple[frozenset[str], list[int]]] = []
        for chemsys, idx in groups.items():
            reason = self._system_reason(chemsys)
            if reason is None:
                todo.append((chemsys, idx))
                continue
            for i in idx:
                reasons[i] = reason
                self._remember(keys[i], math.nan, reason)
        n_jobs = _resolve_jobs(n_jobs)
        n_cached = len(comps) - sum(len(idx) for idx in groups.values())
        logger.debug("hull energies: %d compositions, %d cached, %d chemical systems to build",
                     len(comps), n_cached, len(todo))
        if n_jobs > 1 and len(todo) >= MIN_PARALLEL_SYSTEMS:
            results = self._hull_energies_parallel(todo, comps, n_jobs, progress)
        else:
            results = self._hull_energies_serial(todo, comps, progress)
        for (_, idx), (vals, rs) in zip(todo, results, strict=True):
            for i, v, r in zip(idx, vals, rs, strict=True):
                out[i], reasons[i] = v, r
                if r is None or not r.startswith(_QUERY_FAILED):
                    self._remember(keys[i], v, r)
        return out, reasons

    def _remember(self, key: _CompositionKey | None, value: float, reason: str | None) -> None:
        if key is None or self.max_energy_cache <= 0:
            return
        if len(self._energy_cache) >= self.max_energy_cache:
            self._energy_cache.pop(next(iter(self._energy_cache)))
        self._energy_cache[key] = (value, reason)

    def _hull_energies_serial(
        self, todo: Sequence[tuple[frozenset[str], list[int]]], comps: Sequence[Composition],
        progress: bool,
    ) -> list[tuple[list[float], list[str | None]]]:
        it: Any = todo
        if progress and todo:
            from tqdm.auto import tqdm

            it = tqdm(todo, desc="hull", unit="system", leave=False)
        return [self._system_hull_energies(cs, [comps[i] for i in idx]) for cs, idx in it]

    def _hull_energies_parallel(
        self, todo: Sequence[tuple[frozenset[str], list[int]]], comps: Sequence[Composition],
        n_jobs: int, progress: bool,
    ) -> list[tuple[list[float], list[str | None]]]:
        """Build and query the hulls of ``todo`` in a pool of ``n_jobs`` worker processes.

        The pool lives for this call: forked workers see this hull as it is now (no copy is
        sent; under ``spawn`` it is pickled once per worker, without its caches). Systems are
        dealt, most entries and elements first, round-robin into chunks about eight per
        worker, so that large systems start early and the chunks cost about the same. If the
        pool breaks (a worker killed), what is left is done in this process.
        """
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        from xtalforge.screening.metrics import mp_start_method

        cost = {cs: (len(cs), len(self._system_entries(cs))) for cs, _ in todo}
        order = sorted(range(len(todo)), key=lambda k: cost[todo[k][0]], reverse=True)
        n_chunks = min(len(todo), n_jobs * 8)
        chunks = [order[k::n_chunks] for k in range(n_chunks)]
        results: list[tuple[list[float], list[str | None]] | None] = [None] * len(todo)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="hull", unit="system", leave=False)
        ctx = multiprocessing.get_context(mp_start_method())
        try:
            with ProcessPoolExecutor(max_workers=min(n_jobs, n_chunks), mp_context=ctx,
                                     initializer=_init_hull_worker,
                                     initargs=(self,)) as ex:
                futures = {
                    ex.submit(_hull_energy_chunk,
                              [(todo[k][0], [comps[i] for i in todo[k][1]]) for k in chunk]):
                    chunk for chunk in chunks}
                for fut in as_completed(futures):
                    for k, res in zip(futures[fut], fut.result(), strict=True):
                        results[k] = res
                    if bar is not None:
                        bar.update(len(futures[fut]))
        except BrokenProcessPool as exc:
            left = [k for k, r in enumerate(results) if r is None]
            logger.warning("hull worker pool broke (%s): building the %d remaining chemical "
                           "systems in this process", exc, len(left))
            for k in left:
                cs, idx = todo[k]
                results[k] = self._system_hull_energies(cs, [comps[i] for i in idx])
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the caches (phase diagrams are large; workers build their own)."""
        state = dict(self.__dict__)
        state["_pd_cache"] = {}
        state["_energy_cache"] = {}
        return state

    def e_above_hull(
        self,
        compositions: Sequence[Any],
        energies_per_atom: Sequence[float],
        kind: str = "total",
        return_reasons: bool = False,
        n_jobs: int = 1,
        progress: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, list[str | None]]:
        """Energy above the hull (eV/atom) of query compositions.

        The query energy, converted to the hull's scale, minus :meth:`hull_energies` at its
        composition (cached hull energies are reused).

        Parameters
        ----------
        compositions : sequence of Composition-like
            Query compositions (structures are accepted too: their composition is used).
        energies_per_atom : sequence of float
            Query energies per atom: total energies (``kind="total"``) on the energy model's
            scale, or formation energies (``kind="formation"``).
        kind : {"total", "formation"}
            Scale of ``energies_per_atom``. Conversions use ``E_form = E_total - sum_a mu_a x_a``
            (per atom) with the hull's chemical potentials.
        return_reasons : bool
            Also return one reason string (``None`` when OK) per query.
        n_jobs : int
            Worker processes for the hulls not cached yet (see :meth:`hull_energies`).
        progress : bool
            Progress bar over chemical systems.

        Returns
        -------
        numpy.ndarray or (numpy.ndarray, list)
            Energies above the hull; negative when below it (no clipping), NaN when the query
            energy is not finite or the chemical system is not covered (see reasons).
        """
        if kind not in ("total", "formation"):
            raise ValueError("kind must be 'total' or 'formation'")
        comps = [_comp(c) for c in compositions]
        e_q = np.asarray(energies_per_atom, dtype=float)
        if len(comps) != len(e_q):
            raise ValueError("compositions and energies differ in length")
        out = np.full(len(comps), np.nan)
        reasons: list[str | None] = [None] * len(comps)
        mu = self._mu() if kind != self.energy_kind else {}
        groups: dict[frozenset[str], list[int]] = defaultdict(list)
        for i, c in enumerate(comps):
            if not np.isfinite(e_q[i]):
                reasons[i] = "no finite energy"
                continue
            if c.num_atoms == 0:
                reasons[i] = "empty composition"
                continue
            groups[frozenset(el.symbol for el in c.elements)].append(i)
        query: list[int] = []
        for chemsys, idx in groups.items():
            if kind != self.energy_kind:
                absent = sorted(chemsys - set(mu))
                if absent:
                    for i in idx:
                        reasons[i] = (f"no chemical potential for {', '.join(absent)} to convert "
                                      f"{kind} energies to the hull's {self.energy_kind} scale")
                    continue
            query.extend(idx)
        e_hull, hull_reasons = self.hull_energies([comps[i] for i in query], n_jobs=n_jobs,
                                                  progress=progress)
        for k, i in enumerate(query):
            if hull_reasons[k] is not None:
                reasons[i] = hull_reasons[k]
                continue
            c = comps[i]
            e = e_q[i]
            if kind != self.energy_kind:
                shift = sum(mu[el.symbol] * c.get_atomic_fraction(el) for el in c.elements)
                e = e - shift if kind == "total" else e + shift
            out[i] = e - e_hull[k]
        if return_reasons:
            return out, reasons
        return out

    def formation_energy_per_atom(
        self, compositions: Sequence[Any], total_energies_per_atom: Sequence[float]
    ) -> np.ndarray:
        """Return per-atom ``E_total - sum_a mu_a x_a`` (NaN without chemical potentials)."""
        mu = self._mu() if self.energy_kind == "total" else self.chemical_potentials
        out = np.full(len(compositions), np.nan)
        for i, (c, e) in enumerate(zip(compositions, total_energies_per_atom, strict=True)):
            c = _comp(c)
            if all(el.symbol in mu for el in c.elements):
                out[i] = float(e) - sum(mu[el.symbol] * c.get_atomic_fraction(el)
                                        for el in c.elements)
        return out

    # ------------------------------------------------------------------ serialisation
    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (entries as formula dicts + energies)."""
        return {
            "@module": type(self).__module__,
            "@class": type(self).__name__,
            "energy_kind": self.energy_kind,
            "compositions": [{el.symbol: float(a) for el, a in c.items()}
                             for c in self.compositions],
            "energies": [float(e) for e in self.energies],
            "entry_ids": list(self.entry_ids),
            "chemical_potentials": dict(self.chemical_potentials),
            "convention": _jsonable(self.convention),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceHull:
        """Inverse of :meth:`as_dict`."""
        conv = dict(d.get("convention") or {})
        expected = conv.pop("fingerprint", None)
        hull = cls(d["compositions"], d["energies"], d["energy_kind"], d.get("entry_ids"),
                   d.get("chemical_potentials"), conv,
                   max_elements=conv.get("max_elements", 8))
        if expected is not None and expected != hull.convention["fingerprint"]:
            logger.warning("hull fingerprint changed on reload (%s -> %s)", expected,
                           hull.convention["fingerprint"])
        return hull

    def save(self, path: str | Path) -> Path:
        """Write to ``.json``, ``.json.gz`` or ``.parquet`` (convention in the metadata)."""
        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            d = self.as_dict()
            table = pa.table({
                "entry_id": d["entry_ids"],
                "composition": [json.dumps(c) for c in d["compositions"]],
                "energy": d["energies"],
            })
            meta = {k: v for k, v in d.items() if k not in ("compositions", "energies",
                                                          "entry_ids")}
            table = table.replace_schema_metadata({"xtalforge_hull": json.dumps(meta)})
            pq.write_table(table, path)
        else:
            text = json.dumps(self.as_dict())
            if path.name.endswith(".gz"):
                with gzip.open(path, "wt") as fh:
                    fh.write(text)
            else:
                path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReferenceHull:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            meta = json.loads(table.schema.metadata[b"xtalforge_hull"])
            cols = table.to_pydict()
            d = dict(meta, entry_ids=cols["entry_id"],
                     compositions=[json.loads(c) for c in cols["composition"]],
                     energies=cols["energy"])
            return cls.from_dict(d)
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt") as fh:
            return cls.from_dict(json.load(fh))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def _resolve_jobs(n_jobs: int | None) -> int:
    """``None``/0 -> 1, negative -> one per CPU core."""
    if not n_jobs:
        return 1
    if n_jobs < 0:
        import os

        return max(os.cpu_count() or 1, 1)
    return int(n_jobs)


_WORKER_HULL: ReferenceHull | None = None


def _init_hull_worker(hull: ReferenceHull) -> None:
    """Pool initializer: keep the hull (inherited under fork) for :func:`_hull_energy_chunk`."""
    global _WORKER_HULL
    _WORKER_HULL = hull


def _hull_energy_chunk(
    tasks: Sequence[tuple[frozenset[str], Sequence[Composition]]],
) -> list[tuple[list[float], list[str | None]]]:
    """Worker: hull energies of each ``(chemical system, compositions)`` task."""
    if _WORKER_HULL is None:  # pragma: no cover - only if the initializer did not run
        raise RuntimeError("hull worker started without its hull")
    return [_WORKER_HULL._system_hull_energies(cs, comps, cache_pd=False)
            for cs, comps in tasks]


def elemental_chemical_potentials(
    energy_model: EnergyModel,
    structures: Sequence[Structure],
    relax: bool = False,
    relax_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Elemental chemical potentials ``mu_a`` (eV/atom) from the given energy model.

    Parameters
    ----------
    energy_model : EnergyModel
        The model whose total energies will be queried against a formation-energy hull.
    structures : sequence of Structure
        Elemental structures (one or more per element, e.g. the ground-state polymorphs); the
        lowest energy per atom per element is taken.
    relax : bool
        Relax the elemental structures first.
    relax_kwargs : dict, optional
        Passed to :meth:`EnergyModel.relax`.

    Returns
    -------
    dict
        ``{element symbol: mu}``; elements whose every structure failed are absent.
    """
    for s in structures:
        if len(s.composition.elements) != 1:
            raise ValueError(f"not an elemental structure: {s.composition.reduced_formula}")
    if relax:
        res = energy_model.relax(structures, **dict(relax_kwargs or {}))
        e_pa = [r.energy_per_atom if r.ok else math.nan for r in res]
    else:
        e_pa = [r.energy_per_atom if r.ok else math.nan for r in energy_model.predict(structures)]
    mu: dict[str, float] = {}
    for s, e in zip(structures, e_pa, strict=True):
        if not np.isfinite(e):
            continue
        el = s.composition.elements[0].symbol
        mu[el] = min(mu.get(el, math.inf), float(e))
    return mu


def mlip_chemical_potentials(
    energy_model: EnergyModel,
    structures: Sequence[Structure],
    cache_path: str | Path | None = None,
    relax_kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, float], dict[str, str]]:
    """Chemical potentials of every element in ``structures``, with where each came from.

    ``mu_a`` is the lowest single-point energy per atom of the elemental structures among
    ``structures`` (Park & Walsh 2025, Methods, with CHGNet); an element without one there gets
    ASE's reference crystal relaxed with the same model; an element for which that fails is
    left out (its chemical systems are then not covered: NaN E_hull, counted as not
    metastable).

    Parameters
    ----------
    energy_model : EnergyModel
        The model whose total energies will be queried against a formation-energy hull.
    structures : sequence of Structure
        A reference set (e.g. all MP-20 structures); its elemental members and its elements
        are used.
    cache_path : str or Path, optional
        JSON cache, reused when it was written with the same model fingerprint.
    relax_kwargs : dict, optional
        Passed to :meth:`EnergyModel.relax` for the ASE fall-back crystals (default fmax 0.05,
        200 steps).

    Returns
    -------
    tuple of dict
        ``{element: mu}`` and ``{element: source}`` (sources also for left-out elements).
    """
    if cache_path is not None and Path(cache_path).is_file():
        d = json.loads(Path(cache_path).read_text())
        if d.get("energy_model_fingerprint") == energy_model.fingerprint:
            return d["mu"], d["source"]
    elem = [s for s in structures if len(s.composition.elements) == 1]
    mu: dict[str, float] = {}
    src: dict[str, str] = {}
    for s, r in zip(elem, energy_model.predict(elem, batch_size=64), strict=True):
        if r.ok and math.isfinite(r.energy_per_atom):
            el = s.composition.elements[0].symbol
            if r.energy_per_atom < mu.get(el, math.inf):
                mu[el] = float(r.energy_per_atom)
                src[el] = "elemental reference structure, single point"
    needed = {el.symbol for s in structures for el in s.composition.elements}
    missing = sorted(needed - set(mu))
    if missing:
        from ase.build import bulk
        from pymatgen.io.ase import AseAtomsAdaptor

        built, names = [], []
        for el in missing:
            try:
                built.append(AseAtomsAdaptor.get_structure(bulk(el)))
                names.append(el)
            except Exception as exc:  # noqa: BLE001 - ASE has no reference crystal for it
                src[el] = f"none ({type(exc).__name__}: no ASE reference crystal)"
        kw = {"fmax": 0.05, "steps": 200, **dict(relax_kwargs or {})}
        for el, r in zip(names, energy_model.relax(built, **kw), strict=True):
            if r.ok and math.isfinite(r.energy_per_atom):
                mu[el] = float(r.energy_per_atom)
                src[el] = "ASE reference crystal, relaxed"
            else:
                src[el] = f"none (relaxation failed: {r.error})"
    if cache_path is not None:
        cache_path = Path(cache_path)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f"{cache_path.name}.{id(mu)}.tmp")
        tmp.write_text(json.dumps(
            {"mu": mu, "source": src, "energy_model_fingerprint": energy_model.fingerprint},
            indent=1))
        tmp.replace(cache_path)  # atomic: concurrent readers never see a partial file
    return mu, src
