"""A closed DFT-validation run with CP2K: generated candidates, their DFT hull, MLIP vs DFT.

What it runs (one campaign in an embedded store, resumable with ``run_campaign``)::

    samples (K generated structures, lineage = the generator checkpoint's sha256)
      -> screen  (CHGNet single points vs the MP-20 formation hull, novelty vs MP-20 val+test)
      -> DFTValidationMaker(engine="cp2k")   (atomate2 CP2K StaticMaker + custodian)
           per candidate: CP2K static -> dft collect (self-consistent hull)
           per chemical system: the MP-20 hull phases (elemental ground states included),
           each computed once with the same settings, cached as ``dft_reference`` documents
           keyed by (structure, settings fingerprint)
then the ``mlip-vs-dft`` table and the parity figure from the store alone (the same as
``xtalforge table mlip-vs-dft --campaign <id> --root <out>``), per-calculation wall times and
the DFT yield (DFT-metastable and novel, per DFT calculation).

Candidates (``--pick``): the generator's samples (``samples_A_9218.json.gz``: 2,000 samples of
the DiT 8x384 latent-diffusion checkpoint after 9,218 steps, fp16,
sha256 b0f24034...be185, each with its CHGNet single-point E_hull vs the MP-20 formation hull)
are filtered to what bounds the cost of a self-consistent hull: binary or ternary, at most
``--max-atoms`` atoms, elements with a DZVP-MOLOPT-SR basis and GTH-PBE potential, no
magnetic 3d metals (Cr, Mn, Fe, Co, Ni: the statics start non-magnetic), every MP-20 hull phase
of the chemical system with a structure in MP-20 val/test (the train split ships without
positions), at most ``--max-reference-atoms`` atoms over those phases; then the systems
cheapest to close (fewest reference atoms, references shared between candidates counted once)
are taken, one candidate per chemical system. The picked structures are committed
(``benchmarks/data/dft_cp2k_candidates.json``) so that the run is reproducible without the
samples file.

Usage::

    python benchmarks/dft_validation_cp2k.py --pick --samples .../samples_A_9218.json.gz
    nice python benchmarks/dft_validation_cp2k.py --out out/dft_cp2k   # resumable
    xtalforge table mlip-vs-dft --campaign dft-cp2k --root out/dft_cp2k
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from jobflow import Flow, job

from xtalforge.makers.base import store_config

logger = logging.getLogger("dft_validation_cp2k")

HERE = Path(__file__).resolve().parent
CANDIDATES = HERE / "data" / "dft_cp2k_candidates.json"
CHECKPOINT = {
    "checkpoint_id": "dit-8x384-mp20-9218",
    "sha256": "b0f240344065b598ee9e6c5966e4eb2e18f39fcd2bae38bc8dcf843747dbe185",
    "dtype": "fp16",
    "description": "latent-diffusion DiT 8x384 trained on MP-20 for 9,218 steps",
}
MAGNETIC = {"Cr", "Mn", "Fe", "Co", "Ni"}


# ----------------------------------------------------------------------------- picking
def pick(args) -> None:
    """Filter the generator's samples and write the candidates file (see the docstring)."""
    from pymatgen.core import Structure

    from xtalforge.dft.cp2k import Cp2kSettings
    from xtalforge.dft.hull import competing_phases

    settings = Cp2kSettings()
    samples = json.load(gzip.open(args.samples))
    pool = []
    for i, r in enumerate(samples):
        if r.get("structure") is None or r.get("e_above_hull") is None:
            continue
        s = Structure.from_dict(r["structure"])
        els = sorted(el.symbol for el in s.composition.elements)
        if not 2 <= len(els) <= 3 or len(s) > args.max_atoms or set(els) & MAGNETIC:
            continue
        try:
            settings.basis_and_potential(els)
        except ValueError:
            continue
        cp = competing_phases(els, args.mp20)  # cached per chemical system below
        if cp["missing"]:
            continue
        n_ref = sum(len(Structure.from_dict(p["structure"])) for p in cp["phases"])
        if n_ref > args.max_reference_atoms:
            continue
        pool.append({"index": i, "formula": s.composition.reduced_formula, "chemsys": cp["chemsys"],
                     "n_atoms": len(s), "mlip_e_above_hull": r["e_above_hull"],
                     "references": {p["material_id"]: len(Structure.from_dict(p["structure"]))
                                    for p in cp["phases"]},
                     "structure": r["structure"]})
    logger.info("%d samples pass the cost filters", len(pool))
    chosen, have, systems = [], set(), set()

    def extra(c: dict) -> tuple:  # atoms still to compute if c is taken
        return (sum(n for m, n in c["references"].items() if m not in have) + c["n_atoms"],
                c["index"])

    while pool and len(chosen) < args.k:
        pool.sort(key=extra)
        c = pool.pop(0)
        if c["chemsys"] in systems:
            continue
        systems.add(c["chemsys"])
        have |= set(c["references"])
        chosen.append(c)
    out = {"checkpoint": CHECKPOINT, "samples_file": Path(args.samples).name,
           "filters": {"n_elements": [2, 3], "max_atoms": args.max_atoms,
                       "max_reference_atoms": args.max_reference_atoms,
                       "excluded_elements": sorted(MAGNETIC),
                       "basis": settings.basis, "potential": settings.potential,
                       "hull_phases_with_structures": True},
           "mlip_protocol": "CHGNet single point vs the MP-20 formation hull (as sampled)",
           "candidates": chosen}
    CANDIDATES.parent.mkdir(parents=True, exist_ok=True)
    CANDIDATES.write_text(json.dumps(out, indent=1))
    for c in chosen:
        logger.info("%s (%s, %d atoms, MLIP E_hull %.3f): references %s", c["formula"],
                    c["chemsys"], c["n_atoms"], c["mlip_e_above_hull"], c["references"])
    logger.info("wrote %d candidates to %s", len(chosen), CANDIDATES)


