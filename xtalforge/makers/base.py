"""What every xtalforge job needs at run time: its store, its uuid and its campaign.

Jobs find the campaign id in their metadata (``flow.update_metadata({"campaign_id": ...})`` is
applied by :func:`xtalforge.flows.runner.run_campaign`, and jobs added at run time inherit it), and
the JobStore they run against through jobflow's ``CURRENT_JOB``. The same code therefore runs
under ``run_locally`` and under jobflow-remote workers, provided the worker's JobStore has the
xtalforge additional stores (see :mod:`xtalforge.stores.config`).

Every Maker's ``make`` is decorated with :func:`stage_job`, which fixes the job's store access,
its additional-store keys, its output schema and the resource it runs on (``"gpu"``, ``"cpu"``
or ``"vasp"``), as atomate2's ``vasp_job`` does for VASP jobs. Routing to jobflow-remote workers
(:func:`apply_routes`) reads that resource tag only.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jobflow import CURRENT_JOB, Flow, Job, JobConfig, JobStore, job
from pydantic import BaseModel

from xtalforge.stores.config import additional, campaign_store
from xtalforge.stores.documents import find
from xtalforge.stores.jobgraph import iter_jobs

DEFAULT_CAMPAIGN = "default"

#: Job metadata key naming the resource a job needs.
RESOURCE_KEY = "xtalforge_resource"
#: Job metadata key holding the routing table (for dynamic jobs that create more jobs).
ROUTES_KEY = "xtalforge_routes"
#: Known resource kinds.
RESOURCE_KINDS = ("gpu", "cpu", "vasp")


def tag_resource(flow_or_job: Flow | Job, kind: str) -> Flow | Job:
    """Set ``metadata["xtalforge_resource"] = kind`` on every job of a flow (in place)."""
    if kind not in RESOURCE_KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; expected one of {RESOURCE_KINDS}")
    for j in iter_jobs(flow_or_job):
        j.metadata[RESOURCE_KEY] = kind
    return flow_or_job


def job_resource(job: Job, default: str = "cpu") -> str:
    """Return the resource kind of a job: its tag (set by :func:`stage_job`), else ``default``.

    The job's name plays no part: a job that needs a GPU says so through its decorator.
    """
    kind = (job.metadata or {}).get(RESOURCE_KEY)
    return str(kind) if kind else default


def make_routes(
    gpu_worker: str | None = None,
    cpu_worker: str | None = None,
    vasp_worker: str | None = None,
    resources: Mapping[str, Any] | None = None,
    exec_config: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Return a routing table ``{kind: {"worker", "resources", "exec_config"}}``.

    ``vasp_worker`` defaults to ``cpu_worker``; ``resources`` and ``exec_config`` map a kind to
    the jobflow-remote ``resources`` (QResources dict or scheduler keywords) and ``exec_config``
    (name or dict) of its jobs. Kinds without a worker are left out (the submit default applies).
    """
    workers = {"gpu": gpu_worker, "cpu": cpu_worker, "vasp": vasp_worker or cpu_worker}
    resources = dict(resources or {})
    exec_config = dict(exec_config or {})
    unknown = (set(resources) | set(exec_config)) - set(RESOURCE_KINDS)
    if unknown:
        raise ValueError(f"unknown resource kinds {sorted(unknown)}; expected {RESOURCE_KINDS}")
    routes: dict[str, dict[str, Any]] = {}
    for kind in RESOURCE_KINDS:
        r = {
            "worker": workers[kind],
            "resources": copy.deepcopy(resources.get(kind)),
            "exec_config": copy.deepcopy(exec_config.get(kind)),
        }
        if any(v is not None for v in r.values()):
            routes[kind] = r
    return routes


def set_route(job: Job, route: Mapping[str, Any]) -> None:
    """Give ``job`` the jobflow-remote run configuration of ``route`` (worker, resources ...)."""
    from jobflow_remote.config.jobconfig import set_run_config

    set_run_config(
        job,
        worker=route.get("worker"),
        resources=route.get("resources"),
        exec_config=route.get("exec_config"),
        dynamic=False,
    )


def apply_routes(
    flow: Flow | Job | list,
    routes: Mapping[str, Mapping[str, Any]] | None,
    default: str = "cpu",
) -> dict[str, list[str]]:
    """Apply a routing table (see :func:`make_routes`) to every job of ``flow`` (in place).

    Each job gets the run configuration of its resource kind and keeps the table in its
    metadata (``xtalforge_routes``) so that jobs it creates at run time can be routed too.

    Returns
    -------
    dict
        ``{kind: [job names]}``.
    """
    out: dict[str, list[str]] = {}
    for j in iter_jobs(flow):
        kind = job_resource(j, default)
        out.setdefault(kind, []).append(j.name)
        if not routes:
            continue
        j.metadata[ROUTES_KEY] = copy.deepcopy(dict(routes))
        route = routes.get(kind)
        if route:
            set_route(j, route)
    return out


