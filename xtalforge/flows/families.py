"""The campaign's ``generator:`` section: which generator family a campaign trains and tunes.

::

    generator: {family: latent_diffusion}          # the default (section may be omitted)
    generator: {family: wyckoff_transformer, model: tiny, max_atoms: 20}

``latent_diffusion``
    ``pretrain`` and ``rl`` are read as before (VAE + LDM pretraining, GRPO fine-tuning);
    ``model`` / ``max_atoms`` given here go to the VAE maker.
``wyckoff_transformer``
    ``pretrain`` holds :class:`~xtalforge.models.training.TrainConfig` fields (``steps``,
    ``batch_size``, ``lr``, ``max_minutes`` ...) plus ``device`` and ``split`` of a
    :class:`~xtalforge.makers.wyckoff.WyckoffPretrainMaker`; ``rl`` holds
    :class:`~xtalforge.rl.ppo.PPOConfig` fields (``batch_size``, ``kl_coef``, ``ppo_epochs``,
    ``max_steps`` ...) and :class:`~xtalforge.makers.wyckoff.PPOFineTuneMaker` fields
    (``reward``, ``device``, ``checkpoint_every`` ...). Sampling, screening, DFT and the report
    are the same stages for both families.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from jobflow import Maker

__all__ = ["GENERATOR_KEYS", "generator_section", "wyckoff_stages_from_config"]

#: Keys of the ``generator`` section.
GENERATOR_KEYS = ("family", "model", "max_atoms")


def generator_section(section: Any) -> tuple[str, dict[str, Any]]:
    """Validate the ``generator`` section; return ``(family, {model, max_atoms} given)``.

    Raises
    ------
    ValueError
        On an unknown key or family (the campaign reports it as a configuration error).
    """
    if section is None:
        return "latent_diffusion", {}
    if not isinstance(section, Mapping):
        raise ValueError(f"generator: expected a mapping of settings, got {section!r}")
    unknown = sorted(set(section) - set(GENERATOR_KEYS), key=str)
    if unknown:
        raise ValueError(f"unknown generator settings {unknown}; allowed: {list(GENERATOR_KEYS)}")
    from xtalforge.models.interface import FAMILIES

    family = section.get("family", "latent_diffusion")
    if family not in FAMILIES:
        raise ValueError(f"generator.family: {family!r} is not one of {list(FAMILIES)}")
    rest = {k: section[k] for k in ("model", "max_atoms") if k in section}
    if "max_atoms" in rest and (isinstance(rest["max_atoms"], bool)
                                or not isinstance(rest["max_atoms"], int)):
        raise ValueError(f"generator.max_atoms: expected an integer, got {rest['max_atoms']!r}")
    if "model" in rest and not isinstance(rest["model"], (str, Mapping)):
        raise ValueError(f"generator.model: expected a preset name or a mapping, got "
                         f"{rest['model']!r}")
    return family, rest


def wyckoff_stages_from_config(generator: dict[str, Any], pretrain: Any, rl: Any, seed: int,
                               check_settings) -> tuple[Maker | None, Maker | None]:
    """Pretraining and RL makers of a ``wyckoff_transformer`` campaign.

    ``check_settings`` is the campaign's section validator (unknown keys and wrong types raise
    its configuration error, naming the key).
    """
    from xtalforge.makers.wyckoff import PPOFineTuneMaker, WyckoffPretrainMaker
    from xtalforge.models.training import TrainConfig
    from xtalforge.rl.ppo import PPOConfig

    pre = None
    if pretrain is not None:
        p = check_settings("pretrain", pretrain, (TrainConfig,), extra={"device": str,
                           "split": str | None}, exclude=("seed",))
        common = {k: p.pop(k) for k in ("device", "split") if k in p}
        pre = WyckoffPretrainMaker(model=generator.get("model", "tiny"),
                                   max_atoms=generator.get("max_atoms", 20),
                                   train=TrainConfig(seed=seed, **p), **common)
    tuner = None
    if rl is not None:
        ppo_keys = {f.name for f in fields(PPOConfig)}
        r = check_settings("rl", rl, (PPOConfig, PPOFineTuneMaker), exclude=("name", "ppo"))
        ppo = PPOConfig(**{"seed": seed, **{k: v for k, v in r.items() if k in ppo_keys}})
        tuner = PPOFineTuneMaker(ppo=ppo, **{k: v for k, v in r.items() if k not in ppo_keys})
    return pre, tuner
