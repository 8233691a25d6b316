"""The ``xtalforge`` command line.

Every command takes ``--store`` (a store setting: ``embedded`` (default), ``mongodb://...`` or a
JobStore YAML file; ``$XTALFORGE_STORE`` too) and ``--root`` (directory of embedded campaigns,
default ``./xtalforge_campaigns`` or ``$XTALFORGE_HOME``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from xtalforge.cli_dft import register as register_submit
from xtalforge.reports.cli import register as register_reports

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="RL-guided crystal discovery campaigns on jobflow + atomate2.",
)

StoreOpt = typer.Option(
    None, "--store", help="Store setting: embedded | mongodb://... | store.yaml"
)
RootOpt = typer.Option(None, "--root", help="Directory of embedded campaigns")
CampaignOpt = typer.Option(None, "--campaign", "-c", help="Campaign id (default: all)")


def _setup_logging(verbose: bool) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module="jobflow")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("xtalforge").setLevel(logging.INFO)


def _root(root: Optional[Path]) -> Path:
    from xtalforge.stores.results import default_root

    return (Path(root) if root else default_root()).resolve()


def _run_config(config: dict, store: Optional[str], root: Optional[Path], force: bool) -> dict:
    from xtalforge.flows.campaign import maker_from_config
    from xtalforge.flows.runner import run_campaign
    from xtalforge.stores.config import build_job_store, describe_store

    root = _root(root)
    cid = config["campaign_id"]
    if config.get("report") is not None and not config["report"].get("outdir"):
        config["report"] = {**config["report"], "outdir": str(root / cid / "report")}
    job_store = build_job_store(store, root)
    typer.echo(f"campaign {cid!r} -> {describe_store(store, root)}")
    maker = maker_from_config(config)
    result = run_campaign(
        maker.make,
        cid,
        job_store,
        config=config,
        seeds={"seed": int(config.get("seed", 0))},
        root_dir=root / cid / "runs",
        force_config=force,
    )
    typer.echo(
        f"status: {result['status']}; ran {len(result['ran'])} job(s) {result['ran']}, "
        f"skipped {len(result['skipped'])} finished job(s), failed: {result['failed'] or 'none'}"
    )
    return result


@app.command()
def demo(
    campaign_id: str = typer.Option("demo", "--campaign-id", help="Campaign id"),
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
    seed: int = typer.Option(0, help="Random seed"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the demo campaign on the embedded store (CPU, minutes)."""
    from xtalforge.flows.campaign import demo_config

    _setup_logging(verbose)
    result = _run_config(demo_config(campaign_id, seed), store, root, force=False)
    _print_status(campaign_id, store, root)
    from xtalforge.makers.dft import dft_status_line
    from xtalforge.stores.config import build_job_store

    line = dft_status_line(build_job_store(store, _root(root)), campaign_id)
    if line:
        typer.echo(line)
    report = _root(root) / campaign_id / "report" / "report.md"
    if report.exists():
        typer.echo(f"report: {report}")
    typer.echo(f"query it with: xtalforge query --campaign {campaign_id} --limit 10")
    if result["failed"]:
        raise typer.Exit(1)


