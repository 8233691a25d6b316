"""Hulls of too many elements are refused with a reason instead of stalling a screen."""

from __future__ import annotations

import math

import numpy as np

from xtalforge.screening.hull import ReferenceHull

ELS = ["Li", "Na", "K", "Mg", "Ca", "O"]


def _hull(**kw) -> ReferenceHull:
    comps = [*ELS, "Li2O", "Na2O", "MgO", "CaO", "K2O", "LiNaO", "MgCaO2"]
    e_form = [0.0] * len(ELS) + [-2.0, -1.4, -3.0, -3.2, -1.2, -1.8, -3.1]
    return ReferenceHull.from_formation_energies(comps, e_form, **kw)


def test_large_chemical_systems_get_a_reason_not_a_hull():
    hull = _hull()
    hull.max_elements = 3
    q = ["LiNaO2", "LiNaKMgO4", "LiO"]
    vals, reasons = hull.e_above_hull(q, [-1.0, -1.0, -1.0], kind="formation",
                                      return_reasons=True)
    assert math.isfinite(vals[0]) and reasons[0] is None
    assert np.isnan(vals[1]) and "5 elements" in reasons[1] and "max_elements=3" in reasons[1]
    assert math.isfinite(vals[2])


def test_default_limit_covers_mp20_and_survives_serialisation():
    hull = _hull()
    assert hull.max_elements == 8 and hull.convention["max_elements"] == 8
    back = ReferenceHull.from_dict(_hull(max_elements=4).as_dict())
    assert back.max_elements == 4
    _, reasons = back.e_above_hull(["LiNaKMgCaO5"], [-1.0], kind="formation",
                                   return_reasons=True)
    assert "max_elements=4" in reasons[0]
    assert ReferenceHull.from_dict(_hull(max_elements=None).as_dict()).max_elements is None
