"""Hull energies of N generated compositions: serial loop vs worker processes vs cache, one run.

The hull stage of a screening round (``ReferenceHull.e_above_hull``) builds one pymatgen
``PhaseDiagram`` per distinct chemical system of the queries (every sub-system's entries of
the MP-20 formation-energy hull, 45,229 entries) and queries it. This script times, on the
same N compositions and each on a hull with empty caches:

1. ``per-system loop``: the previous ``e_above_hull`` inner loop, written out here: for each
   chemical system, build its phase diagram in this process, then
   ``get_hull_energy_per_atom`` for each of its compositions (the baseline);
2. ``hull_energies(n_jobs=1)``: the same in-process path of :meth:`ReferenceHull.hull_energies`
   (it queries each distinct atomic-fraction composition once);
3. ``hull_energies(n_jobs=K)``: chemical systems built in K worker processes;
4. ``cached``: the same call again (a later round of the same compositions).

An untimed pass of 1 over the same compositions comes first (then the caches are emptied), so
that whichever method runs first is not charged for imports and for the reference
compositions' cached properties; a round's first call pays those once.

It checks that 2-4 give the baseline's values bit for bit (NaN where the baseline has none)
and prints the ratios to the baseline.

Compositions: the generated samples of ``--samples`` (a JSON(.gz) list of
``{"structure": <Structure dict>}``, as ``benchmarks/sampling.py`` writes them), or else
MP-20 formulas with perturbed stoichiometry (``--n`` of them, seed ``--seed``): one element's
count changed by one and, for a third of them, one element of the hull added, so that most
chemical systems are new ternaries and quaternaries, as a generator's are. Without the MP-20
formation-energy CSV the script says so and exits.

Usage::

    python benchmarks/hull_throughput.py --samples out/samples.json.gz --n-jobs 2
    python benchmarks/hull_throughput.py --n 2000 --n-jobs 2 --data-dir ../shared/data/mp20
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import platform
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")
logger = logging.getLogger("hull_throughput")


def sample_compositions(path: Path, n: int | None) -> list:
    """Compositions of the decoded samples in a JSON(.gz) samples file."""
    from pymatgen.core import Structure

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as fh:
        rows = json.load(fh)
    comps = [Structure.from_dict(r["structure"]).composition for r in rows
             if r.get("structure")]
    return comps[:n] if n else comps


def perturbed_mp20(formulas: list[str], elements: list[str], n: int, seed: int) -> list:
    """MP-20 formulas with one element's count changed by one and, for a third, one added."""
    from pymatgen.core import Composition

    rng = np.random.default_rng(seed)
    out = []
    for f in rng.choice(formulas, size=n, replace=True):
        amounts = dict(Composition(f).get_el_amt_dict())
        el = rng.choice(sorted(amounts))
        amounts[el] = max(1.0, amounts[el] + rng.choice([-1.0, 1.0]))
        if rng.random() < 1 / 3:
            extra = str(rng.choice(elements))
            amounts[extra] = amounts.get(extra, 0.0) + 1.0
        out.append(Composition(amounts))
    return out


