"""Resumable pretraining through the makers: the training state lives in the store's blobs.

A budgeted job continues in replacement jobs, a rerun of a killed job continues from the state
it stored, and a corrupt stored state is an error, never a silent fresh start. CPU, tiny model,
a few steps.
"""

from __future__ import annotations

import json

import pytest
import torch
from jobflow import Flow, run_locally

from xtalforge.flows.campaign import maker_from_config
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.makers.pretrain import LDMTrainMaker, VAETrainMaker
from xtalforge.models.generator import LatentDiffusionGenerator
from xtalforge.models.training import TrainConfig, TrainStateError, load_train_state
from xtalforge.stores.artifacts import (
    get_training_state,
    put_training_state,
    resolve_checkpoint,
    training_state_id,
)
from xtalforge.stores.config import build_job_store

CID = "resume"
K = 3  # steps per run; the stage has 2K steps (40 crystals, batch 8: past an epoch boundary)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():  # module scope: the reference run and the resumed runs use the same threads
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XTALFORGE_CACHE", str(root / "cache"))
        s = build_job_store("memory", root)
        ingest = IngestDatasetMaker(source="demo", limit=40).make()
        ingest.metadata["campaign_id"] = CID
        run_locally(Flow([ingest]), store=s, log=False, ensure_success=True)
        s.connect()
        yield s


def _maker(**train) -> VAETrainMaker:
    cfg = TrainConfig(steps=2 * K, batch_size=8, lr=3e-3, log_every=1, **train)
    return VAETrainMaker(model="tiny", max_atoms=20, device="cpu", train=cfg)


def _job(maker: VAETrainMaker):
    job = maker.make(None)
    job.metadata["campaign_id"] = CID
    return job


def _outputs(store, uuid: str) -> list[dict]:
    docs = store.query({"uuid": uuid}, properties=["index", "output"])
    return [d["output"] for d in sorted(docs, key=lambda d: d["index"])]


def _params(store, output: dict) -> dict[str, torch.Tensor]:
    path, _ = resolve_checkpoint(output["checkpoint"], store.additional_stores["blobs"])
    return LatentDiffusionGenerator.load(path, map_location="cpu").state_dict()


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference_output(store) -> dict:
    """Output of an uninterrupted 2K-step VAE job."""
    job = _job(_maker())
    run_locally(Flow([job]), store=store, log=False, ensure_success=True)
    (out,) = _outputs(store, job.uuid)
    assert out["runs"] == 1 and out["resumed_from_step"] == 0 and out["steps_done"] == 2 * K
    return out


@pytest.fixture(scope="module")
def reference(store, reference_output) -> dict[str, torch.Tensor]:
    """Parameters after 2K uninterrupted steps."""
    return _params(store, reference_output)


