"""DFT validation over atomate2 with its mock VASP and the real Si reference runs.

The reference runs (``../shared/data/vasp_reference``, atomate2's test data) are for Si, so the
structures validated here are diamond Si: the mock then checks the inputs atomate2 writes
(INCAR keys against the MP settings of the reference, POTCAR symbols, POSCAR, k-points) and
copies the reference outputs. A second Si structure whose jobs have no reference run fails like
a crashed VASP job would.
"""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from jobflow import Flow, run_locally

from xtalforge.flows.runner import run_campaign
from xtalforge.makers.dft import (
    DFTCollectMaker,
    DFTValidationMaker,
    dft_hull_analysis,
    dft_maker_from_config,
    dft_status_line,
    load_reference_entries,
    pending_dft_flows,
    select_candidates,
    vasp_status,
)
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import (
    bulk_upsert,
    find,
    make_result_doc,
    make_structure_doc,
)
from xtalforge.stores.results import CampaignResults

HULL_FILE = "mp_hull/2023-02-07-mp-elemental-reference-entries.json.gz"
MP_STATIC_KEYS = ["ENCUT", "ISMEAR", "ISPIN", "LORBIT", "EDIFF", "LCHARG", "ALGO", "PREC", "LASPH"]
#: energies of the references (vasprun of GGA_Static; MP's mp-149 entry in the hull file)
SI_STATIC_EPA = -5.42030461
SI_MP_EPA = -5.42531803


# --------------------------------------------------------------------------- selection
def _rec(sid, e, formula, **kw):
    return {"structure_id": sid, "e_above_hull": e, "reduced_formula": formula, **kw}


RECORDS = [
    _rec("a", 0.20, "NaCl", msun=True, sun=False, unique=True, novel=True, rank=3),
    _rec("b", 0.00, "NaCl", msun=False, sun=False, unique=False, novel=False, rank=0),
    _rec("c", 0.05, "KBr", msun=True, sun=True, unique=True, novel=True, rank=1),
    _rec("d", 0.01, "LiF", msun=False, sun=False, unique=True, novel=True, rank=2),
    _rec("e", None, "MgO", msun=False, rank=None),
    _rec("f", 0.02, "KBr", msun=True, sun=False, unique=True, novel=True, rank=4,
         struct_valid=False),
]  # fmt: skip


def ids(rows):
    return [r["structure_id"] for r in rows]


def test_selection_msun_first_then_energy():
    got = select_candidates(RECORDS, "msun_first", k=None, one_per_composition=False)
    # SUN first, then other mSUN by energy, then unique+novel, then the rest
    assert ids(got) == ["c", "f", "a", "d", "b"]
    assert [r["dft_rank"] for r in got] == [0, 1, 2, 3, 4]


def test_selection_ehull_one_per_composition_and_budget():
    assert ids(select_candidates(RECORDS, "ehull", k=None, one_per_composition=False)) == [
        "b", "d", "f", "c", "a"
    ]  # fmt: skip
    # best structure of each composition only
    assert ids(select_candidates(RECORDS, "ehull", k=None)) == ["b", "d", "f"]
    assert ids(select_candidates(RECORDS, "one_per_composition", k=None)) == ["b", "d", "f"]
    # budget
    assert ids(select_candidates(RECORDS, "ehull", k=2)) == ["b", "d"]
    assert ids(select_candidates(RECORDS, "msun_first", k=1)) == ["c"]
    # thresholds and validity
    assert ids(select_candidates(RECORDS, "ehull", k=None, max_e_above_hull=0.015)) == ["b", "d"]
    assert "f" not in ids(select_candidates(RECORDS, "ehull", k=None, require_valid=True))
    # the screening stage's own rank
    assert ids(select_candidates(RECORDS, "rank", k=3, one_per_composition=False)) == [
        "b", "c", "d"
    ]  # fmt: skip
    with pytest.raises(ValueError):
        select_candidates(RECORDS, "fom")


