"""Checkpoints record their sha256 in the blob store; every load from a reference verifies it."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from maggma.stores import MemoryStore

from xtalforge.stores.artifacts import (
    CheckpointNotFound,
    ChecksumMismatch,
    put_checkpoint,
    resolve_checkpoint,
)
from xtalforge.stores.provenance import sha256_file

WEIGHTS = Path(__file__).resolve().parents[2] / "xtalforge" / "data" / "weights"


@pytest.fixture()
def stored(tmp_path, monkeypatch):
    monkeypatch.setenv("XTALFORGE_CACHE", str(tmp_path / "cache"))
    blobs = MemoryStore(collection_name="blobs")
    blobs.connect()
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights " * 1000)
    ref = put_checkpoint(blobs, path, kind="test")
    cached = tmp_path / "cache" / "checkpoints" / f"{ref['sha256']}.pt"
    return blobs, path, ref, cached


def test_the_store_records_the_sha256(stored):
    blobs, path, ref, cached = stored
    doc = blobs.query_one({"checkpoint_id": ref["checkpoint_id"]})
    assert doc["sha256"] == ref["sha256"] == sha256_file(path)
    assert ref["checkpoint_id"] == f"ckpt-{ref['sha256'][:16]}"
    assert resolve_checkpoint(ref, blobs)[0] == path  # the original file, verified


def test_a_changed_file_is_not_loaded(stored, caplog):
    blobs, path, ref, cached = stored
    good = path.read_bytes()
    path.write_bytes(good[:-10] + b"tampered!!")
    bad_sha = sha256_file(path)
    cached.unlink()
    with caplog.at_level(logging.WARNING):
        got, _ = resolve_checkpoint(ref, blobs)  # the store still has the recorded bytes
    assert got != path and got.read_bytes() == good
    assert f"file {path} fails its sha256 check" in caplog.text
    # no good copy left: one error naming the file and both hashes
    got.unlink()
    with pytest.raises(ChecksumMismatch) as info:
        resolve_checkpoint(ref)
    msg = str(info.value)
    assert f"file {path}" in msg and ref["sha256"] in msg and bad_sha in msg
    assert (info.value.expected, info.value.actual) == (ref["sha256"], bad_sha)


def test_corrupt_blob_bytes_are_refused(stored):
    blobs, path, ref, cached = stored
    path.unlink()
    cached.unlink()
    doc = blobs.query_one({"checkpoint_id": ref["checkpoint_id"]})
    doc["data"] = base64.b64encode(b"something else").decode()
    blobs.update([doc], key="checkpoint_id")
    with pytest.raises(ChecksumMismatch, match=f"blob store document {ref['checkpoint_id']} "
                       f"fails its sha256 check: recorded {ref['sha256']}, found [0-9a-f]{{64}}"):
        resolve_checkpoint(ref, blobs)
    assert not cached.exists()  # nothing unverified is cached


def test_missing_copies_and_references_without_a_hash(stored):
    blobs, path, ref, cached = stored
    path.unlink()
    cached.unlink()
    with pytest.raises(CheckpointNotFound, match="not on disk and no store given"):
        resolve_checkpoint(ref)
    with pytest.raises(CheckpointNotFound, match="has no sha256"):
        resolve_checkpoint({"checkpoint_id": "ckpt-x", "path": None}, blobs)


def test_a_local_file_is_checked_against_its_record(tmp_path):
    shipped = WEIGHTS / "demo_generator.pt"
    got, ref = resolve_checkpoint(shipped)  # the shipped generator matches its record
    assert got == shipped and ref["sha256"] == sha256_file(shipped)
    copy = tmp_path / "demo_generator.pt"
    copy.write_bytes(shipped.read_bytes()[:-1])
    assert resolve_checkpoint(copy)[0] == copy  # no record next to it: nothing to check
    (tmp_path / "demo_generator.json").write_text((WEIGHTS / "demo_generator.json").read_text())
    with pytest.raises(ChecksumMismatch, match=f"file {copy} fails its sha256 check: recorded "
                       f"{ref['sha256']}, found {sha256_file(copy)}.*demo_generator.json"):
        resolve_checkpoint(copy)
