"""De novo GRPO fine-tuning of the MP-20 generator, its ablation, and a band-gap-target run.

From a pretrained generator checkpoint (trained on the project's MP-20 split, val + test
minus 1,000 held-out test crystals; the earlier runs' generators on MP-20 val alone) this
script

1. builds the reward resources once: CHGNet (the offline MLIP of the screening layer), a hull,
   the novelty reference (``--novelty-reference``: MP-20 val + test, 18,093, by default;
   MP-20 val, 9,047, in the rows before 2026-12-06), VAE reference embeddings of the same
   structures, and held-out latents (MP-20 test) for the
   drift monitor;
2. trains the band-gap surrogate (MLP on VAE latents) on MP-20 val ``dft_band_gap`` and reports
   its MAE on MP-20 test;
3. runs GRPO with the de novo reward (``dng``: creativity 1, stability 1, compositional
   diversity 1, structural diversity 0.1), the ablation without diversity rewards
   (``dng_no_diversity``) at the same budget, and a band-gap run (``bandgap``: target 3 eV,
   weight 1, compositional diversity 0.5), each from the same base checkpoint;
4. samples ``--n-samples`` crystals from the base and every fine-tuned model with the same
   sampler (DDIM 50 steps, eta 1: the policy RL optimises; the same seed, hence the same atom
   counts) and screens them identically: CHGNet single points on the as-generated structures,
   the same hull, StructureMatcher uniqueness and novelty against the reference, SMACT (ICSD24),
   metastability ``E_hull < 0.1 eV/atom``, coverage ``1/(1+FMD)`` of VAE structure embeddings
   against the reference; prints them in the layout of Park & Walsh 2025 Table S1, the number of
   distinct reduced formulas (mode collapse check, Fig. 2c), and the fraction of
   surrogate-predicted gaps within 2.7-3.3 eV before and after the band-gap run.

Hull: MP-20 formation energies (all 45,229 entries, DFT GGA/GGA+U with MP2020 corrections as
distributed with MP-20, elements at 0) queried with CHGNet total energies converted by CHGNet
elemental chemical potentials ``E_form = E_CHGNet - sum_a mu_a n_a`` (Park & Walsh 2025,
Methods). The ``mu_a`` are the lowest CHGNet single-point energies per atom of the elemental
structures in MP-20 val + test; elements without one there use ASE's reference crystal relaxed
with CHGNet;
elements for which that fails are left out (their chemical systems are not covered: NaN, counted
as not metastable). The sources are printed and saved.

Examples
--------
CPU, small sizes (minutes)::

    python benchmarks/rl_denovo.py --checkpoint out/gpu_run1/generator.pt --small \
        --device cpu --out-dir out/rl_small

GPU::

    python benchmarks/rl_denovo.py --checkpoint gen.pt --device cuda --rl-seconds 90 \
        --n-samples 1000 --n-jobs 15 --out-dir /tmp/rl
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("rl_denovo")
warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------------- data
def _parse(cif: str):
    import warnings as _w

    from pymatgen.core import Structure

    with _w.catch_warnings():
        _w.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


def load_split(data_dir: Path, name: str, workers: int, cache_dir: Path | None = None):
    """Structures and table of an MP-20 split (a ``.pt`` cache of train_mp20.py if given)."""
    import pandas as pd

    df = pd.read_csv(data_dir / f"{name}.csv.gz")
    cache = cache_dir / f"{name}.pt" if cache_dir else None
    if cache is not None and cache.exists():
        from xtalforge.models.crystal import CrystalBatch, batch_to_structures

        d = torch.load(cache, weights_only=True)
        if int(d["stats"]["parsed"]) == len(df) == int(d["stats"]["rows"]):
            b = CrystalBatch(d["atom_types"], d["frac_coords"], d["lattice"],
                             d["atom_types"] > 0, d["num_atoms"])
            structs = batch_to_structures(b)
            from pymatgen.core import Composition

            ok = all(s.composition.reduced_formula == Composition(f).reduced_formula
                     for s, f in zip(structs[:200], df["pretty_formula"][:200], strict=True))
            if ok:
                return structs, df
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            structs = pool.map(_parse, df["cif"].tolist(), chunksize=64)
    else:
        structs = [_parse(c) for c in df["cif"]]
    return structs, df


def chemical_potentials(energy_model, structures, out: Path) -> tuple[dict, dict]:
    """CHGNet elemental chemical potentials (cached in ``out``) and their sources."""
    from xtalforge.screening.hull import mlip_chemical_potentials

    return mlip_chemical_potentials(energy_model, structures, cache_path=out)


# ------------------------------------------------------------------------------- screening
def evaluate(label, gen, args, res, device, surrogate=None) -> dict:
    """Sample ``args.n_samples`` and screen them; returns the summary row."""
    from xtalforge.screening.metrics import coverage
    from xtalforge.screening.screen import screen_structures

    t0 = time.perf_counter()
    out = gen.generate(args.n_samples, seed=args.eval_seed, batch_size=args.sample_batch,
                       device=device, dtype=args.dtype, steps=args.sampling_steps,
                       eta=args.eval_eta, use_ema=True)
    t1 = time.perf_counter()
    structs = out.structures
    row: dict = {"model": label, "n": len(structs), "t_sample_s": t1 - t0}
    formulas = {s.composition.reduced_formula for s in structs if s is not None}
    row["n_distinct_formulas"] = len(formulas)
    row["frac_decoded"] = out.num_valid / len(structs)
    if surrogate is not None:
        g = surrogate.predict_structures(gen, structs, device=device)
        fin = np.isfinite(g)
        row["gap_frac_2.7_3.3"] = float(((g >= 2.7) & (g <= 3.3) & fin).sum() / len(g))
        row["gap_mean"] = float(np.nanmean(g))
        row["gap_median"] = float(np.nanmedian(g))
    if args.screen and label.split("+")[0].split("@")[0] in args.screen_models:
        from xtalforge.rewards.resources import GuardedEnergyModel

        records, summary = screen_structures(
            structs, GuardedEnergyModel(res.energy_model, res.min_volume_per_atom), res.hull,
            reference_structures=res.reference,
            n_jobs=args.n_jobs, batch_size=256, progress=False)
        emb = gen.embed_structures(structs, device=device)
        ok = np.all(np.isfinite(emb), axis=1)
        row.update({
            "mSUN": summary["mSUN"], "uniqueness": summary["uniqueness"],
            "novelty": summary["novelty"], "smact_validity": summary["smact_validity"],
            "metastability": summary["metastability"],
            "coverage": (coverage(emb[ok], res.reference_structure_embeddings)
                         if ok.sum() >= 2 else float("nan")),
            "structural_validity": summary["structural_validity"],
            "SUN": summary["SUN"], "mean_e_above_hull": summary.get("mean_e_above_hull"),
            "n_with_e_above_hull": summary.get("n_with_e_above_hull"),
            "t_screen_s": summary["timings_s"]["total"],
        })
        if args.save_samples:  # the record format that second_opinion.py reads
            import gzip

            from generator_scaling import sample_records

            path = args.out_dir / f"samples_{label.replace('@', '_')}.json.gz"
            with gzip.open(path, "wt") as fh:
                json.dump(sample_records(structs, records), fh)
            row["samples_file"] = path.name
        e = np.array([r["e_above_hull"] for r in records if r.get("e_above_hull") is not None],
                     dtype=float)
        e = e[np.isfinite(e)]
        if e.size:  # where the E_hull mass sits: how far the samples are from metastability
            row.update({"e_hull_q10": float(np.quantile(e, 0.1)),
                        "e_hull_median": float(np.median(e)),
                        "frac_e_hull_below_0.5": float((e < 0.5).sum() / len(structs)),
                        "frac_e_hull_below_1": float((e < 1.0).sum() / len(structs))})
    row["t_eval_s"] = time.perf_counter() - t0
    logger.info("eval %s: %s", label, {k: (round(v, 4) if isinstance(v, float) else v)
                                       for k, v in row.items()})
    return row


def print_table(rows: list[dict]) -> None:
    """Park & Walsh 2025 Table S1 layout (percentages; coverage = 1/(1+FMD))."""
    cols = [("mSUN", "mSUN"), ("uniqueness", "Uniq."), ("novelty", "Novelty"),
            ("smact_validity", "SMACT"), ("metastability", "Metast."),
            ("coverage", "Coverage"), ("n_distinct_formulas", "#formulas"),
            ("mean_e_above_hull", "<E_hull>")]
    print(f"{'model':<28}" + "".join(f"{h:>10}" for _, h in cols))
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                cells.append(f"{'-':>10}")
            elif k in ("coverage", "mean_e_above_hull"):
                cells.append(f"{v:>10.4f}")
            elif k == "n_distinct_formulas":
                cells.append(f"{v:>10d}")
            else:
                cells.append(f"{100 * v:>9.1f}%")
        print(f"{r['model']:<28}" + "".join(cells))


# ------------------------------------------------------------------------------------- RL
def run_rl(name, preset, base, args, res, device, val_latents) -> tuple:
    from xtalforge.rewards.registry import build_reward
    from xtalforge.rl.grpo import GRPOConfig, GRPOTrainer

    gen = copy.deepcopy(base)
    cfg = GRPOConfig(
        algorithm=args.algorithm, group_size=args.group_size,
        num_conditions=args.num_conditions, clip_eps=args.clip_eps, kl_weight=args.kl_weight,
        entropy_weight=args.entropy_weight, reference=args.reference, lr=args.lr,
        kl_estimator=args.kl_estimator,
        num_inner_batches=args.inner_batches, max_steps=args.rl_steps,
        patience=args.patience, sampling_steps=args.sampling_steps, eta=1.0,
        dtype=args.dtype, seed=args.seed, val_every=args.val_every, max_kl=args.max_kl,
        select_by=args.select_by, eval_every=args.eval_every, eval_samples=args.eval_samples)
    reward = build_reward(preset, normalize_scope=args.normalize_scope)
    for c in reward.components:
        if c.name == "stability" and args.stability_clip != 1.0:
            c.clip, c.failure_value = args.stability_clip, -args.stability_clip
            c._kwargs["clip"] = args.stability_clip
        if c.name.endswith("_diversity"):
            c.weight *= args.diversity_scale
    tr = GRPOTrainer(gen, reward, res, cfg, device=device, val_latents=val_latents)
    t0 = time.perf_counter()
    if args.val_every:
        from xtalforge.rl.grpo import validation_loss

        val0 = validation_loss(gen.ldm, *val_latents)
    else:
        val0 = None
    while tr.step < args.rl_steps and not tr.stopped:
        if args.rl_seconds and time.perf_counter() - t0 > args.rl_seconds:
            logger.info("%s: time budget %.0f s reached at step %d", name, args.rl_seconds,
                        tr.step)
            break
        row = tr.train_step()
        keys = [k for k in row if k.startswith("reward/")] + [
            "reward_raw_total", "kl", "clip_frac", "ratio_mean", "adv_var", "val_nll",
            "frac_msun", "frac_unique", "frac_novel", "frac_metastable",
            "n_distinct_formulas", "eval/frac_msun", "eval/frac_metastable",
            "eval/mean_e_above_hull", "eval/n_distinct_formulas", "wall_time_s"]
        print(f"[{name}] step {row['step']:3d} " + " ".join(
            f"{k.replace('reward/', 'r_')}={row[k]:.4g}" for k in keys
            if k in row and isinstance(row[k], float)), flush=True)
    selected = tr.restore_best()
    tr.sync_ema()
    info = {"name": name, "preset": preset, "steps": tr.step, "wall_time_s":
            time.perf_counter() - t0, "val_nll_start": val0, "describe": tr.describe(),
            "stop_reason": tr.stop_reason, "selected_policy": selected, "curves": tr.curves}
    if selected:
        print(f"[{name}] kept the policy after {selected['policy_after_updates']} updates "
              f"({selected['select_by']} = {selected['value']:.4g}); stop: {tr.stop_reason}")
    return gen, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--decoder-from", type=Path, default=None,
                    help="decode with this checkpoint's decoder (same VAE encoder), e.g. one "
                         "fine-tuned on noised latents by train_mp20.py --decoder-noise")
    ap.add_argument("--compare-decoders", default="",
                    help="comma-separated checkpoints whose decoders are also evaluated on the "
                         "base model's samples (rows base+<name>) before the RL runs")
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mp20")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="train_mp20.py .pt caches of val/test (faster than parsing CIFs)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "out" / "rl_denovo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--small", action="store_true", help="CPU sizes (see --help defaults)")
    ap.add_argument("--runs", default="dng,dng_no_diversity,bandgap")
    ap.add_argument("--algorithm", default="grpo", choices=["grpo", "reinforce"])
    ap.add_argument("--reference", default="pretrained", choices=["pretrained", "rollout"])
    ap.add_argument("--tag", default="",
                    help="suffix of the fine-tuned rows' labels (e.g. '@pretrained-ref'), so that "
                         "runs of one preset with different settings stay apart")
    ap.add_argument("--normalize-scope", default=None, choices=["batch", "group"],
                    help="min-max scope of the reward components (default: the preset's, batch)")
    ap.add_argument("--rl-steps", type=int, default=None)
    ap.add_argument("--rl-seconds", type=float, default=None, help="wall budget per RL run")
    ap.add_argument("--group-size", type=int, default=None)
    ap.add_argument("--num-conditions", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--clip-eps", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1.0)
    ap.add_argument("--kl-estimator", default="k3", choices=["k3", "analytic"])
    ap.add_argument("--entropy-weight", type=float, default=1e-5)
    ap.add_argument("--inner-batches", type=int, default=2)
    ap.add_argument("--patience", type=int, default=500)
    ap.add_argument("--max-kl", type=float, default=None, help="stop when KL exceeds this")
    ap.add_argument("--eval-every", type=int, default=0,
                    help="fixed-seed evaluation of the policy every N steps (eval/... curves)")
    ap.add_argument("--eval-samples", type=int, default=256)
    ap.add_argument("--select-by", default=None,
                    help="keep the policy with the best rollout value of this curve key "
                         "(e.g. frac_msun); default: the last policy")
    ap.add_argument("--val-every", type=int, default=1)
    ap.add_argument("--sampling-steps", type=int, default=50)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--sample-batch", type=int, default=500)
    ap.add_argument("--eval-eta", type=float, default=1.0)
    ap.add_argument("--eval-seed", type=int, default=12345)
    ap.add_argument("--no-screen", dest="screen", action="store_false")
    ap.add_argument("--skip-base", action="store_true",
                    help="do not evaluate the base model (another process of the same sweep does)")
    ap.add_argument("--screen-models", default="base,dng,dng_no_diversity,bandgap")
    ap.add_argument("--surrogate-epochs", type=int, default=None)
    ap.add_argument("--surrogate", type=Path, default=None,
                    help="reuse a band-gap surrogate saved by an earlier run (skips training)")
    ap.add_argument("--n-val-latents", type=int, default=256)
    ap.add_argument("--save-samples", action="store_true",
                    help="write every screened model's samples with their E_hull and flags to "
                         "samples_<model>.json.gz in --out-dir")
    ap.add_argument("--novelty-reference", choices=["val", "val+test"], default="val+test",
                    help="MP-20 structures that novelty, creativity and the coverage embeddings "
                         "are measured against: val+test (every MP-20 structure with positions "
                         "here, the training data of the project's split) or val (the rows "
                         "before 2026-12-06)")
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="CIF parsing processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-checkpoints", action="store_true",
                    help="write each fine-tuned generator to <out-dir>/<run>.pt (inference only)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--mu-file", type=Path, default=None,
                    help="precomputed CHGNet chemical potentials (chgnet_mu.json) to reuse")
    ap.add_argument("--diversity-scale", type=float, default=1.0,
                    help="multiplies the weights of the diversity components (paper: 1)")
    ap.add_argument("--stability-clip", type=float, default=1.0,
                    help="clip of the stability reward -clip(E_hull, 0, c) (paper: 1 eV/atom)")
    args = ap.parse_args()
    small = dict(rl_steps=20, group_size=8, num_conditions=4, lr=1e-5, surrogate_epochs=30)
    full = dict(rl_steps=500, group_size=64, num_conditions=5, lr=1e-5, surrogate_epochs=100)
    for k, v in (small if args.small else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.screen_models = set(args.screen_models.split(","))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    for noisy in ("xtalforge.screening", "xtalforge.models", "xtalforge.rl", "chgnet"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = args.device
    t_start = time.perf_counter()
    dev_name = torch.cuda.get_device_name() if device.startswith("cuda") else os.uname().machine
    print(f"device {device} ({dev_name}), torch {torch.__version__}, args {vars(args)}")

    from xtalforge.models.generator import LatentDiffusionGenerator, file_sha256
    from xtalforge.rewards.resources import RewardResources
    from xtalforge.rewards.surrogate import encode_structures, train_surrogate
    from xtalforge.screening.hull import ReferenceHull
    from xtalforge.screening.metrics import ReferenceSet
    from xtalforge.screening.mlip import get_energy_model

    # ------------------------------------------------------------------ resources
    t = time.perf_counter()
    val_s, val_df = load_split(args.data_dir, "val", args.workers, args.cache_dir)
    test_s, test_df = load_split(args.data_dir, "test", args.workers, args.cache_dir)
    print(f"loaded MP-20 val {len(val_s)} / test {len(test_s)} in {time.perf_counter() - t:.1f}s")
    base = LatentDiffusionGenerator.load(args.checkpoint, map_location=device)
    sha = file_sha256(args.checkpoint)
    print(f"checkpoint {args.checkpoint} sha256 {sha[:16]}")
    if args.decoder_from:
        base.take_decoder(LatentDiffusionGenerator.load(args.decoder_from, map_location=device))
        print(f"decoder from {args.decoder_from} sha256 {file_sha256(args.decoder_from)[:16]}")
    chg = get_energy_model("chgnet", device=device)
    import pandas as pd

    t = time.perf_counter()
    mu_path = args.out_dir / "chgnet_mu.json"
    if args.mu_file and not mu_path.exists():
        d = json.loads(args.mu_file.read_text())
        d["energy_model_fingerprint"] = chg.fingerprint
        mu_path.write_text(json.dumps(d))
        print(f"chemical potentials taken from {args.mu_file}")
    mu, mu_src = chemical_potentials(chg, val_s + test_s, mu_path)
    allf = pd.read_csv(args.data_dir / "mp20_all_formation_energies_ehull.csv.gz")
    hull = ReferenceHull.from_formation_energies(
        allf["pretty_formula"], allf["formation_energy_per_atom"], allf["material_id"],
        chemical_potentials=mu,
        convention={"energy_source": "DFT (MP GGA/GGA+U, MP2020 as in MP-20)",
                    "reference_set": "MP-20 all formation energies (45,229)",
                    "queries": "CHGNet 0.3.0 single points, E_form = E - sum mu_a n_a",
                    "chemical_potentials_source": "CHGNet (see chgnet_mu.json)"})
    no_mu = sorted(k for k, v in mu_src.items() if k not in mu)
    print(f"hull {hull}; CHGNet mu for {len(mu)} elements in {time.perf_counter() - t:.1f}s; "
          f"without mu: {no_mu}; sources: "
          f"{pd.Series(list(mu_src.values())).str.split(',').str[0].value_counts().to_dict()}")
    ref_s, ref_ids = val_s, list(val_df["material_id"])
    if args.novelty_reference == "val+test":
        ref_s, ref_ids = val_s + test_s, ref_ids + list(test_df["material_id"])
    ref = ReferenceSet(ref_s, ref_ids)
    print(f"novelty reference: MP-20 {args.novelty_reference} ({len(ref_s)} structures)")
    t = time.perf_counter()
    ref_struct_emb = base.embed_structures(ref_s, device=device)
    ref_comp_emb = base.composition_embeddings(ref_s, device=device)
    rng = np.random.default_rng(args.seed)
    vidx = sorted(rng.choice(len(test_s), args.n_val_latents, replace=False))
    val_latents = encode_structures(base, [test_s[i] for i in vidx], device=device)
    print(f"reference embeddings + val latents in {time.perf_counter() - t:.1f}s")
    res = RewardResources(energy_model=chg, hull=hull, reference=ref, generator=base,
                          reference_structure_embeddings=ref_struct_emb,
                          reference_composition_embeddings=ref_comp_emb, n_jobs=args.n_jobs,
                          device=device, energy_batch_size=256)

    # ------------------------------------------------------------------ surrogate
    surrogate = None
    if "bandgap" in args.runs:
        t = time.perf_counter()
        if args.surrogate is not None:
            from xtalforge.rewards.surrogate import PropertySurrogate

            surrogate = PropertySurrogate.load(args.surrogate, map_location=device)
            hist = {"final_train_mae": surrogate.metadata.get("final_train_mae"),
                    "best_val_mae": surrogate.metadata.get("best_val_mae")}
        else:
            surrogate, hist = train_surrogate(
                base, val_s, val_df["dft_band_gap"].to_numpy(), property_name="band_gap",
                epochs=args.surrogate_epochs, device=device, seed=args.seed)
        pred = surrogate.predict_structures(base, test_s, device=device)
        test_mae = float(np.nanmean(np.abs(pred - test_df["dft_band_gap"].to_numpy())))
        base_mae = float(np.mean(np.abs(test_df["dft_band_gap"] - val_df["dft_band_gap"].mean())))
        sur_info = {"train_mae": hist["final_train_mae"], "val_mae": hist["best_val_mae"],
                    "test_mae": test_mae, "test_mae_predict_mean": base_mae,
                    "epochs": (f"loaded from {args.surrogate}" if args.surrogate
                               else args.surrogate_epochs), "wall_s": time.perf_counter() - t}
        print(f"band-gap surrogate: {sur_info}")
        surrogate.save(args.out_dir / "bandgap_surrogate.pt")
        res.surrogates["band_gap"] = surrogate
    else:
        sur_info = None
    print(f"setup done at {time.perf_counter() - t_start:.0f}s")

    # ------------------------------------------------------------------ runs
    results = {"args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path)
                            else v) for k, v in vars(args).items()},
               "device": dev_name, "checkpoint_sha256": sha,
               "decoder_from": str(args.decoder_from) if args.decoder_from else None,
               "hull": hull.convention,
               "chemical_potentials_source": mu_src, "surrogate": sur_info, "rows": [],
               "runs": []}
    rows = [] if args.skip_base else [evaluate("base", base, args, res, device, surrogate)]
    for path in [p for p in args.compare_decoders.split(",") if p]:
        alt = copy.deepcopy(base)
        alt.take_decoder(LatentDiffusionGenerator.load(path, map_location=device))
        tag = Path(path).parent.name if Path(path).stem == "generator" else Path(path).stem
        rows.append(evaluate(f"base+{tag}", alt, args, res, device, surrogate))
        del alt
    print_table(rows)
    results["rows"] = rows
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    for name in [r for r in args.runs.split(",") if r]:  # --runs "" evaluates the base only
        label = f"{name}{args.tag}"
        gen, info = run_rl(label, name, base, args, res, device, val_latents)
        if args.save_checkpoints:
            info["checkpoint_sha256"] = gen.save(args.out_dir / f"{name}.pt", inference_only=True)
        results["runs"].append(info)
        (args.out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
        rows.append(evaluate(label, gen, args, res, device, surrogate))
        print_table(rows)
        results["rows"] = rows
        (args.out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
        del gen
    results["rows"] = rows
    results["total_wall_s"] = time.perf_counter() - t_start
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))

    print("\n=== Table S1 layout: MP-20 de novo generation, "
          f"{args.n_samples} samples per model, DDIM {args.sampling_steps} steps, "
          f"eta {args.eval_eta}, CHGNet single points, hull = MP-20 formation energies + "
          f"CHGNet mu; novelty against MP-20 {args.novelty_reference}; device {dev_name}")
    print_table(rows)
    for info in results["runs"]:
        c = info["curves"]
        if c:
            print(f"{info['name']}: {info['steps']} steps in {info['wall_time_s']:.0f}s; "
                  f"raw reward {c[0]['reward_raw_total']:.4f} -> {c[-1]['reward_raw_total']:.4f}"
                  f"; kl {c[-1]['kl']:.3g}; val_nll {info['val_nll_start']} -> "
                  f"{c[-1].get('val_nll')}; reference {info['describe']['reference']}")
    by = {r["model"]: r for r in rows}
    if {"base", "dng", "dng_no_diversity"} <= set(by):
        print(f"ablation (same budget): distinct reduced formulas among {args.n_samples} samples: "
              f"base {by['base']['n_distinct_formulas']}, dng {by['dng']['n_distinct_formulas']}, "
              f"no diversity {by['dng_no_diversity']['n_distinct_formulas']}")
    if "bandgap" in by and "gap_frac_2.7_3.3" in by.get("base", {}):
        print(f"band gap (surrogate-predicted) within 2.7-3.3 eV: base "
              f"{100 * by['base']['gap_frac_2.7_3.3']:.1f}% -> bandgap RL "
              f"{100 * by['bandgap']['gap_frac_2.7_3.3']:.1f}% (mean "
              f"{by['base']['gap_mean']:.3f} -> {by['bandgap']['gap_mean']:.3f} eV)")
    print(f"total {time.perf_counter() - t_start:.0f}s; results in {args.out_dir}")


if __name__ == "__main__":
    main()