# --------------------------------------------------------------------------- VASP availability
def test_vasp_status_checks_command_and_potcars(tmp_path, monkeypatch):
    monkeypatch.delenv("PMG_VASP_PSP_DIR", raising=False)
    monkeypatch.setattr("pymatgen.core.SETTINGS", {}, raising=False)
    ok, why = vasp_status("srun -n 4 vasp_std_that_does_not_exist")
    assert not ok
    assert "vasp_std_that_does_not_exist" in why and "PMG_VASP_PSP_DIR" in why
    exe = tmp_path / "bin" / "vasp_std"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    (tmp_path / "potcars").mkdir()
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")
    monkeypatch.setenv("PMG_VASP_PSP_DIR", str(tmp_path / "potcars"))
    ok, why = vasp_status("mpirun -np 2 vasp_std")
    assert ok, why
    monkeypatch.setenv("PMG_VASP_PSP_DIR", str(tmp_path / "missing"))
    assert not vasp_status("vasp_std")[0]


# --------------------------------------------------------------------------- hull
def test_hull_analysis_reports_missing_chemical_systems(shared_data):
    from pymatgen.core import Lattice, Structure
    from pymatgen.entries.computed_entries import ComputedEntry

    refs, fp = load_reference_entries([shared_data / HULL_FILE])
    assert len(refs) == 89 and len(fp) == 16
    params = {
        "run_type": "GGA",
        "is_hubbard": False,
        "hubbards": {},
        "potcar_spec": [{"titel": "PAW_PBE Si 05Jan2001", "hash": None}],
    }
    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    e = ComputedEntry("Si2", 2 * (SI_MP_EPA + 0.1), parameters=params)
    out = dft_hull_analysis(e, si, refs)
    assert out["errors"] == [] and out["e_above_hull"] == pytest.approx(0.1, abs=1e-9)
    below = dft_hull_analysis(ComputedEntry("Si2", 2 * (SI_MP_EPA - 0.05), parameters=params),
                              si, refs)  # fmt: skip
    assert below["e_above_hull"] == pytest.approx(-0.05, abs=1e-9)  # signed
    only_o = [r for r in refs if r.composition.reduced_formula == "O2"]
    miss = dft_hull_analysis(e, si, only_o)
    assert miss["e_above_hull"] is None
    assert "lacks the chemical system Si" in miss["errors"][0]
    none = dft_hull_analysis(e, si, [])
    assert none["e_above_hull"] is None and "no reference entries" in none["errors"][0]
    # a binary against elements only: computed, with a warning
    sic = ComputedEntry(
        "SiC",
        -15.0,
        parameters={
            **params,
            "potcar_spec": params["potcar_spec"] + [{"titel": "PAW_PBE C 08Apr2002"}],
        },
    )
    out = dft_hull_analysis(sic, None, refs, check_potcar=False)
    assert out["e_above_hull"] is not None and "elements only" in out["warnings"][0]


# --------------------------------------------------------------------------- mock VASP
@pytest.fixture
def si_refs(shared_data, tmp_path):
    """Reference dirs: the MP static (copied, with a small CHGCAR for the non-SCF runs)."""
    from pymatgen.io.vasp import Chgcar, Poscar

    ref = shared_data / "vasp_reference"
    static = tmp_path / "refs" / "static"
    shutil.copytree(ref / "Si_mp_gga_relax" / "GGA_Static", static)
    si = Poscar.from_file(static / "inputs" / "POSCAR.gz").structure
    chg = Chgcar(Poscar(si), {"total": np.full((8, 8, 8), 8.0 * si.volume)})
    chg.write_file(str(tmp_path / "CHGCAR"))
    with (
        open(tmp_path / "CHGCAR", "rb") as f,
        gzip.open(static / "outputs" / "CHGCAR.gz", "wb") as g,
    ):
        g.write(f.read())
    return {"root": ref, "static": static, "si": si, "hull": shared_data / HULL_FILE}


@pytest.fixture
def mock_vasp(monkeypatch, shared_data):
    from atomate2.utils.testing.vasp import monkeypatch_vasp

    yield from monkeypatch_vasp(monkeypatch, shared_data / "vasp_reference")


