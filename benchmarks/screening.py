"""Single-point throughput: batched MACE vs one-structure-at-a-time ASE, and CHGNet.

MACE: a randomly initialised MACE-MP-0-"medium"-sized model (hidden irreps 128x0e+128x1o,
max_ell 3, 2 interactions, correlation 3, r_max 6 Å, 94 elements; the cost does not depend on
the weight values), energy + forces + stress, on ~10-atom cells (MP-20 test structures with
8-12 atoms, or random cells when the data is absent). Measured in the same run:

* ``batched``: :class:`xtalforge.screening.mlip.MACEEnergyModel.predict` (one forward over a
  ``torch_geometric`` batch), at each ``--batch-sizes``, with graphs built in this process
  and with ``--graph-workers`` worker processes;
* ``ase``: mace-torch's ``MACECalculator`` one structure at a time (how Chemeleon2 and
  CrystalFormer-RL evaluate).

CHGNet (``--chgnet``): its batched ``predict_structure`` vs an ASE ``CHGNetCalculator`` loop.

Usage::

    python benchmarks/screening.py --device cuda --n 2048 --n-ase 200 --out out/screening.json
    python benchmarks/screening.py --device cpu --n 64 --n-ase 16 --chgnet --chgnet-n 100
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")


def load_structures(n: int, path: Path | None, seed: int = 0) -> tuple[list, str]:
    """~10-atom structures: a JSON(.gz) list of Structure dicts, MP-20 test CSV, or random."""
    from pymatgen.core import Lattice, Structure

    if path is not None and path.exists():
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt") as fh:
            dicts = json.load(fh)
        structs = [Structure.from_dict(d) for d in dicts]
        src = str(path)
    else:
        csv = ROOT.parent / "shared" / "data" / "mp20" / "test.csv.gz"
        if csv.exists():
            import pandas as pd

            df = pd.read_csv(csv)
            df = df[(df.num_atoms >= 8) & (df.num_atoms <= 12)].sample(
                min(n, 4000), random_state=seed, replace=False)
            structs = [Structure.from_str(c, fmt="cif") for c in df.cif]
            src = "MP-20 test (8-12 atoms)"
        else:
            rng = np.random.default_rng(seed)
            structs = []
            while len(structs) < n:
                k = int(rng.integers(8, 13))
                els = rng.choice(np.arange(1, 84), size=3, replace=False)
                species = [int(els[i % 3]) for i in range(k)]
                a = (k * 18.0) ** (1 / 3)
                s = Structure(Lattice.cubic(a), species, rng.random((k, 3)))
                if s.distance_matrix[np.triu_indices(k, 1)].min() > 1.5:
                    structs.append(s)
            src = "random cubic cells (18 A^3/atom)"
    reps = int(np.ceil(n / len(structs)))
    return (structs * reps)[:n], src


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench_mace(structs: list, device: str, batch_sizes: list[int], n_ase: int,
               graph_workers: int, dtype: str) -> dict:
    import torch

    from xtalforge.screening.mlip import MACEEnergyModel, build_mace_model

    module = build_mace_model(range(1, 95), hidden_irreps="128x0e+128x1o", max_ell=3,
                              num_interactions=2, r_max=6.0, correlation=3, num_bessel=10,
                              mlp_irreps="16x0e", radial_mlp=(64, 64, 64),
                              avg_num_neighbors=61.0, seed=0, dtype=dtype)
    n_params = sum(p.numel() for p in module.parameters())
    model = MACEEnergyModel.from_module(module, device=device, dtype=dtype,
                                        force_threshold=None)
    out: dict = {"n_params": int(n_params), "dtype": dtype, "n_structures": len(structs),
                 "mean_atoms": float(np.mean([len(s) for s in structs]))}
    t = time.perf_counter()
    graphs = [model._graph(s) for s in structs[:256]]
    out["graph_build_ms_per_structure"] = (time.perf_counter() - t) / len(graphs) * 1e3
    out["mean_edges"] = float(np.mean([g.edge_index.shape[1] for g in graphs]))
    # warm-up (kernels, allocator)
    model.predict(structs[: max(batch_sizes)], batch_size=max(batch_sizes),
                  compute_stress=True)
    res_batched = None
    for workers in sorted({0, graph_workers}):
        model.graph_workers = workers
        if workers:
            try:  # start the pool
                model.predict(structs[: max(batch_sizes)], batch_size=max(batch_sizes),
                              compute_stress=True)
            except Exception as exc:  # noqa: BLE001
                out[f"graph_workers{workers}_error"] = f"{type(exc).__name__}: {exc}"
                model.close()
                continue
        for bs in batch_sizes:
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            key = f"batched_bs{bs}_workers{workers}"
            t = time.perf_counter()
            try:
                res = model.predict(structs, batch_size=bs, compute_stress=True)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next setting
                out[key] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"MACE batched bs={bs} graph_workers={workers}: failed: {exc}")
                model.close()
                continue
            _sync(device)
            dt = time.perf_counter() - t
            out[key] = {
                "structures_per_s": len(structs) / dt,
                "seconds": dt,
                "n_ok": int(sum(r.ok for r in res)),
            }
            if device.startswith("cuda"):
                out[key]["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
            print(f"MACE batched bs={bs:4d} graph_workers={workers:2d}: "
                  f"{len(structs) / dt:8.1f} structures/s ({dt:.2f} s, "
                  f"{out[key]['n_ok']} ok)", flush=True)
            if workers == 0:
                res_batched = res
    model.close()
    # one structure at a time through mace-torch's ASE calculator
    sub = structs[:n_ase]
    calc_model = model
    loop = calc_model.predict_ase_loop(sub[:4], compute_stress=True)  # warm-up
    _sync(device)
    t = time.perf_counter()
    loop = calc_model.predict_ase_loop(sub, compute_stress=True)
    _sync(device)
    dt = time.perf_counter() - t
    out["ase_loop"] = {"structures_per_s": len(sub) / dt, "seconds": dt, "n": len(sub)}
    print(f"MACE ASE MACECalculator loop:           {len(sub) / dt:8.1f} structures/s "
          f"({dt:.2f} s for {len(sub)})", flush=True)
    de = [abs(a.energy - b.energy) / a.n_atoms for a, b in zip(loop, res_batched[: len(sub)],
                                                               strict=True)]
    out["max_abs_energy_diff_per_atom_batched_vs_ase"] = float(np.max(de))
    best = max(v.get("structures_per_s", 0.0) for k, v in out.items()
               if k.startswith("batched"))
    out["speedup_best_batched_vs_ase"] = best / out["ase_loop"]["structures_per_s"]
    print(f"max |E_batched - E_ase|/atom = {out['max_abs_energy_diff_per_atom_batched_vs_ase']:.2e}"
          f" eV; best batched / ASE = {out['speedup_best_batched_vs_ase']:.1f}x")
    return out


def bench_chgnet(structs: list, device: str, batch_sizes: list[int]) -> dict:
    import torch

    from xtalforge.screening.mlip import get_energy_model

    out: dict = {"n_structures": len(structs), "torch_threads": torch.get_num_threads()}
    ase_model = get_energy_model("chgnet", device=device, mode="ase", force_threshold=None)
    ase_model.predict(structs[:4], compute_stress=True)
    t = time.perf_counter()
    r_ase = ase_model.predict(structs, compute_stress=True)
    dt = time.perf_counter() - t
    out["ase_loop"] = {"structures_per_s": len(structs) / dt, "seconds": dt}
    print(f"CHGNet ASE loop ({device}):      {len(structs) / dt:8.1f} structures/s ({dt:.2f} s)")
    b_model = get_energy_model("chgnet", device=device, mode="batched", force_threshold=None)
    b_model.model = ase_model.model
    for bs in batch_sizes:
        b_model.predict(structs[:bs], batch_size=bs, compute_stress=True)
        _sync(device)
        t = time.perf_counter()
        r_b = b_model.predict(structs, batch_size=bs, compute_stress=True)
        _sync(device)
        dt = time.perf_counter() - t
        out[f"batched_bs{bs}"] = {"structures_per_s": len(structs) / dt, "seconds": dt}
        print(f"CHGNet batched bs={bs:3d} ({device}): {len(structs) / dt:8.1f} structures/s "
              f"({dt:.2f} s)")
    de = [abs(a.energy_per_atom - b.energy_per_atom) for a, b in zip(r_ase, r_b, strict=True)
          if a.ok and b.ok]
    out["max_abs_energy_diff_per_atom"] = float(np.max(de)) if de else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=1024, help="structures for the batched runs")
    ap.add_argument("--n-ase", type=int, default=128, help="structures for the ASE loop")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--graph-workers", type=int, default=0,
                    help="also time with graphs built in this many worker processes")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--structures", type=Path, default=None,
                    help="JSON(.gz) list of pymatgen Structure dicts")
    ap.add_argument("--save-structures", type=Path, default=None)
    ap.add_argument("--no-mace", action="store_true")
    ap.add_argument("--chgnet", action="store_true", help="also benchmark CHGNet")
    ap.add_argument("--chgnet-device", default="cpu")
    ap.add_argument("--chgnet-n", type=int, default=100)
    ap.add_argument("--chgnet-batch-sizes", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    structs, src = load_structures(args.n, args.structures)
    if args.save_structures:
        with gzip.open(args.save_structures, "wt") as fh:
            json.dump([s.as_dict() for s in structs], fh)
    info = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "structures": src,
    }
    print(json.dumps(info))
    result: dict = {"info": info}

    def save() -> None:  # after each part, so that a later failure keeps what was measured
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
            print(f"wrote {args.out}")

    if not args.no_mace:
        result["mace"] = bench_mace(structs, device, args.batch_sizes, args.n_ase,
                                    args.graph_workers, args.dtype)
        save()
    if args.chgnet:
        result["chgnet"] = bench_chgnet(structs[: args.chgnet_n], args.chgnet_device,
                                        args.chgnet_batch_sizes)
        save()


if __name__ == "__main__":
    main()
