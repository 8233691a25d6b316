"""Scaling study of the latent-diffusion generator on MP-20: metastability against LDM steps.

Stages (each a sub-command; a GPU host runs them side by side, see
``benchmarks/gpu/scaling.sh``, started with
``bash benchmarks/gpu/pipeline.sh start scaling``):

``vae``
    Train a VAE on the project's MP-20 split (:mod:`xtalforge.data.mp20`): ``--vae current``
    (d 256, 4 + 4 layers, KL 1e-3: the VAE of the earlier bases), ``--vae small`` (d 128,
    2 + 2, KL 1e-3: for a CPU-sized study) or ``--vae paper`` (Park &
    Walsh 2025: d 512, 8 + 8 layers, KL 1e-5, loss weights species 1 / lengths 1 / angles 10 /
    coordinates 10). Resumable (``--minutes`` per run, state file in ``--out``). Reports the
    reconstruction match rate on the 1,000 held-out crystals (``StructureMatcher()``
    defaults) and writes ``vae_<tag>.pt``.
``ldm``
    Train a DiT denoiser of ``--dit DEPTHxWIDTH`` on a frozen VAE, resumable, bf16, constant
    learning rate after warm-up, EMA 0.999, and save an inference checkpoint (EMA weights) at
    each of ``--snapshots`` (a log-spaced list of steps) as ``snap_<tag>_<step>.pt``, listed in
    ``snapshots.jsonl``. A constant rate makes the snapshots of one run comparable points on
    one curve; a cosine decay would tie each point to the run length.
``eval``
    Watch ``snapshots.jsonl`` and screen every snapshot with the fixed protocol: 2,000 samples
    (seed 12345, DDIM 50 steps, eta 1, EMA weights), CHGNet 0.3.0 single points on the
    as-generated structures, the MP-20 formation-energy hull (45,229 DFT entries) with CHGNet
    elemental chemical potentials, uniqueness and novelty with ``StructureMatcher`` against
    every MP-20 structure available (val + test), SMACT (ICSD24). Metastable is E_hull < 0.1
    eV/atom; mSUN = metastable, unique and novel. Rows go to ``scaling.jsonl``; each
    snapshot's samples with their E_hull go to ``samples_<tag>_<step>.json.gz`` (for
    ``benchmarks/generator_diagnosis.py``).
``plot``
    ``benchmarks/figures/generator_scaling.png`` and ``benchmarks/generator_scaling.json``
    from one or more ``scaling.jsonl``.

Example (one GPU host; the pipeline script runs the stages side by side)::

    python benchmarks/generator_scaling.py vae --tag cur17 --vae current --minutes 3 --out out/sc
    python benchmarks/generator_scaling.py ldm --tag A --vae-from out/sc/vae_cur17.pt \
        --dit 8x384 --minutes 12 --out out/sc
    python benchmarks/generator_scaling.py eval --out out/sc --watch
    python benchmarks/generator_scaling.py plot out/sc/scaling.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
logger = logging.getLogger("generator_scaling")

DATA = ROOT.parent / "shared" / "data" / "mp20"
TRAIN_SETS = {"17k": ("val", "test"), "9k": ("val",)}


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else os.uname().machine


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _split(args):
    from xtalforge.data.mp20 import load_mp20_split

    return load_mp20_split(args.data_dir, train_sets=TRAIN_SETS[args.data], workers=args.workers)


# ------------------------------------------------------------------------------------ vae
def cmd_vae(args) -> None:
    from train_mp20 import match_rate, min_distance_summary

    from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator
    from xtalforge.models.training import train_vae

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = _split(args)
    if args.vae == "paper":
        cfg = GeneratorConfig.paper()  # d 512, 8 + 8, w_kl 1e-5, weights 1/1/10/10
    else:
        cfg = GeneratorConfig.medium()  # d 256, 4 + 4
        cfg.vae.w_kl = 1e-3
        if args.vae == "small":  # CPU-sized: d 128, 2 + 2
            cfg.vae.hidden_dim, cfg.vae.num_heads = 128, 4
            cfg.vae.encoder_layers = cfg.vae.decoder_layers = 2
    torch.manual_seed(args.seed)
    gen = LatentDiffusionGenerator(cfg)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    h = train_vae(gen, split.train, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  device=args.device, seed=args.seed, dtype=args.dtype, warmup_steps=200,
                  schedule="constant", log_every=200, max_minutes=args.minutes,
                  state_path=out / f"state_vae_{args.tag}.pt", save_every_minutes=2.0)
    ckpt = out / f"vae_{args.tag}.pt"
    sha = gen.save(ckpt)
    t = time.perf_counter()
    rec = gen.reconstruct(split.heldout, device=args.device)
    matched = match_rate(split.heldout, rec.structures, args.workers)
    row = {"stage": "vae", "tag": args.tag, "vae": args.vae, "data": args.data,
           "device": _device_name(args.device), "steps": h["steps"],
           "completed": h["completed"], "wall_time_s": h["wall_time_s"],
           "final": {k: h[k][-1] for k in h if isinstance(h[k], list) and h[k]
                     and k not in ("step", "lr")},
           "reconstruction_heldout": float(matched.mean()), "n_heldout": len(split.heldout),
           "recon_min_distance": min_distance_summary(rec.structures),
           "recon_s": time.perf_counter() - t, "checkpoint": str(ckpt), "sha256": sha,
           "config": cfg.vae.to_dict(), "split": split.fingerprint}
    _append(out / "vae.jsonl", row)
    logger.info("vae %s: %s", args.tag, {k: row[k] for k in ("steps", "reconstruction_heldout",
                                                            "wall_time_s")})


# ------------------------------------------------------------------------------------ ldm
def cmd_ldm(args) -> None:
    from xtalforge.models.diffusion import LatentDiffusion
    from xtalforge.models.generator import LatentDiffusionGenerator
    from xtalforge.models.training import train_ldm

    out = Path(args.out)
    split = _split(args)
    gen = LatentDiffusionGenerator.load(args.vae_from, map_location=args.device)
    depth, width = (int(v) for v in args.dit.lower().split("x"))
    dit = gen.config.dit
    dit.depth, dit.hidden_dim, dit.num_heads = depth, width, max(2, width // 64)
    gen.config.diffusion.ema_decay = args.ema_decay
    torch.manual_seed(args.seed)
    gen.ldm = LatentDiffusion(gen.config.vae.latent_dim, gen.config.max_atoms, dit,
                              gen.config.diffusion).to(args.device)
    n_params = sum(p.numel() for p in gen.ldm.denoiser.parameters())
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    snaps = sorted(int(s) for s in args.snapshots.split(","))
    done = {r["step"] for r in _read_jsonl(out / "snapshots.jsonl") if r["tag"] == args.tag}
    t0 = time.perf_counter()

    def callback(step: int, metrics: dict) -> None:
        if step in snaps and step not in done:
            path = out / f"snap_{args.tag}_{step}.pt"
            sha = gen.save(path, inference_only=True)
            _append(out / "snapshots.jsonl", {
                "tag": args.tag, "step": step, "path": str(path), "sha256": sha,
                "loss": metrics.get("loss"), "dit": args.dit, "denoiser_params": n_params,
                "vae_from": str(args.vae_from), "data": args.data, "batch_size": args.batch_size,
                "lr": args.lr, "run_wall_s": time.perf_counter() - t0,
                "device": _device_name(args.device)})
            done.add(step)
            logger.info("snapshot %s step %d loss %.4f", args.tag, step, metrics.get("loss"))

    h = train_ldm(gen, split.train, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                  device=args.device, seed=args.seed, dtype=args.dtype, warmup_steps=500,
                  schedule="constant", log_every=math.gcd(100, *snaps), callback=callback,
                  max_minutes=args.minutes, state_path=out / f"state_ldm_{args.tag}.pt",
                  save_every_minutes=3.0)
    final = out / f"ldm_{args.tag}_last.pt"
    sha = gen.save(final, inference_only=True)
    _append(out / "ldm.jsonl", {
        "tag": args.tag, "steps": h["steps"], "completed": h["completed"],
        "wall_time_s": h["wall_time_s"], "loss_last": h["loss"][-1] if h.get("loss") else None,
        "loss_curve": list(zip(h.get("step", []), h.get("loss", []), strict=False)),
        "checkpoint": str(final), "sha256": sha, "dit": args.dit, "denoiser_params": n_params,
        "data": args.data, "device": _device_name(args.device)})


# ----------------------------------------------------------------------------------- eval
class Screener:
    """The fixed screening protocol of this study (built once per process)."""

    def __init__(self, args) -> None:
        from xtalforge.data.mp20 import load_mp20_split, mp20_formation_hull
        from xtalforge.screening.hull import mlip_chemical_potentials
        from xtalforge.screening.metrics import ReferenceSet
        from xtalforge.screening.mlip import get_energy_model

        self.args = args
        split = load_mp20_split(args.data_dir, workers=args.workers)
        self.model = get_energy_model(args.mlip, device=args.device)
        mu, self.mu_source = mlip_chemical_potentials(
            self.model, split.reference, cache_path=Path(args.out) / f"mu_{args.mlip}.json")
        self.hull = mp20_formation_hull(
            args.data_dir, mu, f"{args.mlip} single points, E_form = E - sum mu_a n_a")
        self.reference = ReferenceSet(split.reference, split.reference_ids)
        self.split = split.fingerprint

    def __call__(self, gen, label: dict, n: int | None = None, **conditions) -> tuple[dict, list]:
        """Screen ``n`` (default ``--n-samples``) samples of ``gen``; return (row, samples).

        ``conditions`` go to ``gen.generate`` (e.g. ``space_group`` for the Wyckoff
        transformer); the samples carry their screening flags (``stable``, ``metastable``,
        ``sun``, ``msun``).
        """
        from xtalforge.rewards.resources import GuardedEnergyModel
        from xtalforge.screening.screen import screen_structures

        a = self.args
        n = n or a.n_samples
        t0 = time.perf_counter()
        res = gen.generate(n, seed=a.eval_seed, batch_size=500, device=a.device,
                           dtype="fp32", steps=50, eta=1.0, use_ema=True, **conditions)
        self.last_result = res  # the generator's own output (e.g. sampled space groups)
        t1 = time.perf_counter()
        records, summary = screen_structures(
            res.structures, GuardedEnergyModel(self.model, 2.0), self.hull,
            reference_structures=self.reference, n_jobs=a.n_jobs, batch_size=256)
        e = np.array([r.get("e_above_hull") if r.get("e_above_hull") is not None else np.nan
                      for r in records], dtype=float)
        fin = e[np.isfinite(e)]
        row = {**label, "n": n, "metastability": summary["metastability"],
               "mSUN": summary["mSUN"], "SUN": summary["SUN"],
               "uniqueness": summary["uniqueness"], "novelty": summary["novelty"],
               "smact_validity": summary["smact_validity"],
               "structural_validity": summary["structural_validity"],
               "frac_decoded": res.num_valid / n,
               "e_hull_median": float(np.median(fin)) if fin.size else None,
               "frac_e_hull_below_0.5": float((fin < 0.5).sum() / n),
               "frac_e_hull_below_1": float((fin < 1.0).sum() / n),
               "n_distinct_formulas": len({s.composition.reduced_formula
                                           for s in res.structures if s is not None}),
               "t_sample_s": t1 - t0, "t_screen_s": time.perf_counter() - t1,
               "protocol": {"samples": n, "seed": a.eval_seed, "ddim_steps": 50,
                            "eta": 1.0, "mlip": a.mlip, "mode": "single point",
                            "hull_convention": self.hull.convention,
                            "novelty_reference": "MP-20 val + test", "split": self.split}}
        return row, sample_records(res.structures, records)


def sample_records(structures, records) -> list[dict]:
    """Samples with their screening results, the record format of ``samples_*.json.gz``.

    One dict per sample: the structure (pymatgen dict or ``None``), its E_hull, the error of
    a failed evaluation and the flags ``stable``, ``metastable``, ``sun``, ``msun``
    (``benchmarks/second_opinion.py`` reads these files).
    """
    flags = ("stable", "metastable", "sun", "msun")
    return [{"structure": None if s is None else s.as_dict(),
             "e_above_hull": r.get("e_above_hull"), "error": r.get("error"),
             **{k: r.get(k) for k in flags}}
            for s, r in zip(structures, records, strict=True)]


def cmd_eval(args) -> None:
    from xtalforge.models.generator import LatentDiffusionGenerator

    out = Path(args.out)
    screener = Screener(args)
    result_file = out / f"scaling{args.suffix}.jsonl"
    while True:
        seen = {(r["tag"], r["step"]) for r in _read_jsonl(result_file)}
        snaps = [s for i, s in enumerate(_read_jsonl(out / "snapshots.jsonl"))
                 if i % args.n_workers == args.worker]
        todo = [s for s in snaps if (s["tag"], s["step"]) not in seen
                and (not args.tags or s["tag"] in args.tags.split(","))]
        if todo:
            # latest first: the trained end of each curve matters most if time runs short
            s = max(todo, key=lambda r: r["step"])
            gen = LatentDiffusionGenerator.load(s["path"], map_location=args.device)
            row, samples = screener(gen, {k: s[k] for k in s if k != "path"})
            with gzip.open(out / f"samples_{s['tag']}_{s['step']}{args.suffix}.json.gz",
                           "wt") as fh:
                json.dump(samples, fh)
            _append(result_file, row)
            logger.info("eval %s@%d: metastable %.2f%% mSUN %.2f%% median E_hull %s",
                        s["tag"], s["step"], 100 * row["metastability"], 100 * row["mSUN"],
                        row["e_hull_median"])
            del gen
            continue
        if not args.watch or (out / "TRAINING_DONE").exists():
            break
        time.sleep(10)


# ----------------------------------------------------------------------------------- plot
def cmd_plot(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for p in args.results for r in _read_jsonl(Path(p))]
    ldm = [r for p in args.ldm for r in _read_jsonl(Path(p))]
    runs: dict[str, list] = {}
    for r in rows:
        runs.setdefault(r["tag"], []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for r in sorted(ldm, key=lambda r: r["tag"]):
        st, loss = zip(*[(s, v) for s, v in r["loss_curve"] if s >= 100], strict=True)
        axes[0].plot(st, loss, lw=1, label=f"{r['tag']}: {r['dit']} "
                     f"({r['denoiser_params'] / 1e6:.0f}M), {r['data']}, "
                     f"{r['steps']} steps / {r['wall_time_s'] / 60:.0f} min")
    axes[0].set_ylabel("LDM training loss (ε-MSE, 100-step means)")
    axes[0].set_ylim(0.12, 0.30)  # the first few hundred steps (loss 0.6-0.8) would hide the rest
    for tag, rs in sorted(runs.items()):
        rs.sort(key=lambda r: r["step"])
        steps = [r["step"] for r in rs]
        vae = Path(str(rs[0].get("vae_from") or "")).stem.removeprefix("vae_")
        gpu = str(rs[0].get("device", "")).replace("NVIDIA ", "").split(" ")[0]
        lab = (f"{tag}: DiT {rs[0]['dit']}, {rs[0]['data']} data"
               + (f", VAE {vae}" if vae else "") + (f" ({gpu})" if gpu else ""))
        axes[1].plot(steps, [100 * r["metastability"] for r in rs], "o-", label=lab)
        axes[2].plot(steps, [r["e_hull_median"] for r in rs], "o-", label=lab)
    axes[1].set_ylabel("metastable (%), E_hull < 0.1 eV/atom")
    axes[2].set_ylabel("median E_hull (eV/atom)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("LDM optimiser steps (batch 512)")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, loc="upper right" if ax is axes[0] else "best")
    top = max([5.0] + [100 * r["metastability"] for r in rows])
    axes[1].set_ylim(0, 1.3 * top)
    axes[2].set_ylim(bottom=0)
    # Chemeleon2's MP-20 base (Park & Walsh 2025, Table S1) is far above these curves
    axes[1].text(0.02, 0.97, "Chemeleon2 MP-20 base: 32.8% (off scale)", fontsize=8,
                 color="grey", va="top", transform=axes[1].transAxes)
    n = rows[0]["n"] if rows else 0
    fig.suptitle(f"Generator scaling on MP-20 (17k data: 17,093 crystals, val + test minus "
                 f"1,000 held out; 9k data: val, 9,047); {n} samples per point, DDIM 50, eta 1, "
                 "EMA; CHGNet single points, MP-20 formation hull", fontsize=9)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=120)
    Path(args.json).write_text(json.dumps(
        {"screened": sorted(rows, key=lambda r: (r["tag"], r["step"])), "training": ldm,
         "vae": [r for p in args.vae for r in _read_jsonl(Path(p))]},
        indent=1, default=str))
    print(f"wrote {args.figure} and {args.json} ({len(rows)} screened points)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, train: bool = True):
        p.add_argument("--out", default="out/scaling")
        p.add_argument("--data-dir", type=Path, default=DATA)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--workers", type=int, default=4, help="CIF parsing / matching processes")
        p.add_argument("--seed", type=int, default=0)
        if train:
            p.add_argument("--tag", required=True)
            p.add_argument("--data", default="17k", choices=sorted(TRAIN_SETS))
            p.add_argument("--minutes", type=float, default=None, help="budget of this run")
            p.add_argument("--steps", type=int, default=500_000)
            p.add_argument("--batch-size", type=int, default=512)
            p.add_argument("--dtype", default="bf16")
            p.add_argument("--tf32", action="store_true")

    p = sub.add_parser("vae")
    common(p)
    p.add_argument("--vae", default="current", choices=["current", "paper", "small"])
    p.add_argument("--lr", type=float, default=5e-4)
    p = sub.add_parser("ldm")
    common(p)
    p.add_argument("--vae-from", required=True)
    p.add_argument("--dit", default="8x384")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--snapshots", default="500,1000,2000,4000,8000,16000,32000,64000")
    p = sub.add_parser("eval")
    common(p, train=False)
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--eval-seed", type=int, default=12345)
    p.add_argument("--mlip", default="chgnet")
    p.add_argument("--n-jobs", type=int, default=4)
    p.add_argument("--watch", action="store_true", help="wait for snapshots until TRAINING_DONE")
    p.add_argument("--worker", type=int, default=0)
    p.add_argument("--n-workers", type=int, default=1)
    p.add_argument("--tags", default="")
    p.add_argument("--suffix", default="", help="result file suffix (e.g. another MLIP)")
    p = sub.add_parser("plot")
    p.add_argument("results", nargs="*", help="scaling.jsonl files (screened snapshots)")
    p.add_argument("--ldm", nargs="*", default=[], help="ldm.jsonl files (loss curves)")
    p.add_argument("--vae", nargs="*", default=[], help="vae.jsonl files (reconstruction)")
    p.add_argument("--figure", default=str(ROOT / "benchmarks/figures/generator_scaling.png"))
    p.add_argument("--json", default=str(ROOT / "benchmarks/generator_scaling.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    for noisy in ("xtalforge.screening", "chgnet"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if hasattr(args, "out"):
        Path(args.out).mkdir(parents=True, exist_ok=True)
    {"vae": cmd_vae, "ldm": cmd_ldm, "eval": cmd_eval, "plot": cmd_plot}[args.cmd](args)


if __name__ == "__main__":
    main()
