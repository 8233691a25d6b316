"""One builder makes every Maker from a campaign YAML, and every config field reaches its object.

The cases are generated from ``dataclasses.fields`` of each configuration class a campaign
section maps onto, so a field added later is covered (or must be listed in ``NOT_FROM_YAML``
with its reason) without touching this file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import pytest
import yaml

from xtalforge.flows.campaign import (
    DiscoveryCampaignMaker,
    _field_types,
    maker_from_config,
)
from xtalforge.makers.ingest import IngestDatasetMaker
from xtalforge.makers.pretrain import LDMTrainMaker, VAETrainMaker
from xtalforge.makers.report import ReportMaker
from xtalforge.makers.rl import RLFineTuneMaker
from xtalforge.makers.sample import SampleMaker
from xtalforge.makers.screening import HullMaker, ScreenMaker
from xtalforge.makers.wyckoff import PPOFineTuneMaker
from xtalforge.models.training import TrainConfig
from xtalforge.rl.grpo import GRPOConfig
from xtalforge.rl.ppo import PPOConfig

BASE = {"campaign_id": "yaml-fields", "checkpoint": "gen.pt"}

#: section -> [(config class, getter from the built campaign maker to the object using it)]
TARGETS: dict[str, list[tuple[type, Any]]] = {
    "dataset": [(IngestDatasetMaker, lambda m: m.ingest)],
    "reference": [(IngestDatasetMaker, lambda m: m.reference_ingest)],
    "pretrain": [
        (TrainConfig, lambda m: m.pretrain.vae_maker.train),
        (TrainConfig, lambda m: m.pretrain.ldm_maker.train),
        (VAETrainMaker, lambda m: m.pretrain.vae_maker),
        (LDMTrainMaker, lambda m: m.pretrain.ldm_maker),
    ],
    "rl": [(GRPOConfig, lambda m: m.rl.grpo), (RLFineTuneMaker, lambda m: m.rl)],
    "sample": [(SampleMaker, lambda m: m.sample)],
    "hull": [(HullMaker, lambda m: m.hull)],
    "screen": [(ScreenMaker, lambda m: m.screen)],
    "report": [(ReportMaker, lambda m: m.report)],
}

#: the same for a ``generator: {family: wyckoff_transformer}`` campaign (its own pretrain and RL)
WYCKOFF = {"generator": {"family": "wyckoff_transformer"}}
WYCKOFF_TARGETS: dict[str, list[tuple[type, Any]]] = {
    "pretrain": [(TrainConfig, lambda m: m.pretrain.train)],
    "rl": [(PPOConfig, lambda m: m.rl.ppo), (PPOFineTuneMaker, lambda m: m.rl)],
}

#: (class, field) -> reason it is not a key of its section (each is checked elsewhere below)
NOT_FROM_YAML = {
    (IngestDatasetMaker, "name"): "the builder names the two ingest jobs",
    (VAETrainMaker, "name"): "job name", (LDMTrainMaker, "name"): "job name",
    (VAETrainMaker, "train"): "nested TrainConfig: its fields are keys of the section",
    (LDMTrainMaker, "train"): "nested TrainConfig: its fields are keys of the section",
    (RLFineTuneMaker, "grpo"): "nested GRPOConfig: its fields are keys of the section",
    (RLFineTuneMaker, "name"): "job name", (HullMaker, "name"): "job name",
    (TrainConfig, "steps"): "per stage: vae_steps / ldm_steps (test below)",
    (TrainConfig, "seed"): "the campaign seed (test below)",
    (PPOFineTuneMaker, "name"): "job name",
    (PPOFineTuneMaker, "ppo"): "nested PPOConfig: its fields are keys of the section",
    (PPOConfig, "seed"): "the campaign seed",
}

#: constrained strings: a valid value other than the default
CHOICES = {
    "device": "cpu", "dtype": "bf16", "schedule": "cosine", "algorithm": "reinforce",
    "reference": "rollout", "kl_estimator": "analytic", "reduce": "sum",
    "select_by": "eval/frac_msun", "kind": "formation", "policy": "ehull",
    "normalize_scope": "group", "reward": "dng_no_diversity", "model": "small",
    "correction": "MP2020", "split": "heldout", "source": "structures.extxyz",
    "baseline_decay": 0.9,
}


def other_value(cls: type, f: dataclasses.Field) -> Any:
    """A YAML-expressible value of the field's type that differs from its default."""
    tp = _field_types(cls).get(f.name, Any)
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = typing.get_origin(tp) or tp
    if base in (typing.Union, types.UnionType):
        base = typing.get_origin(args[0]) or args[0]
    if f.name in CHOICES:
        value = CHOICES[f.name]
    elif base is bool:
        value = not default
    elif base is int:
        value = (default or 0) + 3
    elif base is float:
        value = (default or 0.0) + 0.25
    elif base is str:
        value = f"custom-{f.name}"
    elif base in (tuple, list):
        value = [0.5, 0.75] if base is tuple else [2, 4]
    elif base is dict:
        value = {"fmax": 0.05} if f.name == "relax_kwargs" else {"band_gap": "gap.pt"}
    else:  # pragma: no cover - a new kind of field: add it here
        raise AssertionError(f"no test value for {cls.__name__}.{f.name}: {tp}")
    assert value != default, (cls.__name__, f.name)
    return value


