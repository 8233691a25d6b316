"""jobflow-remote: routing, project files, and a campaign run through a real SLURM.

The ``slurm`` test runs a tiny campaign (ingest 5 demo structures -> a scoring job that writes
screening documents and one Si "sample" -> DFT validation of the top 2) with jobflow-remote's
Runner in this process (MemoryStore queue, MontyStore job store), every job submitted with
``sbatch`` to the single-node SLURM that ``scripts/start_slurm.sh`` starts. The VASP jobs run on
a ``vasp`` worker whose ``execution_cmd`` is a small script that activates atomate2's mock VASP
(``monkeypatch_vasp`` with the reference runs) in the SLURM job's Python process and then calls
jobflow-remote's ``run_remote_job``: a pytest monkeypatch does not reach a worker process, and
routing mistakes show (a VASP job sent to another worker finds no VASP and fails). One of the two
candidates has no reference run, so its static fails: the failure is recorded on its document
while the other completes. Results are read back from a new process (``xtalforge query``).

The ``jf`` CLI and runner daemon need a MongoDB queue, which cannot run on these machines; with a
MongoDB, ``xtalforge submit`` / :func:`xtalforge.flows.remote.submit_campaign` use the same
project file with ``queue: mongodb://...``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from jobflow import Flow, JobStore, job

from xtalforge.flows.remote import (
    ROUTES_KEY,
    apply_routes,
    jobstore_spec,
    make_project_config,
    route_jobs,
    slurm_worker,
    tag_resource,
)
from xtalforge.makers.base import job_context, store_config
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import (
    bulk_upsert,
    find,
    make_result_doc,
    make_structure_doc,
    make_structure_id,
)

TESTS = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- jobs used here
@job(config=store_config())
def add_one(x: int) -> int:
    return x + 1


@job(config=store_config())
def score_for_dft(dataset_summary: dict, si_structure) -> dict:
    """Trivial screening stand-in: screen docs for the dataset + one Si "sample" ranked first."""
    from pymatgen.core import Structure

    from xtalforge.flows.remote import campaign_store

    ctx = job_context(store=campaign_store())
    cid = ctx.campaign_id
    if not isinstance(si_structure, Structure):  # jobflow-remote deserializes it already
        si_structure = Structure.from_dict(si_structure)
    ds = sorted(
        find(ctx.structures, {"campaign_id": cid, "stage": "dataset"}, ["structure_id"]),
        key=lambda d: d["structure_id"],
    )
    si_id = make_structure_id(cid, "test-sample", 0)
    docs = [
        make_structure_doc(
            si_structure,
            structure_id=si_id,
            campaign_id=cid,
            stage="sample",
            job_uuid=ctx.job_uuid,
            job_name=ctx.job_name,
        ),
        make_result_doc(
            si_id, campaign_id=cid, stage="screen", e_above_hull=0.0, msun=True, rank=0
        ),
    ]
    for i, d in enumerate(ds):
        docs.append(
            make_result_doc(
                d["structure_id"],
                campaign_id=cid,
                stage="screen",
                e_above_hull=0.05 + 0.01 * i,
                msun=False,
                rank=i + 1,
            )
        )
    bulk_upsert(ctx.structures, docs)
    return {"n_screened": len(docs) - 1, "si": si_id, "n_dataset": dataset_summary["n_accepted"]}


# --------------------------------------------------------------------------- routing (no SLURM)
def test_route_jobs_sets_run_config_by_resource_tag():
    a, b, c = add_one(1), add_one(2), add_one(3)
    tag_resource(a, "gpu")
    tag_resource(b, "vasp")
    c.name = "sample structures"  # untagged: the name plays no part, it runs as cpu
    flow = Flow([a, b, c])
    routed = route_jobs(
        flow,
        gpu_worker="gpu_w",
        cpu_worker="cpu_w",
        resources={"gpu": {"gres": "gpu:1"}, "vasp": {"ntasks": 64}},
    )
    assert routed == {"gpu": ["add_one"], "vasp": ["add_one"], "cpu": ["sample structures"]}
    assert a.config.manager_config["worker"] == "gpu_w"
    assert a.config.manager_config["resources"] == {"gres": "gpu:1"}
    assert b.config.manager_config == {"worker": "cpu_w", "resources": {"ntasks": 64}}
    assert c.config.manager_config["worker"] == "cpu_w"
    assert b.metadata[ROUTES_KEY]["vasp"]["worker"] == "cpu_w"
    # jobs that share a decorator's JobConfig object must not share the routing
    assert a.config is not b.config
    # no routes: nothing set, kinds still reported
    d = add_one(4)
    assert apply_routes(d, None) == {"cpu": ["add_one"]} and d.config.manager_config == {}
    with pytest.raises(ValueError):
        tag_resource(d, "tpu")


def test_project_config_is_valid_for_jobflow_remote(tmp_path, monkeypatch):
    from jobflow_remote import SETTINGS
    from jobflow_remote.config import ConfigManager

    monkeypatch.setattr(SETTINGS, "projects_folder", str(tmp_path / "projects"))
    store_dir = tmp_path / "camp"
    workers = {
        "gpu": slurm_worker(tmp_path / "w_gpu", resources={"gres": "gpu:1"}),
        "cpu": slurm_worker(
            "/scratch/xf", host="cluster.example.org", user="me", resources={"ntasks": 64}
        ),
    }
    path = make_project_config(
        "xf_test",
        base_dir=tmp_path / "base",
        queue="mongodb://db.example.org:27017/xf_queue",
        job_store=f"montydb://{store_dir / 'store'}",
        workers=workers,
        pre_run="module load vasp/6.4",
        runner_delay=2,
    )
    assert path == tmp_path / "projects" / "xf_test.yaml"
    spec = yaml.safe_load(path.read_text())
    assert set(spec["jobstore"]["additional_stores"]) == {
        "data",
        "blobs",
        "structures",
        "campaigns",
    }
    assert spec["queue"]["store"]["type"] == "MongoStore"
    assert spec["queue"]["store"]["uri"].startswith("mongodb://db.example.org")
    pre = spec["workers"]["cpu"]["pre_run"]
    assert "module load vasp/6.4" in pre and f"XTALFORGE_STORE=montydb://{store_dir}" in pre
    project = ConfigManager().get_project("xf_test")
    assert set(project.workers) == {"gpu", "cpu"}
    assert project.workers["cpu"].type == "remote"
    # the job store spec builds the same stores as xtalforge's embedded setting
    js = project.get_jobstore()
    ref = build_job_store(None, store_dir)
    assert js.docs_store.database_path == ref.docs_store.database_path
    assert js.additional_stores["structures"].collection_name == "structures"
    mem = JobStore.from_dict_spec(jobstore_spec("memory"))
    assert set(mem.additional_stores) == {"data", "blobs", "structures", "campaigns"}


def test_submit_campaign_puts_routed_jobs_in_the_queue(tmp_path, monkeypatch):
    """submit_campaign -> jobflow-remote submit_flow (queue: an in-process MemoryStore)."""
    from jobflow_remote import SETTINGS
    from jobflow_remote.config.base import Project

    from xtalforge.flows.remote import submit_campaign
    from xtalforge.stores.provenance import get_campaign

    monkeypatch.setattr(SETTINGS, "projects_folder", str(tmp_path / "projects"))
    store_dir = tmp_path / "camp"
    workers = {w: slurm_worker(tmp_path / w) for w in ("gpu", "cpu", "vasp")}
    make_project_config(
        "xf_q", base_dir=tmp_path / "p", job_store=f"montydb://{store_dir / 'store'}",
        workers=workers,
    )  # fmt: skip
    jcs = []

    def controller(self):  # one queue for the test (a MemoryStore queue lives in-process)
        if not jcs:
            jcs.append(Project.get_job_controller.__wrapped__(self))
            jcs[0].reset()
        return jcs[0]

    controller.__wrapped__ = Project.get_job_controller
    monkeypatch.setattr(Project, "get_job_controller", controller)
    a, b, c = add_one(1), add_one(2), add_one(3)
    tag_resource(a, "gpu")
    tag_resource(b, "vasp")
    ids = submit_campaign(
        Flow([a, b, c]), "xf_q", campaign_id="cq", config={"k": 1},
        gpu_worker="gpu", cpu_worker="cpu", vasp_worker="vasp",
        resources={"vasp": {"ntasks": 8}},
    )  # fmt: skip
    assert len(ids) == 3
    info = {i.uuid: i for i in jcs[0].get_jobs_info()}
    assert (info[a.uuid].worker, info[b.uuid].worker, info[c.uuid].worker) == ("gpu", "vasp", "cpu")
    assert info[a.uuid].metadata["campaign_id"] == "cq"
    js = build_job_store(None, store_dir)
    js.connect()
    rec = get_campaign(js, "cq")
    assert rec["status"] == "submitted" and rec["config"] == {"k": 1}


def test_submit_command_dry_run_routes_pending_dft_flows(tmp_path, monkeypatch):
    """`xtalforge submit --pending-dft --dry-run`: stored DFT flows, VASP jobs on `vasp`."""
    import typer
    from atomate2 import SETTINGS
    from pymatgen.core import Lattice, Structure
    from typer.testing import CliRunner

    from xtalforge.cli_submit import register
    from xtalforge.flows.runner import run_campaign
    from xtalforge.makers.dft import DFTValidationMaker

    monkeypatch.setattr(SETTINGS, "VASP_CMD", "no_vasp_on_this_machine")
    monkeypatch.delenv("XTALFORGE_STORE", raising=False)
    si = Structure(Lattice.cubic(5.43), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
    store = build_job_store(None, tmp_path)
    store.connect()
    sid = "xf-si"
    bulk_upsert(
        store.additional_stores["structures"],
        [
            make_structure_doc(si, structure_id=sid, campaign_id="cl", stage="sample"),
            make_result_doc(sid, campaign_id="cl", stage="screen", e_above_hull=0.0, msun=True),
        ],
    )
    res = run_campaign(DFTValidationMaker().make, "cl", store, root_dir=tmp_path / "runs")
    assert res["status"] == "completed"
    store.close()
    cfg = tmp_path / "campaign.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "campaign_id": "cl",
                "remote": {
                    "project": "xf",
                    "workers": {"gpu": "g", "cpu": "c", "vasp": "v"},
                    "resources": {"vasp": {"ntasks": 64}},
                },
            }
        )
    )
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test CLI."""

    register(app)
    out = CliRunner().invoke(
        app, ["submit", str(cfg), "--pending-dft", "--root", str(tmp_path), "--dry-run"]
    )
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "1 pending DFT flows of campaign 'cl'" in lines[0]
    static = next(x for x in lines if "MP GGA static xf-si" in x)
    assert "vasp  -> v" in static and '"ntasks": 64' in static
    assert "cpu   -> c" in next(x for x in lines if "dft collect xf-si" in x)


