"""SMACT validity: compositions SMACT cannot enumerate in reasonable time are reported, not run."""

from __future__ import annotations

from pymatgen.core import Composition

from xtalforge.screening.metrics import SMACT_MAX_ELEMENTS, smact_valid


def test_many_element_compositions_are_invalid_with_the_reason():
    # 13 distinct elements: a sample of a barely trained generator; enumerating it takes minutes
    comp = Composition("BaGdTiBeCrNiTeMo2OsWSIO")
    assert len(comp.elements) > SMACT_MAX_ELEMENTS
    ok, reason = smact_valid(comp)
    assert ok is False
    assert "13 distinct elements" in reason


def test_ordinary_compositions_are_enumerated():
    assert smact_valid("NaCl") == (True, None)
    ok, reason = smact_valid("NaCl2")
    assert ok is False and "SMACT" in reason
    # the cap can be lifted (or lowered) per call
    ok, reason = smact_valid("LiFePO4", max_elements=3)
    assert ok is False and "4 distinct elements > 3" in reason
    assert smact_valid("LiFePO4", max_elements=None) == (True, None)
