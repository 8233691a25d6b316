"""Hull energies: worker processes give the in-process numbers bit for bit, a cache reuses them."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from xtalforge.screening import hull as hull_mod
from xtalforge.screening.hull import MIN_PARALLEL_SYSTEMS, ReferenceHull

ELS = ["Li", "Na", "K", "Mg", "Ca", "Al", "O", "F"]
BINARIES = {"Li2O": -2.07, "Na2O": -1.46, "K2O": -1.26, "MgO": -3.05, "CaO": -3.28,
            "Al2O3": -3.43, "LiF": -3.19, "NaF": -2.98, "KF": -2.91, "MgF2": -3.88,
            "CaF2": -4.21, "AlF3": -3.84, "Li2O2": -1.66, "LiAl": -0.18, "MgAl2O4": -3.45,
            "LiAlO2": -3.09, "NaAlO2": -2.73, "CaAl2O4": -3.40, "Mg2Al": -0.05}


def _hull(max_elements: int | None = 8) -> ReferenceHull:
    comps = [*BINARIES, "Na2O2", "KO2"]
    e_form = [*BINARIES.values(), -1.31, -0.97]
    return ReferenceHull.from_formation_energies(comps, e_form, max_elements=max_elements)


def _queries() -> tuple[list[str], list[float]]:
    """Every chemical system of 2 and 3 of ELS, twice (two stoichiometries), and edge cases."""
    comps: list[str] = []
    for r in (2, 3):
        for combo in itertools.combinations(ELS, r):
            comps.append("".join(combo))
            comps.append("".join(f"{el}{k + 1}" for k, el in enumerate(combo)))
    comps += ["Li2O2", "LiO", "Li3O3",  # same atomic fractions: one hull query
              "LiNaKMgCaO5",  # 6 elements: above max_elements=5 below
              "LiXeO",  # element not in the hull
              "Li"]  # terminal
    energies = [-1.0 + 0.01 * k for k in range(len(comps))]
    energies[5] = math.nan  # a failed energy
    energies[7] = math.inf
    return comps, energies


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(np.isnan(a), np.isnan(b))
                and np.array_equal(a[~np.isnan(a)], b[~np.isnan(b)]))


def test_hull_energies_match_pymatgen_phase_diagrams():
    hull = _hull()
    comps = ["LiAlO2", "Li5AlO4", "MgAl2O4", "NaF", "CaMgO2", "LiNaKO3"]
    vals, reasons = hull.hull_energies(comps)
    assert reasons == [None] * len(comps)
    for c, v in zip(comps, vals, strict=True):
        comp = Composition(c)
        els = {el.symbol for el in comp.elements}
        entries = [PDEntry(rc, float(e)) for rc, e in zip(hull.compositions, hull.energies,
                                                           strict=True)
                   if {el.symbol for el in rc.elements} <= els]
        assert v == pytest.approx(PhaseDiagram(entries).get_hull_energy_per_atom(comp),
                                  abs=1e-12)
    assert vals[0] == pytest.approx(-3.09)  # LiAlO2 is on the hull
    assert vals[1] < 0 and vals[4] < 0  # between Li2O and LiAlO2; between MgO and CaO


@pytest.mark.parametrize("n_jobs", [2, 3])
def test_parallel_equals_serial_including_failures(n_jobs, monkeypatch):
    comps, energies = _queries()
    pool_calls: list[int] = []
    real_parallel = ReferenceHull._hull_energies_parallel

    def spy(self, todo, *args, **kwargs):
        pool_calls.append(len(todo))
        return real_parallel(self, todo, *args, **kwargs)

    monkeypatch.setattr(ReferenceHull, "_hull_energies_parallel", spy)
    serial_hull = _hull(max_elements=5)
    par_hull = _hull(max_elements=5)
    systems = {frozenset(Composition(c).chemical_system.split("-")) for c in comps}
    assert len(systems) >= MIN_PARALLEL_SYSTEMS  # the parallel path is taken
    for kind in ("formation", "total"):
        if kind == "total":  # converted with chemical potentials, one element missing
            mu = {el: -2.0 - 0.1 * k for k, el in enumerate(ELS) if el != "F"}
            serial_hull = serial_hull.with_chemical_potentials(mu)
            par_hull = par_hull.with_chemical_potentials(mu)
        a, ra = serial_hull.e_above_hull(comps, energies, kind=kind, return_reasons=True,
                                         n_jobs=1)
        b, rb = par_hull.e_above_hull(comps, energies, kind=kind, return_reasons=True,
                                      n_jobs=n_jobs)
        assert _same(a, b) and ra == rb
        assert np.isfinite(a).sum() > 100
        assert ra[5] == "no finite energy" and ra[7] == "no finite energy"
        assert "6 elements" in ra[-3] and "max_elements=5" in ra[-3]
        if kind == "formation":
            assert "Xe not covered" in ra[-2]
            assert a[-1] == pytest.approx(energies[-1])  # terminal at 0
        else:
            assert "no chemical potential for F" in ra[comps.index("LiF")]
    he_a, rh_a = _hull(5).hull_energies(comps, n_jobs=1)
    he_b, rh_b = _hull(5).hull_energies(comps, n_jobs=n_jobs)
    assert _same(he_a, he_b) and rh_a == rh_b
    assert len(pool_calls) == 3 and min(pool_calls) >= MIN_PARALLEL_SYSTEMS


def test_e_above_hull_unchanged_from_per_system_phase_diagrams():
    """The previous algorithm (query each composition on its system's diagram) is kept."""
    comps, energies = _queries()
    hull = _hull(max_elements=5)
    vals, reasons = hull.e_above_hull(comps, energies, kind="formation", return_reasons=True,
                                      n_jobs=2)
    for c, e, v, r in zip(comps, energies, vals, reasons, strict=True):
        if r is not None:
            assert np.isnan(v)
            continue
        comp = Composition(c)
        pd = hull.phase_diagram({el.symbol for el in comp.elements})
        assert v == e - pd.get_hull_energy_per_atom(comp)


def test_cache_hit_returns_the_same_without_building(monkeypatch):
    comps, _ = _queries()
    hull = _hull(max_elements=5)
    first, r1 = hull.hull_energies(comps, n_jobs=2)
    assert hull._energy_cache

    def no_build(*args, **kwargs):
        raise AssertionError("a cached composition was rebuilt")

    monkeypatch.setattr(hull, "_system_hull_energies", no_build)
    monkeypatch.setattr(hull, "_get_pd", no_build)
    again, r2 = hull.hull_energies(comps, n_jobs=2)
    assert _same(first, again) and r1 == r2
    # same atomic fractions, other formula units: a cache hit too
    scaled, _ = hull.hull_energies(["Li4O4"], n_jobs=1)
    assert scaled[0] == first[comps.index("LiO")]
    monkeypatch.undo()
    hull.clear_cache()
    assert not hull._energy_cache and not hull._pd_cache


def test_cache_follows_max_elements():
    hull = _hull()
    v, r = hull.hull_energies(["LiNaKMgCaO5"])
    assert np.isfinite(v[0]) and r[0] is None
    hull.max_elements = 4
    v, r = hull.hull_energies(["LiNaKMgCaO5"])
    assert np.isnan(v[0]) and "max_elements=4" in r[0]


def test_small_inputs_stay_in_process(monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("worker pool started for a small input")

    monkeypatch.setattr(ReferenceHull, "_hull_energies_parallel", no_pool)
    hull = _hull()
    vals, reasons = hull.hull_energies(["LiAlO2", "MgO", Composition({}), "Li2O"], n_jobs=4)
    assert np.isfinite(vals[[0, 1, 3]]).all() and reasons[2] == "empty composition"
    assert hull._pd_cache  # the in-process path keeps its phase diagrams


def test_query_failure_is_per_composition_and_not_cached(monkeypatch):
    hull = _hull()
    real = PhaseDiagram.get_hull_energy_per_atom

    def flaky(self, comp, **kw):
        if comp.reduced_formula == "Li5AlO4":
            raise RuntimeError(f"No facet found for {comp}")
        return real(self, comp, **kw)

    monkeypatch.setattr(PhaseDiagram, "get_hull_energy_per_atom", flaky)
    vals, reasons = hull.hull_energies(["Li5AlO4", "Li10Al2O8", "LiAlO2"])
    assert reasons[0] == "hull query failed: No facet found for Li5 Al1 O4"
    assert reasons[1] == "hull query failed: No facet found for Li10 Al2 O8"
    assert reasons[2] is None and np.isfinite(vals[2])
    monkeypatch.undo()
    vals, reasons = hull.hull_energies(["Li5AlO4"])
    assert reasons[0] is None and np.isfinite(vals[0])


def _die(tasks):
    """A worker that is killed."""
    os._exit(1)


def test_broken_pool_falls_back_to_this_process(monkeypatch, caplog):
    comps, _ = _queries()
    expected, r_exp = _hull(5).hull_energies(comps, n_jobs=1)
    monkeypatch.setattr(hull_mod, "_hull_energy_chunk", _die)
    with caplog.at_level("WARNING", logger="xtalforge.screening.hull"):
        got, r_got = _hull(5).hull_energies(comps, n_jobs=2)
    assert _same(expected, got) and r_exp == r_got
    assert "hull worker pool broke" in caplog.text
