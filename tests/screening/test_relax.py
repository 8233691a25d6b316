"""Batched torch-sim relaxation against the per-structure ASE baseline (CHGNet, tiny cells)."""

import math

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

pytest.importorskip("torch_sim")

from xtalforge.screening.mlip import get_energy_model  # noqa: E402


@pytest.fixture(scope="module")
def chgnet():
    return get_energy_model("chgnet")


def _crystals():
    nacl = Structure(Lattice.from_parameters(3.9, 4.0, 3.95, 60, 61, 60), ["Na", "Cl"],
                     [[0, 0, 0], [0.52, 0.49, 0.5]])
    mgo = Structure(Lattice.from_parameters(3.0, 3.1, 3.0, 60, 60, 62), ["Mg", "O"],
                    [[0, 0, 0], [0.5, 0.52, 0.5]])
    si = Structure(Lattice.from_parameters(3.8, 3.9, 3.85, 60, 60, 60), ["Si", "Si"],
                   [[0, 0, 0], [0.27, 0.25, 0.24]])
    return [nacl, mgo, si]


def test_batched_matches_ase(chgnet):
    structs = _crystals()
    ase = chgnet.relax(structs, fmax=0.05, steps=150)
    ts = chgnet.relax_batched(structs, fmax=0.05, steps=150)
    for a, b in zip(ase, ts, strict=True):
        assert a.converged and b.converged, (a, b)
        assert b.backend == "torch-sim" and b.error is None
        assert 0 < b.n_steps <= 150
        assert b.max_force < 0.05
        assert b.forces.shape == (len(b.structure), 3)
        # same minimum: energies within 5 meV/atom, volumes within 3 %
        assert abs(a.energy_per_atom - b.energy_per_atom) < 5e-3
        assert abs(a.structure.volume / b.structure.volume - 1) < 0.03


def test_failures_recorded_batch_goes_on(chgnet):
    structs = _crystals()
    exotic = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])
    res = chgnet.relax_batched([structs[0], None, exotic, structs[1]], fmax=0.05, steps=100)
    assert len(res) == 4
    assert res[1].error == "invalid structure (None)"
    assert "unsupported element" in res[2].error
    assert res[0].error is None and res[3].error is None
    assert res[0].converged and res[3].converged


def test_unconverged_and_exploding_recorded(chgnet):
    structs = _crystals()
    res = chgnet.relax_batched(structs, fmax=1e-6, steps=3, check_every=2)
    for r in res:
        assert r.error is None and not r.converged and r.n_steps == 3
        assert math.isfinite(r.energy) and r.structure is not None
    # two atoms 0.7 A apart: forces beyond the threshold -> that structure fails, not the batch
    squeezed = Structure(Lattice.cubic(3.5), ["Na", "Cl"], [[0, 0, 0], [0.2, 0, 0]])
    model = get_energy_model("chgnet", force_threshold=100.0)
    model.model = chgnet.model
    res = model.relax_batched([structs[0], squeezed], fmax=0.05, steps=50)
    assert res[0].error is None and res[0].converged
    assert res[1].error is not None and "exploding forces" in res[1].error
    assert res[1].structure is None and math.isnan(res[1].energy)


def test_progress_logged_with_graph_and_model_time(chgnet, caplog):
    structs = _crystals()
    with caplog.at_level("INFO", logger="xtalforge.screening.relax"):
        res = chgnet.relax_batched(structs, fmax=0.05, steps=20, log_every=0.0)
    lines = [r.getMessage() for r in caplog.records if "batched relax" in r.getMessage()]
    assert lines, "no progress line"
    last = lines[-1]
    assert "3/3 structures finished" in last
    steps = sum(r.n_steps for r in res)
    assert f"{steps} optimiser steps" in last
    graph_s = float(last.split("graph ")[1].split(" s")[0])
    model_s = float(last.split("model ")[1].split(" s")[0])
    assert graph_s > 0 and model_s > 0


def test_graph_workers_give_the_same_relaxation(chgnet):
    # the GPU relaxation round builds the per-step graphs in worker processes
    structs = _crystals()
    pooled = get_energy_model("chgnet", graph_workers=1)
    pooled.model = chgnet.model
    try:
        a = pooled.relax_batched(structs, fmax=0.05, steps=30)
    finally:
        pooled.close()
    b = chgnet.relax_batched(structs, fmax=0.05, steps=30)
    assert [r.n_steps for r in a] == [r.n_steps for r in b]
    assert np.allclose([r.energy_per_atom for r in a], [r.energy_per_atom for r in b], atol=1e-5)


def test_max_atoms_limits_batches_same_result(chgnet):
    structs = _crystals()
    one = chgnet.relax_batched(structs, fmax=0.05, steps=100, max_atoms=2)
    allb = chgnet.relax_batched(structs, fmax=0.05, steps=100)
    e1 = np.array([r.energy_per_atom for r in one])
    e2 = np.array([r.energy_per_atom for r in allb])
    assert np.allclose(e1, e2, atol=1e-4)
    assert [r.n_steps for r in one] == [r.n_steps for r in allb]


