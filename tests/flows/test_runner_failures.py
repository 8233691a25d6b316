"""run_campaign: failure reasons in the run entry; a changed config after a failed first run."""

from __future__ import annotations

import logging

import pytest
from jobflow import Flow, Response, job

from xtalforge.flows.runner import CampaignConfigMismatch, replaced_output, run_campaign
from xtalforge.makers.base import job_context, store_config
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import find
from xtalforge.stores.provenance import get_campaign


@pytest.fixture(autouse=True)
def _loggers_enabled(monkeypatch):
    """A dictConfig run by an earlier test (jobflow-remote's runner) may have disabled loggers."""
    for name in ("xtalforge", "xtalforge.flows.runner"):
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)


@pytest.fixture
def store():
    s = build_job_store("memory")
    s.connect()
    return s


@job(config=store_config())
def half_written(path: str):
    """Write one structure document, then fail like a loader on a missing file."""
    ctx = job_context()
    ctx.structures.update(
        [{"doc_id": "x/dataset", "structure_id": "x", "campaign_id": ctx.campaign_id,
          "stage": "dataset", "job_uuid": ctx.job_uuid}],
        key="doc_id",
    )
    raise FileNotFoundError(f"dataset {path} does not exist")


@job
def consume(value):
    return value


@job
def inner(x):
    raise RuntimeError(f"inner {x} broke")


@job
def outer():
    return Response(replace=Flow([inner(1)]), output=replaced_output(n=1))


@job
def interrupt():
    raise KeyboardInterrupt


def _flow(path):
    first = half_written(path)
    return Flow([first, consume(first.output)])


def test_failed_jobs_have_their_reason_in_the_run_entry(store, tmp_path, caplog):
    level = logging.getLogger("jobflow.managers.local").level
    with caplog.at_level(logging.ERROR, logger="xtalforge"):
        out = run_campaign(lambda: _flow("/no/such.csv"), "fail", store, config={"p": 1},
                           root_dir=tmp_path)
    assert out["status"] == "incomplete"
    assert sorted(out["failed"]) == ["consume", "half_written"]
    assert out["errors"]["half_written"] == (
        "FileNotFoundError: dataset /no/such.csv does not exist"
    )
    assert out["errors"]["consume"] == "not run: it needs the output of failed job(s) " \
        "['half_written']"
    detail = next(d for d in out["error_details"] if d["name"] == "half_written")
    assert detail["type"] == "FileNotFoundError" and "half_written" in detail["where"]
    # the stage's inputs are stored with the failure
    assert detail["inputs"]["args"] == ["/no/such.csv"]
    consume_detail = next(d for d in out["error_details"] if d["name"] == "consume")
    assert consume_detail["inputs"]["args"] == ["output of half_written"]
    run = get_campaign(store, "fail")["runs"][-1]
    assert run["errors"] == out["errors"] and run["failed"] == out["failed"]
    # one log line per failed job, with the reason; jobflow's logger is left as it was
    assert "job 'half_written' did not finish: FileNotFoundError: dataset /no/such.csv" \
        in caplog.text
    assert logging.getLogger("jobflow.managers.local").level == level


def test_changed_config_replaces_a_flow_with_no_finished_job(store, tmp_path, caplog):
    run_campaign(lambda: _flow("/bad.csv"), "fix", store, config={"source": "/bad.csv"},
                 root_dir=tmp_path)
    assert find(store.additional_stores["structures"], {"campaign_id": "fix"})
    old_uuids = {j["uuid"] for j in get_campaign(store, "fix")["flow"]["jobs"]}
    maker = IngestDatasetMaker(source="demo", limit=5)
    with caplog.at_level(logging.WARNING, logger="xtalforge"):
        out = run_campaign(lambda: Flow([maker.make()]), "fix", store,
                           config={"source": "demo"}, root_dir=tmp_path)
    assert "no job of the stored flow had finished" in caplog.text
    assert out["status"] == "completed" and out["ran"] == ["ingest dataset"]
    rec = get_campaign(store, "fix")
    assert rec["config"] == {"source": "demo"}
    assert {j["uuid"] for j in rec["flow"]["jobs"]}.isdisjoint(old_uuids)
    assert len(rec["runs"]) == 2 and "errors" in rec["runs"][0]
    replaced = rec["runs"][1]["config_replaced"]
    assert replaced["previous_config"] == {"source": "/bad.csv"}
    assert replaced["removed"]["structure_documents"] == 1
    # the failed job's partial document is gone; the new flow's documents are there
    docs = find(store.additional_stores["structures"], {"campaign_id": "fix"})
    assert len(docs) == 5 and all(d["job_name"] == "ingest dataset" for d in docs)

    # once a job has finished, a changed configuration is refused ...
    with pytest.raises(CampaignConfigMismatch, match=r"1 finished job\(s\) \['ingest dataset'\]"):
        run_campaign(lambda: Flow([maker.make()]), "fix", store, config={"source": "other"})
    # ... unless forced: the flow is rebuilt from the new configuration; the ingest job is
    # unchanged (only the recorded configuration differs), so it is kept, not redone
    out = run_campaign(lambda: Flow([maker.make()]), "fix", store, config={"source": "other"},
                       force_config=True)
    assert out["skipped"] == ["ingest dataset"] and out["ran"] == []
    assert out["config_replaced"]["kept"] == ["ingest dataset"]
    assert get_campaign(store, "fix")["config"] == {"source": "other"}


def test_same_config_after_failure_resumes_the_stored_flow(store, tmp_path):
    run_campaign(lambda: _flow("/bad.csv"), "same", store, config={"a": 1}, root_dir=tmp_path)
    uuids = [j["uuid"] for j in get_campaign(store, "same")["flow"]["jobs"]]
    out = run_campaign(lambda: _flow("/other.csv"), "same", store, config={"a": 1},
                       root_dir=tmp_path)
    assert "config_replaced" not in out
    assert [j["uuid"] for j in get_campaign(store, "same")["flow"]["jobs"]] == uuids
    assert out["errors"]["half_written"].endswith("/bad.csv does not exist")


def test_interrupted_run_is_recorded(store, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_campaign(lambda: Flow([interrupt()]), "intr", store, root_dir=tmp_path)
    rec = get_campaign(store, "intr")
    assert rec["status"] == "interrupted"
    assert rec["runs"][-1]["interrupted"] == "KeyboardInterrupt"


def test_failure_of_a_job_added_at_run_time_is_named(store, tmp_path):
    out = run_campaign(lambda: Flow([outer()]), "added", store, root_dir=tmp_path)
    assert out["failed"] == ["outer"]
    assert out["errors"]["outer"] == (
        "1 job(s) it added at run time failed, e.g. 'inner': RuntimeError: inner 1 broke"
    )
    added = [d for d in out["error_details"] if d.get("added_at_run_time")]
    assert [d["name"] for d in added] == ["inner"] and added[0]["type"] == "RuntimeError"


def test_a_failed_makers_settings_are_its_recorded_inputs(store, tmp_path):
    maker = IngestDatasetMaker(source=str(tmp_path / "missing.csv"), limit=3)
    out = run_campaign(lambda: Flow([maker.make()]), "inputs", store, root_dir=tmp_path)
    assert out["status"] == "incomplete"
    detail = get_campaign(store, "inputs")["runs"][-1]["error_details"][0]
    assert detail["inputs"]["settings"]["source"] == str(tmp_path / "missing.csv")
    assert detail["inputs"]["settings"]["limit"] == 3
