"""Hull correctness with DFT energies (no MLIP): MP-20 formation-energy hull.

Builds a :class:`xtalforge.screening.hull.ReferenceHull` from the formation energies of all
45,229 MP-20 structures (train + val + test; MP2020-corrected GGA/GGA+U formation energies as
distributed with MP-20, elemental references at 0), computes the energy above the hull of the
MP-20 test split and compares it with

* ``e_hull_mp20_only`` of ``mp20_all_formation_energies_ehull.csv.gz`` (an independent build of
  the same MP-20-only hull: agreement to round-off checks the hull code), and
* the ``e_above_hull`` column of ``mp20_mp_ehull_and_mlip_energies.parquet``. Caution: that
  column is **not** Materials Project's own value, although ``../shared/data/README.md`` says so:
  it is MACE's distance to a MACE hull over MP-20 (``benchmarks/mlip_vs_dft_mp20.py`` rebuilds it
  to 2e-13 eV/atom for all 35,317 rows, and the file keeps only rows with it <= 0.025). The MAE
  against it is therefore a DFT-vs-MACE hull difference, not a check against MP.

Usage::

    python benchmarks/hull_mp20.py [--data ../shared/data/mp20] [--split test] [--out out/hull.csv]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from xtalforge.screening.hull import ReferenceHull

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mp20")
    ap.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    ap.add_argument("--hull-source", default="all", choices=["all", "val+test"],
                    help="entries of the hull: all 45,229 MP-20 formation energies, or only "
                         "the val/test CSVs")
    ap.add_argument("--out", type=Path, default=None, help="optional per-structure CSV")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    allf = pd.read_csv(args.data / "mp20_all_formation_energies_ehull.csv.gz")
    if args.hull_source == "all":
        ref = allf
    else:
        ref = pd.concat([pd.read_csv(args.data / f"{s}.csv.gz") for s in ("val", "test")])
    t0 = time.perf_counter()
    hull = ReferenceHull.from_formation_energies(
        ref["pretty_formula"], ref["formation_energy_per_atom"], ref["material_id"],
        convention={"energy_source": "DFT (MP GGA/GGA+U)", "correction": "MP2020 (as in MP-20)",
                    "reference_set": f"MP-20 {args.hull_source} formation energies",
                    "relaxed": True},
    )
    t_build = time.perf_counter() - t0

    q = allf if args.split == "all" else allf[allf["split"] == args.split]
    mp = pd.read_parquet(args.data / "mp20_mp_ehull_and_mlip_energies.parquet",
                         columns=["material_id", "e_above_hull"])
    q = q.merge(mp, on="material_id", how="inner")
    t0 = time.perf_counter()
    ehull, reasons = hull.e_above_hull(q["pretty_formula"], q["formation_energy_per_atom"],
                                       kind="formation", return_reasons=True)
    t_query = time.perf_counter() - t0
    q = q.assign(e_hull_xtalforge=ehull, reason=reasons)
    ok = np.isfinite(q["e_hull_xtalforge"])
    err = (q.loc[ok, "e_hull_xtalforge"] - q.loc[ok, "e_above_hull"]).abs()
    ref_err = (q.loc[ok, "e_hull_mp20_only"] - q.loc[ok, "e_above_hull"]).abs()
    self_diff = (q.loc[ok, "e_hull_xtalforge"] - q.loc[ok, "e_hull_mp20_only"]).abs()

    print(f"hull: {hull}")
    print(f"convention: {hull.convention}")
    print(f"hull build {t_build:.2f} s; e_above_hull for {len(q)} structures {t_query:.2f} s "
          f"({len(hull._pd_cache)} chemical systems)")
    print(f"split={args.split}: compared N={int(ok.sum())} (of {len(q)} with MP e_above_hull; "
          f"{int((~ok).sum())} NaN)")
    print(f"MAE vs MP e_above_hull        = {err.mean():.5f} eV/atom "
          f"(median {err.median():.5f}, max {err.max():.4f}, "
          f"frac |err|<0.01: {(err < 0.01).mean():.4f})")
    print(f"MAE of the CSV's e_hull_mp20_only vs MP = {ref_err.mean():.5f} eV/atom")
    print(f"max |xtalforge - e_hull_mp20_only|  = {self_diff.max():.2e} eV/atom")
    agree = ((q.loc[ok, "e_hull_xtalforge"] <= 1e-6) == (q.loc[ok, "e_above_hull"] <= 1e-6))
    print(f"stable (<=1e-6) agreement with MP (e_above_hull<=1e-6): {agree.mean():.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        q.to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
