"""CHGNet's vectorised 'fast' mode against CHGNet's own predict_structure."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from xtalforge.screening.mlip import EV_A3_PER_GPA, get_energy_model


@pytest.fixture(scope="module")
def models():
    fast = get_energy_model("chgnet")
    ref = get_energy_model("chgnet", mode="batched")
    ref.model = fast.model
    return fast, ref


def _structures():
    rng = np.random.default_rng(3)
    out = []
    for n, species in ((2, ["Na", "Cl"]), (3, ["Fe", "O", "O"]), (4, ["Li", "Co", "O", "O"]),
                       (1, ["Cu"])):
        lat = Lattice.from_parameters(*(2.6 * n ** (1 / 3) + rng.random(3)),
                                      *(80 + 20 * rng.random(3)))
        out.append(Structure(lat, species, rng.random((n, 3))))
    return out


def test_fast_matches_predict_structure(models):
    fast, ref = models
    structs = _structures()
    assert fast.effective_mode == "fast"
    a = fast.predict(structs, batch_size=3, compute_stress=True)
    b = ref.predict(structs, batch_size=3, compute_stress=True)
    for x, y in zip(a, b, strict=True):
        assert x.ok and y.ok
        assert abs(x.energy - y.energy) < 1e-4
        assert np.allclose(x.forces, y.forces, atol=2e-3)
        assert np.allclose(x.stress, y.stress, atol=2e-3 * EV_A3_PER_GPA * 10)


def test_fast_records_failures(models):
    fast, _ = models
    structs = _structures()
    bad = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])
    res = fast.predict([structs[0], None, bad, structs[1]])
    assert res[0].ok and res[3].ok
    assert res[1].error == "invalid structure (None)"
    assert "unsupported element" in res[2].error


def test_graph_workers_give_the_same_results_and_record_failures(models):
    fast, _ = models
    pooled = get_energy_model("chgnet", graph_workers=1)
    pooled.model = fast.model
    structs = _structures()
    bad = Structure(Lattice.cubic(4.0), ["Og"], [[0, 0, 0]])
    inputs = [structs[0], None, bad, *structs[1:]]
    try:
        a = pooled.predict(inputs, batch_size=2, compute_stress=True)
        assert pooled._pool is not None  # the graphs came from the worker pool
    finally:
        pooled.close()
    b = fast.predict(inputs, batch_size=2, compute_stress=True)
    assert [r.ok for r in a] == [True, False, False, True, True, True]
    assert a[1].error == b[1].error and a[2].error == b[2].error
    for x, y in zip(a, b, strict=True):
        if y.ok:
            assert abs(x.energy - y.energy) < 1e-5
            assert np.allclose(x.forces, y.forces, atol=1e-5)
