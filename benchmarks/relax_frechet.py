"""Batched relaxation with torch-sim's per-system Fréchet loop against the batched one.

torch-sim 0.3's Fréchet cell filter computes each system's cell forces with nine
``expm_frechet`` calls in a Python loop over the systems of the batch;
:func:`xtalforge.screening.relax.relax_batched` answers those calls from one batched
``torch.linalg.matrix_exp`` (:class:`xtalforge.screening.relax.BatchedExpmFrechet`). This
benchmark relaxes the same structures both ways in one run (same model, same batch, a fixed
number of FIRE steps so that both do the same work), prints the time of each, the ratio and
the largest difference in final energy; ``relax_batched`` logs the graph / model split of
each run.

With ``--fmax`` above zero both runs relax to convergence instead, and ``--ase K`` adds a
third leg: one ASE ``FIRE(FrechetCellFilter)`` per structure on the first K, so that a
disagreement between the batched relaxation and the ASE loop can be traced to the cell-force
method or to the optimiser. The JSON keeps one row per structure (energies, steps,
convergence of each leg) and the distribution of the pairwise differences.

Usage::

    python benchmarks/relax_frechet.py --structures samples.json.gz --n 1000 --steps 50 \
        --device cuda --graph-workers 8 --out relax_frechet.json
    python benchmarks/relax_frechet.py --n 96 --steps 30 --device cpu
    python benchmarks/relax_frechet.py --structures samples.json.gz --n 20 --fmax 0.05 \
        --steps 300 --ase 20 --device cpu --out three_way.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))
logger = logging.getLogger("relax_frechet")


def main() -> None:
    """Run both ways and print the comparison."""
    from chgnet_profile import load

    from xtalforge.screening import relax as relax_module
    from xtalforge.screening.mlip import get_energy_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--structures", type=Path, default=None,
                    help="JSON(.gz) of generated structures (default: MP-20 test crystals of "
                         "8-12 atoms, or random cubic cells without the data)")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--steps", type=int, default=30, help="FIRE steps (the most, with --fmax)")
    ap.add_argument("--fmax", type=float, default=0.0,
                    help="force criterion in eV/A (0: a fixed number of steps, none converge)")
    ap.add_argument("--ase", type=int, default=0,
                    help="also relax the first K structures one at a time with ASE")
    ap.add_argument("--valid-only", action="store_true",
                    help="leave out the structures that screening refuses to evaluate (atoms "
                         "closer than 0.5 A, collapsed cells), as a campaign round does")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--graph-workers", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    if args.valid_only:
        from xtalforge.screening.metrics import evaluation_rejection

        pool, source = load(args.structures, 4 * args.n)
        passing = [s for s in pool if evaluation_rejection(s) is None]
        structs = passing[:args.n]
        logger.info("%d of the first %d structures pass the evaluation guard; using %d",
                    len(passing), len(pool), len(structs))
    else:
        structs, source = load(args.structures, args.n)
    model = get_energy_model("chgnet", device=args.device, graph_workers=args.graph_workers)
    device_name = str(model.device)
    if device_name.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name(0)
    rows, results = {}, {}
    for label, batched in (("torch-sim loop", False), ("batched Frechet", True)):
        t0 = time.perf_counter()
        res = relax_module.relax_batched(model, structs, fmax=args.fmax, steps=args.steps,
                                         batch_frechet=batched)
        wall = time.perf_counter() - t0
        results[label] = res
        rows[label] = {"wall_s": wall, "structure_steps_per_s": sum(r.n_steps for r in res) / wall,
                       "n_ok": int(sum(r.error is None for r in res)),
                       "n_converged": int(sum(bool(r.converged) for r in res))}
        logger.info("%-16s %8.1f s  %8.1f structure-steps/s", label, wall,
                    rows[label]["structure_steps_per_s"])
    if args.ase:
        ase_model = get_energy_model("chgnet", device=args.device, mode="ase")
        ase_model.model = model.model
        t0 = time.perf_counter()
        results["ASE loop"] = ase_model.relax(structs[:args.ase], fmax=args.fmax,
                                              steps=args.steps, cell_filter="FrechetCellFilter")
        wall = time.perf_counter() - t0
        rows["ASE loop"] = {"wall_s": wall, "n": args.ase,
                            "structure_steps_per_s": sum(r.n_steps for r in results["ASE loop"])
                            / wall,
                            "n_converged": int(sum(bool(r.converged)
                                                   for r in results["ASE loop"]))}
        logger.info("%-16s %8.1f s  (%d structures)", "ASE loop", wall, args.ase)
    per_structure, pairs = structure_rows(structs, results), {}
    for a, b in (("torch-sim loop", "batched Frechet"), ("batched Frechet", "ASE loop"),
                 ("torch-sim loop", "ASE loop")):
        if a in results and b in results:
            pairs[f"{a} vs {b}"] = compare(per_structure, a, b, converged_only=args.fmax > 0)
            logger.info("%s vs %s: %s", a, b, json.dumps(pairs[f"{a} vs {b}"]))
    ratio = rows["torch-sim loop"]["wall_s"] / rows["batched Frechet"]["wall_s"]
    diff = pairs["torch-sim loop vs batched Frechet"]["max_abs_dE_meV_per_atom"]
    logger.info("batched Frechet / torch-sim loop speed-up %.2fx; max |dE| %s meV/atom "
                "(%d structures, %d steps, fmax %g, %s)", ratio, diff, len(structs), args.steps,
                args.fmax, device_name)
    out = {"info": {"device": device_name, "python": platform.python_version(),
                    "structures": source, "n": len(structs), "steps": args.steps,
                    "fmax": args.fmax, "valid_only": args.valid_only,
                    "graph_workers": args.graph_workers,
                    "filter": "FrechetCellFilter"},
           "rows": rows, "speedup": ratio,
           "max_abs_dE_eV_per_atom": None if diff is None else diff / 1e3,
           "pairs": pairs, "structures": per_structure}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


def structure_rows(structs: list, results: dict) -> list[dict]:
    """One row per structure: formula, size and each leg's energy, steps and convergence."""
    out = []
    for i, s in enumerate(structs):
        row = {"index": i, "formula": s.composition.reduced_formula, "n_atoms": len(s)}
        for label, res in results.items():
            if i < len(res):
                r = res[i]
                e = r.energy_per_atom
                row[label] = {"energy_per_atom": None if e is None or not np.isfinite(e)
                              else float(e), "steps": int(r.n_steps),
                              "converged": bool(r.converged)}
        out.append(row)
    return out


