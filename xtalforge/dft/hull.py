"""DFT energies above the hull: MP-corrected (VASP) and self-consistent (one engine, one setting).

Two conventions, both recorded in ``hull_convention`` on every ``dft`` document:

``"mp2020"`` (VASP)
    The static's entry, MaterialsProject2020Compatibility-corrected, against reference entries
    on MP's corrected scale (:func:`dft_hull_analysis`).
``"self-consistent"`` (CP2K, or any engine whose energies are not on MP's scale)
    The candidate against the phases that sit on the MP-20 hull in its chemical system and the
    elemental ground states, each recomputed with the same engine and the same settings
    (:func:`competing_phases`, :func:`self_consistent_hull`). No correction is applied: energies
    of one code and one set of settings are compared with each other only.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=8)
def _load_entries_cached(paths: tuple[str, ...]) -> tuple[list, str]:
    from monty.serialization import loadfn
    from pymatgen.entries.computed_entries import ComputedEntry

    entries: list = []
    h = hashlib.sha256()
    for p in paths:
        path = Path(p).expanduser()
        h.update(path.read_bytes())
        obj = loadfn(path)
        if isinstance(obj, Mapping) and "entries" in obj and not hasattr(obj, "energy"):
            obj = obj["entries"]
        if hasattr(obj, "all_entries"):  # a PhaseDiagram / PatchedPhaseDiagram
            obj = list(obj.all_entries)
        items = obj.values() if isinstance(obj, Mapping) else obj
        for e in items:
            if isinstance(e, Mapping):
                from monty.json import MontyDecoder

                e = MontyDecoder().process_decoded(e)
            if not isinstance(e, ComputedEntry):
                raise TypeError(f"{path}: expected ComputedEntry objects, got {type(e).__name__}")
            entries.append(e)
    return entries, h.hexdigest()[:16]


def load_reference_entries(paths: Sequence[str | os.PathLike]) -> tuple[list, str]:
    """Load reference entries (``ComputedEntry`` / ``ComputedStructureEntry``) from files.

    Each file (pymatgen ``loadfn``: JSON, JSON.gz, YAML) holds a list or a dict of entries (e.g.
    matbench-discovery's 89 MP elemental ground states), a dict with ``"entries"``, or a
    (Patched)PhaseDiagram. Returns ``(entries, fingerprint)``.
    """
    return _load_entries_cached(tuple(str(Path(p).expanduser().resolve()) for p in paths))


def dft_hull_analysis(
    entry: Any,
    structure: Any,
    reference_entries: Sequence[Any],
    correction: str = "MP2020",
    check_potcar: bool = True,
    process_reference: bool = False,
    entry_id: str | None = None,
) -> dict[str, Any]:
    """Return the DFT energy above the reference hull of one task entry.

    Parameters
    ----------
    entry
        The task document's ``entry`` (ComputedEntry or its dict): uncorrected energy and the
        ``parameters`` (run type, Hubbard U, POTCARs) the compatibility scheme checks.
    structure
        The calculation's final structure; with it the entry becomes a ComputedStructureEntry
        (MP2020 needs it to tell oxides, peroxides and superoxides apart).
    reference_entries
        Entries on the same (corrected) scale: MP entries are already MP2020-corrected.
    correction
        ``"MP2020"`` (MaterialsProject2020Compatibility) or ``"none"``.
    check_potcar
        Passed to MaterialsProject2020Compatibility.
    process_reference
        Also pass the reference entries through the compatibility scheme (raw entries).
    entry_id
        Id given to the entry.

    Returns
    -------
    dict
        ``e_above_hull`` (eV/atom, signed: negative = below the reference hull),
        ``formation_energy_per_atom``, ``corrected_energy_per_atom``, ``correction_per_atom``,
        ``decomposition`` (``{formula: fraction}``), ``errors``, ``warnings``.
    """
    from monty.json import MontyDecoder
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Structure
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    out: dict[str, Any] = {
        "e_above_hull": None,
        "formation_energy_per_atom": None,
        "corrected_energy_per_atom": None,
        "correction_per_atom": None,
        "decomposition": None,
        "errors": [],
        "warnings": [],
    }
    if isinstance(entry, Mapping):
        entry = MontyDecoder().process_decoded(dict(entry))
    if isinstance(structure, Mapping):
        structure = Structure.from_dict(structure)
    if entry is None:
        out["errors"].append("hull: the static task document has no entry")
        return out
    if structure is not None:
        entry = ComputedStructureEntry(
            structure,
            entry.uncorrected_energy,
            parameters=dict(entry.parameters or {}),
            data=dict(entry.data or {}),
            entry_id=entry_id or entry.entry_id,
        )
    refs = list(reference_entries)
    if correction == "MP2020":
        from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

        compat = MaterialsProject2020Compatibility(check_potcar=check_potcar)
        processed = compat.process_entry(entry)
        if processed is None:
            out["errors"].append(
                "hull: MaterialsProject2020Compatibility rejected the entry (run type "
                f"{entry.parameters.get('run_type')!r}, Hubbard "
                f"{entry.parameters.get('hubbards')}, POTCARs "
                f"{[p.get('titel') for p in entry.parameters.get('potcar_spec') or []]})"
            )
            return out
        entry = processed
        if process_reference:
            refs = [e for e in compat.process_entries(refs, verbose=False) if e is not None]
    elif correction != "none":
        raise ValueError("correction must be 'MP2020' or 'none'")
    out["corrected_energy_per_atom"] = entry.energy_per_atom
    out["correction_per_atom"] = entry.correction_per_atom
    elements = {el.symbol for el in entry.composition.elements}
    if not refs:
        out["errors"].append("hull: no reference entries configured (hull_entries)")
        return out
    chem = [e for e in refs if {el.symbol for el in e.composition.elements} <= elements]
    have = {e.composition.elements[0].symbol for e in chem if e.composition.is_element}
    missing = sorted(elements - have)
    if missing:
        out["errors"].append(
            f"hull: the reference hull lacks the chemical system {'-'.join(sorted(elements))} "
            f"(no elemental reference for {', '.join(missing)})"
        )
        return out
    if len(elements) > 1 and not any(len(e.composition.elements) > 1 for e in chem):
        out["warnings"].append(
            f"hull: no compound reference entries in {'-'.join(sorted(elements))}: the energy "
            "above hull is relative to the elements only"
        )
    pd = PhaseDiagram(chem)
    decomp, ehull = pd.get_decomp_and_e_above_hull(entry, allow_negative=True)
    out["e_above_hull"] = float(ehull)
    out["formation_energy_per_atom"] = float(pd.get_form_energy_per_atom(entry))
    out["decomposition"] = {
        d.composition.reduced_formula: float(frac) for d, frac in (decomp or {}).items()
    }
    return out


# --------------------------------------------------------------------------- self-consistent hull
#: Tolerance (eV/atom) for a phase to count as on the MP-20 hull.
ON_HULL_TOL = 1e-6


def structure_key(structure: Any) -> str:
    """Return a short hash of a structure (species, lattice and fractional coordinates, rounded).

    Two calculations with the same ``structure_key`` and the same settings fingerprint are the
    same calculation: the cache of reference energies is keyed by the pair.
    """
    from pymatgen.core import Structure

    s = Structure.from_dict(structure) if isinstance(structure, Mapping) else structure
    blob = {
        "species": [str(sp) for sp in s.species],
        "lattice": [[round(float(x), 4) for x in row] for row in s.lattice.matrix],
        "frac": [[round(float(x) % 1.0, 4) % 1.0 for x in site.frac_coords] for site in s],
    }
    return hashlib.sha256(repr(blob).encode()).hexdigest()[:16]


def reference_key(structure: Any, settings_fingerprint: str) -> str:
    """Return the cache key of one reference-phase calculation: (structure, settings)."""
    return f"{structure_key(structure)}-{settings_fingerprint}"


@functools.lru_cache(maxsize=2)
def _mp20_tables(data_dir: str) -> tuple[Any, dict[str, str]]:
    import pandas as pd
    from pymatgen.core import Composition

    d = Path(data_dir)
    allf = pd.read_csv(d / "mp20_all_formation_energies_ehull.csv.gz")
    allf["elements_set"] = allf["pretty_formula"].map(
        lambda f: frozenset(el.symbol for el in Composition(f).elements)
    )
    cifs: dict[str, str] = {}
    for name in ("val.csv.gz", "test.csv.gz"):
        if (d / name).is_file():
            t = pd.read_csv(d / name, usecols=["material_id", "cif"])
            cifs.update(zip(t["material_id"], t["cif"], strict=True))
    return allf, cifs


@functools.lru_cache(maxsize=4096)
def _parse_cif(cif: str) -> Any:
    import warnings

    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def competing_phases(
    elements: Iterable[str], mp20_dir: str | os.PathLike, tol: float = ON_HULL_TOL
) -> dict[str, Any]:
    """Return the phases on the MP-20 hull in a chemical system (all its subsystems included).

    Parameters
    ----------
    elements
        The chemical system (e.g. a candidate's elements).
    mp20_dir
        Folder of the MP-20 data (``mp20_all_formation_energies_ehull.csv.gz`` with the
        MP-20-only hull distance of all 45,229 entries, and ``val.csv.gz``/``test.csv.gz`` with
        structures).
    tol
        A phase is on the hull when its MP-20-only energy above hull is ``<= tol``.

    Returns
    -------
    dict
        ``phases``: list of ``{material_id, formula, structure (pymatgen dict), elemental}``
        sorted by (number of elements, formula), elemental ground states first;
        ``missing``: the hull phases whose structure is not in the data (MP-20's train split
        is distributed without positions), ``{material_id, formula, split}``;
        ``chemsys``: ``"A-B"``.
    """
    els = frozenset(elements)
    allf, cifs = _mp20_tables(str(Path(mp20_dir).expanduser().resolve()))
    on = allf[allf["e_hull_mp20_only"] <= tol]
    on = on[on["elements_set"].map(lambda s: s <= els)]
    phases, missing = [], []
    for row in on.itertuples(index=False):
        cif = cifs.get(row.material_id)
        if cif is None:
            missing.append(
                {"material_id": row.material_id, "formula": row.pretty_formula, "split": row.split}
            )
            continue
        s = _parse_cif(cif)
        phases.append(
            {
                "material_id": row.material_id,
                "formula": s.composition.reduced_formula,
                "structure": s.as_dict(),
                "elemental": len(row.elements_set) == 1,
                "n_elements": len(row.elements_set),
            }
        )
    phases.sort(key=lambda p: (p["n_elements"], p["formula"]))
    return {"chemsys": "-".join(sorted(els)), "phases": phases, "missing": missing}


def self_consistent_hull(
    composition: Any,
    energy_per_atom: float,
    references: Sequence[Mapping[str, Any]],
    entry_id: str | None = None,
) -> dict[str, Any]:
    """Return the energy above the hull built from references computed like the candidate.

    Parameters
    ----------
    composition
        The candidate's composition (pymatgen Composition, formula or dict).
    energy_per_atom
        Its total energy per atom (eV/atom) from the engine.
    references
        ``{"formula" | "composition", "energy_per_atom", "material_id"}`` of the competing
        phases (and elemental ground states) computed with the same engine and settings.
        References without a finite energy are left out (and named in ``errors``).
    entry_id
        Id of the candidate's entry.

    Returns
    -------
    dict
        ``e_above_hull`` (signed: negative = below the hull of the references),
        ``formation_energy_per_atom``, ``decomposition``, ``n_references``, ``errors``,
        ``warnings``.
    """
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    out: dict[str, Any] = {
        "e_above_hull": None,
        "formation_energy_per_atom": None,
        "decomposition": None,
        "n_references": 0,
        "errors": [],
        "warnings": [],
    }
    comp = Composition(composition)
    if energy_per_atom is None or not math.isfinite(float(energy_per_atom)):
        out["errors"].append("hull: the candidate has no finite DFT energy")
        return out
    entry = PDEntry(comp, float(energy_per_atom) * comp.num_atoms, name=entry_id)
    els = {el.symbol for el in comp.elements}
    refs = []
    for r in references:
        rc = Composition(r.get("composition") or r.get("formula"))
        e = r.get("energy_per_atom")
        if not {el.symbol for el in rc.elements} <= els:
            continue
        if e is None or not math.isfinite(float(e)):
            out["errors"].append(
                f"hull: reference {r.get('formula')} ({r.get('material_id')}) has no DFT energy"
            )
            continue
        refs.append(PDEntry(rc, float(e) * rc.num_atoms, name=r.get("material_id")))
    have = {e.composition.elements[0].symbol for e in refs if e.composition.is_element}
    missing = sorted(els - have)
    if missing:
        out["errors"].append(
            f"hull: no computed elemental reference for {', '.join(missing)} in "
            f"{'-'.join(sorted(els))}"
        )
        return out
    out["n_references"] = len(refs)
    pd_ = PhaseDiagram(refs)
    decomp, ehull = pd_.get_decomp_and_e_above_hull(entry, allow_negative=True)
    out["e_above_hull"] = float(ehull)
    out["formation_energy_per_atom"] = float(pd_.get_form_energy_per_atom(entry))
    out["decomposition"] = {
        (d.name or d.composition.reduced_formula): float(f) for d, f in (decomp or {}).items()
    }
    return out