@app.command()
def run(
    config_file: Path = typer.Argument(..., exists=True, help="Campaign YAML"),
    campaign_id: Optional[str] = typer.Option(None, "--campaign-id", help="Override the id"),
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
    force_config: bool = typer.Option(
        False, "--force-config", help="Resume even if the configuration changed"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run or resume a campaign described by a YAML file (same id = resume)."""
    import yaml

    _setup_logging(verbose)
    config = yaml.safe_load(config_file.read_text()) or {}
    if campaign_id:
        config["campaign_id"] = campaign_id
    if "campaign_id" not in config:
        typer.echo("the config needs a campaign_id (or pass --campaign-id)", err=True)
        raise typer.Exit(2)
    result = _run_config(config, store or config.get("store"), root, force_config)
    if result["failed"]:
        raise typer.Exit(1)


def _print_status(campaign: Optional[str], store: Optional[str], root: Optional[Path]) -> None:
    from xtalforge.stores.results import CampaignResults

    res = CampaignResults.open(campaign, store, _root(root))
    recs = res.campaigns()
    if not recs:
        typer.echo("no campaigns in this store")
        return
    for rec in recs:
        cres = CampaignResults(res.store, rec["campaign_id"])
        st = cres.job_status()
        n_done = sum(j["finished"] for j in st["jobs"])
        typer.echo(
            f"\ncampaign {rec['campaign_id']}  status={rec.get('status')}  "
            f"created={rec.get('created_at', '')[:19]}  git={rec.get('git_commit')}  "
            f"runs={len(rec.get('runs', []))}"
        )
        typer.echo(f"  jobs: {n_done}/{len(st['jobs'])} finished")
        for j in st["jobs"]:
            typer.echo(f"    [{'x' if j['finished'] else ' '}] {j['name']}  ({j['uuid'][:8]})")
        for stage, c in cres.stage_counts().items():
            typer.echo(
                f"  structures/{stage}: {c['total']} documents ({c['with_errors']} with errors)"
            )


@app.command()
def status(
    campaign: Optional[str] = CampaignOpt,
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
) -> None:
    """Show campaigns, their jobs (finished or pending) and document counts."""
    _print_status(campaign, store, root)


_DEFAULT_COLUMNS = [
    "structure_id",
    "stage",
    "formula",
    "nsites",
    "valid",
    "job_name",
    "job_uuid",
    "lineage.source",
    "lineage.source_id",
    "lineage.checkpoint_id",
    "e_above_hull",
    "unique",
    "novel",
    "msun",
    "dft_e_above_hull",
    "errors",
]


@app.command()
def query(
    campaign: Optional[str] = CampaignOpt,
    stage: Optional[str] = typer.Option(None, help="Structure stage: dataset | sample | relaxed"),
    formula: Optional[str] = typer.Option(None, help="Reduced formula, formula or chemsys (Li-O)"),
    metastable: Optional[bool] = typer.Option(None, "--metastable/--not-metastable"),
    stable: Optional[bool] = typer.Option(None, "--stable/--not-stable"),
    novel: Optional[bool] = typer.Option(None, "--novel/--not-novel"),
    msun: Optional[bool] = typer.Option(None, "--msun/--not-msun"),
    valid: Optional[bool] = typer.Option(None, "--valid/--invalid"),
    sort_by: Optional[str] = typer.Option(None, "--sort-by"),
    limit: int = typer.Option(20, help="Rows to show (0 = all)"),
    fmt: str = typer.Option("table", "--format", help="table | csv | json"),
    columns: Optional[str] = typer.Option(
        None, help="Comma-separated columns (default: a summary)"
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to a file"),
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
) -> None:
    """List structures with their provenance and screening/DFT results."""
    from xtalforge.stores.results import CampaignResults

    res = CampaignResults.open(campaign, store, _root(root))
    df = res.candidates(
        stage=stage,
        formula=formula,
        metastable=metastable,
        stable=stable,
        novel=novel,
        msun=msun,
        valid=valid,
        sort_by=sort_by,
        limit=limit or None,
    )
    if df.empty:
        typer.echo("no matching structures")
        return
    cols = columns.split(",") if columns else [c for c in _DEFAULT_COLUMNS if c in df.columns]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        typer.echo(f"unknown columns {missing}; available: {sorted(df.columns)}", err=True)
        raise typer.Exit(2)
    df = df[cols]
    if fmt == "json":
        text = df.to_json(orient="records", indent=1, default_handler=str)
    elif fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "table":
        short = df.copy()
        for c in ("job_uuid",):
            if c in short:
                short[c] = short[c].map(lambda v: str(v)[:8] if v else v)
        text = short.to_string(index=False, max_colwidth=40)
    else:
        typer.echo("--format must be table, csv or json", err=True)
        raise typer.Exit(2)
    if output:
        output.write_text(text)
        typer.echo(f"wrote {len(df)} rows to {output}")
    else:
        typer.echo(text)


@app.command()
def history(
    structure_id: str = typer.Argument(..., help="Structure id (xf-...)"),
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
) -> None:
    """Print one structure's whole history (documents, jobs, checkpoints) as JSON."""
    from xtalforge.stores.results import CampaignResults

    res = CampaignResults.open(None, store, _root(root))
    h = res.history(structure_id)
    for d in h["documents"]:
        d.pop("structure", None)
    typer.echo(json.dumps(h, indent=1, default=str))


@app.command()
def export(
    output: Path = typer.Argument(..., help="A directory (cif) or a file (extxyz)"),
    campaign: Optional[str] = CampaignOpt,
    fmt: str = typer.Option("cif", "--format", help="cif | extxyz"),
    stage: Optional[str] = typer.Option(None),
    formula: Optional[str] = typer.Option(None),
    metastable: Optional[bool] = typer.Option(None, "--metastable/--not-metastable"),
    novel: Optional[bool] = typer.Option(None, "--novel/--not-novel"),
    msun: Optional[bool] = typer.Option(None, "--msun/--not-msun"),
    limit: int = typer.Option(0, help="At most this many (0 = all)"),
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
) -> None:
    """Export structures as CIF files or one extxyz file (ids and results kept as metadata)."""
    from xtalforge.reports.export import export_structures
    from xtalforge.stores.results import CampaignResults

    res = CampaignResults.open(campaign, store, _root(root))
    df = res.candidates(
        stage=stage,
        formula=formula,
        metastable=metastable,
        novel=novel,
        msun=msun,
        valid=True,
        limit=limit or None,
    )
    n = export_structures(res, df, output, fmt)
    typer.echo(f"exported {n} structures to {output}")


register_submit(app)  # xtalforge submit
register_reports(app)  # xtalforge table, xtalforge report


def main() -> None:  # pragma: no cover - console entry point
    """Entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