def compare(rows: list[dict], a: str, b: str, converged_only: bool) -> dict:
    """Distribution of |E_a - E_b| per atom over the structures both legs finished.

    With ``converged_only`` only the structures that both legs relaxed to the force
    criterion count (the acceptance test of a relaxation); the others are counted apart.
    """
    de, idx = [], []
    for row in rows:
        ra, rb = row.get(a), row.get(b)
        if not ra or not rb or ra["energy_per_atom"] is None or rb["energy_per_atom"] is None:
            continue
        if converged_only and not (ra["converged"] and rb["converged"]):
            continue
        de.append(abs(ra["energy_per_atom"] - rb["energy_per_atom"]) * 1e3)
        idx.append(row["index"])
    if not de:
        return {"n": 0, "max_abs_dE_meV_per_atom": None}
    d = np.array(de)
    order = np.argsort(-d)[:5]
    return {"n": len(de), "max_abs_dE_meV_per_atom": float(d.max()),
            "median_abs_dE_meV_per_atom": float(np.median(d)),
            "n_within_5meV": int((d < 5).sum()), "n_above_100meV": int((d > 100).sum()),
            "largest": [{"index": idx[k], "abs_dE_meV_per_atom": float(d[k])} for k in order]}


if __name__ == "__main__":
    main()
