"""Model checkpoints and other binary artefacts in the ``blobs`` additional store.

A checkpoint is stored once, keyed by ``checkpoint_id = "ckpt-<sha256[:16]>"``, as a document
``{checkpoint_id, sha256, kind, size_bytes, data (base64), metadata, campaign_id, job_uuid,
created_at}``. Job outputs carry only a small reference (:func:`checkpoint_ref`), never the
weights. Loading resolves, in order: a local file path (offline use: any path a user gives), the
reference's ``path`` when that file exists with the right sha256, then the blob store, cached
under ``$XTALFORGE_CACHE`` (default ``~/.cache/xtalforge/checkpoints``) by sha256.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from maggma.core import Store

from xtalforge.stores.documents import clean_floats, now

logger = logging.getLogger(__name__)


class CheckpointNotFound(FileNotFoundError):
    """Raised when a checkpoint cannot be found locally or in the store."""


def cache_dir() -> Path:
    """Return the local checkpoint cache directory."""
    root = os.environ.get("XTALFORGE_CACHE", Path.home() / ".cache" / "xtalforge")
    p = Path(root) / "checkpoints"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_checkpoint(
    blobs: Store,
    path: str | os.PathLike,
    kind: str,
    metadata: dict[str, Any] | None = None,
    campaign_id: str | None = None,
    job_uuid: str | None = None,
) -> dict[str, Any]:
    """Store a checkpoint file in the blob store (idempotent) and return its reference."""
    path = Path(path)
    data = path.read_bytes()
    sha = _sha256(data)
    ckpt_id = f"ckpt-{sha[:16]}"
    doc = {
        "checkpoint_id": ckpt_id,
        "sha256": sha,
        "kind": kind,
        "size_bytes": len(data),
        "data": base64.b64encode(data).decode("ascii"),
        "metadata": clean_floats(dict(metadata or {})),
        "campaign_id": campaign_id,
        "job_uuid": job_uuid,
        "created_at": now(),
    }
    coll = getattr(blobs, "_collection", None)
    if coll is not None:
        if not coll.count_documents({"checkpoint_id": ckpt_id}):
            coll.insert_one(doc)
    else:
        blobs.update([doc], key="checkpoint_id")
    # keep a cached copy so that later jobs on this machine do not decode the blob again
    cached = cache_dir() / f"{sha}.pt"
    if not cached.exists():
        cached.write_bytes(data)
    logger.info("stored checkpoint %s (%s, %.1f MB)", ckpt_id, kind, len(data) / 1e6)
    return checkpoint_ref(ckpt_id, sha, kind, str(path.resolve()), len(data), metadata)


def checkpoint_ref(
    checkpoint_id: str,
    sha256: str,
    kind: str,
    path: str | None,
    size_bytes: int,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the small reference that job outputs and structure lineages carry."""
    return {
        "checkpoint_id": checkpoint_id,
        "sha256": sha256,
        "kind": kind,
        "path": path,
        "size_bytes": size_bytes,
        "metadata": clean_floats(dict(metadata or {})),
    }


def resolve_checkpoint(
    checkpoint: str | os.PathLike | dict[str, Any], blobs: Store | None = None
) -> tuple[Path, dict[str, Any]]:
    """Return a local file for a checkpoint and its reference.

    Parameters
    ----------
    checkpoint
        A local path (used as is: the offline route), or a reference from
        :func:`put_checkpoint` / a job output.
    blobs
        The blob store to fetch from when no local copy exists.

    Raises
    ------
    CheckpointNotFound
        When neither a local file nor the store has it, or the sha256 does not match.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        p = Path(checkpoint)
        if not p.is_file():
            raise CheckpointNotFound(f"checkpoint file {p} does not exist")
        data = p.read_bytes()
        sha = _sha256(data)
        return p, checkpoint_ref(f"ckpt-{sha[:16]}", sha, "file", str(p.resolve()), len(data))
    ref = dict(checkpoint)
    sha = ref["sha256"]
    for candidate in (ref.get("path"), cache_dir() / f"{sha}.pt"):
        if candidate and Path(candidate).is_file():
            if _sha256(Path(candidate).read_bytes()) == sha:
                return Path(candidate), ref
            logger.warning("checkpoint file %s does not match sha256 %s", candidate, sha[:12])
    if blobs is None:
        raise CheckpointNotFound(
            f"checkpoint {ref['checkpoint_id']} not on disk and no store given"
        )
    doc = blobs.query_one({"checkpoint_id": ref["checkpoint_id"]})
    if not doc:
        raise CheckpointNotFound(f"checkpoint {ref['checkpoint_id']} is not in the blob store")
    data = base64.b64decode(doc["data"])
    if _sha256(data) != sha:
        raise CheckpointNotFound(f"checkpoint {ref['checkpoint_id']}: stored bytes fail sha256")
    out = cache_dir() / f"{sha}.pt"
    out.write_bytes(data)
    return out, ref
