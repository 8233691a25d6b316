"""Run an xtalforge discovery campaign on a SLURM cluster through jobflow-remote.

What runs where
---------------
* GPU worker (``gpu_worker`` in ``cluster_project.yaml``): VAE/LDM pretraining, RL fine-tuning,
  sampling, the MLIP reference hull and screening (jobs tagged ``xtalforge_resource: gpu`` or
  named like a GPU stage).
* CPU worker (``cpu_worker``): ingestion, the DFT stage's builder and collectors, and every
  atomate2 VASP job (MP GGA static; optional MP double relaxation, band structure, DFPT
  dielectric), with custodian's VASP handlers on. The VASP command and POTCAR directory come from
  atomate2/pymatgen settings exported in that worker's ``pre_run`` (``ATOMATE2_VASP_CMD``,
  ``PMG_VASP_PSP_DIR``).
* MongoDB: the jobflow-remote queue and the campaign store (``XTALFORGE_STORE`` on the workers
  and ``--store`` for ``xtalforge query`` name the same database as the project's job store).

Usage
-----
::

    python campaigns/cluster_campaign.py --dry-run              # validate + build + routing
    python campaigns/cluster_campaign.py --install-project      # -> ~/.jfremote/xtalforge.yaml
    python campaigns/cluster_campaign.py --campaign-id cl-001   # submit (needs the MongoDB)
    jf -p xtalforge runner start                                # run the queue
    xtalforge query --store mongodb://.../xtalforge --campaign cl-001 --sort-by dft_e_above_hull

``--dry-run`` needs no cluster: it validates the project file with jobflow-remote's own model,
builds the campaign flow and prints which worker and SLURM resources each job gets.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

#: The campaign (same grammar as ``xtalforge run CONFIG.yaml``). Paths are cluster paths.
CAMPAIGN = {
    "campaign_id": "cluster-001",
    "name": "cluster discovery campaign",
    "seed": 0,
    # the project's MP-20 split: val + test, the 1,000 committed held-out test crystals kept out
    # of training (xtalforge.data.mp20); the folder holds val.csv.gz and test.csv.gz
    "dataset": {"source": "mp20:/data/mp20"},
    "reference": {"source": "/data/mp20/test.csv.gz"},
    # the d 256 VAE (it reconstructed held-out crystals better than the paper-size VAE in the
    # same time: benchmarks/RESULTS.md, generator scaling), then a long LDM run; max_minutes ends
    # each SLURM job inside its wall time and a continuation job resumes from the training
    # state kept in the store
    "pretrain": {"model": "medium", "vae_steps": 8000, "ldm_steps": 200000, "batch_size": 512,
                 "lr": 3e-4, "dtype": "bf16", "max_minutes": 450, "device": "cuda"},
    "rl": {"steps": 200},
    "sample": {"n": 10000, "batch_size": 2000, "device": "cuda"},
    "hull": {"kind": "mlip", "mlip": "chgnet", "device": "cuda"},
    "screen": {"mlip": "chgnet", "device": "cuda"},
    # DFT validation (xtalforge.makers.dft.dft_maker_from_config keys)
    "dft": {
        "k": 50,
        "policy": "msun_first",
        "one_per_composition": True,
        "relax": False,  # True: MP double relaxation before the static (MatterGen protocol)
        "band_structure": False,
        "dielectric": True,  # DFPT eps_elec and FoM = eps_elec * Eg (Cao & Wang 2025)
        "when_no_vasp": "run",  # VASP lives on the CPU worker, not where the builder runs
        "hull_entries": ["/data/mp_hull/2023-02-07-mp-elemental-reference-entries.json.gz"],
    },
}

#: Worker names in the project file, per resource kind (VASP on the CPU worker).
WORKERS = {"gpu": "gpu_worker", "cpu": "cpu_worker", "vasp": "cpu_worker"}

#: Per-kind SLURM resources overriding the workers' defaults (qtoolkit QResources keywords).
RESOURCES = {
    "gpu": {"partition": "gpu", "gres": "gpu:1", "cpus_per_task": 8, "time": "08:00:00"},
    "cpu": {"partition": "cpu", "nodes": 1, "ntasks": 1, "time": "01:00:00"},
    "vasp": {"partition": "cpu", "nodes": 1, "ntasks": 64, "time": "24:00:00"},
}


def load_project(path: Path) -> dict:
    """Read and validate a jobflow-remote project file (raises on an invalid file)."""
    from jobflow_remote.config.base import Project

    spec = yaml.safe_load(path.read_text())
    Project.model_validate(spec)
    stores = set(spec.get("jobstore", {}).get("additional_stores", {}))
    missing = {"data", "blobs", "structures", "campaigns"} - stores
    if missing:
        raise ValueError(f"{path}: the job store lacks the additional stores {sorted(missing)}")
    return spec


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project-file", type=Path, default=HERE / "cluster_project.yaml")
    ap.add_argument("--config", type=Path, help="campaign YAML instead of CAMPAIGN")
    ap.add_argument("--campaign-id", help="override the campaign id")
    ap.add_argument("--dry-run", action="store_true", help="validate, build and route only")
    ap.add_argument("--install-project", action="store_true", help="copy the project file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    log = logging.getLogger("cluster_campaign")

    spec = load_project(args.project_file)
    project = spec["name"]
    for kind, worker in WORKERS.items():
        if worker not in spec["workers"]:
            ap.error(f"worker {worker!r} ({kind}) is not in {args.project_file}")
    if args.install_project:
        from xtalforge.flows.remote import projects_folder

        dest = projects_folder() / f"{project}.yaml"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(args.project_file, dest)
        log.warning("installed %s as %s", args.project_file, dest)
        print(f"project {project!r} installed at {dest}")
        return 0

    config = yaml.safe_load(args.config.read_text()) if args.config else copy.deepcopy(CAMPAIGN)
    if args.campaign_id:
        config["campaign_id"] = args.campaign_id
    from xtalforge.cli_submit import describe_routing
    from xtalforge.flows.campaign import maker_from_config
    from xtalforge.flows.remote import make_routes, prepare_flow, submit_campaign

    routing = {
        "gpu_worker": WORKERS["gpu"],
        "cpu_worker": WORKERS["cpu"],
        "vasp_worker": WORKERS["vasp"],
        "resources": RESOURCES,
    }
    flow = maker_from_config(config).make()  # the one builder, as `xtalforge run` uses
    cid = config["campaign_id"]
    if args.dry_run:
        flow = prepare_flow(flow, cid, make_routes(**routing))
        vasp_env = [
            line.strip()
            for w in spec["workers"].values()
            for line in (w.get("pre_run") or "").splitlines()
            if "VASP" in line or "PSP" in line
        ]
        print(f"project {project!r} ({args.project_file}) is valid; campaign {cid!r}:")
        for r in describe_routing(flow):
            print(f"  {r['job']:<26} {r['kind']:<5} -> {r['worker']:<12} {r['resources']}")
        print(f"  (VASP jobs, created at run time) vasp  -> {WORKERS['vasp']:<12} "
              f"{RESOURCES['vasp']}")  # fmt: skip
        print("VASP settings on the workers: " + "; ".join(vasp_env))
        return 0
    ids = submit_campaign(flow, project, campaign_id=cid, config=config, **routing)
    print(f"submitted {len(ids)} jobs of campaign {cid!r} to project {project!r}")
    print(f"run them: jf -p {project} runner start; follow: jf -p {project} job list")
    return 0


if __name__ == "__main__":
    sys.exit(main())
