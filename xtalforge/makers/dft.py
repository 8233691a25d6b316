"""DFT validation of screened candidates with atomate2 (VASP, Materials Project settings).

The stage in one picture::

    screen docs ──> DFTValidationMaker.make()   (dynamic job: select top K, build flows)
                      │ Response(replace=Flow)
                      ├── per structure: [relax] -> MP GGA static -> [non-scf uniform, line]
                      │                                           -> [dielectric (DFPT)]
                      │                  -> dft collect <sid>  (writes the "dft" document)
                      └── dft summary   (counts; the stage's output)

Calculations (all atomate2 makers, custodian handlers on; the VASP command and POTCAR directory
come from atomate2's and pymatgen's settings: ``VASP_CMD`` in ``~/.atomate2.yaml`` or
``$ATOMATE2_VASP_CMD``, ``PMG_VASP_PSP_DIR`` in ``~/.config/.pmgrc.yaml`` or the environment):

* energy: :class:`~atomate2.vasp.jobs.mp.MPGGAStaticMaker` (MPStaticSet: PBE(+U), ENCUT 520,
  ISMEAR -5, ISPIN 2, LORBIT 11) on the as-generated or MLIP-relaxed structure, optionally after
  an MP double relaxation (``relax_maker=MPGGADoubleRelaxMaker()``, i.e. atomate2's
  ``MPGGADoubleRelaxStaticMaker``, as MatterGen and PLaID++ do);
* band structure: :class:`~atomate2.vasp.flows.core.BandStructureMaker` whose static is the MP
  static above (one static serves energy, gap and charge density) followed by non-SCF uniform
  and line-mode runs;
* electronic dielectric constant: atomate2's DFPT
  :class:`~atomate2.vasp.jobs.core.DielectricMaker` (LEPSILON) on the static's structure.

The collector computes, per structure, the DFT energy above the hull (the task document's
``entry`` as a ComputedStructureEntry, MaterialsProject2020Compatibility, pymatgen PhaseDiagram
of reference entries read from files), band gaps (static and band structure), ``eps_elec``
(mean eigenvalue of the ion-clamped ``epsilon_static`` tensor) and the figure of merit
``FoM = eps_elec * Eg`` (Cao & Wang 2025, Table I), and writes one ``stage="dft"`` document
linked to the atomate2 task documents by job uuid (``dft_task_uuids``; ``store.get_output(uuid)``).

Failures: a VASP job that fails leaves no output; the jobs that depend on it and the collector
have ``on_missing_references=OnMissing.NONE``, so they still run (dependent VASP jobs fail at
once without starting VASP, which also lets jobflow-remote ready the collector), and the
collector records ``"DFT failed: ..."`` on that structure while the others complete.

No VASP here: with ``when_no_vasp="store"`` (default) the ready-to-submit flows are stored on
each structure's ``dft`` document (``dft_status="pending: no VASP"``, ``dft_flow`` =
``flow.to_json()``) instead of failing; :func:`pending_dft_flows` loads them for submission.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jobflow import Flow, Job, Maker, OnMissing, Response

from xtalforge.makers.base import (
    RESOURCE_KEY,
    ROUTES_KEY,
    apply_routes,
    job_context,
    stage_job,
)
from xtalforge.stores.config import campaign_store
from xtalforge.stores.documents import STRUCTURE_STAGES, bulk_upsert, find, make_result_doc
from xtalforge.stores.jobgraph import iter_jobs, replaced_output

logger = logging.getLogger(__name__)

#: Stage name of the documents written here.
DFT_STAGE = "dft"
#: Statuses after which a structure is not recomputed (unless ``retry_failed``).
DONE_STATUSES = ("completed",)
FAILED_STATUSES = ("failed", "partial")
PENDING_NO_VASP = "pending: no VASP"
#: INCAR keys recorded on DFT documents (``dft_inputs``).
INCAR_KEYS = (
    "ENCUT",
    "EDIFF",
    "EDIFFG",
    "ALGO",
    "PREC",
    "ISMEAR",
    "SIGMA",
    "ISPIN",
    "LORBIT",
    "LASPH",
    "LREAL",
    "NSW",
    "IBRION",
    "ISIF",
    "ICHARG",
    "LCHARG",
    "LEPSILON",
    "LPEAD",
    "KSPACING",
    "LDAU",
    "LDAUU",
    "GGA",
    "METAGGA",
    "NBANDS",
)
#: Settings that MP2020-compatible energies require (checked on the static's inputs).
MP_STATIC_SETTINGS = {"ENCUT": 520.0}
POLICIES = ("msun_first", "ehull", "rank", "one_per_composition")


# --------------------------------------------------------------------------- VASP availability
def vasp_status(vasp_cmd: str | None = None) -> tuple[bool, str]:
    """Return ``(available, reason)``: is the VASP command on PATH and are POTCARs configured.

    Parameters
    ----------
    vasp_cmd
        Command to check; default atomate2's ``SETTINGS.VASP_CMD`` (``~/.atomate2.yaml``,
        ``$ATOMATE2_VASP_CMD``). The executable checked is the first token whose name contains
        ``vasp`` (``srun -n 64 vasp_std`` -> ``vasp_std``), else the first token.
    """
    from atomate2 import SETTINGS
    from pymatgen.core import SETTINGS as PMG_SETTINGS

    cmd = vasp_cmd or SETTINGS.VASP_CMD
    tokens = shlex.split(os.path.expandvars(cmd or ""))
    exe = next((t for t in tokens if "vasp" in os.path.basename(t).lower()), None)
    exe = exe or (tokens[0] if tokens else "")
    problems = []
    if not exe or shutil.which(exe) is None:
        problems.append(f"VASP command {cmd!r}: {exe or '(empty)'!r} not found on PATH")
    psp = os.environ.get("PMG_VASP_PSP_DIR") or PMG_SETTINGS.get("PMG_VASP_PSP_DIR")
    if not psp:
        problems.append("no POTCAR directory: PMG_VASP_PSP_DIR is not set")
    elif not Path(os.path.expanduser(str(psp))).is_dir():
        problems.append(f"PMG_VASP_PSP_DIR={psp} is not a directory")
    if problems:
        return False, "; ".join(problems)
    return True, f"VASP command {cmd!r} ({shutil.which(exe)}), POTCARs in {psp}"


def vasp_available(vasp_cmd: str | None = None) -> bool:
    """Return whether VASP can run here (see :func:`vasp_status`)."""
    return vasp_status(vasp_cmd)[0]


# --------------------------------------------------------------------------- selection
def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def select_candidates(
    records: Iterable[Mapping[str, Any]],
    policy: str = "msun_first",
    k: int | None = 10,
    one_per_composition: bool = True,
    max_e_above_hull: float | None = None,
    require_valid: bool = False,
) -> list[dict[str, Any]]:
    """Choose the structures to validate with DFT from screening records.

    Parameters
    ----------
    records
        Screening results merged with structure fields: ``structure_id``, ``e_above_hull``,
        ``msun``, ``sun``, ``unique``, ``novel``, ``rank``, ``reduced_formula`` (or
        ``formula``), ``struct_valid``, ``smact_valid``.
    policy
        ``"msun_first"``: mSUN, then SUN, then other unique-and-novel, then the rest, each by
        increasing MLIP energy above hull. ``"ehull"``: by MLIP energy above hull only.
        ``"rank"``: by the screening stage's ``rank`` (records without one are left out).
        ``"one_per_composition"``: ``"ehull"`` with ``one_per_composition=True``.
    k
        Budget: at most ``k`` structures (``None``: no limit).
    one_per_composition
        Keep only the best structure of each reduced formula.
    max_e_above_hull
        Leave out records above this MLIP energy above hull (eV/atom).
    require_valid
        Leave out records that are not structurally and SMACT valid.

    Returns
    -------
    list of dict
        Copies of the chosen records, best first, with ``dft_rank`` (0 = best). Records
        without a finite energy above hull are never chosen by the energy policies.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, not {policy!r}")
    if policy == "one_per_composition":
        policy, one_per_composition = "ehull", True
    pool = []
    for r in records:
        e = r.get("e_above_hull")
        if policy == "rank":
            if not isinstance(r.get("rank"), int) or isinstance(r.get("rank"), bool):
                continue
        elif not _finite(e):
            continue
        if max_e_above_hull is not None and not (_finite(e) and e <= max_e_above_hull):
            continue
        if require_valid and not (r.get("struct_valid", True) and r.get("smact_valid", True)):
            continue
        pool.append(r)

    def ehull(r: Mapping[str, Any]) -> float:
        e = r.get("e_above_hull")
        return float(e) if _finite(e) else math.inf

    def key(r: Mapping[str, Any]) -> tuple:
        tie = str(r.get("structure_id", ""))
        if policy == "rank":
            return (r["rank"], tie)
        if policy == "msun_first":
            un = bool(r.get("unique")) and bool(r.get("novel"))
            return (not bool(r.get("msun")), not bool(r.get("sun")), not un, ehull(r), tie)
        return (ehull(r), tie)

    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for r in sorted(pool, key=key):
        comp = r.get("reduced_formula") or r.get("formula")
        if one_per_composition and comp is not None:
            if comp in seen:
                continue
            seen.add(comp)
        out.append({**r, "dft_rank": len(out)})
        if k is not None and len(out) >= k:
            break
    return out


