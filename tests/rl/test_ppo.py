"""PPO of Cao & Wang 2025 on the Wyckoff transformer: baseline, ratio, KL term, reward ascent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xtalforge.models.interface import (
    CrystalGenerator,
    LatentDiffusionFamily,
    SampleConditions,
    as_family,
)
from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator
from xtalforge.models.wyckoff.model import WyckoffTransformerConfig
from xtalforge.models.wyckoff.training import train_wyckoff
from xtalforge.rewards import RewardComponent, RewardResources, build_reward, register_reward
from xtalforge.rl.ppo import (
    EMABaseline,
    PPOConfig,
    PPOTrainer,
    clipped_surrogate,
    kl_regularized_reward,
)


def crystals():
    from pymatgen.core import Lattice, Structure

    fs = Structure.from_spacegroup
    return [
        fs("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        .get_primitive_structure(),
        fs("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]]),
        fs("Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5],
                                                            [0.5, 0.5, 0]]),
        fs("P6_3mc", Lattice.hexagonal(3.25, 5.2), ["Zn", "O"], [[1 / 3, 2 / 3, 0],
                                                                 [1 / 3, 2 / 3, 0.38]]),
        fs("Pm-3m", Lattice.cubic(4.1), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
    ]


@register_reward("toy_oxygen_fraction")
class OxygenFraction(RewardComponent):
    """Atomic fraction of oxygen (NaN for failed samples)."""

    def compute(self, ctx):
        return np.array([np.nan if s is None else s.composition.get_atomic_fraction("O")
                         for s in ctx.structures])


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    gen = WyckoffTransformerGenerator(WyckoffTransformerConfig.tiny())
    train_wyckoff(gen, crystals(), steps=40, batch_size=8, lr=3e-3, log_every=40)
    return gen


def test_ema_baseline_formula():
    b = EMABaseline(0.95)
    r0, r1, r2 = np.array([1.0, 3.0]), np.array([0.0, 0.0]), np.array([10.0])
    assert b.update(r0) == 2.0  # b_0 = mean of the first batch
    assert b.update(r1) == pytest.approx(0.95 * 2.0)
    assert b.update(r2) == pytest.approx(0.95 * 0.95 * 2.0 + 0.05 * 10.0)


def test_kl_regularized_reward_and_clipping():
    r = kl_regularized_reward(np.array([1.0, 2.0]), np.array([-3.0, -1.0]),
                              np.array([-4.0, -1.0]), 0.1)
    assert np.allclose(r, [0.9, 2.0])
    lp_old = torch.tensor([0.0, 0.0])
    loss, st = clipped_surrogate(torch.log(torch.tensor([1.5, 0.5])), lp_old,
                                 torch.tensor([1.0, -1.0]), 0.2)
    # min(1.5, 1.2) * 1 and min(-0.5, -0.8) = -0.8
    assert float(loss) == pytest.approx(-(1.2 - 0.8) / 2)
    assert st["clip_frac"] == 1.0


def test_ratio_is_one_before_the_first_update(base):
    import copy

    gen = copy.deepcopy(base)
    ro = gen.rollout(32, seed=1)
    lp = gen.log_prob(ro)
    assert torch.allclose(torch.exp(lp - ro.log_probs), torch.ones(32), atol=1e-4)


def test_ppo_increases_toy_reward(base):
    import copy

    policy = copy.deepcopy(base)
    reward = build_reward([{"name": "toy_oxygen_fraction", "normalize": None}])
    cfg = PPOConfig(batch_size=48, lr=3e-3, kl_coef=0.01, max_steps=6, eval_every=6,
                    eval_samples=64, seed=0)
    tr = PPOTrainer(policy, reward, RewardResources(), cfg)
    before = tr.evaluate_policy()["eval/reward_raw_total"]
    rows = tr.train(progress=False)
    after = tr.evaluate_policy()["eval/reward_raw_total"]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the policy starts at the base
    assert rows[0]["ratio_absdev_max_first"] < 1e-3
    assert after > before + 0.05, (before, after)
    assert rows[-1]["kl"] > 0
    # resume: a trainer restored from the state continues with the same counters
    tr2 = PPOTrainer(copy.deepcopy(policy), reward, RewardResources(), cfg, base=base)
    tr2.load_state_dict(tr.state_dict())
    assert tr2.step == 6 and tr2.baseline.value == tr.baseline.value


def test_interface_conformance(base, tmp_path):
    from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator
    from xtalforge.models.interface import load_any_generator

    ld = LatentDiffusionGenerator(GeneratorConfig.tiny(max_atoms=6))
    fam = as_family(ld)
    assert isinstance(fam, LatentDiffusionFamily) and isinstance(fam, CrystalGenerator)
    assert isinstance(base, CrystalGenerator) and as_family(base) is base
    for gen in (fam, base):
        out = gen.sample(4, SampleConditions(num_atoms=[2, 2, 3, 3]), seed=0)
        assert len(out) == 4 and list(out.num_atoms) == [2, 2, 3, 3]
        emb = gen.embed_structures([crystals()[0], None])
        assert emb.shape[0] == 2 and np.isnan(emb[1]).all() and np.isfinite(emb[0]).all()
        ro = gen.rollout(3, seed=0)
        lp = gen.log_prob(ro)
        assert lp.shape == (3,) and lp.requires_grad
        assert torch.allclose(lp.detach(), ro.log_probs, rtol=1e-3, atol=1e-2)
        path = tmp_path / f"{gen.family}.pt"
        gen.save(path)
        assert type(load_any_generator(path)).__name__ in ("LatentDiffusionGenerator",
                                                           "WyckoffTransformerGenerator")
    with pytest.raises(ValueError, match="does not support"):
        fam.sample(2, SampleConditions(space_group=[1, 1]))
    # the adapter changes nothing: its samples are generate()'s
    a = fam.sample(3, seed=7)
    b = ld.generate(3, seed=7)
    assert [s.composition if s else None for s in a.structures] == \
        [s.composition if s else None for s in b.structures]
