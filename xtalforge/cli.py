"""The ``xtalforge`` command line.

Every command takes ``--store`` (a store setting: ``embedded`` (default), ``mongodb://...`` or a
JobStore YAML file; ``$XTALFORGE_STORE`` too) and ``--root`` (directory of embedded campaigns,
default ``./xtalforge_campaigns`` or ``$XTALFORGE_HOME``).

A user error (an invalid campaign YAML or store setting, an unknown campaign, structure id,
column, stage or format ...) ends in one ``error: ...`` line on stderr and exit code 2, without a
traceback; ``xtalforge --debug COMMAND`` (or ``XTALFORGE_DEBUG=1``, or ``-v`` on ``run``/``demo``)
shows the traceback instead. A run whose jobs failed exits with code 1 after one line per failed
job (its name and the exception's type and message).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand, TyperGroup

from xtalforge.cli_submit import register as register_submit
from xtalforge.reports.cli import register as register_reports
from xtalforge.stores.schemas import query_columns


class UserError(Exception):
    """A mistake in the command's input: reported as one line, exit code 2."""


class _State:
    debug = False


def _user_error_types() -> tuple[type[BaseException], ...]:
    import yaml

    from xtalforge.flows.campaign import CampaignConfigError
    from xtalforge.flows.runner import CampaignConfigMismatch
    from xtalforge.stores.config import StoreConfigError
    from xtalforge.stores.runlock import CampaignLocked

    kinds: list[type[BaseException]] = [
        UserError,
        CampaignConfigError,
        CampaignConfigMismatch,
        CampaignLocked,
        StoreConfigError,
        yaml.YAMLError,
    ]
    try:
        from pymongo.errors import ConnectionFailure, ServerSelectionTimeoutError

        kinds += [ServerSelectionTimeoutError, ConnectionFailure]
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def _one_line(exc: BaseException) -> str:
    try:
        from pymongo.errors import PyMongoError
    except ImportError:  # pragma: no cover
        PyMongoError = ()  # noqa: N806
    text = " ".join(str(exc).split())
    if PyMongoError and isinstance(exc, PyMongoError):
        from xtalforge.stores.config import MONGO_TIMEOUT_ENV

        text = text.split(", Timeout:")[0].split(" (configured timeouts")[0]
        return (
            f"cannot reach the MongoDB server ({type(exc).__name__}: {text[:200]}); check the "
            f"URI and that the server runs (${MONGO_TIMEOUT_ENV} sets how long to wait)"
        )
    return text


class _Group(TyperGroup):
    """Turn user errors raised by any command into one line on stderr and exit code 2."""

    def invoke(self, ctx):  # noqa: D102
        from xtalforge.settings import get_settings

        _State.debug = get_settings().DEBUG
        try:
            return super().invoke(ctx)
        except _user_error_types() as exc:
            if _State.debug:
                raise
            typer.echo(f"error: {_one_line(exc)}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="RL-guided crystal discovery campaigns on jobflow + atomate2.",
)


@app.callback()
def _main(
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks of user errors (also: XTALFORGE_DEBUG=1)"
    ),
) -> None:
    """RL-guided crystal discovery campaigns on jobflow + atomate2."""
    if debug:
        _State.debug = True

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


def _results(campaign: Optional[str], store: Optional[str], root: Optional[Path]):
    """Open a store's results; an unknown ``campaign`` is a :class:`UserError`."""
    from xtalforge.stores.config import describe_store
    from xtalforge.stores.provenance import list_campaigns
    from xtalforge.stores.results import CampaignResults

    res = CampaignResults.open(campaign, store, _root(root))
    if campaign and not res.has_campaign(campaign):
        ids = sorted(r["campaign_id"] for r in list_campaigns(res.store))
        here = ", ".join(ids[:20]) + (" ..." if len(ids) > 20 else "") if ids else "none"
        raise UserError(
            f"campaign {campaign!r} is not in this store ({describe_store(store, _root(root))}); "
            f"campaigns here: {here}"
        )
    return res


