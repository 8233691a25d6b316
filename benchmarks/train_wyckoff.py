"""Wyckoff transformer on MP-20: resumable pretraining, the fixed screening protocol, PPO.

Stages (sub-commands; ``benchmarks/gpu/wyckoff_pipeline.sh`` runs them in order, started
with ``bash benchmarks/gpu/pipeline.sh start wyckoff_pipeline``):

``train``
    Tokenise the project's MP-20 training split (:func:`xtalforge.data.mp20.load_mp20_split`:
    MP-20 val + test minus the 1,000 held-out crystals; cached in ``--out/sequences.pt``), train
    the Wyckoff transformer (``--model`` preset) with a full training state in
    ``--out/state_wyckoff.pt`` (the same command continues it), save ``snap_<step>.pt`` every
    ``--snapshot-every`` steps and ``wyckoff.pt`` at the end, and log the held-out NLL per
    crystal. Rows go to ``train.jsonl``.
``eval``
    Screen a checkpoint with the protocol of ``benchmarks/generator_scaling.py`` (its
    ``Screener``: 2,000 samples, CHGNet single points on the as-generated structures, the MP-20
    formation-energy hull with CHGNet elemental chemical potentials, uniqueness / novelty
    against MP-20 val + test, SMACT), plus the space-group distribution of the samples against
    the training data and the sampling throughput. Rows go to ``eval.jsonl``.
``ppo``
    PPO fine-tuning (Cao & Wang 2025: r = -E_hull with the same CHGNet / MP-20 hull, tau 0.1,
    eps 0.2, 3 updates per batch, EMA baseline 0.95), resumable from ``ppo_state.pt``; per-step
    curves in ``ppo.jsonl`` (reward, KL to the base, metastable fraction ...), the policy in
    ``ppo.pt``.
``sft``
    The supervised fine-tuning baseline of Cao & Wang 2025 (Fig. 5): sample ``--n-samples``
    crystals of the base model (paper: 10,000), relax them with the MLIP (CHGNet here, Orb in
    the paper; ``--no-relax`` for single points) against the same MP-20 hull, keep those with
    ``E_hull < --threshold`` (0.1 eV/atom) and fine-tune the base model on them by maximum
    likelihood (paper: 55 epochs, batch 100, lr 1e-5). The selection is stored in
    ``sft_selected.json.gz`` (a rerun fine-tunes without sampling again); the model in
    ``sft.pt``; rows in ``sft.jsonl``.
``compare``
    Base vs PPO vs SFT under identical screening: the ``eval`` rows of the given labels
    (2,000 samples from the training space-group distribution each) plus, per model and per
    space group of ``--space-groups`` (default: the 14 groups of Cao & Wang 2025 Fig. 4, two
    per crystal system), ``--n-per-group`` samples with that group fixed, screened the same
    way; one row per (model, group) in ``spacegroups.jsonl`` (a rerun skips those done), then
    ``compare.json``: the rows and the ``sun-per-spacegroup`` table
    (:func:`xtalforge.reports.tables.sun_per_spacegroup_table`, rows per target space group,
    S.U.N. / mSUN / S.S.U.N. fractions).

Example (CPU, toy size)::

    python benchmarks/train_wyckoff.py train --out out/wy --model tiny --steps 20 --limit 200
    python benchmarks/train_wyckoff.py eval --out out/wy --checkpoint out/wy/wyckoff.pt \
        --n-samples 20
    python benchmarks/train_wyckoff.py ppo --out out/wy --checkpoint out/wy/wyckoff.pt \
        --steps 2 --batch-size 16
    python benchmarks/train_wyckoff.py sft --out out/wy --checkpoint out/wy/wyckoff.pt \
        --n-samples 32 --epochs 1
    python benchmarks/train_wyckoff.py compare --out out/wy --models base=out/wy/wyckoff.pt \
        ppo=out/wy/ppo.pt sft=out/wy/sft.pt --n-per-group 8 --space-groups 225 14
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
logger = logging.getLogger("train_wyckoff")

DATA = ROOT.parent / "shared" / "data" / "mp20"


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else os.uname().machine


def _append(path: Path, row: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


def _tokenize_one(s):
    from xtalforge.models.wyckoff.tokenizer import TokenizeError, structure_to_sequence

    try:
        return structure_to_sequence(s)
    except TokenizeError:
        return None


def _sequences(structures: list, workers: int) -> list:
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            return pool.map(_tokenize_one, structures, chunksize=64)
    return [_tokenize_one(s) for s in structures]


def _batch(gen, seqs: list):
    from xtalforge.models.wyckoff.model import SequenceBatch

    cfg = gen.config
    keep = [q for q in seqs if q is not None and len(q) <= cfg.max_sites
            and q.num_atoms <= cfg.max_atoms]
    return SequenceBatch.from_sequences(keep, cfg.max_sites), len(seqs) - len(keep)


def _load_tokens(args, split) -> tuple[list, list]:
    """Training and held-out sequences, cached (a dict of plain lists) in ``sequences.pt``."""
    from xtalforge.models.wyckoff.tokenizer import WyckoffSequence

    cache = Path(args.out) / f"sequences{'_' + str(args.limit) if args.limit else ''}.pt"
    if cache.is_file():
        d = torch.load(cache, weights_only=False)
        return ([None if q is None else WyckoffSequence(**q) for q in d[k]]
                for k in ("train", "heldout"))
    train = split.train[: args.limit] if args.limit else split.train
    t = time.perf_counter()
    tr, ho = _sequences(train, args.workers), _sequences(split.heldout, args.workers)
    logger.info("tokenised %d + %d crystals in %.0f s", len(tr), len(ho), time.perf_counter() - t)

    def plain(q):
        return None if q is None else {"group": q.group, "letters": q.letters,
                                       "elements": q.elements, "coords": q.coords,
                                       "lattice": q.lattice}

    torch.save({"train": [plain(q) for q in tr], "heldout": [plain(q) for q in ho]}, cache)
    return tr, ho


# ------------------------------------------------------------------------------------ train
def cmd_train(args) -> None:
    from xtalforge.data.mp20 import load_mp20_split
    from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator
    from xtalforge.models.wyckoff.model import wyckoff_preset
    from xtalforge.models.wyckoff.training import train_wyckoff, validation_nll

    out = Path(args.out)
    split = load_mp20_split(args.data_dir, workers=args.workers)
    torch.manual_seed(args.seed)
    gen = WyckoffTransformerGenerator(wyckoff_preset(args.model, args.max_atoms))
    tr, ho = _load_tokens(args, split)
    data, n_skip = _batch(gen, tr)
    held, _ = _batch(gen, ho)
    n_params = sum(p.numel() for p in gen.parameters())
    logger.info("%d training sequences (%d skipped), %d held-out, %d parameters", len(data),
                n_skip, len(held), n_params)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()

    def callback(step: int, metrics: dict) -> None:
        if args.snapshot_every and step % args.snapshot_every == 0:
            path = out / f"snap_{step}.pt"
            sha = gen.save(path)
            nll = validation_nll(gen, held)
            gen.model.train()
            _append(out / "train.jsonl", {"step": step, "loss": metrics.get("loss"),
                                          "heldout_nll": nll, "path": str(path), "sha256": sha,
                                          "run_wall_s": time.perf_counter() - t0})
            logger.info("snapshot %d: loss %.3f held-out NLL %.3f", step, metrics["loss"], nll)

    h = train_wyckoff(gen, data, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      device=args.device, seed=args.seed, dtype=args.dtype,
                      warmup_steps=args.warmup, schedule="constant",
                      log_every=math.gcd(min(args.steps, 100), args.snapshot_every or 100),
                      callback=callback,
                      max_minutes=args.minutes, state_path=out / "state_wyckoff.pt",
                      save_every_minutes=args.save_every_minutes)
    if h["completed"]:
        sha = gen.save(out / "wyckoff.pt")
        _append(out / "train.jsonl", {
            "final": True, "steps": h["steps"], "loss_last": h["loss"][-1],
            "heldout_nll": validation_nll(gen, held), "path": str(out / "wyckoff.pt"),
            "sha256": sha, "n_train": len(data), "n_skipped": n_skip, "params": n_params,
            "config": gen.config.to_dict(), "wall_time_s": h["wall_time_s"],
            "device": _device_name(args.device), "split": split.fingerprint})
        logger.info("training done: %d steps, loss %.3f", h["steps"], h["loss"][-1])
    else:
        logger.info("run budget spent at step %d: run the same command to continue", h["steps"])


def _load_generator(path, args):
    """A Wyckoff generator on ``args.device`` that decodes in ``args.decode_workers`` processes."""
    from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator

    gen = WyckoffTransformerGenerator.load(path, map_location=args.device)
    gen.decode_workers = getattr(args, "decode_workers", 0)
    return gen


# ------------------------------------------------------------------------------------- eval
def _space_group_table(groups_sampled: np.ndarray, groups_data: np.ndarray) -> dict:
    ps = np.bincount(groups_sampled, minlength=231) / max(len(groups_sampled), 1)
    pd = np.bincount(groups_data, minlength=231) / max(len(groups_data), 1)
    top = np.argsort(-pd)[:15]
    return {"total_variation": float(0.5 * np.abs(ps - pd).sum()),
            "top15_data": {int(g): [float(pd[g]), float(ps[g])] for g in top}}


def cmd_eval(args) -> None:
    from generator_scaling import Screener
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer


    out = Path(args.out)
    args.workers = args.workers or 1
    screener = Screener(args)
    gen = _load_generator(args.checkpoint, args)
    gen.generate(min(64, args.n_samples), seed=1, device=args.device)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    row, samples = screener(gen, {"checkpoint": str(args.checkpoint), "label": args.label})
    row["samples_per_s"] = args.n_samples / row["t_sample_s"]
    res = screener.last_result  # the screened samples, with their sampled space groups
    sg_found = []
    for s in res.structures:
        try:
            sg_found.append(SpacegroupAnalyzer(s, symprec=0.1).get_space_group_number()
                            if s is not None else 0)
        except Exception:  # noqa: BLE001 - counted as not found
            sg_found.append(0)
    sg_found = np.array(sg_found)
    row["frac_spacegroup_kept"] = float(np.mean(sg_found == res.space_groups))
    counts = gen.model.space_group_counts.cpu().numpy().astype(int)
    row["space_groups"] = _space_group_table(res.space_groups,
                                             np.repeat(np.arange(len(counts)), counts))
    row["spacegroup_per_sample"] = res.space_groups.tolist()
    proto = row["protocol"]
    for k in ("ddim_steps", "eta"):
        proto.pop(k, None)
    proto["sampler"] = ("Wyckoff transformer, temperature 1, space groups from the training "
                        "distribution")
    row["device"] = _device_name(args.device)
    row["t_eval_total_s"] = time.perf_counter() - t
    _append(out / "eval.jsonl", row)
    import gzip

    with gzip.open(out / f"samples_{args.label}.json.gz", "wt") as fh:
        json.dump(samples, fh)
    logger.info("eval %s: metastable %.2f%% mSUN %.2f%% uniq %.2f nov %.2f, %.0f samples/s",
                args.label, 100 * row["metastability"], 100 * row["mSUN"], row["uniqueness"],
                row["novelty"], row["samples_per_s"])


# -------------------------------------------------------------------------------------- ppo
#: the reward of Cao & Wang 2025: -E_hull (clipped at 5 eV/atom, not normalised)
EHULL_REWARD = [{"name": "stability", "normalize": None, "clip": 5.0}]


def _reward_spec(text: str) -> Any:
    """``--reward``: ``ehull`` (the paper's), a preset name of the registry or a JSON list."""
    if text == "ehull":
        return EHULL_REWARD
    if text.lstrip().startswith(("[", "{")):
        return json.loads(text)
    return text


def cmd_ppo(args) -> None:
    from generator_scaling import Screener

    from xtalforge.rewards import RewardResources, build_reward
    from xtalforge.rl.ppo import PPOConfig, PPOTrainer

    out = Path(args.out)
    args.workers = args.workers or 1
    screener = Screener(args)
    base = _load_generator(args.checkpoint, args)
    state_path = out / "ppo_state.pt"
    # a fresh run starts from the base, or from --init (a policy fine-tuned before, e.g. with
    # another reward); the KL term always measures the distance to the base
    policy = (_load_generator(args.init, args)
              if args.init else base)
    state = None
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        policy = _load_generator(out / "ppo_policy_last.pt", args)
    res = RewardResources(energy_model=screener.model, hull=screener.hull,
                          reference=screener.reference, n_jobs=args.n_jobs, device=args.device)
    reward = build_reward(_reward_spec(args.reward))
    if args.embedder:
        # the diversity rewards embed with a latent diffusion VAE (the transformer gives no
        # composition embeddings); the reference is every MP-20 structure the VAE can encode
        from xtalforge.models.generator import LatentDiffusionGenerator

        res.generator = LatentDiffusionGenerator.load(args.embedder, map_location=args.device)
        n_emb = res.embed_reference(screener.reference.structures, reward.required_metrics)
        logger.info("diversity reference: %d MP-20 structures embedded by %s", n_emb,
                    args.embedder)
    cfg = PPOConfig(batch_size=args.batch_size, minibatch_size=args.minibatch_size,
                    kl_coef=args.kl_coef, lr=args.lr, max_steps=args.steps, seed=args.seed,
                    eval_every=args.eval_every, eval_samples=args.eval_samples)
    trainer = PPOTrainer(policy, reward, res, cfg, device=args.device, base=base)
    if state is not None:
        trainer.load_state_dict(state)
        logger.info("resuming PPO at step %d", trainer.step)

    def save(tr: PPOTrainer) -> None:
        tr.policy.save(out / "ppo_policy_last.pt")
        tmp = state_path.with_suffix(".tmp")
        torch.save(tr.state_dict(), tmp)
        os.replace(tmp, state_path)

    def callback(tr: PPOTrainer, row: dict) -> None:
        _append(out / "ppo.jsonl", {k: v for k, v in row.items() if not k.startswith("t_metric")}
                | {"device": _device_name(args.device),
                   "protocol": {"reward": reward.config(), "mlip": args.mlip,
                                "mode": "single point",
                                "hull_convention": screener.hull.convention,
                                "batch_size": cfg.batch_size, "kl_coef": cfg.kl_coef,
                                "base": str(args.checkpoint), "init": args.init,
                                "embedder": args.embedder}})
        if tr.step % args.checkpoint_every == 0:
            save(tr)

    trainer.train(args.steps, callback=callback)
    save(trainer)
    trainer.policy.save(out / "ppo.pt")
    logger.info("PPO done at step %d (%s)", trainer.step, trainer.stop_reason or "max steps")


# -------------------------------------------------------------------------------------- sft
def cmd_sft(args) -> None:
    import gzip

    from generator_scaling import Screener
    from pymatgen.core import Structure

    from xtalforge.rl.sft import select_stable, supervised_finetune
    from xtalforge.screening.screen import screen_structures

    out = Path(args.out)
    args.workers = args.workers or 1
    sel_path = out / "sft_selected.json.gz"
    gen = _load_generator(args.checkpoint, args)
    protocol = {"samples": args.n_samples, "seed": args.eval_seed, "mlip": args.mlip,
                "mode": "relaxed" if args.relax else "single point",
                "threshold_ev_per_atom": args.threshold, "epochs": args.epochs,
                "batch_size": args.batch_size, "lr": args.lr}
    if sel_path.is_file():
        with gzip.open(sel_path, "rt") as fh:
            sel = json.load(fh)
        kept = [Structure.from_dict(d) for d in sel["structures"]]
        logger.info("SFT: %d selected structures read from %s", len(kept), sel_path)
    else:
        screener = Screener(args)
        t = time.perf_counter()
        res = gen.generate(args.n_samples, seed=args.eval_seed, batch_size=500,
                           device=args.device)
        relax_kwargs = {"steps": args.relax_steps, "fmax": args.fmax}
        records, summary = screen_structures(
            res.structures, screener.model, screener.hull,
            reference_structures=screener.reference, relax=args.relax,
            relax_kwargs=relax_kwargs if args.relax else None, n_jobs=args.n_jobs,
            include_structures=args.relax)
        kept, idx = select_stable(res.structures, records, args.threshold)
        protocol["hull_convention"] = screener.hull.convention
        sel = {"indices": idx, "structures": [s.as_dict() for s in kept],
               "protocol": protocol}
        tmp = sel_path.with_suffix(".tmp")
        with gzip.open(tmp, "wt") as fh:
            json.dump(sel, fh)
        os.replace(tmp, sel_path)
        _append(out / "sft.jsonl", {
            "stage": "select", "checkpoint": str(args.checkpoint), "n_samples": args.n_samples,
            "n_selected": len(kept), "frac_selected": len(kept) / max(args.n_samples, 1),
            "screen_summary": {k: v for k, v in summary.items()
                               if isinstance(v, (int, float, str, bool))},
            "t_screen_s": time.perf_counter() - t, "device": _device_name(args.device),
            "protocol": protocol})
        logger.info("SFT: %d/%d samples below %.3g eV/atom", len(kept), args.n_samples,
                    args.threshold)
    if not kept:
        raise SystemExit(f"SFT: no sample below {args.threshold} eV/atom: nothing to fine-tune "
                         f"on ({sel_path})")
    hist = supervised_finetune(gen, kept, epochs=args.epochs, batch_size=args.batch_size,
                               lr=args.lr, device=args.device, seed=args.seed,
                               log_every=max(1, args.log_every))
    sha = gen.save(out / "sft.pt")
    _append(out / "sft.jsonl", {
        "stage": "finetune", "final": True, "n_train": len(kept), "steps": hist.get("steps"),
        "loss_first": hist["loss"][0] if hist.get("loss") else None,
        "loss_last": hist["loss"][-1] if hist.get("loss") else None,
        "wall_time_s": hist.get("wall_time_s"), "path": str(out / "sft.pt"), "sha256": sha,
        "base_checkpoint": str(args.checkpoint), "device": _device_name(args.device),
        "protocol": sel.get("protocol", protocol)})
    logger.info("SFT done: %s steps on %d structures", hist.get("steps"), len(kept))


# ---------------------------------------------------------------------------------- compare
# Cao & Wang 2025 Fig. 4 uses 14 space groups spanning the seven crystal systems, the same as
# Zeni et al. 2025, without listing them in the text. This default is two common groups per
# crystal system, a choice of this project, not read off the figure (--space-groups overrides).
FIG4_SPACE_GROUPS = (1, 2, 12, 14, 62, 63, 123, 139, 164, 166, 191, 194, 221, 225)


def sun_per_spacegroup_json(samples_by_model: dict, hull_convention: dict | str | None,
                            mlip: str, symprec: float = 0.1) -> dict:
    """The ``sun-per-spacegroup`` table of space-group-conditioned samples, JSON-ready.

    Parameters
    ----------
    samples_by_model
        ``{label: {space_group: [sample, ...]}}`` with samples as written by the screener
        (``structure`` dict or ``None``, flags ``stable``, ``metastable``, ``sun``, ``msun``).
    hull_convention, mlip
        Stated on every row (the table's footnotes list them).
    symprec
        Tolerance of the detected space group (S.S.U.N.: detected = requested).
    """
    import pandas as pd

    from xtalforge.reports.tables import sun_per_spacegroup_table

    rows = []
    for label, by_group in samples_by_model.items():
        for g, samples in by_group.items():
            for s in samples:
                rows.append({"model": label, "target_spacegroup": int(g),
                             "structure": s.get("structure"), "stage": "sample",
                             "hull_convention": hull_convention, "mlip": mlip,
                             **{k: s.get(k) for k in ("stable", "metastable", "sun", "msun")}})
    df = pd.DataFrame(rows)
    t = sun_per_spacegroup_table(df, symprec=symprec, group_by="model",
                                 target_col="target_spacegroup")
    data = t.data.astype(object).where(t.data.notna(), None)
    return {"caption": t.caption, "footnotes": list(t.footnotes),
            "rows": data.to_dict(orient="records")}


def cmd_compare(args) -> None:
    import gzip

    from generator_scaling import Screener


    out = Path(args.out)
    args.workers = args.workers or 1
    bad = [m for m in args.models if "=" not in m]
    if bad:
        raise SystemExit(f"--models takes label=checkpoint pairs, not {bad}")
    models = dict(m.split("=", 1) for m in args.models)
    args.n_samples = args.n_per_group
    groups = [int(g) for g in args.space_groups]
    sg_file = out / "spacegroups.jsonl"
    done = {(r["label"], r["space_group"]) for r in _read_jsonl(sg_file)}
    todo = [(lab, g) for lab in models for g in groups if (lab, g) not in done]
    screener = Screener(args) if todo else None
    for lab, path in models.items():
        if not any(lb == lab for lb, _ in todo):
            continue
        gen = _load_generator(path, args)
        for g in groups:
            if (lab, g) in done:
                continue
            row, samples = screener(gen, {"label": lab, "checkpoint": str(path),
                                          "space_group": g}, n=args.n_per_group,
                                    space_group=g)
            row["protocol"].pop("ddim_steps", None)
            row["protocol"].pop("eta", None)
            row["protocol"]["sampler"] = f"Wyckoff transformer, temperature 1, space group {g}"
            row["device"] = _device_name(args.device)
            with gzip.open(out / f"samples_sg_{lab}_{g}.json.gz", "wt") as fh:
                json.dump(samples, fh)
            _append(sg_file, row)  # after the samples: a row means both are complete
            logger.info("compare %s, space group %d: mSUN %.1f%%, metastable %.1f%%", lab, g,
                        100 * row["mSUN"], 100 * row["metastability"])
    sg_rows = [r for r in _read_jsonl(sg_file) if r["label"] in models
               and r["space_group"] in groups]
    samples = {lab: {} for lab in models}
    for r in sg_rows:
        with gzip.open(out / f"samples_sg_{r['label']}_{r['space_group']}.json.gz", "rt") as fh:
            samples[r["label"]][r["space_group"]] = json.load(fh)
    hull = sg_rows[0]["protocol"]["hull_convention"] if sg_rows else None
    eval_rows = {r["label"]: {k: v for k, v in r.items() if k != "spacegroup_per_sample"}
                 for r in _read_jsonl(out / "eval.jsonl") if r.get("label") in models}
    missing = sorted(set(models) - set(eval_rows))
    result = {
        "models": models,
        "rows": [eval_rows[lab] for lab in models if lab in eval_rows],
        "rows_missing": missing,
        "space_groups": groups,
        "spacegroup_rows": sg_rows,
        "sun_per_spacegroup": sun_per_spacegroup_json(samples, hull, args.mlip),
        "protocol": {"rows": "eval: samples from the training space-group distribution, "
                             "seed --eval-seed, CHGNet single points, MP-20 formation hull",
                     "per_space_group": f"{args.n_per_group} samples per space group "
                                        f"(fixed), seed {args.eval_seed}, same screening",
                     "mlip": args.mlip, "mode": "single point", "hull_convention": hull,
                     "sun": "Cao & Wang 2025's S.U.N. (E_hull < 0.1 eV/atom) is mSUN here"},
    }
    tmp = out / "compare.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=str))
    os.replace(tmp, out / "compare.json")
    if missing:
        logger.warning("compare: no eval row for %s (run eval with those labels)", missing)
    logger.info("compare.json written: %d eval rows, %d (model, space group) rows",
                len(result["rows"]), len(sg_rows))


def _read_jsonl(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


# -------------------------------------------------------------------------------------- plot
def cmd_plot(args) -> None:
    """One PNG from a work folder: PPO curves, space groups of the samples, S.U.N. per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    ppo = [json.loads(x) for x in (out / "ppo.jsonl").read_text().splitlines()] \
        if (out / "ppo.jsonl").exists() else []
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()] \
        if (out / "eval.jsonl").exists() else []
    compare = json.loads((out / "compare.json").read_text()) \
        if (out / "compare.json").exists() else None
    base = next((r for r in evals if r["label"] == "base"), None)
    n_panels = 2 + (base is not None) + (compare is not None)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 4.8))
    ax = dict(enumerate(axes))
    if base is None:  # the S.U.N. panel moves left
        ax[3] = ax.get(2)
    if ppo:
        st = [r["step"] for r in ppo]
        comps = [c["name"] for c in ((ppo[0].get("protocol") or {}).get("reward") or {}).get(
            "components", [])]
        is_ehull = comps in ([], ["stability"]) and "reward/creativity" not in ppo[0]
        ax[0].plot(st, [r["reward_raw_total"] for r in ppo], "o-",
                   label="mean reward " + ("-E_hull" if is_ehull else " + ".join(comps)))
        ax[0].set_xlabel("PPO step")
        ax[0].set_ylabel("reward (eV/atom)" if is_ehull else
                         "mean reward (" + " + ".join(comps) + ")")
        tw = ax[0].twinx()
        tw.plot(st, [r["kl"] for r in ppo], "s--", color="C3", label="KL to the base")
        tw.set_ylabel("KL(p_theta || p_base) per crystal (nats)", color="C3")
        ax[0].set_title("PPO: reward and KL per step")
        ev = [r for r in ppo if "eval/frac_metastable" in r]
        ax[1].plot([r["step"] for r in ev], [100 * r["eval/frac_metastable"] for r in ev], "o-",
                   label="metastable")
        ax[1].plot([r["step"] for r in ev], [100 * r["eval/frac_msun"] for r in ev], "s-",
                   label="mSUN")
        ax[1].set_xlabel("PPO step")
        ax[1].set_ylabel("% of the fixed evaluation samples")
        ax[1].set_title(f"PPO: fixed-seed evaluation ({int(ev[0]['eval/n']) if ev else 0} samples)")
        ax[1].legend()
    if base is not None:
        top = base["space_groups"]["top15_data"]
        keys = list(top)
        x = np.arange(len(keys))
        ax[2].bar(x - 0.2, [100 * top[k][0] for k in keys], 0.4, label="training data")
        ax[2].bar(x + 0.2, [100 * top[k][1] for k in keys], 0.4, label="base samples")
        ax[2].set_xticks(x, keys, rotation=90)
        ax[2].set_xlabel("space group")
        ax[2].set_ylabel("%")
        ax[2].set_title("space groups (drawn from the training prior), total variation "
                        f"{base['space_groups']['total_variation']:.3f}", fontsize=9)
        ax[2].legend()
    if compare is not None:
        rows = compare["sun_per_spacegroup"]["rows"]
        groups = compare["space_groups"]
        labels = list(compare["models"])
        x = np.arange(len(groups))
        w = 0.8 / max(len(labels), 1)
        for i, lab in enumerate(labels):
            val = {r["Space group"]: r["mSUN (%)"] for r in rows if r["Group"] == lab}
            ax[3].bar(x + (i - (len(labels) - 1) / 2) * w, [val.get(g, 0.0) for g in groups], w,
                      label=lab)
        ax[3].set_xticks(x, [str(g) for g in groups], rotation=90)
        ax[3].set_xlabel("space group (Cao & Wang 2025, Fig. 4)")
        ax[3].set_ylabel("S.U.N. (E_hull < 0.1, unique, novel) %")
        n = rows[0]["N"] if rows else 0
        ax[3].set_title(f"S.U.N. per space group ({n} samples each)")
        ax[3].legend()
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(args.title or f"Wyckoff transformer: {out}")
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    logger.info("wrote %s", args.figure)


def cmd_plot_runs(args) -> None:
    """Several PPO runs in one PNG: per-batch mSUN, metastability, uniqueness and novelty.

    Each ``--run LABEL=PPO_JSONL`` is drawn as a 5-step running mean of its training batches;
    each ``--point LABEL:STEP:EVAL_LABEL`` marks the row ``EVAL_LABEL`` of ``--eval`` (the
    fixed-protocol evaluation of that run's policy after STEP steps) on the run's curves.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing = [f for f in [*args.eval, *(r.partition("=")[2] for r in args.run)]
               if not Path(f).is_file()]
    if missing:
        raise SystemExit(f"plot-runs: no such file: {', '.join(missing)}")
    evals = {row["label"]: row for f in args.eval for row in _read_jsonl(Path(f))}
    panels = [("frac_msun", "mSUN", "mSUN"), ("frac_metastable", "metastability", "metastable"),
              ("frac_unique", "uniqueness", "unique"), ("frac_novel", "novelty", "novel")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2))
    for i, spec in enumerate(args.run):
        label, _, path = spec.partition("=")
        rows = _read_jsonl(Path(path))
        steps = np.array([r["step"] for r in rows])
        color = f"C{i}"
        pts = [(int(st), evals[ev]) for run, st, ev in (x.split(":") for x in args.point)
               if run == label and ev in evals]
        for ax, (key, ekey, name) in zip(axes, panels, strict=True):
            y = np.array([100 * r[key] for r in rows])
            k = min(5, len(y))
            smooth = np.convolve(y, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, color=color, lw=1.2,
                    label=f"{label}: training batches (5-step mean)")
            if pts:
                ax.plot([st for st, _ in pts], [100 * ev[ekey] for _, ev in pts], "o",
                        color=color, ms=7, mec="k",
                        label=f"{label}: evaluations ({pts[0][1]['n']} samples)")
            ax.set_title(name)
    for ax in axes:
        for mark in args.mark_step:
            st, _, text = mark.partition(":")
            ax.axvline(float(st), color="grey", ls=":", lw=1)
            ax.text(float(st), 0.02, f" {text}", transform=ax.get_xaxis_transform(),
                    fontsize=7, color="grey")
        ax.set_xlabel("PPO step")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].legend(handles, labels, fontsize=6.5)
    fig.suptitle(args.title or "PPO runs", fontsize=10)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    logger.info("wrote %s", args.figure)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--out", default="out/wyckoff")
        p.add_argument("--data-dir", type=Path, default=DATA)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--workers", type=int, default=4, help="CIF parsing / tokenising")
        p.add_argument("--seed", type=int, default=0)

    def screening(p):
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--mlip", default="chgnet")
        p.add_argument("--n-jobs", type=int, default=4)
        p.add_argument("--eval-seed", type=int, default=12345)
        p.add_argument("--decode-workers", type=int, default=0,
                       help="processes assembling sampled sequences into structures")

    p = sub.add_parser("train")
    common(p)
    p.add_argument("--model", default="medium", choices=["tiny", "medium", "paper"])
    p.add_argument("--max-atoms", type=int, default=20)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--minutes", type=float, default=None, help="budget of this run")
    p.add_argument("--save-every-minutes", type=float, default=3.0)
    p.add_argument("--snapshot-every", type=int, default=5000)
    p.add_argument("--limit", type=int, default=None, help="first N training crystals only")
    p = sub.add_parser("eval")
    common(p)
    screening(p)
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--label", default="base")
    p = sub.add_parser("ppo")
    common(p)
    screening(p)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--minibatch-size", type=int, default=None)
    p.add_argument("--kl-coef", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--eval-samples", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=5)
    p.add_argument("--init", default=None,
                   help="initial policy (default: the base --checkpoint, the KL reference)")
    p.add_argument("--embedder", default=None,
                   help="latent diffusion checkpoint whose VAE embeds structures and "
                        "compositions for the diversity rewards (e.g. of the dng preset)")
    p.add_argument("--reward", default="ehull",
                   help="'ehull' (-E_hull, Cao & Wang 2025), a reward preset (e.g. msun: "
                        "-clip(E_hull, 0, 1) + creativity) or a JSON list of reward "
                        "components, e.g. "
                        '\'[{"name": "stability", "normalize": null}, '
                        '{"name": "creativity", "normalize": null}]\'')
    p = sub.add_parser("sft")
    common(p)
    screening(p)
    p.add_argument("--n-samples", type=int, default=10_000)
    p.add_argument("--threshold", type=float, default=0.1, help="E_hull cut (eV/atom)")
    p.add_argument("--relax", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--relax-steps", type=int, default=200)
    p.add_argument("--fmax", type=float, default=0.1)
    p.add_argument("--epochs", type=float, default=55)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--log-every", type=int, default=50)
    p = sub.add_parser("compare")
    common(p)
    p.add_argument("--models", nargs="+", required=True, help="label=checkpoint ...")
    p.add_argument("--mlip", default="chgnet")
    p.add_argument("--n-jobs", type=int, default=4)
    p.add_argument("--eval-seed", type=int, default=12345)
    p.add_argument("--n-per-group", type=int, default=1000)
    p.add_argument("--space-groups", nargs="+", default=list(FIG4_SPACE_GROUPS))
    p = sub.add_parser("plot")
    p.add_argument("--out", default="out/wyckoff", help="the work folder to plot")
    p.add_argument("--figure", default="benchmarks/figures/wyckoff_ppo.png")
    p.add_argument("--title", default=None)
    p = sub.add_parser("plot-runs", help="several PPO runs' training curves in one PNG")
    p.add_argument("--run", action="append", required=True, help="LABEL=path/to/ppo.jsonl")
    p.add_argument("--eval", action="append", default=[], help="eval.jsonl with marked rows")
    p.add_argument("--point", action="append", default=[],
                   help="LABEL:STEP:EVAL_LABEL, an evaluation row to mark on run LABEL")
    p.add_argument("--mark-step", action="append", default=[],
                   help="STEP:TEXT, a vertical line with a note (e.g. where a setting changed)")
    p.add_argument("--figure", default="benchmarks/figures/wyckoff_ppo_runs.png")
    p.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    for noisy in ("xtalforge.screening", "chgnet"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if getattr(args, "out", None):  # plot-runs writes only its figure
        Path(args.out).mkdir(parents=True, exist_ok=True)
    {"train": cmd_train, "eval": cmd_eval, "ppo": cmd_ppo, "sft": cmd_sft,
     "compare": cmd_compare, "plot": cmd_plot,
     "plot-runs": cmd_plot_runs}[args.cmd](args)


if __name__ == "__main__":
    main()
