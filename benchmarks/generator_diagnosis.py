"""Where do a generator's failures come from? Samples against the training crystals.

Reads the samples of one or more snapshots (``samples_<tag>_<step>.json.gz`` written by
``benchmarks/generator_scaling.py eval``: each entry a structure dict or ``None`` with its
``e_above_hull``) and the project's MP-20 training split, and compares the distributions of

* volume per atom, lattice lengths and angles (the lattice),
* the shortest interatomic distance, periodic images included (the positions),
* space groups (``SpacegroupAnalyzer``, symprec 0.1) (symmetry),
* atom counts and element frequencies (the composition),
* E_hull by number of elements (which chemistries fail).

Writes ``benchmarks/figures/generator_diagnosis.png`` (or ``--figure``) and a JSON summary
with the quantiles of each distribution, the Wasserstein distance between samples and
training crystals per quantity (scipy), and the metastable share by number of elements.

Example::

    python benchmarks/generator_diagnosis.py out/sc/samples_A_16000.json.gz \
        --label "8x384, 16k steps" --train-sample 3000
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mp20"
logger = logging.getLogger("generator_diagnosis")


def shortest_distance(s) -> float:
    """Shortest interatomic distance of a crystal, periodic images included."""
    d = min(s.lattice.get_lll_reduced_lattice().abc)
    if len(s) > 1:
        dm = s.distance_matrix + np.eye(len(s)) * 1e3
        d = min(d, float(dm.min()))
    return float(d)


def spacegroup(s) -> int:
    """Space-group number at symprec 0.1 (0 when spglib fails)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(SpacegroupAnalyzer(s, symprec=0.1).get_space_group_number())
    except Exception:  # noqa: BLE001 - spglib failure on a distorted cell
        return 0


def describe(structures: list) -> dict[str, np.ndarray]:
    """Per-structure quantities of the comparison."""
    q: dict[str, list] = {k: [] for k in ("volume_per_atom", "a", "b", "c", "alpha", "beta",
                                          "gamma", "min_distance", "spacegroup", "num_atoms",
                                          "num_elements")}
    for s in structures:
        lat = s.lattice
        q["volume_per_atom"].append(s.volume / len(s))
        for k, v in zip(("a", "b", "c"), sorted(lat.abc), strict=True):
            q[k].append(v)
        for k, v in zip(("alpha", "beta", "gamma"), lat.angles, strict=True):
            q[k].append(v)
        q["min_distance"].append(shortest_distance(s))
        q["spacegroup"].append(spacegroup(s))
        q["num_atoms"].append(len(s))
        q["num_elements"].append(len(s.composition.elements))
    return {k: np.asarray(v, dtype=float) for k, v in q.items()}


def element_frequency(structures: list) -> Counter:
    """Fraction of structures containing each element."""
    c: Counter = Counter()
    for s in structures:
        c.update({el.symbol for el in s.composition.elements})
    n = max(1, len(structures))
    return Counter({k: v / n for k, v in c.items()})


def crystal_system(sg: np.ndarray) -> np.ndarray:
    """Crystal system index 0..6 (triclinic..cubic) of space-group numbers (0: unknown)."""
    edges = np.array([0, 2, 15, 74, 142, 167, 194, 230])
    return np.searchsorted(edges, sg, side="left") - 1


