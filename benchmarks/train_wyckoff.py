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

Example (CPU, toy size)::

    python benchmarks/train_wyckoff.py train --out out/wy --model tiny --steps 20 --limit 200
    python benchmarks/train_wyckoff.py eval --out out/wy --checkpoint out/wy/wyckoff.pt \
        --n-samples 20
    python benchmarks/train_wyckoff.py ppo --out out/wy --checkpoint out/wy/wyckoff.pt \
        --steps 2 --batch-size 16
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
    from xtalforge.makers.wyckoff import wyckoff_preset
    from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator
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

    from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator

    out = Path(args.out)
    args.workers = args.workers or 1
    screener = Screener(args)
    gen = WyckoffTransformerGenerator.load(args.checkpoint, map_location=args.device)
    gen.generate(min(64, args.n_samples), seed=1, device=args.device)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    row, samples = screener(gen, {"checkpoint": str(args.checkpoint), "label": args.label})
    row["samples_per_s"] = args.n_samples / row["t_sample_s"]
    res = gen.generate(args.n_samples, seed=args.eval_seed, batch_size=500, device=args.device)
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
def cmd_ppo(args) -> None:
    from generator_scaling import Screener

    from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator
    from xtalforge.rewards import RewardResources, build_reward
    from xtalforge.rl.ppo import PPOConfig, PPOTrainer

    out = Path(args.out)
    args.workers = args.workers or 1
    screener = Screener(args)
    base = WyckoffTransformerGenerator.load(args.checkpoint, map_location=args.device)
    state_path = out / "ppo_state.pt"
    policy = base
    state = None
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        policy = WyckoffTransformerGenerator.load(out / "ppo_policy_last.pt",
                                                  map_location=args.device)
    res = RewardResources(energy_model=screener.model, hull=screener.hull,
                          reference=screener.reference, n_jobs=args.n_jobs, device=args.device)
    reward = build_reward([{"name": "stability", "normalize": None, "clip": 5.0}])
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
                   "protocol": {"reward": "-E_hull (CHGNet single point, MP-20 formation hull)",
                                "hull_convention": screener.hull.convention,
                                "batch_size": cfg.batch_size, "kl_coef": cfg.kl_coef}})
        if tr.step % args.checkpoint_every == 0:
            save(tr)

    trainer.train(args.steps, callback=callback)
    save(trainer)
    trainer.policy.save(out / "ppo.pt")
    logger.info("PPO done at step %d (%s)", trainer.step, trainer.stop_reason or "max steps")


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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stdout)
    for noisy in ("xtalforge.screening", "chgnet"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    {"train": cmd_train, "eval": cmd_eval, "ppo": cmd_ppo}[args.cmd](args)


if __name__ == "__main__":
    main()
