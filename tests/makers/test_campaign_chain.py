"""Generator and screening makers chained in a flow on an embedded store (CPU, tiny model)."""

from __future__ import annotations

import pytest
from jobflow import Flow, run_locally

from xtalforge.flows.runner import run_campaign
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.makers.pretrain import LDMTrainMaker, PretrainMaker, VAETrainMaker
from xtalforge.makers.sample import SampleMaker
from xtalforge.makers.screening import HullMaker, ScreenMaker
from xtalforge.models.training import TrainConfig
from xtalforge.stores.artifacts import resolve_checkpoint
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import find
from xtalforge.stores.results import CampaignResults


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("mk")
    store = build_job_store(None, root)

    def flow():
        ing = IngestDatasetMaker(source="demo", limit=80).make()
        pre = PretrainMaker(
            vae_maker=VAETrainMaker(train=TrainConfig(steps=20, batch_size=32), device="cpu"),
            ldm_maker=LDMTrainMaker(train=TrainConfig(steps=20, batch_size=32), device="cpu"),
        ).make(ing.output)
        smp = SampleMaker(n=12, batch_size=12, chunk_size=5, device="cpu", label="base").make(
            pre.output["checkpoint"]
        )
        hull = HullMaker(kind="mlip", mlip="chgnet", device="cpu").make(ing.output)
        scr = ScreenMaker(mlip="chgnet", device="cpu", k=3).make(smp.output, hull.output)
        return Flow([ing, pre, smp, hull, scr])

    out = run_campaign(flow, "mk", store, root_dir=root / "runs")
    return store, out, root


def test_chain_runs_and_documents_have_lineage(campaign):
    store, out, _ = campaign
    assert out["status"] == "completed", out
    res = CampaignResults(store, "mk")
    samples = res.documents(stage="sample")
    assert len(samples) == 12
    ckpt_ids = {d["lineage"]["checkpoint_id"] for d in samples}
    assert len(ckpt_ids) == 1
    blob = store.additional_stores["blobs"].query_one({"checkpoint_id": ckpt_ids.pop()})
    assert (
        blob["kind"] == "generator/ldm"
        and blob["sha256"] == samples[0]["lineage"]["checkpoint_sha256"]
    )
    screens = res.documents(stage="screen")
    assert len(screens) == 12
    for d in screens:
        assert d["hull_convention"]["energy_source"] == "mlip"
        assert d["mlip"]["name"].lower().startswith("chgnet")
        assert d["e_above_hull"] is not None or d["errors"]
    ranked = sorted((d for d in screens if d.get("rank") is not None), key=lambda d: d["rank"])
    assert [d["rank"] for d in ranked] == list(range(len(ranked))) and len(ranked) <= 3
    h = res.history(samples[0]["structure_id"])
    assert [d["stage"] for d in h["documents"]] == ["sample", "screen"]
    assert h["checkpoints"][0]["kind"] == "generator/ldm"
    assert {j["name"] for j in h["jobs"]} == {"sample", "screen"}
    # job outputs keep references, not weights
    vae_out = next(iter(store.query({"name": "train vae"}, properties=["output"])))["output"]
    assert set(vae_out["checkpoint"]) >= {"checkpoint_id", "sha256"}
    assert "data" not in vae_out["checkpoint"]


def test_sampling_is_reproducible_from_a_local_checkpoint_path(campaign, tmp_path):
    store, _, _ = campaign
    ref = next(iter(store.query({"name": "train ldm"}, properties=["output"])))["output"][
        "checkpoint"
    ]
    path, _ = resolve_checkpoint(ref, store.additional_stores["blobs"])
    s2 = build_job_store("memory", tmp_path)
    a = SampleMaker(n=6, batch_size=6, device="cpu", seed=3).make(str(path))
    b = SampleMaker(n=6, batch_size=6, device="cpu", seed=3).make(str(path))
    run_locally(Flow([a, b]), store=s2, log=False, ensure_success=True)
    da = sorted(
        find(s2.additional_stores["structures"], {"job_uuid": a.uuid}),
        key=lambda d: d["lineage"]["index"],
    )
    db = sorted(
        find(s2.additional_stores["structures"], {"job_uuid": b.uuid}),
        key=lambda d: d["lineage"]["index"],
    )
    assert [d["structure"] for d in da] == [d["structure"] for d in db]
    assert da[0]["structure_id"] != db[0]["structure_id"]  # different jobs, different ids


def test_interrupted_sampling_job_resumes_missing_chunks(campaign):
    store, _, root = campaign
    structures = store.additional_stores["structures"]
    job_doc = next(iter(store.query({"name": "sample"}, properties=["uuid", "output"])))
    uuid = job_doc["uuid"]
    docs = find(structures, {"job_uuid": uuid, "stage": "sample"})
    chunk2 = [d for d in docs if d["lineage"]["chunk"] == 2]
    assert len(chunk2) == 2
    before = {d["structure_id"]: d["structure"] for d in chunk2}
    # simulate a kill during the last chunk: its documents and the job's output are missing
    structures._collection.delete_many({"job_uuid": uuid, "lineage.chunk": 2})
    store.docs_store._collection.delete_many({"uuid": uuid})
    out = run_campaign(None, "mk", store, root_dir=root / "runs2")
    assert out["ran"] == ["sample"], out
    new_out = next(iter(store.query({"uuid": uuid}, properties=["output"])))["output"]
    assert new_out["already_stored"] == 10 and new_out["n_written_now"] == 2
    again = {
        d["structure_id"]: d["structure"]
        for d in find(structures, {"job_uuid": uuid, "lineage.chunk": 2})
    }
    assert again == before  # same ids, same structures
    assert len(find(structures, {"job_uuid": uuid, "stage": "sample"})) == 12