@pytest.mark.parametrize("per_run", [K, 2])
def test_budgeted_job_continues_in_replacements(store, reference, per_run):
    job = _job(_maker(max_run_steps=per_run))
    run_locally(Flow([job]), store=store, log=False, ensure_success=True)
    outs = _outputs(store, job.uuid)
    n_runs = -(-2 * K // per_run)
    assert len(outs) == n_runs  # indices 1..n: each stopped run replaced by a continuation
    for i, out in enumerate(outs[:-1]):
        assert out["_xtalforge_replaced"] and out["step"] == (i + 1) * per_run
        assert out["run"] == i + 1 and "checkpoint" not in out
    final = outs[-1]
    assert final["runs"] == n_runs and final["steps_done"] == 2 * K
    assert final["resumed_from_step"] == (n_runs - 1) * per_run
    assert final["checkpoint"]["kind"] == "generator/vae"
    _assert_same(_params(store, final), reference)


def test_budgeted_ldm_job_continues_like_an_uninterrupted_one(store, reference_output):
    vae_ckpt = reference_output["checkpoint"]

    def ldm_job(**train):
        cfg = TrainConfig(steps=2 * K, batch_size=8, lr=3e-3, **train)
        job = LDMTrainMaker(device="cpu", train=cfg).make(vae_ckpt)
        job.metadata["campaign_id"] = CID
        run_locally(Flow([job]), store=store, log=False, ensure_success=True)
        return _outputs(store, job.uuid)

    (ref,) = ldm_job()
    outs = ldm_job(max_run_steps=K)
    assert len(outs) == 2 and outs[-1]["runs"] == 2 and outs[-1]["resumed_from_step"] == K
    assert outs[-1]["checkpoint"]["kind"] == "generator/ldm"
    _assert_same(_params(store, outs[-1]), _params(store, ref))


class _Killed(RuntimeError):
    pass


def test_rerun_of_a_killed_job_continues_from_the_stored_state(
    store, reference, monkeypatch, tmp_path
):
    import xtalforge.makers.pretrain as gm

    job = _job(_maker(save_every_minutes=0.0))  # a state upload before every step
    flow = Flow([job])
    graph = flow.to_json()  # what run_campaign stores and rebuilds a rerun from
    uploads = []
    real_put = gm.put_training_state

    def put_then_die(*args, **kwargs):
        ref = real_put(*args, **kwargs)
        uploads.append(ref)
        if len(uploads) == K + 1:  # the state at step K is stored, then the job dies
            raise _Killed("killed")
        return ref

    monkeypatch.setattr(gm, "put_training_state", put_then_die)
    run_locally(flow, store=store, log=False)
    monkeypatch.undo()
    assert not _outputs(store, job.uuid)  # the killed job stored no output
    blobs = store.additional_stores["blobs"]
    doc = get_training_state(blobs, tmp_path / "s.pt", CID, job.uuid, "vae")
    assert doc["state_id"] == training_state_id(CID, job.uuid, "vae")
    assert load_train_state(tmp_path / "s.pt")["step"] == K

    rerun = Flow.from_dict(json.loads(graph))  # a fresh job: same uuid, same campaign
    assert rerun.jobs[0].uuid == job.uuid and rerun.jobs[0] is not job
    run_locally(rerun, store=store, log=False, ensure_success=True)
    (out,) = _outputs(store, job.uuid)
    assert out["resumed_from_step"] == K and out["runs"] == 2 and out["steps_done"] == 2 * K
    _assert_same(_params(store, out), reference)


def test_corrupt_stored_state_is_an_error_not_a_fresh_start(store, tmp_path):
    blobs = store.additional_stores["blobs"]
    job = _job(_maker())
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a training state")
    put_training_state(blobs, junk, CID, job.uuid, "vae")
    state_id = training_state_id(CID, job.uuid, "vae")
    with pytest.raises(TrainStateError, match=f"{state_id}.*not an xtalforge training state"):
        job.run(store)
    # bytes damaged in the store: caught by their sha256 before torch reads them
    blobs._collection.update_one({"state_id": state_id}, {"$set": {"data": "AAAA"}})
    with pytest.raises(TrainStateError, match=f"{state_id} in the blob store is corrupt"):
        job.run(store)
    assert not _outputs(store, job.uuid)


def test_campaign_config_maps_onto_the_nested_train_config():
    cfg = {
        "campaign_id": "c",
        "seed": 7,
        "pretrain": {
            "model": "tiny",
            "vae_steps": 11,
            "ldm_steps": 13,
            "batch_size": 5,
            "lr": 2e-3,
            "dtype": "bf16",
            "device": "cpu",
            "max_minutes": 50,
        },
    }
    pre = maker_from_config(cfg).pretrain
    vae, ldm = pre.vae_maker.train, pre.ldm_maker.train
    assert (vae.steps, ldm.steps) == (11, 13)
    for t in (vae, ldm):
        assert (t.batch_size, t.lr, t.dtype, t.seed, t.max_minutes) == (5, 2e-3, "bf16", 7, 50)
    assert pre.vae_maker.device == pre.ldm_maker.device == "cpu"
    with pytest.raises(ValueError, match="unknown pretrain settings"):
        maker_from_config({"campaign_id": "c", "pretrain": {"vae_step": 3}})


def test_run_campaign_resumes_a_job_killed_in_its_third_run(store, reference, monkeypatch):
    """A replacement chain cut short is not taken for a finished job, and the rerun's
    shorter chain is not shadowed by stale outputs of the old one."""
    import xtalforge.makers.pretrain as gm
    from xtalforge.flows.runner import run_campaign

    job = _job(_maker(max_run_steps=2, save_every_minutes=1e6))  # 3 runs of 2 steps
    cid = CID  # the campaign whose dataset documents the store holds
    job.metadata["campaign_id"] = cid
    uploads = []
    real_put = gm.put_training_state

    def put_then_die(*args, **kwargs):
        ref = real_put(*args, **kwargs)
        uploads.append(ref)
        if len(uploads) == 2:  # the 2nd run stored its state at step 4 and replaced itself;
            return ref
        if len(uploads) == 3:  # the 3rd run dies after a save
            raise _Killed("killed")
        return ref

    monkeypatch.setattr(gm, "put_training_state", put_then_die)
    first = run_campaign(lambda: Flow([job]), cid, store)
    monkeypatch.undo()
    assert first["status"] == "incomplete" and first["failed"] == [job.name]
    assert len(_outputs(store, job.uuid)) == 2  # two replaced outputs, no final one
    second = run_campaign(lambda: Flow([job]), cid, store)
    assert second["status"] == "completed" and second["ran"] == [job.name]
    outs = _outputs(store, job.uuid)
    assert len(outs) == 1 and "checkpoint" in outs[0]  # stale replacements cleared
    _assert_same(_params(store, outs[0]), reference)
