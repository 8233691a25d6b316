"""Makers that pretrain the latent-diffusion generator: the VAE, then the latent denoiser.

* :class:`VAETrainMaker` trains a new generator's VAE on the campaign's ``dataset`` documents;
* :class:`LDMTrainMaker` trains the latent denoiser of a checkpoint (VAE frozen);
* :class:`PretrainMaker` chains the two as one flow.

Checkpoints go to the ``blobs`` additional store (:mod:`xtalforge.stores.artifacts`); job outputs
carry a small reference ``{checkpoint_id, sha256, kind, path, ...}``. Every maker also accepts a
local checkpoint path (offline use). Training histories go to the ``data`` store.

Pretraining is resumable: the training makers keep their full training state (weights, EMA,
optimiser, step, data order, RNG) in ``blobs`` under ``(campaign_id, job uuid, stage)``, so a
rerun of the same campaign (same job uuids) continues a killed job from its last save, and a
run budget (``TrainConfig.max_minutes`` / ``max_run_steps``) ends a job with a continuation job
(``Response(replace=...)``): long trainings fit batch-queue wall times. The training helpers
(:func:`train_stage`, :func:`continue_in_new_job`, :func:`resume_info`,
:func:`store_checkpoint`) are shared with the Wyckoff transformer's makers.

Sampling a checkpoint is :class:`xtalforge.makers.sample.SampleMaker`.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import Flow, Job, Maker, Response

from xtalforge.device import resolve_device
from xtalforge.makers.base import JobContext, dataset_structures, job_context, stage_job
from xtalforge.makers.sample import load_generator
from xtalforge.stores.artifacts import (
    get_training_state,
    put_checkpoint,
    put_training_state,
    training_state_id,
)
from xtalforge.stores.jobgraph import replaced_output
from xtalforge.stores.schemas import TrainOutput, VAETrainOutput

if TYPE_CHECKING:
    from xtalforge.models.training import TrainConfig

logger = logging.getLogger(__name__)


def store_checkpoint(generator, ctx: JobContext, kind: str, metadata: dict) -> dict[str, Any]:
    """Save ``generator`` to the campaign's blob store; returns the checkpoint reference."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "generator.pt"
        generator.save(path)
        return put_checkpoint(
            ctx.blobs,
            path,
            kind=kind,
            campaign_id=ctx.campaign_id,
            job_uuid=ctx.job_uuid,
            metadata=metadata,
        )


def _preset(config: str | dict[str, Any], max_atoms: int):
    from xtalforge.models.generator import GeneratorConfig

    if isinstance(config, dict):
        return GeneratorConfig.from_dict(config)
    presets = {
        "tiny": GeneratorConfig.tiny,
        "medium": GeneratorConfig.medium,
        "dit_b": GeneratorConfig.dit_b,
        "paper": GeneratorConfig.paper,
    }
    if config not in presets:
        raise ValueError(f"unknown generator preset {config!r}: use one of {sorted(presets)}")
    return presets[config](max_atoms=max_atoms)


def train_config() -> TrainConfig:
    """Return the default :class:`~xtalforge.models.training.TrainConfig` (a field factory)."""
    # imported here: torch loads only when a training maker is built, not with this module
    from xtalforge.models.training import TrainConfig

    return TrainConfig()


class _StoredState:
    """A stage's training-state file, mirrored to the ``blobs`` store under the job's uuid.

    Built at job start: a state stored by an earlier run of the same job (same campaign, uuid
    and stage) is downloaded to :attr:`path`, so training continues from it; :meth:`upload` is
    the ``on_save`` hook of the training loop.
    """

    def __init__(self, ctx: JobContext, stage: str, directory: Path, cfg: TrainConfig) -> None:
        self.ctx, self.stage = ctx, stage
        self.path = directory / f"{stage}-state.pt"
        self.state_id: str | None = None
        self.found: dict[str, Any] | None = None
        if ctx.job_uuid:
            self.state_id = training_state_id(ctx.campaign_id, ctx.job_uuid, stage)
            self.found = get_training_state(
                ctx.blobs, self.path, ctx.campaign_id, ctx.job_uuid, stage
            )
        elif cfg.max_minutes is not None or cfg.max_run_steps is not None:
            raise ValueError(
                "a run budget (train.max_minutes / train.max_run_steps) needs a jobflow job: its "
                "uuid keys the training state that the continuation job resumes from"
            )
        #: number of this run of the job (1 + the run that saved the stored state)
        self.run = 1 + int(((self.found or {}).get("metadata") or {}).get("run", 0))
        if self.found:
            logger.info("%s: continuing from stored training state %s", stage, self.state_id)

    def upload(self, path: Path) -> None:
        """Store the state file just saved at ``path`` (replacing the previous one)."""
        if self.ctx.job_uuid:
            put_training_state(
                self.ctx.blobs,
                path,
                self.ctx.campaign_id,
                self.ctx.job_uuid,
                self.stage,
                metadata={"run": self.run},
            )


