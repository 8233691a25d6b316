"""Makers for the latent-diffusion generator: pretraining (VAE then LDM) and sampling.

* :class:`VAETrainMaker` trains a new generator's VAE on the campaign's ``dataset`` documents;
* :class:`LDMTrainMaker` trains the latent denoiser of a checkpoint (VAE frozen);
* :class:`PretrainMaker` chains the two as one flow;
* :class:`SampleMaker` draws ``n`` structures from a checkpoint and writes one ``sample`` document
  per draw (invalid decodes included, flagged with their reason) in bulk, with lineage.

Checkpoints go to the ``blobs`` additional store (:mod:`xtalforge.stores.artifacts`); job outputs
carry a small reference ``{checkpoint_id, sha256, kind, path, ...}``. Every maker also accepts a
local checkpoint path (offline use). Training histories go to the ``data`` store.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobflow import Flow, Maker, job

from xtalforge.makers.base import JobContext, job_context, store_config
from xtalforge.stores.artifacts import put_checkpoint, resolve_checkpoint
from xtalforge.stores.documents import (
    bulk_upsert,
    existing_keys,
    find,
    make_structure_doc,
    make_structure_id,
)

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """Return ``"cuda"`` for ``"auto"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_generator(
    checkpoint: str | dict[str, Any], ctx: JobContext | None = None, device: str = "cpu"
):
    """Load a :class:`~xtalforge.models.generator.LatentDiffusionGenerator` and its reference."""
    from xtalforge.models.generator import LatentDiffusionGenerator

    path, ref = resolve_checkpoint(checkpoint, ctx.blobs if ctx else None)
    return LatentDiffusionGenerator.load(path, map_location=device), ref


def dataset_structures(ctx: JobContext, split: str | None = "train", limit: int | None = None):
    """Return the valid structures of the campaign's ``dataset`` documents (optionally a split)."""
    from pymatgen.core import Structure

    crit: dict[str, Any] = {"campaign_id": ctx.campaign_id, "stage": "dataset", "valid": True}
    if split:
        crit["split"] = split
    docs = find(
        ctx.structures,
        crit,
        properties=["structure", "structure_id", "properties"],
        limit=limit or 0,
    )
    return [Structure.from_dict(d["structure"]) for d in docs], docs


def _store_checkpoint(generator, ctx: JobContext, kind: str, metadata: dict) -> dict[str, Any]:
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
        "paper": GeneratorConfig.paper,
    }
    if config not in presets:
        raise ValueError(f"unknown generator preset {config!r}: use one of {sorted(presets)}")
    return presets[config](max_atoms=max_atoms)