# --------------------------------------------------------------------------- hull
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


# --------------------------------------------------------------------------- collector
def _get(obj: Any, *path: str | int) -> Any:
    """Walk attributes / keys / indices of resolved task-document parts (objects or dicts)."""
    for p in path:
        if obj is None:
            return None
        if isinstance(p, int):
            try:
                obj = obj[p]
            except (IndexError, KeyError, TypeError):
                return None
        elif isinstance(obj, Mapping):
            obj = obj.get(p)
        else:
            obj = getattr(obj, p, None)
    return obj


def _incar_subset(incar: Any) -> dict[str, Any]:
    if incar is None:
        return {}
    d = dict(incar) if not isinstance(incar, Mapping) else dict(incar.items())
    return {k: d[k] for k in INCAR_KEYS if k in d}


def _tensor_mean_eig(t: Any) -> float | None:
    if t is None:
        return None
    a = np.asarray(t, dtype=float)
    if a.shape != (3, 3) or not np.all(np.isfinite(a)):
        return None
    return float(np.mean(np.linalg.eigvalsh(0.5 * (a + a.T))))


def _failed_msg(kind: str, task: Mapping[str, Any], extra: str = "") -> str:
    return (
        f"DFT failed: {kind} job {task.get('name')!r} ({task.get('uuid')}) produced no output "
        f"(the VASP job failed or was stopped; see its run directory){extra}"
    )


