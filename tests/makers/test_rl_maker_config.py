"""A campaign's ``rl`` section reaches the GRPO trainer, every field of it.

``RLFineTuneMaker`` nests one :class:`~xtalforge.rl.grpo.GRPOConfig` (``grpo``) and the RL job
hands it to :class:`~xtalforge.rl.grpo.GRPOTrainer`; the campaign builder maps each key of the
``rl`` section onto ``grpo`` or the maker and rejects unknown keys. CPU, tiny model.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from monty.json import MontyDecoder, MontyEncoder
from pymatgen.core import Lattice, Structure

from xtalforge.flows.campaign import maker_from_config
from xtalforge.makers.base import JobContext
from xtalforge.makers.rl import RLFineTuneMaker, run_rl_finetune
from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator
from xtalforge.rewards import RewardComponent, register_reward
from xtalforge.rl.grpo import GRPOConfig
from xtalforge.stores.config import build_job_store
from xtalforge.stores.documents import bulk_upsert, make_structure_doc, make_structure_id

#: A valid value other than the default for every GRPOConfig field (one at a time).
NON_DEFAULT = {
    "algorithm": "reinforce",
    "group_size": 7,
    "num_conditions": 3,
    "clip_eps": 0.2,
    "kl_weight": 0.5,
    "entropy_weight": 1e-3,
    "reference": "rollout",
    "lr": 3e-4,
    "weight_decay": 0.01,
    "betas": (0.8, 0.95),
    "num_inner_batches": 3,
    "num_epochs": 2,
    "grad_clip": None,
    "max_steps": 7,
    "patience": 20,
    "plateau_window": 4,
    "min_delta": 0.05,
    "sampling_steps": 9,
    "eta": 0.5,
    "reduce": "sum",
    "dtype": "bf16",
    "adv_eps": 1e-6,
    "val_every": 3,
    "seed": 11,
    "start_from_ema": False,
    "steps_per_pass": 2,
    "max_kl": 0.25,
    "kl_estimator": "analytic",
    "select_by": "eval/frac_msun",
    "eval_every": 10,
    "eval_samples": 16,
    "eval_seed": 5,
}
GRPO_FIELDS = [f.name for f in dataclasses.fields(GRPOConfig)]
CID = "rlcfg"


@register_reward("rl_config_test_volume")
class _VolumeReward(RewardComponent):
    """Cheap reward: volume per atom of the decoded cell."""

    def compute(self, ctx):
        return np.array([s.volume / len(s) if s is not None else np.nan
                         for s in ctx.structures])


REWARD = [{"name": "rl_config_test_volume"}]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _structures() -> list[Structure]:
    out = []
    for a, b, lat in [("Na", "Cl", 5.64), ("K", "Br", 6.6), ("Mg", "O", 4.2), ("Li", "F", 4.0)]:
        out.append(Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [a, b],
                                             [[0, 0, 0], [0.5, 0.5, 0.5]]
                                             ).get_primitive_structure())
        out.append(Structure(Lattice.cubic(lat * 0.6), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]]))
    return out


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """A memory JobStore with a few dataset documents and a tiny generator checkpoint."""
    store = build_job_store("memory")
    store.connect()
    docs = [make_structure_doc(s, structure_id=make_structure_id(CID, "test", i),
                               campaign_id=CID, stage="dataset",
                               split="val" if i % 4 == 0 else "train")
            for i, s in enumerate(_structures())]
    bulk_upsert(store.additional_stores["structures"], docs)
    torch.manual_seed(0)
    gen = LatentDiffusionGenerator(GeneratorConfig.tiny())
    gen.fit_num_atoms_distribution([2, 2, 4])
    with torch.no_grad():  # non-trivial final layers: the policy depends on its weights
        for mod in (gen.ldm.denoiser.final_linear, gen.ldm.denoiser.final_adaLN[-1]):
            mod.weight.normal_(0, 0.05)
    gen.ldm.update_ema(decay=0.0)
    path = tmp_path_factory.mktemp("rlcfg") / "gen.pt"
    gen.eval().save(path)
    return store, str(path)


def _ctx(store, uuid: str) -> JobContext:
    return JobContext(store=store, job_uuid=uuid, job_name="rl", campaign_id=CID, metadata={})


def _rl_maker(rl: dict, seed: int = 0) -> RLFineTuneMaker:
    return maker_from_config({"campaign_id": CID, "seed": seed, "rl": rl}).rl


class _Captured(Exception):
    pass


def _trainer_config(monkeypatch, maker: RLFineTuneMaker, store, path: str) -> GRPOConfig:
    """The config the RL job builds its GRPOTrainer with (the job stops right there)."""
    import xtalforge.rl.grpo as grpo_mod

    seen = {}

    class Capture:
        def __init__(self, generator, reward, resources, config=None, **kw):
            seen["config"] = config
            raise _Captured

    monkeypatch.setattr(grpo_mod, "GRPOTrainer", Capture)
    with pytest.raises(_Captured):
        run_rl_finetune(maker, _ctx(store, "capture"), path)
    return seen["config"]


def test_non_default_table_covers_every_field():
    assert set(NON_DEFAULT) == set(GRPO_FIELDS)
    default = GRPOConfig()
    for name, value in NON_DEFAULT.items():
        assert getattr(default, name) != value, name


@pytest.mark.parametrize("name", GRPO_FIELDS)
def test_every_grpo_field_reaches_the_trainer(name, campaign, monkeypatch):
    store, path = campaign
    value = NON_DEFAULT[name]
    rl = {"reward": REWARD, "device": "cpu", "val_size": 4, name: value}
    maker = _rl_maker(rl)
    assert getattr(maker.grpo, name) == value
    cfg = _trainer_config(monkeypatch, maker, store, path)
    assert isinstance(cfg, GRPOConfig)
    assert getattr(cfg, name) == value
    # nothing else moved
    expected = dataclasses.replace(GRPOConfig(), **{name: value})
    assert cfg == expected
    # and the maker survives the JSON round trip a job store / jobflow-remote makes
    back = json.loads(json.dumps(maker, cls=MontyEncoder), cls=MontyDecoder)
    assert isinstance(back.grpo, GRPOConfig) and back.grpo == maker.grpo


def test_maker_fields_and_campaign_seed(campaign, monkeypatch):
    maker = _rl_maker({"reward": REWARD, "device": "cpu", "checkpoint_every": 3, "val_size": 4,
                       "steps": 5}, seed=4)
    assert (maker.reward, maker.device, maker.checkpoint_every) == (REWARD, "cpu", 3)
    assert (maker.grpo.max_steps, maker.grpo.seed) == (5, 4)  # alias; campaign seed default
    assert _rl_maker({"seed": 9}, seed=4).grpo.seed == 9
    assert not {"steps", "seed", "lr", "max_kl", "algorithm"} & {
        f.name for f in dataclasses.fields(RLFineTuneMaker)}


def test_unknown_rl_key_is_named():
    with pytest.raises(ValueError, match=r"max_kll") as err:
        maker_from_config({"campaign_id": CID, "rl": {"max_kll": 0.1}})
    msg = str(err.value)
    for allowed in ("max_kl", "select_by", "eval_every", "device", "reward", "steps"):
        assert repr(allowed) in msg
    with pytest.raises(ValueError, match="both 'steps' and 'max_steps'"):
        maker_from_config({"campaign_id": CID, "rl": {"steps": 3, "max_steps": 4}})
    with pytest.raises(ValueError, match="kl_estimator"):  # GRPOConfig validates at build time
        maker_from_config({"campaign_id": CID, "rl": {"kl_estimator": "k2"}})


def test_campaign_flow_carries_the_config():
    cfg = {"campaign_id": CID, "checkpoint": "gen.pt",
           "rl": {"max_kl": 0.5, "select_by": "eval/frac_msun", "eval_every": 10}}
    flow = maker_from_config(cfg).make()
    (job,) = [j for j in flow.jobs if j.name == "rl fine-tune"]
    back = json.loads(json.dumps(job.as_dict(), cls=MontyEncoder), cls=MontyDecoder)
    grpo = back.function.__self__.grpo
    assert (grpo.max_kl, grpo.select_by, grpo.eval_every) == (0.5, "eval/frac_msun", 10)


def test_max_kl_select_by_eval_every_act_in_the_job(campaign):
    """The README's selection (``eval_every``, ``select_by="eval/..."``) and the KL guard."""
    store, path = campaign
    base = {"reward": REWARD, "device": "cpu", "val_size": 4, "checkpoint_every": 0,
            "group_size": 2, "num_conditions": 2, "sampling_steps": 4, "lr": 1e-3,
            "eval_samples": 4}
    maker = _rl_maker({**base, "max_steps": 3, "eval_every": 2,
                       "select_by": "eval/reward_raw_total", "max_kl": 1e6})
    out = run_rl_finetune(maker, _ctx(store, "select"), path)
    assert out["steps_done"] == 3 and out["stop_reason"] is None
    assert [any(k.startswith("eval/") for k in c) for c in out["curves"]] == [True, False, True]
    sel = out["selected_policy"]
    assert sel["select_by"] == "eval/reward_raw_total" and sel["policy_after_updates"] in (0, 2)
    g = out["grpo_config"]
    assert (g["max_kl"], g["select_by"], g["eval_every"]) == (1e6, "eval/reward_raw_total", 2)

    maker = _rl_maker({**base, "max_steps": 3, "max_kl": 1e-12})
    out = run_rl_finetune(maker, _ctx(store, "guard"), path)
    assert out["steps_done"] == 1 and "max_kl" in out["stop_reason"]
    assert out["selected_policy"] is None
