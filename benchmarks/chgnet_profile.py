"""Where CHGNet single points spend their time: graph construction vs model compute.

Measured in one run on the same structures (generated samples from a JSON(.gz) file of
``{"structure": ...}`` records or a list of Structure dicts, else MP-20 test crystals):

* ``ase``: one ``CHGNetCalculator`` call per structure (the per-structure baseline);
* ``predict_structure``: CHGNet's own batched path (``mode="batched"``);
* ``fast``: :mod:`xtalforge.screening.chgnet_batch`, split into its parts: graph
  construction (CHGNet's converter), host collation + copy to the device, forward +
  backward (forces and stress), copy back; then end to end with ``--graph-workers``
  processes building the graphs of the next batches while the model runs.

Usage::

    python benchmarks/chgnet_profile.py --device cuda --n 4096 --batch-sizes 256 1024 \
        --graph-workers 8 --structures samples.json.gz
    python benchmarks/chgnet_profile.py --device cpu --n 128 --batch-sizes 64 --n-ase 64
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def load(path: Path | None, n: int) -> tuple[list, str]:
    from pymatgen.core import Structure

    if path is not None:
        with (gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)) as fh:
            data = json.load(fh)
        dicts = [d.get("structure") if isinstance(d, dict) and "structure" in d else d
                 for d in data]
        structs = [Structure.from_dict(d) for d in dicts if d]
        return (structs * (n // max(len(structs), 1) + 1))[:n], str(path)
    from screening import load_structures

    return load_structures(n, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--n-ase", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[256])
    ap.add_argument("--graph-workers", type=int, default=0)
    ap.add_argument("--structures", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import numpy as np
    import torch

    from xtalforge.screening import chgnet_batch as cb
    from xtalforge.screening.mlip import _raw_frac, get_energy_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    structs, src = load(args.structures, args.n)
    info = {"device": device,
            "device_name": torch.cuda.get_device_name() if cuda else
            f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "structures": src, "n": len(structs),
            "mean_atoms": float(np.mean([len(s) for s in structs]))}
    print(json.dumps(info), flush=True)
    out: dict = {"info": info}
    fast = get_energy_model("chgnet", device=device, force_threshold=None)
    ase = get_energy_model("chgnet", device=device, mode="ase", force_threshold=None)
    batched = get_energy_model("chgnet", device=device, mode="batched", force_threshold=None)
    ase.model = batched.model = fast.model

    sub = structs[: args.n_ase]
    ase.predict(sub[:4])
    t = time.perf_counter()
    ase.predict(sub, compute_stress=True)
    sync()
    out["ase_per_s"] = len(sub) / (time.perf_counter() - t)
    print(f"ASE CHGNetCalculator loop:        {out['ase_per_s']:8.1f} structures/s", flush=True)

    for bs in args.batch_sizes:
        batched.predict(structs[:bs], batch_size=bs, compute_stress=True)
        sync()
        t = time.perf_counter()
        batched.predict(structs, batch_size=bs, compute_stress=True)
        sync()
        rate = len(structs) / (time.perf_counter() - t)
        out[f"predict_structure_bs{bs}_per_s"] = rate
        print(f"predict_structure bs={bs:5d}:     {rate:8.1f} structures/s", flush=True)

        # fast path, serial, by part
        spec = fast.graph_spec()
        parts = {"graphs": 0.0, "collate+h2d": 0.0, "forward+backward": 0.0, "d2h": 0.0}
        fast._forward_graphs(cb.build_graphs([_raw_frac(s) for s in structs[:bs]], spec),
                             True, True)  # warm-up
        sync()
        for k in range(0, len(structs), bs):
            chunk = structs[k : k + bs]
            t = time.perf_counter()
            graphs = cb.build_graphs([_raw_frac(s) for s in chunk], spec)
            parts["graphs"] += time.perf_counter() - t
            t = time.perf_counter()
            batch = cb.to_device(cb.collate(graphs), device)
            sync()
            parts["collate+h2d"] += time.perf_counter() - t
            t = time.perf_counter()
            res = cb.forward(fast.model, batch, True, True)
            sync()
            parts["forward+backward"] += time.perf_counter() - t
            t = time.perf_counter()
            _ = [v.cpu().numpy() for v in res.values()]
            parts["d2h"] += time.perf_counter() - t
        tot = sum(parts.values())
        out[f"fast_bs{bs}_parts_s"] = parts
        out[f"fast_bs{bs}_serial_per_s"] = len(structs) / tot
        print(f"fast bs={bs:5d}, serial:          {len(structs) / tot:8.1f} structures/s  ("
              + ", ".join(f"{k} {100 * v / tot:.0f}%" for k, v in parts.items()) + ")",
              flush=True)
        for workers in sorted({0, args.graph_workers}):
            fast.graph_workers = workers
            fast.predict(structs[: 2 * bs], batch_size=bs, compute_stress=True)  # start pool
            sync()
            t = time.perf_counter()
            fast.predict(structs, batch_size=bs, compute_stress=True)
            sync()
            rate = len(structs) / (time.perf_counter() - t)
            out[f"fast_bs{bs}_workers{workers}_per_s"] = rate
            print(f"fast bs={bs:5d}, graph_workers={workers:2d}: {rate:8.1f} structures/s "
                  f"({rate / out['ase_per_s']:.1f}x ASE loop, "
                  f"{rate / out[f'predict_structure_bs{bs}_per_s']:.1f}x predict_structure)",
                  flush=True)
        fast.close()
    if cuda:
        out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
