"""Makers for RL fine-tuning of the generator and for the property surrogates its rewards use.

* :class:`RLFineTuneMaker` runs GRPO (or the REINFORCE ablation) from a generator checkpoint
  and stores the fine-tuned checkpoint (kind ``generator/rl``) and per-step training curves;
  it resumes from its last intermediate checkpoint when its job runs again.
* :class:`SurrogateTrainMaker` trains a :class:`~xtalforge.rewards.surrogate.PropertySurrogate`
  (e.g. the band gap of Note S1) on a property of the campaign's dataset documents.

Chaining (the lead's flow)::

    pre = PretrainMaker().make(ingest.output)
    grpo = GRPOConfig(max_steps=500, eval_every=10, select_by="eval/frac_msun")
    rl = RLFineTuneMaker(grpo=grpo).make(pre.output["checkpoint"])
    smp = SampleMaker(label="rl").make(rl.output["checkpoint"])

    # band-gap target (Note S1)
    sur = SurrogateTrainMaker(property="dft_band_gap").make(pre.output["checkpoint"])
    rl_bg = RLFineTuneMaker(reward="bandgap").make(
        pre.output["checkpoint"], surrogates={"band_gap": sur.output["surrogate"]})

Resume protocol: every ``checkpoint_every`` steps the policy (a normal generator checkpoint)
and the trainer state (optimiser, curves, early-stopping counters) go to the ``blobs`` store,
and a small progress document ``{progress_id: "rl-progress:<job uuid>", step, policy,
trainer_state}`` is upserted in the ``data`` store. A job that runs again with the same uuid
(a jobflow-remote rerun, or ``run_locally`` of the same flow) finds that document and continues
from its step; rollout seeds depend only on ``(seed, step)``, so the continuation draws what an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import Maker

from xtalforge.device import resolve_device
from xtalforge.makers.base import JobContext, dataset_structures, job_context, stage_job
from xtalforge.makers.sample import load_generator
from xtalforge.stores.artifacts import put_checkpoint, resolve_checkpoint
from xtalforge.stores.config import additional
from xtalforge.stores.documents import clean_floats, now
from xtalforge.stores.schemas import GRPOOutput, SurrogateOutput

if TYPE_CHECKING:
    import numpy as np

    from xtalforge.rewards.base import CompositeReward
    from xtalforge.rewards.resources import RewardResources
    from xtalforge.rl.grpo import GRPOConfig

logger = logging.getLogger(__name__)

__all__ = ["RLFineTuneMaker", "SurrogateTrainMaker", "load_progress", "load_surrogate",
           "reward_resources", "run_rl_finetune", "run_surrogate_training", "save_progress",
           "train_with_progress", "with_hull"]

STATE_FORMAT = "xtalforge.rl_trainer_state/1"


def _progress_id(label: str, job_uuid: str) -> str:
    return f"{label}-progress:{job_uuid}"


def load_surrogate(ref_or_path: str | dict[str, Any], ctx: JobContext | None = None,
                   device: str = "cpu"):
    """Load a :class:`~xtalforge.rewards.surrogate.PropertySurrogate` from a path or reference."""
    from xtalforge.rewards.surrogate import PropertySurrogate

    path, _ = resolve_checkpoint(ref_or_path, ctx.blobs if ctx else None)
    return PropertySurrogate.load(path, map_location=device)


def _doc_property(doc: dict[str, Any], name: str) -> Any:
    for container in (doc.get("properties") or {}, doc.get("prop") or {}, doc):
        if isinstance(container, dict) and name in container:
            return container[name]
    return None


def _grpo_config() -> GRPOConfig:
    # imported here: torch loads only when an RL maker is built, not with this module
    from xtalforge.rl.grpo import GRPOConfig

    return GRPOConfig()


@dataclass
class RLFineTuneMaker(Maker):
    """GRPO fine-tuning of a generator checkpoint against a composite verifiable reward.

    The algorithm's settings live in one nested :class:`~xtalforge.rl.grpo.GRPOConfig`
    (``grpo``), which the job hands to :class:`~xtalforge.rl.grpo.GRPOTrainer` as it is; the
    maker's own fields are the reward and the job's plumbing (data, resources, checkpoints).

    Parameters
    ----------
    name
        Job name.
    reward
        Reward preset (``"dng"``, ``"dng_no_diversity"``, ``"bandgap"``, ``"dielectric"``) or
        a list of component dicts (see :func:`xtalforge.rewards.build_reward`).
    normalize_scope
        Min-max normalisation of each component over the whole ``"batch"`` of a step
        (default, Chemeleon2's code) or per ``"group"``.
    grpo
        Every setting of the algorithm (:class:`~xtalforge.rl.grpo.GRPOConfig`, paper
        defaults): ``algorithm``, ``reference``, ``max_steps`` (the run's length), group sizes,
        optimiser, KL, early stopping and KL guard (``max_kl``), policy selection
        (``select_by``), the fixed evaluation (``eval_every``) and ``seed``, which also seeds
        the reference / validation subsets drawn here.
    energy_model
        MLIP spec for the stability reward (``"chgnet"``: offline default).
    hull
        Path to a saved :class:`~xtalforge.screening.hull.ReferenceHull` on the energy model's
        scale; ``None`` builds an MLIP-consistent hull from the reference documents with the
        energy model (single points).
    reference_split
        Dataset split of the novelty / diversity reference (``None``: every dataset document
        of the campaign, reference ingests included).
    val_split, val_size
        Held-out split for the drift monitor (``val_nll``); without such documents a random
        ``val_size`` subset of the reference is used (then not held out: recorded).
    max_reference_embeddings
        Reference rows kept for the diversity MMD.
    surrogates
        Property surrogates by name (path or checkpoint reference), merged with the job input.
    energy_batch_size
        Structures per MLIP forward pass in the stability reward (CHGNet with forces needs
        about 1 GB per 8 generated structures on a CPU).
    checkpoint_every
        Intermediate checkpoint period (steps) for resuming.
    n_jobs
        Worker processes for matching.
    device
        ``"auto"``/``"cpu"``/``"cuda"``.
    """

    name: str = "rl fine-tune"
    reward: str | list = "dng"
    normalize_scope: str = "batch"
    grpo: GRPOConfig = field(default_factory=_grpo_config)
    energy_model: str = "chgnet"
    hull: str | dict | None = None
    reference_split: str | None = None
    val_split: str | None = "val"
    val_size: int = 256
    max_reference_embeddings: int = 20000
    surrogates: dict[str, Any] = field(default_factory=dict)
    energy_batch_size: int = 64
    checkpoint_every: int = 10
    n_jobs: int = 1
    device: str = "auto"

    @stage_job(resource="gpu", data="curves", output_schema=GRPOOutput)
    def make(self, checkpoint: str | dict[str, Any],
             surrogates: dict[str, Any] | None = None,
             hull: str | dict[str, Any] | None = None) -> dict[str, Any]:
        """Fine-tune ``checkpoint`` (reference or local path); see :func:`run_rl_finetune`.

        ``hull`` (a :class:`~xtalforge.makers.screening.HullMaker` output or a saved hull path)
        overrides the ``hull`` field, so a campaign builds its reference hull once.
        """
        return run_rl_finetune(with_hull(self, hull), job_context(), checkpoint, surrogates)


def with_hull(maker: Any, hull: str | Mapping[str, Any] | None) -> Any:
    """Return ``maker`` with its ``hull`` field replaced by a job input (``None``: unchanged).

    A :class:`~xtalforge.makers.screening.HullMaker` output (a ``HullOutput`` or a dict) is
    turned into a plain dict, as the hull loader of :func:`reward_resources` expects.
    """
    import dataclasses

    if isinstance(hull, Mapping):
        hull = dict(hull)
    return dataclasses.replace(maker, hull=hull) if hull is not None else maker


def reward_resources(ctx: JobContext, reward: CompositeReward, embedder: Any, *,
                     reference_split: str | None, energy_model: str, hull: str | dict | None,
                     surrogates: Mapping[str, Any], n_jobs: int, device: str,
                     energy_batch_size: int | None = None,
                     max_reference_embeddings: int | None = None,
                     rng: np.random.Generator | None = None,
                     ) -> tuple[RewardResources, dict[str, Any], list]:
    """Reward resources of an RL job, building only what the reward needs.

    Shared by the GRPO (:class:`RLFineTuneMaker`) and PPO
    (:class:`~xtalforge.makers.wyckoff.PPOFineTuneMaker`) makers.

    Parameters
    ----------
    ctx
        The running job's context.
    reward
        The :class:`~xtalforge.rewards.CompositeReward` (its ``required_metrics`` decide what
        is built).
    embedder
        Generator that embeds structures (diversity embeddings, surrogate inputs).
    reference_split
        Dataset split of the novelty / diversity / hull reference (``None``: every document).
    energy_model, hull
        MLIP spec and saved hull (path, ``HullMaker`` output dict, or ``None``: an MLIP
        single-point hull of the reference documents) of the stability reward.
    surrogates
        Property surrogates by name (path or checkpoint reference).
    n_jobs, device
        Matching workers; device.
    energy_batch_size
        Structures per MLIP forward pass (``None``: the ``RewardResources`` default).
    max_reference_embeddings, rng
        With both given, at most this many reference structures are embedded, a random subset
        drawn from ``rng`` (a ``numpy.random.Generator``).

    Returns
    -------
    tuple
        ``(resources, notes, reference_structures)``.

    Raises
    ------
    ValueError
        Without reference documents, when the reward needs composition embeddings that
        ``embedder`` cannot give, or a ``predicted:<property>`` surrogate that is not given.
    """
    from xtalforge.rewards.resources import RewardResources
    from xtalforge.screening.metrics import ReferenceSet

    need = set(reward.required_metrics)
    notes: dict[str, Any] = {}
    ref_structs, ref_docs = dataset_structures(ctx, reference_split)
    if not ref_structs:
        raise ValueError(f"campaign {ctx.campaign_id!r} has no valid dataset documents "
                         f"(split {reference_split!r}) to use as reference")
    extra = {} if energy_batch_size is None else {"energy_batch_size": energy_batch_size}
    res = RewardResources(n_jobs=n_jobs, device=device, generator=embedder, **extra)
    ids = [d.get("structure_id", str(i)) for i, d in enumerate(ref_docs)]
    if need & {"unique", "novel", "min_amd_distance", "e_above_hull", "energy_per_atom"}:
        res.reference = ReferenceSet(ref_structs, ids)
    res.embed_reference(ref_structs, list(need), max_structures=max_reference_embeddings,
                        rng=rng)
    if need & {"e_above_hull", "energy_per_atom"}:
        from xtalforge.screening.hull import ReferenceHull
        from xtalforge.screening.mlip import get_energy_model

        res.energy_model = get_energy_model(energy_model, device=device)
        if isinstance(hull, dict):  # a HullMaker output / artefact reference
            from xtalforge.makers.screening import load_hull

            res.hull = load_hull(hull, ctx)
            notes["hull"] = "HullMaker artefact " + str(
                hull.get("artifact", hull).get("checkpoint_id"))
        elif hull:
            res.hull = ReferenceHull.load(hull)
            notes["hull"] = f"loaded from {hull}"
        else:
            logger.info("building an MLIP hull from %d reference structures", len(ref_structs))
            res.hull = ReferenceHull.from_structures(
                ref_structs, res.energy_model, entry_ids=ids,
                reference_set=f"campaign {ctx.campaign_id} dataset ({reference_split})")
            notes["hull"] = "MLIP single-point hull of the reference dataset documents"
    for key, spec in surrogates.items():
        res.surrogates[key] = load_surrogate(spec, ctx, device)
    missing = [m.split(":", 1)[1] for m in need if m.startswith("predicted:")
               and m.split(":", 1)[1] not in res.surrogates]
    if missing:
        raise ValueError(f"the reward needs surrogate(s) {missing}: pass surrogates={{name: "
                         "SurrogateTrainMaker output or path}")
    return res, notes, ref_structs


def _build_resources(maker: RLFineTuneMaker, ctx: JobContext, generator, reward,
                     surrogates: dict[str, Any], device: str):
    """Reward resources, validation latents and notes, building only what the reward needs."""
    import numpy as np

    from xtalforge.rewards.surrogate import encode_structures

    rng = np.random.default_rng(maker.grpo.seed)
    res, notes, ref_structs = reward_resources(
        ctx, reward, generator, reference_split=maker.reference_split,
        energy_model=maker.energy_model, hull=maker.hull,
        surrogates={**dict(maker.surrogates), **dict(surrogates or {})}, n_jobs=maker.n_jobs,
        device=device, energy_batch_size=maker.energy_batch_size,
        max_reference_embeddings=maker.max_reference_embeddings, rng=rng)
    val_structs: list = []
    if maker.val_split:
        val_structs, _ = dataset_structures(ctx, maker.val_split, limit=maker.val_size)
    val_structs = [s for s in val_structs if len(s) <= generator.max_atoms]
    if val_structs:
        notes["val_set"] = f"{len(val_structs)} '{maker.val_split}' dataset documents"
    else:
        pool = [s for s in ref_structs if len(s) <= generator.max_atoms]
        pick = rng.choice(len(pool), min(maker.val_size, len(pool)), replace=False)
        val_structs = [pool[i] for i in sorted(pick)]
        notes["val_set"] = (f"{len(val_structs)} random reference structures (no "
                            f"'{maker.val_split}' split: not held out from pretraining)")
    val = encode_structures(generator, val_structs, device=device) if val_structs else None
    return res, val, notes


def save_progress(trainer, ctx: JobContext, parent: dict, *, label: str, state_format: str,
                  maker_name: str, save_policy: Callable[[Path], Any]) -> None:
    """Store an RL job's intermediate policy and trainer state and upsert its progress document.

    Parameters
    ----------
    trainer
        The trainer (``step`` and ``state_dict()`` are read).
    ctx
        The running job's context.
    parent
        Reference of the checkpoint being fine-tuned.
    label
        Algorithm label (``"rl"``, ``"ppo"``): the blob kinds ``generator/<label>-intermediate``
        and ``<label>/trainer-state`` and the progress id ``<label>-progress:<job uuid>``.
    state_format
        ``format`` tag of the trainer-state file.
    maker_name
        Recorded in the progress document.
    save_policy
        Writes the policy checkpoint to the path it is given.
    """
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        pol = Path(tmp) / "policy.pt"
        save_policy(pol)
        meta = {"stage": f"{label}-intermediate", "step": trainer.step,
                "parent_checkpoint_id": parent["checkpoint_id"]}
        pref = put_checkpoint(ctx.blobs, pol, kind=f"generator/{label}-intermediate",
                              metadata=meta, campaign_id=ctx.campaign_id, job_uuid=ctx.job_uuid)
        st = Path(tmp) / "state.pt"
        torch.save({"format": state_format, "trainer": trainer.state_dict()}, st)
        sref = put_checkpoint(ctx.blobs, st, kind=f"{label}/trainer-state", metadata=meta,
                              campaign_id=ctx.campaign_id, job_uuid=ctx.job_uuid)
    if ctx.job_uuid:
        doc = {"progress_id": _progress_id(label, ctx.job_uuid), "job_uuid": ctx.job_uuid,
               "campaign_id": ctx.campaign_id, "step": trainer.step, "policy": pref,
               "trainer_state": sref, "parent_checkpoint_id": parent["checkpoint_id"],
               "maker": maker_name, "updated_at": now()}
        additional(ctx.store, "data").update([clean_floats(doc)], key="progress_id")
    logger.info("%s progress saved at step %d", label.upper(), trainer.step)


def load_progress(ctx: JobContext, label: str, state_format: str,
                  map_location: str = "cpu") -> tuple[dict[str, Any], Path, dict[str, Any]] | None:
    """Find what :func:`save_progress` stored for the running job.

    Returns
    -------
    tuple or None
        ``(progress document, local policy checkpoint path, trainer-state dict)``; ``None``
        when the job has no uuid or no progress document.

    Raises
    ------
    xtalforge.models.checkpoint.CheckpointError
        When the stored trainer state is not a ``state_format`` file.
    """
    from xtalforge.models.checkpoint import load_checkpoint_file

    if not ctx.job_uuid:
        return None
    progress = additional(ctx.store, "data").query_one(
        {"progress_id": _progress_id(label, ctx.job_uuid)})
    if not progress:
        return None
    ppath, _ = resolve_checkpoint(progress["policy"], ctx.blobs)
    spath, _ = resolve_checkpoint(progress["trainer_state"], ctx.blobs)
    state = load_checkpoint_file(spath, state_format,
                                 f"xtalforge {label.upper()} trainer state", map_location)
    return progress, ppath, state


def train_with_progress(trainer, max_steps: int, checkpoint_every: int, resumed_from: int,
                        save: Callable[[Any], None]) -> None:
    """Train to ``max_steps``, calling ``save(trainer)`` every ``checkpoint_every`` steps.

    The last step is saved too when the period did not fall on it and the run took a step.
    """

    def callback(tr: Any, row: dict[str, Any]) -> None:
        if checkpoint_every and tr.step % checkpoint_every == 0:
            save(tr)

    trainer.train(max_steps, callback=callback)
    if trainer.step > resumed_from and (not checkpoint_every
                                        or trainer.step % checkpoint_every):
        save(trainer)


def run_rl_finetune(maker: RLFineTuneMaker, ctx: JobContext, checkpoint: str | dict[str, Any],
                    surrogates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Body of :meth:`RLFineTuneMaker.make` (callable with any :class:`JobContext`).

    Returns
    -------
    dict
        ``checkpoint`` (reference, kind ``generator/rl``), ``curves`` (one dict per step:
        ``step, reward/<component>, reward_total, reward_raw_total, kl, adv_var, clip_frac,
        ratio_mean, entropy, grad_norm, val_nll, frac_unique, frac_novel, frac_metastable,
        frac_msun, n_distinct_formulas, wall_time_s`` ...), ``reference_policy``,
        ``algorithm``, ``reward_config``, ``grpo_config``, ``resources``, ``notes``,
        ``parent_checkpoint``, ``steps_done``, ``resumed_from_step``, ``early_stopped``,
        ``wall_time_s``.
    """
    import torch

    from xtalforge.models.generator import LatentDiffusionGenerator
    from xtalforge.rewards.registry import build_reward
    from xtalforge.rl.grpo import GRPOTrainer

    t0 = time.perf_counter()
    device = resolve_device(maker.device)
    base, parent = load_generator(checkpoint, ctx, device)
    reward = build_reward(maker.reward, normalize_scope=maker.normalize_scope)
    cfg = maker.grpo  # every GRPOConfig field reaches the trainer as set
    found = load_progress(ctx, "rl", STATE_FORMAT, map_location=device)
    resumed_from = 0
    if found:
        progress, ppath, state = found
        policy = LatentDiffusionGenerator.load(ppath, map_location=device)
        resumed_from = int(progress["step"])
        logger.info("resuming RL job %s from step %d", ctx.job_uuid, resumed_from)
    else:
        policy, state = base, None
    res, val, notes = _build_resources(maker, ctx, policy, reward, surrogates or {}, device)
    trainer = GRPOTrainer(policy, reward, res, cfg, device=device, val_latents=val,
                          reference_generator=base if found else None,
                          init_policy_from_ema=None if state is None else False)
    if state is not None:
        trainer.load_state_dict(state["trainer"])

    def save(tr: GRPOTrainer) -> None:
        save_progress(tr, ctx, parent, label="rl", state_format=STATE_FORMAT,
                      maker_name=maker.name,
                      save_policy=lambda p: torch.save(tr.checkpoint_dict(), p))

    train_with_progress(trainer, cfg.max_steps, maker.checkpoint_every, resumed_from, save)
    last = trainer.curves[-1] if trainer.curves else {}
    selected = trainer.restore_best()  # the best policy by cfg.select_by (None: the last)
    meta = {"stage": "rl", "parent_checkpoint_id": parent["checkpoint_id"],
            "reference_policy": cfg.reference, "algorithm": cfg.algorithm,
            "steps": trainer.step, "reward": reward.config(), "device": device,
            "final_reward_raw_total": last.get("reward_raw_total"), "selected": selected,
            "stop_reason": trainer.stop_reason}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator.pt"
        torch.save(trainer.checkpoint_dict(), path)
        ref = put_checkpoint(ctx.blobs, path, kind="generator/rl", metadata=meta,
                             campaign_id=ctx.campaign_id, job_uuid=ctx.job_uuid)
    return clean_floats({
        "checkpoint": ref,
        "curves": trainer.curves,
        "reference_policy": cfg.reference,
        "algorithm": cfg.algorithm,
        "reward_config": reward.config(),
        "grpo_config": cfg.to_dict(),
        "resources": res.describe(),
        "notes": notes,
        "parent_checkpoint": parent,
        "steps_done": trainer.step,
        "resumed_from_step": resumed_from,
        "early_stopped": trainer.stopped,
        "stop_reason": trainer.stop_reason,
        "selected_policy": selected,
        "device": device,
        "wall_time_s": time.perf_counter() - t0,
    })


@dataclass
class SurrogateTrainMaker(Maker):
    """Train a property surrogate (MLP on the generator's VAE latents) on dataset documents.

    Parameters
    ----------
    name
        Job name.
    property
        Property key of the dataset documents (looked up in ``properties``, then ``prop``,
        then the document itself), e.g. ``"dft_band_gap"`` for MP-20.
    split
        Dataset split to train on (``None``: every dataset document).
    units, nonnegative
        Metadata / clamping of predictions (band gaps are >= 0).
    epochs, batch_size, lr, val_fraction, hidden_dim
        Training (Note S1: batch 256, lr 1e-3, AdamW, 10 % validation).
    seed, device
        Randomness and device.
    """

    name: str = "train property surrogate"
    property: str = "dft_band_gap"
    split: str | None = "train"
    units: str = "eV"
    nonnegative: bool = True
    epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    val_fraction: float = 0.1
    hidden_dim: int = 128
    seed: int = 0
    device: str = "auto"

    @stage_job(resource="gpu", data="history", output_schema=SurrogateOutput)
    def make(self, checkpoint: str | dict[str, Any]) -> dict[str, Any]:
        """Train on ``checkpoint``'s VAE latents; returns the surrogate reference and history."""
        return run_surrogate_training(self, job_context(), checkpoint)


def run_surrogate_training(maker: SurrogateTrainMaker, ctx: JobContext,
                           checkpoint: str | dict[str, Any]) -> dict[str, Any]:
    """Body of :meth:`SurrogateTrainMaker.make` (callable with any :class:`JobContext`).

    Raises
    ------
    ValueError
        When no dataset document carries ``maker.property`` (the message lists the properties
        that are present, e.g. for the demo dataset, which has no band gaps).
    """
    from xtalforge.rewards.surrogate import train_surrogate

    device = resolve_device(maker.device)
    gen, parent = load_generator(checkpoint, ctx, device)
    structures, docs = dataset_structures(ctx, maker.split)
    values, keep = [], []
    seen: set[str] = set()
    for i, d in enumerate(docs):
        seen.update((d.get("properties") or {}).keys())
        v = _doc_property(d, maker.property)
        try:
            v = float(v) if v is not None else math.nan
        except (TypeError, ValueError):
            v = math.nan
        if math.isfinite(v):
            keep.append(i)
            values.append(v)
    if not keep:
        raise ValueError(
            f"no dataset document of campaign {ctx.campaign_id!r} (split {maker.split!r}) has "
            f"a numeric property {maker.property!r}; properties present: {sorted(seen) or 'none'}"
            ". Set SurrogateTrainMaker(property=...) or ingest a dataset with that property "
            "(e.g. MP-20's dft_band_gap).")
    model, hist = train_surrogate(
        gen, [structures[i] for i in keep], values, property_name=maker.property,
        units=maker.units, nonnegative=maker.nonnegative, epochs=maker.epochs,
        batch_size=maker.batch_size, lr=maker.lr, val_fraction=maker.val_fraction,
        hidden_dim=maker.hidden_dim, seed=maker.seed, device=device)
    model.metadata["parent_checkpoint_id"] = parent["checkpoint_id"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "surrogate.pt"
        model.save(path)
        meta = {"property": maker.property, "units": maker.units,
                "parent_checkpoint_id": parent["checkpoint_id"],
                **{k: hist[k] for k in ("best_val_mae", "final_train_mae", "baseline_val_mae",
                                        "n_train", "n_val")}}
        ref = put_checkpoint(ctx.blobs, path, kind=f"surrogate/{maker.property}", metadata=meta,
                             campaign_id=ctx.campaign_id, job_uuid=ctx.job_uuid)
    return clean_floats({"surrogate": ref, "property": maker.property, "history": hist,
                         "n_used": len(keep), "n_without_property": len(docs) - len(keep),
                         "parent_checkpoint": parent, "device": device})
