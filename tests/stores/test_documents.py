"""Store settings, bulk documents, provenance and the CampaignResults view."""

from __future__ import annotations

import textwrap

import pytest
from jobflow import Flow, JobStore
from maggma.stores import MemoryStore, MongoStore, MontyStore
from pymatgen.core import Lattice, Structure

from xtalforge.flows.runner import run_campaign
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.stores.config import REQUIRED_ADDITIONAL_STORES, StoreConfigError, build_job_store
from xtalforge.stores.documents import bulk_upsert, find, make_result_doc, make_structure_doc
from xtalforge.stores.results import CampaignResults


def _nacl() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


@pytest.fixture(params=["embedded", "memory"])
def store(request, tmp_path) -> JobStore:
    s = build_job_store(request.param, tmp_path)
    s.connect()
    return s


def test_embedded_store_is_montystore_with_additional_stores(tmp_path):
    s = build_job_store(None, tmp_path)
    assert isinstance(s.docs_store, MontyStore)
    assert set(REQUIRED_ADDITIONAL_STORES) <= set(s.additional_stores)
    assert all(isinstance(x, MontyStore) for x in s.additional_stores.values())
    assert (tmp_path / "store").is_dir()


def test_mongodb_uri_builds_mongo_jobstore_without_connecting():
    from maggma.stores.gridfs import GridFSStore

    s = build_job_store("mongodb://user:pw@db.example.org:27017/campaigns_db", ".")
    assert isinstance(s.docs_store, MongoStore)
    assert s.docs_store.database == "campaigns_db"
    assert isinstance(s.additional_stores["data"], GridFSStore)
    assert isinstance(s.additional_stores["blobs"], GridFSStore)
    assert isinstance(s.additional_stores["structures"], MongoStore)
    assert s.additional_stores["structures"].collection_name == "structures"
    # default database name when the URI has none
    assert build_job_store("mongodb://localhost", ".").docs_store.database == "xtalforge"


def test_yaml_store_file(tmp_path):
    spec = tmp_path / "store.yaml"
    spec.write_text(
        textwrap.dedent("""
        docs_store: {type: MemoryStore, collection_name: jobs}
        additional_stores:
          data: {type: MemoryStore, collection_name: data}
          blobs: {type: MemoryStore, collection_name: blobs}
          structures: {type: MemoryStore, collection_name: structures}
          campaigns: {type: MemoryStore, collection_name: campaigns}
    """)
    )
    s = build_job_store(str(spec), tmp_path)
    assert isinstance(s.additional_stores["structures"], MemoryStore)
    bad = tmp_path / "bad.yaml"
    bad.write_text("docs_store: {type: MemoryStore, collection_name: jobs}\n")
    with pytest.raises(StoreConfigError, match="lacks additional stores"):
        build_job_store(str(bad), tmp_path)
    with pytest.raises(StoreConfigError, match="cannot interpret"):
        build_job_store("redis://nope", tmp_path)


def test_bulk_upsert_round_trip_and_no_duplicates(store):
    coll = store.additional_stores["structures"]
    s = _nacl()
    docs = [
        make_structure_doc(
            s,
            structure_id=f"id{i}",
            campaign_id="c",
            stage="sample",
            properties={"e": float("nan"), "i": i},
        )
        for i in range(50)
    ]
    assert bulk_upsert(coll, docs) == {"inserted": 50, "replaced": 0}
    again = [
        make_structure_doc(
            s, structure_id=f"id{i}", campaign_id="c", stage="sample", properties={"i": -i}
        )
        for i in range(40, 60)
    ]
    assert bulk_upsert(coll, again, scope={"campaign_id": "c"}) == {"inserted": 10, "replaced": 10}
    got = find(coll, {"campaign_id": "c"})
    assert len(got) == 60 and len({d["doc_id"] for d in got}) == 60
    d0 = next(d for d in got if d["structure_id"] == "id0")
    assert d0["properties"]["e"] is None  # NaN stored as None, not NaN
    assert Structure.from_dict(d0["structure"]) == s
    assert d0["reduced_formula"] == "NaCl" and d0["elements"] == ["Cl", "Na"]
    assert next(d for d in got if d["structure_id"] == "id45")["properties"]["i"] == -45
    with pytest.raises(ValueError, match="duplicate keys"):
        bulk_upsert(coll, [docs[0], docs[0]])


def test_results_merge_stages_history_and_filters(store):
    coll = store.additional_stores["structures"]
    s = _nacl()
    bulk_upsert(
        coll,
        [
            make_structure_doc(
                s,
                structure_id=f"s{i}",
                campaign_id="c",
                stage="sample",
                lineage={"checkpoint_id": "ck1"},
                job_uuid="j1",
            )
            for i in range(4)
        ],
    )
    bulk_upsert(
        coll,
        [
            make_result_doc(
                f"s{i}",
                campaign_id="c",
                stage="screen",
                job_uuid="j2",
                e_above_hull=0.05 * i,
                metastable=0.05 * i < 0.1,
                novel=i % 2 == 0,
            )
            for i in range(3)
        ],
    )
    res = CampaignResults(store, "c")
    df = res.to_dataframe()
    assert len(df) == 4 and "screen_job_uuid" in df.columns
    assert list(res.candidates(metastable=True).structure_id) == ["s0", "s1"]
    assert list(res.candidates(metastable=True, novel=True).structure_id) == ["s0"]
    assert len(res.candidates(formula="NaCl")) == 4
    assert len(res.candidates(formula="Cl-Na")) == 4
    assert res.candidates(formula="LiF").empty
    h = res.history("s1")
    assert [d["stage"] for d in h["documents"]] == ["sample", "screen"]
    # another campaign's documents are invisible
    assert CampaignResults(store, "other").to_dataframe().empty


def test_ingest_flow_records_provenance(store, tmp_path):
    maker = IngestDatasetMaker(source="demo", limit=30)
    out = run_campaign(
        lambda: Flow([maker.make()]),
        "prov",
        store,
        config={"k": 1},
        seeds={"seed": 7},
        root_dir=tmp_path / "runs",
    )
    assert out["status"] == "completed" and out["ran"] == ["ingest dataset"]
    res = CampaignResults(store, "prov")
    rec = res.campaign()
    assert rec["seeds"] == {"seed": 7} and rec["config"] == {"k": 1}
    assert rec["versions"]["pymatgen"] and rec["versions"]["jobflow"]
    assert rec["host"]["hostname"]
    assert rec["flow"]["@class"] == "Flow"
    docs = res.documents(stage="dataset")
    assert len(docs) == 30
    job_uuid = docs[0]["job_uuid"]
    assert all(d["lineage"]["dataset_fingerprint"] for d in docs)
    h = res.history(docs[0]["structure_id"])
    assert h["jobs"][0]["uuid"] == job_uuid and h["jobs"][0]["name"] == "ingest dataset"
    assert h["campaign"]["campaign_id"] == "prov"
    # resume: nothing is redone
    again = run_campaign(lambda: Flow([maker.make()]), "prov", store, config={"k": 1})
    assert again["ran"] == [] and again["skipped"] == ["ingest dataset"]
    assert len(res.documents(stage="dataset")) == 30
    # a changed configuration under the same id is refused
    from xtalforge.flows.runner import CampaignConfigMismatch

    with pytest.raises(CampaignConfigMismatch):
        run_campaign(lambda: Flow([maker.make()]), "prov", store, config={"k": 2})
