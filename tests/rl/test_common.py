"""Pieces the RL trainers share: the evaluation scoring and the config dict round trip."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xtalforge.rewards import RewardComponent, build_reward, register_reward
from xtalforge.rewards.resources import RewardResources
from xtalforge.rl.common import evaluation_row
from xtalforge.rl.grpo import GRPOConfig
from xtalforge.rl.ppo import PPOConfig


@register_reward("test_common_volume")
class _Volume(RewardComponent):
    """Volume per atom of each structure (NaN for a failed decode)."""

    def compute(self, ctx):
        return np.array([s.volume / len(s) if s is not None else np.nan
                         for s in ctx.structures])


def _rocksalt(a: str, b: str, lat: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), [a, b],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def test_evaluation_row_keys_and_values():
    structs = [_rocksalt("Na", "Cl", 5.64), _rocksalt("Mg", "O", 4.2)]
    row = evaluation_row(build_reward([{"name": "test_common_volume"}]), RewardResources(),
                         structs)
    assert all(k.startswith("eval/") for k in row)
    assert not any(k.startswith(("eval/reward_std/", "eval/failed/")) for k in row)
    assert "eval/reward_total" not in row
    expected = np.mean([s.volume / len(s) for s in structs])
    assert row["eval/reward/test_common_volume"] == pytest.approx(expected)
    assert row["eval/n"] == 2.0 and row["eval/n_distinct_formulas"] == 2.0


def test_evaluation_row_counts_failed_decodes():
    structs = [_rocksalt("Na", "Cl", 5.64), None, _rocksalt("K", "Br", 6.6), None]
    row = evaluation_row(build_reward([{"name": "test_common_volume"}]), RewardResources(),
                         structs)
    assert row["eval/n"] == 4.0 and row["eval/frac_decoded"] == 0.5


@pytest.mark.parametrize(("cls", "changes"), [
    (GRPOConfig, {"max_steps": 7, "betas": (0.8, 0.9), "select_by": "eval/frac_msun"}),
    (PPOConfig, {"batch_size": 4, "betas": (0.85, 0.95), "kl_coef": 0.3}),
])
def test_config_dict_round_trip(cls, changes):
    cfg = cls(**changes)
    d = cfg.to_dict()
    assert d["betas"] == list(changes["betas"]) and isinstance(d["betas"], list)
    back = cls.from_dict(d)
    assert back == cfg and isinstance(back, cls) and back.betas == changes["betas"]
    with pytest.raises(TypeError, match="no_such_key"):
        cls.from_dict({**d, "no_such_key": 1})
