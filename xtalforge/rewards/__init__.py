"""Verifiable rewards for RL fine-tuning of the generator.

Quick use::

    from xtalforge.rewards import RewardContext, RewardResources, build_reward

    # creativity 1, stability 1, compositional diversity 1, structural diversity 0.1
    reward = build_reward("dng")
    res = RewardResources(energy_model=..., hull=..., reference=..., generator=...,
                          reference_structure_embeddings=..., reference_composition_embeddings=...)
    out = reward(RewardContext(structures, res, groups=groups))
    out.total, out.raw["stability"], out.summary()

Custom components: subclass :class:`RewardComponent`, decorate with
``@register_reward("my_name")`` (or expose it as an entry point in the ``xtalforge.rewards``
group of your own package, or refer to it as ``"my_module:MyReward"``), then
``build_reward([{"name": "my_name", "weight": 0.5}, ...])``. See :mod:`xtalforge.rewards.base`
(components, composite), :mod:`~.metrics` (metric providers), :mod:`~.resources` and
:mod:`~.registry`.
"""

from xtalforge.rewards.base import (
    CompositeReward,
    RewardBreakdown,
    RewardComponent,
    normalize_values,
)
from xtalforge.rewards.components import (
    CompositionDiversityReward,
    CreativityReward,
    DielectricFoMReward,
    PropertyReward,
    PropertyTargetReward,
    StabilityReward,
    StructureDiversityReward,
)
from xtalforge.rewards.metrics import (
    RewardContext,
    available_metrics,
    mmd_loo_utilities,
    register_metric,
    unbiased_mmd2,
)
from xtalforge.rewards.registry import (
    ENTRY_POINT_GROUP,
    REWARD_PRESETS,
    available_rewards,
    build_reward,
    get_reward_class,
    register_reward,
)
from xtalforge.rewards.resources import GuardedEnergyModel, RewardResources
from xtalforge.screening.metrics import amd_vector, amd_vectors

__all__ = [
    "ENTRY_POINT_GROUP",
    "REWARD_PRESETS",
    "CompositeReward",
    "CompositionDiversityReward",
    "CreativityReward",
    "DielectricFoMReward",
    "GuardedEnergyModel",
    "PropertyReward",
    "PropertyTargetReward",
    "RewardBreakdown",
    "RewardComponent",
    "RewardContext",
    "RewardResources",
    "StabilityReward",
    "StructureDiversityReward",
    "amd_vector",
    "amd_vectors",
    "available_metrics",
    "available_rewards",
    "build_reward",
    "get_reward_class",
    "mmd_loo_utilities",
    "normalize_values",
    "register_metric",
    "register_reward",
    "unbiased_mmd2",
]
