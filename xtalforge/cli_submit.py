"""``xtalforge submit``: send a campaign to a jobflow-remote project (SLURM workers).

Hooked into the main CLI with ``register(app)``. The campaign YAML is the one ``xtalforge run``
reads, plus an optional ``remote`` section::

    campaign_id: cluster-001
    dataset: {source: /data/mp20/train.csv.gz}
    dft: {k: 50, policy: msun_first, dielectric: true,
          hull_entries: [/data/mp_hull/2023-02-07-mp-elemental-reference-entries.json.gz]}
    remote:
      project: xtalforge            # jobflow-remote project (~/.jfremote/xtalforge.yaml)
      workers: {gpu: gpu_worker, cpu: cpu_worker, vasp: cpu_worker}
      resources:
        gpu: {partition: gpu, gres: "gpu:1", time: "08:00:00"}
        vasp: {partition: cpu, nodes: 1, ntasks: 64, time: "24:00:00"}

Submitting needs the project's MongoDB queue (``jf runner start`` then runs the jobs); with
``--runner`` the jobs are run by jobflow-remote's Runner in this process instead (works with a
``queue: {store: {type: MemoryStore}}`` project, e.g. on a machine without MongoDB).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import typer

logger = logging.getLogger(__name__)

DFT_JOB_NAME = "dft validation"


def describe_routing(flow) -> list[dict[str, Any]]:
    """Return one row per job: name, resource kind, worker, resources (as routed)."""
    from xtalforge.flows.remote import iter_jobs, job_resource

    rows = []
    for j in iter_jobs(flow):
        mc = j.config.manager_config or {}
        rows.append(
            {
                "job": j.name,
                "kind": job_resource(j),
                "worker": mc.get("worker"),
                "resources": mc.get("resources"),
                "exec_config": mc.get("exec_config"),
            }
        )
    return rows


def submit(
    config_file: Path = typer.Argument(..., exists=True, help="Campaign YAML"),
    project: Optional[str] = typer.Option(
        None, "--project", "-p", help="jobflow-remote project (default: remote.project)"
    ),
    campaign_id: Optional[str] = typer.Option(None, "--campaign-id", help="Override the id"),
    gpu_worker: Optional[str] = typer.Option(None, help="Worker for GPU stages"),
    cpu_worker: Optional[str] = typer.Option(None, help="Worker for CPU jobs"),
    vasp_worker: Optional[str] = typer.Option(None, help="Worker for VASP jobs"),
    runner: bool = typer.Option(
        False, "--runner", help="Run with jobflow-remote's Runner in this process (no daemon)"
    ),
    max_seconds: int = typer.Option(3600, help="With --runner: stop after this many seconds"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Build and route, do not submit"),
    pending_dft: bool = typer.Option(
        False,
        "--pending-dft",
        help="Submit the DFT flows the campaign stored because VASP was missing where it ran",
    ),
    store: Optional[str] = typer.Option(
        None, "--store", help="With --pending-dft: the campaign's store setting"
    ),
    root: Optional[Path] = typer.Option(None, "--root", help="Directory of embedded campaigns"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Submit a campaign to a jobflow-remote project (GPU stages and VASP jobs routed)."""
    import yaml

    from xtalforge.flows.remote import make_routes, run_with_runner, submit_campaign

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    config = yaml.safe_load(config_file.read_text()) or {}
    if campaign_id:
        config["campaign_id"] = campaign_id
    if "campaign_id" not in config:
        typer.echo("the config needs a campaign_id (or pass --campaign-id)", err=True)
        raise typer.Exit(2)
    remote = dict(config.get("remote") or {})
    workers = dict(remote.get("workers") or {})
    project = project or remote.get("project")
    routing = {
        "gpu_worker": gpu_worker or workers.get("gpu"),
        "cpu_worker": cpu_worker or workers.get("cpu"),
        "vasp_worker": vasp_worker or workers.get("vasp"),
        "resources": remote.get("resources"),
        "exec_config": remote.get("exec_config"),
    }
    cid = config["campaign_id"]
    if pending_dft:
        flow = _pending_flow(cid, store or config.get("store"), root)
    else:
        from xtalforge.flows.campaign import maker_from_config

        flow = maker_from_config(config).make()  # the one builder, as `xtalforge run` uses
    if dry_run:
        from xtalforge.flows.remote import prepare_flow

        routes = make_routes(**routing)
        flow = prepare_flow(flow, cid, routes)
        typer.echo(f"campaign {cid!r} -> project {project!r} (dry run, nothing submitted)")
        for r in describe_routing(flow):
            typer.echo(
                f"  {r['job']:<28} {r['kind']:<5} -> {r['worker'] or '(submit default)'}"
                f"  resources={json.dumps(r['resources'])}"
            )
        typer.echo(f"routes: {json.dumps(routes)}")
        typer.echo(
            f"VASP jobs are created at run time by {DFT_JOB_NAME!r} and sent to the 'vasp' route"
        )
        return
    if runner:
        if not project:
            typer.echo("--runner needs --project", err=True)
            raise typer.Exit(2)
        res = run_with_runner(
            flow, project, max_seconds=max_seconds, campaign_id=cid, config=config, **routing
        )
        typer.echo(f"campaign {cid!r}: {res['states']} (finished: {res['finished']})")
        if not res["finished"] or res["states"].get("FAILED"):
            raise typer.Exit(1)
        return
    ids = submit_campaign(flow, project, campaign_id=cid, config=config, **routing)
    typer.echo(
        f"submitted campaign {cid!r}: {len(ids)} jobs to project {project or '(default)'}; "
        "run them with `jf -p PROJECT runner start` and follow with `jf -p PROJECT job list`"
    )


def _pending_flow(campaign_id: str, store: Optional[str], root: Optional[Path]):
    from jobflow import Flow

    from xtalforge.makers.dft import pending_dft_flows
    from xtalforge.stores.config import build_job_store
    from xtalforge.stores.results import default_root

    js = build_job_store(store, (Path(root) if root else default_root()).resolve())
    flows = pending_dft_flows(js, campaign_id)
    if not flows:
        typer.echo(f"campaign {campaign_id!r} has no pending DFT flows", err=True)
        raise typer.Exit(1)
    typer.echo(f"{len(flows)} pending DFT flows of campaign {campaign_id!r}")
    return Flow(list(flows.values()), name=f"{campaign_id} pending dft")


def register(app: typer.Typer) -> None:
    """Add the ``submit`` command to the ``xtalforge`` CLI."""
    app.command(name="submit")(submit)
