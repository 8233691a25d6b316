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
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jobflow import Flow, Job, Maker, OnMissing, Response

from xtalforge.dft.cp2k import Cp2kSettings, configure_cp2k, cp2k_status
from xtalforge.dft.hull import (
    competing_phases,
    dft_hull_analysis,
    load_reference_entries,
    reference_key,
    self_consistent_hull,
)
from xtalforge.dft.selection import POLICIES, select_candidates
from xtalforge.dft.tasks import (
    failed_msg,
    get_path,
    incar_subset,
    task_summary,
    tensor_mean_eig,
    vasp_available,
    vasp_status,
)
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
from xtalforge.stores.schemas import DFTResultOutput, DFTStageOutput

logger = logging.getLogger(__name__)

#: Stage name of the documents written here.
DFT_STAGE = "dft"
#: Statuses after which a structure is not recomputed (unless ``retry_failed``).
DONE_STATUSES = ("completed",)
FAILED_STATUSES = ("failed", "partial")
PENDING_NO_VASP = "pending: no VASP"
PENDING_NO_CP2K = "pending: no CP2K"
#: Stage of the cached reference-phase energies of self-consistent DFT hulls.
REFERENCE_STAGE = "dft_reference"
ENGINES = ("vasp", "cp2k")
#: Settings that MP2020-compatible energies require (checked on the static's inputs).
MP_STATIC_SETTINGS = {"ENCUT": 520.0}

