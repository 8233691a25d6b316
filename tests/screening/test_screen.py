"""The guard in front of the MLIP: rejected samples are recorded apart from pipeline errors."""

import pytest
from pymatgen.core import Composition, Lattice, Structure

from xtalforge.screening.hull import ReferenceHull
from xtalforge.screening.metrics import MIN_VOLUME_PER_ATOM, evaluation_rejection
from xtalforge.screening.mlip import EnergyResult
from xtalforge.screening.screen import screen_structures


class RecordingModel:
    """Energy model stand-in: -2 eV/atom for every structure, remembering what it was given."""

    name = spec = "recording"
    info = {"name": "recording"}
    supports_batched_relax = False

    def __init__(self):
        self.seen = []

    def predict(self, structures, batch_size=64, progress=False):
        self.seen.extend(structures)
        return [EnergyResult(energy=-2.0 * len(s), energy_per_atom=-2.0, n_atoms=len(s))
                for s in structures]


def rocksalt(lat):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lat), ["Na", "Cl"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


@pytest.fixture()
def case():
    hull = ReferenceHull.from_formation_energies(
        [Composition("NaCl")], [-2.0], chemical_potentials={"Na": 0.0, "Cl": 0.0})
    ok = rocksalt(5.64)  # 22.4 A^3/atom
    dense = rocksalt(3.0)  # 3.4 A^3/atom, distances 1.5 A: structurally valid, too dense
    overlap = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    return hull, [ok, dense, overlap, None]


@pytest.mark.parametrize("pipeline", [True, False])
def test_rejected_samples_never_reach_the_model(case, pipeline):
    hull, structs = case
    model = RecordingModel()
    ref = [Structure(Lattice.cubic(4.2), ["Na"], [[0, 0, 0]])]
    recs, summary = screen_structures(structs, model, hull, reference_structures=ref,
                                      pipeline=pipeline)
    assert model.seen == [structs[0]]
    assert recs[0]["rejected"] is None and recs[0]["msun"] and not recs[0]["errors"]
    assert recs[1]["rejected"] == "implausibly dense: 3.38 A^3/atom < 5"
    assert recs[1]["structure_valid"] and not recs[1]["errors"]
    assert recs[2]["rejected"].startswith("structurally invalid (min interatomic distance")
    assert not recs[2]["structure_valid"] and not recs[2]["errors"]
    for r in recs[1:3]:  # rejected: no energy, not (meta)stable, kept in the denominators
        assert r["energy"] is None and r["e_above_hull"] is None
        assert not r["metastable"] and not r["stable"] and not r["msun"]
    assert recs[3]["rejected"] is None and recs[3]["errors"] == ["invalid structure (None)"]
    assert summary["n_rejected"] == 2 and summary["n_with_errors"] == 1
    assert summary["n_energy_evaluated"] == 1 and summary["n_total"] == 4
    assert summary["min_volume_per_atom"] == MIN_VOLUME_PER_ATOM


def test_guard_is_a_parameter(case):
    hull, structs = case
    model = RecordingModel()
    recs, summary = screen_structures(structs, model, hull, min_volume_per_atom=None)
    assert model.seen == structs[:2]  # the dense cell is evaluated; overlapping atoms are not
    assert recs[1]["rejected"] is None and recs[1]["e_above_hull"] == pytest.approx(0.0)
    recs, _ = screen_structures(structs, RecordingModel(), hull, min_volume_per_atom=25.0)
    assert recs[0]["rejected"] == "implausibly dense: 22.4 A^3/atom < 25"


def test_evaluation_rejection():
    assert evaluation_rejection(None) is None  # a failed decode is an error, not a rejection
    assert evaluation_rejection(rocksalt(5.64)) is None
    assert "dense" in evaluation_rejection(rocksalt(3.0))
    assert evaluation_rejection(rocksalt(3.0), min_volume_per_atom=None) is None
    assert "structurally invalid" in evaluation_rejection(rocksalt(0.9),
                                                          min_volume_per_atom=None)
