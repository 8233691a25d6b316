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

A job that raises is caught by jobflow (the rest of the flow goes on); :func:`run_campaign`
records each failed job's exception (type, message, where it was raised) in the run entry of the
campaign record (``runs[-1]["errors"]``: ``{job name: "Type: message"}`` and
``runs[-1]["error_details"]``), and jobs not run because a job they need failed say so.

A changed configuration under an existing campaign id is refused
(:class:`CampaignConfigMismatch`) once a job of the stored flow has finished; while none has (a
first run that failed on its inputs), the new configuration and its flow replace the stored ones
(the replacement is recorded in the run entry, ``config_replaced``) and the failed jobs' partial
documents are removed. With ``force_config`` a changed configuration is applied even though jobs
have finished: the flow is rebuilt from the new configuration and each of its jobs is matched to
a stored job with the same name, function and maker settings, arguments and (matched) upstream
jobs (:func:`xtalforge.stores.jobgraph.rebuild_with_kept_jobs`). A matched job keeps the stored
job's uuid, so a finished one is skipped and its output and documents serve the new flow; the
other jobs (a changed stage and everything downstream of it) run under new uuids, and the stored
jobs left unmatched lose their outputs and documents. ``config_replaced`` then lists the jobs
``kept``, ``resumed`` (matched, unfinished), ``rebuilt`` and ``removed_jobs``.

A dynamic job that replaced itself (``Response(replace=...)``) counts as finished only once the
output at its highest index is a real one, not another replacement (a training stopped by its run
budget may replace itself several times). Before a rerun, outputs at index > 1 of unfinished jobs
are cleared (:func:`clear_replacements`): the rerun starts such a job again at index 1.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobflow import Flow, Job, JobStore, run_locally

from xtalforge.stores import runlock
from xtalforge.stores.documents import now
from xtalforge.stores.jobgraph import (  # noqa: F401 - re-exported for callers of runner
    REPLACED_KEY,
    clear_replacements,
    completed_uuids,
    iter_jobs,
    rebuild_with_kept_jobs,
    replaced_output,
)
from xtalforge.stores.provenance import (
    fingerprint_json,
    get_campaign,
    new_campaign_record,
    upsert_campaign,
)
from xtalforge.stores.runlock import CampaignLocked, RunLock  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

class CampaignConfigMismatch(RuntimeError):
    """Raised when a campaign id is reused with a different configuration."""


def _dataset_fingerprints(store: JobStore, jobs: list[Job]) -> dict[str, Any]:
    """Fingerprints of the datasets that finished ingest jobs loaded, by job name.

    An ingest output carries its dataset's ``name``, ``path`` and ``fingerprint`` (and, for the
    project's MP-20 split, a ``dataset_description`` with file and held-out-ids hashes).
    """
    out: dict[str, Any] = {}
    if not jobs:
        return out
    docs = store.query({"uuid": {"$in": [j.uuid for j in jobs]}},
                       properties=["uuid", "index", "output"])
    names = {j.uuid: j.name for j in jobs}
    for d in docs:
        o = d.get("output")
        if isinstance(o, dict) and o.get("fingerprint") and "n_accepted" in o:
            out[names[d["uuid"]]] = {k: o.get(k) for k in (
                "name", "path", "fingerprint", "n_accepted", "n_rejected", "split",
                "n_heldout", "dataset_description") if o.get(k) is not None}
    return out