def _campaign(store, cid, structures):
    """Write structure and screen documents: ``structures`` = [(sid, structure, ehull, msun)]."""
    docs = []
    for sid, s, e, msun in structures:
        docs.append(make_structure_doc(s, structure_id=sid, campaign_id=cid, stage="sample"))
        docs.append(
            make_result_doc(
                sid,
                campaign_id=cid,
                stage="screen",
                energy_per_atom=-5.4,
                e_above_hull=e,
                msun=msun,
                unique=True,
                novel=True,
                rank=None,
                mlip="test",
            )
        )
    store.connect()
    bulk_upsert(store.additional_stores["structures"], docs)


def test_static_band_structure_dielectric_and_failed_run(si_refs, mock_vasp, tmp_path):
    from atomate2.vasp.flows.core import BandStructureMaker
    from atomate2.vasp.jobs.core import DielectricMaker
    from atomate2.vasp.jobs.mp import MPGGAStaticMaker

    store = build_job_store("memory")
    cid, good, bad = "dft-test", "xf-good", "xf-bad"
    _campaign(store, cid, [(good, si_refs["si"], 0.0, True), (bad, si_refs["si"], 0.1, False)])
    maker = DFTValidationMaker(
        k=5,
        one_per_composition=False,
        band_structure_maker=BandStructureMaker(static_maker=MPGGAStaticMaker()),
        dielectric_maker=DielectricMaker(),
        collect_maker=DFTCollectMaker(hull_entries=(str(si_refs["hull"]),)),
        when_no_vasp="run",
    )
    # only `good` has reference runs; the inputs atomate2 writes are checked against them
    mock_vasp(
        {
            f"MP GGA static {good}": si_refs["static"],
            f"non-scf uniform {good}": "Si_band_structure/non-scf_uniform",
            f"non-scf line {good}": "Si_band_structure/non-scf_line",
            f"dielectric {good}": "Si_dielectric",
        },
        {
            f"MP GGA static {good}": {"incar_settings": MP_STATIC_KEYS},
            f"non-scf uniform {good}": {"incar_settings": ["ICHARG", "ISMEAR"],
                                        "check_inputs": ["incar", "potcar"]},
            f"non-scf line {good}": {"incar_settings": ["ICHARG"],
                                     "check_inputs": ["incar", "potcar"]},
            f"dielectric {good}": {"incar_settings": ["LEPSILON", "IBRION", "ENCUT"],
                                   "check_inputs": ["incar", "potcar"]},
        },
    )  # fmt: skip
    result = run_campaign(maker.make, cid, store, root_dir=tmp_path / "runs")
    assert result["status"] == "completed", result

    # the stored dft documents read back through their schema, every key named by it
    from xtalforge.stores.schemas import DFTDoc, DFTHullConvention, validate_document

    for d in find(store.additional_stores["structures"], {"stage": "dft"}):
        m = validate_document(d)
        assert isinstance(m, DFTDoc) and m.model_extra == {}, sorted(m.model_extra or {})
        if m.dft_status == "completed":
            assert isinstance(m.dft_hull_convention, DFTHullConvention)
    df = CampaignResults(store, cid).to_dataframe().set_index("structure_id")
    g, b = df.loc[good], df.loc[bad]
    # beside the MLIP values of the screening stage
    assert g["e_above_hull"] == 0.0 and g["mlip"] == "test"
    assert g["dft_status"] == "completed" and g["dft_errors"] == []
    assert g["dft_energy_per_atom"] == pytest.approx(SI_STATIC_EPA)
    assert g["dft_e_above_hull"] == pytest.approx(SI_STATIC_EPA - SI_MP_EPA, abs=1e-8)
    # the engine and its settings, and both hull conventions, on the document
    assert g["dft_engine"] == "vasp"
    assert g["dft_engine_settings"]["cutoff_eV"] == 520
    assert g["dft_engine_settings"]["pseudopotentials"]
    assert g["dft_hull_convention"]["convention"] == "mp2020"
    assert set(g["dft_hull_convention"]["conventions"]) == {"mp2020", "self-consistent"}
    gaps = g["dft_band_gaps"]
    assert set(gaps) == {"static", "uniform", "line"}
    assert g["dft_band_gap"] == pytest.approx(min(gaps.values()))
    assert g["dft_band_gap"] < gaps["static"]  # the line-mode path finds a smaller gap
    assert g["dft_eps_elec"] == pytest.approx(np.mean([11.41539467, 11.41539963, 11.41539866]))
    assert g["dft_fom"] == pytest.approx(g["dft_eps_elec"] * g["dft_band_gap"])
    assert g["dft_hull_convention"]["correction"] == "MaterialsProject2020Compatibility"
    assert g["dft_hull_convention"]["n_reference_entries"] == 89
    # MP settings on the static (as run), DFPT settings on the dielectric
    st = g["dft_inputs"]["static"]
    assert (st["ENCUT"], st["ISMEAR"], st["ISPIN"], st["LORBIT"]) == (520, -5, 2, 11)
    assert st["calc_type"] == "GGA Static" and st["potcars"] == ["Si"]
    assert g["dft_inputs"]["dielectric"]["LEPSILON"] is True
    assert g["dft_inputs"]["uniform"]["ICHARG"] == 11
    # linked to the atomate2 task documents by job uuid
    uu = g["dft_task_uuids"]
    task = store.get_output(uu["static"])
    assert task["output"]["energy_per_atom"] == pytest.approx(SI_STATIC_EPA)
    assert task["dir_name"] == g["dft_task_dirs"]["static"]
    diel = store.get_output(uu["dielectric"])
    assert diel["calcs_reversed"][0]["output"]["epsilon_static"][0][0] == pytest.approx(11.41539467)
    assert store.get_output(uu["band_structure"]["line"])["task_label"].startswith("non-scf line")
    # the failed structure: recorded, nothing invented
    assert b["dft_status"] == "failed"
    assert b["dft_errors"][0].startswith("DFT failed: static job 'MP GGA static xf-bad'")
    assert pd.isna(b["dft_e_above_hull"]) and pd.isna(b["dft_fom"])  # None in the document
    # the stage's output (stored under its uuid by its replacement) counts both
    dft_uuid = next(j["uuid"] for j in store.query({"name": "dft validation"}))
    out = store.get_output(dft_uuid)  # the last index
    assert out["counts"] == {"completed": 1, "failed": 1}
    # a new DFT job in the same campaign skips both (resume; failures are not retried)
    again = DFTValidationMaker(k=5, one_per_composition=False, when_no_vasp="run").make()
    again.metadata["campaign_id"] = cid
    run_locally(Flow([again], name="again"), store=store, ensure_success=True,
                root_dir=tmp_path / "again", create_folders=True)  # fmt: skip
    out2 = store.get_output(again.uuid)
    assert out2["status"] == "nothing to run" and sorted(out2["skipped_done"]) == [bad, good]