def per_system_loop(hull, comps: list) -> tuple[np.ndarray, list]:
    """The previous ``e_above_hull`` inner loop (hull energies only): the baseline."""
    out = np.full(len(comps), np.nan)
    reasons: list = [None] * len(comps)
    groups: dict[frozenset, list[int]] = defaultdict(list)
    for i, c in enumerate(comps):
        groups[frozenset(el.symbol for el in c.elements)].append(i)
    for chemsys, idx in groups.items():
        pd = hull._get_pd(chemsys)
        if isinstance(pd, str):
            for i in idx:
                reasons[i] = pd
            continue
        for i in idx:
            try:
                out[i] = pd.get_hull_energy_per_atom(comps[i])
            except Exception as exc:  # noqa: BLE001
                reasons[i] = f"hull query failed: {exc}"
    return out, reasons


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit, NaN where the other is NaN."""
    return bool(np.array_equal(np.isnan(a), np.isnan(b))
                and np.array_equal(a[~np.isnan(a)], b[~np.isnan(b)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mp20",
                    help="folder of mp20_all_formation_energies_ehull.csv.gz")
    ap.add_argument("--samples", type=Path, default=None,
                    help="generated samples, JSON(.gz) list of {'structure': dict}")
    ap.add_argument("--n", type=int, default=None,
                    help="compositions (default: all samples, or 2000 perturbed MP-20 formulas)")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON of the timings")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    csv = args.data_dir / "mp20_all_formation_energies_ehull.csv.gz"
    if not csv.is_file():
        print(f"skipped: {csv} not found (the MP-20 formation energies are needed for the hull)")
        return
    if args.samples is not None and not args.samples.is_file():
        print(f"skipped: samples file {args.samples} not found")
        return

    from xtalforge.data.mp20 import mp20_formation_hull

    t = time.perf_counter()
    hull = mp20_formation_hull(args.data_dir, {}, "hull energies only")
    t_build = time.perf_counter() - t
    if args.samples is not None:
        comps = sample_compositions(args.samples, args.n)
        source = f"generated samples {args.samples.name}"
    else:
        import pandas as pd

        formulas = pd.read_csv(csv)["pretty_formula"].tolist()
        comps = perturbed_mp20(formulas, sorted(hull.elements), args.n or 2000, args.seed)
        source = f"MP-20 formulas, perturbed stoichiometry (seed {args.seed})"
    systems = {frozenset(el.symbol for el in c.elements) for c in comps}
    by_size: dict[int, int] = defaultdict(int)
    for s in systems:
        by_size[len(s)] += 1
    info = {"machine": f"{platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} CPU cores", "python": platform.python_version(),
            "n_compositions": len(comps), "n_chemical_systems": len(systems),
            "systems_by_n_elements": dict(sorted(by_size.items())), "source": source,
            "hull": hull.convention["reference_set"], "hull_build_s": round(t_build, 2),
            "max_elements": hull.max_elements, "n_jobs": args.n_jobs}

    # warm-up: one untimed pass of the loop over the same compositions (imports, and the
    # cached properties of the reference compositions that PhaseDiagram sorts by), so that
    # the first timed method is not charged for them; then the hull's caches are emptied
    t = time.perf_counter()
    per_system_loop(hull, comps)
    info["warm_up_s"] = round(time.perf_counter() - t, 2)
    hull.clear_cache()
    print(json.dumps(info), flush=True)

    t = time.perf_counter()
    base, base_reasons = per_system_loop(hull, comps)
    t_base = time.perf_counter() - t

    hull.clear_cache()
    t = time.perf_counter()
    serial, serial_reasons = hull.hull_energies(comps, n_jobs=1)
    t_serial = time.perf_counter() - t

    hull.clear_cache()
    t = time.perf_counter()
    par, par_reasons = hull.hull_energies(comps, n_jobs=args.n_jobs)
    t_par = time.perf_counter() - t

    t = time.perf_counter()
    again, again_reasons = hull.hull_energies(comps, n_jobs=args.n_jobs)
    t_cached = time.perf_counter() - t

    checks = {
        "serial_equals_loop": same(serial, base) and serial_reasons == base_reasons,
        "parallel_equals_loop": same(par, base) and par_reasons == base_reasons,
        "cached_equals_loop": same(again, base) and again_reasons == base_reasons,
    }
    stages = {"per-system loop (baseline)": t_base, "hull_energies(n_jobs=1)": t_serial,
              f"hull_energies(n_jobs={args.n_jobs})": t_par,
              f"cached (second call, n_jobs={args.n_jobs})": t_cached}
    print(f"\n{info['machine']} | {len(comps)} compositions, {len(systems)} chemical systems "
          f"| {source}")
    for k, v in stages.items():
        print(f"  {k:40s} {v:9.2f} s   {t_base / max(v, 1e-9):8.1f}x")
    print(f"  covered: {int(np.isfinite(base).sum())} of {len(comps)}; "
          f"checks: {json.dumps(checks)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "info": info, "stages_s": stages,
            "ratios_vs_loop": {k: t_base / max(v, 1e-9) for k, v in stages.items()},
            "n_covered": int(np.isfinite(base).sum()), "checks": checks,
            "nan_reasons": sorted({r.split(":")[0] for r in base_reasons if r}),
        }, indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
        print(f"wrote {args.out}")
    if not all(checks.values()):
        raise SystemExit(f"results differ: {checks}")


if __name__ == "__main__":
    main()
