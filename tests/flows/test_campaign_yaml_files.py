"""Every campaign YAML shipped in campaigns/ builds a campaign maker (keys and types valid)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from xtalforge.flows.campaign import maker_from_config

CAMPAIGNS = sorted((Path(__file__).resolve().parents[2] / "campaigns").glob("*.yaml"))


def test_there_are_campaign_files():
    assert CAMPAIGNS


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.name)
def test_campaign_yaml_builds(path):
    config = yaml.safe_load(path.read_text())
    if "campaign_id" not in config:  # e.g. a jobflow-remote project file
        pytest.skip(f"{path.name} is not a campaign")
    maker = maker_from_config(config)
    if path.name == "mp20_gpu.yaml":
        assert maker.pretrain.ldm_maker.train.max_minutes == 230
        assert maker.rl.grpo.select_by == "eval/frac_msun" and maker.rl.grpo.eval_every == 10
