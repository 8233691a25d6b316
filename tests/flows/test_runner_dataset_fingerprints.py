"""The campaign record names the datasets its ingest jobs loaded (fingerprints)."""

from __future__ import annotations

import pytest
from jobflow import Flow

from xtalforge.flows.runner import run_campaign
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.stores.config import build_job_store
from xtalforge.stores.provenance import get_campaign


def test_record_holds_ingest_fingerprints(tmp_path):
    store = build_job_store("memory", tmp_path)
    job = IngestDatasetMaker(source="demo", limit=12).make()
    res = run_campaign(lambda: Flow([job]), "fp", store)
    assert res["status"] == "completed"
    fps = get_campaign(store, "fp")["dataset_fingerprints"]
    entry = fps[job.name]
    assert len(entry["fingerprint"]) == 64 and entry["n_accepted"] + entry.get("n_rejected", 0) > 0
    assert entry["split"] == "train"


@pytest.mark.shared_data
def test_mp20_source_records_the_split(shared_data, tmp_path):
    store = build_job_store("memory", tmp_path)
    job = IngestDatasetMaker(source=f"mp20:{shared_data / 'mp20'}", limit=200).make()
    assert run_campaign(lambda: Flow([job]), "mp20fp", store)["status"] == "completed"
    entry = get_campaign(store, "mp20fp")["dataset_fingerprints"][job.name]
    desc = entry["dataset_description"]
    assert desc["name"] == "mp20-valtest-minus-heldout" and len(desc["heldout_ids_sha256"]) == 64
    assert entry["n_heldout"] > 0  # some of the first 200 test rows are held out
    docs = list(store.additional_stores["structures"].query(
        {"campaign_id": "mp20fp", "split": "heldout"}, properties=["lineage"]))
    assert len(docs) == entry["n_heldout"]
