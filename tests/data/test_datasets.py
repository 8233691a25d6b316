"""Dataset loaders: every entry accepted or rejected with a reason, never silently dropped."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from xtalforge.data.demo import build_demo_dataset
from xtalforge.data.loaders import load_dataset, validate_structure


def _nacl() -> Structure:
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


GOOD_CIF = str(CifWriter(_nacl()))
NAN_CIF = GOOD_CIF.replace("_cell_length_a   5.64000000", "_cell_length_a   nan")
UNKNOWN_CIF = (
    GOOD_CIF.replace(" Na ", " Xq ")
    .replace("Na1", "Xq1")
    .replace("_chemical_formula_sum   'Na4 Cl4'", "_chemical_formula_sum   'Xq4 Cl4'")
)
OVERLAP = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])


def test_validate_structure_reasons():
    assert validate_structure(_nacl()) is None
    assert validate_structure(OVERLAP).startswith("overlapping atoms")
    assert validate_structure(Structure(Lattice.cubic(4.0), [], [])).startswith("empty")


def test_csv_rejects_bad_rows_with_reasons(tmp_path):
    assert "nan" in NAN_CIF
    rows = [
        {"material_id": "good", "cif": GOOD_CIF, "band_gap": 5.0},
        {"material_id": "garbage", "cif": "data_x\n_this is not a cif at all\n", "band_gap": 1.0},
        {"material_id": "nan-lattice", "cif": NAN_CIF, "band_gap": 1.0},
        {"material_id": "overlap", "cif": str(CifWriter(OVERLAP)), "band_gap": 1.0},
        {"material_id": "unknown-element", "cif": UNKNOWN_CIF, "band_gap": 1.0},
        {"material_id": "empty", "cif": None, "band_gap": float("nan")},
        {"material_id": "good2", "cif": GOOD_CIF, "band_gap": float("nan")},
    ]
    path = tmp_path / "set.csv.gz"
    pd.DataFrame(rows).to_csv(path, index=False)
    rep = load_dataset(path, progress=False)
    assert [e.source_id for e in rep.entries] == ["good", "good2"]
    reasons = {r.source_id: r.reason for r in rep.rejected}
    assert set(reasons) == {"garbage", "nan-lattice", "overlap", "unknown-element", "empty"}
    assert reasons["overlap"].startswith("overlapping atoms")
    assert reasons["garbage"].startswith("unparsable")
    assert reasons["empty"].startswith("unparsable")
    assert reasons["nan-lattice"].startswith("NaN lattice")
    assert reasons["unknown-element"].startswith("unknown element: Xq")
    assert rep.entries[1].properties["band_gap"] is None  # NaN property kept as None
    summ = rep.summary()
    assert summ["n_total"] == 7 and summ["n_rejected"] == 5 and summ["n_accepted"] == 2


def test_json_extxyz_and_asedb(tmp_path):
    from ase.db import connect
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    s = _nacl()
    data = [
        s.as_dict(),
        {"structure": s.as_dict(), "energy": -3.2, "material_id": "m2"},
        {"no": "structure"},
        OVERLAP.as_dict(),
    ]
    p = tmp_path / "set.json"
    p.write_text(json.dumps(data))
    rep = load_dataset(p, progress=False)
    assert len(rep.entries) == 2 and rep.entries[1].properties["energy"] == -3.2
    assert sorted(r.reason.split(":")[0] for r in rep.rejected) == [
        "overlapping atoms",
        "unparsable",
    ]

    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.info["energy_per_atom"] = -1.5
    bad = AseAtomsAdaptor.get_atoms(OVERLAP)
    write(tmp_path / "set.extxyz", [atoms, bad], format="extxyz")
    rep = load_dataset(tmp_path / "set.extxyz", progress=False)
    assert len(rep.entries) == 1 and rep.entries[0].properties["energy_per_atom"] == -1.5
    assert rep.rejected[0].reason.startswith("overlapping atoms")

    db = connect(tmp_path / "set.db")
    db.write(atoms, tag="ok")
    db.write(bad, tag="bad")
    rep = load_dataset(tmp_path / "set.db", progress=False)
    assert len(rep.entries) == 1 and rep.entries[0].properties["tag"] == "ok"
    assert len(rep.rejected) == 1
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_dataset(tmp_path / "set.db", fmt="parquet")
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.csv")


def test_demo_dataset_is_deterministic_and_valid():
    a = build_demo_dataset()
    b = build_demo_dataset()
    assert a.fingerprint == b.fingerprint
    assert len(a.entries) > 300 and not a.rejected
    sources = {e.properties["source"] for e in a.entries}
    assert sources == {"aflow", "ase-reference-state", "elemental-reference", "substitution"}
    assert max(len(e.structure) for e in a.entries) <= 20
    assert len({e.source_id for e in a.entries}) == len(a.entries)


def test_mp20_csv_loads(shared_data):
    rep = load_dataset(shared_data / "mp20" / "test.csv.gz", limit=200, progress=False)
    assert rep.n_total == 200
    assert len(rep.entries) >= 195
    e = rep.entries[0]
    assert e.source_id.startswith("mp-") and "formation_energy_per_atom" in e.properties


def test_fingerprint_ignores_float_noise_but_not_real_changes():
    from pymatgen.core import Lattice, Structure

    from xtalforge.data.loaders import build_load_report

    def report(a: float):
        s = Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
        return build_load_report("t", None, [("x", s, {})], progress=False)

    base = report(5.64)
    # last-bit differences (another CPU's math library) keep the fingerprint
    assert report(5.64 * (1 + 1e-13)).fingerprint == base.fingerprint
    # a lattice change of a thousandth of an angstrom does not
    assert report(5.641).fingerprint != base.fingerprint
