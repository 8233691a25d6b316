"""Wyckoff family makers on an embedded store: pretrain -> sample -> PPO, and PPO resume."""

from __future__ import annotations

import pytest
from jobflow import Flow

from xtalforge.flows.runner import run_campaign
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.makers.sample import SampleMaker
from xtalforge.makers.wyckoff import PPOFineTuneMaker, WyckoffPretrainMaker
from xtalforge.models.training import TrainConfig
from xtalforge.rl.ppo import PPOConfig
from xtalforge.stores.config import additional, build_job_store
from xtalforge.stores.results import CampaignResults

REWARD = [{"name": "creativity", "weight": 1.0, "normalize": None}]  # no MLIP: fast on CPU


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("wy")
    store = build_job_store(None, root)

    def flow():
        ing = IngestDatasetMaker(source="demo", limit=40).make()
        pre = WyckoffPretrainMaker(train=TrainConfig(steps=15, batch_size=16), device="cpu"
                                   ).make(ing.output)
        ppo = PPOFineTuneMaker(reward=REWARD, ppo=PPOConfig(batch_size=8, max_steps=3),
                               checkpoint_every=2, device="cpu").make(pre.output["checkpoint"])
        smp = SampleMaker(n=6, batch_size=6, chunk_size=6, device="cpu", label="ppo").make(
            ppo.output["checkpoint"])
        return Flow([ing, pre, ppo, smp])

    out = run_campaign(flow, "wy", store, root_dir=root / "runs")
    return store, out


def test_chain_runs_with_the_wyckoff_family(campaign):
    store, out = campaign
    assert out["status"] == "completed", out
    res = CampaignResults(store, "wy")
    samples = res.documents(stage="sample")
    assert len(samples) == 6
    blob = store.additional_stores["blobs"].query_one(
        {"checkpoint_id": samples[0]["lineage"]["checkpoint_id"]})
    assert blob["kind"] == "generator/ppo"
    progress = additional(store, "data").query_one({"progress_id": {"$regex": "^ppo-progress:"}})
    assert progress["step"] == 3
