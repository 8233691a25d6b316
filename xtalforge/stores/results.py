"""Query a campaign's results: :class:`CampaignResults`.

Example
-------
>>> from xtalforge import CampaignResults
>>> res = CampaignResults.open(campaign_id="demo")  # embedded store: ./xtalforge_campaigns
>>> df = res.candidates(metastable=True, novel=True, limit=20)  # one row per structure
>>> res.history(df.structure_id.iloc[0])                        # every stage, job and checkpoint

One row per structure merges the structure document (stage ``dataset``, ``sample`` or
``relaxed``) with the result documents of later stages (``screen``, ``dft`` ...). Result fields
keep their names (``e_above_hull``, ``novel``, ``dft_e_above_hull`` ...); the bookkeeping fields
of a result stage are prefixed with the stage (``screen_errors``, ``dft_job_uuid``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from jobflow import JobStore
from pymatgen.core import Structure

from xtalforge.settings import DEFAULT_HOME, get_settings
from xtalforge.stores.config import additional, build_job_store
from xtalforge.stores.documents import STRUCTURE_STAGES, find
from xtalforge.stores.provenance import get_campaign, list_campaigns
from xtalforge.stores.schemas import StageDoc

logger = logging.getLogger(__name__)

#: Fields every stage document has (prefixed by the stage when results are merged).
_BOOKKEEPING = set(StageDoc.model_fields) | {"_id"}

#: Default root of embedded campaigns (``$XTALFORGE_HOME`` overrides it).
DEFAULT_ROOT = str(DEFAULT_HOME)


def default_root() -> Path:
    """Return the embedded campaigns directory (``$XTALFORGE_HOME`` or ./xtalforge_campaigns)."""
    return get_settings().campaigns_home


class CampaignResults:
    """Read-only view of campaign results in a JobStore.

    Parameters
    ----------
    store
        The JobStore (connected here if needed).
    campaign_id
        Restrict every query to one campaign (``None``: all campaigns in the store).
    """

    def __init__(self, store: JobStore, campaign_id: str | None = None) -> None:
        self.store = store
        self.store.connect()
        self.campaign_id = campaign_id

    @classmethod
    def open(
        cls,
        campaign_id: str | None = None,
        store: str | os.PathLike | None = None,
        root: str | os.PathLike | None = None,
    ) -> CampaignResults:
        """Open results from a store setting (see :func:`xtalforge.stores.build_job_store`)."""
        return cls(build_job_store(store, root or default_root()), campaign_id)

    # ------------------------------------------------------------------ raw documents
    @property
    def _structures(self):
        return additional(self.store, "structures")

    def _criteria(self, **extra: Any) -> dict[str, Any]:
        crit = {k: v for k, v in extra.items() if v is not None}
        if self.campaign_id:
            crit["campaign_id"] = self.campaign_id
        return crit

    def campaigns(self) -> list[dict[str, Any]]:
        """Return the provenance records of the campaigns in the store (without flow graphs)."""
        recs = list_campaigns(self.store)
        return [r for r in recs if not self.campaign_id or r["campaign_id"] == self.campaign_id]

    def has_campaign(self, campaign_id: str | None = None) -> bool:
        """Return whether the store holds a campaign (its record or any of its documents)."""
        cid = campaign_id or self.campaign_id
        if cid is None:
            raise ValueError("which campaign? pass campaign_id")
        if get_campaign(self.store, cid) is not None:
            return True
        return self._structures.query_one({"campaign_id": cid}, properties=["doc_id"]) is not None

    def campaign(self, campaign_id: str | None = None) -> dict[str, Any] | None:
        """Return one campaign's full provenance record (flow graph included)."""
        cid = campaign_id or self.campaign_id
        if cid is None:
            raise ValueError("which campaign? pass campaign_id")
        return get_campaign(self.store, cid)

    def documents(self, stage: str | None = None, **criteria: Any) -> list[dict[str, Any]]:
        """Return raw structure-store documents of a stage (Mongo-style ``criteria``)."""
        return find(self._structures, self._criteria(stage=stage, **criteria))

    def stage_counts(self) -> dict[str, dict[str, int]]:
        """Return ``{stage: {"total": n, "with_errors": m, "rejected": r}}`` for the campaign.

        ``with_errors``: documents whose ``errors`` is not empty (the pipeline failed on the
        structure); ``rejected``: documents with a ``rejected`` reason (screening did not
        evaluate the sample, see :class:`~xtalforge.stores.schemas.ScreenDoc`).
        """
        out: dict[str, dict[str, int]] = {}
        for d in find(self._structures, self._criteria(),
                      properties=["stage", "errors", "rejected"]):
            c = out.setdefault(d["stage"], {"total": 0, "with_errors": 0, "rejected": 0})
            c["total"] += 1
            c["with_errors"] += bool(d.get("errors"))
            c["rejected"] += bool(d.get("rejected"))
        return out

    # ------------------------------------------------------------------ merged view
    def to_dataframe(
        self, stage: str | None = None, include_structures: bool = False
    ) -> pd.DataFrame:
        """Return one row per structure: its structure document merged with its result documents.

        Parameters
        ----------
        stage
            Structure stage to start from (``dataset``, ``sample``, ``relaxed``); default all.
        include_structures
            Keep the pymatgen structure dict in a ``structure`` column.
        """
        stages = [stage] if stage else list(STRUCTURE_STAGES)
        base = find(self._structures, self._criteria(stage={"$in": stages}))
        if not base:
            return pd.DataFrame()
        rows: dict[str, dict[str, Any]] = {}
        for d in base:
            row = {k: v for k, v in d.items() if k not in {"_id", "last_updated"}}
            if not include_structures:
                row.pop("structure", None)
            lineage = row.pop("lineage", {}) or {}
            for k, v in lineage.items():
                row[f"lineage.{k}"] = v
            props = row.pop("properties", {}) or {}
            for k, v in props.items():
                row[f"prop.{k}"] = v
            rows[d["structure_id"]] = row
        results = find(self._structures, self._criteria(stage={"$nin": list(STRUCTURE_STAGES)}))
        for d in results:
            row = rows.get(d["structure_id"])
            if row is None:
                continue
            st = d["stage"]
            for k, v in d.items():
                if k in _BOOKKEEPING:
                    if k not in {"_id", "last_updated", "structure_id", "campaign_id"}:
                        row[f"{st}_{k}"] = v
                else:
                    row[k] = v
        return pd.DataFrame(list(rows.values()))

    def candidates(
        self,
        stage: str | None = None,
        formula: str | None = None,
        metastable: bool | None = None,
        stable: bool | None = None,
        novel: bool | None = None,
        unique: bool | None = None,
        valid: bool | None = None,
        msun: bool | None = None,
        sort_by: str | None = None,
        limit: int | None = None,
        include_structures: bool = False,
    ) -> pd.DataFrame:
        """Return structures filtered like ``xtalforge query``.

        Boolean filters apply to the fields written by the screening stage (``metastable``,
        ``stable``, ``novel``, ``unique``, ``msun``) or the structure document (``valid``); a
        structure without the field (not screened yet) never matches a filter on it. ``formula``
        matches the reduced formula, the full formula or the chemical system (``Li-O``).
        """
        df = self.to_dataframe(stage=stage, include_structures=include_structures)
        if df.empty:
            return df
        if formula:
            from pymatgen.core import Composition

            try:
                red = Composition(formula).reduced_formula if "-" not in formula else None
            except ValueError:
                red = None
            chemsys = "-".join(sorted(formula.split("-"))) if "-" in formula else None
            mask = (df["formula"] == formula) | (df["reduced_formula"] == (red or formula))
            if chemsys:
                mask |= df["chemsys"] == chemsys
            df = df[mask]
        for name, want in (
            ("metastable", metastable),
            ("stable", stable),
            ("novel", novel),
            ("unique", unique),
            ("valid", valid),
            ("msun", msun),
        ):
            if want is None:
                continue
            if name not in df.columns:
                logger.warning(
                    "no structure has %r yet (not screened?): filter matches nothing", name
                )
                return df.iloc[0:0]
            df = df[df[name].map(lambda v, w=want: v is not None and bool(v) == w and v == v)]
        if sort_by:
            if sort_by not in df.columns:
                raise KeyError(f"cannot sort by {sort_by!r}: not a column")
            df = df.sort_values(sort_by, na_position="last")
        if limit:
            df = df.head(limit)
        return df.reset_index(drop=True)

    def structures(
        self, structure_ids: list[str] | None = None, stage: str | None = None
    ) -> dict[str, Structure]:
        """Return ``{structure_id: Structure}`` for valid structures (all, or the given ids)."""
        crit: dict[str, Any] = {
            "stage": {"$in": [stage] if stage else list(STRUCTURE_STAGES)},
            "structure": {"$ne": None},
        }
        if structure_ids is not None:
            crit["structure_id"] = {"$in": list(structure_ids)}
        docs = find(
            self._structures, self._criteria(**crit), properties=["structure_id", "structure"]
        )
        return {d["structure_id"]: Structure.from_dict(d["structure"]) for d in docs}

    def history(self, structure_id: str) -> dict[str, Any]:
        """Return a structure's whole history in one call.

        Returns
        -------
        dict
            ``structure_id``, ``documents`` (every stage's document, oldest first, parents of
            derived structures included), ``jobs`` (jobflow job documents of the jobs that wrote
            them: name, uuid, completed_at, metadata), ``checkpoints`` (records of the model
            checkpoints that generated it) and ``campaign`` (the campaign record without flow).
        """
        docs = find(self._structures, {"structure_id": structure_id})
        if not docs:
            raise KeyError(f"no documents for structure {structure_id!r}")
        # follow the parent chain (e.g. relaxed -> sampled)
        seen = {structure_id}
        parents = [d.get("lineage", {}).get("parent_structure_id") for d in docs]
        for pid in parents:
            if pid and pid not in seen:
                seen.add(pid)
                docs += find(self._structures, {"structure_id": pid})
        docs.sort(key=lambda d: d.get("created_at") or "")
        job_uuids = sorted({d["job_uuid"] for d in docs if d.get("job_uuid")})
        jobs = [
            {k: j.get(k) for k in ("uuid", "index", "name", "completed_at", "metadata")}
            for j in self.store.query(
                {"uuid": {"$in": job_uuids}},
                properties=["uuid", "index", "name", "completed_at", "metadata"],
            )
        ]
        ckpt_ids = sorted({d.get("lineage", {}).get("checkpoint_id") for d in docs} - {None})
        checkpoints = []
        if ckpt_ids:
            blobs = additional(self.store, "blobs")
            for c in blobs.query(
                {"checkpoint_id": {"$in": ckpt_ids}},
                properties=[
                    "checkpoint_id",
                    "sha256",
                    "kind",
                    "metadata",
                    "created_at",
                    "job_uuid",
                    "size_bytes",
                ],
            ):
                c.pop("_id", None)
                checkpoints.append(c)
        campaign = None
        cid = docs[0].get("campaign_id")
        if cid:
            campaign = get_campaign(self.store, cid)
            if campaign:
                campaign.pop("flow", None)
        for d in docs:
            d.pop("last_updated", None)
        return {
            "structure_id": structure_id,
            "documents": docs,
            "jobs": jobs,
            "checkpoints": checkpoints,
            "campaign": campaign,
        }

    def job_status(self) -> dict[str, Any]:
        """Return finished and pending jobs of the campaign's stored flow graph."""
        from jobflow import Flow

        from xtalforge.stores.jobgraph import completed_uuids, iter_jobs

        rec = self.campaign()
        if not rec:
            raise KeyError(f"no campaign {self.campaign_id!r}")
        flow = Flow.from_dict(rec["flow"])
        jobs = list(iter_jobs(flow))
        done = completed_uuids(self.store, [j.uuid for j in jobs])
        return {
            "campaign_id": rec["campaign_id"],
            "status": rec.get("status"),
            "jobs": [{"name": j.name, "uuid": j.uuid, "finished": j.uuid in done} for j in jobs],
            "runs": rec.get("runs", []),
        }
