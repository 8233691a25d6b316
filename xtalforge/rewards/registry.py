"""Reward registry: names of reward components, entry points, presets and :func:`build_reward`.

Built-in components (:mod:`xtalforge.rewards.components`) are registered here; users add theirs
with :func:`register_reward`, an entry point in the ``xtalforge.rewards`` group, or a
``"module:Class"`` path.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from xtalforge.rewards.base import CompositeReward, RewardComponent
from xtalforge.rewards.components import BUILTIN_REWARDS, REWARD_PRESETS

__all__ = [
    "ENTRY_POINT_GROUP",
    "REWARD_PRESETS",
    "available_rewards",
    "build_reward",
    "entry_points",
    "get_reward_class",
    "register_reward",
]

#: Entry-point group through which installed packages add reward components.
ENTRY_POINT_GROUP = "xtalforge.rewards"

_REWARDS: dict[str, type[RewardComponent]] = {}


def register_reward(name: str) -> Callable[[type[RewardComponent]], type[RewardComponent]]:
    """Class decorator registering a :class:`RewardComponent` subclass under ``name``.

    Examples
    --------
    >>> @register_reward("atomic_density")
    ... class AtomicDensity(RewardComponent):
    ...     required_metrics = ()
    ...     def compute(self, ctx):
    ...         return np.array([len(s) / s.volume if s else np.nan for s in ctx.structures])
    """

    def deco(cls: type[RewardComponent]) -> type[RewardComponent]:
        if not (isinstance(cls, type) and issubclass(cls, RewardComponent)):
            raise TypeError(f"{cls!r} is not a RewardComponent subclass")
        old = _REWARDS.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"reward {name!r} is already registered to {old.__qualname__}")
        cls.name = name
        _REWARDS[name] = cls
        return cls

    return deco


def entry_points() -> dict[str, Any]:
    """Installed reward components of the ``xtalforge.rewards`` entry-point group, by name."""
    from importlib import metadata

    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    except TypeError:  # pragma: no cover - Python < 3.10
        eps = metadata.entry_points().get(ENTRY_POINT_GROUP, [])
    return {ep.name: ep for ep in eps}


def available_rewards() -> list[str]:
    """Return the registered component names plus installed entry points."""
    return sorted(set(_REWARDS) | set(entry_points()))


def get_reward_class(name: str) -> type[RewardComponent]:
    """Resolve a component class: registry, then ``"module:Class"``, then entry points.

    Raises
    ------
    KeyError
        When ``name`` is none of those.
    """
    if name in _REWARDS:
        return _REWARDS[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, RewardComponent)):
            raise TypeError(f"{name} is not a RewardComponent subclass")
        return obj
    eps = entry_points()
    if name in eps:
        obj = eps[name].load()
        if not (isinstance(obj, type) and issubclass(obj, RewardComponent)):
            raise TypeError(f"entry point {name} ({eps[name].value}) is not a RewardComponent")
        _REWARDS.setdefault(name, obj)
        return obj
    raise KeyError(f"unknown reward component {name!r}; available: {available_rewards()} "
                   f"(or 'module:Class', or an entry point in group {ENTRY_POINT_GROUP!r})")


def build_reward(spec: str | Sequence[Mapping[str, Any] | RewardComponent] | Mapping[str, Any]
                 | CompositeReward, normalize_scope: str | None = None) -> CompositeReward:
    """Build a :class:`CompositeReward` from a preset name, a list of dicts, or a config dict.

    Parameters
    ----------
    spec
        A preset name (``"dng"``, ``"dng_no_diversity"``, ``"bandgap"``, ``"dielectric"``; see
        :data:`xtalforge.rewards.components.REWARD_PRESETS`); a list of component dicts
        ``{"name": ..., "weight": ..., **kwargs}`` (``name`` may be ``"module:Class"``) or
        instances; a dict ``{"components": [...], "normalize_scope": ...}`` (the output of
        :meth:`CompositeReward.config`); or a ready :class:`CompositeReward`.
    normalize_scope
        Override of the scope.
    """
    if isinstance(spec, CompositeReward):
        if normalize_scope:
            spec.normalize_scope = normalize_scope
        return spec
    scope = "batch"
    if isinstance(spec, str):
        if spec not in REWARD_PRESETS:
            raise KeyError(f"unknown reward preset {spec!r}; presets: {sorted(REWARD_PRESETS)}")
        items: Sequence[Any] = REWARD_PRESETS[spec]
    elif isinstance(spec, Mapping):
        items = spec["components"]
        scope = spec.get("normalize_scope", scope)
    else:
        items = spec
    comps: list[RewardComponent] = []
    for item in items:
        if isinstance(item, RewardComponent):
            comps.append(item)
            continue
        kw = dict(item)
        cls = get_reward_class(kw.pop("name"))
        comps.append(cls(**kw))
    return CompositeReward(comps, normalize_scope=normalize_scope or scope)


for _cls in BUILTIN_REWARDS:
    register_reward(_cls.name)(_cls)