def train_stage(
    stage: str,
    train_fn: Callable[..., dict[str, Any]],
    generator: Any,
    structures: list,
    cfg: TrainConfig,
    device: str,
    ctx: JobContext,
) -> tuple[dict[str, Any], _StoredState]:
    """Run ``train_fn`` (``train_vae`` / ``train_ldm``) resumably; return history and state."""
    from xtalforge.models.training import TrainStateError

    with tempfile.TemporaryDirectory(prefix=f"xtalforge-{stage}-") as tmp:
        state = _StoredState(ctx, stage, Path(tmp), cfg)
        try:
            hist = train_fn(
                generator,
                structures,
                device=device,
                state_path=state.path,
                on_save=state.upload,
                config=cfg,
            )
        except TrainStateError as exc:
            if state.found is None:
                raise
            raise TrainStateError(
                f"training state {state.state_id} in the blob store cannot be resumed ({exc}); "
                "delete it (xtalforge.stores.artifacts.delete_training_state) to train this "
                "stage from scratch"
            ) from exc
    return hist, state


def continue_in_new_job(next_job: Job, hist: dict[str, Any], state: _StoredState) -> Response:
    """Replace the running job by ``next_job`` (same maker, same inputs, same uuid)."""
    logger.info(
        "%s: run %d stopped at step %d by its budget; continuing in a new job",
        state.stage,
        state.run,
        hist["steps"],
    )
    return Response(
        replace=next_job,
        output=replaced_output(
            stage=state.stage, step=hist["steps"], run=state.run, train_state_id=state.state_id
        ),
    )


def resume_info(hist: dict[str, Any], state: _StoredState) -> dict[str, Any]:
    """Resume bookkeeping of one training run (steps done, runs, stored state) for its output."""
    return {
        "steps_done": hist["steps"],
        "runs": state.run,
        "resumed_from_step": hist["resumed_from_step"],
        "train_state_id": state.state_id,
    }


@dataclass
class VAETrainMaker(Maker):
    """Train a new generator's VAE on the campaign's dataset documents.

    Training is resumable through the ``blobs`` store: the full training state is stored under
    ``(campaign_id, job uuid, "vae")`` every ``train.save_every_minutes`` and when a run stops,
    and a job starting with the same uuid (a rerun of the same campaign) continues from it.
    When a run budget (``train.max_minutes`` or ``train.max_run_steps``) stops training, the
    job replaces itself (``Response(replace=...)``) by a new job of this maker on the same
    inputs, which continues; the last job's output is the usual one.

    Parameters
    ----------
    name
        Job name.
    model
        Generator preset (``tiny``, ``medium``, ``paper``) or a ``GeneratorConfig`` dict.
    max_atoms
        Largest cell (structures with more sites are skipped and counted).
    split
        Dataset split to train on (``None``: every dataset document).
    train
        Optimisation settings and run budget (:class:`~xtalforge.models.training.TrainConfig`).
    device
        ``"auto"`` (GPU when visible), ``"cpu"``, ``"cuda"``.
    """

    name: str = "train vae"
    model: str | dict = "tiny"
    max_atoms: int = 20
    split: str | None = "train"
    train: TrainConfig = field(default_factory=train_config)
    device: str = "auto"

    @stage_job(resource="gpu", data="history", output_schema=VAETrainOutput)
    def make(self, dataset: Any = None) -> dict[str, Any] | Response:
        """Train; ``dataset`` (the ingest output) only orders the job after ingestion.

        Returns
        -------
        dict or Response
            ``checkpoint`` (reference, kind ``generator/vae``), ``history``, ``n_train``,
            ``n_skipped_too_large``, ``wall_time_s`` (this run), ``steps_done``, ``runs``
            (runs of this job that trained, continuations and reruns included),
            ``resumed_from_step`` (step this last run started from), ``train_state_id``; or a
            replacement by the continuation job when a run budget stopped training.
        """
        import torch

        from xtalforge.models.generator import LatentDiffusionGenerator
        from xtalforge.models.training import train_vae

        ctx = job_context()
        device = resolve_device(self.device)
        structures, _ = dataset_structures(ctx, self.split)
        kept = [s for s in structures if len(s) <= self.max_atoms]
        if not kept:
            raise ValueError(f"no dataset structures with <= {self.max_atoms} atoms to train on")
        torch.manual_seed(self.train.seed)
        gen = LatentDiffusionGenerator(_preset(self.model, self.max_atoms))
        gen.fit_num_atoms_distribution([len(s) for s in kept])
        t = time.perf_counter()
        hist, state = train_stage("vae", train_vae, gen, kept, self.train, device, ctx)
        if not hist["completed"]:
            return continue_in_new_job(self.make(dataset), hist, state)
        meta = {
            "stage": "vae",
            "n_train": len(kept),
            "steps": self.train.steps,
            "device": device,
            "model": self.model if isinstance(self.model, str) else "custom",
            "final_loss": hist["loss"][-1] if hist.get("loss") else None,
        }
        ref = store_checkpoint(gen, ctx, "generator/vae", meta)
        return {
            "checkpoint": ref,
            "history": hist,
            "n_train": len(kept),
            "n_skipped_too_large": len(structures) - len(kept),
            "wall_time_s": time.perf_counter() - t,
            **resume_info(hist, state),
        }