# --------------------------------------------------------------------------- real SLURM
def _slurm_idle() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(s.strip().startswith(("idle", "mixed")) for s in out.splitlines())


def _require_remote_aware_job_context() -> None:
    """Fail early unless ``job_context()`` uses the campaign store under jobflow-remote.

    jobflow-remote gives a running job a temporary per-job JSON store; documents that xtalforge
    jobs write there with bulk writes never reach the campaign store (the ingest job would
    "complete" with its documents lost) and stages that read documents find none.
    """
    from jobflow_remote.jobs.run import CURRENT_JOBDOC

    probe = build_job_store("memory")
    old_doc, old_env = CURRENT_JOBDOC.job_doc, os.environ.get("XTALFORGE_STORE")
    try:
        CURRENT_JOBDOC.job_doc = object()  # as inside a jobflow-remote worker
        os.environ["XTALFORGE_STORE"] = "memory"
        from jobflow import CURRENT_JOB

        CURRENT_JOB.store = probe
        ctx = job_context()
    finally:
        CURRENT_JOBDOC.job_doc = old_doc
        CURRENT_JOB.store = None
        if old_env is None:
            os.environ.pop("XTALFORGE_STORE", None)
        else:
            os.environ["XTALFORGE_STORE"] = old_env
    if ctx.store is probe:
        pytest.fail(
            "xtalforge.makers.base.job_context() returns jobflow-remote's per-job store: jobs "
            "run through jobflow-remote lose their documents. In job_context, replace "
            "`store = store or CURRENT_JOB.store` by `if store is None: from "
            "xtalforge.flows.remote import campaign_store; store = campaign_store()`"
        )


