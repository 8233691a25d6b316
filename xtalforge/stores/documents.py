"""Per-structure documents and bulk writes to the ``structures`` store.

Every stage of a campaign writes **one document per structure and stage** to the ``structures``
additional store. Documents are append-only records keyed by ``doc_id = "<structure_id>/<stage>"``;
re-running a stage replaces its own records (an upsert on ``doc_id``), so a resumed campaign never
duplicates a document. A structure's history is every document that shares its ``structure_id``
(and the ``parent_id`` chain for structures derived from others, e.g. relaxed ones).

Common fields (all stages)
--------------------------
``doc_id, structure_id, campaign_id, stage, job_uuid, job_name, created_at, errors``

Structure stages (``dataset``, ``sample``)
-------------------------------------------
``structure`` (pymatgen dict, ``None`` when invalid), ``formula, reduced_formula, chemsys,
elements, nsites, spacegroup (when known), valid, lineage{source, parent_job_uuid, checkpoint_id,
checkpoint_sha256, ...}, properties{...}``

Result stages (``screen``, ``dft`` ...)
----------------------------------------
stage-specific fields beside the common ones, e.g. ``e_above_hull, hull_convention, unique,
novel, metastable, msun`` for screening; ``dft_e_above_hull, band_gap, task_uuids`` for DFT.

Bulk writes use the collection's ``bulk_write`` of upserts on a real MongoDB (with a unique index
on ``doc_id``); on montydb (no ``bulk_write``) and mongomock (whose ``bulk_write`` is quadratic)
one scan for existing keys, ``insert_many`` for new documents and ``replace_one`` for the few
that already exist. maggma's ``Store.update`` is avoided: it took
about 45 s for 2,000 documents on MontyStore here.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from maggma.core import Store

logger = logging.getLogger(__name__)

#: Namespace for deterministic structure ids.
_NAMESPACE = uuid.UUID("6f1c3a52-54a5-4e6b-8d4f-0b3e2f7a9c11")

STRUCTURE_STAGES = ("dataset", "sample", "relaxed")


def now() -> str:
    """Return the current UTC time as an ISO string."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def make_structure_id(campaign_id: str, origin: str, index: int | str) -> str:
    """Return a deterministic structure id.

    The same ``(campaign_id, origin, index)`` always gives the same id, which makes re-running a
    job idempotent (its documents are replaced, not duplicated).

    Parameters
    ----------
    campaign_id
        Campaign the structure belongs to.
    origin
        What produced it: a dataset fingerprint/name, or the uuid of the job that sampled it.
    index
        Position (or source id, e.g. an MP id) within that origin.
    """
    return "xf-" + uuid.uuid5(_NAMESPACE, f"{campaign_id}|{origin}|{index}").hex[:20]


def doc_id(structure_id: str, stage: str) -> str:
    """Return the key of a structure's document for one stage."""
    return f"{structure_id}/{stage}"


def formula_string(comp: Any) -> str:
    """Return a compact full formula in IUPAC order without unit counts (``Na4Cl4``, ``NaCl``)."""
    return re.sub(r"(?<=[A-Za-z])1(?![0-9])", "", comp.iupac_formula.replace(" ", ""))


def structure_fields(structure: Any) -> dict[str, Any]:
    """Return the composition fields of a structure document (``{}`` for ``None``)."""
    if structure is None:
        return {
            "structure": None,
            "formula": None,
            "reduced_formula": None,
            "chemsys": None,
            "elements": [],
            "nsites": 0,
        }
    comp = structure.composition
    return {
        "structure": structure.as_dict(),
        "formula": formula_string(comp),
        "reduced_formula": comp.reduced_formula,
        "chemsys": comp.chemical_system,
        "elements": sorted({el.symbol for el in comp.elements}),
        "nsites": len(structure),
    }