# ----------------------------------------------------------------------------- campaign jobs
@job(config=store_config())
def store_samples(candidates_file: str) -> dict[str, Any]:
    """Write the picked generated structures as ``sample`` documents (generator lineage)."""
    from pymatgen.core import Structure

    from xtalforge.makers.base import job_context
    from xtalforge.stores.documents import bulk_upsert, make_structure_doc, make_structure_id

    ctx = job_context()
    data = json.loads(Path(candidates_file).read_text())
    ck = data["checkpoint"]
    docs = []
    for c in data["candidates"]:
        origin = f"samples:{data['samples_file']}"
        sid = make_structure_id(ctx.campaign_id, origin, c["index"])
        docs.append(make_structure_doc(
            Structure.from_dict(c["structure"]), structure_id=sid, campaign_id=ctx.campaign_id,
            stage="sample",
            job_uuid=ctx.job_uuid, job_name=ctx.job_name,
            lineage={"source": "generator", "parent_job_uuid": ctx.job_uuid,
                     "checkpoint_id": ck["checkpoint_id"], "checkpoint_sha256": ck["sha256"],
                     "samples_file": data["samples_file"], "sample_index": c["index"],
                     "model_label": ck["checkpoint_id"]}))
    bulk_upsert(ctx.structures, docs)
    return {"n": len(docs), "sample_job_uuids": [ctx.job_uuid]}


