"""Run campaigns through jobflow-remote: routing, project files, submission, single-process runs.

Routing
-------
Every xtalforge job carries ``metadata["xtalforge_resource"]`` = ``"gpu"`` (training, RL,
sampling, MLIP screening on a GPU node), ``"cpu"`` (bookkeeping, collectors) or ``"vasp"``
(atomate2 VASP jobs), set by its decorator (:func:`xtalforge.makers.base.stage_job`); untagged
jobs run as ``"cpu"``. The routing helpers live in :mod:`xtalforge.makers.base` and are
re-exported here. :func:`route_jobs` turns the tags into jobflow-remote run configurations
(``jobflow_remote.config.jobconfig.set_run_config``: worker, resources, exec_config) so that GPU
stages go to a GPU worker and VASP jobs to a CPU worker. Jobs created at run time by a dynamic
job (e.g. the DFT flows built by :class:`~xtalforge.makers.dft.DFTValidationMaker`) are routed by
that job itself with :func:`apply_routes`, from the routing table :func:`route_jobs` stores in
its metadata (``xtalforge_routes``): jobflow's own propagation (``pass_manager_config`` or a
dynamic ``set_run_config``) would give every generated job the same worker.

Stores
------
jobflow-remote runs a job against a temporary JSON store in the job's folder and copies it back;
xtalforge jobs that *read* campaign documents (the DFT stage reads the screening results) need
the campaign store itself. :func:`campaign_store` returns it: under jobflow-remote it is built
from ``$XTALFORGE_STORE`` (export it in the worker's ``pre_run``; :func:`make_project_config`
does), elsewhere it is the running job's store.

Queues
------
``jf`` (CLI and runner daemon) needs a MongoDB for its queue. Where none exists (CI machines),
:func:`run_with_runner` runs the whole queue in one Python process with a MemoryStore (mongomock)
queue: ``Runner.job_controller.add_flow`` + ``Runner.run_all_jobs``. Workers may still be real
SLURM workers: the jobs run through ``sbatch`` and write to a persistent job store (MontyStore
or MongoDB).
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobflow import Flow, Job, JobStore

from xtalforge.makers.base import (
    RESOURCE_KEY,
    RESOURCE_KINDS,
    ROUTES_KEY,
    apply_routes,
    job_resource,
    make_routes,
    tag_resource,
)
from xtalforge.stores.config import campaign_store, in_jobflow_remote
from xtalforge.stores.jobgraph import iter_jobs

__all__ = [
    "RESOURCE_KEY",
    "RESOURCE_KINDS",
    "ROUTES_KEY",
    "apply_routes",
    "campaign_store",
    "in_jobflow_remote",
    "iter_jobs",
    "job_resource",
    "jobstore_spec",
    "make_project_config",
    "make_routes",
    "prepare_flow",
    "projects_folder",
    "route_jobs",
    "run_with_runner",
    "slurm_worker",
    "submit_campaign",
    "tag_resource",
]

logger = logging.getLogger(__name__)

def route_jobs(
    flow: Flow | Job,
    gpu_worker: str | None = None,
    cpu_worker: str | None = None,
    vasp_worker: str | None = None,
    resources: Mapping[str, Any] | None = None,
    exec_config: Mapping[str, Any] | None = None,
    default: str = "cpu",
) -> dict[str, list[str]]:
    """Route GPU stages to ``gpu_worker``, VASP jobs to ``vasp_worker``, the rest to ``cpu_worker``.

    Parameters
    ----------
    flow
        The campaign flow (modified in place).
    gpu_worker, cpu_worker, vasp_worker
        jobflow-remote worker names (``vasp_worker`` defaults to ``cpu_worker``).
    resources
        ``{kind: resources}`` e.g. ``{"gpu": {"gres": "gpu:1", "time": "04:00:00"},
        "vasp": {"nodes": 1, "ntasks": 64, "time": "12:00:00"}}`` (qtoolkit QResources dicts or
        scheduler keywords).
    exec_config
        ``{kind: exec_config}`` (name of a project exec_config or a dict: modules, export,
        pre_run).
    default
        Kind of untagged jobs that match no name.

    Returns
    -------
    dict
        ``{kind: [job names]}`` as routed (dynamic jobs are routed when they are created).
    """
    routes = make_routes(gpu_worker, cpu_worker, vasp_worker, resources, exec_config)
    return apply_routes(flow, routes, default)


def jobstore_spec(
    setting: str | os.PathLike | None, campaign_dir: str | os.PathLike = "."
) -> dict[str, Any]:
    """Return a jobflow JobStore dict spec (``docs_store`` + the four xtalforge additional stores).

    ``setting`` as :func:`xtalforge.stores.build_job_store` understands it: embedded /
    ``montydb:///path`` (MontyStore on sqlite; shared filesystem needed between runner and
    workers), ``memory`` (single process only) or a ``mongodb://`` URI (MongoStore and
    GridFSStore with ``uri``).
    """
    from urllib.parse import urlparse

    from xtalforge.stores.config import (
        COLLECTIONS,
        REQUIRED_ADDITIONAL_STORES,
        resolve_setting,
    )

    s = resolve_setting(None if setting is None else str(setting))
    names = ["docs", *REQUIRED_ADDITIONAL_STORES]
    if s == "embedded" or s.startswith("montydb://"):
        path = (
            Path(s[len("montydb://") :])
            if s.startswith("montydb://")
            else Path(campaign_dir) / "store"
        ).resolve()
        stores = {
            n: {
                "type": "MontyStore",
                "collection_name": COLLECTIONS[n],
                "database_path": str(path),
                "database_name": "xtalforge",
                "storage": "sqlite",
            }
            for n in names
        }
    elif s == "memory":
        stores = {n: {"type": "MemoryStore", "collection_name": COLLECTIONS[n]} for n in names}
    elif s.startswith(("mongodb://", "mongodb+srv://")):
        db = urlparse(s).path.lstrip("/").split("?")[0] or "xtalforge"
        stores = {}
        for n in names:
            grid = n in ("data", "blobs")
            stores[n] = {
                "type": "GridFSStore" if grid else "MongoStore",
                "uri": s,
                "database": db,
                "collection_name": COLLECTIONS[n],
                **({"compression": True} if grid else {}),
            }
    else:
        raise ValueError(
            f"jobstore_spec: cannot express store setting {s!r} as a spec; pass a dict instead"
        )
    return {
        "docs_store": stores["docs"],
        "additional_stores": {k: stores[k] for k in REQUIRED_ADDITIONAL_STORES},
    }


# --------------------------------------------------------------------------- project files
def slurm_worker(
    work_dir: str | os.PathLike,
    *,
    resources: Mapping[str, Any] | None = None,
    pre_run: str | None = None,
    host: str | None = None,
    user: str | None = None,
    execution_cmd: str | None = None,
    max_jobs: int | None = None,
    scheduler_type: str = "slurm",
    timeout_execute: int | None = None,
) -> dict[str, Any]:
    """Return a jobflow-remote worker dict: local (``host=None``) or remote over SSH.

    ``resources`` are the worker's default scheduler resources (e.g. ``{"partition": "gpu",
    "gres": "gpu:1", "time": "04:00:00"}``); per-job resources set by :func:`route_jobs` override
    them.
    """
    w: dict[str, Any] = {
        "type": "local" if host is None else "remote",
        "scheduler_type": scheduler_type,
        "work_dir": str(work_dir),
    }
    if host is not None:
        w["host"] = host
        if user:
            w["user"] = user
    if resources:
        w["resources"] = dict(resources)
    if pre_run:
        w["pre_run"] = pre_run
    if execution_cmd:
        w["execution_cmd"] = execution_cmd
    if max_jobs:
        w["max_jobs"] = int(max_jobs)
    if timeout_execute:
        w["timeout_execute"] = int(timeout_execute)
    return w


def _queue_spec(queue: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(queue, Mapping):
        return {"store": dict(queue)}
    if queue == "memory":
        return {"store": {"type": "MemoryStore", "collection_name": "jobs"}}
    if queue.startswith(("mongodb://", "mongodb+srv://")):
        from urllib.parse import urlparse

        db = urlparse(queue).path.lstrip("/").split("?")[0] or "xtalforge_queue"
        return {
            "store": {
                "type": "MongoStore",
                "uri": queue,
                "database": db,
                "collection_name": "jobs",
            }
        }
    raise ValueError(f"queue must be 'memory', a mongodb:// URI or a store dict, not {queue!r}")


def projects_folder() -> Path:
    """Return jobflow-remote's projects folder (``$JFREMOTE_PROJECTS_FOLDER`` or ~/.jfremote)."""
    from jobflow_remote import SETTINGS

    return Path(SETTINGS.projects_folder).expanduser()