def make_structure_doc(
    structure: Any,
    *,
    structure_id: str,
    campaign_id: str,
    stage: str,
    errors: Sequence[str] = (),
    lineage: dict[str, Any] | None = None,
    properties: dict[str, Any] | None = None,
    job_uuid: str | None = None,
    job_name: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a structure document (stages ``dataset``, ``sample``, ``relaxed``).

    ``structure`` may be ``None`` (an invalid decode): the document is kept with ``valid=False``
    and the reasons in ``errors`` so nothing is silently dropped.
    """
    errors = list(errors)
    doc = {
        "doc_id": doc_id(structure_id, stage),
        "structure_id": structure_id,
        "campaign_id": campaign_id,
        "stage": stage,
        "job_uuid": job_uuid,
        "job_name": job_name,
        "created_at": now(),
        **structure_fields(structure),
        "valid": structure is not None and not errors,
        "errors": errors,
        "lineage": dict(lineage or {}),
        "properties": clean_floats(dict(properties or {})),
    }
    doc.update(clean_floats(extra))
    return doc


def make_result_doc(
    structure_id: str,
    *,
    campaign_id: str,
    stage: str,
    job_uuid: str | None = None,
    job_name: str | None = None,
    errors: Sequence[str] = (),
    **fields: Any,
) -> dict[str, Any]:
    """Build a result document (screening, DFT, ...) for one structure."""
    return {
        "doc_id": doc_id(structure_id, stage),
        "structure_id": structure_id,
        "campaign_id": campaign_id,
        "stage": stage,
        "job_uuid": job_uuid,
        "job_name": job_name,
        "created_at": now(),
        "errors": list(errors),
        **clean_floats(fields),
    }


def clean_floats(obj: Any) -> Any:
    """Recursively replace NaN/inf floats by ``None`` and numpy scalars by Python ones.

    BSON and JSON stores cannot hold NaN portably; a missing value is ``None`` and its reason is
    recorded in the document's ``errors``.
    """
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _collection(store: Store):
    coll = getattr(store, "_collection", None)
    if coll is None:
        store.connect()
        coll = getattr(store, "_collection", None)
    return coll


def bulk_upsert(
    store: Store,
    docs: Iterable[dict[str, Any]],
    key: str = "doc_id",
    scope: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Write documents in bulk, replacing any document with the same ``key``.

    Parameters
    ----------
    store
        A connected maggma store (MontyStore, MongoStore/MongoURIStore, MemoryStore).
    docs
        Documents, each holding ``key``.
    key
        Unique key field.
    scope
        Optional filter covering every document being written (e.g. ``{"campaign_id": c,
        "stage": "sample"}``); on montydb it narrows the single scan for existing keys.

    Returns
    -------
    dict
        ``{"inserted": n, "replaced": m}``.
    """
    docs = list(docs)
    if not docs:
        return {"inserted": 0, "replaced": 0}
    for d in docs:
        if key not in d:
            raise KeyError(f"document lacks key {key!r}: {sorted(d)[:8]}")
        d.setdefault(store.last_updated_field, _dt.datetime.now(_dt.timezone.utc))
    keys = [d[key] for d in docs]
    if len(set(keys)) != len(keys):
        raise ValueError("bulk_upsert received duplicate keys in one batch")
    coll = _collection(store)
    if coll is None:  # a store without a collection (GridFS, S3...): maggma's own path
        store.update(docs, key=key)
        return {"inserted": len(docs), "replaced": 0}
    if type(coll).__module__.startswith("pymongo"):  # a real MongoDB: server-side upserts
        from pymongo import ReplaceOne

        coll.create_index(key, unique=True)  # idempotent; makes the upserts O(log n)
        result = coll.bulk_write(
            [ReplaceOne({key: d[key]}, d, upsert=True) for d in docs], ordered=False
        )
        return {"inserted": result.upserted_count, "replaced": result.matched_count}
    # montydb has no bulk_write and mongomock's is quadratic: one scan for existing keys,
    # insert_many for the new documents, replace_one for the (few) existing ones
    criteria = dict(scope) if scope else {key: {"$in": keys}}
    existing = set(coll.distinct(key, criteria)) & set(keys)
    new = [d for d in docs if d[key] not in existing]
    if new:
        coll.insert_many(new)
    for d in docs:
        if d[key] in existing:
            coll.replace_one({key: d[key]}, d, upsert=True)
    return {"inserted": len(new), "replaced": len(existing)}


def existing_keys(store: Store, criteria: dict[str, Any], key: str = "doc_id") -> set[str]:
    """Return the set of ``key`` values of documents matching ``criteria`` (one scan)."""
    coll = _collection(store)
    if coll is None:
        return {d[key] for d in store.query(criteria, properties=[key])}
    return set(coll.distinct(key, criteria))


def find(
    store: Store,
    criteria: dict[str, Any] | None = None,
    properties: Sequence[str] | None = None,
    limit: int = 0,
) -> list[dict[str, Any]]:
    """Query documents (without maggma's per-document overhead), dropping Mongo ``_id``."""
    coll = _collection(store)
    proj = {p: 1 for p in properties} if properties else None
    if coll is None:
        return list(
            store.query(criteria or {}, properties=list(properties or []) or None, limit=limit)
        )
    cursor = coll.find(criteria or {}, proj) if proj else coll.find(criteria or {})
    if limit:
        cursor = cursor.limit(limit)
    out = []
    for d in cursor:
        d.pop("_id", None)
        out.append(d)
    return out