def _check_stage(stage: Optional[str]) -> None:
    from xtalforge.stores.documents import STRUCTURE_STAGES

    if stage is not None and stage not in STRUCTURE_STAGES:
        raise UserError(f"unknown stage {stage!r}; valid stages: {', '.join(STRUCTURE_STAGES)}")


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise UserError(f"--limit must be 0 (all) or a positive number, got {limit}")


def _run_config(
    config: dict,
    store: Optional[str],
    root: Optional[Path],
    force: bool,
    source: str = "the campaign configuration",
) -> dict:
    from xtalforge.flows.campaign import (
        CampaignConfigError,
        check_config,
        maker_from_config,
        resolve_local_paths,
    )
    from xtalforge.flows.runner import run_campaign
    from xtalforge.stores.config import build_job_store, describe_store

    root = _root(root)
    try:  # validate everything before the store is touched
        check_config(config)
        cid = config["campaign_id"]
        if config.get("report") is not None and not config["report"].get("outdir"):
            config["report"] = {**config["report"], "outdir": str(root / cid / "report")}
        maker = maker_from_config(resolve_local_paths(config))
    except CampaignConfigError as exc:
        raise UserError(f"invalid {source}: {exc}") from exc
    job_store = build_job_store(store, root)
    typer.echo(f"campaign {cid!r} -> {describe_store(store, root)}")
    result = run_campaign(
        maker.make,
        cid,
        job_store,
        config=config,
        seeds={"seed": int(config.get("seed", 0))},
        root_dir=root / cid / "runs",
        force_config=force,
    )
    replaced = result.get("config_replaced")
    if replaced and replaced.get("forced"):
        typer.echo(
            "the configuration changed (--force-config): the flow was rebuilt from the new "
            f"configuration: kept {replaced['kept']}, rebuilt {replaced['rebuilt']}"
        )
    elif replaced:
        typer.echo(
            "the configuration changed and no job of the stored flow had finished: "
            "the new configuration replaced the stored one"
        )
    typer.echo(
        f"status: {result['status']}; ran {len(result['ran'])} job(s) {result['ran']}, "
        f"skipped {len(result['skipped'])} finished job(s), failed: {result['failed'] or 'none'}"
    )
    for name, reason in (result.get("errors") or {}).items():
        typer.echo(f"failed job {name!r}: {reason}", err=True)
    return result


