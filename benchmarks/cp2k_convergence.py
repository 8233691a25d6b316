"""Cutoff and k-point convergence of the CP2K settings used for the self-consistent DFT hull.

For one or more MP-20 structures (by ``material_id``), CP2K statics run through atomate2's
``StaticMaker`` (custodian on) with :class:`xtalforge.dft.cp2k.Cp2kSettings`, varying one
setting at a time around a base setting (by default the one of
``benchmarks/dft_validation_cp2k.py``: cutoff 300 Ry, 100 k-points per atom, EPS_SCF 1e-5):

* plane-wave cutoff (Ry): ``--cutoffs`` at the base k-point density;
* k-point density (per reciprocal atom): ``--kpoint-densities`` at the base cutoff.

It prints, per structure, the total energy per atom of each setting and its difference to the
tightest setting of that scan (meV/atom), with the wall time of each static. The default
setting appears in both scans and runs once. Results go to ``--out`` (JSON) and are resumable:
finished settings are read back from the JSON; a failed static is recorded and the scan goes
on.

Usage (CP2K installed: ``bash scripts/install_cp2k.sh``)::

    OMP_NUM_THREADS=1 python benchmarks/cp2k_convergence.py --ids mp-1056702 \\
        --mp20 ../shared/data/mp20 --out out/cp2k_convergence.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("cp2k_convergence")
ROOT = Path(__file__).resolve().parents[1]


def load_structures(mp20: Path, ids: list[str]) -> dict[str, Any]:
    """Return ``{material_id: Structure}`` from the MP-20 CSVs (val and test)."""
    import pandas as pd
    from pymatgen.core import Structure

    out: dict[str, Any] = {}
    for split in ("val", "test", "train"):
        for suffix in (".csv.gz", ".csv"):
            path = mp20 / f"{split}{suffix}"
            if not path.is_file():
                continue
            df = pd.read_csv(path)
            if "cif" not in df.columns:
                continue
            for mid, cif in zip(df.material_id, df.cif, strict=True):
                if mid in ids and mid not in out:
                    out[mid] = Structure.from_str(cif, fmt="cif")
    missing = [i for i in ids if i not in out]
    if missing:
        raise SystemExit(f"not found with positions in {mp20}: {', '.join(missing)}")
    return out


def run_static(structure: Any, settings: Any, workdir: Path) -> tuple[float, float]:
    """Run one CP2K static; return (energy per atom in eV, wall time in s)."""
    from jobflow import run_locally

    maker = settings.static_maker([el.symbol for el in structure.composition.elements])
    job = maker.make(structure)
    t0 = time.perf_counter()
    responses = run_locally(job, root_dir=workdir, create_folders=True, log=False,
                            ensure_success=True)
    wall = time.perf_counter() - t0
    doc = responses[job.uuid][1].output
    return float(doc.output.energy) / len(structure), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ids", nargs="+", default=["mp-1056702"],
                    help="MP-20 material ids (with positions: val or test)")
    ap.add_argument("--mp20", type=Path, default=ROOT.parent / "shared" / "data" / "mp20")
    ap.add_argument("--cutoff", type=float, default=300.0, help="base CUTOFF (Ry)")
    ap.add_argument("--kpoint-density", type=int, default=100, help="base k-points per atom")
    ap.add_argument("--eps-scf", type=float, default=1e-5, help="CP2K EPS_SCF")
    ap.add_argument("--cutoffs", type=float, nargs="+", default=[200, 300, 400, 600])
    ap.add_argument("--kpoint-densities", type=int, nargs="+", default=[50, 100, 200, 400])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "cp2k_convergence.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from xtalforge.dft.cp2k import Cp2kSettings, configure_cp2k, cp2k_status

    ok, why = cp2k_status()
    if not ok:
        raise SystemExit(why)
    configure_cp2k()
    base = Cp2kSettings(cutoff=args.cutoff, kpoint_density=args.kpoint_density,
                        eps_scf=args.eps_scf)
    structures = load_structures(args.mp20, args.ids)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    rows = results.setdefault("rows", [])
    done = {(r["material_id"], r["scan"], r["value"]) for r in rows}
    by_fp = {(r["material_id"], r["settings"]["fingerprint"]): r for r in rows
             if "energy_per_atom" in r}
    plan = [("cutoff", c) for c in args.cutoffs] + [("kpoint_density", k)
                                                    for k in args.kpoint_densities]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for mid, s in structures.items():
        for scan, value in plan:
            if (mid, scan, value) in done:
                continue
            settings = dataclasses.replace(base, **{scan: value})
            same = by_fp.get((mid, settings.fingerprint()))
            if same is not None:  # the default setting, already run in the other scan
                rows.append({**same, "scan": scan, "value": value})
                continue
            with tempfile.TemporaryDirectory(prefix="cp2k_conv_") as tmp:
                try:
                    e, wall = run_static(s, settings, Path(tmp))
                    row = {"material_id": mid, "formula": s.composition.reduced_formula,
                           "natoms": len(s), "scan": scan, "value": value,
                           "energy_per_atom": e, "wall_s": wall,
                           "settings": {**settings.record(),
                                        "fingerprint": settings.fingerprint()}}
                    by_fp[(mid, settings.fingerprint())] = row
                except Exception as exc:  # noqa: BLE001 - recorded, the scan goes on
                    row = {"material_id": mid, "scan": scan, "value": value,
                           "error": f"{type(exc).__name__}: {exc}"}
            logger.info("%s %s=%s: %s", mid, scan, value,
                        row.get("energy_per_atom", row.get("error")))
            rows.append(row)
            results["base_settings"] = base.record()
            args.out.write_text(json.dumps(results, indent=1))
    report(rows, args.ids)


def report(rows: list[dict], ids: list[str]) -> None:
    """Print the scans as markdown tables (differences to the tightest setting)."""
    ok = [r for r in rows if "energy_per_atom" in r]
    for scan, unit in (("cutoff", "Ry"), ("kpoint_density", "k-points/atom")):
        values = sorted({r["value"] for r in ok if r["scan"] == scan})
        if not values:
            continue
        print(f"\n{scan} ({unit}); the other settings at the base")
        head = "| structure | " + " | ".join(f"{v:g}" for v in values) + " |"
        print(head)
        print("|" + "---|" * (len(values) + 1))
        e = {(r["material_id"], r["value"]): r["energy_per_atom"] for r in ok
             if r["scan"] == scan}
        w = {(r["material_id"], r["value"]): r["wall_s"] for r in ok if r["scan"] == scan}
        top = values[-1]
        for mid in ids:
            if (mid, top) not in e:
                continue
            cells = [f"{1000 * (e[(mid, v)] - e[(mid, top)]):+.1f} meV ({w[(mid, v)]:.0f} s)"
                     if (mid, v) in e else "–" for v in values]
            print(f"| {mid} E/atom − E/atom({top:g}) | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
