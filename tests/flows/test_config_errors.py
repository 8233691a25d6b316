"""Campaign config validation: unknown keys and wrong types are named before anything runs."""

from __future__ import annotations

import pytest

from xtalforge.flows.campaign import (
    TOP_LEVEL_KEYS,
    CampaignConfigError,
    demo_config,
    maker_from_config,
    resolve_local_paths,
)


def test_misspelled_top_level_key_is_named_with_the_allowed_ones():
    with pytest.raises(CampaignConfigError) as err:
        maker_from_config({"campaign_id": "c", "sampel": {"n": 3}})
    msg = str(err.value)
    assert "'sampel'" in msg and "top-level" in msg
    for key in TOP_LEVEL_KEYS:
        assert repr(key) in msg
    assert isinstance(err.value, ValueError)  # callers catching ValueError keep working


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"dataset": {"sourc": "a.csv"}}, r"unknown dataset settings \['sourc'\].*'source'"),
        ({"dataset": {"limit": "ten"}}, r"dataset\.limit: expected an integer or null, got 'ten'"),
        ({"dataset": "a.csv"}, r"dataset: expected a mapping"),
        ({"seed": "zero"}, r"seed: expected an integer, got 'zero'"),
        ({"screen": {"k": "5"}}, r"screen\.k: expected an integer, got '5'"),
        ({"screen": {"mlip": "chgnet", "kk": 1}}, r"unknown screen settings \['kk'\]"),
        ({"sample": {"n": 3, "sample_bas": True}}, r"unknown sample settings \['sample_bas'\]"),
        ({"hull": {"kind": "mlip", "relax": "yes"}, "screen": {}},
         r"hull\.relax: expected true/false, got 'yes'"),
        ({"pretrain": {"lr": "fast"}}, r"pretrain\.lr: expected a number, got 'fast'"),
        ({"pretrain": {"vae_step": 3}}, r"unknown pretrain settings \['vae_step'\]"),
        ({"checkpoint": "g.pt", "rl": {"group_size": "8"}},
         r"rl\.group_size: expected an integer, got '8'"),
        ({"checkpoint": "g.pt", "rl": {"kl_estimator": "k2"}}, r"rl: kl_estimator must be"),
        ({"report": {"symprec": [1]}}, r"report\.symprec: expected a number"),
    ],
)
def test_section_errors_name_the_key(config, expected):
    with pytest.raises(CampaignConfigError, match=expected):
        maker_from_config({"campaign_id": "c", **config})


def test_not_a_mapping_and_valid_configs():
    with pytest.raises(CampaignConfigError, match="mapping"):
        maker_from_config(["campaign_id", "c"])
    assert maker_from_config(demo_config()).sample.n == 200
    # YAML 1.1 reads 1e-4 as a string: converted for float settings
    m = maker_from_config({"campaign_id": "c", "pretrain": {"lr": "1e-4"}})
    assert m.pretrain.vae_maker.train.lr == pytest.approx(1e-4)
    # the keys other commands read are allowed
    maker_from_config({"campaign_id": "c", "store": "memory", "remote": {"project": "p"}})


def test_resolve_local_paths(tmp_path, monkeypatch):
    (tmp_path / "d.csv").write_text("cif\n")
    monkeypatch.chdir(tmp_path)
    cfg = {"campaign_id": "c", "dataset": {"source": "d.csv"}, "reference": {"source": "demo"}}
    out = resolve_local_paths(cfg)
    assert out["dataset"]["source"] == str((tmp_path / "d.csv").resolve())
    assert out["reference"]["source"] == "demo" and cfg["dataset"]["source"] == "d.csv"
    with pytest.raises(CampaignConfigError, match=r"reference\.source: not found: .*nope\.csv"):
        resolve_local_paths({"campaign_id": "c", "reference": {"source": "nope.csv"}})
    with pytest.raises(CampaignConfigError, match="dataset.source: not found"):
        resolve_local_paths({"campaign_id": "c", "dataset": {"source": "mp20:missing_dir"}})