def main(argv: list[str] | None = None) -> None:
    from scipy.stats import wasserstein_distance

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("samples", nargs="+", help="samples_<tag>_<step>.json.gz files")
    ap.add_argument("--label", action="append", default=None, help="one per samples file")
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--train-sample", type=int, default=3000,
                    help="training crystals compared (random subset; 0: all)")
    ap.add_argument("--figure", default=str(ROOT / "benchmarks/figures/generator_diagnosis.png"))
    ap.add_argument("--json", default=str(ROOT / "benchmarks/generator_diagnosis.json"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--title", default="Generated samples against MP-20 training crystals "
                    "(samples: DDIM 50, eta 1; E_hull: CHGNet single points, MP-20 formation hull)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    from pymatgen.core import Structure

    from xtalforge.data.mp20 import load_mp20_split

    split = load_mp20_split(args.data_dir, workers=args.workers)
    train = split.train
    if args.train_sample and args.train_sample < len(train):
        idx = np.random.default_rng(0).choice(len(train), args.train_sample, replace=False)
        train = [train[i] for i in sorted(idx)]
    sets = {"MP-20 training crystals": (train, None)}
    labels = args.label or [Path(p).name.removeprefix("samples_").split(".")[0]
                            for p in args.samples]
    for path, label in zip(args.samples, labels, strict=True):
        with gzip.open(path, "rt") as fh:
            rows = json.load(fh)
        structs, ehull = [], []
        for r in rows:
            if r["structure"] is None:
                continue
            structs.append(Structure.from_dict(r["structure"]))
            e = r.get("e_above_hull")
            ehull.append(np.nan if e is None else float(e))
        sets[label] = (structs, np.asarray(ehull))
        logger.info("%s: %d of %d samples decoded", label, len(structs), len(rows))
    desc = {name: describe(s) for name, (s, _) in sets.items()}
    elems = {name: element_frequency(s) for name, (s, _) in sets.items()}

    ref = desc["MP-20 training crystals"]
    summary: dict = {"train_sample": len(train), "sets": {}}
    for name, d in desc.items():
        entry: dict = {"n": len(sets[name][0])}
        for k, v in d.items():
            fin = v[np.isfinite(v)]
            entry[k] = {"q10": float(np.quantile(fin, 0.1)), "median": float(np.median(fin)),
                        "q90": float(np.quantile(fin, 0.9))} if fin.size else None
            if name != "MP-20 training crystals" and fin.size:
                entry[k]["wasserstein_to_train"] = float(wasserstein_distance(fin, ref[k]))
        entry["frac_min_distance_below_1A"] = float((d["min_distance"] < 1.0).mean())
        entry["frac_symmetric_P1_or_P-1"] = float(np.isin(d["spacegroup"], [0, 1, 2]).mean())
        eh = sets[name][1]
        if eh is not None:
            by = {}
            for k in range(1, 6):
                m = d["num_elements"] == k if k < 5 else d["num_elements"] >= 5
                e = eh[m]
                by[f"{k}{'+' if k == 5 else ''}"] = {
                    "n": int(m.sum()),
                    "metastable_share": float((e < 0.1).sum() / max(1, m.sum())),
                    "median_e_hull": float(np.nanmedian(e)) if np.isfinite(e).any() else None}
            entry["by_num_elements"] = by
        top = sorted(elems[name].items(), key=lambda kv: -kv[1])[:15]
        entry["top_elements"] = {k: round(v, 4) for k, v in top}
        summary["sets"][name] = entry

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(14, 11))
    panels = [("volume_per_atom", "volume per atom (Å³)", (0, 60)),
              ("c", "longest lattice length (Å)", (0, 25)),
              ("alpha", "lattice angle α (°)", (30, 150)),
              ("min_distance", "shortest interatomic distance (Å)", (0, 4)),
              ("num_atoms", "atoms per cell", (0, 21)),
              ("num_elements", "elements per cell", (0.5, 6.5))]
    for ax, (k, title, rng) in zip(axes.flat[:6], panels, strict=True):
        for name, d in desc.items():
            ax.hist(np.clip(d[k], *rng), bins=40, range=rng, density=True, histtype="step",
                    lw=1.5, label=name)
        ax.set_title(title, fontsize=10)
    axes.flat[0].legend(fontsize=8)
    ax = axes.flat[6]
    names = ["tricl.", "monocl.", "orthorh.", "tetrag.", "trig.", "hexag.", "cubic"]
    w = 0.8 / len(desc)
    for i, (name, d) in enumerate(desc.items()):
        cs = crystal_system(d["spacegroup"][d["spacegroup"] > 0])
        frac = np.bincount(cs, minlength=7)[:7] / max(1, len(d["spacegroup"]))
        ax.bar(np.arange(7) + i * w, frac, w, label=name)
    ax.set_xticks(np.arange(7) + 0.4 - w / 2, names, fontsize=8)
    ax.set_title("crystal system (SpacegroupAnalyzer, symprec 0.1)", fontsize=10)
    ax = axes.flat[7]
    allel = sorted(elems["MP-20 training crystals"],
                   key=lambda e: -elems["MP-20 training crystals"][e])[:25]
    for i, (name, c) in enumerate(elems.items()):
        ax.bar(np.arange(len(allel)) + i * w, [c.get(e, 0) for e in allel], w, label=name)
    ax.set_xticks(np.arange(len(allel)), allel, fontsize=7, rotation=90)
    ax.set_title("share of cells containing the element (25 most common in training)",
                 fontsize=10)
    ax = axes.flat[8]
    for i, (name, (_, eh)) in enumerate(sets.items()):
        if eh is None:
            continue
        ne = desc[name]["num_elements"]
        share = [(eh[np.minimum(ne, 5) == k] < 0.1).mean() if (np.minimum(ne, 5) == k).any()
                 else 0 for k in range(1, 6)]
        ax.bar(np.arange(1, 6) + i * w, np.asarray(share) * 100, w, label=name, color=f"C{i}")
    ax.set_xticks(np.arange(1, 6), ["1", "2", "3", "4", "5+"])
    ax.set_title("metastable share (%) by number of elements", fontsize=10)
    fig.suptitle(args.title, fontsize=11)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    Path(args.json).write_text(json.dumps(summary, indent=1))
    for name, e in summary["sets"].items():
        print(f"== {name} (n={e['n']})")
        for k in ("volume_per_atom", "c", "min_distance", "num_atoms", "num_elements"):
            if e.get(k):
                w2 = e[k].get("wasserstein_to_train")
                print(f"  {k:<16} median {e[k]['median']:.3f}  q10 {e[k]['q10']:.3f}  "
                      f"q90 {e[k]['q90']:.3f}" + (f"  W1 to train {w2:.3f}" if w2 else ""))
        print(f"  shortest distance < 1 Å: {100 * e['frac_min_distance_below_1A']:.1f}%;  "
              f"P1/P-1 or no symmetry: {100 * e['frac_symmetric_P1_or_P-1']:.1f}%")
        for k, v in (e.get("by_num_elements") or {}).items():
            print(f"  {k} elements: n={v['n']} metastable {100 * v['metastable_share']:.1f}% "
                  f"median E_hull {v['median_e_hull']}")
    print(f"wrote {args.figure} and {args.json}")


if __name__ == "__main__":
    main()
