"""One-page Markdown campaign report with tables and PNG figures, from the store alone.

:func:`build_report` writes ``<outdir>/report.md`` with the campaign's provenance, the five
validation tables (:mod:`xtalforge.reports.tables`) and figures (:mod:`xtalforge.reports.
figures`) under ``<outdir>/figures``, every table also as CSV, Markdown and LaTeX under
``<outdir>/tables``, and ``<outdir>/summary.json`` (the small dict of values that
:class:`xtalforge.makers.report.ReportMaker` returns). A stage that has not run (no samples, no
screening, no DFT, no RL curves) is reported as "not run"; a section that fails is reported
with its error and the rest of the report is still written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from xtalforge.reports import figures as F
from xtalforge.reports import tables as T
from xtalforge.stores.documents import clean_floats, now

if TYPE_CHECKING:  # pragma: no cover
    from xtalforge.stores.results import CampaignResults

logger = logging.getLogger(__name__)

__all__ = ["build_report", "build_report_with_values"]

NOT_RUN = "_not run_"


def _protocol(samples: pd.DataFrame) -> str:
    """Return a figure caption's protocol: energies, sampler, seed, hull and MLIP, papers."""
    if samples.empty:
        return ""
    return " ".join(f"{ln}." if not ln.endswith(".") else ln
                    for ln in T.describe_conventions(samples, dft_hull_col=None))


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df.columns and df[col].notna().any()


def _records(table: T.Table, limit: int | None = None) -> list[dict[str, Any]]:
    data = table.data if limit is None else table.data.head(limit)
    return clean_floats(data.to_dict(orient="records"))


class _Report:
    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.fig_dir = outdir / "figures"
        self.tab_dir = outdir / "tables"
        self.lines: list[str] = []
        self.values: dict[str, Any] = {}
        self.figures: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, table: T.Table) -> None:
        self.tab_dir.mkdir(parents=True, exist_ok=True)
        for ext, fmt in (("csv", "csv"), ("md", "markdown"), ("tex", "latex")):
            (self.tab_dir / f"{table.name}.{ext}").write_text(table.render(fmt))
        self.add(table.to_markdown(), f"_(also as [CSV](tables/{table.name}.csv), "
                 f"[LaTeX](tables/{table.name}.tex))_", "")

    def figure(self, path: Path, caption: str) -> None:
        rel = path.relative_to(self.outdir).as_posix()
        self.figures.append(rel)
        self.add(f"![{caption}]({rel})", "", f"_{caption}_", "")

    def section(self, title: str, body: Callable[[], None]) -> None:
        self.add(f"## {title}", "")
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - one failing section must not kill the report
            logger.exception("report section %r failed", title)
            self.add(f"**failed:** `{type(exc).__name__}: {exc}`", "")