def cases(targets_of: dict[str, list[tuple[type, Any]]] = TARGETS):
    for section, targets in targets_of.items():
        for cls, getter in targets:
            for f in dataclasses.fields(cls):
                if (cls, f.name) not in NOT_FROM_YAML:
                    name = f"{section}.{cls.__name__}.{f.name}"
                    yield pytest.param(section, cls, getter, f, id=name)


def build(config: dict[str, Any]) -> DiscoveryCampaignMaker:
    """Go through YAML text, as a campaign file does."""
    return maker_from_config(yaml.safe_load(yaml.safe_dump(config)))


@pytest.mark.parametrize(("section", "cls", "getter", "f"), list(cases()))
def test_every_config_field_reaches_its_object(section, cls, getter, f):
    value = other_value(cls, f)
    extra = {"screen": {}} if section == "hull" else {}
    maker = build({**BASE, **extra, section: {f.name: value}})
    got = getter(maker)
    assert got is not None, f"section {section!r} built no object"
    have = getattr(got, f.name)
    want = tuple(value) if isinstance(have, tuple) else value
    assert have == want, f"{section}.{f.name}: {have!r} != {value!r}"


@pytest.mark.parametrize(("section", "cls", "getter", "f"), list(cases(WYCKOFF_TARGETS)))
def test_every_wyckoff_config_field_reaches_its_object(section, cls, getter, f):
    value = other_value(cls, f)
    maker = build({**BASE, **WYCKOFF, section: {f.name: value}})
    have = getattr(getter(maker), f.name)
    want = tuple(value) if isinstance(have, tuple) else value
    assert have == want, f"{section}.{f.name}: {have!r} != {value!r}"


def test_generator_section_reaches_the_wyckoff_pretrain_maker():
    m = build({**BASE, "generator": {"family": "wyckoff_transformer", "model": "small",
                                     "max_atoms": 24}, "pretrain": {}})
    assert (m.pretrain.model, m.pretrain.max_atoms) == ("small", 24)


def test_per_stage_steps_and_the_campaign_seed():
    m = build({**BASE, "seed": 11, "pretrain": {"vae_steps": 7, "ldm_steps": 9},
               "rl": {}, "sample": {}})
    assert (m.pretrain.vae_maker.train.steps, m.pretrain.ldm_maker.train.steps) == (7, 9)
    assert m.pretrain.vae_maker.train.seed == m.pretrain.ldm_maker.train.seed == 11
    assert m.rl.grpo.seed == 11 and m.sample.seed == 11


def test_every_section_is_covered():
    from xtalforge.flows.campaign import SECTION_KEYS

    # remote: routing (read by `xtalforge submit`); dft: its own builder in makers/dft.py;
    # generator: the family selector (test above)
    assert set(SECTION_KEYS) - set(TARGETS) == {"remote", "dft", "generator"}


def test_submit_builds_through_the_one_builder(tmp_path):
    """`xtalforge submit --dry-run` routes the flow maker_from_config builds, DFT included."""
    from typer.testing import CliRunner

    from xtalforge.cli import app

    cfg = {**BASE, "sample": {"n": 4}, "screen": {}, "dft": {"k": 2},
           "remote": {"workers": {"gpu": "g", "cpu": "c"}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = CliRunner().invoke(app, ["submit", str(path), "--dry-run"])
    assert out.exit_code == 0, out.output
    expected = [j.name for j in maker_from_config(cfg).make().jobs]
    assert expected == ["ingest dataset", "reference hull", "sample", "screen", "dft validation"]
    for name in expected:
        assert name in out.output
    import xtalforge.cli_submit as cli_submit

    assert not hasattr(cli_submit, "campaign_flow")  # no parallel builder
