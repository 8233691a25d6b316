"""Uniqueness, novelty and SMACT for 10,000 "generated" structures: xtalforge vs Chemeleon2's way.

The generated set is made from MP-20 test structures (seeded): unmodified structures,
perturbed copies (0.02-0.1 Å), element substitutions (new or existing formulas), symmetry-
equivalent duplicates of earlier members (supercells, permuted sites, translated origin,
rescaled volume) and perturbed MP-20 validation structures (not novel), so that matching
does realistic work. Reference set: the 9,047 MP-20 validation structures.

Both implementations run in the same process, on the same parsed structures, with identical
StructureMatcher flags (asserted) and must give identical per-structure flags (asserted):

* baseline (Chemeleon2, serial): ``StructureMatcher().group_structures(gen)`` (first of each
  group unique); for each generated structure ``any(sm.fit(gen, ref))`` over the references
  of the same reduced formula; ``smact_validity(comp, oxidation_states_set="icsd24")``.
* xtalforge: :func:`xtalforge.screening.metrics.compute_metrics` (reduce once, formula + site
  count buckets, ``fit(..., skip_structure_reduction=True)``, ``--n-jobs`` worker processes).

Usage::

    python benchmarks/metrics.py [--n 10000] [--n-jobs 16] [--data ../shared/data/mp20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")

SUBSTITUTIONS = {
    "Na": "K", "K": "Rb", "Li": "Na", "Mg": "Ca", "Ca": "Sr", "Sr": "Ba", "Al": "Ga",
    "Ga": "In", "Si": "Ge", "Ge": "Sn", "O": "S", "S": "Se", "Se": "Te", "F": "Cl",
    "Cl": "Br", "Br": "I", "Fe": "Co", "Co": "Ni", "Ni": "Cu", "Mn": "Fe", "Ti": "Zr",
    "Zr": "Hf", "La": "Nd", "Nd": "Sm", "N": "P", "P": "As", "Cr": "Mo", "V": "Nb",
}


def _parse(df: pd.DataFrame) -> list:
    from pymatgen.core import Structure

    return [Structure.from_str(c, fmt="cif") for c in df["cif"]]


def make_generated(test: list, val: list, n: int, seed: int = 0) -> tuple[list, dict]:
    """Build ``n`` structures with planted duplicates and near-duplicates."""
    from pymatgen.core import Structure

    rng = np.random.default_rng(seed)
    out: list = []
    kinds: dict[str, int] = {}

    def add(s, kind):
        out.append(s)
        kinds[kind] = kinds.get(kind, 0) + 1

    while len(out) < n:
        r = rng.random()
        if r < 0.40 or not out:
            add(test[int(rng.integers(len(test)))].copy(), "test")
        elif r < 0.55:
            s = test[int(rng.integers(len(test)))].copy()
            s.perturb(float(rng.uniform(0.02, 0.1)))
            add(s, "perturbed")
        elif r < 0.70:
            s = test[int(rng.integers(len(test)))].copy()
            els = [e.symbol for e in s.composition.elements if e.symbol in SUBSTITUTIONS]
            if els:
                e = els[int(rng.integers(len(els)))]
                s.replace_species({e: SUBSTITUTIONS[e]})
            add(s, "substituted")
        elif r < 0.90:
            s = out[int(rng.integers(len(out)))].copy()
            how = int(rng.integers(4))
            if how == 0 and len(s) <= 10:
                s.make_supercell([1, 1, 2])
            elif how == 1:
                order = rng.permutation(len(s))
                s = Structure.from_sites([s[int(i)] for i in order])
            elif how == 2:
                s.translate_sites(list(range(len(s))), rng.random(3))
            else:
                s.scale_lattice(s.volume * float(rng.uniform(0.9, 1.1)))
            add(s, "duplicate")
        else:
            s = val[int(rng.integers(len(val)))].copy()
            s.perturb(0.02)
            add(s, "val")
    return out[:n], kinds


def matcher_flags(sm) -> dict:
    """The tolerances and switches a StructureMatcher was built with."""
    return {"ltol": sm.ltol, "stol": sm.stol, "angle_tol": sm.angle_tol,
            "primitive_cell": sm._primitive_cell, "scale": sm._scale,
            "attempt_supercell": sm._supercell, "allow_subset": sm._subset,
            "comparator": type(sm._comparator).__name__}


def chemeleon_way(gen: list, val: list, matcher_kwargs: dict) -> dict:
    """Serial Chemeleon2-style evaluation (pymatgen calls, no caching of reductions)."""
    from collections import defaultdict

    from pymatgen.analysis.structure_matcher import StructureMatcher
    from smact.screening import smact_validity

    sm = StructureMatcher(**matcher_kwargs)
    timings = {}
    t = time.perf_counter()
    groups = sm.group_structures(gen)
    first = {id(g[0]) for g in groups}
    unique = np.array([id(s) in first for s in gen])
    timings["unique"] = time.perf_counter() - t
    t = time.perf_counter()
    by_formula = defaultdict(list)
    for r in val:
        by_formula[r.composition.reduced_formula].append(r)
    novel = np.array([not any(sm.fit(s, r) for r in by_formula.get(
        s.composition.reduced_formula, [])) for s in gen])
    timings["novel"] = time.perf_counter() - t
    t = time.perf_counter()
    smact = []
    for s in gen:
        try:
            smact.append(bool(smact_validity(s.composition, oxidation_states_set="icsd24")))
        except TypeError:
            smact.append(False)
    timings["smact"] = time.perf_counter() - t
    timings["total"] = sum(timings.values())
    return {"unique": unique, "novel": novel, "smact": np.array(smact), "timings": timings,
            "flags": matcher_flags(sm)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mp20")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--n-jobs", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from xtalforge.screening.metrics import (
        DEFAULT_MATCHER_KWARGS,
        ReferenceSet,
        compute_metrics,
        make_matcher,
    )

    t = time.perf_counter()
    test = _parse(pd.read_csv(args.data / "test.csv.gz"))
    val_df = pd.read_csv(args.data / "val.csv.gz")
    val = _parse(val_df)
    t_parse = time.perf_counter() - t
    gen, kinds = make_generated(test, val, args.n, args.seed)
    print(f"parsed {len(test)} test + {len(val)} val CIFs in {t_parse:.1f} s; generated "
          f"{len(gen)} structures {kinds}; n_jobs={args.n_jobs}, cpus={os.cpu_count()}",
          flush=True)

    kw = dict(DEFAULT_MATCHER_KWARGS)
    sm = make_matcher(**kw)
    t = time.perf_counter()
    ref = ReferenceSet(val, ids=val_df["material_id"].tolist(), matcher_kwargs=kw)
    # min_distance=None: the same work as the baseline (no 0.5 A distance check)
    rep = compute_metrics(gen, reference=ref, n_jobs=args.n_jobs, matcher_kwargs=kw,
                          min_distance=None)
    t_ours = time.perf_counter() - t
    df = rep.per_structure
    ours = {"unique": df["unique"].to_numpy(), "novel": df["novel"].to_numpy(),
            "smact": df["smact_valid"].to_numpy()}
    print(f"xtalforge (n_jobs={args.n_jobs}): {t_ours:.2f} s  "
          f"uniqueness={ours['unique'].mean():.4f} novelty={ours['novel'].mean():.4f} "
          f"smact={ours['smact'].mean():.4f}", flush=True)
    # second call with the cached reference reductions (the RL-reward situation)
    t = time.perf_counter()
    compute_metrics(gen, reference=ref, n_jobs=args.n_jobs, matcher_kwargs=kw,
                    min_distance=None)
    t_ours_warm = time.perf_counter() - t
    print(f"xtalforge again, reference reductions cached: {t_ours_warm:.2f} s", flush=True)
    result = {"n": len(gen), "kinds": kinds, "n_jobs": args.n_jobs, "cpus": os.cpu_count(),
              "parse_s": t_parse, "xtalforge_s": t_ours, "xtalforge_warm_s": t_ours_warm,
              "uniqueness": float(ours["unique"].mean()),
              "novelty": float(ours["novel"].mean()),
              "smact": float(ours["smact"].mean())}
    if not args.skip_baseline:
        base = chemeleon_way(gen, val, kw)
        flags_ours = matcher_flags(sm)
        assert base["flags"] == flags_ours, (base["flags"], flags_ours)
        for key in ("unique", "novel", "smact"):
            n_diff = int((base[key] != ours[key]).sum())
            assert n_diff == 0, f"{key}: {n_diff} structures differ"
        tb = base["timings"]
        print(f"Chemeleon2 way (serial): {tb['total']:.2f} s (group_structures "
              f"{tb['unique']:.2f} s, novelty fits {tb['novel']:.2f} s, SMACT {tb['smact']:.2f} s)")
        print(f"identical per-structure unique/novel/SMACT flags: yes; flags {flags_ours}")
        print(f"speed-up: {tb['total'] / t_ours:.1f}x (cold), {tb['total'] / t_ours_warm:.1f}x "
              f"(reference reductions cached)")
        result.update({"baseline_s": tb["total"], "baseline_timings": tb,
                       "speedup": tb["total"] / t_ours,
                       "speedup_warm": tb["total"] / t_ours_warm, "flags": flags_ours,
                       "identical": True})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