@job(config=store_config())
def screen_samples(samples: dict[str, Any], mp20_dir: str, cache_dir: str) -> dict[str, Any]:
    """CHGNet single points vs the MP-20 formation hull; writes ``screen`` documents."""
    from pymatgen.core import Structure

    from xtalforge.data.mp20 import load_mp20_split, mp20_formation_hull
    from xtalforge.makers.base import job_context
    from xtalforge.screening.hull import mlip_chemical_potentials
    from xtalforge.screening.metrics import ReferenceSet
    from xtalforge.screening.mlip import get_energy_model
    from xtalforge.screening.screen import screen_structures
    from xtalforge.stores.documents import bulk_upsert, find, make_result_doc

    ctx = job_context()
    docs = sorted(find(ctx.structures, {"campaign_id": ctx.campaign_id, "stage": "sample",
                                        "job_uuid": {"$in": samples["sample_job_uuids"]}}),
                  key=lambda d: d["structure_id"])
    structures = [Structure.from_dict(d["structure"]) for d in docs]
    split = load_mp20_split(mp20_dir)
    model = get_energy_model("chgnet", device="cpu")
    mu, _ = mlip_chemical_potentials(model, split.reference,
                                     cache_path=Path(cache_dir) / "mu_chgnet.json")
    hull = mp20_formation_hull(mp20_dir, mu, "chgnet single points, E_form = E - sum mu_a n_a")
    records, summary = screen_structures(
        structures, model, hull, reference_structures=ReferenceSet(split.reference,
                                                                   split.reference_ids))
    out = []
    for d, rec in zip(docs, records, strict=True):
        rec = dict(rec)
        errors = rec.pop("errors", [])
        rec.pop("index", None)
        rec.pop("formula", None)
        out.append(make_result_doc(
            d["structure_id"], campaign_id=ctx.campaign_id, stage="screen",
            job_uuid=ctx.job_uuid, job_name=ctx.job_name, errors=errors, **rec,
            struct_valid=rec.get("structure_valid"), mlip=model.info,
            hull_convention=summary.get("hull_convention"), sample_job_uuid=d.get("job_uuid"),
            model_label=(d.get("lineage") or {}).get("model_label")))
    bulk_upsert(ctx.structures, out, scope={"campaign_id": ctx.campaign_id, "stage": "screen"})
    return {"n": len(docs), "sample_job_uuids": samples["sample_job_uuids"]}


def build_flow(args, settings) -> Flow:
    from xtalforge.makers.dft import DFTValidationMaker

    samples = store_samples(str(args.candidates))
    samples.name = "samples (generated, stored)"
    screen = screen_samples(samples.output, str(args.mp20), str(Path(args.out).resolve()))
    screen.name = "screen"
    dft = DFTValidationMaker(
        engine="cp2k", cp2k=settings, mp20_dir=str(Path(args.mp20).resolve()), policy="ehull",
        k=args.k, one_per_composition=True, structure_source="generated",
        when_no_vasp="error").make(screen.output)
    return Flow([samples, screen, dft], name=args.campaign)


