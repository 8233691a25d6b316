"""`xtalforge run --help` documents the campaign YAML grammar, with the keys the validator takes."""

from __future__ import annotations

import ast

import pytest
from typer.testing import CliRunner

from xtalforge.flows.campaign import (
    TOP_LEVEL_KEYS,
    CampaignConfigError,
    campaign_grammar,
    campaign_sections,
    maker_from_config,
)


def test_run_help_documents_the_grammar():
    from xtalforge.cli import app

    r = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    for key in TOP_LEVEL_KEYS:
        assert f" {key}: " in text, key
    for source in ("IngestDatasetMaker fields", "TrainConfig fields", "GRPOConfig fields",
                   "SampleMaker fields", "HullMaker fields", "ScreenMaker fields",
                   "DFTValidationMaker fields", "ReportMaker fields", "campaigns/demo.yaml",
                   "campaigns/mp20_gpu.yaml"):
        assert source in text, source
    assert "min_volume_per_atom" in text  # a key read from ScreenMaker's fields


@pytest.mark.parametrize("section", [s for s, _, _ in campaign_sections()])
def test_listed_keys_are_the_validators(section):
    """Each section lists exactly the keys maker_from_config allows there."""
    listed = dict((s, k) for s, _, k in campaign_sections())[section]
    config = {"campaign_id": "g", section: {"no_such_key": 1}}
    if section == "hull":
        config["screen"] = {}  # the hull is built with a screen stage
    with pytest.raises(CampaignConfigError) as info:
        maker_from_config(config)
    msg = str(info.value)
    assert "no_such_key" in msg
    tail = msg.split("allowed: ")[-1] if "allowed: " in msg else msg.split("known: ")[-1]
    assert sorted(ast.literal_eval(tail)) == sorted(listed)


def test_grammar_lines_are_wrapped():
    assert max(len(line) for line in campaign_grammar(80).splitlines()) <= 80