def build_report_with_values(
    results: CampaignResults,
    outdir: str | Path,
    group_by: str = T.GROUP_BY,
    symprec: float = 0.1,
    gap_window: tuple[float, float] = T.GAP_WINDOW,
    near_hull_window: tuple[float, float] | None = None,
    fom_max_e_hull: float | None = None,
    fom_top: int | None = 20,
) -> tuple[Path, dict[str, Any]]:
    """Write the report and return ``(path to report.md, summary values)``.

    Parameters are those of :func:`build_report`.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rep = _Report(outdir)
    cid = results.campaign_id
    df = results.to_dataframe()
    samples = df[df["stage"] == "sample"] if "stage" in df.columns else df.iloc[0:0]
    rec = None
    if cid:
        try:
            rec = results.campaign()
        except Exception as exc:  # noqa: BLE001
            logger.warning("no campaign record for %r: %s", cid, exc)
    rep.values.update({"campaign_id": cid, "generated_at": now()})

    # ------------------------------------------------------------------ header
    rep.add(f"# Campaign report: {cid or 'all campaigns'}", "")
    if rec:
        versions = rec.get("versions") or {}
        vs = ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in
                       ("xtalforge", "pymatgen", "torch", "jobflow", "atomate2", "mace-torch",
                        "chgnet"))
        rep.add(f"- status: {rec.get('status')}; created {str(rec.get('created_at', ''))[:19]}; "
                f"git {rec.get('git_commit')}; runs: {len(rec.get('runs') or [])}",
                f"- versions: {vs or 'not recorded'}")
    else:
        rep.add("- campaign record: not found")
    counts = results.stage_counts()
    rep.values["stage_counts"] = counts
    if counts:
        rep.add("- documents: " + "; ".join(
            f"{st} {c['total']} ({c['with_errors']} with errors"
            + (f", {c['rejected']} rejected before the MLIP" if c.get("rejected") else "") + ")"
            for st, c in counts.items()))
    rep.add(f"- report generated {rep.values['generated_at'][:19]} UTC from the results store",
            "")

    # ------------------------------------------------------------------ de novo
    def denovo() -> None:
        if samples.empty:
            rep.add(f"Sampling: {NOT_RUN} (no generated structures).", "")
            ds = df[df["stage"] == "dataset"] if "stage" in df.columns else df.iloc[0:0]
            counts_ds = F.element_counts(ds)
            if counts_ds:
                rep.figure(F.element_frequency_plot(
                    counts_ds, rep.fig_dir / "element_frequency_dataset.png",
                    title=f"Elements in the dataset (N={len(ds)} entries)"),
                    "Number of dataset structures containing each element.")
            return
        if not _has(samples, "msun") and not _has(samples, "e_above_hull"):
            rep.add(f"Screening: {NOT_RUN} (generated structures carry no screening "
                    "results); counts only.", "")
        t = T.build_table("denovo", results, df=df, group_by=group_by)
        rep.table(t)
        rep.values["denovo"] = _records(t)
        if _has(samples, "e_above_hull"):
            rep.figure(F.ehull_histogram(samples, rep.fig_dir / "e_hull_hist.png",
                                         group_by=group_by),
                       "MLIP energy above hull of the generated structures, per model; "
                       "dashed lines at 0 and 0.1 eV/atom. " + _protocol(samples))
        counts_el = F.element_counts(samples)
        if counts_el:
            n_with = int(samples["elements"].map(lambda e: isinstance(e, list) and
                                                 len(e) > 0).sum())
            rep.figure(F.element_frequency_plot(
                counts_el, rep.fig_dir / "element_frequency.png",
                title=f"Elements in generated structures (N={n_with} with a composition)"),
                "Number of generated structures containing each element.")

    # ------------------------------------------------------------------ MLIP vs DFT
    def mlip_vs_dft() -> None:
        if not _has(df, "dft_e_above_hull"):
            rep.add(f"DFT validation: {NOT_RUN} (no DFT energies above hull in the store).", "")
            return
        t = T.mlip_vs_dft_table(df, window=near_hull_window)
        rep.table(t)
        rep.values["mlip_vs_dft"] = clean_floats(
            {k: {kk: vv for kk, vv in v.items() if kk != "settings"}
             for k, v in t.values.items()})
        d, _ = T.dft_rows(df)
        rep.figure(F.parity_plot(d["dft_e_above_hull"],
                                 d["e_above_hull"] if "e_above_hull" in d.columns
                                 else [math.nan] * len(d),
                                 rep.fig_dir / "parity_mlip_dft.png"),
                   "MLIP versus DFT energy above hull of the DFT-validated structures.")

    # ------------------------------------------------------------------ property targeting
    def targeting() -> None:
        if not _has(df, "dft_band_gap"):
            rep.add(f"DFT band gaps: {NOT_RUN}.", "")
            return
        t = T.property_targeting_table(df, window=gap_window, group_by=group_by)
        rep.table(t)
        rep.values["property_targeting"] = _records(t)
        d = df[df["stage"] != "dataset"] if "stage" in df.columns else df
        rep.figure(F.band_gap_histogram(d, rep.fig_dir / "band_gap_hist.png",
                                        window=gap_window),
                   f"DFT band gaps of the validated structures and of the mSUN ones; target "
                   f"window {gap_window[0]:g}-{gap_window[1]:g} eV shaded.")

    # ------------------------------------------------------------------ FoM
    def fom() -> None:
        if not _has(df, "dft_eps_elec") and not _has(df, "dft_fom"):
            rep.add(f"Dielectric (DFPT) calculations: {NOT_RUN}.", "")
            return
        t = T.build_table("fom", results, df=df, max_e_hull=fom_max_e_hull, top=fom_top)
        rep.table(t)
        rep.values["fom_top"] = _records(t, 5)
        rep.values["n_fom_rows"] = len(t.data)

    # ------------------------------------------------------------------ space groups
    def spacegroups() -> None:
        if samples.empty:
            rep.add(f"Sampling: {NOT_RUN}.", "")
            return
        if not _has(samples, "sun") and not _has(samples, "msun"):
            rep.add(f"Screening: {NOT_RUN}; space-group counts only.", "")
        gb = group_by if group_by in samples.columns and samples[group_by].nunique() > 1 \
            else None
        t = T.build_table("sun-per-spacegroup", results, df=df, symprec=symprec, group_by=gb)
        rep.table(t)
        rep.values["sun_per_spacegroup_rows"] = len(t.data)
        if len(t.data) and (t.data["Symbol"] != "unknown").any():
            rep.figure(F.spacegroup_bar_plot(t.data, rep.fig_dir / "sun_per_spacegroup.png"),
                       "Metastable (light) and mSUN (dark) fractions of the generated "
                       "structures per space group (the 20 most populated). "
                       + _protocol(samples))

    # ------------------------------------------------------------------ RL curves
    def curves() -> None:
        c = F.load_training_curves(results)
        if c is None:
            rep.add(f"RL fine-tuning curves: {NOT_RUN} (no `rl fine-tune` job output with "
                    "`curves`).", "")
            return
        rep.values["rl_steps"] = len(c)
        rep.figure(F.plot_training_curves(c, rep.fig_dir / "rl_training_curves.png"),
                   f"RL fine-tuning curves ({len(c)} steps): mean reward of the rollouts and "
                   "its components, KL divergence to the reference policy, metastable and "
                   "mSUN rates and mean MLIP energy above hull of the rollouts (and of the "
                   "evaluation samples when stored); GRPO fine-tuning of the latent diffusion "
                   "generator as in Park & Walsh 2025.")

    rep.section("De novo generation benchmark", denovo)
    rep.section("MLIP versus DFT energy above hull", mlip_vs_dft)
    rep.section("Property targeting (DFT band gap)", targeting)
    rep.section("Figure of merit (dielectric)", fom)
    rep.section("S.U.N. per space group", spacegroups)
    rep.section("RL training curves", curves)

    path = outdir / "report.md"
    path.write_text("\n".join(rep.lines).rstrip() + "\n")
    rep.values["report"] = str(path)
    rep.values["figures"] = rep.figures
    (outdir / "summary.json").write_text(json.dumps(clean_floats(rep.values), indent=1,
                                                    default=str))
    logger.info("wrote report %s (%d figures)", path, len(rep.figures))
    return path, clean_floats(rep.values)


def build_report(
    results: CampaignResults,
    outdir: str | Path,
    group_by: str = T.GROUP_BY,
    symprec: float = 0.1,
    gap_window: tuple[float, float] = T.GAP_WINDOW,
    near_hull_window: tuple[float, float] | None = None,
    fom_max_e_hull: float | None = None,
    fom_top: int | None = 20,
) -> Path:
    """Write a one-page Markdown report of a campaign; return the path of ``report.md``.

    Parameters
    ----------
    results : CampaignResults
        The campaign's results (one campaign: ``results.campaign_id`` set).
    outdir : str or Path
        Output directory (``report.md``, ``figures/``, ``tables/``, ``summary.json``).
    group_by : str
        Column separating models/checkpoints in the benchmark tables.
    symprec : float
        ``SpacegroupAnalyzer`` tolerance for structures without a stored space group.
    gap_window : (float, float)
        Band-gap target window (eV).
    near_hull_window : (float, float), optional
        Restrict the MLIP-vs-DFT comparison to DFT E_hull in this window.
    fom_max_e_hull, fom_top
        Filters of the FoM table (see :func:`xtalforge.reports.tables.fom_table`).
    """
    return build_report_with_values(results, outdir, group_by, symprec, gap_window,
                                    near_hull_window, fom_max_e_hull, fom_top)[0]
