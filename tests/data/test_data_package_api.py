"""The README's `from xtalforge.data import load_dataset` works, and lazily."""

from __future__ import annotations

import subprocess
import sys


def test_load_dataset_is_exported(tmp_path):
    from xtalforge.data import LoadReport, build_demo_dataset, load_dataset
    from xtalforge.data.loaders import load_dataset as direct

    assert load_dataset is direct and build_demo_dataset and LoadReport
    entries = build_demo_dataset().entries[:3]
    path = tmp_path / "s.json"
    import json

    path.write_text(json.dumps([e.structure.as_dict() for e in entries]))
    report = load_dataset(path)
    assert len(report.entries) == 3 and not report.rejected


def test_import_xtalforge_data_stays_light():
    code = ("import sys, xtalforge.data as d; assert 'pymatgen.core' not in sys.modules; "
            "assert 'load_dataset' in dir(d); d.load_dataset; "
            "assert 'pymatgen.core' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
