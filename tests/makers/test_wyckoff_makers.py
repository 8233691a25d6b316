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
        # decode_workers: structures assembled in worker processes, as on a GPU node
        ppo = PPOFineTuneMaker(reward=REWARD, ppo=PPOConfig(batch_size=8, max_steps=3),
                               checkpoint_every=2, device="cpu", decode_workers=2
                               ).make(pre.output["checkpoint"])
        smp = SampleMaker(n=6, batch_size=6, chunk_size=6, device="cpu", label="ppo",
                          decode_workers=2).make(ppo.output["checkpoint"])
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


def _tiny_checkpoint(path):
    import torch
    from pymatgen.core import Lattice, Structure

    from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator
    from xtalforge.models.wyckoff.model import WyckoffTransformerConfig
    from xtalforge.models.wyckoff.training import train_wyckoff

    fs = Structure.from_spacegroup
    data = [fs("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
            fs("Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"],
               [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
            fs("Pm-3m", Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])]
    torch.manual_seed(0)
    gen = WyckoffTransformerGenerator(WyckoffTransformerConfig.tiny())
    train_wyckoff(gen, data, steps=10, batch_size=3, lr=3e-3, log_every=10)
    gen.save(path)
    return str(path)


def test_ppo_maker_resumes_from_its_progress(campaign, tmp_path):
    from xtalforge.makers.base import JobContext
    from xtalforge.makers.wyckoff import run_ppo_finetune

    store, _ = campaign
    ckpt = _tiny_checkpoint(tmp_path / "wy.pt")

    def ctx(uuid):
        return JobContext(store=store, job_uuid=uuid, job_name="ppo", campaign_id="wy",
                          metadata={})

    def maker(steps):
        return PPOFineTuneMaker(reward=REWARD, ppo=PPOConfig(batch_size=6, max_steps=steps),
                                checkpoint_every=1, device="cpu")

    out = run_ppo_finetune(maker(2), ctx("ppo-job-1"), ckpt)
    assert out["steps_done"] == 2 and out["resumed_from_step"] == 0
    assert [c["step"] for c in out["curves"]] == [1, 2]
    assert {"reward", "kl", "baseline", "clip_frac"} <= set(out["curves"][0])
    # the same job again with a larger budget continues from step 2 with the same history
    out2 = run_ppo_finetune(maker(3), ctx("ppo-job-1"), ckpt)
    assert out2["resumed_from_step"] == 2 and out2["steps_done"] == 3
    assert [c["step"] for c in out2["curves"]] == [1, 2, 3]
    assert out2["curves"][:2] == out["curves"]
    # another job starts from the base
    out3 = run_ppo_finetune(maker(1), ctx("ppo-job-2"), ckpt)
    assert out3["resumed_from_step"] == 0 and len(out3["curves"]) == 1
