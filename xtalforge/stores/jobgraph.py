"""The job graph of a campaign as the store sees it: iteration, replacement chains, completion.

Library rooms (makers, stores) and the runner share these helpers; they live here so that
nothing below :mod:`xtalforge.flows` imports it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from jobflow import Flow, Job, JobStore

__all__ = ["REPLACED_KEY", "clear_replacements", "completed_uuids", "iter_jobs",
           "replaced_output"]

#: Key placed in the output of a job that replaced itself (see :func:`replaced_output`).
REPLACED_KEY = "_xtalforge_replaced"


def replaced_output(**fields: Any) -> dict[str, Any]:
    """Return the output of a job that replaces itself, marked for resume bookkeeping."""
    return {REPLACED_KEY: True, **fields}


def iter_jobs(flow: Flow | Job | list | tuple) -> Iterator[Job]:
    """Yield every job of a (nested) flow, a job, or a list of them."""
    if isinstance(flow, Job):
        yield flow
    elif isinstance(flow, (list, tuple)):
        for f in flow:
            yield from iter_jobs(f)
    else:
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


def _strip_versions(obj: Any) -> Any:
    """Drop ``@version`` keys (package versions are not settings) from a serialized object."""
    if isinstance(obj, dict):
        return {k: _strip_versions(v) for k, v in obj.items() if k != "@version"}
    if isinstance(obj, list):
        return [_strip_versions(v) for v in obj]
    return obj


def _with_references(obj: Any, mapping: dict[str, str] | None) -> Any:
    """Replace the uuid of every serialized ``OutputReference`` through ``mapping``.

    ``mapping`` is ``None`` for the stored flow (its uuids are the canonical ones); for the new
    flow, a reference to a job matched to a stored one becomes that job's stored uuid and any
    other reference becomes ``"new:<uuid>"``, which no stored job has.
    """
    if isinstance(obj, dict):
        if obj.get("@class") == "OutputReference" and "uuid" in obj:
            out = dict(obj)
            if mapping is not None:
                u = obj["uuid"]
                out["uuid"] = mapping.get(u, f"new:{u}")
            return {k: (v if k == "uuid" else _with_references(v, mapping))
                    for k, v in out.items()}
        return {k: _with_references(v, mapping) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_with_references(v, mapping) for v in obj]
    return obj


def job_signature(job: Job, mapping: dict[str, str] | None = None) -> str:
    """Return a fingerprint of what a job computes: name, function, arguments and metadata.

    The function of a maker's job is serialized with its maker (all its settings). References
    to upstream outputs enter through :func:`_with_references`, so a job whose upstream job
    changed gets another signature. ``campaign_id`` metadata and package versions are left out.
    """
    from monty.json import jsanitize

    d = jsanitize(
        {
            "name": job.name,
            "function": job.function,
            "function_args": job.function_args,
            "function_kwargs": job.function_kwargs,
            "metadata": {k: v for k, v in (job.metadata or {}).items() if k != "campaign_id"},
            "index": job.index,
        },
        strict=True,
        enum_values=True,
        allow_bson=True,
    )
    d = _with_references(_strip_versions(d), mapping)
    return json.dumps(d, sort_keys=True, default=str)


def _replace_strings(obj: Any, mapping: dict[str, str]) -> Any:
    if isinstance(obj, str):
        return mapping.get(obj, obj)
    if isinstance(obj, dict):
        return {k: _replace_strings(v, mapping) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_replace_strings(v, mapping) for v in obj]
    return obj


def rebuild_with_kept_jobs(
    new_flow: Flow, stored_flow: Flow, finished: set[str]
) -> tuple[Flow, dict[str, Any]]:
    """Give the jobs of ``new_flow`` that the stored flow already holds their stored uuids.

    A job of the new flow matches a stored job when both have the same
    :func:`job_signature` with the new job's references mapped to the stored jobs its
    upstream jobs matched (in topological order): same name, same function and maker settings,
    same arguments, and the same upstream jobs. A matched job takes the stored job's uuid (the
    references to it are rewritten too), so a finished one is skipped and its stored output and
    documents (``job_uuid``) serve the new flow; a changed job gets a new uuid and so does
    everything downstream of it.

    Parameters
    ----------
    new_flow
        The flow built from the new configuration.
    stored_flow
        The campaign's stored flow.
    finished
        Uuids of the stored jobs that have finished.

    Returns
    -------
    tuple
        The new flow with matched uuids, and ``{"kept": [names of matched finished jobs],
        "resumed": [names of matched unfinished jobs], "rebuilt": [names of the new flow's
        other jobs], "kept_uuids": set of the matched stored uuids}``.
    """
    import networkx as nx

    stored: dict[str, list[Job]] = {}
    for j in iter_jobs(stored_flow):
        stored.setdefault(job_signature(j), []).append(j)
    new_jobs = {j.uuid: j for j in iter_jobs(new_flow)}
    graph = new_flow.graph
    order = [u for u in nx.topological_sort(graph) if u in new_jobs]
    order += [u for u in new_jobs if u not in set(order)]
    mapping: dict[str, str] = {}
    kept: list[str] = []
    resumed: list[str] = []
    rebuilt: list[str] = []
    for u in order:
        job = new_jobs[u]
        candidates = stored.get(job_signature(job, mapping))
        if candidates:
            old = candidates.pop(0)
            mapping[u] = old.uuid
            (kept if old.uuid in finished else resumed).append(job.name)
        else:
            rebuilt.append(job.name)
    rename = {n: o for n, o in mapping.items() if n != o}
    out = Flow.from_dict(_replace_strings(new_flow.as_dict(), rename)) if rename else new_flow
    return out, {
        "kept": sorted(kept),
        "resumed": sorted(resumed),
        "rebuilt": sorted(rebuilt),
        "kept_uuids": set(mapping.values()),
    }
