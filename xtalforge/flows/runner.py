"""Run a campaign flow locally with provenance and resume.

:func:`run_campaign` is the one entry point used by ``xtalforge run``/``demo`` and campaign
scripts:

1. the first run of a campaign id stores its provenance record, including the flow graph
   (``flow.to_json()``) with the job uuids;
2. a later run with the same id rebuilds the flow **from the stored graph** (same uuids), skips
   every job that already has an output in the store, and runs the rest with
   ``run_locally(allow_external_references=True)``: references to finished jobs resolve from the
   store. Finished jobs are not redone;
3. inside a job, stages write per-structure documents with deterministic ids through upserts, so a
   job interrupted midway and run again replaces its partial documents instead of duplicating
   them (and ingestion/sampling skip what is already stored).

A dynamic job that replaced itself (``Response(replace=...)``) counts as finished only once the
output at its highest index is a real one, not another replacement (a training stopped by its run
budget may replace itself several times). Before a rerun, outputs at index > 1 of unfinished jobs
are cleared (:func:`clear_replacements`): the rerun starts such a job again at index 1.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jobflow import Flow, Job, JobStore, run_locally

from xtalforge.stores.documents import now
from xtalforge.stores.provenance import (
    fingerprint_json,
    get_campaign,
    new_campaign_record,
    upsert_campaign,
)

logger = logging.getLogger(__name__)

#: Key placed in the output of a job that replaced itself (see :func:`replaced_output`).
REPLACED_KEY = "_xtalforge_replaced"


class CampaignConfigMismatch(RuntimeError):
    """Raised when a campaign id is reused with a different configuration."""


def replaced_output(**fields: Any) -> dict[str, Any]:
    """Return the output of a job that replaces itself, marked for resume bookkeeping."""
    return {REPLACED_KEY: True, **fields}


def iter_jobs(flow: Flow | Job) -> Iterator[Job]:
    """Yield every job of a (nested) flow."""
    if isinstance(flow, Job):
        yield flow
        return
    for item in flow.jobs:
        yield from iter_jobs(item)


def completed_uuids(store: JobStore, uuids: list[str]) -> set[str]:
    """Return the uuids among ``uuids`` whose job has finished (see module docstring)."""
    if not uuids:
        return set()
    docs = list(store.query({"uuid": {"$in": list(uuids)}}, properties=["uuid", "index", "output"]))
    by_uuid: dict[str, list[dict]] = {}
    for d in docs:
        by_uuid.setdefault(d["uuid"], []).append(d)
    done = set()
    for uuid, ds in by_uuid.items():
        # a job that replaced itself (possibly several times: a training continued over runs)
        # is finished only when the output of its highest index is a real output
        last = max(ds, key=lambda d: d["index"])
        out = last.get("output")
        if not (isinstance(out, dict) and out.get(REPLACED_KEY)):
            done.add(uuid)
    return done


def clear_replacements(store: JobStore, uuids: list[str]) -> int:
    """Delete the stored outputs of index > 1 of jobs about to run again; return how many.

    A rerun starts an unfinished job again at index 1; outputs that an earlier run's
    replacement chain left at higher indices would otherwise be taken for the job's latest
    output (``OutputReference.resolve(which="last")``) and by :func:`completed_uuids`.
    """
    if not uuids:
        return 0
    crit = {"uuid": {"$in": list(uuids)}, "index": {"$gt": 1}}
    n = store.docs_store.count(crit)
    if n:
        store.docs_store.remove_docs(crit)
    return n


def run_campaign(
    flow_factory,
    campaign_id: str,
    store: JobStore,
    config: dict[str, Any] | None = None,
    seeds: dict[str, int] | None = None,
    root_dir: str | os.PathLike | None = None,
    force_config: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a campaign and record its provenance.

    Parameters
    ----------
    flow_factory
        A :class:`jobflow.Flow` or a zero-argument callable returning one; only used the first
        time a campaign id is run (later runs use the stored graph).
    campaign_id
        Campaign identifier.
    store
        The campaign's JobStore (see :func:`xtalforge.stores.build_job_store`).
    config
        Campaign configuration recorded in the provenance record; a later run with a different
        configuration raises :class:`CampaignConfigMismatch` unless ``force_config``.
    seeds
        Random seeds recorded in the provenance record.
    root_dir
        Directory where jobs run (``run_locally(create_folders=True)``).
    force_config
        Resume even if the configuration changed (the stored flow is still used).

    Returns
    -------
    dict
        ``{"campaign_id", "ran", "skipped", "failed", "status"}`` (job uuids and names).
    """
    config = dict(config or {})
    store.connect()
    record = get_campaign(store, campaign_id)
    if record is not None and record.get("flow"):
        old_fp = fingerprint_json(record.get("config", {}))
        if old_fp != fingerprint_json(config) and not force_config:
            raise CampaignConfigMismatch(
                f"campaign {campaign_id!r} exists with a different configuration; use a new "
                "campaign id, or force_config=True (--force-config) to resume the stored flow"
            )
        flow = Flow.from_dict(record["flow"])
        logger.info("resuming campaign %s from its stored flow graph", campaign_id)
    else:
        flow = flow_factory() if callable(flow_factory) else flow_factory
        if isinstance(flow, Job):
            flow = Flow([flow], name=flow.name)
        flow.update_metadata({"campaign_id": campaign_id})
        fps = {}
        for j in iter_jobs(flow):
            for key in ("dataset_fingerprint",):
                if key in j.metadata:
                    fps[j.name] = j.metadata[key]
        record = new_campaign_record(
            campaign_id, config, flow.to_json(), seeds=seeds, dataset_fingerprints=fps
        )
        upsert_campaign(store, record)
    jobs = list(iter_jobs(flow))
    done = completed_uuids(store, [j.uuid for j in jobs])
    remaining = [j for j in jobs if j.uuid not in done]
    run_entry: dict[str, Any] = {
        "started_at": now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "skipped": sorted(j.name for j in jobs if j.uuid in done),
    }
    logger.info(
        "campaign %s: %d jobs, %d already finished, %d to run",
        campaign_id,
        len(jobs),
        len(done),
        len(remaining),
    )
    record["status"] = "running"
    record.setdefault("runs", []).append(run_entry)
    upsert_campaign(store, record)
    failed: list[str] = []
    if remaining:
        for j in remaining:
            j.hosts = []
        stale = clear_replacements(store, [j.uuid for j in remaining])
        if stale:
            logger.info("campaign %s: cleared %d outputs of unfinished replacement chains",
                        campaign_id, stale)
        sub = Flow(remaining, name=flow.name)
        root = Path(root_dir) if root_dir else None
        if root:
            root.mkdir(parents=True, exist_ok=True)
        run_locally(
            sub,
            store=store,
            root_dir=root,
            create_folders=root is not None,
            allow_external_references=True,
            log=False,
        )
        now_done = completed_uuids(store, [j.uuid for j in jobs])
        failed = [j.name for j in remaining if j.uuid not in now_done]
        done = now_done
    run_entry.update(
        {
            "finished_at": now(),
            "ran": [j.name for j in remaining if j.uuid in done],
            "failed": failed,
        }
    )
    record["status"] = "completed" if len(done) == len(jobs) else "incomplete"
    record["runs"][-1] = run_entry
    upsert_campaign(store, record)
    if failed:
        logger.error("campaign %s: jobs did not finish: %s", campaign_id, failed)
    return {
        "campaign_id": campaign_id,
        "status": record["status"],
        **run_entry,
        "n_jobs": len(jobs),
    }
