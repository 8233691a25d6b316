"""Campaign report job: tables and figures of the running campaign, from its store."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobflow import Maker

from xtalforge.makers.base import job_context, stage_job
from xtalforge.stores.schemas import ReportOutput

logger = logging.getLogger(__name__)

__all__ = ["ReportMaker"]


@dataclass
class ReportMaker(Maker):
    """Build the campaign report (:func:`xtalforge.reports.report.build_report`).

    Parameters
    ----------
    name
        Job name.
    outdir
        Report directory; relative paths are resolved against the job's working directory
        (``None``: ``./report`` there). The absolute path is returned.
    group_by
        Column separating models/checkpoints in the benchmark tables.
    symprec
        ``SpacegroupAnalyzer`` tolerance for structures without a stored space group.
    near_hull_window
        Restrict the MLIP-vs-DFT comparison to DFT E_hull in ``[lo, hi]`` eV/atom.
    fom_top
        Rows of the figure-of-merit table.
    """

    name: str = "report"
    outdir: str | None = None
    group_by: str = "lineage.checkpoint_id"
    symprec: float = 0.1
    near_hull_window: tuple[float, float] | None = None
    fom_top: int | None = 20

    @stage_job(resource="cpu", output_schema=ReportOutput)
    def make(self, upstream: Any = None) -> dict[str, Any]:
        """Write the report of the running campaign and return its table values.

        Parameters
        ----------
        upstream
            Any output of earlier jobs (ignored): passing one makes this job run after them.

        Returns
        -------
        dict
            ``campaign_id, report`` (path of ``report.md``), ``stage_counts``, ``denovo``
            (rows of the de novo table), ``mlip_vs_dft``, ``property_targeting``, ``fom_top``,
            ``figures`` ... (the keys of stages that ran; JSON-safe, NaN as ``None``).
        """
        from xtalforge.reports.report import build_report_with_values
        from xtalforge.stores.results import CampaignResults

        ctx = job_context()
        outdir = Path(self.outdir or "report").expanduser().resolve()
        results = CampaignResults(ctx.store, ctx.campaign_id)
        path, values = build_report_with_values(
            results, outdir, group_by=self.group_by, symprec=self.symprec,
            near_hull_window=tuple(self.near_hull_window) if self.near_hull_window else None,
            fom_top=self.fom_top)
        logger.info("campaign %s: report at %s", ctx.campaign_id, path)
        values["report"] = str(path)
        return values
