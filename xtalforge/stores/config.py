"""Build the jobflow :class:`~jobflow.JobStore` of a campaign from one setting.

A campaign writes everything to one ``JobStore``:

* ``docs_store``: jobflow's job documents (outputs of every job, with uuid and index);
* ``additional_stores["data"]``: large job outputs (atomate2 force-field and VASP jobs need it);
* ``additional_stores["blobs"]``: model checkpoints and large arrays (never inlined);
* ``additional_stores["structures"]``: one document per structure and stage (dataset entries,
  samples, screening results, DFT results), written in bulk;
* ``additional_stores["campaigns"]``: one provenance record per campaign.

The setting is one string (or ``None``), resolved in this order: the argument, the environment
variable ``XTALFORGE_STORE``, then the embedded default.

``None`` / ``""`` / ``"embedded"``
    maggma :class:`~maggma.stores.MontyStore` (montydb on sqlite) under ``<campaign_dir>/store``.
``"memory"``
    maggma :class:`~maggma.stores.MemoryStore` (mongomock): in-process only, for tests.
``"mongodb://..."`` or ``"mongodb+srv://..."``
    :class:`~maggma.stores.MongoStore` collections built from the URI (``MongoStore.from_uri``,
    maggma's successor of ``MongoURIStore``) in the URI's database (``xtalforge`` when the URI
    names none); blobs and data in GridFS (``GridFSStore.from_uri``). An unreachable server is
    an error after ``$XTALFORGE_MONGO_TIMEOUT_S`` seconds (default 5; a
    ``serverSelectionTimeoutMS`` option in the URI wins).
``"/path/to/store.yaml"`` (or ``.yml`` / ``.json``)
    a jobflow JobStore specification (``{docs_store: {type: MongoStore, ...}, additional_stores:
    {...}}``, the format of jobflow's ``JOB_STORE`` setting; S3 blob stores included), or the
    short form ``{uri: mongodb://..., database: name}``. Missing additional stores are an error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from jobflow import JobStore
from maggma.stores import MemoryStore, MongoStore, MontyStore

from xtalforge.settings import get_settings

logger = logging.getLogger(__name__)

#: Environment variable holding the store setting.
STORE_ENV = "XTALFORGE_STORE"
#: Environment variable: seconds to wait for an unreachable MongoDB server.
MONGO_TIMEOUT_ENV = "XTALFORGE_MONGO_TIMEOUT_S"
#: Default of ``$XTALFORGE_MONGO_TIMEOUT_S``.
MONGO_TIMEOUT_S = 5.0
#: Additional stores every xtalforge JobStore must have.
REQUIRED_ADDITIONAL_STORES = ("data", "blobs", "structures", "campaigns")
#: Collection names used for the embedded and MongoDB stores.
COLLECTIONS = {
    "docs": "jobs",
    "data": "data",
    "blobs": "blobs",
    "structures": "structures",
    "campaigns": "campaigns",
}


class StoreConfigError(ValueError):
    """Raised when a store setting cannot be turned into a JobStore."""


def resolve_setting(setting: str | os.PathLike | None) -> str:
    """Return the effective store setting (argument, then ``$XTALFORGE_STORE``, then embedded)."""
    if setting is None or str(setting) == "":
        setting = get_settings().STORE
    return str(setting) if setting else "embedded"


def describe_store(setting: str | os.PathLike | None, campaign_dir: str | os.PathLike) -> str:
    """Return a human-readable description of where a setting points (passwords hidden)."""
    s = resolve_setting(setting)
    if s == "embedded":
        return f"embedded MontyStore (sqlite) at {Path(campaign_dir) / 'store'}"
    if s.startswith(("mongodb://", "mongodb+srv://")):
        u = urlparse(s)
        host = u.hostname or "?"
        return f"MongoDB at {host}{':' + str(u.port) if u.port else ''}{u.path or ''}"
    return s


def build_job_store(
    setting: str | os.PathLike | None = None,
    campaign_dir: str | os.PathLike = ".",
) -> JobStore:
    """Build the campaign's JobStore from one setting.

    Parameters
    ----------
    setting
        ``None``/``"embedded"``, ``"memory"``, a ``mongodb://`` URI or a YAML/JSON file path. See
        the module docstring. ``None`` falls back to ``$XTALFORGE_STORE`` and then embedded.
    campaign_dir
        Directory of the campaign; the embedded store lives in ``<campaign_dir>/store``.

    Returns
    -------
    JobStore
        Not connected; jobflow connects it when running, or call ``store.connect()``.
    """
    s = resolve_setting(setting)
    if s == "embedded" or s.startswith("montydb://"):
        path = (
            Path(s[len("montydb://") :])
            if s.startswith("montydb://")
            else Path(campaign_dir) / "store"
        ).resolve()  # absolute: jobs run in their own folders
        path.mkdir(parents=True, exist_ok=True)
        return _embedded_store(path)
    if s == "memory":
        return JobStore(
            MemoryStore(COLLECTIONS["docs"]),
            additional_stores={k: MemoryStore(COLLECTIONS[k]) for k in REQUIRED_ADDITIONAL_STORES},
        )
    if s.startswith(("mongodb://", "mongodb+srv://")):
        return _mongo_store(s)
    path = Path(s)
    if path.suffix.lower() in {".yaml", ".yml", ".json"}:
        if not path.is_file():
            raise StoreConfigError(f"store file {path} does not exist")
        return _store_from_file(path)
    raise StoreConfigError(
        f"cannot interpret store setting {s!r}: expected 'embedded', 'memory', 'montydb:///path', "
        "a mongodb:// URI, or a .yaml/.json JobStore file"
    )


def _embedded_store(path: Path) -> JobStore:
    def monty(name: str) -> MontyStore:
        return MontyStore(
            COLLECTIONS[name], database_path=str(path), database_name="xtalforge", storage="sqlite"
        )

    return JobStore(
        monty("docs"), additional_stores={k: monty(k) for k in REQUIRED_ADDITIONAL_STORES}
    )


def mongo_timeout_ms(uri: str) -> int | None:
    """Return the server-selection timeout (ms) for a MongoDB URI, or ``None`` if it sets one.

    pymongo waits 30 s for an unreachable server, on every collection. xtalforge waits
    ``$XTALFORGE_MONGO_TIMEOUT_S`` seconds (default :data:`MONGO_TIMEOUT_S`) unless the URI
    gives ``serverSelectionTimeoutMS`` itself.
    """
    if "serverselectiontimeoutms" in uri.lower():
        return None
    from pydantic import ValidationError

    from xtalforge.settings import get_settings

    try:
        seconds = get_settings().MONGO_TIMEOUT_S
    except ValidationError as exc:
        bad = [e.get("input") for e in exc.errors() if e.get("loc") == ("MONGO_TIMEOUT_S",)]
        if not bad:
            raise
        raise StoreConfigError(
            f"${MONGO_TIMEOUT_ENV} must be a number of seconds, got {bad[0]!r}"
        ) from None
    return max(1, int(seconds * 1000))


def _mongo_store(uri: str, database: str | None = None) -> JobStore:
    from maggma.stores.gridfs import GridFSStore

    db = database or (urlparse(uri).path.lstrip("/").split("?")[0] or "xtalforge")
    ms = mongo_timeout_ms(uri)
    client_kwargs = {} if ms is None else {"serverSelectionTimeoutMS": ms}

    def coll(name: str) -> MongoStore:
        return MongoStore.from_uri(uri, COLLECTIONS[name], database=db,
                                   mongoclient_kwargs=dict(client_kwargs))

    def gridfs(name: str):
        return GridFSStore.from_uri(uri, COLLECTIONS[name], database=db, compression=True,
                                    mongoclient_kwargs=dict(client_kwargs))

    return JobStore(
        coll("docs"),
        additional_stores={
            "data": gridfs("data"),
            "blobs": gridfs("blobs"),
            "structures": coll("structures"),
            "campaigns": coll("campaigns"),
        },
    )


def yaml_problem(exc: Exception) -> str:
    """Return a one-line description of a YAML parse error (problem, line and column)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return problem