def test_mp_double_relax_then_static(si_refs, mock_vasp, tmp_path):
    from atomate2.vasp.flows.mp import MPGGADoubleRelaxStaticMaker
    from pymatgen.io.vasp import Poscar

    ref = si_refs["root"] / "Si_mp_gga_relax"
    si_in = Poscar.from_file(ref / "GGA_Relax_1" / "inputs" / "POSCAR.gz").structure
    store = build_job_store("memory")
    cid, sid = "relax-test", "xf-si"
    _campaign(store, cid, [(sid, si_in, 0.0, True)])
    maker = DFTValidationMaker(
        relax_maker=MPGGADoubleRelaxStaticMaker(),  # its relax and its static are used
        collect_maker=DFTCollectMaker(hull_entries=(str(si_refs["hull"]),)),
        when_no_vasp="run",
    )
    # MP relax settings (LCHARG is left out: the reference predates pymatgen's current default)
    relax_check = {
        "incar_settings": [*MP_STATIC_KEYS, "ISIF", "IBRION"],
        "incar_exclude": ["LCHARG"],
    }
    mock_vasp(
        {
            f"MP GGA relax 1 {sid}": "Si_mp_gga_relax/GGA_Relax_1",
            f"MP GGA relax 2 {sid}": "Si_mp_gga_relax/GGA_Relax_2",
            f"MP GGA static {sid}": "Si_mp_gga_relax/GGA_Static",
        },
        {
            f"MP GGA relax 1 {sid}": relax_check,
            f"MP GGA relax 2 {sid}": relax_check,
            f"MP GGA static {sid}": {"incar_settings": MP_STATIC_KEYS},
        },
    )
    assert run_campaign(maker.make, cid, store, root_dir=tmp_path)["status"] == "completed"
    (doc,) = find(store.additional_stores["structures"], {"stage": "dft"})
    assert doc["dft_status"] == "completed", doc["errors"]
    assert len(doc["dft_task_uuids"]["relax"]) == 2
    assert doc["dft_e_above_hull"] == pytest.approx(SI_STATIC_EPA - SI_MP_EPA, abs=1e-8)
    assert doc["dft_band_gap"] == pytest.approx(doc["dft_band_gaps"]["static"])
    assert doc["dft_eps_elec"] is None and doc["dft_fom"] is None  # no dielectric asked