# ----------------------------------------------------------------------------- report
def report(args, settings) -> dict[str, Any]:
    """Table, parity figure, wall times and yield, from the store alone."""
    from xtalforge.reports.figures import parity_plot
    from xtalforge.reports.tables import build_table
    from xtalforge.stores.documents import find
    from xtalforge.stores.results import CampaignResults

    res = CampaignResults.open(args.campaign, None, args.out)
    df = res.to_dataframe()
    table = build_table("mlip-vs-dft", res, df=df)
    dft = [d for d in find(res._structures, {"campaign_id": args.campaign, "stage": "dft"})]
    used = sorted({r.get("reference_key") for d in dft for r in d.get("dft_references") or []}
                  - {None})
    refs = find(res._structures, {"stage": "dft_reference", "reference_key": {"$in": used}})
    screen = {d["structure_id"]: d for d in find(res._structures, {
        "campaign_id": args.campaign, "stage": "screen"})}
    rows = []
    for d in sorted(dft, key=lambda d: d.get("dft_rank", 0)):
        s = screen.get(d["structure_id"], {})
        rows.append({"structure_id": d["structure_id"], "formula": s.get("reduced_formula")
                     or d.get("composition"), "status": d.get("dft_status"),
                     "mlip_e_above_hull": s.get("e_above_hull"),
                     "dft_e_above_hull": d.get("dft_e_above_hull"),
                     "dft_decomposition": d.get("dft_decomposition"),
                     "novel": s.get("novel"), "wall_time_s": d.get("dft_wall_time_s"),
                     "errors": d.get("errors")})
    ref_rows = [{"formula": r.get("formula"), "material_id": r.get("material_id"),
                 "energy_per_atom": r.get("energy_per_atom"), "status": r.get("dft_status"),
                 "wall_time_s": r.get("dft_wall_time_s")} for r in refs]
    n_calc = len(rows) + len(ref_rows)
    ok = [r for r in rows if r["dft_e_above_hull"] is not None]
    good = [r for r in ok if r["dft_e_above_hull"] < 0.1 and r["novel"]]
    fig = Path(args.out) / "dft_cp2k_parity.png"
    x = [r["dft_e_above_hull"] for r in ok]
    y = [r["mlip_e_above_hull"] for r in ok]
    if ok:
        parity_plot(x, y, fig, xlabel="E_hull CP2K, self-consistent hull (eV/atom)",
                    ylabel="E_hull CHGNet vs MP-20 formation hull (eV/atom)",
                    title=f"MLIP vs CP2K, {len(ok)} generated candidates")
    out = {"table_markdown": table.render("markdown"), "table_values": table.values,
           "candidates": rows, "references": ref_rows, "settings": settings.record(),
           "settings_fingerprint": settings.fingerprint(),
           "yield": {"dft_metastable_and_novel": len(good), "candidate_calculations": len(rows),
                     "all_calculations": n_calc,
                     "per_candidate_calculation": len(good) / len(rows) if rows else None,
                     "per_calculation_incl_references": len(good) / n_calc if n_calc else None},
           "wall_time_s": {"candidates": sum(r["wall_time_s"] or 0 for r in rows),
                           "references": sum(r["wall_time_s"] or 0 for r in ref_rows)},
           "parity_figure": str(fig) if ok else None}
    (Path(args.out) / "dft_cp2k_summary.json").write_text(json.dumps(out, indent=1, default=str))
    print(table.render("markdown"))
    for r in rows:
        print(f"{r['formula']!s:>10} {r['status']!s:>9}  MLIP {r['mlip_e_above_hull']}  "
              f"DFT {r['dft_e_above_hull']}  novel {r['novel']}  {r['wall_time_s']} s")
    for r in ref_rows:
        print(f"  ref {r['formula']!s:>8} {r['material_id']!s:>12} {r['status']!s:>9} "
              f"{r['energy_per_atom']} eV/atom  {r['wall_time_s']} s")
    print(json.dumps(out["yield"]), json.dumps(out["wall_time_s"]))
    return out