@dataclass
class LDMTrainMaker(Maker):
    """Train the latent denoiser of a generator checkpoint (VAE frozen), with EMA weights.

    Resumable and budgeted like :class:`VAETrainMaker` (state key stage ``"ldm"``).

    Parameters
    ----------
    name
        Job name.
    split
        Dataset split to train on (``None``: every dataset document).
    train
        Optimisation settings and run budget (:class:`~xtalforge.models.training.TrainConfig`).
    device
        ``"auto"`` (GPU when visible), ``"cpu"``, ``"cuda"``.
    """

    name: str = "train ldm"
    split: str | None = "train"
    train: TrainConfig = field(default_factory=train_config)
    device: str = "auto"

    @stage_job(resource="gpu", data="history", output_schema=TrainOutput)
    def make(self, checkpoint: str | dict[str, Any]) -> dict[str, Any] | Response:
        """Train the LDM starting from ``checkpoint`` (reference or local path).

        Returns
        -------
        dict or Response
            As :meth:`VAETrainMaker.make` (checkpoint kind ``generator/ldm``).
        """
        from xtalforge.models.training import train_ldm

        ctx = job_context()
        device = resolve_device(self.device)
        gen, parent = load_generator(checkpoint, ctx, device)
        structures, _ = dataset_structures(ctx, self.split)
        kept = [s for s in structures if len(s) <= gen.max_atoms]
        t = time.perf_counter()
        hist, state = train_stage("ldm", train_ldm, gen, kept, self.train, device, ctx)
        if not hist["completed"]:
            return continue_in_new_job(self.make(checkpoint), hist, state)
        meta = {
            "stage": "ldm",
            "parent_checkpoint_id": parent["checkpoint_id"],
            "n_train": len(kept),
            "steps": self.train.steps,
            "device": device,
            "final_loss": hist["loss"][-1] if hist.get("loss") else None,
        }
        ref = store_checkpoint(gen, ctx, "generator/ldm", meta)
        return {
            "checkpoint": ref,
            "history": hist,
            "n_train": len(kept),
            "wall_time_s": time.perf_counter() - t,
            **resume_info(hist, state),
        }


@dataclass
class PretrainMaker(Maker):
    """Pretrain the latent-diffusion generator: VAE, then LDM, as two jobs of one flow."""

    name: str = "pretrain"
    vae_maker: VAETrainMaker = field(default_factory=VAETrainMaker)
    ldm_maker: LDMTrainMaker = field(default_factory=LDMTrainMaker)

    def make(self, dataset: Any = None) -> Flow:
        """Return the flow; its output is the LDM job's output (``checkpoint``, ``history``)."""
        vae = self.vae_maker.make(dataset)
        ldm = self.ldm_maker.make(vae.output["checkpoint"])
        return Flow([vae, ldm], output=ldm.output, name=self.name)
