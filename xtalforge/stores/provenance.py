"""Campaign provenance records.

One record per campaign in the ``campaigns`` additional store::

    {campaign_id, created_at, updated_at, status, config, seeds, versions, git_commit, host,
     flow (flow.to_json() as a dict), dataset_fingerprints {name: sha256}, runs [...]}

``runs`` gets one entry per invocation (start, end, host, pid, jobs run, jobs skipped), so a
resumed campaign shows each of its sessions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from jobflow import JobStore

from xtalforge.stores.config import additional
from xtalforge.stores.documents import clean_floats, now

logger = logging.getLogger(__name__)

_PACKAGES = (
    "xtalforge",
    "torch",
    "numpy",
    "pymatgen",
    "jobflow",
    "jobflow-remote",
    "atomate2",
    "maggma",
    "montydb",
    "emmet-core",
    "custodian",
    "chgnet",
    "mace-torch",
    "smact",
    "average-minimum-distance",
    "ase",
)


def package_versions() -> dict[str, str | None]:
    """Return installed versions of the packages a campaign's results depend on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """Return the git commit of the xtalforge source tree (``+dirty`` if modified), if any."""
    path = Path(path) if path else Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def host_info() -> dict[str, Any]:
    """Return the host name, platform and CPU/GPU description."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "gpu": None,
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fingerprint_json(obj: Any) -> str:
    """Return the sha256 of an object's canonical JSON."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def get_campaign(store: JobStore, campaign_id: str) -> dict[str, Any] | None:
    """Return a campaign's provenance record, or ``None``."""
    campaigns = additional(store, "campaigns")
    doc = campaigns.query_one({"campaign_id": campaign_id})
    if doc:
        doc.pop("_id", None)
    return doc


def list_campaigns(store: JobStore) -> list[dict[str, Any]]:
    """Return the records of every campaign in the store (without their flow graphs)."""
    campaigns = additional(store, "campaigns")
    out = []
    # lease documents of running campaigns (stores.runlock) have no campaign_id
    for d in campaigns.query({"campaign_id": {"$exists": True}}, properties=None):
        d.pop("_id", None)
        d.pop("flow", None)
        out.append(d)
    return out


def upsert_campaign(store: JobStore, record: dict[str, Any]) -> None:
    """Insert or replace a campaign record (key ``campaign_id``)."""
    campaigns = additional(store, "campaigns")
    record = clean_floats(dict(record))
    record["updated_at"] = now()
    coll = getattr(campaigns, "_collection", None)
    if coll is not None:
        coll.replace_one({"campaign_id": record["campaign_id"]}, record, upsert=True)
    else:
        campaigns.update([record], key="campaign_id")


def new_campaign_record(
    campaign_id: str,
    config: dict[str, Any],
    flow_json: str,
    seeds: dict[str, int] | None = None,
    dataset_fingerprints: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build the provenance record of a new campaign."""
    return {
        "campaign_id": campaign_id,
        "created_at": now(),
        "status": "created",
        "config": config,
        "seeds": dict(seeds or {}),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "host": host_info(),
        "flow": json.loads(flow_json),
        "dataset_fingerprints": dict(dataset_fingerprints or {}),
        "runs": [],
    }
