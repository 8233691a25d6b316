"""The self-consistent DFT hull: competing phases from MP-20 data and hull distances."""

from __future__ import annotations

import pytest
from pymatgen.core import Lattice, Structure

from xtalforge.dft.hull import (
    competing_phases,
    reference_key,
    self_consistent_hull,
    structure_key,
)


def _fcc(el: str, a: float) -> Structure:
    return Structure(Lattice.from_parameters(a / 2**0.5, a / 2**0.5, a / 2**0.5, 60, 60, 60),
                     [el], [[0, 0, 0]])


def test_competing_phases_lists_hull_phases_and_missing_structures(tmp_path, mini_mp20):
    d = mini_mp20(
        tmp_path / "mp20",
        [("mp-1", _fcc("Cu", 3.6), 0.0), ("mp-2", _fcc("Ag", 4.1), 0.0),
         ("mp-3", _fcc("Ag", 4.3), 0.05), ("mp-4", _fcc("Au", 4.1), 0.0)],
        missing=[("mp-9", "CuAg")],
    )
    cp = competing_phases(["Cu", "Ag"], d)
    assert cp["chemsys"] == "Ag-Cu"
    assert [p["material_id"] for p in cp["phases"]] == ["mp-2", "mp-1"]  # above-hull mp-3 out
    assert all(p["elemental"] for p in cp["phases"])
    assert cp["missing"] == [{"material_id": "mp-9", "formula": "CuAg", "split": "train"}]
    assert Structure.from_dict(cp["phases"][0]["structure"]).composition.reduced_formula == "Ag"


def test_self_consistent_hull_distance_and_decomposition():
    refs = [
        {"formula": "A", "energy_per_atom": -1.0, "material_id": "a"},
        {"formula": "B", "energy_per_atom": -2.0, "material_id": "b"},
        {"formula": "AB", "energy_per_atom": -2.0, "material_id": "ab"},  # E_form = -0.5
    ]
    # A3B at -1.5 eV/atom: elements give -1.25; hull at x_B=1/4 is -1.25 - 0.25 = -1.5
    h = self_consistent_hull("A3B", -1.4, refs)
    assert h["errors"] == []
    assert h["e_above_hull"] == pytest.approx(0.1)
    assert h["formation_energy_per_atom"] == pytest.approx(-0.15)
    assert set(h["decomposition"]) == {"a", "ab"}
    below = self_consistent_hull("A3B", -1.6, refs)
    assert below["e_above_hull"] == pytest.approx(-0.1)  # signed


def test_self_consistent_hull_records_missing_and_failed_references():
    refs = [{"formula": "A", "energy_per_atom": -1.0, "material_id": "a"},
            {"formula": "B", "energy_per_atom": None, "material_id": "b"}]
    h = self_consistent_hull("AB", -1.5, refs)
    assert h["e_above_hull"] is None
    assert any("b" in e and "no DFT energy" in e for e in h["errors"])
    assert any("no computed elemental reference for B" in e for e in h["errors"])
    assert self_consistent_hull("AB", float("nan"), refs)["errors"] == [
        "hull: the candidate has no finite DFT energy"]


def test_reference_key_fixes_structure_and_settings():
    s = _fcc("Cu", 3.6)
    assert structure_key(s) == structure_key(s.as_dict())
    assert structure_key(s) != structure_key(_fcc("Cu", 3.61))
    assert reference_key(s, "aaaa") != reference_key(s, "bbbb")
    assert reference_key(s, "aaaa").endswith("-aaaa")
