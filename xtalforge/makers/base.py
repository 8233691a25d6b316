"""What every xtalforge job needs at run time: its store, its uuid and its campaign.

Jobs find the campaign id in their metadata (``flow.update_metadata({"campaign_id": ...})`` is
applied by :func:`xtalforge.flows.runner.run_campaign`, and jobs added at run time inherit it), and
the JobStore they run against through jobflow's ``CURRENT_JOB``. The same code therefore runs
under ``run_locally`` and under jobflow-remote workers, provided the worker's JobStore has the
xtalforge additional stores (see :mod:`xtalforge.stores.config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobflow import CURRENT_JOB, JobConfig, JobStore

from xtalforge.stores.config import additional

DEFAULT_CAMPAIGN = "default"


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
        from xtalforge.flows.remote import campaign_store

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
