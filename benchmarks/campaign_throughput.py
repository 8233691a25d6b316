"""One campaign round, timed stage by stage, against the serial per-structure way in the same run.

Stages (N generated structures, default 10,000, from a trained checkpoint of either family):

1. ``sample`` + ``decode``: :meth:`LatentDiffusionGenerator.generate` (DDIM 50, eta 1, EMA;
   bf16 on CUDA; on CUDA the pymatgen conversion of one batch overlaps the next batch), or a
   Wyckoff transformer's ``generate`` (space groups from the training distribution,
   temperature 1; sequences decoded to structures in ``--n-jobs`` processes);
2. ``energy``: MLIP single points (CHGNet ``"fast"`` mode by default, graphs built in
   ``--graph-workers`` processes) or, with ``--relax``, batched torch-sim FIRE relaxation
   (Frechet cell filter, ``--fmax``, ``--steps``);
3. ``hull``: energy above the MP-20 formation-energy hull (45,229 entries, MLIP elemental
   chemical potentials); the hull energies at the samples' compositions (one phase diagram
   per chemical system, in ``--hull-jobs`` processes) are computed alongside stage 2, and
   subtracted once the energies are known: ``hull (own time, overlapped)`` is their own
   time, ``hull (wait after energies)`` what they added after stage 2;
4. ``metrics``: uniqueness and novelty (``StructureMatcher``, against MP-20 val + test), SMACT,
   structural validity, with ``--n-jobs`` workers; for single points they run alongside
   stage 2 (``screen_structures(pipeline=True)``);
5. ``store``: one ``screen`` document per structure, bulk-written to a maggma store.

Memory: the peak GPU memory of the round, and the host memory of this process across the round
(``host_memory``: resident set before the round and its peak during it, from Linux's
``/proc/self/status``). GPU memory follows the batch in flight, not N; what grows with N is the
host memory of the structures, records and documents, so two runs at different N (with the
same batch sizes) give the growth per structure and the largest round a host holds.

Baseline, measured in the same run on the first ``--baseline-n`` structures and extrapolated
linearly to N (labelled as such): the peers' way, as Chemeleon2 and CrystalFormer-RL score,
one structure at a time: CHGNet through its ASE calculator (or one ASE FIRE relaxation per
structure with ``--relax``), one hull query per structure from an empty cache, then serial
matching and SMACT in one process. Linear
extrapolation understates the baseline's matching cost, which grows faster than N.

A checkpoint with random weights is refused (a latent diffusion checkpoint whose atom-count
distribution was never fitted, a Wyckoff transformer with a held-out NLL of an untrained one):
garbage structures change the work.

Usage (any GPU host; the MP-20 CSVs in --data-dir)::

    python benchmarks/campaign_throughput.py --checkpoint ldm.pt --data-dir data/mp20 \
        --device cuda --n 10000 --graph-workers 8 --n-jobs 16 --out out/round.json
    python benchmarks/campaign_throughput.py --checkpoint ldm.pt --data-dir data/mp20 \
        --device cuda --n 1000 --relax --fmax 0.05 --steps 300 --baseline-n 50
    # this repository's CPU check
    python benchmarks/campaign_throughput.py --checkpoint ldm.pt --data-dir data/mp20 \
        --device cpu --n 200 --baseline-n 50 --n-jobs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")
logger = logging.getLogger("campaign_throughput")


def _status_kb(key: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in kB (Linux), else ``None``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (``VmHWM``) so that it measures the round alone."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def host_memory_of_round(rss_before_kb: int | None, peak_reset: bool, n: int) -> dict:
    """Host memory of this process across the round and the round size the host could hold.

    The estimate divides the host's available memory by the round's growth per structure
    (structures, records and documents stay in memory until the store write); worker processes
    are not counted, and their memory does not grow with N (they take chunks).
    """
    import psutil

    peak = _status_kb("VmHWM") if peak_reset else None
    if rss_before_kb is None or peak is None:
        return {"note": "peak resident set not measurable on this platform"}
    growth = max(peak - rss_before_kb, 0) * 1024
    per = growth / max(n, 1)
    avail = psutil.virtual_memory().available
    return {"rss_before_round_gb": rss_before_kb * 1024 / 1e9,
            "peak_rss_round_gb": peak * 1024 / 1e9,
            "growth_gb": growth / 1e9, "growth_per_structure_kb": per / 1024,
            "host_total_gb": psutil.virtual_memory().total / 1e9,
            "host_available_gb_after_round": avail / 1e9,
            "largest_round_by_host_memory": int(avail / per) if per > 0 else None,
            "note": "main process only (graph / matching workers hold chunks, not the round); "
                    "the largest round is the available host memory over the growth per "
                    "structure of this round, an extrapolation and a conservative one (the "
                    "growth includes batch buffers that do not grow with N)"}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, " \
           f"{torch.get_num_threads()} torch threads)"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


#: Held-out NLL per crystal (nats) above which a Wyckoff transformer counts as untrained:
#: randomly initialised ``tiny`` and ``medium`` models give 38-40 on 64 MP-20 held-out crystals,
#: a 1,250-step ``medium`` snapshot 10.7.
UNTRAINED_WYCKOFF_NLL = 30.0


def load_trained(path: Path, device: str, heldout: list, decode_workers: int = 0):
    """Load a generator of either family and refuse one with random weights.

    A latent diffusion checkpoint whose atom-count distribution was never fitted, or a Wyckoff
    transformer whose held-out NLL on 64 MP-20 crystals is above
    :data:`UNTRAINED_WYCKOFF_NLL`, is refused: garbage structures change the work.
    """
    from xtalforge.models.interface import checkpoint_family, load_any_generator

    gen = load_any_generator(path, map_location=device)
    if checkpoint_family(path) == "latent_diffusion":
        if float(gen.num_atoms_counts[1:].std()) == 0.0:
            raise SystemExit(f"{path}: atom-count distribution never fitted: random weights "
                             "are refused (train the generator first)")
        return gen
    from xtalforge.models.wyckoff.training import sequences_for_training, validation_nll

    data, _ = sequences_for_training(gen, heldout[:64])
    nll = validation_nll(gen, data)
    if not nll <= UNTRAINED_WYCKOFF_NLL:
        raise SystemExit(f"{path}: held-out NLL {nll:.1f} nats per crystal (random weights give "
                         f"about 38): an untrained Wyckoff transformer is refused")
    gen.decode_workers = decode_workers
    return gen


def sampler_protocol(settings: dict | None, seed: int, dtype: str) -> dict:
    """The sampling settings the generator itself recorded (either family), for the protocol.

    A latent diffusion generator records its DDIM steps, eta and dtype; a Wyckoff transformer
    records its temperature and lists the diffusion settings it ignored.
    """
    out = {"seed": seed, "requested_dtype": dtype}
    for k, v in (settings or {}).items():
        if isinstance(v, (str, int, float, bool, type(None))) or k == "ignored_settings":
            out[k] = v
    return out


def store_documents(records: list[dict], structures: list, store_dir: Path | None) -> tuple:
    from maggma.stores import MemoryStore

    from xtalforge.stores.documents import bulk_upsert, make_result_doc

    if store_dir is not None:
        from maggma.stores import MontyStore

        store = MontyStore("screen", database_path=str(store_dir), storage="sqlite")
    else:
        store = MemoryStore("screen")
    store.connect()
    docs = []
    for i, rec in enumerate(records):
        rec = dict(rec)
        errors = rec.pop("errors", [])
        rec.pop("index", None)
        docs.append(make_result_doc(f"bench-{i:06d}", campaign_id="throughput", stage="screen",
                                    errors=errors, **rec,
                                    structure=None if structures[i] is None
                                    else structures[i].as_dict()))
    t = time.perf_counter()
    bulk_upsert(store, docs, scope={"campaign_id": "throughput", "stage": "screen"})
    dt = time.perf_counter() - t
    n = store.count({"campaign_id": "throughput"})
    store.close()
    return dt, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="trained generator (.pt)")
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mp20",
                    help="MP-20 CSVs (hull and novelty reference)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--sample-batch", type=int, default=2000)
    ap.add_argument("--mlip", default="chgnet")
    ap.add_argument("--mlip-mode", default="auto", help="CHGNet mode: auto/fast, batched, ase")
    ap.add_argument("--batch-size", type=int, default=512, help="MLIP single-point batch")
    ap.add_argument("--graph-workers", type=int, default=0)
    ap.add_argument("--n-jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--hull-jobs", type=int, default=None,
                    help="processes building chemical-system hulls (default: --n-jobs; they "
                         "run at the same time as the metrics workers)")
    ap.add_argument("--relax", action="store_true", help="batched relaxation, not single points")
    ap.add_argument("--fmax", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--max-atoms", type=int, default=None,
                    help="atoms per relaxation batch (default: torch-sim estimates on CUDA)")
    ap.add_argument("--baseline-n", type=int, default=200,
                    help="structures for the serial baseline (extrapolated to N)")
    ap.add_argument("--store-dir", type=Path, default=None, help="MontyStore dir (default: memory)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # progress of a batched relaxation, with its graph-building / model time split
    logging.getLogger("xtalforge.screening.relax").setLevel(logging.INFO)

    import torch

    from xtalforge.data.mp20 import load_mp20_split, mp20_formation_hull
    from xtalforge.screening.hull import mlip_chemical_potentials
    from xtalforge.screening.metrics import ReferenceSet, compute_metrics
    from xtalforge.screening.mlip import get_energy_model
    from xtalforge.screening.screen import screen_structures

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    info = {"device": device, "device_name": device_name(device), "torch": torch.__version__,
            "python": platform.python_version(), "n": args.n, "mlip": args.mlip,
            "mode": "relax" if args.relax else "single point", "checkpoint": str(args.checkpoint)}
    print(json.dumps(info), flush=True)

    # ---- set-up (not timed as part of the round) -------------------------------------
    t = time.perf_counter()
    split = load_mp20_split(args.data_dir, workers=args.n_jobs)
    gen = load_trained(args.checkpoint, device, split.heldout, decode_workers=args.n_jobs)
    mkw = {"graph_workers": args.graph_workers} if args.graph_workers else {}
    if args.mlip.startswith("chgnet"):
        mkw["mode"] = args.mlip_mode
    model = get_energy_model(args.mlip, device=device, **mkw)
    cache = Path(tempfile.gettempdir()) / f"xtalforge_mu_{args.mlip.replace(':', '_')}.json"
    mu, _ = mlip_chemical_potentials(model, split.reference, cache_path=cache)
    hull = mp20_formation_hull(args.data_dir, mu, f"{args.mlip} energies, E_form = E - sum mu n")
    reference = ReferenceSet(split.reference, split.reference_ids)
    # warm the model (kernels, graph workers) on a few reference crystals
    model.predict(split.reference[:64], batch_size=64)
    setup_s = time.perf_counter() - t
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before_kb, peak_reset = _status_kb("VmRSS"), reset_peak_rss()

    # ---- the round ---------------------------------------------------------------------
    t_round = time.perf_counter()
    dtype = "bf16" if device.startswith("cuda") else "fp32"
    res = gen.generate(args.n, seed=args.seed, batch_size=args.sample_batch, device=device,
                       dtype=dtype, steps=50, eta=1.0, use_ema=True)
    sync(device)
    t_sample = time.perf_counter() - t_round
    structures = res.structures
    relax_kwargs = {"fmax": args.fmax, "steps": args.steps, "backend": "torch-sim",
                    "max_atoms": args.max_atoms}
    records, summary = screen_structures(
        structures, model, hull, reference_structures=reference, relax=args.relax,
        relax_kwargs=relax_kwargs if args.relax else None, batch_size=args.batch_size,
        n_jobs=args.n_jobs, hull_n_jobs=args.hull_jobs, pipeline=True)
    sync(device)
    t_store, n_docs = store_documents(records, structures, args.store_dir)
    total = time.perf_counter() - t_round
    peak_gb = torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None
    host_memory = host_memory_of_round(rss_before_kb, peak_reset, args.n)
    ts = summary["timings_s"]
    n_msun = int(summary.get("n_msun", 0))
    stages = {"sample+decode": t_sample, "energy": ts["energy"],
              "hull (own time, overlapped)": ts["hull"],
              "hull (wait after energies)": ts["hull_wait"],
              "metrics (own time, overlapped)": ts["metrics"],
              "metrics (wait after energies)": ts["metrics_wait"], "store": t_store,
              "total": total}
    gen_t = {k: round(v, 3) for k, v in (res.timings or {}).items()}

    # ---- baseline: one structure at a time, serial matching -----------------------------
    nb = min(args.baseline_n, args.n)
    sub = structures[:nb]
    base_model = get_energy_model("chgnet", device=device, mode="ase") \
        if args.mlip.startswith("chgnet") else model
    base_model.model = getattr(model, "model", None) or base_model.model
    # the baseline evaluates what the round evaluated: the structures screening did not refuse
    # (no atoms closer than 0.5 A, no collapsed cell; `rejected` in the records), so that its
    # time per structure extrapolates over the round's evaluated structures
    vi = [i for i, s in enumerate(sub) if s is not None and records[i].get("rejected") is None]
    valid = [sub[i] for i in vi]
    n_eval = sum(1 for r, s in zip(records, structures, strict=True)
                 if s is not None and r.get("rejected") is None)
    t = time.perf_counter()
    if args.relax:
        base_res = base_model.relax(valid, fmax=args.fmax, steps=args.steps,
                                    cell_filter="FrechetCellFilter")
    else:
        base_res = base_model.predict_ase_loop(valid)
    sync(device)
    t_base_energy = time.perf_counter() - t
    # the hull the peers' way: one query per structure, serially, from an empty cache
    hull.clear_cache()
    t = time.perf_counter()
    for k, s in enumerate(valid):
        e = getattr(base_res[k], "energy_per_atom", None)
        if e is not None and np.isfinite(e):
            hull.e_above_hull([s.composition], [e], kind="total")
    t_base_hull = time.perf_counter() - t
    t = time.perf_counter()
    compute_metrics(sub, reference=ReferenceSet(split.reference, split.reference_ids), n_jobs=1)
    t_base_metrics = time.perf_counter() - t
    scale = args.n / max(nb, 1)
    # energies: per evaluated structure, over the round's evaluated structures
    energy_scale = n_eval / max(len(valid), 1)
    base_total = (t_base_energy * energy_scale + (t_base_hull + t_base_metrics) * scale
                  + t_sample)
    comparison = {}
    if args.relax:
        ours = records[:nb]
        de, rows = [], []
        for k, i in enumerate(vi):
            b, o = base_res[k], ours[i]
            both = bool(b.converged and o.get("relax_converged")
                        and o.get("energy_per_atom") is not None)
            if both:
                de.append(abs(b.energy_per_atom - o["energy_per_atom"]))
            # one row per structure of the subsample, so that a disagreement can be traced
            rows.append({"index": i, "formula": sub[i].composition.reduced_formula,
                         "n_atoms": len(sub[i]),
                         "batched_energy_per_atom": o.get("energy_per_atom"),
                         "batched_converged": bool(o.get("relax_converged")),
                         "batched_steps": o.get("relax_steps"),
                         "ase_energy_per_atom": b.energy_per_atom,
                         "ase_converged": bool(b.converged), "ase_steps": b.n_steps,
                         "abs_dE_meV_per_atom": 1e3 * de[-1] if both else None})
        comparison = {
            "n_both_converged": len(de),
            "max_abs_dE_meV_per_atom": 1e3 * max(de) if de else None,
            "median_abs_dE_meV_per_atom": 1e3 * float(np.median(de)) if de else None,
            "frac_within_5meV": float(np.mean(np.array(de) < 5e-3)) if de else None,
            "baseline_converged": int(sum(r.converged for r in base_res)),
            "batched_converged_of_subsample": int(sum(bool(o.get("relax_converged"))
                                                     for o in ours)),
            "rows": rows,
        }
    else:
        ours_e = [r.get("energy_per_atom") for r in records[:nb]]
        de = [abs(base_res[k].energy_per_atom - ours_e[i]) for k, i in enumerate(vi)
              if base_res[k].ok and ours_e[i] is not None]
        comparison = {"max_abs_dE_meV_per_atom_vs_ase_loop": 1e3 * max(de) if de else None}

    out = {
        "info": info,
        "setup_s": setup_s,
        "stages_s": stages,
        "generate_timings_s": gen_t,
        "structures_per_s": args.n / total,
        "n_decoded": int(sum(s is not None for s in structures)),
        "n_documents": n_docs,
        "msun": summary.get("mSUN"),
        "n_msun": n_msun,
        "msun_per_minute": n_msun / total * 60.0,
        "relax_converged": summary.get("n_relax_converged"),
        "peak_gpu_memory_gb": peak_gb,
        "host_memory": host_memory,
        "baseline": {
            "n_measured": nb,
            "n_evaluated_measured": len(valid),
            "n_evaluated_round": n_eval,
            "energy_s_measured": t_base_energy,
            "hull_s_measured": t_base_hull,
            "metrics_s_measured": t_base_metrics,
            "energy_s_extrapolated": t_base_energy * energy_scale,
            "hull_s_extrapolated": t_base_hull * scale,
            "metrics_s_extrapolated": t_base_metrics * scale,
            "total_s_extrapolated_incl_same_sampling": base_total,
            "note": "per-structure ASE on the structures of the first baseline_n that the "
                    "round evaluated (extrapolated over the round's evaluated structures), "
                    "serial per-structure hull queries from an empty cache and serial matching "
                    "on the first baseline_n (extrapolated linearly to N)",
        },
        "ratios": {
            "energy_vs_ase_loop": t_base_energy * energy_scale / max(ts["energy"], 1e-9),
            "hull_vs_serial": t_base_hull * scale / max(ts["hull"], 1e-9),
            "metrics_vs_serial": t_base_metrics * scale / max(ts["metrics"], 1e-9),
            "round_vs_serial_round": base_total / total,
        },
        "agreement": comparison,
        "protocol": {"sampler": sampler_protocol(res.settings, args.seed, dtype),
                     "hull": "MP-20 formation-energy hull (45,229 entries), MLIP elemental mu",
                     "novelty_reference": "MP-20 val + test", "metastable": "E_hull < 0.1",
                     "relax": {"fmax": args.fmax, "steps": args.steps,
                               "filter": "FrechetCellFilter"} if args.relax else None,
                     "mlip": summary.get("energy_model"), "n_jobs": args.n_jobs,
                     "hull_jobs": args.n_jobs if args.hull_jobs is None else args.hull_jobs,
                     "graph_workers": args.graph_workers, "batch_size": args.batch_size},
    }
    print(f"\n{info['device_name']} | N = {args.n} | {info['mode']} | {args.mlip}")
    for k, v in stages.items():
        print(f"  {k:34s} {v:9.2f} s")
    print(f"  structures/s (round)               {out['structures_per_s']:9.1f}")
    print(f"  mSUN/min                           {out['msun_per_minute']:9.1f}")
    if peak_gb is not None:
        print(f"  peak GPU memory                    {peak_gb:9.2f} GB")
    if "growth_per_structure_kb" in host_memory:
        print(f"  host memory growth of the round    {host_memory['growth_gb']:9.2f} GB "
              f"({host_memory['growth_per_structure_kb']:.1f} kB a structure; "
              f"{host_memory['largest_round_by_host_memory']:,} would fit)")
    b = out["baseline"]
    print(f"baseline (first {nb}, {len(valid)} evaluated, energies extrapolated "
          f"x{energy_scale:.1f}, the rest x{scale:.1f}): energy "
          f"{b['energy_s_extrapolated']:.1f} s, hull {b['hull_s_extrapolated']:.1f} s, "
          f"metrics {b['metrics_s_extrapolated']:.1f} s")
    for k, v in out["ratios"].items():
        print(f"  ratio {k:30s} {v:8.1f}x")
    print(f"  agreement {json.dumps({k: v for k, v in comparison.items() if k != 'rows'})}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {args.out}")
    close = getattr(model, "close", None)
    if close:
        close()


if __name__ == "__main__":
    main()
