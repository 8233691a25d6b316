"""The pipelined screen gives the serial screen's records; relaxation fields are recorded."""

import pytest
from pymatgen.core import Composition, Lattice, Structure

from xtalforge.screening.hull import ReferenceHull
from xtalforge.screening.mlip import get_energy_model
from xtalforge.screening.screen import screen_structures


@pytest.fixture(scope="module")
def setup():
    model = get_energy_model("chgnet")
    elements = [Structure(Lattice.cubic(3.0), ["Na"], [[0, 0, 0]]),
                Structure(Lattice.cubic(3.0), ["Cl"], [[0, 0, 0]]),
                Structure(Lattice.cubic(2.5), ["Mg"], [[0, 0, 0]]),
                Structure(Lattice.cubic(2.5), ["O"], [[0, 0, 0]])]
    e = [r.energy_per_atom for r in model.predict(elements)]
    hull = ReferenceHull.from_formation_energies(
        [Composition("NaCl"), Composition("MgO")], [-2.0, -3.0],
        chemical_potentials={"Na": e[0], "Cl": e[1], "Mg": e[2], "O": e[3]},
    )
    gen = [
        Structure(Lattice.from_parameters(3.9, 4.0, 3.95, 60, 61, 60), ["Na", "Cl"],
                  [[0, 0, 0], [0.52, 0.49, 0.5]]),
        Structure(Lattice.from_parameters(3.0, 3.1, 3.0, 60, 60, 62), ["Mg", "O"],
                  [[0, 0, 0], [0.5, 0.52, 0.5]]),
        Structure(Lattice.from_parameters(3.9, 4.0, 3.95, 60, 61, 60), ["Na", "Cl"],
                  [[0, 0, 0], [0.5, 0.5, 0.5]]),
        None,
    ]
    ref = [Structure(Lattice.cubic(4.2), ["Mg", "O"] * 4,
                     [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0.5], [0.5, 0.5, 0.5],
                      [0.5, 0.5, 0], [0, 0.5, 0], [0.5, 0, 0.5], [0, 0, 0.5]])]
    return model, hull, gen, ref


def _strip(recs):
    return [{k: v for k, v in r.items()} for r in recs]


def test_pipeline_same_as_serial(setup):
    model, hull, gen, ref = setup
    a, sa = screen_structures(gen, model, hull, reference_structures=ref, pipeline=True)
    b, sb = screen_structures(gen, model, hull, reference_structures=ref, pipeline=False)
    assert sa["pipeline"] and not sb["pipeline"]
    assert _strip(a) == _strip(b)
    for k in ("frac_unique", "frac_novel", "frac_msun", "frac_smact_valid", "n_metastable"):
        assert sa[k] == sb[k], k
    assert a[3]["errors"] == ["invalid structure (None)"]


def test_relaxed_screen_records_convergence(setup):
    model, hull, gen, ref = setup
    recs, summary = screen_structures(gen, model, hull, reference_structures=ref, relax=True,
                                      relax_kwargs={"fmax": 0.05, "steps": 60})
    assert summary["relax_backend"] == "torch-sim"
    assert summary["n_relax_converged"] == sum(bool(r.get("relax_converged")) for r in recs)
    for r in recs[:3]:
        assert r["relaxed"] and r["relax_backend"] == "torch-sim"
        assert isinstance(r["relax_converged"], bool) and 0 <= r["relax_steps"] <= 60
        assert r["e_above_hull"] is not None
    assert "relax_steps" not in recs[3]
    ase, s_ase = screen_structures(gen[:2], model, hull, relax=True,
                                   relax_kwargs={"fmax": 0.05, "steps": 60, "backend": "ase"})
    assert s_ase["relax_backend"] == "ase" and ase[0]["relax_backend"] == "ase"
    for x, y in zip(ase, recs[:2], strict=True):
        if x["relax_converged"] and y["relax_converged"]:
            assert abs(x["energy_per_atom"] - y["energy_per_atom"]) < 5e-3


def _many_systems_hull() -> ReferenceHull:
    binaries = {"Li2O": -2.07, "Na2O": -1.46, "K2O": -1.26, "MgO": -3.05, "CaO": -3.28,
                "LiF": -3.19, "NaF": -2.98, "KF": -2.91, "MgF2": -3.88, "CaF2": -4.21,
                "NaCl": -2.1, "KCl": -2.25, "LiCl": -2.0, "MgCl2": -2.2}
    mu = {"Li": -1.9, "Na": -1.3, "K": -1.1, "Mg": -1.6, "Ca": -2.0, "O": -4.9, "F": -1.9,
          "Cl": -1.8}
    return ReferenceHull.from_formation_energies(list(binaries), list(binaries.values()),
                                                 chemical_potentials=mu)


def test_pipeline_hull_in_workers_same_e_above_hull(setup, monkeypatch):
    """Hull energies computed in worker processes alongside the energies: same results."""
    model = setup[0]
    pairs = [("Li", "O"), ("Na", "O"), ("K", "F"), ("Mg", "O"), ("Ca", "F"), ("Li", "F"),
             ("Na", "Cl"), ("K", "Cl"), ("Mg", "Cl"), ("Li", "Xe")]
    gen = [Structure(Lattice.cubic(3.4), list(p), [[0, 0, 0], [0.5, 0.5, 0.5]])
           for p in pairs]
    gen += [Structure(Lattice.cubic(4.6), [a, b, c], [[0, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0.5]])
            for a, b, c in (("Li", "Na", "O"), ("Mg", "Ca", "O"), ("K", "Na", "F"))]
    gen.append(None)
    calls: list[int] = []
    real_parallel = ReferenceHull._hull_energies_parallel

    def spy(self, todo, *args, **kwargs):
        calls.append(len(todo))
        return real_parallel(self, todo, *args, **kwargs)

    monkeypatch.setattr(ReferenceHull, "_hull_energies_parallel", spy)
    a, sa = screen_structures(gen, model, _many_systems_hull(), n_jobs=2, pipeline=True)
    assert calls and calls[0] >= 8  # built in worker processes
    b, sb = screen_structures(gen, model, _many_systems_hull(), n_jobs=1, pipeline=False)
    assert len(calls) == 1
    assert [r["e_above_hull"] for r in a] == [r["e_above_hull"] for r in b]
    assert [r["errors"] for r in a] == [r["errors"] for r in b]
    assert _strip(a) == _strip(b)
    assert sum(r["e_above_hull"] is not None for r in a) == len(gen) - 2
    (err,) = a[pairs.index(("Li", "Xe"))]["errors"]
    assert err.startswith("hull: no chemical potential for Xe")
    ta, tb = sa["timings_s"], sb["timings_s"]
    assert ta["hull"] > 0 and ta["hull_wait"] >= 0 and tb["hull"] == tb["hull_wait"]
