"""Pieces the RL trainers share (:mod:`xtalforge.rl.grpo`, :mod:`xtalforge.rl.ppo`).

* :func:`evaluation_row` scores a fixed-seed sample of a policy into the ``eval/<key>`` entries
  of a curve row (``eval_every`` of both trainers' configs);
* :class:`TrainerConfigDict` gives a trainer config dataclass its plain-dict round trip
  (``to_dict`` / ``from_dict``, Adam ``betas`` as a list).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from typing import Self

    from pymatgen.core import Structure

    from xtalforge.rewards.base import CompositeReward
    from xtalforge.rewards.resources import RewardResources

__all__ = ["TrainerConfigDict", "evaluation_row"]


def evaluation_row(reward: CompositeReward, resources: RewardResources,
                   structures: Sequence[Structure | None]) -> dict[str, float]:
    """Score a policy sample without groups; return its ``eval/<key>`` curve entries.

    Parameters
    ----------
    reward
        The composite reward of the run.
    resources
        Its :class:`~xtalforge.rewards.resources.RewardResources`.
    structures
        The sampled structures (``None`` for a failed decode).

    Returns
    -------
    dict
        ``eval/<key>`` for the batch fractions of :meth:`RewardContext.batch_summary` and the
        raw reward means of :meth:`RewardBreakdown.summary` (spreads, failure counts and the
        normalised total left out).
    """
    from xtalforge.rewards.metrics import RewardContext

    ctx = RewardContext(structures, resources)
    summary = reward(ctx, groups=None).summary()
    summary.update(ctx.batch_summary())
    return {f"eval/{k}": v for k, v in summary.items()
            if not k.startswith(("reward_std/", "failed/")) and k != "reward_total"}


class TrainerConfigDict:
    """Plain-dict round trip of a trainer config dataclass that has an Adam ``betas`` field."""

    betas: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (``betas`` as a list)."""
        d = asdict(self)  # type: ignore[call-overload]
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict` (unknown keys rejected)."""
        return cls(**d)