@app.command()
def demo(
    campaign_id: str = typer.Option("demo", "--campaign-id", help="Campaign id"),
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
    seed: int = typer.Option(0, help="Random seed"),
    train: bool = typer.Option(
        False, "--train", help="Pretrain the generator from scratch instead of starting from "
        "the small one shipped with the package (minutes more)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the demo campaign on the embedded store (CPU, a few minutes).

    Ingest the demo dataset, RL fine-tune the shipped tiny generator (or, with --train, one
    pretrained from scratch), sample, screen with CHGNet against a hull of the demo
    structures, prepare DFT for the top candidates and write a report.
    """
    from xtalforge.flows.campaign import demo_config

    _setup_logging(verbose)
    _State.debug = _State.debug or verbose
    result = _run_config(demo_config(campaign_id, seed, train=train), store, root, force=False)
    _print_summary(campaign_id, store, root)
    if result["failed"]:
        raise typer.Exit(1)


def _print_summary(campaign_id: str, store: Optional[str], root: Optional[Path]) -> None:
    """Print the end-of-run summary of ``run`` and ``demo``: status, DFT, report, queries."""
    from xtalforge.makers.dft import dft_status_line
    from xtalforge.stores.config import build_job_store
    from xtalforge.stores.provenance import get_campaign

    _print_status(campaign_id, store, root)
    job_store = build_job_store(store, _root(root))
    line = dft_status_line(job_store, campaign_id)
    if line:
        typer.echo(line)
    rec = get_campaign(job_store, campaign_id) or {}
    outdir = ((rec.get("config") or {}).get("report") or {}).get("outdir")
    report = Path(outdir) / "report.md" if outdir else _root(root) / campaign_id / "report" \
        / "report.md"
    if report.exists():
        typer.echo(f"report: {report}")
    from xtalforge.stores.results import CampaignResults

    df = CampaignResults(job_store, campaign_id).to_dataframe(stage="sample")
    if not df.empty and "msun" in df.columns:
        def count(col: str) -> int:
            return int(df[col].map(lambda v: v is True or v == 1).sum()) if col in df else 0

        n_rej = int(df["rejected"].map(lambda v: isinstance(v, str)).sum()) \
            if "rejected" in df else 0
        typer.echo(
            f"screened samples: {int(df['e_above_hull'].notna().sum())} with an energy above "
            f"the hull, {n_rej} rejected before the MLIP (atoms closer than 0.5 A or an "
            f"implausibly dense cell), {count('metastable')} metastable, {count('msun')} mSUN "
            f"(metastable, unique, novel): xtalforge query --campaign {campaign_id} --msun"
        )
        typer.echo("  (MLIP estimates against the campaign's reference hull: candidates for DFT "
                   "validation, not confirmed materials)")
    typer.echo(f"query it with: xtalforge query --campaign {campaign_id} --limit 10")


class _RunCommand(TyperCommand):
    """``run``: its help ends with the campaign YAML grammar, built from the makers on demand."""

    def format_help(self, ctx, formatter):  # noqa: D102
        if not self.epilog:
            from rich.markup import escape

            from xtalforge.flows.campaign import campaign_grammar

            self.epilog = escape(campaign_grammar())
        return super().format_help(ctx, formatter)


@app.command(cls=_RunCommand)
def run(
    config_file: Path = typer.Argument(..., exists=True, help="Campaign YAML"),
    campaign_id: Optional[str] = typer.Option(None, "--campaign-id", help="Override the id"),
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
    force_config: bool = typer.Option(
        False,
        "--force-config",
        help="When the configuration changed and jobs have finished: rebuild the flow from "
        "the new configuration; finished jobs whose settings and upstream jobs are unchanged "
        "are kept (not redone), the others run again. Not needed when no job has finished: a "
        "changed configuration then replaces the stored one.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log and show tracebacks"),
) -> None:
    """Run or resume a campaign described by a YAML file (same id = resume).

    Unknown keys and wrong types in the YAML are errors (naming the allowed keys), found before
    anything runs (the grammar follows). A failed job is listed with its exception; fix the
    configuration and run again: while no job has finished, the changed configuration replaces
    the stored one.
    """
    import yaml

    from xtalforge.stores.config import yaml_problem

    _setup_logging(verbose)
    _State.debug = _State.debug or verbose
    try:
        config = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{config_file}: not valid YAML: {yaml_problem(exc)}") from exc
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise UserError(
            f"{config_file}: a campaign configuration is a mapping (campaign_id: ..., "
            f"dataset: ...), got {type(config).__name__}"
        )
    if campaign_id:
        config["campaign_id"] = campaign_id
    if "campaign_id" not in config:
        raise UserError(f"{config_file}: the config needs a campaign_id (or pass --campaign-id)")
    store_setting = store or config.get("store")
    result = _run_config(config, store_setting, root, force_config, source=str(config_file))
    _print_summary(config["campaign_id"], store_setting, root)
    if result["failed"]:
        raise typer.Exit(1)


def _print_status(campaign: Optional[str], store: Optional[str], root: Optional[Path]) -> None:
    from xtalforge.stores.results import CampaignResults
    from xtalforge.stores.runlock import run_state

    res = _results(campaign, store, root)
    recs = res.campaigns()
    if not recs:
        typer.echo("no campaigns in this store")
        return
    for rec in recs:
        cres = CampaignResults(res.store, rec["campaign_id"])
        st = cres.job_status()
        n_done = sum(j["finished"] for j in st["jobs"])
        state, note = run_state(res.store, rec)
        typer.echo(
            f"\ncampaign {rec['campaign_id']}  status={state}  "
            f"created={rec.get('created_at', '')[:19]}  git={rec.get('git_commit')}  "
            f"runs={len(rec.get('runs', []))}"
        )
        if note:
            typer.echo(f"  {state}: {note}")
        typer.echo(f"  jobs: {n_done}/{len(st['jobs'])} finished")
        for j in st["jobs"]:
            typer.echo(f"    [{'x' if j['finished'] else ' '}] {j['name']}  ({j['uuid'][:8]})")
        last = (rec.get("runs") or [{}])[-1]
        for name, reason in (last.get("errors") or {}).items():
            typer.echo(f"  last run: job {name!r} failed: {reason}")
        if last.get("interrupted"):
            typer.echo(f"  last run interrupted: {last['interrupted']}")
        for stage, c in cres.stage_counts().items():
            rejected = f", {c['rejected']} rejected" if c.get("rejected") else ""
            typer.echo(
                f"  structures/{stage}: {c['total']} documents ({c['with_errors']} with "
                f"errors{rejected})"
            )


@app.command()
def status(
    campaign: Optional[str] = CampaignOpt,
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
) -> None:
    """Show campaigns, their jobs (finished or pending) and document counts."""
    _print_status(campaign, store, root)


#: Default ``xtalforge query`` columns (marked in the stage schemas).
_DEFAULT_COLUMNS = query_columns()


@app.command()
def query(
    campaign: Optional[str] = CampaignOpt,
    stage: Optional[str] = typer.Option(None, help="Structure stage: dataset | sample | relaxed"),
    formula: Optional[str] = typer.Option(None, help="Reduced formula, formula or chemsys (Li-O)"),
    metastable: Optional[bool] = typer.Option(None, "--metastable/--not-metastable"),
    stable: Optional[bool] = typer.Option(None, "--stable/--not-stable"),
    novel: Optional[bool] = typer.Option(None, "--novel/--not-novel"),
    unique: Optional[bool] = typer.Option(None, "--unique/--not-unique"),
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
    _check_stage(stage)
    _check_limit(limit)
    if fmt not in ("table", "csv", "json"):
        raise UserError(f"--format must be table, csv or json, got {fmt!r}")
    res = _results(campaign, store, root)
    try:
        df = res.candidates(
            stage=stage,
            formula=formula,
            metastable=metastable,
            stable=stable,
            novel=novel,
            unique=unique,
            msun=msun,
            valid=valid,
            sort_by=sort_by,
            limit=limit or None,
        )
    except KeyError as exc:  # sort_by: not a column
        if not sort_by or sort_by not in str(exc):
            raise
        cols = sorted(res.to_dataframe(stage=stage).columns)
        raise UserError(f"{exc.args[0]}; columns: {', '.join(cols)}") from None
    if df.empty:
        typer.echo("no matching structures")
        return
    cols = columns.split(",") if columns else [c for c in _DEFAULT_COLUMNS if c in df.columns]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UserError(f"unknown columns {missing}; available: {sorted(df.columns)}")
    df = df[cols]
    if fmt == "json":
        text = df.to_json(orient="records", indent=1, default_handler=str)
    elif fmt == "csv":
        text = df.to_csv(index=False)
    else:
        short = df.copy()
        for c in ("job_uuid",):
            if c in short:
                short[c] = short[c].map(lambda v: str(v)[:8] if v else v)
        text = short.to_string(index=False, max_colwidth=40)
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
    res = _results(None, store, root)
    try:
        h = res.history(structure_id)
    except KeyError:
        raise UserError(
            f"no structure {structure_id!r} in this store (list ids with xtalforge query)"
        ) from None
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
    unique: Optional[bool] = typer.Option(None, "--unique/--not-unique"),
    msun: Optional[bool] = typer.Option(None, "--msun/--not-msun"),
    limit: int = typer.Option(0, help="At most this many (0 = all)"),
    store: Optional[str] = StoreOpt,
    root: Optional[Path] = RootOpt,
) -> None:
    """Export structures as CIF files or one extxyz file (ids and results kept as metadata)."""
    from xtalforge.reports.export import export_structures

    if fmt not in ("cif", "extxyz"):
        raise UserError(f"--format must be cif or extxyz, got {fmt!r}")
    _check_stage(stage)
    _check_limit(limit)
    res = _results(campaign, store, root)
    df = res.candidates(
        stage=stage,
        formula=formula,
        metastable=metastable,
        novel=novel,
        unique=unique,
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
