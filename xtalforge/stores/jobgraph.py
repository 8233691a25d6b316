"""The job graph of a campaign as the store sees it: iteration, replacement chains, completion.

Library rooms (makers, stores) and the runner share these helpers; they live here so that
nothing below :mod:`xtalforge.flows` imports it.
"""

from __future__ import annotations

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
