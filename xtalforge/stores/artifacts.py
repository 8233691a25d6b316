"""Model checkpoints and other binary artefacts in the ``blobs`` additional store.

A checkpoint is stored once, keyed by ``checkpoint_id = "ckpt-<sha256[:16]>"``, as a document
``{checkpoint_id, sha256, kind, size_bytes, data (base64), metadata, campaign_id, job_uuid,
created_at}``. Job outputs carry only a small reference (:func:`checkpoint_ref`), never the
weights. Loading resolves, in order: a local file path (offline use: any path a user gives), the
reference's ``path`` when that file exists with the right sha256, then the blob store, cached
under ``$XTALFORGE_CACHE`` (default ``~/.cache/xtalforge/checkpoints``) by sha256.

The sha256 is verified on every load from a reference: a file or blob whose bytes hash to
something else is never returned; when no copy with the recorded hash is left,
:class:`ChecksumMismatch` names the file (or blob) and both hashes. A local path given as is
carries no recorded hash, unless a record ``<name>.json`` with a ``sha256`` sits next to it (as
for the shipped demo generator, ``scripts/train_demo_generator.py``): the file is then checked
against it.

Resumable training keeps one *training state* per ``(campaign_id, job_uuid, stage)``
(:func:`put_training_state`, :func:`get_training_state`, :func:`delete_training_state`): a
document ``{state_id, kind: "train-state", stage, sha256, data (base64), metadata, ...}`` that
each save replaces, so a job running again under the same uuid continues from it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from maggma.core import Store

from xtalforge.settings import get_settings
from xtalforge.stores.documents import clean_floats, now

logger = logging.getLogger(__name__)


class CheckpointNotFound(FileNotFoundError):
    """Raised when a checkpoint cannot be found locally or in the store."""


class ChecksumMismatch(ValueError):
    """A checkpoint's bytes do not hash to the sha256 recorded for it.

    Attributes
    ----------
    source : str
        The file path, or ``blob store document <checkpoint_id>``.
    expected, actual : str
        The recorded sha256 and the sha256 of the bytes found.
    """

    def __init__(self, checkpoint_id: str, source: str, expected: str, actual: str,
                 note: str = "") -> None:
        self.checkpoint_id, self.source = checkpoint_id, source
        self.expected, self.actual = expected, actual
        super().__init__(
            f"checkpoint {checkpoint_id}: {source} fails its sha256 check: recorded "
            f"{expected}, found {actual} (the file was changed, truncated or corrupted)"
            + (f"; {note}" if note else "")
        )


def cache_dir() -> Path:
    """Return the local checkpoint cache directory."""
    p = get_settings().CACHE / "checkpoints"
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
        When neither a local file nor the store has it.
    ChecksumMismatch
        When copies were found but none has the recorded sha256 (the message names the file
        or blob and both hashes), or a local path differs from the sha256 of its record.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        p = Path(checkpoint)
        if not p.is_file():
            raise CheckpointNotFound(f"checkpoint file {p} does not exist")
        data = p.read_bytes()
        sha = _sha256(data)
        ckpt_id = f"ckpt-{sha[:16]}"
        recorded = _recorded_sha256(p)
        if recorded and recorded != sha:
            raise ChecksumMismatch(ckpt_id, f"file {p}", recorded, sha,
                                   f"the sha256 is recorded in {p.with_suffix('.json')}")
        return p, checkpoint_ref(ckpt_id, sha, "file", str(p.resolve()), len(data))
    ref = dict(checkpoint)
    ckpt_id = ref.get("checkpoint_id", "?")
    sha = ref.get("sha256")
    if not sha:
        raise CheckpointNotFound(
            f"checkpoint reference {ckpt_id} has no sha256 (not a reference made by "
            "put_checkpoint)"
        )
    mismatch: ChecksumMismatch | None = None
    for candidate in (ref.get("path"), cache_dir() / f"{sha}.pt"):
        if candidate and Path(candidate).is_file():
            found = _sha256(Path(candidate).read_bytes())
            if found == sha:
                return Path(candidate), ref
            mismatch = ChecksumMismatch(ckpt_id, f"file {candidate}", sha, found)
            logger.warning("%s; trying the other copies", mismatch)
    if blobs is None:
        if mismatch is not None:
            raise mismatch
        raise CheckpointNotFound(f"checkpoint {ckpt_id} not on disk and no store given")
    doc = blobs.query_one({"checkpoint_id": ckpt_id})
    if not doc:
        if mismatch is not None:
            raise mismatch
        raise CheckpointNotFound(f"checkpoint {ckpt_id} is not in the blob store")
    data = base64.b64decode(doc["data"])
    found = _sha256(data)
    if found != sha:
        raise ChecksumMismatch(ckpt_id, f"blob store document {ckpt_id}", sha, found)
    out = cache_dir() / f"{sha}.pt"
    out.write_bytes(data)
    return out, ref


def _recorded_sha256(path: Path) -> str | None:
    """Return the ``sha256`` of the record ``<stem>.json`` next to a checkpoint file, if any."""
    import json

    record = path.with_suffix(".json")
    if record == path or not record.is_file():
        return None
    try:
        sha = json.loads(record.read_text()).get("sha256")
    except (ValueError, AttributeError, OSError):
        return None  # not a record of ours: nothing to check against
    return sha if isinstance(sha, str) and len(sha) == 64 else None


# -- resumable training states ----------------------------------------------------------------

#: ``kind`` of the blob documents holding a training state.
TRAIN_STATE_KIND = "train-state"


def training_state_id(campaign_id: str | None, job_uuid: str, stage: str) -> str:
    """Return the blob key of the training state of one job's stage.

    The key depends only on the campaign, the job uuid and the stage (``vae``, ``ldm`` ...), so
    a job that runs again with the same uuid (a rerun of the same campaign, a jobflow-remote
    rerun, or the job's own ``Response(replace=...)`` continuation) finds the state.
    """
    return f"train-state:{campaign_id}:{job_uuid}:{stage}"


def put_training_state(
    blobs: Store,
    path: str | os.PathLike,
    campaign_id: str | None,
    job_uuid: str,
    stage: str,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Store (replace) a training-state file in the blob store.

    Unlike checkpoints (content-addressed, never overwritten), there is one state per
    ``(campaign_id, job_uuid, stage)``: each save replaces the previous one.

    Parameters
    ----------
    blobs
        The ``blobs`` additional store.
    path
        The state file written by :func:`xtalforge.models.training.train_vae` (or ``train_ldm``).
    campaign_id, job_uuid, stage
        What the state belongs to (see :func:`training_state_id`).
    metadata
        Small JSON metadata kept with the state (e.g. the run number that saved it).

    Returns
    -------
    dict
        ``{state_id, sha256, size_bytes, stage}``.
    """
    data = Path(path).read_bytes()
    sha = _sha256(data)
    state_id = training_state_id(campaign_id, job_uuid, stage)
    doc = {
        "state_id": state_id,
        "kind": TRAIN_STATE_KIND,
        "stage": stage,
        "campaign_id": campaign_id,
        "job_uuid": job_uuid,
        "sha256": sha,
        "size_bytes": len(data),
        "data": base64.b64encode(data).decode("ascii"),
        "metadata": clean_floats(dict(metadata or {})),
        "updated_at": now(),
    }
    blobs.update([doc], key="state_id")
    logger.info("stored training state %s (%.1f MB)", state_id, len(data) / 1e6)
    return {"state_id": state_id, "sha256": sha, "size_bytes": len(data), "stage": stage}


def get_training_state(
    blobs: Store,
    path: str | os.PathLike,
    campaign_id: str | None,
    job_uuid: str,
    stage: str,
) -> dict[str, Any] | None:
    """Download the stored training state of a job's stage to ``path``.

    Parameters
    ----------
    blobs
        The ``blobs`` additional store.
    path
        Where to write the state file.
    campaign_id, job_uuid, stage
        What the state belongs to (see :func:`training_state_id`).

    Returns
    -------
    dict or None
        The state's document without its bytes (``state_id``, ``sha256``, ``metadata`` ...), or
        ``None`` (and no file written) when the store holds no state for this job and stage.

    Raises
    ------
    xtalforge.models.training.TrainStateError
        When the stored bytes cannot be decoded or fail their sha256.
    """
    state_id = training_state_id(campaign_id, job_uuid, stage)
    doc = blobs.query_one({"state_id": state_id})
    if not doc:
        return None
    try:
        data = base64.b64decode(doc["data"], validate=True)
        ok = _sha256(data) == doc.get("sha256")
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        from xtalforge.models.training import TrainStateError

        raise TrainStateError(
            f"training state {state_id} in the blob store is corrupt (bytes missing or failing "
            "their sha256): delete it (delete_training_state) to start this stage over"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    doc = {k: v for k, v in doc.items() if k not in ("data", "_id")}
    logger.info("fetched training state %s (%.1f MB)", state_id, len(data) / 1e6)
    return doc


def delete_training_state(
    blobs: Store, campaign_id: str | None, job_uuid: str, stage: str
) -> None:
    """Remove the stored training state of a job's stage (nothing happens when there is none)."""
    blobs.remove_docs({"state_id": training_state_id(campaign_id, job_uuid, stage)})