__all__ = [
    "DFTCollectMaker",
    "DFTValidationMaker",
    "POLICIES",
    "dft_hull_analysis",
    "dft_maker_from_config",
    "dft_status_line",
    "load_reference_entries",
    "pending_dft_flows",
    "select_candidates",
    "vasp_available",
    "vasp_status",
]


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
    engine
        ``"vasp"`` (MP2020-corrected energies against MP's scale) or ``"cp2k"`` (the
        self-consistent hull of references computed with the same settings).
    settings
        The engine's settings, recorded on every document (``dft_engine_settings``); for CP2K
        :meth:`Cp2kSettings.record` with its fingerprint.
    """

    name: str = "dft collect"
    hull_entries: tuple[str, ...] = ()
    correction: str = "MP2020"
    check_potcar: bool = True
    process_reference: bool = False
    engine: str = "vasp"
    settings: dict | None = None

    def hull_convention(self, fingerprint: str | None = None, n: int | None = None) -> dict:
        """Describe the hull the energies above hull are computed against.

        ``convention`` is ``"mp2020"`` (VASP path: corrected energies on MP's scale) or
        ``"self-consistent"`` (CP2K path: every phase computed with one engine and one set of
        settings); ``conventions`` names both, so that tables never mix them.
        """
        conventions = {
            "mp2020": "VASP static, MaterialsProject2020Compatibility, against MP's corrected "
            "entries",
            "self-consistent": "candidate and the MP-20 hull phases of its chemical system "
            "(elemental ground states included) recomputed with one engine and one settings "
            "fingerprint; no corrections",
        }
        if self.engine == "cp2k":
            return {
                "convention": "self-consistent",
                "conventions": conventions,
                "energy": "CP2K total energy of the static (atomate2 CP2K task document)",
                "engine": "cp2k",
                "settings_fingerprint": (self.settings or {}).get("fingerprint"),
                "reference_set": "MP-20 hull phases (MP-20-only hull of the 45,229 MP-20 "
                "formation energies) with structures in MP-20 val/test",
                "n_reference_entries": n,
                "correction": "none",
                "signed": True,
            }
        return {
            "convention": "mp2020",
            "conventions": conventions,
            "engine": "vasp",
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

    @stage_job(resource="cpu", on_missing_references=OnMissing.NONE,
               output_schema=DFTResultOutput)
    def make(
        self,
        structure_id: str,
        tasks: dict[str, Any],
        info: dict[str, Any],
        references: list[dict[str, Any]] | None = None,
    ) -> dict:
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
        references
            CP2K path: the reference phases of the candidate's self-consistent hull, each the
            output of a reference job or a cached ``dft_reference`` document
            (``reference_key``, ``material_id``, ``formula``, ``energy_per_atom``,
            ``dft_status``); ``None`` when a reference job failed.

        Returns
        -------
        dict
            The document's DFT fields (``dft_status``, ``dft_e_above_hull`` ...).
        """
        ctx = job_context(store=campaign_store())
        if self.engine == "cp2k":
            doc = self.collect_cp2k(structure_id, tasks, info, references or [])
        else:
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

    def collect_cp2k(
        self,
        structure_id: str,
        tasks: Mapping[str, Any],
        info: Mapping[str, Any],
        references: Sequence[Mapping[str, Any] | None],
    ) -> dict[str, Any]:
        """Return the DFT fields of a CP2K static on the self-consistent hull (see :meth:`make`)."""
        errors: list[str] = []
        warnings: list[str] = []
        static_t = tasks["static"]
        uuids: dict[str, Any] = {"static": static_t["uuid"]}
        doc: dict[str, Any] = {
            "dft_engine": "cp2k",
            "dft_engine_settings": dict(self.settings or {}),
            "dft_energy_per_atom": None,
            "dft_formation_energy_per_atom": None,
            "dft_e_above_hull": None,
            "dft_decomposition": None,
            "dft_band_gap": None,
            "dft_band_gaps": {},
            "dft_references": [],
        }
        for r in tasks.get("relax") or []:
            uuids.setdefault("relax", []).append(r["uuid"])
            if get_path(r, "output", "state") is None:
                errors.append(failed_msg("relax", r))
        static = task_summary("static", static_t, errors)
        refs_ok = []
        for r in references:
            if r is None:
                errors.append("hull: a reference-phase job produced no output")
                continue
            doc["dft_references"].append(
                {k: r.get(k) for k in ("material_id", "formula", "energy_per_atom",
                                       "reference_key", "dft_status", "task_uuid")}
            )  # fmt: skip
            if r.get("dft_status") != "completed":
                errors.append(
                    f"hull: reference {r.get('formula')} ({r.get('material_id')}) "
                    f"{r.get('dft_status')}: {'; '.join(r.get('errors') or [])}"
                )
            else:
                refs_ok.append(r)
        if static is not None:
            out = get_path(static, "output")
            structure = get_path(out, "structure")
            doc["dft_energy_per_atom"] = get_path(out, "energy_per_atom")
            gap = get_path(out, "bandgap")
            if gap is not None:
                doc["dft_band_gaps"]["static"] = float(gap)
                doc["dft_band_gap"] = float(gap)
                doc["dft_band_gap_source"] = "static"
            kinds = get_path(static, "input", "atomic_kind_info", "atomic_kinds") or {}
            doc["dft_inputs"] = {
                "static": {
                    "xc": get_path(static, "input", "xc"),
                    "atomic_kinds": {
                        k: {"basis": get_path(v, "basis"), "potential": get_path(v, "potential")}
                        for k, v in dict(kinds).items()
                    },
                }
            }
            doc["dft_wall_time_s"] = _cp2k_wall_time(get_path(static, "run_stats"))
            comp = (
                (structure.composition if hasattr(structure, "composition") else None)
                or info.get("composition")
            )
            hull = self_consistent_hull(
                comp, doc["dft_energy_per_atom"], refs_ok, entry_id=structure_id
            )
            errors += hull["errors"]
            warnings += hull["warnings"]
            doc["dft_e_above_hull"] = hull["e_above_hull"]
            doc["dft_formation_energy_per_atom"] = hull["formation_energy_per_atom"]
            doc["dft_decomposition"] = hull["decomposition"]
            doc["dft_task_dirs"] = {"static": get_path(static, "dir_name")}
        doc["dft_hull_convention"] = self.hull_convention(n=len(refs_ok))
        if static is None:
            status = "failed"
        elif doc["dft_e_above_hull"] is None:
            status = "partial"
        else:
            status = "completed"
        doc.update(
            {
                "dft_status": status,
                "dft_task_uuids": uuids,
                "dft_calculations": ["static"],
                "dft_warnings": warnings,
                "errors": errors,
                **dict(info),
            }
        )
        return doc

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
            if get_path(r, "output", "state") is None:
                errors.append(failed_msg("relax", r))
        static_t = tasks["static"]
        uuids["static"] = static_t["uuid"]
        static = task_summary("static", static_t, errors)
        if static is not None:
            dirs["static"] = get_path(static, "dir_name")
            inp = get_path(static, "input")
            inputs["static"] = {
                **incar_subset(get_path(inp, "incar")),
                "nkpoints": get_path(inp, "nkpoints"),
                "potcars": get_path(inp, "potcar"),
                "calc_type": str(
                    getattr(get_path(static, "calc_type"), "value", None)
                    or get_path(static, "calc_type")
                ),
            }
            for key, want in MP_STATIC_SETTINGS.items():
                got = inputs["static"].get(key)
                if got is None or not math.isclose(float(got), want):
                    warnings.append(
                        f"static {key}={got} differs from the MP setting {want}: the energy "
                        "above the MP hull may not be comparable"
                    )
            out = get_path(static, "output")
            doc["dft_energy_per_atom"] = get_path(out, "energy_per_atom")
            gap = get_path(out, "bandgap")
            if gap is not None:
                doc["dft_band_gaps"]["static"] = float(gap)
            refs, fp = (
                load_reference_entries(self.hull_entries) if self.hull_entries else ([], None)
            )
            hull = dft_hull_analysis(
                get_path(static, "entry"),
                get_path(static, "structure") or get_path(out, "structure"),
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
            res = task_summary(f"band structure ({kind})", t, errors)
            ok[kind] = res is not None
            if res is None:
                continue
            dirs[kind] = get_path(res, "dir_name")
            inputs[kind] = incar_subset(get_path(res, "input", "incar"))
            gap = get_path(res, "output", "bandgap")
            if gap is not None:
                doc["dft_band_gaps"][kind] = float(gap)
            direct = get_path(res, "is_gap_direct")
            if direct is not None and kind == "uniform":
                doc["dft_is_gap_direct"] = bool(direct)
        t = tasks.get("dielectric")
        if t is not None:
            enabled.append("dielectric")
            uuids["dielectric"] = t["uuid"]
            res = task_summary("dielectric", t, errors) if static is not None else None
            if static is None:
                errors.append("DFT skipped: dielectric needs the static's structure")
            ok["dielectric"] = res is not None
            if res is not None:
                dirs["dielectric"] = get_path(res, "dir_name")
                inputs["dielectric"] = incar_subset(get_path(res, "input", "incar"))
                eps = get_path(res, "epsilon_static")
                doc["dft_eps_elec"] = tensor_mean_eig(eps)
                doc["dft_eps_ionic"] = tensor_mean_eig(get_path(res, "epsilon_ionic"))
                doc["dft_dielectric_tensor"] = (
                    np.asarray(eps, dtype=float).tolist() if eps is not None else None
                )
                if doc["dft_eps_elec"] is None:
                    errors.append("dielectric: no epsilon_static in the task document")
                if "static" not in doc["dft_band_gaps"]:
                    gap = get_path(res, "output", "bandgap")
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
        doc["dft_engine"] = "vasp"
        doc["dft_engine_settings"] = {
            "engine": "vasp",
            "functional": "PBE(+U), MP settings (MPStaticSet)",
            "pseudopotentials": (inputs.get("static") or {}).get("potcars"),
            "cutoff_eV": (inputs.get("static") or {}).get("ENCUT"),
            "kpoints": (inputs.get("static") or {}).get("nkpoints"),
            **dict(self.settings or {}),
        }
        return doc


def _cp2k_wall_time(run_stats: Any) -> float | None:
    """Return the CP2K run time (s) from an atomate2 CP2K task's ``run_stats``."""
    if not run_stats:
        return None
    total = get_path(run_stats, "overall", "total_time")
    if total is None:
        vals = [get_path(v, "total_time") for v in dict(run_stats).values()]
        vals = [v for v in vals if isinstance(v, (int, float))]
        total = sum(vals) if vals else None
    return float(total) if total is not None else None


@stage_job(resource="cpu", on_missing_references=OnMissing.NONE,
           output_schema=DFTResultOutput)
def dft_reference(
    key: str,
    phase: dict[str, Any],
    task: dict[str, Any],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """Write one reference phase's energy (``stage="dft_reference"``) to the cache.

    Parameters
    ----------
    key
        The cache key (:func:`~xtalforge.dft.hull.reference_key`: structure and settings).
    phase
        ``{material_id, formula, elemental}`` of the MP-20 hull phase.
    task
        ``{"uuid", "name", "output": {resolved parts of the static}}``.
    settings
        The engine settings (recorded; their fingerprint is part of ``key``).

    Returns
    -------
    dict
        The reference document's fields (``energy_per_atom``, ``dft_status`` ...).
    """
    ctx = job_context(store=campaign_store())
    errors: list[str] = []
    static = task_summary(f"reference {phase.get('formula')}", task, errors)
    out = get_path(static, "output")
    epa = get_path(out, "energy_per_atom")
    status = "completed" if epa is not None and math.isfinite(float(epa)) else "failed"
    rec = make_result_doc(
        f"ref-{key}",
        campaign_id=ctx.campaign_id,
        stage=REFERENCE_STAGE,
        job_uuid=ctx.job_uuid,
        job_name=ctx.job_name,
        errors=errors,
        reference_key=key,
        material_id=phase.get("material_id"),
        formula=phase.get("formula"),
        elemental=phase.get("elemental"),
        energy_per_atom=float(epa) if status == "completed" else None,
        dft_status=status,
        dft_engine="cp2k",
        dft_engine_settings=settings,
        dft_wall_time_s=_cp2k_wall_time(get_path(static, "run_stats")),
        dft_task_dir=get_path(static, "dir_name"),
        task_uuid=task.get("uuid"),
    )
    bulk_upsert(ctx.structures, [rec])
    logger.info("dft reference %s (%s): %s %s", phase.get("formula"), key, status, epa)
    return {k: v for k, v in rec.items() if k not in ("created_at", "last_updated", "_id")}


@stage_job(resource="cpu", on_missing_references=OnMissing.NONE, output_schema=DFTStageOutput)
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
    engine
        ``"vasp"`` (the atomate2 VASP makers above, MP2020-corrected hull) or ``"cp2k"``
        (atomate2's CP2K ``StaticMaker`` with ``cp2k`` settings and custodian; the energy
        above the self-consistent hull of the MP-20 hull phases of each candidate's chemical
        system, computed once with the same settings and cached in the store by (structure,
        settings)). ``when_no_vasp`` applies to CP2K the same way.
    cp2k
        CP2K settings (functional, basis, pseudopotentials, cutoff, k-points, smearing).
    cp2k_relax
        CP2K path: relax cell and positions (atomate2 ``CellOptMaker``) before the static of
        each candidate (the reference phases are MP-relaxed structures and are not relaxed).
    mp20_dir
        CP2K path: folder of the MP-20 data (:func:`~xtalforge.dft.hull.competing_phases`).
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
    engine: str = "vasp"
    cp2k: Cp2kSettings = field(default_factory=Cp2kSettings)
    cp2k_relax: bool = False
    mp20_dir: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cp2k, Mapping):  # from YAML or a stored record
            names = {f.name for f in dataclasses.fields(Cp2kSettings)}
            self.cp2k = Cp2kSettings(**{k: v for k, v in self.cp2k.items() if k in names})
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {self.engine!r}")
        if self.engine == "cp2k" and not self.mp20_dir:
            raise ValueError(
                "engine='cp2k' needs mp20_dir (the MP-20 data whose hull phases make the "
                "self-consistent DFT hull)"
            )
        if self.engine == "cp2k" and (
            self.collect_maker.engine != "cp2k" or not self.collect_maker.settings
        ):
            self.collect_maker = dataclasses.replace(
                self.collect_maker, engine="cp2k", settings=self.cp2k_settings_record()
            )
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

    def _tag(self, flow: Flow | Job, campaign_id: str, structure_id: str, kind: str) -> None:
        for j in iter_jobs(flow):
            j.metadata.update(
                {
                    RESOURCE_KEY: kind,
                    "campaign_id": campaign_id,
                    "structure_id": structure_id,
                    "xtalforge_stage": DFT_STAGE,
                }
            )

    def cp2k_settings_record(self) -> dict[str, Any]:
        """Return the CP2K settings recorded on documents (with their fingerprint)."""
        return {**self.cp2k.record(), "fingerprint": self.cp2k.fingerprint()}

    def reference_flow(
        self, key: str, phase: Mapping[str, Any], campaign_id: str
    ) -> tuple[Flow, Job]:
        """Build the CP2K static of one reference phase and its cache writer."""
        from pymatgen.core import Structure

        structure = Structure.from_dict(phase["structure"])
        label = f"ref {phase['formula']} {phase['material_id']}"
        static = self.cp2k.static_maker([el.symbol for el in structure.composition.elements]).make(
            structure
        )
        static.name = f"CP2K static {label}"
        task = {"uuid": static.uuid, "name": static.name, "output": _cp2k_static_refs(static)}
        meta = {k: phase.get(k) for k in ("material_id", "formula", "elemental")}
        writer = dft_reference(key, meta, task, self.cp2k_settings_record())
        writer.name = f"dft reference {label}"
        flow = Flow([static, writer], output=writer.output, name=label)
        self._tag(static, campaign_id, f"ref-{key}", "vasp")
        self._tag(writer, campaign_id, f"ref-{key}", "cpu")
        return flow, writer

    def cp2k_structure_flow(
        self,
        structure: Any,
        structure_id: str,
        campaign_id: str,
        info: Mapping[str, Any] | None,
        references: Sequence[Any],
    ) -> tuple[Flow, Job, dict[str, Any]]:
        """Build one candidate's CP2K flow ([cell opt] -> static -> collector).

        ``references`` are the outputs of reference jobs or cached reference documents.
        """
        elements = [el.symbol for el in structure.composition.elements]
        jobs: list[Job | Flow] = []
        tasks: dict[str, Any] = {}
        structure_in = structure
        if self.cp2k_relax:
            relax = self.cp2k.relax_maker(elements).make(structure)
            jobs.append(relax)
            tasks["relax"] = [{"uuid": relax.uuid, "name": None,
                               "output": {"state": relax.output.state}}]  # fmt: skip
            structure_in = relax.output.structure
        static = self.cp2k.static_maker(elements).make(structure_in)
        if self.cp2k_relax:
            static.config = dataclasses.replace(
                static.config, on_missing_references=OnMissing.NONE
            )
        jobs.append(static)
        tasks["static"] = {"uuid": static.uuid, "output": _cp2k_static_refs(static)}
        dft_flow = Flow(jobs, name=f"dft {structure_id}")
        dft_flow.append_name(f" {structure_id}", dynamic=False)
        self._tag(dft_flow, campaign_id, structure_id, "vasp")
        names = {j.uuid: j.name for j in iter_jobs(dft_flow)}
        for t in tasks.values():
            for tt in t if isinstance(t, list) else [t]:
                tt["name"] = names.get(tt["uuid"])
        info = {**dict(info or {}), "composition": structure.composition.formula}
        collector = self.collect_maker.make(structure_id, tasks, info, list(references))
        collector.name = f"{self.collect_maker.name} {structure_id}"
        self._tag(collector, campaign_id, structure_id, "cpu")
        flow = Flow([dft_flow, collector], output=collector.output, name=f"dft {structure_id}")
        uuids = {
            k: ([x["uuid"] for x in v] if isinstance(v, list) else v["uuid"])
            for k, v in tasks.items()
        }
        return flow, collector, uuids

    def _reference_plan(
        self, ctx, chosen: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, list[str]], dict[str, dict], dict[str, dict], dict[str, list]]:
        """Return the reference phases of each candidate, the cached and the ones to compute.

        Returns ``(keys_of, cached, todo, missing_of)``: the cache keys of each candidate's
        hull phases, cached reference documents by key (any campaign: the key fixes structure
        and settings), the phases to compute by key, and the hull phases without a structure.
        """
        fp = self.cp2k.fingerprint()
        keys_of: dict[str, list[str]] = {}
        phases: dict[str, dict] = {}
        missing_of: dict[str, list] = {}
        for r in chosen:
            s = r.get("_structure")
            if s is None:
                continue
            cp = competing_phases([el.symbol for el in s.composition.elements], self.mp20_dir)
            keys = []
            for ph in cp["phases"]:
                k = reference_key(ph["structure"], fp)
                phases.setdefault(k, ph)
                keys.append(k)
            keys_of[r["structure_id"]] = keys
            missing_of[r["structure_id"]] = cp["missing"]
        cached = {
            d["reference_key"]: d
            for d in find(
                ctx.structures,
                {"stage": REFERENCE_STAGE, "reference_key": {"$in": list(phases)},
                 "dft_status": "completed"},
            )  # fmt: skip
        }
        cached.update(self._finished_reference_tasks(ctx, phases, set(cached)))
        todo = {k: ph for k, ph in phases.items() if k not in cached}
        return keys_of, cached, todo, missing_of

    def _finished_reference_tasks(
        self, ctx, phases: Mapping[str, Mapping[str, Any]], known: set[str]
    ) -> dict[str, dict]:
        """Return reference documents of reference statics that finished in the job store.

        A run stopped after a reference static but before its ``dft reference`` writer (jobflow
        runs the writers after every static of the flow) keeps the energy in the job store:
        it is written to the cache here and not recomputed.
        """
        want = {f"ref-{k}": k for k in phases if k not in known}
        if not want:
            return {}
        found: dict[str, dict] = {}
        docs = ctx.store.query(
            {"metadata.structure_id": {"$in": list(want)}, "output.state": "successful"},
            properties=["uuid", "metadata", "output.output.energy_per_atom",
                        "output.run_stats", "output.dir_name"],
        )  # fmt: skip
        for d in docs:
            k = want[d["metadata"]["structure_id"]]
            out = d.get("output") or {}
            epa = get_path(out, "output", "energy_per_atom")
            if k in found or epa is None or not math.isfinite(float(epa)):
                continue
            ph = phases[k]
            rec = make_result_doc(
                f"ref-{k}",
                campaign_id=ctx.campaign_id,
                stage=REFERENCE_STAGE,
                job_uuid=d["uuid"],
                job_name="CP2K static (recovered from the job store)",
                reference_key=k,
                material_id=ph.get("material_id"),
                formula=ph.get("formula"),
                elemental=ph.get("elemental"),
                energy_per_atom=float(epa),
                dft_status="completed",
                dft_engine="cp2k",
                dft_engine_settings=self.cp2k_settings_record(),
                dft_wall_time_s=_cp2k_wall_time(out.get("run_stats")),
                dft_task_dir=out.get("dir_name"),
                task_uuid=d["uuid"],
            )
            bulk_upsert(ctx.structures, [rec])
            found[k] = rec
        return found

    # ------------------------------------------------------------------ the job
    # no output_schema: this job replaces itself with the DFT flows, and jobflow 0.4 then
    # validates the replacing flow's output reference against the schema ("Expected output to
    # be ... or dict but got output type of OutputReference"); its plain outputs have the
    # shape of DFTStageOutput, which the summary job that ends the flows declares
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

        cp2k = self.engine == "cp2k"
        ok, reason = cp2k_status() if cp2k else vasp_status(self._vasp_cmd())
        engine_name = "CP2K" if cp2k else "VASP"
        pending_status = PENDING_NO_CP2K if cp2k else PENDING_NO_VASP
        mode = self.when_no_vasp
        if not ok and mode == "error":
            raise RuntimeError(f"DFT validation needs {engine_name}: {reason}")
        store_only = not ok and mode == "store"
        if not ok:
            logger.warning(
                "no %s here (%s): %s",
                engine_name,
                reason,
                "storing ready-to-submit DFT flows" if store_only else "running the flows anyway",
            )
        if cp2k and ok:
            configure_cp2k()
        flows, collectors, docs = [], {}, []
        ref_out: dict[str, Any] = {}
        keys_of: dict[str, list[str]] = {}
        missing_of: dict[str, list] = {}
        if cp2k:
            keys_of, cached, ref_todo, missing_of = self._reference_plan(ctx, todo)
            ref_out = {k: {kk: d.get(kk) for kk in ("reference_key", "material_id", "formula",
                                                    "energy_per_atom", "dft_status", "errors",
                                                    "task_uuid")}
                       for k, d in cached.items()}  # fmt: skip
            ref_flows: dict[str, Flow] = {}
            for k, ph in ref_todo.items():
                try:
                    rflow, writer = self.reference_flow(k, ph, cid)
                except ValueError as exc:  # no basis/potential: its candidates fail too
                    ref_out[k] = {"reference_key": k, "material_id": ph["material_id"],
                                  "formula": ph["formula"], "dft_status": "failed",
                                  "errors": [f"DFT input: {exc}"]}  # fmt: skip
                    continue
                ref_flows[k] = rflow
                ref_out[k] = writer.output
            summary["references"] = {"cached": len(cached), "computed": len(ref_todo)}
            logger.info(
                "self-consistent hull: %d reference phases cached, %d to compute",
                len(cached),
                len(ref_todo),
            )
            if not store_only:
                flows.extend(ref_flows.values())
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
            if cp2k:
                info["dft_hull_missing_phases"] = missing_of.get(sid, [])
                refs = [ref_out[k] for k in keys_of.get(sid, [])]
                try:
                    flow, coll, uuids = self.cp2k_structure_flow(structure, sid, cid, info, refs)
                except ValueError as exc:  # no basis/potential for an element: a bad input
                    docs.append(self._doc(ctx, sid, "failed", [*errs, f"DFT input: {exc}"], info))
                    continue
                if store_only:  # a stored flow carries the reference jobs it needs
                    mine = [ref_flows[k] for k in keys_of.get(sid, []) if k in ref_flows]
                    flow = Flow([*mine, flow], output=flow.output, name=flow.name)
            else:
                flow, coll, uuids = self.structure_flow(structure, sid, cid, info)
            flows.append(flow)
            collectors[sid] = coll.output
            status = pending_status if store_only else "running"
            extra = {"dft_task_uuids": uuids, **info}
            if store_only:
                extra.update({"dft_flow": flow.to_json(), "dft_pending_reason": reason})
            docs.append(self._doc(ctx, sid, status, errs, extra))
        bulk_upsert(ctx.structures, docs, scope={"campaign_id": cid, "stage": DFT_STAGE})
        if store_only:
            return {
                **summary,
                "status": pending_status,
                "reason": reason,
                "pending": list(collectors),
                "counts": {pending_status: len(collectors)},
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
            output=replaced_output(
                **summary, status="running", n_flows=len(flows), engine=self.engine,
                **{engine_name.lower(): reason},
            ),
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


def _cp2k_static_refs(j: Job) -> dict[str, Any]:
    """Return references to the parts of an atomate2 CP2K task document the collector reads."""
    o = j.output
    return {"state": o.state, "dir_name": o.dir_name, "input": o.input, "output": o.output,
            "run_stats": o.run_stats}  # fmt: skip


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
    e.g. ``{NCORE: 4}``; MP-compatibility-relevant keys should stay untouched). The CP2K engine:
    ``engine: cp2k``, ``mp20_dir``, ``cp2k_relax`` and ``cp2k`` (the fields of
    :class:`~xtalforge.dft.cp2k.Cp2kSettings`, e.g. ``{cutoff: 300, kpoint_density: 100}``).

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
                          "dielectric_maker", "collect_maker", "cp2k")
    }  # fmt: skip
    nested.add("cp2k")
    unknown = set(c) - nested - plain
    if unknown:
        raise ValueError(f"unknown dft settings {sorted(unknown)}; known: {sorted(nested | plain)}")
    cp2k = c.get("cp2k") or {}
    known_cp2k = {f.name for f in dataclasses.fields(Cp2kSettings)}
    if set(cp2k) - known_cp2k:
        raise ValueError(
            f"unknown dft.cp2k settings {sorted(set(cp2k) - known_cp2k)}; known: "
            f"{sorted(known_cp2k)}"
        )
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
        cp2k=Cp2kSettings(**cp2k),
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
        {"campaign_id": campaign_id, "stage": DFT_STAGE,
         "dft_status": {"$in": [PENDING_NO_VASP, PENDING_NO_CP2K]}},
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
    pending = {e: counts.pop(st, 0) for e, st in (("VASP", PENDING_NO_VASP),
                                                   ("CP2K", PENDING_NO_CP2K))}  # fmt: skip
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    for engine, n in pending.items():
        if not n:
            continue
        reason = next(
            (d.get("dft_pending_reason") for d in docs if d.get("dft_pending_reason")), ""
        )
        parts.append(
            f"no {engine} here ({reason}): {n} ready-to-submit DFT flows stored on the dft "
            "documents (xtalforge.makers.dft.pending_dft_flows)"
        )
    return "DFT: " + ", ".join(parts)
