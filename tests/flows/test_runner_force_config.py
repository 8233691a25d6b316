"""run_campaign(force_config=True): the flow is rebuilt from the new configuration and the
finished jobs that the change does not touch are kept (not redone, their documents kept)."""

from __future__ import annotations

import pytest
from jobflow import Flow, job

from xtalforge.flows.runner import CampaignConfigMismatch, run_campaign
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import find
from xtalforge.stores.provenance import get_campaign


@pytest.fixture
def store():
    s = build_job_store("memory")
    s.connect()
    return s


@job
def scaled_count(ingested: dict, scale: int) -> int:
    """A cheap downstream stage: the number of ingested structures times ``scale``."""
    return ingested["n_accepted"] * scale


def _factory(limit: int, scale: int):
    def make() -> Flow:
        ingest = IngestDatasetMaker(source="demo", limit=limit).make()
        return Flow([ingest, scaled_count(ingest.output, scale)])

    return make


def _cfg(limit, scale):
    return {"dataset": {"source": "demo", "limit": limit}, "scale": scale}


def _state(store, cid):
    rec = get_campaign(store, cid)
    uuids = {j["name"]: j["uuid"] for j in rec["flow"]["jobs"]}
    outputs = {d["uuid"]: (d["output"], d["completed_at"])
               for d in store.query({}, properties=["uuid", "output", "completed_at"])}
    docs = sorted((d["doc_id"], d["job_uuid"])
                  for d in find(store.additional_stores["structures"], {"campaign_id": cid}))
    return rec, uuids, outputs, docs


def test_force_config_keeps_untouched_upstream_and_reruns_the_changed_stage(store, tmp_path):
    first = run_campaign(_factory(4, 2), "fc", store, config=_cfg(4, 2), root_dir=tmp_path)
    assert first["status"] == "completed"
    _, uuids0, out0, docs0 = _state(store, "fc")
    assert out0[uuids0["scaled_count"]][0] == 8 and len(docs0) == 4

    with pytest.raises(CampaignConfigMismatch, match="rebuild the flow from the new"):
        run_campaign(_factory(4, 3), "fc", store, config=_cfg(4, 3), root_dir=tmp_path)

    out = run_campaign(_factory(4, 3), "fc", store, config=_cfg(4, 3), root_dir=tmp_path,
                       force_config=True)
    assert out["status"] == "completed"
    assert out["skipped"] == ["ingest dataset"] and out["ran"] == ["scaled_count"]
    rec, uuids1, out1, docs1 = _state(store, "fc")
    assert rec["config"] == _cfg(4, 3)
    # ingest kept: same uuid, same stored output (not rewritten), same structure documents
    assert uuids1["ingest dataset"] == uuids0["ingest dataset"]
    assert out1[uuids0["ingest dataset"]] == out0[uuids0["ingest dataset"]]
    assert docs1 == docs0
    # the changed stage ran again with the new setting; its old output is gone
    assert uuids1["scaled_count"] != uuids0["scaled_count"]
    assert out1[uuids1["scaled_count"]][0] == 12
    assert uuids0["scaled_count"] not in out1
    entry = rec["runs"][-1]["config_replaced"]
    assert entry["forced"] and entry["previous_config"] == _cfg(4, 2)
    assert entry["kept"] == ["ingest dataset"] and entry["rebuilt"] == ["scaled_count"]
    assert entry["removed_jobs"] == ["scaled_count"]
    assert entry["removed"] == {"job_documents": 1, "structure_documents": 0}

    # a plain rerun with the new configuration now resumes: nothing runs
    again = run_campaign(_factory(4, 3), "fc", store, config=_cfg(4, 3), root_dir=tmp_path)
    assert again["ran"] == [] and sorted(again["skipped"]) == ["ingest dataset", "scaled_count"]


def test_force_config_with_a_changed_upstream_reruns_everything(store, tmp_path):
    run_campaign(_factory(4, 2), "up", store, config=_cfg(4, 2), root_dir=tmp_path)
    _, uuids0, _, docs0 = _state(store, "up")
    out = run_campaign(_factory(3, 2), "up", store, config=_cfg(3, 2), root_dir=tmp_path,
                       force_config=True)
    assert out["status"] == "completed"
    assert out["skipped"] == [] and sorted(out["ran"]) == ["ingest dataset", "scaled_count"]
    rec, uuids1, out1, docs1 = _state(store, "up")
    assert set(uuids1.values()).isdisjoint(uuids0.values())
    assert out1[uuids1["scaled_count"]][0] == 6
    assert not set(uuids0.values()) & set(out1)
    # only the new ingest job's documents remain
    assert len(docs1) == 3 and {u for _, u in docs1} == {uuids1["ingest dataset"]}
    entry = rec["runs"][-1]["config_replaced"]
    assert entry["kept"] == [] and entry["rebuilt"] == ["ingest dataset", "scaled_count"]
    assert entry["removed"]["structure_documents"] == len(docs0) == 4
