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


def test_shipped_demo_generator_matches_its_record_and_the_dataset():
    import json

    from xtalforge.data.demo import DEMO_GENERATOR, DEMO_GENERATOR_INFO
    from xtalforge.models.generator import LatentDiffusionGenerator
    from xtalforge.stores.provenance import sha256_file

    assert DEMO_GENERATOR.is_file() and DEMO_GENERATOR.stat().st_size < 5e6
    record = json.loads(DEMO_GENERATOR_INFO.read_text())
    assert record["sha256"] == sha256_file(DEMO_GENERATOR)
    assert record["command"].startswith("python scripts/train_demo_generator.py")
    # trained on today's demo dataset (retrain with the command above when it changes)
    assert record["dataset"]["fingerprint"] == build_demo_dataset().fingerprint
    assert record["dataset"]["limit"] == demo_config()["dataset"]["limit"]
    assert demo_config()["checkpoint"] == str(DEMO_GENERATOR)
    assert "pretrain" in demo_config(train=True) and "checkpoint" not in demo_config(train=True)
    gen = LatentDiffusionGenerator.load(DEMO_GENERATOR)
    assert gen.max_atoms >= 20