def make_project_config(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    base_dir: str | os.PathLike | None = None,
    queue: str | Mapping[str, Any] = "memory",
    job_store: str | os.PathLike | Mapping[str, Any] | None = None,
    workers: Mapping[str, Mapping[str, Any]] | None = None,
    pre_run: str | None = None,
    store_env: str | None = None,
    exec_config: Mapping[str, Mapping[str, Any]] | None = None,
    runner_delay: float | None = None,
) -> Path:
    """Write a jobflow-remote project YAML for an xtalforge campaign.

    Parameters
    ----------
    name
        Project name (``jf -p NAME ...``, ``Runner(project_name=NAME)``).
    path
        Output file; default ``<projects folder>/<name>.yaml``.
    base_dir
        Project folder (runner logs, temporary files); default ``<projects folder>/<name>``.
    queue
        ``"memory"`` (mongomock, only with :func:`run_with_runner` in one process), a MongoDB URI
        (what ``jf`` and the runner daemon need) or a maggma store dict.
    job_store
        The campaign store: a setting for :func:`jobstore_spec` (``montydb:///path``, a MongoDB
        URI ...) or a JobStore spec dict. Default: embedded MontyStore under ``base_dir/store``.
    workers
        ``{name: worker dict}`` (see :func:`slurm_worker`). Default: ``gpu`` and ``cpu`` local
        SLURM workers under ``base_dir/run_<name>`` using this Python environment.
    pre_run
        Shell lines prepended to every worker's ``pre_run`` (module loads, conda activate ...).
    store_env
        Value exported as ``$XTALFORGE_STORE`` in every worker's ``pre_run`` so that xtalforge
        jobs reach the campaign store (see :func:`campaign_store`). Default: ``job_store`` when
        it is a string setting.
    exec_config
        Named execution configurations (``{name: {"modules": [...], "export": {...},
        "pre_run": "..."}}``).
    runner_delay
        Set every runner delay (checkout, status checks ...) to this many seconds (tests: 1).

    Returns
    -------
    Path
        The YAML file written.
    """
    import yaml

    folder = projects_folder()
    path = Path(path) if path else folder / f"{name}.yaml"
    base = Path(base_dir) if base_dir else folder / name
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    if job_store is None:
        job_store = f"montydb://{base / 'store'}"
    js_spec = dict(job_store) if isinstance(job_store, Mapping) else jobstore_spec(job_store, base)
    if store_env is None and not isinstance(job_store, Mapping):
        store_env = str(job_store)
    env_lines = []
    if pre_run:
        env_lines.append(pre_run.strip())
    if store_env:
        env_lines.append(f"export XTALFORGE_STORE={shlex.quote(store_env)}")
    if workers is None:
        venv_bin = Path(sys.executable).parent
        workers = {
            w: slurm_worker(base / f"run_{w}", pre_run=f'export PATH="{venv_bin}:$PATH"')
            for w in ("gpu", "cpu")
        }
    wdicts: dict[str, dict[str, Any]] = {}
    for wname, w in workers.items():
        w = dict(w)
        lines = [*env_lines, *([w["pre_run"].strip()] if w.get("pre_run") else [])]
        if lines:
            w["pre_run"] = "\n".join(lines)
        if w.get("type", "local") == "local":
            Path(w["work_dir"]).mkdir(parents=True, exist_ok=True)
        wdicts[wname] = w
    project: dict[str, Any] = {
        "name": name,
        "base_dir": str(base),
        "workers": wdicts,
        "queue": _queue_spec(queue),
        "jobstore": js_spec,
    }
    if exec_config:
        project["exec_config"] = {k: dict(v) for k, v in exec_config.items()}
    if runner_delay is not None:
        d = float(runner_delay)
        project["runner"] = {
            "delay_checkout": d,
            "delay_check_run_status": d,
            "delay_advance_status": d,
            "delay_refresh_limited": d,
            "delay_update_batch": d,
        }
    # validate with jobflow-remote's own model before writing
    from jobflow_remote.config.base import Project

    Project.model_validate(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    logger.info("wrote jobflow-remote project %s to %s", name, path)
    return path


# --------------------------------------------------------------------------- submission
def prepare_flow(
    flow: Flow | Job,
    campaign_id: str | None,
    routes: Mapping[str, Mapping[str, Any]] | None,
) -> Flow:
    """Wrap a job in a flow, set the campaign id (also for run-time jobs) and route the jobs."""
    if isinstance(flow, Job):
        flow = Flow([flow], name=flow.name)
    if campaign_id:
        flow.update_metadata({"campaign_id": campaign_id})
    apply_routes(flow, routes)
    return flow


def _record_campaign(
    store: JobStore, campaign_id: str, flow: Flow, config: Mapping[str, Any] | None
) -> None:
    from xtalforge.stores.documents import now
    from xtalforge.stores.provenance import get_campaign, new_campaign_record, upsert_campaign

    store.connect()
    rec = get_campaign(store, campaign_id)
    if rec is None:
        rec = new_campaign_record(campaign_id, dict(config or {}), flow.to_json())
    rec["status"] = "submitted"
    rec.setdefault("runs", []).append({"submitted_at": now(), "manager": "jobflow-remote"})
    upsert_campaign(store, rec)


def submit_campaign(
    flow: Flow | Job,
    project: str | None = None,
    worker: str | None = None,
    *,
    campaign_id: str | None = None,
    config: Mapping[str, Any] | None = None,
    gpu_worker: str | None = None,
    cpu_worker: str | None = None,
    vasp_worker: str | None = None,
    resources: Mapping[str, Any] | None = None,
    exec_config: Mapping[str, Any] | None = None,
    priority: int = 0,
    record: bool = True,
) -> list[str]:
    """Submit a campaign flow to a jobflow-remote project (needs the project's MongoDB queue).

    Parameters
    ----------
    flow
        The campaign flow.
    project
        jobflow-remote project name (default: jobflow-remote's default project).
    worker
        Worker for jobs without a route (default ``cpu_worker``).
    campaign_id
        Set as ``metadata["campaign_id"]`` on every job (and on jobs created at run time).
    config
        Campaign configuration recorded in the campaign's provenance record.
    gpu_worker, cpu_worker, vasp_worker, resources, exec_config
        Routing, see :func:`route_jobs`.
    priority
        jobflow-remote priority of the flow's jobs.
    record
        Write the campaign provenance record (flow graph, versions) to the project's job store.

    Returns
    -------
    list of str
        The queue ``db_id`` of the submitted jobs.
    """
    from jobflow_remote import submit_flow

    routes = make_routes(gpu_worker, cpu_worker, vasp_worker, resources, exec_config)
    flow = prepare_flow(flow, campaign_id, routes)
    worker = worker or cpu_worker
    if record and campaign_id:
        from jobflow_remote.config.jobconfig import load_job_store

        _record_campaign(load_job_store(project), campaign_id, flow, config)
    ids = submit_flow(flow, worker=worker, project=project, priority=priority)
    logger.info("submitted %d jobs of %s to project %s", len(ids), flow.name, project)
    return ids


def run_with_runner(
    flow: Flow | Job,
    project_name: str,
    worker: str | None = None,
    max_seconds: int = 600,
    *,
    campaign_id: str | None = None,
    config: Mapping[str, Any] | None = None,
    gpu_worker: str | None = None,
    cpu_worker: str | None = None,
    vasp_worker: str | None = None,
    resources: Mapping[str, Any] | None = None,
    exec_config: Mapping[str, Any] | None = None,
    reset: bool = True,
) -> dict[str, Any]:
    """Run a flow with jobflow-remote's Runner in this process (no daemon, no MongoDB needed).

    With a MemoryStore queue (``make_project_config(queue="memory")``) the queue lives in this
    process: the flow is added through the runner's own ``job_controller`` (``submit_flow``
    would create another controller that the runner never sees) and ``run_all_jobs`` advances
    every job (upload, ``sbatch``, status checks, completion) until all are finished or
    ``max_seconds`` have passed.

    Returns
    -------
    dict
        ``{"states": {state: n}, "jobs": [{name, uuid, index, state, worker, db_id,
        error}], "finished": bool}``.
    """
    from jobflow_remote.jobs.runner import Runner

    routes = make_routes(gpu_worker, cpu_worker, vasp_worker, resources, exec_config)
    flow = prepare_flow(flow, campaign_id, routes)
    runner = Runner(project_name=project_name)
    jc = runner.job_controller
    if reset:
        jc.reset()
    if campaign_id and config is not None:
        _record_campaign(runner.project.get_jobstore(), campaign_id, flow, config)
    worker = worker or cpu_worker or next(iter(runner.project.workers))
    jc.add_flow(flow, worker=worker)
    runner.run_all_jobs(max_seconds=max_seconds)
    jobs = []
    for info in jc.get_jobs_info(sort=[("db_id", 1)]):
        jobs.append(
            {
                "name": info.name,
                "uuid": info.uuid,
                "index": info.index,
                "state": info.state.value,
                "worker": info.worker,
                "db_id": info.db_id,
                "error": info.error,
                "process_id": getattr(info.remote, "process_id", None),
                "run_dir": info.run_dir,
            }
        )
    states: dict[str, int] = {}
    for j in jobs:
        states[j["state"]] = states.get(j["state"], 0) + 1
    terminal = {"COMPLETED", "FAILED", "REMOVED", "USER_STOPPED", "CANCELLED"}
    return {
        "states": states,
        "jobs": jobs,
        "finished": all(j["state"] in terminal for j in jobs),
    }
