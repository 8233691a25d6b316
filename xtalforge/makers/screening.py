"""Screening makers: reference hulls and MLIP screening of sampled structures.

* :class:`HullMaker` builds the reference hull once and caches it in the ``blobs`` store, keyed
  by (hull kind, MLIP fingerprint, reference data fingerprint): a later campaign with the same
  MLIP and reference reuses it. Kinds:

  ``"mlip"``       MLIP-consistent hull: the campaign's dataset structures evaluated with the MLIP
                   (issue convention (c); Chemeleon2/LeMat-GenBench style);
  ``"formation"``  formation-energy hull from a dataset property (e.g. MP-20's
                   ``formation_energy_per_atom``) with elemental chemical potentials evaluated by
                   the same MLIP on the dataset's elemental structures (Park & Walsh 2025, Methods);
  ``"entries"``    pymatgen ComputedStructureEntry JSON / PatchedPhaseDiagram file from a path,
                   MP2020-corrected or not (DFT hulls).

* :class:`ScreenMaker` reads ``sample`` documents, computes MLIP energies, energies above the
  hull, uniqueness/novelty/validity/S.U.N./mSUN and coverage, writes one ``screen`` document per
  structure in bulk (failures recorded, never dropped) and ranks candidates for DFT.

The hull convention and MLIP description are recorded on every ``screen`` document.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Maker

from xtalforge.device import resolve_device
from xtalforge.makers.base import JobContext, dataset_structures, job_context, stage_job
from xtalforge.makers.sample import load_generator
from xtalforge.screening.metrics import MIN_VOLUME_PER_ATOM
from xtalforge.stores.artifacts import put_checkpoint, resolve_checkpoint
from xtalforge.stores.documents import bulk_upsert, find, make_result_doc
from xtalforge.stores.provenance import fingerprint_json
from xtalforge.stores.schemas import HullOutput, ScreenOutput

logger = logging.getLogger(__name__)


def load_hull(hull: str | Mapping[str, Any], ctx: JobContext | None = None):
    """Load a :class:`~xtalforge.screening.hull.ReferenceHull` from a path or a HullMaker output."""
    from xtalforge.screening.hull import ReferenceHull

    ref = hull.get("artifact", hull) if isinstance(hull, Mapping) else hull
    path, _ = resolve_checkpoint(ref, ctx.blobs if ctx else None)
    # artefacts are cached under <sha>.pt: give the loader the right suffix
    tmp = Path(tempfile.mkdtemp()) / "hull.json.gz"
    tmp.write_bytes(Path(path).read_bytes())
    return ReferenceHull.load(tmp)


@dataclass
class HullMaker(Maker):
    """Build (or reuse from the store) the reference convex hull.

    Parameters
    ----------
    name
        Job name.
    kind
        ``"mlip"``, ``"formation"`` or ``"entries"`` (module docstring).
    mlip
        Energy model spec for ``mlip``/``formation`` (``chgnet``, ``mace:/path.model``, ...).
    device
        ``auto``, ``cpu`` or ``cuda``.
    split
        Dataset split used as reference (``None``: all dataset documents of the campaign).
    formation_property
        Dataset property holding formation energies per atom (``formation`` kind).
    entries_path
        Entries file (``entries`` kind).
    correction
        ``"MP2020"`` or ``"none"`` (``entries`` kind).
    relax
        Relax reference structures with the MLIP first.
    batch_size
        MLIP batch size.
    """

    name: str = "reference hull"
    kind: str = "mlip"
    mlip: str = "chgnet"
    device: str = "auto"
    split: str | None = None
    formation_property: str = "formation_energy_per_atom"
    entries_path: str | None = None
    correction: str = "none"
    relax: bool = False
    batch_size: int = 64

    @stage_job(resource="gpu", output_schema=HullOutput)
    def make(self, dataset: Any = None) -> dict[str, Any]:
        """Build or reuse the hull; returns ``{artifact, convention, reused}``."""
        from xtalforge.screening.hull import ReferenceHull, elemental_chemical_potentials
        from xtalforge.screening.mlip import get_energy_model

        ctx = job_context()
        structures: list = []
        docs: list = []
        if self.kind in {"mlip", "formation"}:
            structures, docs = dataset_structures(ctx, self.split)
            if not structures:
                raise ValueError("no valid dataset structures to build the hull from")
        data_fp = fingerprint_json(sorted(d["structure_id"] for d in docs)) if docs else None
        model = None
        model_fp = None
        if self.kind in {"mlip", "formation"}:
            model = get_energy_model(self.mlip, device=resolve_device(self.device))
            model_fp = model.info.get("fingerprint") or self.mlip
        key = fingerprint_json(
            {
                "kind": self.kind,
                "mlip": model_fp,
                "data": data_fp,
                "entries": self.entries_path,
                "correction": self.correction,
                "relax": self.relax,
                "prop": self.formation_property,
            }
        )
        cached = ctx.blobs.query_one(
            {"kind": "hull", "metadata.cache_key": key},
            properties=["checkpoint_id", "sha256", "kind", "size_bytes", "metadata"],
        )
        if cached:
            cached.pop("_id", None)
            logger.info("reusing cached hull %s", cached["checkpoint_id"])
            ref = {**cached, "path": None}
            return {
                "artifact": ref,
                "convention": cached["metadata"].get("convention"),
                "reused": True,
            }
        t = time.perf_counter()
        if self.kind == "mlip":
            hull = ReferenceHull.from_structures(
                structures,
                model,
                relax=self.relax,
                batch_size=self.batch_size,
                entry_ids=[d["structure_id"] for d in docs],
                reference_set=f"campaign {ctx.campaign_id} dataset ({len(structures)} structures)",
            )
        elif self.kind == "formation":
            props = [(d.get("properties") or {}).get(self.formation_property) for d in docs]
            keep = [i for i, p in enumerate(props) if p is not None]
            if not keep:
                raise ValueError(f"dataset has no {self.formation_property!r} values")
            elemental = [s for s in structures if len(s.composition.elements) == 1]
            mu = elemental_chemical_potentials(model, elemental, relax=self.relax)
            hull = ReferenceHull.from_formation_energies(
                [structures[i].composition for i in keep],
                [props[i] for i in keep],
                entry_ids=[docs[i]["structure_id"] for i in keep],
                chemical_potentials=mu,
                convention={
                    "reference_set": f"campaign {ctx.campaign_id} dataset",
                    "chemical_potentials_source": model.info,
                    "mlip": model.info,
                    "formation_property": self.formation_property,
                },
            )
        elif self.kind == "entries":
            if not self.entries_path:
                raise ValueError("kind='entries' needs entries_path")
            hull = ReferenceHull.from_entries_file(self.entries_path, correction=self.correction)
        else:
            raise ValueError(f"unknown hull kind {self.kind!r}")
        with tempfile.TemporaryDirectory() as tmp:
            path = hull.save(Path(tmp) / "hull.json.gz")
            ref = put_checkpoint(
                ctx.blobs,
                path,
                kind="hull",
                campaign_id=ctx.campaign_id,
                job_uuid=ctx.job_uuid,
                metadata={"cache_key": key, "convention": hull.convention},
            )
        ref["path"] = None
        logger.info(
            "built %s hull with %d entries in %.1f s", self.kind, len(hull), time.perf_counter() - t
        )
        return {"artifact": ref, "convention": hull.convention, "reused": False}


def _sample_job_uuids(samples: Any) -> list[str]:
    items = samples if isinstance(samples, (list, tuple)) else [samples]
    out = []
    for s in items:
        if isinstance(s, Mapping) and s.get("job_uuid"):
            out.append(s["job_uuid"])
        elif isinstance(s, str):
            out.append(s)
    return out


@dataclass
class ScreenMaker(Maker):
    """Screen sampled structures with an MLIP against a reference hull.

    Parameters
    ----------
    name
        Job name.
    mlip
        Energy model spec (``chgnet`` offline default; ``mace:/path/to.model``; ``ase:mod.attr``).
    device
        ``auto``, ``cpu``, ``cuda``.
    batch_size
        MLIP batch size.
    relax, relax_kwargs
        Relax with the MLIP before the hull (MatterGen convention) or not (Chemeleon2).
        ``relax_kwargs["backend"]``: ``"auto"`` (batched torch-sim FIRE where the model has
        a wrapper), ``"torch-sim"`` or ``"ase"``; ``fmax``, ``steps``, ``cell_filter``,
        ``max_atoms``. Every ``screen`` document then records ``relax_converged``,
        ``relax_steps``, ``relax_max_force`` and ``relax_backend``.
    graph_workers
        Processes building MLIP graphs ahead of the model (CHGNet, MACE); 0: in the job's
        process.
    pipeline
        Hull energies alongside the energies (single points or relaxation), matching, SMACT
        and validity alongside the single points (same results).
    min_volume_per_atom
        Samples denser than this (Å^3/atom), like those with atoms closer than 0.5 Å, are not
        given to the MLIP: their ``screen`` document has ``rejected`` (the reason) and no
        energy (default 5.0, below the densest MP-20 crystal; ``None``: no density guard).
    novelty_split
        Dataset split used as novelty reference (``None``: every dataset document).
    coverage
        Compute 1/(1+FMD) on the sampling generator's VAE embeddings.
    compute_amd
        Also compute AMD distances / creativity.
    n_jobs
        Worker processes for matching and, at the same time, for the chemical-system hulls.
    policy, k, one_per_composition, max_e_above_hull
        DFT candidate ranking (``rank`` field; 0 = best).
    """

    name: str = "screen"
    mlip: str = "chgnet"
    device: str = "auto"
    batch_size: int = 64
    relax: bool = False
    relax_kwargs: dict = field(default_factory=dict)
    graph_workers: int = 0
    pipeline: bool = True
    min_volume_per_atom: float | None = MIN_VOLUME_PER_ATOM
    novelty_split: str | None = None
    coverage: bool = True
    compute_amd: bool = False
    n_jobs: int = 1
    policy: str = "msun_first"
    k: int = 10
    one_per_composition: bool = True
    max_e_above_hull: float | None = None

    @stage_job(resource="gpu", output_schema=ScreenOutput)
    def make(self, samples: Any, hull: str | dict[str, Any]) -> dict[str, Any]:
        """Screen the structures of ``samples`` (SampleMaker output(s) or job uuids)."""
        from pymatgen.core import Structure

        from xtalforge.screening.mlip import get_energy_model
        from xtalforge.screening.screen import rank_candidates, screen_structures

        ctx = job_context()
        uuids = _sample_job_uuids(samples)
        crit: dict[str, Any] = {"campaign_id": ctx.campaign_id, "stage": "sample"}
        if uuids:
            crit["job_uuid"] = {"$in": uuids}
        # a deterministic order (sample job as given, then the sample's index in it): structure
        # ids derive from the random job uuid, and the order decides which duplicate counts
        # first and the order of the coverage sums
        job_rank = {u: i for i, u in enumerate(uuids or [])}
        docs = sorted(find(ctx.structures, crit), key=lambda d: (
            job_rank.get(d.get("job_uuid"), len(job_rank)),
            (d.get("lineage") or {}).get("index", -1), d["structure_id"]))
        if not docs:
            raise ValueError(f"no sample documents to screen for {crit}")
        structures = [
            Structure.from_dict(d["structure"]) if d.get("structure") else None for d in docs
        ]
        device = resolve_device(self.device)
        mlip_kw = {"graph_workers": self.graph_workers} if self.graph_workers else {}
        model = get_energy_model(self.mlip, device=device, **mlip_kw)
        ref_hull = load_hull(hull, ctx)
        reference, _ = dataset_structures(ctx, self.novelty_split)
        emb = ref_emb = None
        if self.coverage:
            ckpts = {(d.get("lineage") or {}).get("checkpoint_sha256"): d for d in docs}
            ckpts.pop(None, None)
            if len(ckpts) == 1:
                lin = next(iter(ckpts.values()))["lineage"]
                try:
                    gen, _ = load_generator(
                        {
                            "checkpoint_id": lin["checkpoint_id"],
                            "sha256": lin["checkpoint_sha256"],
                            "path": None,
                        },
                        ctx,
                        device,
                    )
                    emb = gen.embed_structures(structures)
                    ref_emb = gen.embed_structures(
                        [s for s in reference if len(s) <= gen.max_atoms]
                    )
                except Exception as exc:  # noqa: BLE001 - coverage is optional: record why
                    logger.warning("coverage skipped: %s", exc)
            else:
                logger.info("coverage skipped: samples come from %d checkpoints", len(ckpts))
        records, summary = screen_structures(
            structures,
            model,
            ref_hull,
            reference_structures=reference or None,
            embeddings=emb,
            reference_embeddings=ref_emb,
            relax=self.relax,
            relax_kwargs=self.relax_kwargs or None,
            batch_size=self.batch_size,
            n_jobs=self.n_jobs,
            compute_amd=self.compute_amd,
            progress=True,
            pipeline=self.pipeline,
            min_volume_per_atom=self.min_volume_per_atom,
        )
        close = getattr(model, "close", None)
        if close is not None:
            close()
        ranked = rank_candidates(
            records,
            policy=self.policy,
            k=self.k,
            one_per_composition=self.one_per_composition,
            max_e_above_hull=self.max_e_above_hull,
        )
        rank_of = {r["index"]: r["rank"] for r in ranked}
        out_docs = []
        conv = summary.get("hull_convention")
        for i, (d, rec) in enumerate(zip(docs, records, strict=True)):
            rec = dict(rec)
            errors = rec.pop("errors", [])
            rec.pop("index", None)
            rec.pop("formula", None)
            out_docs.append(
                make_result_doc(
                    d["structure_id"],
                    campaign_id=ctx.campaign_id,
                    stage="screen",
                    job_uuid=ctx.job_uuid,
                    job_name=ctx.job_name,
                    errors=errors,
                    **rec,
                    struct_valid=rec.get("structure_valid"),
                    mlip=model.info,
                    hull_convention=conv,
                    rank=rank_of.get(i),
                    sample_job_uuid=d.get("job_uuid"),
                    model_label=(d.get("lineage") or {}).get("model_label"),
                )
            )
        bulk_upsert(
            ctx.structures, out_docs, scope={"campaign_id": ctx.campaign_id, "stage": "screen"}
        )
        top = [docs[r["index"]]["structure_id"] for r in ranked]
        summary = {k: v for k, v in summary.items() if k != "per_structure"}
        return {
            "n": len(docs),
            "summary": summary,
            "top_candidates": top,
            "sample_job_uuids": uuids,
            "policy": self.policy,
            "k": self.k,
        }
