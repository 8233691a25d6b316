"""Resumable pretraining: k + k steps with a resume in between equal 2k steps in one go."""

from __future__ import annotations

import pytest
import torch
from pymatgen.core import Lattice, Structure

from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator
from xtalforge.models.training import (
    TrainConfig,
    TrainStateError,
    finetune_decoder,
    load_train_state,
    train_ldm,
    train_vae,
)


def _data() -> list[Structure]:
    nacl = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()
    sto = Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(3.9), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]
    )
    zno = Structure.from_spacegroup(
        "P6_3mc", Lattice.hexagonal(3.25, 5.2), ["Zn", "O"],
        [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.38]],
    )
    # 7 crystals with batch 3: epochs end on a partial batch, and a resume lands mid-epoch
    return [nacl, sto, zno, nacl, sto, zno, nacl]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _fresh() -> LatentDiffusionGenerator:
    torch.manual_seed(0)
    return LatentDiffusionGenerator(GeneratorConfig.tiny())


def _params(gen: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in gen.state_dict().items()}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


KW = {"batch_size": 3, "lr": 3e-3, "log_every": 2, "progress": False, "schedule": "cosine"}


@pytest.mark.parametrize("stage", ["vae", "ldm", "decoder"])
def test_resume_equals_uninterrupted(stage, tmp_path):
    data = _data()
    k = 5  # 2k = 10 steps = 3 epochs and a bit, with a stop in the middle of the 2nd epoch

    def base() -> LatentDiffusionGenerator:
        gen = _fresh()
        if stage != "vae":
            train_vae(gen, data, steps=4, **KW)
        return gen

    fn = {"vae": train_vae, "ldm": train_ldm, "decoder": finetune_decoder}[stage]

    ref = base()
    h_ref = fn(ref, data, steps=2 * k, **KW)
    assert h_ref["completed"] and h_ref["steps"] == 2 * k

    state = tmp_path / "state.pt"
    first = base()
    h1 = fn(first, data, steps=2 * k, state_path=state, max_run_steps=k, **KW)
    assert not h1["completed"] and h1["steps"] == k
    saved = load_train_state(state)
    assert saved["step"] == k and not saved["completed"]

    # a new process would build a fresh model: resume must restore every tensor itself
    second = base()
    torch.manual_seed(1234)  # global RNG disturbed between the runs
    h2 = fn(second, data, steps=2 * k, state_path=state, **KW)
    assert h2["completed"] and h2["resumed_from_step"] == k and h2["steps"] == 2 * k
    _assert_same(_params(ref), _params(second))
    assert h2["step"][-1] == 2 * k
    assert pytest.approx(h2["loss"][-1]) == h_ref["loss"][-1]

    # a completed state returns at once without training further
    third = base()
    h3 = fn(third, data, steps=2 * k, state_path=state, **KW)
    assert h3["resumed_from_step"] == 2 * k
    _assert_same(_params(ref), _params(third))


def test_budget_in_minutes_saves_and_stops(tmp_path):
    state = tmp_path / "s.pt"
    gen = _fresh()
    h = train_vae(gen, _data(), steps=50, state_path=state, max_minutes=0.0, **KW)
    assert not h["completed"] and h["steps"] == 0
    assert load_train_state(state)["step"] == 0


def test_resume_refuses_other_settings_and_foreign_files(tmp_path):
    state = tmp_path / "s.pt"
    train_vae(_fresh(), _data(), steps=4, state_path=state, max_run_steps=2, **KW)
    with pytest.raises(TrainStateError, match="batch_size"):
        train_vae(_fresh(), _data(), steps=4, state_path=state, **{**KW, "batch_size": 2})
    with pytest.raises(TrainStateError, match="'vae' training state, not 'ldm'"):
        train_ldm(_fresh(), _data(), steps=4, state_path=state, **KW)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(TrainStateError, match="not an xtalforge training state"):
        train_vae(_fresh(), _data(), steps=4, state_path=junk, **KW)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(TrainStateError, match="not an xtalforge training state"):
        load_train_state(other)


def test_train_config_feeds_the_loop():
    """One TrainConfig drives the loop; keywords override it; a mistyped key is named."""
    from xtalforge.models.training import LDM_FAMILY_DEFAULTS, resolve_config

    cfg = TrainConfig(steps=40, batch_size=5, lr=2e-3, max_minutes=3.0, log_every=None)
    got = resolve_config(cfg, LDM_FAMILY_DEFAULTS, {"lr": 1e-3})
    assert (got.steps, got.batch_size, got.lr, got.max_minutes) == (40, 5, 1e-3, 3.0)
    assert cfg.lr == 2e-3  # the caller's config is not changed
    plain = resolve_config(None, LDM_FAMILY_DEFAULTS, {"steps": 7})
    assert (plain.steps, plain.batch_size, plain.lr, plain.log_every) == (7, 256, 1e-4, 100)
    with pytest.raises(TypeError, match="'learning_rate'"):
        train_vae(_fresh(), _data(), steps=2, learning_rate=1e-3)
    # log_every None: about 20 history entries; the config and keywords give the same run
    h_cfg = train_vae(_fresh(), _data(), TrainConfig(steps=40, batch_size=4, lr=2e-3,
                                                     log_every=None))
    h_kw = train_vae(_fresh(), _data(), steps=40, batch_size=4, lr=2e-3, log_every=2)
    assert h_cfg["step"] == list(range(2, 41, 2)) == h_kw["step"]
    assert h_cfg["loss"] == pytest.approx(h_kw["loss"])