def one_line_reason(exc: BaseException, limit: int = 500) -> str:
    """Return ``"ExceptionType: first line of the message"`` (at most ``limit`` characters)."""
    msg = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else exc
    lines = [ln.strip() for ln in str(msg).strip().splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(exc: BaseException) -> str | None:
    """Return ``file:line in function`` of the innermost frame of an exception."""
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else None
    if not tb:
        return None
    fr = tb[-1]
    return f"{fr.filename}:{fr.lineno} in {fr.name}"


class _JobFailureRecorder(logging.Filter):
    """Record the exceptions that ``run_locally`` catches, through its own log record.

    jobflow's local manager catches a failing job's exception and logs it (``logger.info`` in
    its ``except`` block) on the ``jobflow.managers.local`` logger. This filter, attached to that
    logger for the duration of one run, reads the exception being handled (``sys.exc_info()``)
    and the failing job (``jobflow.CURRENT_JOB``) when that record is emitted. Records below the
    logger's original level are dropped again, so the output is what it would have been.
    """

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.failures: dict[str, dict[str, Any]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = sys.exc_info()[1]
        if exc is not None:
            from jobflow import CURRENT_JOB

            job = getattr(CURRENT_JOB, "job", None)
            uuid = getattr(job, "uuid", None) or f"unknown-{len(self.failures)}"
            self.failures[uuid] = {
                "name": getattr(job, "name", None),
                "index": getattr(job, "index", None),
                "type": type(exc).__name__,
                "message": str(exc)[:4000],
                "reason": one_line_reason(exc),
                "where": _where(exc),
            }
        return record.levelno >= self.threshold


@contextmanager
def _record_job_failures():
    """Yield a :class:`_JobFailureRecorder` listening to jobflow's local manager."""
    jf_logger = logging.getLogger("jobflow.managers.local")
    threshold = jf_logger.getEffectiveLevel()
    level = jf_logger.level
    # a logging.config.dictConfig elsewhere (disable_existing_loggers) may have disabled it
    disabled = jf_logger.disabled
    recorder = _JobFailureRecorder(logging.CRITICAL + 1 if disabled else threshold)
    jf_logger.addFilter(recorder)
    jf_logger.disabled = False
    if threshold > logging.INFO or disabled:
        jf_logger.setLevel(logging.INFO)  # the failure record is an INFO record
    try:
        yield recorder
    finally:
        jf_logger.removeFilter(recorder)
        jf_logger.setLevel(level)
        jf_logger.disabled = disabled


def job_inputs(j: Job, names: dict[str, str] | None = None) -> dict[str, Any]:
    """Return the stage's inputs of a job, for its failure record.

    A Maker's settings (its dataclass fields) and the job's arguments, made JSON-safe; an
    argument that is another job's output reads ``"output of <job name>"``; long values are cut.
    """
    import dataclasses

    from jobflow import OutputReference
    from monty.json import jsanitize

    def short(v: Any) -> Any:
        if isinstance(v, OutputReference):
            return f"output of {(names or {}).get(v.uuid, v.uuid)}"
        text = jsanitize(v, strict=False, allow_bson=False)
        return text if len(repr(text)) <= 300 else repr(text)[:300] + "..."

    out: dict[str, Any] = {}
    maker = getattr(j.function, "__self__", None)
    if maker is not None and dataclasses.is_dataclass(maker):
        out["settings"] = {f.name: short(getattr(maker, f.name))
                           for f in dataclasses.fields(maker)}
    if j.function_args:
        out["args"] = [short(a) for a in j.function_args]
    if j.function_kwargs:
        out["kwargs"] = {k: short(v) for k, v in j.function_kwargs.items()}
    return out


def _failure_reasons(
    failed: list[Job], sub: Flow, recorded: dict[str, dict[str, Any]], store: JobStore
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Return ``({job name: reason}, details)`` for the jobs of this run that did not finish."""
    errors: dict[str, str] = {}
    details: list[dict[str, Any]] = []
    names = {j.uuid: j.name for j in failed}
    raised = {u for u in recorded if u in names}
    # failures of jobs created at run time (a replacement flow's jobs, other uuids)
    added = {u: info for u, info in recorded.items() if u not in names}
    try:
        graph = sub.graph
    except Exception:  # noqa: BLE001 - the graph only improves the message
        graph = None
    for j in failed:
        info = recorded.get(j.uuid)
        if info is not None:
            entry = {"name": j.name, "uuid": j.uuid, **{k: v for k, v in info.items()
                                                      if k != "name"}}
        else:
            upstream: list[str] = []
            if graph is not None and j.uuid in graph:
                import networkx as nx

                upstream = sorted(names[u] for u in nx.ancestors(graph, j.uuid) & raised)
            if upstream:
                reason = f"not run: it needs the output of failed job(s) {upstream}"
            elif added:
                first = next(iter(added.values()))
                reason = (
                    f"{len(added)} job(s) it added at run time failed, e.g. "
                    f"{first['name']!r}: {first['reason']}"
                )
            elif store.docs_store.count({"uuid": j.uuid}):
                reason = "its replacement did not finish; run again to continue"
            else:
                reason = "not run (see the log with --verbose)"
            entry = {"name": j.name, "uuid": j.uuid, "type": None, "reason": reason}
        entry["inputs"] = job_inputs(j, names)
        errors[j.name] = entry["reason"]
        details.append(entry)
    for uuid, info in added.items():
        details.append({"uuid": uuid, "added_at_run_time": True, **info})
    return errors, details


def _discard_unfinished(store: JobStore, uuids: list[str]) -> dict[str, int]:
    """Remove the job documents and structure documents of the jobs ``uuids``.

    Used for the jobs of a stored flow that a replaced configuration drops (unfinished jobs,
    or with ``force_config`` the stored jobs that the rebuilt flow does not keep).
    """
    from xtalforge.stores.config import additional

    crit = {"uuid": {"$in": list(uuids)}}
    n_jobs = store.docs_store.count(crit)
    if n_jobs:
        store.docs_store.remove_docs(crit)
    structures = additional(store, "structures")
    scrit = {"job_uuid": {"$in": list(uuids)}}
    n_docs = structures.count(scrit)
    if n_docs:
        structures.remove_docs(scrit)
    return {"job_documents": n_jobs, "structure_documents": n_docs}


def _new_flow(flow_factory, campaign_id: str) -> Flow:
    """Build the flow (``flow_factory`` is a Flow, a Job or a callable returning one)."""
    flow = flow_factory() if callable(flow_factory) else flow_factory
    if isinstance(flow, Job):
        flow = Flow([flow], name=flow.name)
    flow.update_metadata({"campaign_id": campaign_id})
    return flow


def run_campaign(
    flow_factory,
    campaign_id: str,
    store: JobStore,
    config: dict[str, Any] | None = None,
    seeds: dict[str, int] | None = None,
    root_dir: str | os.PathLike | None = None,
    force_config: bool = False,
    lock_ttl_s: float | None = None,
    heartbeat_s: float | None = None,
) -> dict[str, Any]:
    """Run (or resume) a campaign and record its provenance.

    One run per campaign id at a time: the run holds the campaign's lease
    (:class:`xtalforge.stores.runlock.RunLock`) from before it reads the campaign record until
    it returns; a second run meanwhile raises :class:`~xtalforge.stores.runlock.CampaignLocked`
    naming the holder. A lease whose holder died (killed) is taken over.

    Parameters
    ----------
    flow_factory
        A :class:`jobflow.Flow` or a zero-argument callable returning one; used the first
        time a campaign id is run (later runs use the stored graph), when a changed
        configuration replaces a stored flow none of whose jobs finished, and with
        ``force_config``.
    campaign_id
        Campaign identifier.
    store
        The campaign's JobStore (see :func:`xtalforge.stores.build_job_store`).
    config
        Campaign configuration recorded in the provenance record. A later run with a different
        configuration replaces the stored configuration and flow when no job of the stored flow
        has finished; otherwise it raises :class:`CampaignConfigMismatch` unless
        ``force_config``.
    seeds
        Random seeds recorded in the provenance record.
    root_dir
        Directory where jobs run (``run_locally(create_folders=True)``).
    force_config
        Apply a changed configuration even though jobs have finished: the flow is rebuilt from
        ``flow_factory``; finished jobs whose settings and upstream jobs are unchanged keep their
        uuids and stored outputs and are not redone, the others run again.
    lock_ttl_s, heartbeat_s
        The run lease's time to live (a holder on another host without a heartbeat for this
        long is dead) and heartbeat period; defaults ``runlock.TTL_S`` and
        ``runlock.HEARTBEAT_S``.

    Returns
    -------
    dict
        ``{"campaign_id", "status", "ran", "skipped", "failed", "n_jobs", ...}`` (job names) and,
        when jobs failed, ``"errors"`` (``{job name: "Type: message"}``) and
        ``"error_details"``; the same run entry is stored in the campaign record.
    """
    config = dict(config or {})
    store.connect()
    lock = RunLock(
        store,
        campaign_id,
        ttl_s=runlock.TTL_S if lock_ttl_s is None else lock_ttl_s,
        heartbeat_s=runlock.HEARTBEAT_S if heartbeat_s is None else heartbeat_s,
        command=_command_line(),
    )
    with lock:
        return _run_locked(
            flow_factory, campaign_id, store, config, seeds, root_dir, force_config, lock
        )


def _command_line() -> str | None:
    """Return the ``xtalforge ...`` command of this process (for resume hints), else ``None``."""
    import shlex

    argv = list(sys.argv)
    if not argv:
        return None
    p = Path(argv[0])
    if p.name != "xtalforge" and not (p.name == "__main__.py" and p.parent.name == "xtalforge"):
        return None  # a script or a test calling run_campaign
    return " ".join(["xtalforge", *(shlex.quote(a) for a in argv[1:])])


def _run_locked(
    flow_factory,
    campaign_id: str,
    store: JobStore,
    config: dict[str, Any],
    seeds: dict[str, int] | None,
    root_dir: str | os.PathLike | None,
    force_config: bool,
    lock: RunLock,
) -> dict[str, Any]:
    """Run the body of :func:`run_campaign` while holding the campaign's lease."""
    record = get_campaign(store, campaign_id)
    replaced: dict[str, Any] | None = None
    if record is not None and record.get("flow"):
        flow = Flow.from_dict(record["flow"])
        old_config = record.get("config", {})
        if fingerprint_json(old_config) != fingerprint_json(config):
            stored_jobs = list(iter_jobs(flow))
            finished = completed_uuids(store, [j.uuid for j in stored_jobs])
            if not finished:
                removed = _discard_unfinished(store, [j.uuid for j in stored_jobs])
                logger.warning(
                    "campaign %s: the configuration changed and no job of the stored flow had "
                    "finished: the new configuration and its flow replace the stored ones "
                    "(removed %d job and %d structure documents of the unfinished jobs)",
                    campaign_id,
                    removed["job_documents"],
                    removed["structure_documents"],
                )
                replaced = {
                    "at": now(),
                    "reason": "configuration changed; no job of the stored flow had finished",
                    "previous_config": old_config,
                    "previous_config_fingerprint": fingerprint_json(old_config),
                    "removed": removed,
                }
            elif not force_config:
                done_names = sorted(j.name for j in stored_jobs if j.uuid in finished)
                raise CampaignConfigMismatch(
                    f"campaign {campaign_id!r} exists with a different configuration and "
                    f"{len(finished)} finished job(s) {done_names}; use a new campaign id, or "
                    "--force-config (force_config=True) to rebuild the flow from the new "
                    "configuration, keeping the finished jobs that the change does not touch"
                )
            else:
                new_flow = _new_flow(flow_factory, campaign_id)
                rebuilt_flow, plan = rebuild_with_kept_jobs(new_flow, flow, finished)
                dropped = [j for j in stored_jobs if j.uuid not in plan["kept_uuids"]]
                removed = _discard_unfinished(store, [j.uuid for j in dropped])
                logger.warning(
                    "campaign %s: the configuration changed; force_config rebuilds the flow "
                    "from the new configuration: kept %d finished job(s) %s, rebuilt %s "
                    "(removed %d job and %d structure documents of the replaced jobs)",
                    campaign_id,
                    len(plan["kept"]),
                    plan["kept"],
                    plan["rebuilt"],
                    removed["job_documents"],
                    removed["structure_documents"],
                )
                replaced = {
                    "at": now(),
                    "reason": "configuration changed; forced (force_config): the flow was "
                    "rebuilt from the new configuration, keeping the jobs it does not touch",
                    "forced": True,
                    "previous_config": old_config,
                    "previous_config_fingerprint": fingerprint_json(old_config),
                    "kept": plan["kept"],
                    "rebuilt": plan["rebuilt"],
                    "removed_jobs": sorted(j.name for j in dropped),
                    "removed": removed,
                }
                flow_factory = rebuilt_flow
        if replaced is None:
            logger.info("resuming campaign %s from its stored flow graph", campaign_id)
    if record is None or not record.get("flow") or replaced is not None:
        flow = _new_flow(flow_factory, campaign_id)
        fps = {}
        for j in iter_jobs(flow):
            for key in ("dataset_fingerprint",):
                if key in j.metadata:
                    fps[j.name] = j.metadata[key]
        new = new_campaign_record(
            campaign_id, config, flow.to_json(), seeds=seeds, dataset_fingerprints=fps
        )
        if record is not None:  # a replaced configuration keeps the campaign's history
            new["created_at"] = record.get("created_at", new["created_at"])
            new["runs"] = list(record.get("runs", []))
        record = new
        upsert_campaign(store, record)
    jobs = list(iter_jobs(flow))
    done = completed_uuids(store, [j.uuid for j in jobs])
    remaining = [j for j in jobs if j.uuid not in done]
    run_entry: dict[str, Any] = {
        "started_at": now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": lock.command,
        "skipped": sorted(j.name for j in jobs if j.uuid in done),
    }
    if replaced is not None:
        run_entry["config_replaced"] = replaced
    if lock.took_over is not None:
        run_entry["took_over_lock_of"] = {
            k: lock.took_over.get(k) for k in ("host", "pid", "acquired_at", "heartbeat_at")
        }
    prev = (record.get("runs") or [None])[-1]
    if prev is not None and "finished_at" not in prev:  # that run's process died
        prev["interrupted"] = "the process stopped without finishing (killed?)"
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
    errors: dict[str, str] = {}
    details: list[dict[str, Any]] = []
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
        try:
            with _record_job_failures() as recorder:
                run_locally(
                    sub,
                    store=store,
                    root_dir=root,
                    create_folders=root is not None,
                    allow_external_references=True,
                    log=False,
                )
        except BaseException as exc:  # interrupted or jobflow itself failed: record, re-raise
            run_entry.update(
                {
                    "finished_at": now(),
                    "interrupted": one_line_reason(exc),
                    "ran": [],
                    "failed": [],
                }
            )
            record["status"] = "interrupted"
            record["runs"][-1] = run_entry
            try:
                upsert_campaign(store, record)
            except Exception:  # noqa: BLE001 - keep the original exception
                logger.exception("campaign %s: could not record the interruption", campaign_id)
            raise
        now_done = completed_uuids(store, [j.uuid for j in jobs])
        failed_jobs = [j for j in remaining if j.uuid not in now_done]
        failed = [j.name for j in failed_jobs]
        if failed_jobs:
            errors, details = _failure_reasons(failed_jobs, sub, recorder.failures, store)
        done = now_done
    run_entry.update(
        {
            "finished_at": now(),
            "ran": [j.name for j in remaining if j.uuid in done],
            "failed": failed,
        }
    )
    if errors:
        run_entry["errors"] = errors
        run_entry["error_details"] = details
    record["status"] = "completed" if len(done) == len(jobs) else "incomplete"
    record["runs"][-1] = run_entry
    record.setdefault("dataset_fingerprints", {}).update(
        _dataset_fingerprints(store, [j for j in jobs if j.uuid in done]))
    upsert_campaign(store, record)
    for name, reason in errors.items():
        logger.error("campaign %s: job %r did not finish: %s", campaign_id, name, reason)
    return {
        "campaign_id": campaign_id,
        "status": record["status"],
        **run_entry,
        "n_jobs": len(jobs),
    }