def _store_from_file(path: Path) -> JobStore:
    import yaml

    try:
        with open(path) as f:
            spec: Any = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise StoreConfigError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    if isinstance(spec, dict):
        spec = spec.get("JOB_STORE", spec)
    if not isinstance(spec, dict):
        raise StoreConfigError(
            f"{path}: expected a mapping with 'docs_store' (jobflow JobStore spec) or 'uri', "
            f"got {type(spec).__name__}"
        )
    if "uri" in spec:
        return _mongo_store(spec["uri"], spec.get("database"))
    if "docs_store" not in spec:
        raise StoreConfigError(f"{path}: expected 'docs_store' (jobflow JobStore spec) or 'uri'")
    try:
        store = JobStore.from_dict_spec(spec)
    except Exception as exc:  # noqa: BLE001 - jobflow/maggma raise many kinds on a bad spec
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StoreConfigError(
            f"{path}: invalid JobStore spec ({type(exc).__name__}: {reason})"
        ) from exc
    missing = [k for k in REQUIRED_ADDITIONAL_STORES if k not in store.additional_stores]
    if missing:
        raise StoreConfigError(f"{path}: JobStore lacks additional stores {missing}")
    return store


def additional(store: JobStore, name: str):
    """Return one of the JobStore's additional stores, with a clear error when it is absent."""
    try:
        return store.additional_stores[name]
    except KeyError:
        raise StoreConfigError(
            f"the JobStore has no additional store {name!r}; xtalforge needs "
            f"{list(REQUIRED_ADDITIONAL_STORES)} (build it with xtalforge.stores.build_job_store)"
        ) from None


# --------------------------------------------------------------------------- running jobs
def in_jobflow_remote() -> bool:
    """Return whether the current process is running a job for jobflow-remote."""
    try:
        from jobflow_remote.jobs.run import CURRENT_JOBDOC
    except ImportError:  # pragma: no cover - jobflow-remote is a dependency
        return False
    return CURRENT_JOBDOC.job_doc is not None


def campaign_store(store: JobStore | None = None) -> JobStore:
    """Return the campaign's JobStore for a running xtalforge job.

    Under jobflow-remote the running job's store is a temporary per-job JSON store, which neither
    holds the campaign's documents nor copies back documents keyed on ``doc_id``; the campaign
    store is then built from ``$XTALFORGE_STORE`` (a ``mongodb://`` URI, ``montydb:///path`` or a
    store YAML; export it in the worker's ``pre_run``). Elsewhere ``store`` (or the running job's
    store) is returned.

    Raises
    ------
    RuntimeError
        Under jobflow-remote without ``$XTALFORGE_STORE``.
    """
    from jobflow import CURRENT_JOB

    if in_jobflow_remote():
        settings = get_settings()
        setting = settings.STORE
        if not setting:
            raise RuntimeError(
                f"running under jobflow-remote without ${STORE_ENV}: export it in the worker's "
                "pre_run (the campaign store: mongodb://..., montydb:///path or store.yaml) so "
                "that xtalforge jobs can read and write campaign documents"
            )
        js = build_job_store(setting, settings.HOME or ".")
        js.connect()
        return js
    js = store or CURRENT_JOB.store
    if js is None:
        raise RuntimeError("no JobStore: run the job through jobflow or pass a store")
    return js
