"""Sampling a generator checkpoint into ``sample`` documents.

:class:`SampleMaker` draws ``n`` structures from a checkpoint of either generator family and
writes one ``sample`` document per draw (invalid decodes included, flagged with their reason) in
bulk, with lineage (checkpoint id and SHA-256, sampler settings and seed). :func:`load_generator`
loads a checkpoint reference (``blobs`` store) or a local path into its generator; the
screening and RL makers use it too.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from jobflow import Maker

from xtalforge.device import resolve_device
from xtalforge.makers.base import JobContext, job_context, stage_job
from xtalforge.stores.artifacts import resolve_checkpoint
from xtalforge.stores.documents import (
    bulk_upsert,
    existing_keys,
    make_structure_doc,
    make_structure_id,
)
from xtalforge.stores.schemas import SampleOutput

logger = logging.getLogger(__name__)


def set_decode_workers(generator: Any, workers: int) -> None:
    """Let a generator that decodes on the CPU do it in ``workers`` processes.

    Generators without a CPU decoding step (the latent diffusion model decodes on the device)
    have no ``decode_workers`` attribute and are left as they are.
    """
    if workers and hasattr(generator, "decode_workers"):
        generator.decode_workers = int(workers)


def load_generator(
    checkpoint: str | dict[str, Any], ctx: JobContext | None = None, device: str = "cpu"
):
    """Load a generator of either family (by the checkpoint's format tag) and its reference.

    A latent diffusion checkpoint gives a
    :class:`~xtalforge.models.generator.LatentDiffusionGenerator`, a Wyckoff transformer one a
    :class:`~xtalforge.models.wyckoff.generator.WyckoffTransformerGenerator`
    (:func:`xtalforge.models.interface.load_any_generator`).
    """
    from xtalforge.models.interface import load_any_generator

    path, ref = resolve_checkpoint(checkpoint, ctx.blobs if ctx else None)
    return load_any_generator(path, map_location=device), ref


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
    decode_workers
        Processes that assemble sampled sequences into structures, for generators that decode
        on the CPU (the Wyckoff transformer); ``0``: in the job's process.
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
    decode_workers: int = 0

    @stage_job(resource="gpu", output_schema=SampleOutput)
    def make(self, checkpoint: str | dict[str, Any]) -> dict[str, Any]:
        """Sample and store; returns counts, throughput and the checkpoint reference."""
        from tqdm.auto import tqdm

        ctx = job_context()
        device = resolve_device(self.device)
        gen, ref = load_generator(checkpoint, ctx, device)
        set_decode_workers(gen, self.decode_workers)
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