def trace(args, structure_id: str) -> None:
    """Print one candidate's chain: sample -> screen -> CP2K task -> DFT hull -> table row."""
    from xtalforge.stores.documents import find
    from xtalforge.stores.results import CampaignResults

    res = CampaignResults.open(args.campaign, None, args.out)
    h = res.history(structure_id)
    docs = {d["stage"]: d for d in h["documents"]}
    jobs = {j["uuid"]: j for j in h["jobs"]}
    sample, screen, dft = docs.get("sample", {}), docs.get("screen", {}), docs.get("dft", {})
    lin = sample.get("lineage", {})
    print(f"sample  {structure_id} {sample.get('formula')}: checkpoint {lin.get('checkpoint_id')}"
          f" sha256 {lin.get('checkpoint_sha256')}, {lin.get('samples_file')}"
          f"[{lin.get('sample_index')}], job {jobs.get(sample.get('job_uuid'), {}).get('name')}")
    print(f"screen  E_hull(MLIP) {screen.get('e_above_hull')} eV/atom, novel "
          f"{screen.get('novel')}, mlip {screen.get('mlip', {}).get('name', screen.get('mlip'))},"
          f" job {jobs.get(screen.get('job_uuid'), {}).get('name')}")
    static_uuid = (dft.get("dft_task_uuids") or {}).get("static")
    task = res.store.query_one({"uuid": static_uuid}, properties=["name", "output.dir_name",
                                                                  "output.output.energy_per_atom",
                                                                  "completed_at"])
    print(f"CP2K    task {static_uuid} {task and task.get('name')}: E = "
          f"{task and task['output']['output']['energy_per_atom']} eV/atom, dir "
          f"{task and task['output']['dir_name']}, wall {dft.get('dft_wall_time_s')} s")
    for r in dft.get("dft_references") or []:
        ref = find(res._structures, {"stage": "dft_reference",
                                     "reference_key": r.get("reference_key")})
        print(f"  hull phase {r.get('formula')} {r.get('material_id')}: "
              f"{r.get('energy_per_atom')} eV/atom, task {r.get('task_uuid')}, cached doc "
              f"{ref[0]['doc_id'] if ref else None}")
    print(f"DFT     E_hull(CP2K) {dft.get('dft_e_above_hull')} eV/atom, decomposition "
          f"{dft.get('dft_decomposition')}, convention "
          f"{(dft.get('dft_hull_convention') or {}).get('convention')}, settings "
          f"{(dft.get('dft_engine_settings') or {}).get('fingerprint')}, job "
          f"{jobs.get(dft.get('job_uuid'), {}).get('name')}")
    print(f"row     mlip-vs-dft: ({screen.get('e_above_hull')}, {dft.get('dft_e_above_hull')})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pick", action="store_true", help="pick candidates from --samples")
    p.add_argument("--samples", help="the generator samples file (--pick)")
    p.add_argument("--mp20", default=str(HERE.parent.parent / "shared" / "data" / "mp20"))
    p.add_argument("--candidates", default=str(CANDIDATES))
    p.add_argument("--out", default="out/dft_cp2k")
    p.add_argument("--campaign", default="dft-cp2k")
    p.add_argument("--k", type=int, default=7)
    p.add_argument("--max-atoms", type=int, default=8)
    p.add_argument("--max-reference-atoms", type=int, default=12)
    p.add_argument("--cutoff", type=float, default=300.0, help="CP2K CUTOFF (Ry)")
    p.add_argument("--kpoint-density", type=int, default=100, help="k-points per atom")
    p.add_argument("--eps-scf", type=float, default=1e-5, help="CP2K EPS_SCF")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--trace", metavar="STRUCTURE_ID", help="print one candidate's chain")
    p.add_argument("--force-config", action="store_true",
                   help="apply a changed configuration to a campaign with finished jobs: the flow "
                   "is rebuilt and finished jobs the change does not touch are kept")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not Path(args.mp20).is_dir():
        alt = Path("../shared/data/mp20")
        args.mp20 = str(alt.resolve()) if alt.is_dir() else args.mp20
    if args.trace:
        trace(args, args.trace)
        return
    if args.pick:
        if not args.samples:
            p.error("--pick needs --samples")
        pick(args)
        return
    from xtalforge.dft.cp2k import Cp2kSettings, configure_cp2k
    from xtalforge.flows.runner import run_campaign
    from xtalforge.stores.config import build_job_store

    settings = Cp2kSettings(cutoff=args.cutoff, kpoint_density=args.kpoint_density,
                            eps_scf=args.eps_scf)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        configure_cp2k()
        store = build_job_store(None, args.out)
        t0 = time.perf_counter()
        res = run_campaign(lambda: build_flow(args, settings), args.campaign, store,
                           config={"benchmark": "dft_validation_cp2k", "k": args.k,
                                   "candidates": Path(args.candidates).name,
                                   "cp2k": settings.record()},
                           root_dir=Path(args.out) / "runs", force_config=args.force_config)
        logger.info("campaign %s: %s in %.0f s (failed: %s)", args.campaign, res.get("status"),
                    time.perf_counter() - t0, res.get("failed"))
    out = report(args, settings)
    if not math.isfinite(len(out["candidates"])):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
