"""Makers of the Wyckoff transformer family: pretraining, PPO fine-tuning and the SFT baseline.

* :class:`WyckoffPretrainMaker` trains a Wyckoff transformer on the campaign's dataset
  documents (resumable and budgeted like the latent diffusion makers: the training state lives
  in the ``blobs`` store under the job's uuid, and a run budget continues in a new job);
* :class:`PPOFineTuneMaker` fine-tunes a checkpoint of either family with PPO (Cao & Wang 2025;
  :class:`~xtalforge.rl.ppo.PPOConfig` nested as ``ppo``), beside the GRPO maker
  :class:`~xtalforge.makers.rl.RLFineTuneMaker`: same reward registry, same per-step curves in
  the ``data`` store, same resume protocol (progress document ``ppo-progress:<job uuid>``);
* :class:`SFTFineTuneMaker` is the supervised baseline (sample, relax, keep ``E_hull < 0.1``,
  fine-tune; :mod:`xtalforge.rl.sft`).

Sampling and screening use the family-independent makers (``SampleMaker``, ``ScreenMaker``):
their checkpoint loader reads either family.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import Maker, Response

from xtalforge.device import resolve_device
from xtalforge.makers.base import JobContext, dataset_structures, job_context, stage_job
from xtalforge.makers.pretrain import (
    continue_in_new_job,
    resume_info,
    store_checkpoint,
    train_config,
    train_stage,
)
from xtalforge.makers.rl import (
    load_progress,
    reward_resources,
    save_progress,
    train_with_progress,
    with_hull,
)
from xtalforge.makers.sample import load_generator, set_decode_workers
from xtalforge.stores.artifacts import put_checkpoint
from xtalforge.stores.documents import clean_floats
from xtalforge.stores.schemas import PPOOutput, SFTOutput, WyckoffTrainOutput

if TYPE_CHECKING:
    from xtalforge.models.training import TrainConfig
    from xtalforge.rl.ppo import PPOConfig

logger = logging.getLogger(__name__)

__all__ = ["PPOFineTuneMaker", "SFTFineTuneMaker", "WyckoffPretrainMaker", "run_ppo_finetune"]

STATE_FORMAT = "xtalforge.ppo_trainer_state/1"

#: The stability reward of Cao & Wang 2025 (r = -E_hull, raw eV/atom, clipped at 5).
STABILITY_REWARD = [{"name": "stability", "weight": 1.0, "normalize": None, "clip": 5.0}]


def _ppo_config() -> PPOConfig:
    from xtalforge.rl.ppo import PPOConfig

    return PPOConfig()


@dataclass
class WyckoffPretrainMaker(Maker):
    """Train a Wyckoff transformer on the campaign's dataset documents (resumable).

    Parameters
    ----------
    name
        Job name.
    model
        Preset (``tiny``, ``medium``, ``paper``) or a ``WyckoffTransformerConfig`` dict.
    max_atoms
        Largest primitive cell (larger training crystals are skipped and counted).
    split
        Dataset split to train on (``None``: every dataset document).
    train
        Optimisation settings and run budget (:class:`~xtalforge.models.training.TrainConfig`).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``.
    """

    name: str = "train wyckoff transformer"
    model: str | dict = "tiny"
    max_atoms: int = 20
    split: str | None = "train"
    train: TrainConfig = field(default_factory=train_config)
    device: str = "auto"

    @stage_job(resource="gpu", data="history", output_schema=WyckoffTrainOutput)
    def make(self, dataset: Any = None) -> dict[str, Any] | Response:
        """Train; ``dataset`` (the ingest output) only orders the job after ingestion.

        Returns
        -------
        dict or Response
            ``checkpoint`` (kind ``generator/wyckoff``), ``history``, ``n_train``,
            ``tokenization`` (used / skipped counts), ``wall_time_s`` and the resume fields of
            the latent diffusion makers; or the continuation job when a run budget stopped it.
        """
        import torch

        from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator
        from xtalforge.models.wyckoff.model import wyckoff_preset
        from xtalforge.models.wyckoff.training import sequences_for_training, train_wyckoff

        ctx = job_context()
        device = resolve_device(self.device)
        structures, _ = dataset_structures(ctx, self.split)
        torch.manual_seed(self.train.seed)
        gen = WyckoffTransformerGenerator(wyckoff_preset(self.model, self.max_atoms))
        data, info = sequences_for_training(gen, structures)
        t = time.perf_counter()
        hist, state = train_stage("wyckoff", train_wyckoff, gen, data, self.train, device, ctx)
        if not hist["completed"]:
            return continue_in_new_job(self.make(dataset), hist, state)
        meta = {"stage": "wyckoff", "family": gen.family, "n_train": info["n_used"],
                "steps": self.train.steps, "device": device,
                "model": self.model if isinstance(self.model, str) else "custom",
                "final_loss": hist["loss"][-1] if hist.get("loss") else None}
        ref = store_checkpoint(gen, ctx, "generator/wyckoff", meta)
        return {"checkpoint": ref, "history": hist, "n_train": info["n_used"],
                "tokenization": info, "family": gen.family,
                "wall_time_s": time.perf_counter() - t, **resume_info(hist, state)}


@dataclass
class PPOFineTuneMaker(Maker):
    """PPO fine-tuning (Cao & Wang 2025) of a generator checkpoint against a registry reward.

    Parameters
    ----------
    name
        Job name.
    reward
        Reward preset or list of component dicts (:func:`xtalforge.rewards.build_reward`);
        default ``-E_hull`` (raw eV/atom). PPO uses the raw weighted total unless
        ``ppo.use_normalized_reward``.
    ppo
        Every setting of the algorithm (:class:`~xtalforge.rl.ppo.PPOConfig`, paper defaults).
    energy_model, hull
        MLIP and reference hull of the stability reward (``hull=None``: an MLIP hull of the
        reference documents, single points).
    reference_split
        Dataset split of the novelty reference (``None``: every dataset document).
    embedder
        Latent diffusion checkpoint whose VAE embeds structures for rewards that need
        embeddings or property surrogates (diversity, band gap, dielectric); ``None``: the
        policy embeds (diversity only).
    surrogates
        Property surrogates by name (path or reference), merged with the job input.
    checkpoint_every
        Intermediate checkpoint period (steps) for resuming.
    n_jobs, device
        Matching workers; device.
    decode_workers
        Processes that assemble the sampled sequences into structures (on a GPU host, half of
        a PPO step of 1,000 samples goes into this step when it runs in the job's process).
    """

    name: str = "ppo fine-tune"
    reward: str | list = field(default_factory=lambda: [dict(c) for c in STABILITY_REWARD])
    ppo: PPOConfig = field(default_factory=_ppo_config)
    energy_model: str = "chgnet"
    hull: str | dict | None = None
    reference_split: str | None = None
    embedder: str | dict | None = None
    surrogates: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 10
    n_jobs: int = 1
    device: str = "auto"
    decode_workers: int = 0

    @stage_job(resource="gpu", data="curves", output_schema=PPOOutput)
    def make(self, checkpoint: str | dict[str, Any], surrogates: dict[str, Any] | None = None,
             hull: str | dict[str, Any] | None = None) -> dict[str, Any]:
        """Fine-tune ``checkpoint``; ``hull`` (a ``HullMaker`` output) overrides the field."""
        return run_ppo_finetune(with_hull(self, hull), job_context(), checkpoint, surrogates)


def _ppo_resources(maker: PPOFineTuneMaker, ctx: JobContext, policy, reward,
                   surrogates: dict[str, Any], device: str):
    """Reward resources, building only what the reward needs; returns ``(resources, notes)``.

    Structures are embedded by ``maker.embedder`` when it is set, else by the policy.
    """
    embedder, notes = policy, {}
    if maker.embedder is not None:
        embedder, _ = load_generator(maker.embedder, ctx, device)
        notes["embedder"] = f"{type(embedder).__name__} checkpoint"
    res, more, _ = reward_resources(
        ctx, reward, embedder, reference_split=maker.reference_split,
        energy_model=maker.energy_model, hull=maker.hull,
        surrogates={**dict(maker.surrogates), **dict(surrogates or {})}, n_jobs=maker.n_jobs,
        device=device)
    return res, {**notes, **more}


def run_ppo_finetune(maker: PPOFineTuneMaker, ctx: JobContext, checkpoint: str | dict[str, Any],
                     surrogates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Body of :meth:`PPOFineTuneMaker.make` (callable with any :class:`JobContext`).

    Returns
    -------
    dict
        ``checkpoint`` (kind ``generator/ppo``), ``curves`` (one row per step: ``reward``,
        ``kl``, ``baseline``, ``clip_frac``, ``frac_metastable``, ``mean_e_above_hull`` ...),
        ``family``, ``reward_config``, ``ppo_config``, ``resources``, ``notes``,
        ``parent_checkpoint``, ``steps_done``, ``resumed_from_step``, ``stop_reason``,
        ``wall_time_s``.
    """
    import torch

    from xtalforge.models.interface import as_family
    from xtalforge.rewards.registry import build_reward
    from xtalforge.rl.ppo import PPOTrainer

    t0 = time.perf_counter()
    device = resolve_device(maker.device)
    base, parent = load_generator(checkpoint, ctx, device)
    base = as_family(base)
    set_decode_workers(base, maker.decode_workers)
    if not isinstance(base, torch.nn.Module):
        raise TypeError(f"PPO fine-tunes torch-module generators; the {base.family} family is "
                        "reached through an adapter: use RLFineTuneMaker (GRPO) for it")
    reward = build_reward(maker.reward)
    cfg = maker.ppo
    found = load_progress(ctx, "ppo", STATE_FORMAT)
    resumed_from, state = 0, None
    policy = base
    if found:
        progress, ppath, state = found
        policy, _ = load_generator(ppath, None, device)
        set_decode_workers(policy, maker.decode_workers)
        resumed_from = int(progress["step"])
        logger.info("resuming PPO job %s from step %d", ctx.job_uuid, resumed_from)
    res, notes = _ppo_resources(maker, ctx, policy, reward, surrogates or {}, device)
    trainer = PPOTrainer(policy, reward, res, cfg, device=device, base=base)
    if state is not None:
        trainer.load_state_dict(state["trainer"])

    def save(tr: PPOTrainer) -> None:
        save_progress(tr, ctx, parent, label="ppo", state_format=STATE_FORMAT,
                      maker_name=maker.name, save_policy=tr.policy.save)

    train_with_progress(trainer, cfg.max_steps, maker.checkpoint_every, resumed_from, save)
    last = trainer.curves[-1] if trainer.curves else {}
    meta = {"stage": "ppo", "family": policy.family, "parent_checkpoint_id":
            parent["checkpoint_id"], "steps": trainer.step, "reward": reward.config(),
            "device": device, "final_reward": last.get("reward"), "final_kl": last.get("kl"),
            "stop_reason": trainer.stop_reason}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator.pt"
        trainer.policy.save(path)
        ref = put_checkpoint(ctx.blobs, path, kind="generator/ppo", metadata=meta,
                             campaign_id=ctx.campaign_id, job_uuid=ctx.job_uuid)
    return clean_floats({
        "checkpoint": ref, "curves": trainer.curves, "algorithm": "ppo",
        "family": policy.family, "reward_config": reward.config(),
        "ppo_config": cfg.to_dict(), "resources": res.describe(), "notes": notes,
        "parent_checkpoint": parent, "steps_done": trainer.step,
        "resumed_from_step": resumed_from, "stop_reason": trainer.stop_reason,
        "device": device, "wall_time_s": time.perf_counter() - t0})


@dataclass
class SFTFineTuneMaker(Maker):
    """Supervised fine-tuning baseline of RL (Cao & Wang 2025, Fig. 5).

    Samples ``n_samples`` crystals from the checkpoint, screens them with ``energy_model``
    (relaxed by default) against ``hull``, keeps ``E_hull < threshold`` and fine-tunes on them.

    Parameters
    ----------
    name
        Job name.
    n_samples, threshold, relax, relax_kwargs
        Selection (paper: 10,000 samples relaxed, ``E_hull < 0.1``).
    epochs, batch_size, lr
        Fine-tuning (paper: 55 epochs, batch 100, lr 1e-5).
    energy_model, hull, reference_split
        Screening (``hull`` may also be given to :meth:`make`).
    seed, n_jobs, device
        Randomness, matching workers, device.
    """

    name: str = "sft fine-tune"
    n_samples: int = 10_000
    threshold: float = 0.1
    relax: bool = True
    relax_kwargs: dict = field(default_factory=dict)
    epochs: float = 55
    batch_size: int = 100
    lr: float = 1e-5
    energy_model: str = "chgnet"
    hull: str | dict | None = None
    reference_split: str | None = None
    seed: int = 0
    n_jobs: int = 1
    device: str = "auto"

    @stage_job(resource="gpu", data="history", output_schema=SFTOutput)
    def make(self, checkpoint: str | dict[str, Any], hull: str | dict[str, Any] | None = None
             ) -> dict[str, Any]:
        """Select and fine-tune; returns the checkpoint (kind ``generator/sft``) and counts."""
        from xtalforge.makers.screening import load_hull
        from xtalforge.rl.sft import run_sft_baseline
        from xtalforge.screening.hull import ReferenceHull
        from xtalforge.screening.metrics import ReferenceSet
        from xtalforge.screening.mlip import get_energy_model

        ctx = job_context()
        device = resolve_device(self.device)
        gen, parent = load_generator(checkpoint, ctx, device)
        spec = hull if hull is not None else self.hull
        if spec is None:
            raise ValueError("the SFT baseline needs a reference hull (hull=HullMaker output "
                             "or a saved hull path)")
        ref_hull = load_hull(spec, ctx) if isinstance(spec, Mapping) else ReferenceHull.load(spec)
        ref_structs, _ = dataset_structures(ctx, self.reference_split)
        out = run_sft_baseline(
            gen, get_energy_model(self.energy_model, device=device), ref_hull,
            n_samples=self.n_samples, threshold=self.threshold, relax=self.relax,
            relax_kwargs=self.relax_kwargs or None, seed=self.seed, device=device,
            n_jobs=self.n_jobs, reference=ReferenceSet(ref_structs) if ref_structs else None,
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)
        meta = {"stage": "sft", "parent_checkpoint_id": parent["checkpoint_id"],
                "n_selected": out["n_selected"], "threshold": self.threshold,
                "relaxed": self.relax, "device": device}
        ref = store_checkpoint(gen, ctx, "generator/sft", meta)
        return clean_floats({"checkpoint": ref, "parent_checkpoint": parent, "device": device,
                             **{k: v for k, v in out.items() if k != "selected_indices"}})
