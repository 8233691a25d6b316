"""CP2K through atomate2: settings, data paths, and real statics on the self-consistent hull.

The real-run test needs CP2K (``scripts/install_cp2k.sh``, Debian package ``cp2k``) and skips
cleanly without it. It runs three small Si statics with cheap settings (CUTOFF 150 Ry, 20
k-points per atom): the reference Si (the only phase on the tiny MP-20 hull written here) and
a strained Si candidate in two campaigns, the second reusing the cached reference.
"""

from __future__ import annotations

import os

import pytest
from pymatgen.core import Lattice, Structure

from xtalforge.dft.cp2k import Cp2kSettings, configure_cp2k, cp2k_status
from xtalforge.flows.runner import run_campaign
from xtalforge.makers.dft import DFTCollectMaker, DFTValidationMaker
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import bulk_upsert, find, make_result_doc, make_structure_doc
from xtalforge.stores.results import CampaignResults

CHEAP = Cp2kSettings(cutoff=150.0, rel_cutoff=30.0, kpoint_density=20)

needs_cp2k = pytest.mark.skipif(not cp2k_status()[0], reason="CP2K is not installed "
                                "(bash scripts/install_cp2k.sh)")



def _diamond(a: float) -> Structure:
    lat = Lattice.from_parameters(a / 2**0.5, a / 2**0.5, a / 2**0.5, 60, 60, 60)
    return Structure(lat, ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def test_settings_are_recorded_and_fingerprinted():
    d = CHEAP.record()
    assert d["engine"] == "cp2k" and d["functional"] == "PBE"
    assert d["basis"] == "DZVP-MOLOPT-SR-GTH" and d["potential"] == "GTH-PBE"
    assert d["cutoff"] == 150.0 and d["kpoint_density"] == 20
    assert CHEAP.fingerprint() == Cp2kSettings(cutoff=150.0, rel_cutoff=30.0,
                                               kpoint_density=20).fingerprint()
    assert CHEAP.fingerprint() != Cp2kSettings(cutoff=200.0, rel_cutoff=30.0,
                                               kpoint_density=20).fingerprint()
    assert Cp2kSettings(cutoff=300).fingerprint() == Cp2kSettings(cutoff=300.0).fingerprint()
    assert Cp2kSettings(kpoint_density=0).kpoints_settings() is None  # Gamma only
    s = CHEAP.input_settings(["Si"])
    assert s["smearing"] and not s["ot"] and s["spin_polarized"]


def test_status_names_the_installer_when_cp2k_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("XTALFORGE_CP2K_SHARE", str(tmp_path))
    ok, reason = cp2k_status()
    assert not ok
    assert "install_cp2k.sh" in reason and "BASIS_MOLOPT" in reason
    with pytest.raises(RuntimeError, match="CP2K is not available"):
        configure_cp2k(tmp_path / "data")


def test_engine_is_checked():
    with pytest.raises(ValueError, match="engine must be one of"):
        DFTValidationMaker(engine="qe")
    with pytest.raises(ValueError, match="mp20_dir"):
        DFTValidationMaker(engine="cp2k")
    m = DFTValidationMaker(engine="cp2k", mp20_dir="x", cp2k=CHEAP)
    assert m.collect_maker.engine == "cp2k"
    assert m.collect_maker.settings["fingerprint"] == CHEAP.fingerprint()


def test_collector_records_failed_references_and_band_gap():
    coll = DFTCollectMaker(engine="cp2k", settings=CHEAP.record())
    static = {"state": "successful", "dir_name": "/x",
              "output": {"energy_per_atom": -3.2, "bandgap": 0.7, "structure": _diamond(5.43)},
              "input": {"xc": "PBE", "atomic_kind_info": {"atomic_kinds": {
                  "Si_1": {"basis": "DZVP-MOLOPT-SR-GTH", "potential": "GTH-PBE-q4"}}}},
              "run_stats": {"overall": {"total_time": 12.5}}}
    tasks = {"static": {"uuid": "u1", "name": "CP2K static", "output": static}}
    ok = {"formula": "Si", "material_id": "mp-149", "energy_per_atom": -3.3,
          "dft_status": "completed"}
    doc = coll.collect_cp2k("s1", tasks, {}, [ok])
    assert doc["dft_status"] == "completed" and doc["errors"] == []
    assert doc["dft_e_above_hull"] == pytest.approx(0.1)
    assert doc["dft_band_gap"] == 0.7 and doc["dft_wall_time_s"] == 12.5
    assert doc["dft_inputs"]["static"]["atomic_kinds"]["Si_1"]["potential"] == "GTH-PBE-q4"
    assert doc["dft_hull_convention"]["convention"] == "self-consistent"
    assert set(doc["dft_hull_convention"]["conventions"]) == {"mp2020", "self-consistent"}
    failed = coll.collect_cp2k("s1", tasks, {}, [{**ok, "dft_status": "failed",
                                                  "energy_per_atom": None}, None])
    assert failed["dft_status"] == "partial" and failed["dft_e_above_hull"] is None
    assert any("reference Si (mp-149) failed" in e for e in failed["errors"])
    assert any("produced no output" in e for e in failed["errors"])
    crashed = coll.collect_cp2k("s1", {"static": {"uuid": "u1", "name": "x", "output": {}}},
                                {}, [ok])
    assert crashed["dft_status"] == "failed"
    assert any(e.startswith("DFT failed") for e in crashed["errors"])


def _campaign(store, cid, structures):
    docs = []
    for sid, s, e in structures:
        docs.append(make_structure_doc(s, structure_id=sid, campaign_id=cid, stage="sample"))
        docs.append(make_result_doc(sid, campaign_id=cid, stage="screen", e_above_hull=e,
                                    unique=True, novel=True, mlip="test"))
    store.connect()
    bulk_upsert(store.additional_stores["structures"], docs)


@needs_cp2k
def test_real_cp2k_statics_self_consistent_hull_and_cache(tmp_path, monkeypatch, mini_mp20):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    ref = _diamond(5.47)
    mp20 = mini_mp20(tmp_path / "mp20", [("mp-149", ref, 0.0)])
    store = build_job_store("memory")
    bad = Structure(Lattice.cubic(4.0), ["Pm", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    _campaign(store, "c1", [("si-strained", _diamond(5.80), 0.05), ("pm-si", bad, 0.0)])
    maker = DFTValidationMaker(engine="cp2k", cp2k=CHEAP, mp20_dir=str(mp20), k=5,
                               structure_source="generated", when_no_vasp="error")
    result = run_campaign(maker.make, "c1", store, root_dir=tmp_path / "runs")
    assert result["status"] == "completed", result

    df = CampaignResults(store, "c1").to_dataframe().set_index("structure_id")
    g = df.loc["si-strained"]
    assert g["dft_status"] == "completed", g["dft_errors"]
    assert g["dft_engine"] == "cp2k"
    assert g["dft_engine_settings"]["cutoff"] == 150.0
    assert g["dft_engine_settings"]["fingerprint"] == CHEAP.fingerprint()
    assert g["dft_hull_convention"]["convention"] == "self-consistent"
    assert g["dft_e_above_hull"] > 0.0  # a strained diamond lies above diamond
    assert g["dft_wall_time_s"] > 0
    assert g["dft_references"][0]["material_id"] == "mp-149"
    b = df.loc["pm-si"]  # a bad input: recorded on its structure, the other one completed
    assert b["dft_status"] == "failed"
    assert any("no DZVP-MOLOPT-SR-GTH basis set" in e for e in b["dft_errors"])

    structures = store.additional_stores["structures"]
    refs = find(structures, {"stage": "dft_reference"})
    assert len(refs) == 1 and refs[0]["dft_status"] == "completed"
    assert refs[0]["energy_per_atom"] == pytest.approx(g["dft_references"][0]["energy_per_atom"])

    # a second campaign with the same settings reuses the cached reference energy
    _campaign(store, "c2", [("si-strained-2", _diamond(5.80), 0.05)])
    again = DFTValidationMaker(engine="cp2k", cp2k=CHEAP, mp20_dir=str(mp20), k=5,
                               structure_source="generated", when_no_vasp="error")
    result = run_campaign(again.make, "c2", store, root_dir=tmp_path / "runs2")
    assert result["status"] == "completed", result
    assert len(find(structures, {"stage": "dft_reference"})) == 1
    d2 = CampaignResults(store, "c2").to_dataframe().set_index("structure_id").loc[
        "si-strained-2"]
    assert d2["dft_e_above_hull"] == pytest.approx(g["dft_e_above_hull"], abs=1e-6)


def test_cp2k_engine_from_campaign_config():
    from xtalforge.makers.dft import dft_maker_from_config

    m = dft_maker_from_config({"engine": "cp2k", "mp20_dir": "mp20", "k": 3,
                               "cp2k": {"cutoff": 300, "kpoint_density": 100}})
    assert m.engine == "cp2k" and m.k == 3
    assert m.cp2k == Cp2kSettings(cutoff=300, kpoint_density=100)
    assert m.collect_maker.settings["fingerprint"] == m.cp2k.fingerprint()
    with pytest.raises(ValueError, match=r"unknown dft.cp2k settings \['cutof'\]"):
        dft_maker_from_config({"engine": "cp2k", "mp20_dir": "x", "cp2k": {"cutof": 300}})


def test_reference_energy_recovered_from_a_finished_static(mini_mp20, tmp_path):
    """A run stopped between a reference static and its writer loses nothing."""
    from xtalforge.dft.hull import reference_key
    from xtalforge.makers.base import JobContext

    store = build_job_store("memory")
    store.connect()
    ref = _diamond(5.47)
    key = reference_key(ref, CHEAP.fingerprint())
    store.docs_store.update([{"uuid": "u-ref", "index": 1, "name": "CP2K static ref Si",
                              "metadata": {"structure_id": f"ref-{key}"},
                              "output": {"state": "successful", "dir_name": "/runs/x",
                                         "output": {"energy_per_atom": -107.1},
                                         "run_stats": {"overall": {"total_time": 42.0}}}}],
                            key=["uuid", "index"])
    ctx = JobContext(store=store, job_uuid="j", job_name="dft validation", campaign_id="c",
                     metadata={})
    maker = DFTValidationMaker(engine="cp2k", cp2k=CHEAP, mp20_dir=str(tmp_path))
    phase = {"material_id": "mp-149", "formula": "Si", "elemental": True,
             "structure": ref.as_dict()}
    found = maker._finished_reference_tasks(ctx, {key: phase, "other-key": phase}, set())
    assert list(found) == [key]
    assert found[key]["energy_per_atom"] == -107.1 and found[key]["dft_wall_time_s"] == 42.0
    docs = find(ctx.structures, {"stage": "dft_reference"})
    assert [d["reference_key"] for d in docs] == [key]
    assert maker._finished_reference_tasks(ctx, {key: phase}, {key}) == {}


@needs_cp2k
def test_relax_then_static_flow_is_built_and_tagged():
    m = DFTValidationMaker(engine="cp2k", cp2k=CHEAP, mp20_dir="x", cp2k_relax=True)
    flow, coll, uuids = m.cp2k_structure_flow(_diamond(5.5), "s1", "c1", {"dft_rank": 0},
                                              [{"formula": "Si", "energy_per_atom": -1.0}])
    names = [j.name for j in flow.jobs[0].jobs]
    assert names == ["CP2K cell opt s1", "CP2K static s1"]
    assert set(uuids) == {"relax", "static"}
    assert coll.name == "dft collect s1"
    assert all(j.metadata["structure_id"] == "s1" for j in flow.jobs[0].jobs)
    gen = flow.jobs[0].jobs[1].maker.input_set_generator
    assert gen.user_input_settings["cutoff"] == 150.0
    assert gen.user_input_settings["basis_and_potential"]["Si"] == {
        "basis": "DZVP-MOLOPT-SR-GTH", "potential": "GTH-PBE-q4"}