def test_inputs_off_mp_settings_are_rejected(si_refs, mock_vasp, tmp_path):
    from atomate2.vasp.jobs.mp import MPGGAStaticMaker
    from pymatgen.io.vasp.sets import MPStaticSet

    store = build_job_store("memory")
    cid, sid = "encut-test", "xf-si"
    _campaign(store, cid, [(sid, si_refs["si"], 0.0, True)])
    static = MPGGAStaticMaker(
        input_set_generator=MPStaticSet(
            force_gamma=True, auto_metal_kpoints=True, inherit_incar=False,
            user_incar_settings={"ENCUT": 400},
        )
    )  # fmt: skip
    maker = DFTValidationMaker(static_maker=static, when_no_vasp="run")
    mock_vasp(
        {f"MP GGA static {sid}": si_refs["static"]},
        {f"MP GGA static {sid}": {"incar_settings": MP_STATIC_KEYS}},
    )
    run_campaign(maker.make, cid, store, root_dir=tmp_path)
    (doc,) = find(store.additional_stores["structures"], {"stage": "dft"})
    assert doc["dft_status"] == "failed" and doc["dft_e_above_hull"] is None
    assert doc["errors"][0].startswith("DFT failed: static job")


def test_no_vasp_stores_ready_to_submit_flows(si_refs, mock_vasp, tmp_path, monkeypatch):
    from atomate2 import SETTINGS

    monkeypatch.setattr(SETTINGS, "VASP_CMD", "vasp_std_not_installed_here")
    store = build_job_store("memory")
    cid, sid = "novasp", "xf-si"
    _campaign(store, cid, [(sid, si_refs["si"], 0.0, True)])
    maker = dft_maker_from_config(
        {"k": 3, "dielectric": True, "hull_entries": [str(si_refs["hull"])]}
    )
    assert maker.when_no_vasp == "store"
    res = run_campaign(maker.make, cid, store, root_dir=tmp_path / "a")
    assert res["status"] == "completed"  # stored, not failed
    out = store.get_output(next(j["uuid"] for j in store.query({"name": "dft validation"})))
    assert out["status"] == "pending: no VASP" and out["pending"] == [sid]
    assert "vasp_std_not_installed_here" in out["reason"]
    (doc,) = find(store.additional_stores["structures"], {"stage": "dft"})
    assert doc["dft_status"] == "pending: no VASP" and json.loads(doc["dft_flow"])["jobs"]
    line = dft_status_line(store, cid)
    assert line.startswith("DFT: no VASP here") and "1 ready-to-submit DFT flows" in line
    flows = pending_dft_flows(store, cid)
    names = sorted(job.name for job, _ in flows[sid].iterflow())
    assert names == [f"MP GGA static {sid}", f"dft collect {sid}", f"dielectric {sid}"]
    # the stored flow is ready: run it where "VASP" is (here the mock) and the document fills in
    mock_vasp(
        {f"MP GGA static {sid}": si_refs["static"], f"dielectric {sid}": "Si_dielectric"},
        {f"MP GGA static {sid}": {"incar_settings": MP_STATIC_KEYS},
         f"dielectric {sid}": {"incar_settings": ["LEPSILON"], "check_inputs": ["incar"]}},
    )  # fmt: skip
    run_locally(flows[sid], store=store, root_dir=tmp_path / "b", create_folders=True,
                ensure_success=True)  # fmt: skip
    (doc,) = find(store.additional_stores["structures"], {"stage": "dft"})
    assert doc["dft_status"] == "completed"
    assert doc["dft_fom"] == pytest.approx(doc["dft_eps_elec"] * doc["dft_band_gap"])