def stage_job(
    method: Callable | None = None,
    *,
    resource: str,
    data: str | list[str] | bool | None = None,
    output_schema: type[BaseModel] | None = None,
    **config: Any,
) -> Callable:
    """Job decorator of every xtalforge stage (``@stage_job(resource="gpu", data="history")``).

    Like atomate2's ``vasp_job``, it fixes in one place what every job of a family shares: the
    JobStore is exposed to the job (:func:`store_config`), large output keys go to the ``data``
    additional store, ``output_schema`` (a pydantic model) types the job's output, and
    ``metadata["xtalforge_resource"]`` names the resource it runs on, which
    :func:`apply_routes` reads to pick a worker.

    Parameters
    ----------
    method
        The function or ``make`` method (when used without parentheses this is not allowed:
        ``resource`` must be given).
    resource
        One of :data:`RESOURCE_KINDS`.
    data
        Output keys stored in the ``data`` additional store (jobflow's ``data=``).
    output_schema
        pydantic model of the job's output (jobflow's ``output_schema``).
    **config
        Extra :class:`jobflow.JobConfig` fields (``on_missing_references``, ...).

    Returns
    -------
    Callable
        The jobflow ``job`` decorator (or the decorated function).
    """
    if resource not in RESOURCE_KINDS:
        raise ValueError(f"unknown resource kind {resource!r}; expected one of {RESOURCE_KINDS}")
    kwargs: dict[str, Any] = {
        "config": store_config(**config),
        "metadata": {RESOURCE_KEY: resource},
    }
    if data is not None:
        kwargs["data"] = data
    if output_schema is not None:
        kwargs["output_schema"] = output_schema
    deco = job(**kwargs)
    return deco if method is None else deco(method)


def store_config(**kwargs: Any) -> JobConfig:
    """Return a JobConfig exposing the JobStore to the job (``@job(config=store_config())``).

    xtalforge jobs write per-structure documents and checkpoints to the JobStore's additional
    stores themselves, so they need ``CURRENT_JOB.store``.
    """
    return JobConfig(expose_store=True, **kwargs)


@dataclass
class JobContext:
    """The running job's store, identity and campaign."""

    store: JobStore
    job_uuid: str | None
    job_name: str | None
    campaign_id: str
    metadata: dict[str, Any]

    @property
    def structures(self):
        """The ``structures`` additional store (connected)."""
        return additional(self.store, "structures")

    @property
    def blobs(self):
        """The ``blobs`` additional store (connected)."""
        return additional(self.store, "blobs")


def job_context(store: JobStore | None = None, campaign_id: str | None = None) -> JobContext:
    """Return the context of the running jobflow job.

    Parameters
    ----------
    store
        Use this store instead of the running job's (for calling job bodies outside jobflow).
    campaign_id
        Override the campaign id found in the job's metadata.

    Raises
    ------
    RuntimeError
        When called outside a running job without a ``store``.
    """
    job = CURRENT_JOB.job
    if store is None:
        # under jobflow-remote the job's own store is a temporary per-job store: open the
        # campaign store ($XTALFORGE_STORE) instead; elsewhere this is CURRENT_JOB.store
        store = campaign_store()
    if store is None:
        raise RuntimeError(
            "no JobStore: run this job through jobflow (run_locally, jobflow-remote) "
            "or pass store="
        )
    metadata = dict(getattr(job, "metadata", None) or {})
    return JobContext(
        store=store,
        job_uuid=getattr(job, "uuid", None),
        job_name=getattr(job, "name", None),
        campaign_id=campaign_id or metadata.get("campaign_id") or DEFAULT_CAMPAIGN,
        metadata=metadata,
    )


def dataset_structures(ctx: JobContext, split: str | None = "train", limit: int | None = None):
    """Return the valid structures of the campaign's ``dataset`` documents (optionally a split)."""
    from pymatgen.core import Structure

    crit: dict[str, Any] = {"campaign_id": ctx.campaign_id, "stage": "dataset", "valid": True}
    if split:
        crit["split"] = split
    docs = find(
        ctx.structures,
        crit,
        properties=["structure", "structure_id", "properties"],
        limit=limit or 0,
    )
    return [Structure.from_dict(d["structure"]) for d in docs], docs