MOCK_EXEC = '''\
"""Run one jobflow-remote job with atomate2's mock VASP active (xtalforge SLURM test)."""
import json
import sys
from pathlib import Path

import pytest
from atomate2.utils.testing.vasp import monkeypatch_vasp
from jobflow_remote.jobs.run import run_remote_job

cfg = json.loads(Path(sys.argv[1]).read_text())
_mp = pytest.MonkeyPatch()
_mock = monkeypatch_vasp(_mp, Path(cfg["ref_root"]))
next(_mock)(cfg["ref_paths"], cfg["fake_run_vasp_kwargs"])
run_remote_job(sys.argv[2])
'''


@pytest.mark.slurm
def test_campaign_through_slurm_with_jobflow_remote_runner(tmp_path, monkeypatch, shared_data):
    if not _slurm_idle():
        pytest.skip("no idle SLURM node (start one with scripts/start_slurm.sh as root)")
    from atomate2.vasp.jobs.core import DielectricMaker
    from jobflow_remote import SETTINGS
    from pymatgen.io.vasp import Poscar

    from xtalforge.flows.remote import run_with_runner
    from xtalforge.makers.dft import DFTCollectMaker, DFTValidationMaker
    from xtalforge.makers.ingest import IngestDatasetMaker, load_source

    _require_remote_aware_job_context()
    ref_root = shared_data / "vasp_reference"
    hull = shared_data / "mp_hull" / "2023-02-07-mp-elemental-reference-entries.json.gz"
    cid = "slurm-campaign"
    monkeypatch.setattr(SETTINGS, "projects_folder", str(tmp_path / "projects"))
    monkeypatch.delenv("XTALFORGE_STORE", raising=False)

    # the structure ids the campaign will create (deterministic)
    report = load_source("demo", limit=5)
    origin = f"dataset:{report.name}:{report.fingerprint[:16]}"
    demo_ids = sorted(make_structure_id(cid, origin, e.source_id) for e in report.entries)
    si_id = make_structure_id(cid, "test-sample", 0)
    failing_id = demo_ids[0]  # ranked second; no reference run: its static fails

    # mock VASP for the vasp worker: the Si reference runs, inputs checked against MP settings
    mock_cfg = tmp_path / "mock_vasp.json"
    mock_cfg.write_text(
        json.dumps(
            {
                "ref_root": str(ref_root),
                "ref_paths": {
                    f"MP GGA static {si_id}": "Si_mp_gga_relax/GGA_Static",
                    f"dielectric {si_id}": "Si_dielectric",
                },
                "fake_run_vasp_kwargs": {
                    f"MP GGA static {si_id}": {
                        "incar_settings": ["ENCUT", "ISMEAR", "ISPIN", "LORBIT", "EDIFF", "LCHARG"]
                    },
                    f"dielectric {si_id}": {
                        "incar_settings": ["LEPSILON", "IBRION"],
                        "check_inputs": ["incar", "potcar"],
                    },
                },
            }
        )
    )
    exec_script = tmp_path / "mock_vasp_exec.py"
    exec_script.write_text(MOCK_EXEC)

    venv_bin = Path(sys.executable).parent
    pre = (
        f'export PATH="{venv_bin}:$PATH"\n'
        f'export PYTHONPATH="{TESTS.parent}:{TESTS}"\n'  # this checkout, and this test module
        "export OMP_NUM_THREADS=1"
    )
    workers = {
        w: slurm_worker(tmp_path / f"run_{w}", pre_run=pre, resources={"ntasks": 1})
        for w in ("gpu", "cpu")
    }
    workers["vasp"] = slurm_worker(
        tmp_path / "run_vasp",
        pre_run=pre,
        resources={"ntasks": 1},
        execution_cmd=f"{sys.executable} {exec_script} {mock_cfg} {{}}",
    )
    store_setting = f"montydb://{tmp_path / 'store'}"
    make_project_config(
        "xf_slurm",
        base_dir=tmp_path / "project",
        queue="memory",
        job_store=store_setting,
        workers=workers,
        runner_delay=0.5,
    )

    si = Poscar.from_file(ref_root / "Si_mp_gga_relax/GGA_Static/inputs/POSCAR.gz").structure
    ingest = IngestDatasetMaker(source="demo", limit=5).make()
    score = score_for_dft(ingest.output, si.as_dict())
    tag_resource(score, "gpu")
    dft = DFTValidationMaker(
        k=2,
        when_no_vasp="run",  # VASP (here: the mock) lives on the vasp worker
        dielectric_maker=DielectricMaker(),
        collect_maker=DFTCollectMaker(hull_entries=(str(hull),)),
    ).make(score.output)
    flow = Flow([ingest, score, dft], name="slurm campaign")

    t0 = time.perf_counter()
    result = run_with_runner(
        flow,
        "xf_slurm",
        max_seconds=300,
        campaign_id=cid,
        config={"test": "slurm"},
        gpu_worker="gpu",
        cpu_worker="cpu",
        vasp_worker="vasp",
    )
    wall = time.perf_counter() - t0
    print(f"SLURM campaign: {len(result['jobs'])} jobs in {wall:.1f} s: {result['states']}")
    jobs = {(j["name"], j["index"]): j for j in result["jobs"]}
    assert result["finished"], [(j["name"], j["state"], j["error"]) for j in result["jobs"]]
    # every job went through sbatch (a SLURM job id) on its routed worker
    for j in result["jobs"]:
        assert j["process_id"], j
    expect_fail = {f"MP GGA static {failing_id}", f"dielectric {failing_id}"}
    for (name, _), j in jobs.items():
        assert j["state"] == ("FAILED" if name in expect_fail else "COMPLETED"), (name, j)
        if name.startswith(("MP GGA static", "dielectric")):
            assert j["worker"] == "vasp", j
        elif name == "score_for_dft":
            assert j["worker"] == "gpu", j
        else:
            assert j["worker"] == "cpu", j
    assert {n for n, _ in jobs} >= {
        "ingest dataset",
        f"dft collect {si_id}",
        f"dft collect {failing_id}",
        "dft summary",
    }

    # results from a new process
    env = {**os.environ, "XTALFORGE_STORE": ""}
    cols = "structure_id,stage,formula,dft_status,dft_e_above_hull,dft_eps_elec,dft_fom,dft_errors"
    p = subprocess.run(
        [sys.executable, "-m", "xtalforge", "query", "--root", str(tmp_path), "--campaign", cid,
         "--store", store_setting, "--format", "json", "--limit", "0", "--columns", cols],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = {r["structure_id"]: r for r in json.loads(p.stdout)}
    assert len(rows) == 6  # 5 dataset structures + the Si sample
    ok, bad = rows[si_id], rows[failing_id]
    assert ok["stage"] == "sample" and ok["formula"] == "Si2"
    assert ok["dft_status"] == "completed" and ok["dft_errors"] == []
    assert ok["dft_e_above_hull"] == pytest.approx(-5.42030461 + 5.42531803, abs=1e-6)
    assert ok["dft_eps_elec"] == pytest.approx(11.4154, abs=1e-3)
    assert ok["dft_fom"] > 0
    assert bad["dft_status"] == "failed"
    assert any(e.startswith("DFT failed: static job") for e in bad["dft_errors"])
    # the other three were screened but not selected (budget k=2)
    assert sum(r["dft_status"] is None for r in rows.values()) == 4
