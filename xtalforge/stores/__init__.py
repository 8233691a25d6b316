"""Stores: the campaign JobStore, per-structure documents, provenance and results."""

from xtalforge.stores.config import StoreConfigError, build_job_store, describe_store
from xtalforge.stores.documents import bulk_upsert, make_result_doc, make_structure_doc

__all__ = [
    "StoreConfigError",
    "build_job_store",
    "bulk_upsert",
    "describe_store",
    "make_result_doc",
    "make_structure_doc",
]