@dataclass
class VAETrainMaker(Maker):
    """Train a new generator's VAE on the campaign's dataset documents.

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
    steps, batch_size, lr, seed, dtype
        Optimisation settings.
    device
        ``"auto"`` (GPU when visible), ``"cpu"``, ``"cuda"``.
    """

    name: str = "train vae"
    model: str | dict = "tiny"
    max_atoms: int = 20
    split: str | None = "train"
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    dtype: str = "fp32"
    device: str = "auto"

    @job(config=store_config(), data="history")
    def make(self, dataset: Any = None) -> dict[str, Any]:
        """Train; ``dataset`` (the ingest output) only orders the job after ingestion."""
        import torch

        from xtalforge.models.generator import LatentDiffusionGenerator
        from xtalforge.models.training import train_vae

        ctx = job_context()
        device = resolve_device(self.device)
        structures, _ = dataset_structures(ctx, self.split)
        kept = [s for s in structures if len(s) <= self.max_atoms]
        if not kept:
            raise ValueError(f"no dataset structures with <= {self.max_atoms} atoms to train on")
        torch.manual_seed(self.seed)
        gen = LatentDiffusionGenerator(_preset(self.model, self.max_atoms))
        gen.fit_num_atoms_distribution([len(s) for s in kept])
        t = time.perf_counter()
        hist = train_vae(
            gen,
            kept,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            device=device,
            seed=self.seed,
            dtype=self.dtype,
            log_every=max(1, self.steps // 20),
        )
        meta = {
            "stage": "vae",
            "n_train": len(kept),
            "steps": self.steps,
            "device": device,
            "model": self.model if isinstance(self.model, str) else "custom",
            "final_loss": hist["loss"][-1] if hist.get("loss") else None,
        }
        ref = _store_checkpoint(gen, ctx, "generator/vae", meta)
        return {
            "checkpoint": ref,
            "history": hist,
            "n_train": len(kept),
            "n_skipped_too_large": len(structures) - len(kept),
            "wall_time_s": time.perf_counter() - t,
        }


@dataclass
class LDMTrainMaker(Maker):
    """Train the latent denoiser of a generator checkpoint (VAE frozen), with EMA weights."""

    name: str = "train ldm"
    split: str | None = "train"
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    dtype: str = "fp32"
    device: str = "auto"

    @job(config=store_config(), data="history")
    def make(self, checkpoint: str | dict[str, Any]) -> dict[str, Any]:
        """Train the LDM starting from ``checkpoint`` (reference or local path)."""
        from xtalforge.models.training import train_ldm

        ctx = job_context()
        device = resolve_device(self.device)
        gen, parent = load_generator(checkpoint, ctx, device)
        structures, _ = dataset_structures(ctx, self.split)
        kept = [s for s in structures if len(s) <= gen.max_atoms]
        t = time.perf_counter()
        hist = train_ldm(
            gen,
            kept,
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            device=device,
            seed=self.seed,
            dtype=self.dtype,
            log_every=max(1, self.steps // 20),
        )
        meta = {
            "stage": "ldm",
            "parent_checkpoint_id": parent["checkpoint_id"],
            "n_train": len(kept),
            "steps": self.steps,
            "device": device,
            "final_loss": hist["loss"][-1] if hist.get("loss") else None,
        }
        ref = _store_checkpoint(gen, ctx, "generator/ldm", meta)
        return {
            "checkpoint": ref,
            "history": hist,
            "n_train": len(kept),
            "wall_time_s": time.perf_counter() - t,
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
        for j in (vae, ldm):
            j.metadata["xtalforge_resource"] = "gpu"
        return Flow([vae, ldm], output=ldm.output, name=self.name)


@dataclass
class SampleMaker(Maker):
    """Sample structures from a generator checkpoint into ``sample`` documents.

    Sampling runs in chunks of ``chunk_size`` with a seed per chunk, so an interrupted job that
    runs again skips the chunks already stored (same ids, same structures).

    Parameters
    ----------
    name
        Job name.
    n
        Number of samples.
    num_atoms
        Atom counts to condition on (length ``n``); default: drawn from the training
        distribution stored in the checkpoint.
    batch_size
        Samples denoised together on the device.
    chunk_size
        Samples per stored chunk (resume granularity).
    steps, eta
        DDIM steps and stochasticity.
    dtype
        ``fp32`` or ``bf16`` (bf16 autocast on CUDA).
    device
        ``auto``, ``cpu`` or ``cuda``.
    seed
        Base seed (chunk ``c`` uses ``seed * 1_000_003 + c``).
    label
        Free label stored in the lineage (e.g. ``base`` / ``rl``) to compare models in tables.
    """

    name: str = "sample"
    n: int = 1000
    num_atoms: list[int] | None = None
    batch_size: int = 1000
    chunk_size: int = 2000
    steps: int = 50
    eta: float = 0.0
    dtype: str = "fp32"
    device: str = "auto"
    seed: int = 0
    label: str | None = None

    @job(config=store_config())
    def make(self, checkpoint: str | dict[str, Any]) -> dict[str, Any]:
        """Sample and store; returns counts, throughput and the checkpoint reference."""
        from tqdm.auto import tqdm

        ctx = job_context()
        device = resolve_device(self.device)
        gen, ref = load_generator(checkpoint, ctx, device)
        origin = f"sample:{ctx.job_uuid}"
        done = existing_keys(
            ctx.structures,
            {"campaign_id": ctx.campaign_id, "stage": "sample", "job_uuid": ctx.job_uuid},
        )
        n_chunks = math.ceil(self.n / self.chunk_size)
        n_written = n_valid = 0
        t_gen = 0.0
        timings: dict[str, float] = {}
        lineage_base = {
            "source": "generator",
            "parent_job_uuid": ctx.job_uuid,
            "checkpoint_id": ref["checkpoint_id"],
            "checkpoint_sha256": ref["sha256"],
            "checkpoint_kind": ref.get("kind"),
            "model_label": self.label,
            "sampler": {
                "steps": self.steps,
                "eta": self.eta,
                "dtype": self.dtype,
                "seed": self.seed,
                "device": device,
            },
        }
        for c in tqdm(range(n_chunks), desc="sample", unit="chunk", disable=n_chunks < 2):
            lo, hi = c * self.chunk_size, min(self.n, (c + 1) * self.chunk_size)
            ids = [make_structure_id(ctx.campaign_id, origin, i) for i in range(lo, hi)]
            if all(f"{sid}/sample" in done for sid in ids):
                continue
            t = time.perf_counter()
            res = gen.generate(
                hi - lo,
                num_atoms=self.num_atoms[lo:hi] if self.num_atoms else None,
                seed=self.seed * 1_000_003 + c,
                batch_size=self.batch_size,
                device=device,
                dtype=self.dtype,
                steps=self.steps,
                eta=self.eta,
            )
            t_gen += time.perf_counter() - t
            for k, v in res.timings.items():
                timings[k] = timings.get(k, 0.0) + v
            docs = []
            for i, (s, reason, na) in enumerate(
                zip(res.structures, res.reasons, res.num_atoms, strict=True)
            ):
                docs.append(
                    make_structure_doc(
                        s,
                        structure_id=ids[i],
                        campaign_id=ctx.campaign_id,
                        stage="sample",
                        errors=[reason] if reason else [],
                        job_uuid=ctx.job_uuid,
                        job_name=ctx.job_name,
                        lineage={**lineage_base, "index": lo + i, "chunk": c},
                        properties={"num_atoms_condition": int(na)},
                    )
                )
            bulk_upsert(
                ctx.structures,
                docs,
                scope={"campaign_id": ctx.campaign_id, "stage": "sample", "job_uuid": ctx.job_uuid},
            )
            n_written += len(docs)
            n_valid += res.num_valid
        logger.info(
            "sampled %d structures (%d valid) in %.1f s on %s", n_written, n_valid, t_gen, device
        )
        return {
            "job_uuid": ctx.job_uuid,
            "n": self.n,
            "n_written_now": n_written,
            "n_valid_now": n_valid,
            "already_stored": len(done),
            "checkpoint": ref,
            "label": self.label,
            "device": device,
            "dtype": self.dtype,
            "generate_time_s": t_gen,
            "structures_per_s": n_written / t_gen if t_gen else None,
            "timings": timings,
        }
