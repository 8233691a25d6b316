"""The project's MP-20 split: committed held-out ids, the split, the ingest source."""

from __future__ import annotations

import pandas as pd
import pytest

from xtalforge.data.mp20 import (
    HELDOUT_IDS_FILE,
    heldout_ids,
    load_mp20_report,
    make_heldout_ids,
    mp20_split_fingerprint,
)


def test_committed_ids_file_is_well_formed():
    ids = heldout_ids()
    assert len(ids) == 1000 == len(set(ids))
    assert all(i.split("-")[0] in {"mp", "mvc"} for i in ids)
    assert ids == sorted(ids)


def test_heldout_draw_is_seeded():
    pool = [f"mp-{i}" for i in range(5000)]
    a, b = make_heldout_ids(pool, n=10, seed=0), make_heldout_ids(pool[::-1], n=10, seed=0)
    assert a == b and len(set(a)) == 10
    assert make_heldout_ids(pool, n=10, seed=1) != a
    with pytest.raises(ValueError, match="cannot hold out"):
        make_heldout_ids(pool[:5], n=10)


@pytest.mark.shared_data
def test_committed_ids_are_the_seeded_draw_of_the_test_split(shared_data):
    test = pd.read_csv(shared_data / "mp20" / "test.csv.gz", usecols=["material_id"])
    assert make_heldout_ids(test["material_id"].tolist()) == heldout_ids()
    fp = mp20_split_fingerprint(shared_data / "mp20")
    assert fp["heldout_ids_sha256"] and set(fp["files"]) == {"val", "test"}


@pytest.mark.shared_data
def test_mp20_report_marks_heldout(shared_data):
    report = load_mp20_report(shared_data / "mp20", limit=300)
    ids = {e.source_id for e in report.entries}
    assert report.heldout == set(heldout_ids())
    assert report.name == "mp20-valtest" and len(report.entries) + len(report.rejected) == 600
    # some of the first 300 test rows are held out, none of the val rows is
    val = pd.read_csv(shared_data / "mp20" / "val.csv.gz", usecols=["material_id"], nrows=300)
    assert not set(val["material_id"]) & report.heldout
    assert 0 < len(ids & report.heldout) < 300


def test_ids_file_ships_with_the_package():
    assert HELDOUT_IDS_FILE.is_file()
    assert "xtalforge/data/splits" in HELDOUT_IDS_FILE.as_posix()
