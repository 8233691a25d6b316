"""The demo dataset holds an elemental reference for every element it holds (hull coverage)."""

from __future__ import annotations

from xtalforge.data.demo import build_demo_dataset
from xtalforge.flows.campaign import demo_config


def _coverage(entries):
    elements, refs = set(), set()
    for e in entries:
        els = {str(x) for x in e.structure.composition.elements}
        elements |= els
        if len(els) == 1:
            refs |= els
    return elements, refs


def test_every_element_has_an_elemental_reference():
    rep = build_demo_dataset()
    limit = demo_config()["dataset"].get("limit") or len(rep.entries)
    for entries in (rep.entries, rep.entries[:limit]):  # the demo campaign's subset too
        elements, refs = _coverage(entries)
        assert elements - refs == set(), sorted(elements - refs)
    elements, _ = _coverage(rep.entries)
    assert {"S", "F", "H", "Br", "Sb", "Bi"} <= elements
    added = {e.properties.get("source") for e in rep.entries}
    assert "elemental-reference" in added
    dimers = [e for e in rep.entries if e.structure.composition.reduced_formula in ("F2", "H2")]
    assert dimers and all(len(d.structure) == 2 and d.structure.is_ordered for d in dimers)
