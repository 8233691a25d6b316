"""Train the latent-diffusion generator on MP-20 and report reconstruction / sample validity.

Trains VAE then LDM on a training split (the MP-20 *validation* split here, since the train
positions are not available), saves the checkpoint, then reports:

* VAE reconstruction match rate on a test split: encode with posterior means, decode, and
  ``StructureMatcher()`` (default tolerances) against the input;
* for ``--n-samples`` generated crystals (atom counts from the training distribution): the
  fraction that decode, that are structurally valid (all interatomic distances, periodic images
  included, > 0.5 Å, and volume > 0.1 Å^3) and SMACT-valid
  (``smact_validity(comp, oxidation_states_set="icsd24")``);
* training wall times.

Examples
--------
Parse the CSVs once into compact caches (CPU)::

    python benchmarks/train_mp20.py --train ../shared/data/mp20/val.csv.gz \
        --test ../shared/data/mp20/test.csv.gz --parse-only --cache-dir out/mp20_cache

Train and evaluate::

    python benchmarks/train_mp20.py --train out/mp20_cache/val.pt --test out/mp20_cache/test.pt \
        --preset medium --device cuda --dtype bf16 --vae-minutes 2.5 --ldm-minutes 2 \
        --out-dir out/mp20_run

Evaluate an existing checkpoint only: ``--checkpoint PATH --eval-only``.

Fine-tune only the decoder of a checkpoint on noised latents (encoder and LDM untouched), with
reconstructions from noised latents reported::

    python benchmarks/train_mp20.py --train val.pt --test test.pt --checkpoint gen.pt \
        --vae-steps 0 --ldm-steps 0 --decoder-noise 0.3 --decoder-minutes 3 --out-dir out/dec

``--decoder-from PATH`` evaluates (and saves) the checkpoint with the decoder of ``PATH``;
``--compare-decoder PATH`` decodes the same sampled latents with both decoders.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import multiprocessing as mp
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from xtalforge.models.crystal import (
    CrystalBatch,
    batch_to_structures,
    structures_to_batch,
)
from xtalforge.models.diffusion import LatentDiffusion
from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator
from xtalforge.models.training import finetune_decoder, train_ldm, train_vae

logger = logging.getLogger("train_mp20")


# ------------------------------------------------------------------------------------- data
def _parse_cif(cif: str):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def load_structures(path: str | Path, max_atoms: int = 20) -> tuple[list, dict]:
    """Structures from an MP-20 style CSV(.gz) with a ``cif`` column, or a ``.pt`` cache.

    Returns the structures and counts of rows read / skipped (unparseable, disordered, too
    large).
    """
    path = Path(path)
    if path.suffix == ".pt":
        d = torch.load(path, weights_only=True)
        batch = CrystalBatch(
            d["atom_types"], d["frac_coords"], d["lattice"], d["atom_types"] > 0, d["num_atoms"]
        )
        structures = batch_to_structures(batch)
        return structures, dict(d["stats"])
    import pandas as pd

    df = pd.read_csv(path)
    out, bad, too_big, disordered = [], 0, 0, 0
    for cif in df["cif"]:
        try:
            s = _parse_cif(cif)
        except Exception:  # noqa: BLE001 - any parse failure is counted and skipped
            bad += 1
            continue
        if not s.is_ordered:
            disordered += 1
            continue
        if len(s) > max_atoms:
            too_big += 1
            continue
        out.append(s)
    stats = dict(
        rows=len(df), parsed=len(out), bad_rows=bad, too_big=too_big, disordered=disordered
    )
    logger.info("%s: %s", path, stats)
    return out, stats


def save_cache(structures: list, stats: dict, path: Path, max_atoms: int) -> None:
    """Write parsed structures as a compact float64 tensor cache (exact round trip)."""
    b = structures_to_batch(structures, max_atoms=max_atoms, dtype=torch.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        dict(
            atom_types=b.atom_types,
            frac_coords=b.frac_coords,
            lattice=b.lattice,
            num_atoms=b.num_atoms,
            stats=stats,
        ),
        path,
    )


# ------------------------------------------------------------------------------------- metrics
def _match_pair(pair) -> bool:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    a, b = pair
    if b is None:
        return False
    try:
        return bool(StructureMatcher().fit(a, b))
    except Exception:  # noqa: BLE001 - a matcher failure counts as no match
        return False


def match_rate(originals: list, recons: list, workers: int) -> np.ndarray:
    """Boolean array: ``StructureMatcher().fit(original, reconstruction)``."""
    pairs = list(zip(originals, recons, strict=True))
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            res = pool.map(_match_pair, pairs, chunksize=64)
    else:
        res = [_match_pair(p) for p in pairs]
    return np.asarray(res, dtype=bool)


def structure_valid(s, cutoff: float = 0.5) -> bool:
    """All interatomic distances (periodic images included) > ``cutoff`` and volume > 0.1."""
    if s is None or s.volume < 0.1:
        return False
    if len(s) > 1:
        dm = s.distance_matrix + np.eye(len(s)) * 1e3
        if dm.min() <= cutoff:
            return False
    # shortest lattice translation = distance of an atom to its own images
    return bool(min(s.lattice.get_lll_reduced_lattice().abc) > cutoff)


def min_distance_summary(structures: list) -> dict:
    """Quantiles of each crystal's shortest interatomic distance (periodic images included).

    The 0.5 A structural-validity cut passes crystals whose atoms are far closer than in any
    real one; these quantiles and the fraction above 1.0 A show how realistic positions are.
    """
    d = []
    for s in structures:
        if s is None or len(s) < 2:
            continue
        dm = s.distance_matrix + np.eye(len(s)) * 1e3
        d.append(min(float(dm.min()), min(s.lattice.get_lll_reduced_lattice().abc)))
    if not d:
        return {"n": 0}
    a = np.asarray(d)
    q = np.percentile(a, [5, 25, 50, 75])
    return {"n": len(a), "q05": float(q[0]), "q25": float(q[1]), "median": float(q[2]),
            "q75": float(q[3]), "frac_above_1A": float((a > 1.0).mean())}


def smact_valid(s) -> bool:
    """SMACT charge-neutrality / electronegativity screen (icsd24 oxidation states)."""
    from smact.screening import smact_validity

    if s is None:
        return False
    try:
        return bool(smact_validity(s.composition, oxidation_states_set="icsd24"))
    except (TypeError, ValueError, KeyError):
        return False


def _save_structures(structures: list, path: Path) -> None:
    """Write structures (``None`` kept) as gzipped JSON of pymatgen dicts."""
    import gzip

    with gzip.open(path, "wt") as fh:
        json.dump([None if s is None else s.as_dict() for s in structures], fh)


@torch.no_grad()
def noised_reconstruction(gen, test: list, levels: list[float], device, args) -> dict:
    """Reconstruction from posterior means plus noise of each level (in latent stds).

    Shows how far the decoder tolerates latent errors of the size a diffusion model makes:
    the StructureMatcher match rate and shortest-distance quantiles of the decoded crystals.
    """
    out = {}
    batch = structures_to_batch(test, max_atoms=gen.max_atoms)
    std = gen.ldm.latent_std.to(device)
    g = torch.Generator(device=device).manual_seed(args.seed + 7)
    for level in levels:
        recs: list = []
        for start in range(0, len(batch), 512):
            b = batch[slice(start, start + 512)].to(device)
            mean, _ = gen.vae.encode(b)
            eps = torch.randn(mean.shape, generator=g, device=device)
            z = mean + level * std * eps
            recs.extend(batch_to_structures(gen.vae.decode_batch(z, b.mask).to("cpu")))
        matched = match_rate(test, recs, args.workers)
        out[str(level)] = {"match_rate": float(matched.mean()),
                           "min_distance": min_distance_summary(recs)}
        logger.info("reconstruction from latents + %.2f std noise: %s", level, out[str(level)])
    return out


def sample_metrics(gen, args, device, path: Path) -> dict:
    """Validity and shortest-distance metrics of ``--n-samples`` generated crystals."""
    res = gen.generate(
        args.n_samples,
        seed=args.seed,
        batch_size=1000,
        device=device,
        dtype=args.dtype,
        steps=args.steps,
        eta=args.eta,
    )
    valid_struct = np.array([structure_valid(s) for s in res.structures])
    try:
        import smact.screening  # noqa: F401

        valid_comp = np.array([smact_valid(s) for s in res.structures])
    except ImportError as exc:  # keep going: the samples are saved for a later check
        logger.warning("smact unavailable (%s): SMACT validity not computed", exc)
        valid_comp = None
    _save_structures(res.structures, path)
    reasons: dict[str, int] = {}
    for r in res.reasons:
        if r is not None:
            key = r.split("(")[0].strip()
            reasons[key] = reasons.get(key, 0) + 1
    out = {
        "n": args.n_samples,
        "steps": args.steps,
        "eta": args.eta,
        "dtype": args.dtype,
        "decoded_fraction": res.num_valid / args.n_samples,
        "structural_validity": float(valid_struct.mean()),
        "smact_validity": None if valid_comp is None else float(valid_comp.mean()),
        "both_valid": None if valid_comp is None else float((valid_struct & valid_comp).mean()),
        "invalid_decode_reasons": reasons,
        "timings_s": res.timings,
        "mean_num_atoms": float(np.mean(res.num_atoms)),
        "min_distance": min_distance_summary(res.structures),
    }
    logger.info("sampling %s", out)
    return out


# ------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", required=True, help="train CSV(.gz) with a cif column, or .pt")
    ap.add_argument("--test", required=True, help="test CSV(.gz) or .pt cache")
    ap.add_argument("--out-dir", default="out/mp20_run")
    ap.add_argument("--cache-dir", default=None, help="write parsed .pt caches here")
    ap.add_argument("--parse-only", action="store_true")
    ap.add_argument("--preset", default="medium", choices=["tiny", "medium", "paper"])
    ap.add_argument("--vae-hidden", type=int, default=None)
    ap.add_argument("--vae-layers", type=int, default=None, help="encoder = decoder layers")
    ap.add_argument("--dit-depth", type=int, default=None)
    ap.add_argument("--dit-hidden", type=int, default=None)
    ap.add_argument("--dit-heads", type=int, default=None)
    ap.add_argument("--vae-steps", type=int, default=20000)
    ap.add_argument("--ldm-steps", type=int, default=20000)
    ap.add_argument("--vae-minutes", type=float, default=None, help="stop VAE training after")
    ap.add_argument("--ldm-minutes", type=float, default=None, help="stop LDM training after")
    ap.add_argument("--kl-weight", type=float, default=None,
                    help="VAE KL weight (default: the preset's, 1e-5 as in Park & Walsh 2025)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--vae-lr", type=float, default=1e-4)
    ap.add_argument("--ldm-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on CUDA")
    ap.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--max-test", type=int, default=None)
    ap.add_argument("--workers", type=int, default=max(1, (mp.cpu_count() or 2) - 1))
    ap.add_argument("--checkpoint", default=None, help="load this checkpoint")
    ap.add_argument(
        "--new-ldm",
        action="store_true",
        help="with --vae-steps 0: keep the checkpoint's VAE, train a fresh LDM (--dit-* sizes)",
    )
    ap.add_argument("--ema-decay", type=float, default=None, help="EMA decay of a new LDM")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument(
        "--inference-only-checkpoint",
        action="store_true",
        help="save only the EMA denoiser (smaller file)",
    )
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--decoder-noise", type=float, default=None,
                    help="fine-tune the decoder on latents noised up to this many latent stds")
    ap.add_argument("--decoder-steps", type=int, default=20000)
    ap.add_argument("--decoder-minutes", type=float, default=None)
    ap.add_argument("--decoder-lr", type=float, default=1e-4)
    ap.add_argument("--decoder-from", default=None,
                    help="use the decoder of this checkpoint (same encoder) before evaluating")
    ap.add_argument("--compare-decoder", default=None,
                    help="also decode the sampled latents with this checkpoint's decoder")
    ap.add_argument("--recon-noise", default="0,0.1,0.2",
                    help="latent noise levels (latent stds) for noised-reconstruction metrics")
    ap.add_argument("--no-sample", action="store_true", help="skip the sampling metrics")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(args.seed)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    train, train_stats = load_structures(args.train)
    test, test_stats = load_structures(args.test)
    parse_s = time.perf_counter() - t0
    if args.cache_dir:
        cache = Path(args.cache_dir)
        save_cache(train, train_stats, cache / (Path(args.train).name.split(".")[0] + ".pt"), 20)
        save_cache(test, test_stats, cache / (Path(args.test).name.split(".")[0] + ".pt"), 20)
        logger.info("wrote caches to %s", cache)
    if args.parse_only:
        return {}
    if args.max_train:
        train = train[: args.max_train]
    if args.max_test:
        test = test[: args.max_test]

    device = torch.device(args.device)
    metrics: dict = {
        "command": " ".join([sys.executable, *sys.argv]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "train_data": {"path": args.train, **train_stats, "used": len(train)},
        "test_data": {"path": args.test, **test_stats, "used": len(test)},
        "parse_s": parse_s,
    }
    if args.checkpoint:
        gen = LatentDiffusionGenerator.load(args.checkpoint, map_location=device)
        if args.new_ldm:
            if args.vae_steps > 0:
                ap.error("--new-ldm keeps the checkpoint's VAE: use it with --vae-steps 0")
            dit = gen.config.dit
            dit.depth = args.dit_depth or dit.depth
            dit.hidden_dim = args.dit_hidden or dit.hidden_dim
            dit.num_heads = args.dit_heads or dit.num_heads
            if args.ema_decay is not None:
                gen.config.diffusion.ema_decay = args.ema_decay
            gen.ldm = LatentDiffusion(
                gen.config.vae.latent_dim, gen.config.max_atoms, dit, gen.config.diffusion
            ).to(device)
    else:
        cfg = getattr(GeneratorConfig, args.preset)()
        if args.vae_hidden:
            cfg.vae.hidden_dim = args.vae_hidden
        if args.vae_layers:
            cfg.vae.encoder_layers = cfg.vae.decoder_layers = args.vae_layers
        if args.dit_depth:
            cfg.dit.depth = args.dit_depth
        if args.dit_hidden:
            cfg.dit.hidden_dim = args.dit_hidden
        if args.dit_heads:
            cfg.dit.num_heads = args.dit_heads
        if args.kl_weight is not None:
            cfg.vae.w_kl = args.kl_weight
        if args.ema_decay is not None:
            cfg.diffusion.ema_decay = args.ema_decay
        gen = LatentDiffusionGenerator(cfg)
    metrics["config"] = gen.config.to_dict()
    metrics["params"] = {
        "vae": sum(p.numel() for p in gen.vae.parameters()),
        "denoiser": sum(p.numel() for p in gen.ldm.denoiser.parameters()),
    }
    logger.info("params %s", metrics["params"])

    if not args.eval_only:
        common = dict(
            batch_size=args.batch_size,
            device=device,
            seed=args.seed,
            log_every=args.log_every,
            dtype=args.dtype,
            warmup_steps=args.warmup,
            schedule=args.schedule,
        )
        if args.vae_steps > 0:
            h_vae = train_vae(
                gen,
                train,
                steps=args.vae_steps,
                lr=args.vae_lr,
                max_time_s=None if not args.vae_minutes else 60.0 * args.vae_minutes,
                **common,
            )
        else:  # continue the LDM of --checkpoint on its frozen VAE
            if not args.checkpoint:
                ap.error("--vae-steps 0 needs --checkpoint (a trained VAE)")
            h_vae = {"steps": 0, "epochs": 0.0, "wall_time_s": 0.0}
        if args.ldm_steps > 0:
            h_ldm = train_ldm(
                gen,
                train,
                steps=args.ldm_steps,
                lr=args.ldm_lr,
                max_time_s=None if not args.ldm_minutes else 60.0 * args.ldm_minutes,
                # a new VAE needs new latent statistics; a continued LDM keeps the ones it has
                fit_latent_stats=args.vae_steps > 0 or not args.checkpoint or args.new_ldm,
                **common,
            )
        else:
            h_ldm = {"steps": 0, "epochs": 0.0, "wall_time_s": 0.0, "loss": [float("nan")]}
        if args.decoder_noise is not None:
            h_dec = finetune_decoder(
                gen,
                train,
                noise_max=args.decoder_noise,
                steps=args.decoder_steps,
                lr=args.decoder_lr,
                max_time_s=None if not args.decoder_minutes else 60.0 * args.decoder_minutes,
                **common,
            )
        else:
            h_dec = {"steps": 0, "epochs": 0.0, "wall_time_s": 0.0}
        metrics["training"] = {
            "vae": {
                "steps": h_vae["steps"],
                "epochs": h_vae["epochs"],
                "wall_time_s": h_vae["wall_time_s"],
                "lr": args.vae_lr,
                "final": {
                    k: h_vae[k][-1]
                    for k in h_vae
                    if isinstance(h_vae[k], list) and k not in ("step", "lr")
                },
            },
            "ldm": {
                "steps": h_ldm["steps"],
                "epochs": h_ldm["epochs"],
                "wall_time_s": h_ldm["wall_time_s"],
                "lr": args.ldm_lr,
                "final_loss": h_ldm["loss"][-1],
            },
            "decoder": {
                "steps": h_dec["steps"],
                "epochs": h_dec["epochs"],
                "wall_time_s": h_dec["wall_time_s"],
                "noise_max": args.decoder_noise,
                "lr": args.decoder_lr,
                "final_loss": h_dec["loss"][-1] if "loss" in h_dec else None,
            },
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "tf32": args.tf32,
            "schedule": args.schedule,
            "warmup_steps": args.warmup,
            "total_wall_time_s": h_vae["wall_time_s"] + h_ldm["wall_time_s"]
            + h_dec["wall_time_s"],
        }
        ckpt = out_dir / "generator.pt"
        metrics["checkpoint"] = {
            "path": str(ckpt),
            "sha256": gen.save(ckpt, args.inference_only_checkpoint),
            "bytes": ckpt.stat().st_size,
            "inference_only": args.inference_only_checkpoint,
        }
        (out_dir / "history.json").write_text(
            json.dumps({"vae": h_vae, "ldm": h_ldm, "decoder": h_dec})
        )
    if args.decoder_from:
        gen.take_decoder(LatentDiffusionGenerator.load(args.decoder_from, map_location=device))
        metrics["decoder_from"] = args.decoder_from
        logger.info("decoder taken from %s", args.decoder_from)

    # reconstruction
    t = time.perf_counter()
    rec = gen.reconstruct(test, device=device)
    rec_s = time.perf_counter() - t
    t = time.perf_counter()
    matched = match_rate(test, rec.structures, args.workers)
    metrics["reconstruction"] = {
        "n": len(test),
        "match_rate": float(matched.mean()),
        "n_matched": int(matched.sum()),
        "n_invalid_decodes": int(sum(r is not None for r in rec.reasons)),
        "matcher": "pymatgen StructureMatcher() defaults (ltol=0.2, stol=0.3, angle_tol=5)",
        "latent": "posterior mean",
        "encode_decode_s": rec_s,
        "match_s": time.perf_counter() - t,
    }
    logger.info("reconstruction %s", metrics["reconstruction"])
    metrics["noised_reconstruction"] = noised_reconstruction(
        gen, test, [float(v) for v in args.recon_noise.split(",") if v], device, args
    )
    if not args.no_sample:
        metrics["sampling"] = sample_metrics(gen, args, device, out_dir / "samples.json.gz")
        if args.compare_decoder:
            other = copy.deepcopy(gen)
            other.take_decoder(LatentDiffusionGenerator.load(args.compare_decoder,
                                                             map_location=device))
            metrics["sampling_compare_decoder"] = {
                "decoder_from": args.compare_decoder,
                **sample_metrics(other, args, device, out_dir / "samples_compare.json.gz"),
            }
    # the same validity metrics on (a sample of) the reference test structures, for scale
    ref = test[: args.n_samples]
    metrics["reference_test_validity"] = {
        "n": len(ref),
        "structural_validity": float(np.mean([structure_valid(s) for s in ref])),
        "smact_validity": float(np.mean([smact_valid(s) for s in ref])),
        "min_distance": min_distance_summary(ref),
    }
    logger.info("reference test min distances %s", metrics["reference_test_validity"])
    metrics["total_wall_s"] = time.perf_counter() - t0
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print(
        json.dumps({k: metrics[k] for k in metrics if k not in ("config",)}, indent=2, default=str)
    )
    return metrics


if __name__ == "__main__":
    main()
