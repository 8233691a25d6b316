"""``xtalforge table`` and ``xtalforge report``: register them on a Typer app.

>>> from xtalforge.reports.cli import register
>>> register(app)   # in xtalforge/cli.py, after ``app`` is defined

Both commands take ``--store`` and ``--root`` like the other commands (see
:mod:`xtalforge.cli`); the store is resolved with
:meth:`xtalforge.stores.results.CampaignResults.open`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _root(root: Optional[Path]) -> Path:
    from xtalforge.stores.results import default_root

    return (Path(root) if root else default_root()).resolve()


def _open(campaign: Optional[str], store: Optional[str], root: Optional[Path]):
    """Open a store's results; exit with code 2 and one line when the campaign is not there."""
    from xtalforge.stores.config import additional
    from xtalforge.stores.documents import find
    from xtalforge.stores.provenance import list_campaigns
    from xtalforge.stores.results import CampaignResults

    res = CampaignResults.open(campaign, store, _root(root))
    ids = sorted(r["campaign_id"] for r in list_campaigns(res.store))
    if campaign and not res.has_campaign(campaign):
        typer.echo(
            f"error: campaign {campaign!r} is not in this store; campaigns here: "
            f"{', '.join(ids) or 'none'}",
            err=True,
        )
        raise typer.Exit(2)
    if not campaign and not ids and not find(
        additional(res.store, "structures"), {}, properties=["doc_id"], limit=1
    ):
        typer.echo("error: no campaigns in this store (pass --store/--root?)", err=True)
        raise typer.Exit(2)
    return res


def _window(text: Optional[str]) -> Optional[tuple[float, float]]:
    if not text:
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError as exc:
        raise typer.BadParameter("expected LO,HI (e.g. -0.2,0.2)") from exc
    return lo, hi


def register(app: typer.Typer) -> None:
    """Add the ``table`` and ``report`` commands to ``app``."""
    from xtalforge.reports.tables import TABLES

    @app.command("table")
    def table(
        name: str = typer.Argument(..., help=f"Table: {' | '.join(TABLES)}"),
        campaign: Optional[str] = typer.Option(None, "--campaign", "-c", help="Campaign id"),
        fmt: str = typer.Option("markdown", "--format", "-f", help="markdown | csv | latex"),
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to a file"),
        group_by: Optional[str] = typer.Option(
            None, "--group-by", help="Column separating models (default: lineage.checkpoint_id "
            "for denovo/property-targeting, none otherwise)"),
        window: Optional[str] = typer.Option(
            None, "--window", help="mlip-vs-dft: restrict to DFT E_hull in LO,HI (eV/atom); "
            "property-targeting: band-gap window LO,HI (eV, default 2.7,3.3)"),
        symprec: float = typer.Option(0.1, "--symprec", help="sun-per-spacegroup tolerance"),
        target_col: Optional[str] = typer.Option(
            None, "--target-col", help="sun-per-spacegroup: column of the requested space "
            "group of conditioned samples (adds S.S.U.N.)"),
        store: Optional[str] = typer.Option(
            None, "--store", help="Store setting: embedded | mongodb://... | store.yaml"),
        root: Optional[Path] = typer.Option(None, "--root",
                                            help="Directory of embedded campaigns"),
    ) -> None:
        """Print (or write) one validation table of a campaign."""
        from xtalforge.reports.tables import build_table

        key = name.lower().replace("_", "-")
        if key not in TABLES:
            typer.echo(f"error: unknown table {name!r}; choose from {', '.join(TABLES)}", err=True)
            raise typer.Exit(2)
        if fmt.lower() not in ("markdown", "md", "csv", "latex", "tex"):
            typer.echo(f"error: --format must be markdown, csv or latex, got {fmt!r}", err=True)
            raise typer.Exit(2)
        kwargs: dict = {}
        win = _window(window)
        if key == "mlip-vs-dft":
            kwargs["window"] = win
            if group_by:
                kwargs["group_by"] = group_by
        elif key in ("denovo", "property-targeting"):
            if group_by:
                kwargs["group_by"] = group_by
            if key == "property-targeting" and win:
                kwargs["window"] = win
        elif key == "sun-per-spacegroup":
            kwargs["symprec"] = symprec
            if target_col:
                kwargs["target_col"] = target_col
            if group_by:
                kwargs["group_by"] = group_by
        res = _open(campaign, store, root)
        t = build_table(key, res, **kwargs)
        text = t.render(fmt)
        if output:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text)
            typer.echo(f"wrote {key} table ({len(t.data)} rows) to {output}")
        else:
            typer.echo(text)

    @app.command("report")
    def report(
        campaign: str = typer.Option(..., "--campaign", "-c", help="Campaign id"),
        out: Path = typer.Option(..., "--out", "-o", help="Output directory"),
        group_by: str = typer.Option("lineage.checkpoint_id", "--group-by"),
        store: Optional[str] = typer.Option(
            None, "--store", help="Store setting: embedded | mongodb://... | store.yaml"),
        root: Optional[Path] = typer.Option(None, "--root",
                                            help="Directory of embedded campaigns"),
    ) -> None:
        """Write a one-page Markdown report (tables + PNG figures) of a campaign."""
        from xtalforge.reports.report import build_report

        res = _open(campaign, store, root)
        path = build_report(res, out, group_by=group_by)
        typer.echo(f"wrote {path}")