def _task_summary(kind: str, task: Mapping[str, Any], errors: list[str]) -> dict[str, Any] | None:
    """Return the resolved parts of one task, or ``None`` (and an error) when it failed."""
    out = task.get("output") or {}
    state = _get(out, "state")
    if state is None:
        errors.append(_failed_msg(kind, task))
        return None
    state = getattr(state, "value", state)
    if str(state) != "successful":
        errors.append(f"DFT failed: {kind} task {task.get('uuid')} finished in state {state!r}")
        return None
    return out


@dataclass
class DFTCollectMaker(Maker):
    """Collect one structure's atomate2 task documents into its ``dft`` document.

    Parameters
    ----------
    name
        Job name (the structure id is appended).
    hull_entries
        Files of reference entries for the hull (see :func:`load_reference_entries`), e.g.
        ``../shared/data/mp_hull/2023-02-07-mp-elemental-reference-entries.json.gz`` plus a
        file of compound entries of the chemical systems of interest.
    correction
        ``"MP2020"`` or ``"none"``.
    check_potcar
        MaterialsProject2020Compatibility's POTCAR check.
    process_reference
        Pass reference entries through the correction scheme too (for raw, uncorrected ones).
    """

    name: str = "dft collect"
    hull_entries: tuple[str, ...] = ()
    correction: str = "MP2020"
    check_potcar: bool = True
    process_reference: bool = False

    def hull_convention(self, fingerprint: str | None = None, n: int | None = None) -> dict:
        """Describe the hull the energies above hull are computed against."""
        return {
            "energy": "VASP total energy of the static (atomate2 task entry)",
            "correction": (
                "MaterialsProject2020Compatibility" if self.correction == "MP2020" else "none"
            ),
            "check_potcar": self.check_potcar,
            "reference_files": [Path(p).name for p in self.hull_entries],
            "reference_fingerprint": fingerprint,
            "n_reference_entries": n,
            "reference_processed": self.process_reference,
            "signed": True,
        }

    @stage_job(resource="cpu", on_missing_references=OnMissing.NONE)
    def make(self, structure_id: str, tasks: dict[str, Any], info: dict[str, Any]) -> dict:
        """Compute the DFT fields of one structure and write its ``dft`` document.

        Parameters
        ----------
        structure_id
            The structure.
        tasks
            ``{"static": {...}, "uniform": {...}, "line": {...}, "dielectric": {...},
            "relax": [...]}``; each ``{"uuid", "name", "output": {resolved task parts}}``.
            Parts of failed jobs resolve to ``None``.
        info
            Bookkeeping copied to the document (``dft_rank``, structure source, policy).

        Returns
        -------
        dict
            The document's DFT fields (``dft_status``, ``dft_e_above_hull`` ...).
        """
        ctx = job_context(store=campaign_store())
        doc = self.collect(structure_id, tasks, info)
        rec = make_result_doc(
            structure_id,
            campaign_id=ctx.campaign_id,
            stage=DFT_STAGE,
            job_uuid=ctx.job_uuid,
            job_name=ctx.job_name,
            errors=doc.pop("errors"),
            **doc,
        )
        bulk_upsert(ctx.structures, [rec])
        logger.info(
            "dft %s: %s (E_hull %s, gap %s, eps %s)",
            structure_id,
            rec["dft_status"],
            rec.get("dft_e_above_hull"),
            rec.get("dft_band_gap"),
            rec.get("dft_eps_elec"),
        )
        return {k: v for k, v in rec.items() if k not in ("created_at", "last_updated", "_id")}

    def collect(
        self, structure_id: str, tasks: Mapping[str, Any], info: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Return the DFT fields (without writing them); see :meth:`make`."""
        errors: list[str] = []
        warnings: list[str] = []
        uuids: dict[str, Any] = {}
        dirs: dict[str, Any] = {}
        inputs: dict[str, Any] = {}
        doc: dict[str, Any] = {
            "dft_energy_per_atom": None,
            "dft_corrected_energy_per_atom": None,
            "dft_formation_energy_per_atom": None,
            "dft_e_above_hull": None,
            "dft_decomposition": None,
            "dft_band_gap": None,
            "dft_band_gaps": {},
            "dft_is_gap_direct": None,
            "dft_eps_elec": None,
            "dft_eps_ionic": None,
            "dft_dielectric_tensor": None,
            "dft_fom": None,
        }
        for r in tasks.get("relax") or []:
            uuids.setdefault("relax", []).append(r["uuid"])
            if _get(r, "output", "state") is None:
                errors.append(_failed_msg("relax", r))
        static_t = tasks["static"]
        uuids["static"] = static_t["uuid"]
        static = _task_summary("static", static_t, errors)
        if static is not None:
            dirs["static"] = _get(static, "dir_name")
            inp = _get(static, "input")
            inputs["static"] = {
                **_incar_subset(_get(inp, "incar")),
                "nkpoints": _get(inp, "nkpoints"),
                "potcars": _get(inp, "potcar"),
                "calc_type": str(
                    getattr(_get(static, "calc_type"), "value", None) or _get(static, "calc_type")
                ),
            }
            for key, want in MP_STATIC_SETTINGS.items():
                got = inputs["static"].get(key)
                if got is None or not math.isclose(float(got), want):
                    warnings.append(
                        f"static {key}={got} differs from the MP setting {want}: the energy "
                        "above the MP hull may not be comparable"
                    )
            out = _get(static, "output")
            doc["dft_energy_per_atom"] = _get(out, "energy_per_atom")
            gap = _get(out, "bandgap")
            if gap is not None:
                doc["dft_band_gaps"]["static"] = float(gap)
            refs, fp = (
                load_reference_entries(self.hull_entries) if self.hull_entries else ([], None)
            )
            hull = dft_hull_analysis(
                _get(static, "entry"),
                _get(static, "structure") or _get(out, "structure"),
                refs,
                correction=self.correction,
                check_potcar=self.check_potcar,
                process_reference=self.process_reference,
                entry_id=f"{structure_id}/dft-static",
            )
            errors += hull["errors"]
            warnings += hull["warnings"]
            doc["dft_e_above_hull"] = hull["e_above_hull"]
            doc["dft_formation_energy_per_atom"] = hull["formation_energy_per_atom"]
            doc["dft_corrected_energy_per_atom"] = hull["corrected_energy_per_atom"]
            doc["dft_decomposition"] = hull["decomposition"]
            doc["dft_hull_convention"] = self.hull_convention(fp, len(refs))
        enabled = ["static"]
        ok = {"static": static is not None}
        for kind in ("uniform", "line"):
            t = tasks.get(kind)
            if t is None:
                continue
            enabled.append(kind)
            uuids.setdefault("band_structure", {})[kind] = t["uuid"]
            if static is None:
                errors.append(f"DFT skipped: band structure ({kind}) needs the static")
                ok[kind] = False
                continue
            res = _task_summary(f"band structure ({kind})", t, errors)
            ok[kind] = res is not None
            if res is None:
                continue
            dirs[kind] = _get(res, "dir_name")
            inputs[kind] = _incar_subset(_get(res, "input", "incar"))
            gap = _get(res, "output", "bandgap")
            if gap is not None:
                doc["dft_band_gaps"][kind] = float(gap)
            direct = _get(res, "is_gap_direct")
            if direct is not None and kind == "uniform":
                doc["dft_is_gap_direct"] = bool(direct)
        t = tasks.get("dielectric")
        if t is not None:
            enabled.append("dielectric")
            uuids["dielectric"] = t["uuid"]
            res = _task_summary("dielectric", t, errors) if static is not None else None
            if static is None:
                errors.append("DFT skipped: dielectric needs the static's structure")
            ok["dielectric"] = res is not None
            if res is not None:
                dirs["dielectric"] = _get(res, "dir_name")
                inputs["dielectric"] = _incar_subset(_get(res, "input", "incar"))
                eps = _get(res, "epsilon_static")
                doc["dft_eps_elec"] = _tensor_mean_eig(eps)
                doc["dft_eps_ionic"] = _tensor_mean_eig(_get(res, "epsilon_ionic"))
                doc["dft_dielectric_tensor"] = (
                    np.asarray(eps, dtype=float).tolist() if eps is not None else None
                )
                if doc["dft_eps_elec"] is None:
                    errors.append("dielectric: no epsilon_static in the task document")
                if "static" not in doc["dft_band_gaps"]:
                    gap = _get(res, "output", "bandgap")
                    if gap is not None:
                        doc["dft_band_gaps"]["dielectric"] = float(gap)
        gaps = doc["dft_band_gaps"]
        if gaps:
            # each k-point set bounds the true gap from above: take the smallest
            src = min(gaps, key=gaps.get)
            doc["dft_band_gap"] = gaps[src]
            doc["dft_band_gap_source"] = src
        if doc["dft_eps_elec"] is not None and doc["dft_band_gap"] is not None:
            doc["dft_fom"] = doc["dft_eps_elec"] * doc["dft_band_gap"]
        if not ok["static"]:
            status = "failed"
        elif all(ok.get(k, False) for k in enabled) and not any(
            e.startswith("DFT failed") for e in errors
        ):
            status = "completed"
        else:
            status = "partial"
        doc.update(
            {
                "dft_status": status,
                "dft_task_uuids": uuids,
                "dft_task_dirs": dirs,
                "dft_inputs": inputs,
                "dft_calculations": enabled,
                "dft_warnings": warnings,
                "errors": errors,
                **{k: v for k, v in info.items()},
            }
        )
        doc.setdefault("dft_hull_convention", self.hull_convention())
        return doc


@stage_job(resource="cpu", on_missing_references=OnMissing.NONE)
def dft_summary(results: dict[str, Any], pending: Sequence[str] = ()) -> dict[str, Any]:
    """Summarise the DFT stage (the stage's final output).

    ``results`` maps structure ids to collector outputs (``None`` when a collector failed).
    """
    statuses: dict[str, str] = {}
    for sid, r in results.items():
        statuses[sid] = (r or {}).get("dft_status") or "collector failed"
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    best = sorted(
        (r for r in results.values() if r and r.get("dft_fom") is not None),
        key=lambda r: -r["dft_fom"],
    )
    return {
        "stage": DFT_STAGE,
        "status": "finished",
        "n_structures": len(results),
        "counts": counts,
        "statuses": statuses,
        "pending": list(pending),
        "best_fom": [
            {"structure_id": r["structure_id"], "dft_fom": r["dft_fom"]} for r in best[:10]
        ],
    }


# --------------------------------------------------------------------------- the stage maker
@dataclass
class DFTValidationMaker(Maker):
    """Validate the top screened candidates with DFT (a dynamic job).

    Parameters
    ----------
    name
        Job name.
    static_maker
        The static (MP GGA settings: energy above hull, gap, charge density).
    relax_maker
        Optional relaxation before the static, e.g. ``MPGGADoubleRelaxMaker()``; with the
        default static this is atomate2's ``MPGGADoubleRelaxStaticMaker``. An
        ``MPGGADoubleRelaxStaticMaker`` is accepted too (its relax and static are used).
    band_structure_maker
        ``BandStructureMaker(static_maker=MPGGAStaticMaker())`` to compute band structures;
        its static is replaced by ``static_maker`` so that one static serves every property.
        ``None``: gap from the static only.
    dielectric_maker
        atomate2's DFPT ``DielectricMaker()`` for ``eps_elec`` and the figure of merit;
        ``None``: no dielectric.
    collect_maker
        The collector (hull reference files, correction scheme).
    policy, k, one_per_composition, max_e_above_hull, require_valid
        Candidate selection, see :func:`select_candidates`.
    structure_source
        ``"relaxed"``: the MLIP-relaxed structure when the screening stored one (a ``relaxed``
        document or a ``relaxed_structure`` field on the screening document), else the
        as-generated one; ``"generated"``: always the as-generated structure.
    when_no_vasp
        ``"store"``: when VASP or POTCARs are missing where this job runs (see
        :func:`vasp_status`), store the ready-to-submit flows on the ``dft`` documents
        (``dft_status="pending: no VASP"``) instead of running them; ``"run"``: build and run
        the flows anyway (VASP lives on another worker, or a mock); ``"error"``: fail.
    retry_failed
        Recompute structures whose ``dft`` document is ``failed`` or ``partial`` (completed
        ones are never recomputed; pending and interrupted ones always are).
    screen_stage
        Stage name of the screening documents.
    """

    name: str = "dft validation"
    static_maker: Maker = field(default_factory=lambda: _mp_static())
    relax_maker: Maker | None = None
    band_structure_maker: Maker | None = None
    dielectric_maker: Maker | None = None
    collect_maker: DFTCollectMaker = field(default_factory=DFTCollectMaker)
    policy: str = "msun_first"
    k: int | None = 10
    one_per_composition: bool = True
    max_e_above_hull: float | None = None
    require_valid: bool = False
    structure_source: str = "relaxed"
    when_no_vasp: str = "store"
    retry_failed: bool = False
    screen_stage: str = "screen"

    def __post_init__(self) -> None:
        if self.when_no_vasp not in ("store", "run", "error"):
            raise ValueError("when_no_vasp must be 'store', 'run' or 'error'")
        if self.structure_source not in ("relaxed", "generated"):
            raise ValueError("structure_source must be 'relaxed' or 'generated'")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}")

    # ------------------------------------------------------------------ flow building
    def _relax_and_static(self) -> tuple[Maker | None, Maker]:
        from atomate2.vasp.flows.mp import MPGGADoubleRelaxStaticMaker

        relax, static = self.relax_maker, self.static_maker
        if isinstance(relax, MPGGADoubleRelaxStaticMaker):
            relax, static = relax.relax_maker, relax.static_maker or static
        return relax, static

    def structure_flow(
        self,
        structure: Any,
        structure_id: str,
        campaign_id: str,
        info: Mapping[str, Any] | None = None,
    ) -> tuple[Flow, Job, dict[str, Any]]:
        """Build one structure's DFT flow (VASP jobs + its collector).

        Job names get the structure id appended (``"MP GGA static xf-..."``) so that queues,
        run directories and mocks can tell structures apart.

        Returns
        -------
        tuple
            ``(flow, collector_job, task_uuids)``.
        """
        relax_maker, static_maker = self._relax_and_static()
        jobs: list[Job | Flow] = []
        tasks: dict[str, Any] = {}
        dependent: list[Job] = []  # VASP jobs whose inputs come from another VASP job
        structure_in, prev_dir = structure, None
        if relax_maker is not None:
            relax = relax_maker.make(structure)
            jobs.append(relax)
            rjobs = list(iter_jobs(relax))
            dependent += rjobs[1:]
            tasks["relax"] = [
                {"uuid": j.uuid, "name": None, "output": {"state": j.output.state}} for j in rjobs
            ]
            structure_in, prev_dir = relax.output.structure, relax.output.dir_name
        if self.band_structure_maker is not None:
            bsm = self.band_structure_maker
            if hasattr(bsm, "static_maker"):
                bsm = dataclasses.replace(bsm, static_maker=static_maker)
            bs_flow = bsm.make(structure_in, prev_dir=prev_dir)
            bjobs = list(iter_jobs(bs_flow))
            static = bjobs[0]
            jobs.append(bs_flow)
            for j in bjobs[1:]:
                kind = "uniform" if j.name.endswith("uniform") else "line"
                tasks[kind] = {"uuid": j.uuid, "output": _nscf_refs(j)}
                dependent.append(j)
        else:
            static = static_maker.make(structure_in, prev_dir=prev_dir)
            jobs.append(static)
        if relax_maker is not None:
            dependent.append(static)
        tasks["static"] = {"uuid": static.uuid, "output": _static_refs(static)}
        if self.dielectric_maker is not None:
            diel = self.dielectric_maker.make(static.output.structure)
            jobs.append(diel)
            dependent.append(diel)
            tasks["dielectric"] = {"uuid": diel.uuid, "output": _dielectric_refs(diel)}
        vasp_flow = Flow(jobs, name=f"dft {structure_id}")
        vasp_flow.append_name(f" {structure_id}", dynamic=False)
        for j in dependent:  # a fresh config: decorated jobs may share one JobConfig object
            j.config = dataclasses.replace(j.config, on_missing_references=OnMissing.NONE)
        for j in iter_jobs(vasp_flow):
            j.metadata.update(
                {
                    RESOURCE_KEY: "vasp",
                    "campaign_id": campaign_id,
                    "structure_id": structure_id,
                    "xtalforge_stage": DFT_STAGE,
                }
            )
        names = {j.uuid: j.name for j in iter_jobs(vasp_flow)}
        for t in tasks.values():
            for tt in t if isinstance(t, list) else [t]:
                tt["name"] = names.get(tt["uuid"])
        collector = self.collect_maker.make(structure_id, tasks, dict(info or {}))
        collector.name = f"{self.collect_maker.name} {structure_id}"
        collector.metadata.update(
            {
                RESOURCE_KEY: "cpu",
                "campaign_id": campaign_id,
                "structure_id": structure_id,
                "xtalforge_stage": DFT_STAGE,
            }
        )
        flow = Flow([vasp_flow, collector], output=collector.output, name=f"dft {structure_id}")
        uuids = {
            k: ([x["uuid"] for x in v] if isinstance(v, list) else v["uuid"])
            for k, v in tasks.items()
        }
        return flow, collector, uuids

    # ------------------------------------------------------------------ the job
    @stage_job(resource="cpu", pass_manager_config=False)
    def make(self, screen_output: Any = None) -> Response | dict[str, Any]:
        """Select candidates from the campaign's screening documents and run their DFT.

        Parameters
        ----------
        screen_output
            The screening stage's output. The screening documents are read from the
            ``structures`` store; when the output lists ``sample_job_uuids`` (ScreenMaker), only
            the structures of those sampling jobs are candidates (e.g. the fine-tuned model's,
            not the base model's screened for comparison).

        Returns
        -------
        Response or dict
            ``Response(replace=Flow(per-structure DFT flows + summary), output=...)``; a plain
            summary dict when there is nothing to run or the flows were stored (no VASP).
        """
        ctx = job_context(store=campaign_store())
        cid = ctx.campaign_id
        crit: dict[str, Any] = {"campaign_id": cid, "stage": self.screen_stage}
        sample_uuids = (
            screen_output.get("sample_job_uuids") if isinstance(screen_output, Mapping) else None
        )
        if sample_uuids:  # only the structures that the given screening job screened
            crit["sample_job_uuid"] = {"$in": list(sample_uuids)}
        sdocs = find(ctx.structures, crit)
        records = self._records(ctx, sdocs)
        chosen = select_candidates(
            records,
            policy=self.policy,
            k=self.k,
            one_per_composition=self.one_per_composition,
            max_e_above_hull=self.max_e_above_hull,
            require_valid=self.require_valid,
        )
        sids = [r["structure_id"] for r in chosen]
        previous = {
            d["structure_id"]: d.get("dft_status")
            for d in find(
                ctx.structures,
                {"campaign_id": cid, "stage": DFT_STAGE, "structure_id": {"$in": sids}},
                properties=["structure_id", "dft_status"],
            )
        }
        skip = set(DONE_STATUSES) | (set() if self.retry_failed else set(FAILED_STATUSES))
        todo = [r for r in chosen if previous.get(r["structure_id"]) not in skip]
        skipped = [s for s in sids if previous.get(s) in skip]
        summary: dict[str, Any] = {
            "stage": DFT_STAGE,
            "campaign_id": cid,
            "n_screened": len(sdocs),
            "selected": sids,
            "skipped_done": skipped,
            "policy": self.policy,
            "k": self.k,
        }
        logger.info(
            "DFT validation of %s: %d screened, %d selected (%s, k=%s), %d already done",
            cid,
            len(sdocs),
            len(sids),
            self.policy,
            self.k,
            len(skipped),
        )
        if not todo:
            return {**summary, "status": "nothing to run", "n_flows": 0, "counts": {}}

        ok, reason = vasp_status(self._vasp_cmd())
        mode = self.when_no_vasp
        if not ok and mode == "error":
            raise RuntimeError(f"DFT validation needs VASP: {reason}")
        store_only = not ok and mode == "store"
        if not ok:
            logger.warning(
                "no VASP here (%s): %s",
                reason,
                "storing ready-to-submit DFT flows" if store_only else "running the flows anyway",
            )
        flows, collectors, docs = [], {}, []
        for r in todo:
            sid = r["structure_id"]
            structure, source, errs = r.pop("_structure"), r.pop("_source"), r.pop("_errors")
            info = {
                "dft_rank": r["dft_rank"],
                "dft_structure_source": source,
                "dft_selection": {
                    "policy": self.policy,
                    "k": self.k,
                    "one_per_composition": self.one_per_composition,
                },
                "mlip_e_above_hull": r.get("e_above_hull"),
            }
            if structure is None:
                docs.append(self._doc(ctx, sid, "failed", errs or ["no structure"], info))
                continue
            flow, coll, uuids = self.structure_flow(structure, sid, cid, info)
            flows.append(flow)
            collectors[sid] = coll.output
            status = PENDING_NO_VASP if store_only else "running"
            extra = {"dft_task_uuids": uuids, **info}
            if store_only:
                extra.update({"dft_flow": flow.to_json(), "dft_pending_reason": reason})
            docs.append(self._doc(ctx, sid, status, errs, extra))
        bulk_upsert(ctx.structures, docs, scope={"campaign_id": cid, "stage": DFT_STAGE})
        if store_only:
            return {
                **summary,
                "status": PENDING_NO_VASP,
                "reason": reason,
                "pending": list(collectors),
                "counts": {PENDING_NO_VASP: len(collectors)},
                "n_flows": len(flows),
                "submit_hint": "xtalforge.makers.dft.pending_dft_flows(store, campaign_id)",
            }
        if not flows:
            return {**summary, "status": "nothing to run", "n_flows": 0, "counts": {}}
        final = dft_summary(collectors)
        final.name = "dft summary"
        final.metadata.update({RESOURCE_KEY: "cpu", "campaign_id": cid})
        new = Flow([*flows, final], output=final.output, name=f"{self.name} flows")
        routes = ctx.metadata.get(ROUTES_KEY)
        if routes:
            apply_routes(new, routes)
        return Response(
            replace=new,
            output=replaced_output(**summary, status="running", n_flows=len(flows), vasp=reason),
        )

    def _vasp_cmd(self) -> str | None:
        kw = getattr(self.static_maker, "run_vasp_kwargs", None) or {}
        return kw.get("vasp_cmd")

    def _doc(self, ctx, sid: str, status: str, errors: Sequence[str], extra: Mapping) -> dict:
        return make_result_doc(
            sid,
            campaign_id=ctx.campaign_id,
            stage=DFT_STAGE,
            job_uuid=ctx.job_uuid,
            job_name=ctx.job_name,
            errors=list(errors),
            dft_status=status,
            **extra,
        )

    def _records(self, ctx, sdocs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Merge screening documents with their structures (formula, validity, structure)."""
        from pymatgen.core import Structure

        if not sdocs:
            return []
        sids = [d["structure_id"] for d in sdocs]
        base: dict[str, dict[str, dict]] = {}
        for d in find(
            ctx.structures,
            {
                "campaign_id": ctx.campaign_id,
                "structure_id": {"$in": sids},
                "stage": {"$in": list(STRUCTURE_STAGES)},
            },
        ):
            base.setdefault(d["structure_id"], {})[d["stage"]] = d
        records = []
        for s in sdocs:
            sid = s["structure_id"]
            stages = base.get(sid, {})
            gen = stages.get("sample") or stages.get("dataset")
            rec = {k: v for k, v in s.items() if k not in ("_id", "last_updated")}
            for key in ("formula", "reduced_formula", "valid"):
                if key not in rec and gen is not None:
                    rec[key] = gen.get(key)
            structure, source, errs = None, None, []
            if self.structure_source == "relaxed":
                if stages.get("relaxed") and stages["relaxed"].get("structure"):
                    structure, source = stages["relaxed"]["structure"], "relaxed"
                elif s.get("relaxed_structure"):
                    structure, source = s["relaxed_structure"], "relaxed"
            if structure is None and gen is not None and gen.get("structure"):
                structure, source = gen["structure"], gen["stage"]
            if structure is None:
                errs.append(f"no stored structure for {sid}")
            rec["_structure"] = Structure.from_dict(structure) if structure else None
            rec["_source"] = source
            rec["_errors"] = errs
            if rec.get("reduced_formula") is None and rec["_structure"] is not None:
                rec["reduced_formula"] = rec["_structure"].composition.reduced_formula
            records.append(rec)
        return records


def _mp_static() -> Maker:
    from atomate2.vasp.jobs.mp import MPGGAStaticMaker

    return MPGGAStaticMaker()


def _common_refs(o: Any) -> dict[str, Any]:
    """Return references to the fields that every VASP task document output has."""
    return {"state": o.state, "dir_name": o.dir_name, "input": o.input, "output": o.output}


def _static_refs(j: Job) -> dict[str, Any]:
    o = j.output
    return {**_common_refs(o), "calc_type": o.calc_type, "entry": o.entry,
            "structure": o.structure}


def _nscf_refs(j: Job) -> dict[str, Any]:
    o = j.output
    return {**_common_refs(o), "is_gap_direct": o.calcs_reversed[0].output.is_gap_direct}


def _dielectric_refs(j: Job) -> dict[str, Any]:
    o = j.output
    out = o.calcs_reversed[0].output
    return {**_common_refs(o), "epsilon_static": out.epsilon_static,
            "epsilon_ionic": out.epsilon_ionic}


# --------------------------------------------------------------------------- configuration
def dft_maker_from_config(config: Mapping[str, Any] | None = None) -> DFTValidationMaker:
    """Build a :class:`DFTValidationMaker` from a campaign YAML's ``dft`` section.

    Keys (all optional): the maker's plain fields (``name``, ``k``, ``policy``,
    ``one_per_composition``, ``max_e_above_hull``, ``require_valid``, ``structure_source``,
    ``when_no_vasp``, ``retry_failed``, ``screen_stage``) and, for the nested atomate2 makers,
    ``relax`` (bool: MP double relaxation before the static), ``band_structure`` (bool),
    ``dielectric`` (bool: DFPT), ``hull_entries`` (list of files), ``correction``
    (``MP2020``/``none``), ``check_potcar`` and ``static_incar`` (INCAR updates of the static,
    e.g. ``{NCORE: 4}``; MP-compatibility-relevant keys should stay untouched).

    Raises
    ------
    ValueError
        On unknown keys.
    """
    from atomate2.vasp.flows.core import BandStructureMaker
    from atomate2.vasp.flows.mp import MPGGADoubleRelaxMaker
    from atomate2.vasp.jobs.core import DielectricMaker
    from atomate2.vasp.jobs.mp import MPGGAStaticMaker

    c = dict(config or {})
    nested = {
        "relax",
        "band_structure",
        "dielectric",
        "hull_entries",
        "correction",
        "check_potcar",
        "static_incar",
    }
    plain = {
        f.name
        for f in dataclasses.fields(DFTValidationMaker)
        if f.name not in ("static_maker", "relax_maker", "band_structure_maker",
                          "dielectric_maker", "collect_maker")
    }  # fmt: skip
    unknown = set(c) - nested - plain
    if unknown:
        raise ValueError(f"unknown dft settings {sorted(unknown)}; known: {sorted(nested | plain)}")
    static = MPGGAStaticMaker()
    if c.get("static_incar"):
        gen = static.input_set_generator
        gen.user_incar_settings = {**(gen.user_incar_settings or {}), **c["static_incar"]}
    return DFTValidationMaker(
        static_maker=static,
        relax_maker=MPGGADoubleRelaxMaker() if c.get("relax") else None,
        band_structure_maker=(
            BandStructureMaker(static_maker=MPGGAStaticMaker()) if c.get("band_structure") else None
        ),
        dielectric_maker=DielectricMaker() if c.get("dielectric") else None,
        collect_maker=DFTCollectMaker(
            hull_entries=tuple(str(p) for p in c.get("hull_entries") or ()),
            correction=c.get("correction", "MP2020"),
            check_potcar=bool(c.get("check_potcar", True)),
        ),
        **{k: c[k] for k in plain if k in c},
    )


def pending_dft_flows(store: Any, campaign_id: str) -> dict[str, Flow]:
    """Return ``{structure_id: Flow}`` of the DFT flows stored because VASP was missing.

    Submit them where VASP runs (``xtalforge.flows.remote.submit_campaign(flow, ...)`` or
    ``run_locally``); each flow's collector writes the structure's ``dft`` document.
    """
    from xtalforge.stores.config import additional

    store.connect()
    docs = find(
        additional(store, "structures"),
        {"campaign_id": campaign_id, "stage": DFT_STAGE, "dft_status": PENDING_NO_VASP},
        properties=["structure_id", "dft_flow"],
    )
    return {d["structure_id"]: Flow.from_dict(json.loads(d["dft_flow"])) for d in docs}


def dft_status_line(store: Any, campaign_id: str) -> str | None:
    """Return a one-line account of a campaign's DFT stage (``None`` when it has none).

    E.g. ``"DFT: no VASP here (VASP command 'vasp_std': ... not found on PATH; ...): 3
    ready-to-submit DFT flows stored on the dft documents (pending_dft_flows)"`` or
    ``"DFT: 2 completed, 1 failed"``.
    """
    from xtalforge.stores.config import additional

    store.connect()
    docs = find(
        additional(store, "structures"),
        {"campaign_id": campaign_id, "stage": DFT_STAGE},
        properties=["dft_status", "dft_pending_reason"],
    )
    if not docs:
        return None
    counts: dict[str, int] = {}
    for d in docs:
        counts[d.get("dft_status") or "?"] = counts.get(d.get("dft_status") or "?", 0) + 1
    pending = counts.pop(PENDING_NO_VASP, 0)
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    if pending:
        reason = next(
            (d.get("dft_pending_reason") for d in docs if d.get("dft_pending_reason")), ""
        )
        parts.append(
            f"no VASP here ({reason}): {pending} ready-to-submit DFT flows stored on the dft "
            "documents (xtalforge.makers.dft.pending_dft_flows)"
        )
    return "DFT: " + ", ".join(parts)
