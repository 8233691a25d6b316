"""Table and figure footnotes state the protocol and cite papers by author and year."""

from __future__ import annotations

import pandas as pd

from xtalforge.reports.tables import describe_conventions, describe_protocol


def test_protocol_line_names_energies_sampler_seed_and_papers():
    sampler = {"steps": 50, "eta": 0.0, "dtype": "fp32", "seed": 7, "device": "cpu"}
    df = pd.DataFrame({"relaxed": [False, False, None], "lineage.sampler": [sampler] * 3})
    line = describe_protocol(df)
    assert line.startswith("Protocol: MLIP energies: single point; sampling: DDIM 50 steps, "
                           "eta=0.0, seed=7.")
    assert "Park & Walsh 2025" in line and "Cao & Wang 2025" in line
    assert "seed 0" not in line.lower()  # a random seed, never a paper's file number
    df.loc[0, "relaxed"] = True
    assert "relaxed and single point (MIXED)" in describe_protocol(df)
    lines = describe_conventions(df)
    assert lines[0] == describe_protocol(df) and lines[1].startswith("Hull convention:")
    assert describe_protocol(pd.DataFrame({"x": [1]})) is None
