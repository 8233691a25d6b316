"""Batched relaxation with torch-sim's per-system Fréchet loop against the batched one.

torch-sim 0.3's Fréchet cell filter computes each system's cell forces with nine
``expm_frechet`` calls in a Python loop over the systems of the batch;
:func:`xtalforge.screening.relax.relax_batched` answers those calls from one batched
``torch.linalg.matrix_exp`` (:class:`xtalforge.screening.relax.BatchedExpmFrechet`). This
benchmark relaxes the same structures both ways in one run (same model, same batch, a fixed
number of FIRE steps so that both do the same work), prints the time of each, the ratio and
the largest difference in final energy; ``relax_batched`` logs the graph / model split of
each run.

Usage::

    python benchmarks/relax_frechet.py --structures samples.json.gz --n 1000 --steps 50 \
        --device cuda --graph-workers 8 --out relax_frechet.json
    python benchmarks/relax_frechet.py --n 96 --steps 30 --device cpu
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
    ap.add_argument("--steps", type=int, default=30, help="FIRE steps (fmax 0: none converge)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--graph-workers", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    structs, source = load(args.structures, args.n)
    model = get_energy_model("chgnet", device=args.device, graph_workers=args.graph_workers)
    device_name = str(model.device)
    if device_name.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name(0)
    rows = {}
    energies = {}
    for label, batched in (("torch-sim loop", False), ("batched Frechet", True)):
        t0 = time.perf_counter()
        res = relax_module.relax_batched(model, structs, fmax=0.0, steps=args.steps,
                                         batch_frechet=batched)
        wall = time.perf_counter() - t0
        energies[label] = np.array([r.energy_per_atom for r in res], dtype=float)
        rows[label] = {"wall_s": wall, "structure_steps_per_s": sum(r.n_steps for r in res) / wall,
                       "n_ok": int(sum(r.error is None for r in res))}
        logger.info("%-16s %8.1f s  %8.1f structure-steps/s", label, wall,
                    rows[label]["structure_steps_per_s"])
    a, b = energies["torch-sim loop"], energies["batched Frechet"]
    both = np.isfinite(a) & np.isfinite(b)
    diff = float(np.abs(a[both] - b[both]).max()) if both.any() else float("nan")
    ratio = rows["torch-sim loop"]["wall_s"] / rows["batched Frechet"]["wall_s"]
    logger.info("batched Frechet / torch-sim loop speed-up %.2fx; max |dE| %.2e eV/atom "
                "(%d structures, %d steps, %s)", ratio, diff, len(structs), args.steps,
                device_name)
    out = {"info": {"device": device_name, "python": platform.python_version(),
                    "structures": source, "n": len(structs), "steps": args.steps,
                    "graph_workers": args.graph_workers, "filter": "FrechetCellFilter"},
           "rows": rows, "speedup": ratio, "max_abs_dE_eV_per_atom": diff}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
