"""Dataset ingestion into the ``structures`` store."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from jobflow import Maker
from tqdm.auto import tqdm

from xtalforge.data.demo import build_demo_dataset
from xtalforge.data.loaders import LoadReport, load_dataset
from xtalforge.makers.base import job_context, stage_job
from xtalforge.stores.documents import (
    bulk_upsert,
    doc_id,
    existing_keys,
    make_structure_doc,
    make_structure_id,
)
from xtalforge.stores.schemas import IngestOutput

logger = logging.getLogger(__name__)


def load_source(source: str, fmt: str | None = None, limit: int | None = None) -> LoadReport:
    """Load ``"demo"`` (the built-in demo set), ``"mp20:DIR"`` or a dataset file path.

    ``"mp20:DIR"`` is the project's MP-20 split (:mod:`xtalforge.data.mp20`): val + test from
    ``DIR``; the 1,000 committed held-out test ids are in ``report.heldout``.
    """
    if source.startswith("mp20:"):
        from xtalforge.data.mp20 import load_mp20_report

        return load_mp20_report(source.removeprefix("mp20:"), limit=limit)
    if source == "demo":
        report = build_demo_dataset()
        if limit:
            report.entries = report.entries[:limit]
        return report
    return load_dataset(source, fmt=fmt, limit=limit)


@dataclass
class IngestDatasetMaker(Maker):
    """Load a dataset and write one ``dataset`` document per entry, rejected ones included.

    Parameters
    ----------
    name
        Job name.
    source
        ``"demo"``, ``"mp20:DIR"`` (MP-20 val + test, the committed held-out test crystals
        labelled ``split="heldout"``) or a path to a CDVAE CSV, pymatgen JSON, extxyz or ASE
        db file.
    fmt
        Force the loader (``csv``, ``json``, ``extxyz``, ``asedb``); default: from the suffix.
    limit
        Read at most this many entries.
    split
        Label stored on every document (``train``, ``val``, ``test``, ``reference`` ...).
    chunk_size
        Documents per bulk write.
    """

    name: str = "ingest dataset"
    source: str = "demo"
    fmt: str | None = None
    limit: int | None = None
    split: str = "train"
    chunk_size: int = 500

    @stage_job(resource="cpu", output_schema=IngestOutput)
    def make(self) -> dict[str, Any]:
        """Load the dataset and write its documents; returns the load summary."""
        ctx = job_context()
        report = load_source(self.source, self.fmt, self.limit)
        origin = f"dataset:{report.name}:{report.fingerprint[:16]}"
        lineage = {
            "source": self.source,
            "dataset": report.name,
            "split": self.split,
            "dataset_fingerprint": report.fingerprint,
            "parent_job_uuid": ctx.job_uuid,
        }
        docs = []
        held = report.heldout
        for e in report.entries:
            sid = make_structure_id(ctx.campaign_id, origin, e.source_id)
            split = "heldout" if e.source_id in held else self.split
            docs.append(
                make_structure_doc(
                    e.structure,
                    structure_id=sid,
                    campaign_id=ctx.campaign_id,
                    stage="dataset",
                    lineage={**lineage, "source_id": e.source_id, "split": split},
                    properties=e.properties,
                    job_uuid=ctx.job_uuid,
                    job_name=ctx.job_name,
                    split=split,
                )
            )
        for r in report.rejected:
            sid = make_structure_id(ctx.campaign_id, origin, r.source_id)
            docs.append(
                make_structure_doc(
                    None,
                    structure_id=sid,
                    campaign_id=ctx.campaign_id,
                    stage="dataset",
                    errors=[r.reason],
                    lineage={**lineage, "source_id": r.source_id},
                    job_uuid=ctx.job_uuid,
                    job_name=ctx.job_name,
                    split=self.split,
                )
            )
        # resume inside the job: documents written by an interrupted earlier attempt are kept
        done = existing_keys(
            ctx.structures,
            {
                "campaign_id": ctx.campaign_id,
                "stage": "dataset",
                "lineage.dataset_fingerprint": report.fingerprint,
            },
        )
        todo = [d for d in docs if d["doc_id"] not in done]
        written = 0
        for i in tqdm(
            range(0, len(todo), self.chunk_size),
            desc="write dataset docs",
            unit="chunk",
            disable=len(todo) < 5 * self.chunk_size,
        ):
            chunk = todo[i : i + self.chunk_size]
            bulk_upsert(
                ctx.structures, chunk, scope={"campaign_id": ctx.campaign_id, "stage": "dataset"}
            )
            written += len(chunk)
        summary = report.summary()
        logger.info(
            "ingested %s: %d accepted, %d rejected, %d written now, %d already stored",
            report.name,
            summary["n_accepted"],
            summary["n_rejected"],
            written,
            len(done),
        )
        description = None
        if self.source.startswith("mp20:"):
            from xtalforge.data.mp20 import mp20_split_fingerprint

            description = mp20_split_fingerprint(self.source.removeprefix("mp20:"))
        return {
            **summary,
            "split": self.split,
            "n_heldout": sum(e.source_id in held for e in report.entries),
            "dataset_description": description,
            "campaign_id": ctx.campaign_id,
            "written": written,
            "already_stored": len(done & {d["doc_id"] for d in docs}),
            "rejections": [
                {
                    "source_id": r.source_id,
                    "reason": r.reason,
                    "doc_id": doc_id(
                        make_structure_id(ctx.campaign_id, origin, r.source_id), "dataset"
                    ),
                }
                for r in report.rejected
            ],
        }