def test_fitting_atoms_search_stops_at_the_input_size(monkeypatch):
    """The CUDA batch-size search never tries more atoms than the whole input holds."""
    import torch_sim as ts
    import torch_sim.autobatching as ab

    from xtalforge.screening import relax

    structures = [s * (1, 1, 2) for s in _crystals()[:2]] + [_crystals()[2] * (2, 2, 1)]
    assert [len(s) for s in structures] == [4, 4, 8]  # 16 atoms, the largest 8
    calls, fit = [], {"copies": 10**6}

    def search(state, model, max_atoms=500_000, start_size=1, scale_factor=1.6):
        calls.append((state, max_atoms))
        sizes = [start_size]  # torch-sim's geometric sequence of copies
        while (nxt := max(round(sizes[-1] * scale_factor), sizes[-1] + 1)) < max_atoms:
            sizes.append(nxt)
        return min(sizes[-1], fit["copies"])

    monkeypatch.setattr(ab, "determine_max_batch_size", search)
    monkeypatch.setattr(ts, "initialize_state", lambda s, device, dtype: len(s))
    # everything fits: one batch holding all 16 atoms, found with at most 2 + a margin copies
    assert relax._fitting_atoms(None, structures, "cuda", None) == 16
    assert calls[-1] == (8, 5)
    # memory for one copy of the largest system only
    fit["copies"] = 1
    assert relax._fitting_atoms(None, structures, "cuda", None) == 8


def test_batched_expm_frechet_matches_torch_sim():
    """The batched Frechet derivatives equal torch-sim's, call by call, in its loop pattern."""
    import torch
    import torch_sim.math as tsm

    from xtalforge.screening.relax import batched_expm_frechet

    torch.manual_seed(0)
    logm = torch.randn(7, 3, 3, dtype=torch.float64) * 0.1
    directions = torch.zeros(9, 3, 3, dtype=torch.float64)
    for k in range(9):
        directions[k, k // 3, k % 3] = 1.0
    want = [[tsm.expm_frechet(logm[b], d, compute_expm=False) for d in directions]
            for b in range(7)]
    with batched_expm_frechet() as patched:
        got = [[tsm.expm_frechet(logm[b], d, compute_expm=False) for d in directions]
               for b in range(7)]
        # a call that is not a row view of a batch goes to torch-sim's own function
        lone = tsm.expm_frechet(logm[2].clone(), directions[4].clone(), compute_expm=False)
        # a modified batch is recomputed, not answered from the cache
        logm[3] += 0.05
        again = tsm.expm_frechet(logm[3], directions[1], compute_expm=False)
        # a batch with a non-finite system goes to torch-sim's function call by call: the
        # finite systems get their derivative, the bad one torch-sim's error
        bad = logm.clone()
        bad[5, 0, 0] = float("nan")
        finite_row = tsm.expm_frechet(bad[0], directions[0], compute_expm=False)
        with pytest.raises(ValueError, match="non-finite"):
            tsm.expm_frechet(bad[5], directions[0], compute_expm=False)
    assert tsm.expm_frechet is not patched  # restored
    assert patched.n_batched == 2 and patched.n_calls_served == 64
    for b in range(7):
        for k in range(9):
            assert torch.allclose(got[b][k], want[b][k], atol=1e-12)
    assert torch.allclose(lone, want[2][4], atol=1e-12)
    assert torch.allclose(finite_row, want[0][0], atol=1e-12)
    ref = tsm.expm_frechet(logm[3].clone(), directions[1].clone(), compute_expm=False)
    assert torch.allclose(again, ref, atol=1e-12)
    assert not torch.allclose(again, want[3][1], atol=1e-6)


def test_batched_frechet_gives_the_same_relaxation(chgnet):
    """relax_batched with torch-sim's per-system Frechet loop untouched gives the same result."""
    structs = _crystals()
    fast = chgnet.relax_batched(structs, fmax=0.05, steps=60)
    slow = chgnet.relax_batched(structs, fmax=0.05, steps=60, batch_frechet=False)
    for a, b in zip(fast, slow, strict=True):
        assert a.n_steps == b.n_steps and a.converged == b.converged
        assert abs(a.energy_per_atom - b.energy_per_atom) < 1e-4
        assert np.allclose(a.structure.lattice.matrix, b.structure.lattice.matrix, atol=1e-3)


def test_batched_expm_frechet_is_as_accurate_as_torch_sims_in_float32():
    """Against a float64 reference, the batched float32 derivatives are no worse than
    torch-sim's own float32 ones (the relaxation runs in float32)."""
    import torch
    import torch_sim.math as tsm

    from xtalforge.screening.relax import BatchedExpmFrechet

    torch.manual_seed(1)
    a64 = torch.randn(40, 3, 3, dtype=torch.float64) * 0.5
    d64 = torch.eye(9, dtype=torch.float64).reshape(9, 3, 3)
    ref = torch.stack([torch.stack([tsm.expm_frechet(a64[b], d, compute_expm=False)
                                    for d in d64]) for b in range(40)])
    a, d32 = a64.float(), d64.float()
    own = torch.stack([torch.stack([tsm.expm_frechet(a[b], d, compute_expm=False)
                                    for d in d32]) for b in range(40)])
    batched = BatchedExpmFrechet(tsm.expm_frechet)
    got = torch.stack([torch.stack([batched(a[b], d, compute_expm=False) for d in d32])
                       for b in range(40)])
    assert batched.n_batched == 1
    err_own = (own.double() - ref).abs().max().item()
    err_got = (got.double() - ref).abs().max().item()
    assert err_got < 1e-5
    assert err_got <= 2 * err_own