def test_dynamic_dft_jobs_are_routed_and_tagged(si_refs):
    """The flows built at run time carry resource tags and the campaign's routing."""
    from jobflow import CURRENT_JOB

    from xtalforge.flows.remote import RESOURCE_KEY, iter_jobs, route_jobs

    store = build_job_store("memory")
    cid = "route"
    _campaign(store, cid, [("xf-1", si_refs["si"], 0.0, True)])
    dft = DFTValidationMaker(when_no_vasp="run").make()
    dft.metadata["campaign_id"] = cid
    route_jobs(Flow([dft]), gpu_worker="g", cpu_worker="c", vasp_worker="v",
               resources={"vasp": {"ntasks": 32}})  # fmt: skip
    store.connect()
    try:
        response = dft.run(store)
    finally:
        CURRENT_JOB.reset()
    new = list(iter_jobs(response.replace))
    by_kind = {}
    for j in new:
        by_kind.setdefault(j.metadata.get(RESOURCE_KEY), []).append(j)
    assert [j.name for j in by_kind["vasp"]] == ["MP GGA static xf-1"]
    (static,) = by_kind["vasp"]
    assert static.config.manager_config == {"worker": "v", "resources": {"ntasks": 32}}
    # jobflow's own "store_inputs" job (made by Response.replace) inherits the stage's tag and
    # runs on the submit worker, as it always did; the xtalforge jobs are routed
    routed_cpu = [j for j in by_kind["cpu"] if j.name != "store_inputs"]
    assert routed_cpu and {j.config.manager_config.get("worker") for j in routed_cpu} == {"c"}
    assert static.metadata["campaign_id"] == cid and static.metadata["structure_id"] == "xf-1"


def test_candidates_restricted_to_the_given_screening(si_refs, monkeypatch):
    """With a ScreenMaker output, only that screening's structures are candidates."""
    from atomate2 import SETTINGS

    monkeypatch.setattr(SETTINGS, "VASP_CMD", "no_vasp_here")
    store = build_job_store("memory")
    cid = "restrict"
    _campaign(
        store, cid, [("xf-ft", si_refs["si"], 0.1, True), ("xf-base", si_refs["si"], 0.0, True)]
    )
    screens = find(store.additional_stores["structures"], {"stage": "screen"})
    for d in screens:
        d["sample_job_uuid"] = "u-finetuned" if d["structure_id"] == "xf-ft" else "u-base"
    bulk_upsert(store.additional_stores["structures"], screens)
    job = DFTValidationMaker(one_per_composition=False).make(
        {"sample_job_uuids": ["u-finetuned"], "n": 1}
    )
    job.metadata["campaign_id"] = cid
    run_locally(Flow([job]), store=store, ensure_success=True)
    out = store.get_output(job.uuid)
    assert out["selected"] == ["xf-ft"] and out["pending"] == ["xf-ft"]
    with pytest.raises(ValueError, match="unknown dft settings"):
        dft_maker_from_config({"k": 3, "dielectrc": True})
