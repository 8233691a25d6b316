"""xtalforge: RL-guided crystal discovery campaigns as provenance-tracked jobflow workflows."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["CampaignResults", "__version__", "build_job_store"]


def __getattr__(name: str):
    """Lazy top-level API (keeps ``import xtalforge`` light: no torch, no models)."""
    if name == "CampaignResults":
        from xtalforge.stores.results import CampaignResults

        return CampaignResults
    if name == "build_job_store":
        from xtalforge.stores.config import build_job_store

        return build_job_store
    raise AttributeError(f"module 'xtalforge' has no attribute {name!r}")
