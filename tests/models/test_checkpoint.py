"""Corrupt or foreign checkpoint files: one clear error naming the file, no unsafe advice."""

from __future__ import annotations

import fractions

import pytest
import torch
import yaml
from typer.testing import CliRunner

from xtalforge.models.checkpoint import CheckpointError, load_checkpoint_file
from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator
from xtalforge.models.training import TrainStateError, load_train_state


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "generator.pt"
    LatentDiffusionGenerator(GeneratorConfig.tiny()).save(path)
    return path


def _bad_files(tmp_path, good):
    files = {}
    files["junk"] = tmp_path / "junk.pt"
    files["junk"].write_bytes(b"this is not a checkpoint\n" * 10)
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(good.read_bytes()[:2000])
    files["foreign"] = tmp_path / "foreign.pt"  # a pickle of an arbitrary class
    torch.save({"format": "x", "obj": fractions.Fraction(1, 3)}, files["foreign"])
    files["other_format"] = tmp_path / "other.pt"
    torch.save({"format": "someone-else/1", "w": torch.zeros(2)}, files["other_format"])
    files["not_a_dict"] = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], files["not_a_dict"])
    return files


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("junk", "not a torch archive: truncated or corrupt"),
        ("truncated", "not a torch archive: truncated or corrupt"),
        ("foreign", "refused: unsafe to load"),
        ("other_format", "format 'someone-else/1'"),
        ("not_a_dict", "holds a list"),
    ],
)
def test_bad_generator_checkpoint_names_file_and_reason(tmp_path, good, kind, reason):
    path = _bad_files(tmp_path, good)[kind]
    with pytest.raises(CheckpointError) as info:
        LatentDiffusionGenerator.load(path)
    msg = str(info.value)
    assert msg.startswith(f"not an xtalforge generator checkpoint: {path} (")
    assert reason in msg
    assert "weights_only" not in msg and "False" not in msg
    assert info.value.__cause__ is None  # torch's exception (and its advice) not chained


def test_missing_file_and_good_file(tmp_path, good):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(tmp_path / "none.pt", "x")
    gen = LatentDiffusionGenerator.load(good)
    assert isinstance(gen, LatentDiffusionGenerator)


def test_training_state_keeps_its_error_type(tmp_path, good):
    path = _bad_files(tmp_path, good)["foreign"]
    with pytest.raises(TrainStateError, match="not an xtalforge training state: .*foreign.pt"):
        load_train_state(path)


def test_campaign_with_a_corrupt_checkpoint_fails_with_one_line(tmp_path, good):
    from xtalforge.cli import app

    bad = _bad_files(tmp_path, good)["truncated"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"campaign_id": "badckpt", "dataset": {"source": "demo",
                                   "limit": 5}, "checkpoint": str(bad), "sample": {"n": 2}}))
    r = CliRunner().invoke(app, ["run", str(cfg), "--root", str(tmp_path / "root")],
                           env={"XTALFORGE_STORE": "", "XTALFORGE_DEBUG": ""})
    assert r.exit_code == 1, r.output
    assert f"CheckpointError: not an xtalforge generator checkpoint: {bad} (not a torch " \
        "archive: truncated or corrupt)" in r.stderr
    assert "weights_only" not in r.output and "Traceback" not in r.output
