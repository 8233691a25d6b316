"""Latent-diffusion crystal generator: VAE + DiT latent diffusion + atom-count distribution.

Public API
----------
``GeneratorConfig``
    ``max_atoms`` plus :class:`~xtalforge.models.vae.VAEConfig`,
    :class:`~xtalforge.models.diffusion.DiTConfig` and
    :class:`~xtalforge.models.diffusion.DiffusionConfig`; presets ``tiny()`` (CPU tests and
    demo), ``medium()`` (minutes of GPU training) and ``paper()`` (VAE d=512 x 8+8 layers as
    Chemeleon2; DiT 12 layers, hidden 768, 12 heads); ``to_dict()`` / ``from_dict()``.
``LatentDiffusionGenerator(config)`` (an ``nn.Module`` with ``.vae`` and ``.ldm``)
    ``generate(n, num_atoms=None, seed=0, batch_size=1000, device="cpu", dtype="fp32",
    steps=50, eta=0.0, ...) -> GenerationResult``;
    ``embed_structures(structures) -> np.ndarray [n, latent_dim]`` (NaN rows for ``None``);
    ``composition_embeddings(structures) -> np.ndarray``;
    ``reconstruct(structures) -> GenerationResult`` (encode with posterior means, decode);
    ``take_decoder(other)`` (use another generator's decoder over the same encoder);
    ``fit_num_atoms_distribution(num_atoms)`` / ``sample_num_atoms(n, generator)``;
    ``save(path, inference_only=False) -> sha256 hex`` and
    ``LatentDiffusionGenerator.load(path, map_location)``.

A checkpoint is one ``torch.save`` file holding only plain Python containers and tensors
(loadable with ``torch.load(..., weights_only=True)``): format tag, config dict, VAE and LDM
state dicts (the LDM's includes the EMA denoiser and latent normalisation; ``inference_only``
drops the trainable denoiser, which is then initialised from the EMA weights on load) and the
atom-count histogram.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xtalforge.models.crystal import (
    CrystalBatch,
    batch_to_structures_with_reasons,
    num_atoms_to_mask,
    structures_to_batch,
)
from xtalforge.models.diffusion import (
    DiffusionConfig,
    DiTConfig,
    LatentDiffusion,
    autocast,
    resolve_autocast_dtype,
)
from xtalforge.models.vae import CrystalVAE, VAEConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "GenerationResult",
    "GeneratorConfig",
    "LatentDiffusionGenerator",
    "file_sha256",
]

logger = logging.getLogger(__name__)

#: Format tag stored in checkpoints.
CHECKPOINT_FORMAT = "xtalforge.latent_diffusion_generator/1"


def _done(value: object) -> Future:
    """Return a completed future holding ``value``."""
    fut: Future = Future()
    fut.set_result(value)
    return fut


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class GeneratorConfig:
    """Configuration of a :class:`LatentDiffusionGenerator`."""

    max_atoms: int = 20
    vae: VAEConfig = field(default_factory=VAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        if self.vae.max_atoms != self.max_atoms:
            self.vae.max_atoms = self.max_atoms

    @classmethod
    def tiny(cls, max_atoms: int = 20) -> GeneratorConfig:
        """Small enough to train and sample in seconds on 2 CPU cores."""
        return cls(
            max_atoms=max_atoms,
            vae=VAEConfig.tiny(max_atoms=max_atoms),
            dit=DiTConfig(depth=2, hidden_dim=32, num_heads=2, mlp_ratio=2.0),
        )

    @classmethod
    def medium(cls, max_atoms: int = 20) -> GeneratorConfig:
        """Mid-size model for minutes of GPU training (VAE d=256 x 4+4, DiT 6 x 384)."""
        return cls(
            max_atoms=max_atoms,
            vae=VAEConfig(
                max_atoms=max_atoms, hidden_dim=256, num_heads=8, encoder_layers=4, decoder_layers=4
            ),
            dit=DiTConfig(depth=6, hidden_dim=384, num_heads=6),
        )

    @classmethod
    def dit_b(cls, max_atoms: int = 20) -> GeneratorConfig:
        """Return the scaling study's recipe: VAE d=256 x 4+4 with KL weight 1e-3, DiT-B 12 x 768.

        In the generator scaling study (``benchmarks/RESULTS.md``) this VAE reconstructed
        91-93% of the held-out MP-20 crystals after 90 s of training, and DiT-B on its latents
        gave the most metastable samples per training step of the sizes measured (4.40% after
        8,000 steps against 2.55% for 8 x 384).
        """
        cfg = cls.medium(max_atoms=max_atoms)
        cfg.vae.w_kl = 1e-3
        cfg.dit = DiTConfig(depth=12, hidden_dim=768, num_heads=12)
        return cfg

    @classmethod
    def paper(cls, max_atoms: int = 20) -> GeneratorConfig:
        """Chemeleon2 sizes: VAE d=512, 8 heads, 8+8 layers; DiT 12 layers, 768 wide, 12 heads."""
        return cls(
            max_atoms=max_atoms,
            vae=VAEConfig(
                max_atoms=max_atoms, hidden_dim=512, num_heads=8, encoder_layers=8, decoder_layers=8
            ),
            dit=DiTConfig(depth=12, hidden_dim=768, num_heads=12),
        )

    def to_dict(self) -> dict:
        """Nested plain dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GeneratorConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            max_atoms=int(d["max_atoms"]),
            vae=VAEConfig(**d["vae"]),
            dit=DiTConfig(**d["dit"]),
            diffusion=DiffusionConfig(**d["diffusion"]),
        )


@dataclass
class GenerationResult:
    """Output of :meth:`LatentDiffusionGenerator.generate`.

    Attributes
    ----------
    structures
        ``pymatgen.core.Structure`` or ``None`` (invalid decode), one per sample.
    reasons
        ``None`` for valid decodes, else why the decode is invalid (parallel to ``structures``).
    num_atoms
        ``[n]`` atom counts the samples were conditioned on.
    latents
        ``[n, max_atoms, latent_dim]`` VAE latents (``return_latents=True``), else ``None``.
    timings
        Seconds spent in ``denoise``, ``vae_decode`` and ``to_structures``.
    settings
        The sampler settings (seed, steps, eta, dtype, ...), for provenance.
    """

    structures: list
    reasons: list[str | None]
    num_atoms: np.ndarray
    latents: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @property
    def num_valid(self) -> int:
        """Number of structures that decoded."""
        return sum(s is not None for s in self.structures)

    def __len__(self) -> int:
        return len(self.structures)


class LatentDiffusionGenerator(nn.Module):
    """VAE + latent diffusion + the training set's atom-count distribution.

    Parameters
    ----------
    config
        :class:`GeneratorConfig` (default: ``GeneratorConfig()``, the paper's DiT).
    """

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or GeneratorConfig()
        self.vae = CrystalVAE(config.vae)
        self.ldm = LatentDiffusion(
            config.vae.latent_dim, config.max_atoms, config.dit, config.diffusion
        )
        counts = torch.zeros(config.max_atoms + 1, dtype=torch.float64)
        counts[1:] = 1.0  # uniform until fitted
        self.register_buffer("num_atoms_counts", counts)

    @property
    def max_atoms(self) -> int:
        """Padded number of atoms."""
        return self.config.max_atoms

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    # ------------------------------------------------------------------ atom counts
    @torch.no_grad()
    def fit_num_atoms_distribution(self, num_atoms: Sequence[int] | torch.Tensor) -> None:
        """Set the atom-count histogram from training-set atom counts."""
        n = torch.as_tensor(num_atoms, dtype=torch.long).flatten().cpu()
        if (n < 1).any() or (n > self.max_atoms).any():
            raise ValueError(f"atom counts must be in 1..{self.max_atoms}")
        counts = torch.bincount(n, minlength=self.max_atoms + 1).double()
        self.num_atoms_counts.copy_(counts.to(self.num_atoms_counts.device))

    def sample_num_atoms(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` atom counts (CPU Long tensor) from the fitted histogram."""
        p = self.num_atoms_counts.detach().cpu().double()
        return torch.multinomial(p / p.sum(), n, replacement=True, generator=generator)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        n: int,
        num_atoms: Sequence[int] | torch.Tensor | None = None,
        seed: int = 0,
        batch_size: int = 1000,
        device: str | torch.device = "cpu",
        dtype: str = "fp32",
        steps: int = 50,
        eta: float = 0.0,
        use_ema: bool = True,
        conditions: dict[str, torch.Tensor] | None = None,
        cfg_scale: float = 1.0,
        return_latents: bool = False,
        decode_structures: bool = True,
        progress: bool | None = None,
        sort_by_size: bool = True,
        overlap_decode: bool | None = None,
    ) -> GenerationResult:
        """Sample ``n`` crystals.

        Reproducible: the same ``(seed, batch_size, device, dtype, sort_by_size)`` and weights
        give the same structures. The module is moved to ``device``. ``timings`` holds the
        time spent in each stage; with ``overlap_decode`` the stages overlap.

        Parameters
        ----------
        n
            Number of samples.
        num_atoms
            Atom counts (length ``n``); default: drawn from the training distribution.
        seed
            Seed of the atom-count draw and of the sampler's noise.
        batch_size
            Samples denoised together.
        device
            ``"cpu"``, ``"cuda"``, ...
        dtype
            ``"fp32"`` or ``"bf16"`` (autocast on CUDA; on CPU falls back to fp32 with a
            warning).
        steps, eta
            DDIM steps and stochasticity.
        use_ema
            Sample with the EMA denoiser weights.
        conditions, cfg_scale
            Optional extra conditions (``[n, ...]`` tensors) and guidance scale.
        return_latents
            Keep the ``[n, max_atoms, latent_dim]`` latents in the result.
        decode_structures
            Build pymatgen structures (False: only latents / timings, for benchmarks).
        progress
            Show a tqdm bar (None: only on a TTY).
        sort_by_size
            Batch samples by atom count (less padding, faster); changes which noise each
            sample gets, not the distribution.
        overlap_decode
            Convert to pymatgen in a background thread while the next batch is denoised
            (default: on CUDA only).

        Returns
        -------
        GenerationResult
        """
        from tqdm.auto import tqdm

        device = torch.device(device)
        self.to(device)
        self.eval()
        cpu_gen = torch.Generator().manual_seed(int(seed))
        if num_atoms is None:
            counts = self.sample_num_atoms(n, cpu_gen)
        else:
            counts = torch.as_tensor(num_atoms, dtype=torch.long).flatten().cpu()
            if counts.numel() != n:
                raise ValueError(f"num_atoms has {counts.numel()} entries, expected {n}")
        dev_gen = torch.Generator(device=device)
        dev_gen.manual_seed(int(seed) + 1)
        ac = resolve_autocast_dtype(dtype, device)
        timings = {"denoise": 0.0, "vae_decode": 0.0, "to_structures": 0.0}
        structures: list = [None] * n
        reasons: list[str | None] = [None if decode_structures else "not decoded"] * n
        latents = np.zeros((n, self.max_atoms, self.config.vae.latent_dim), dtype=np.float32)
        # length bucketing: denoise crystals of similar size together, padded only to the
        # batch's largest atom count (results are put back in the original order)
        order = torch.argsort(counts, stable=True) if sort_by_size else torch.arange(n)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        # on CUDA, the pymatgen conversion of one batch overlaps the denoising of the next
        if overlap_decode is None:
            overlap_decode = device.type == "cuda"
        pool = ThreadPoolExecutor(max_workers=1) if overlap_decode else None
        pending: list[tuple[Future, torch.Tensor]] = []

        def convert(batch: CrystalBatch) -> tuple[list, list, float]:
            t = time.perf_counter()
            s_, r_ = batch_to_structures_with_reasons(batch)
            return s_, r_, time.perf_counter() - t

        def collect(fut: Future, idx: torch.Tensor) -> None:
            s_, r_, dt = fut.result()
            timings["to_structures"] += dt
            for j, i in enumerate(idx.tolist()):
                structures[i], reasons[i] = s_[j], r_[j]

        disable = None if progress is None else not progress
        try:
            for start in tqdm(
                range(0, n, batch_size), disable=disable, desc="generate", leave=False
            ):
                idx = order[start : start + batch_size]
                na = counts[idx]
                n_pad = int(na.max())
                na = na.to(device)
                cond = None
                if conditions:
                    cond = {k: v[idx].to(device) for k, v in conditions.items()}
                t0 = time.perf_counter()
                z0 = self.ldm.sample(
                    na,
                    steps=steps,
                    eta=eta,
                    generator=dev_gen,
                    dtype=ac,
                    use_ema=use_ema,
                    conditions=cond,
                    cfg_scale=cfg_scale,
                    pad_to=n_pad,
                )
                sync()
                t1 = time.perf_counter()
                mask = num_atoms_to_mask(na, n_pad)
                with autocast(device, ac):
                    batch = self.vae.decode_batch(z0, mask)
                batch = batch.to("cpu")
                t2 = time.perf_counter()
                timings["denoise"] += t1 - t0
                timings["vae_decode"] += t2 - t1
                if return_latents:
                    latents[idx.numpy(), :n_pad] = z0.float().cpu().numpy()
                if decode_structures:
                    if pool is None:
                        collect(_done(convert(batch)), idx)
                    else:
                        pending.append((pool.submit(convert, batch), idx))
            for fut, idx in pending:
                collect(fut, idx)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        n_bad = sum(r is not None for r in reasons)
        if n_bad:
            logger.info("generate: %d/%d invalid decodes", n_bad, n)
        return GenerationResult(
            structures=structures,
            reasons=reasons,
            num_atoms=counts.numpy(),
            latents=latents if return_latents else None,
            timings=timings,
            settings=dict(
                n=n,
                seed=seed,
                batch_size=batch_size,
                device=str(device),
                dtype=dtype,
                steps=steps,
                eta=eta,
                use_ema=use_ema,
                cfg_scale=cfg_scale,
                sort_by_size=sort_by_size,
                overlap_decode=overlap_decode,
            ),
        )

    # ------------------------------------------------------------------ embeddings
    def _batches(self, structures: Sequence, batch_size: int):
        valid = [i for i, s in enumerate(structures) if s is not None]
        for start in range(0, len(valid), batch_size):
            idx = valid[start : start + batch_size]
            yield idx, structures_to_batch([structures[i] for i in idx], self.max_atoms)

    @torch.no_grad()
    def embed_structures(
        self, structures: Sequence, batch_size: int = 512, device: str | torch.device | None = None
    ) -> np.ndarray:
        """Structure embeddings ``[n, latent_dim]`` (mean-pooled posterior means).

        ``None`` entries give NaN rows. Structures with more than ``max_atoms`` sites raise.
        """
        device = torch.device(device) if device is not None else self.device
        self.vae.to(device).eval()
        out = np.full((len(structures), self.config.vae.latent_dim), np.nan, dtype=np.float32)
        for idx, batch in self._batches(structures, batch_size):
            out[idx] = self.vae.embed(batch.to(device)).float().cpu().numpy()
        return out

    @torch.no_grad()
    def composition_embeddings(
        self, structures: Sequence, batch_size: int = 512, device: str | torch.device | None = None
    ) -> np.ndarray:
        """Composition embeddings ``[n, vae.hidden_dim]`` (NaN rows for ``None``)."""
        device = torch.device(device) if device is not None else self.device
        self.vae.to(device).eval()
        out = np.full((len(structures), self.config.vae.hidden_dim), np.nan, dtype=np.float32)
        for idx, batch in self._batches(structures, batch_size):
            out[idx] = self.vae.composition_embedding(batch.to(device)).float().cpu().numpy()
        return out

    @torch.no_grad()
    def reconstruct(
        self, structures: Sequence, batch_size: int = 512, device: str | torch.device | None = None
    ) -> GenerationResult:
        """Encode with the posterior mean and decode (VAE reconstruction)."""
        device = torch.device(device) if device is not None else self.device
        self.vae.to(device).eval()
        out_s: list = [None] * len(structures)
        out_r: list[str | None] = ["input is None"] * len(structures)
        for idx, batch in self._batches(structures, batch_size):
            b = batch.to(device)
            mean, _ = self.vae.encode(b)
            s, r = batch_to_structures_with_reasons(self.vae.decode_batch(mean, b.mask).to("cpu"))
            for j, i in enumerate(idx):
                out_s[i], out_r[i] = s[j], r[j]
        counts = np.array([len(s) if s is not None else 0 for s in structures])
        return GenerationResult(out_s, out_r, counts)

    def take_decoder(self, other: LatentDiffusionGenerator) -> None:
        """Copy the VAE decoder of ``other`` into this generator (the encoder must match).

        For a decoder fine-tuned with :func:`~xtalforge.models.training.finetune_decoder`
        on a copy of this generator's VAE: the latents (and so this generator's diffusion
        model) are unchanged, only how they are decoded.

        Raises
        ------
        ValueError
            If the two VAEs have different configurations or encoder weights.
        """
        if other.config.vae.to_dict() != self.config.vae.to_dict():
            raise ValueError("the two generators have different VAE configurations")
        dec = {id(p) for p in other.vae.decoder_parameters()}
        mine, theirs = self.vae.state_dict(), other.vae.state_dict()
        dec_names = {n for n, p in other.vae.named_parameters() if id(p) in dec}
        for name, value in theirs.items():
            if name not in dec_names and not torch.equal(mine[name].cpu(), value.cpu()):
                raise ValueError(f"encoder weights differ ({name}): not the same VAE encoder")
        with torch.no_grad():
            for name, p in self.vae.named_parameters():
                if name in dec_names:
                    p.copy_(theirs[name].to(p))

    # ------------------------------------------------------------------ persistence
    def checkpoint_dict(self, inference_only: bool = False) -> dict:
        """Build the checkpoint payload (plain containers and CPU tensors).

        Parameters
        ----------
        inference_only
            Drop the trainable denoiser weights and keep only the EMA denoiser (about half
            the size); :meth:`load` then initialises the trainable denoiser from the EMA one.
        """
        ldm_state = {
            k: v.detach().cpu()
            for k, v in self.ldm.state_dict().items()
            if not (inference_only and k.startswith("denoiser."))
        }
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "vae": {k: v.detach().cpu() for k, v in self.vae.state_dict().items()},
            "ldm": ldm_state,
            "inference_only": bool(inference_only),
            "num_atoms_counts": self.num_atoms_counts.detach().cpu().clone(),
            "versions": {"torch": str(torch.__version__)},
        }

    def save(self, path: str | Path, inference_only: bool = False) -> str:
        """Write a single-file checkpoint; return its sha256 (hex).

        Parameters
        ----------
        path
            Output file (parents are created).
        inference_only
            See :meth:`checkpoint_dict`.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint_dict(inference_only), path)
        digest = file_sha256(path)
        logger.info("saved generator checkpoint %s (sha256 %s)", path, digest)
        return digest

    @classmethod
    def load(
        cls, path: str | Path, map_location: str | torch.device = "cpu"
    ) -> LatentDiffusionGenerator:
        """Load a checkpoint written by :meth:`save` (``weights_only=True``, no network)."""
        from xtalforge.models.checkpoint import load_checkpoint_file

        ckpt = load_checkpoint_file(path, CHECKPOINT_FORMAT, "xtalforge generator checkpoint",
                                    map_location)
        model = cls(GeneratorConfig.from_dict(ckpt["config"]))
        model.vae.load_state_dict(ckpt["vae"])
        if ckpt.get("inference_only", False):
            missing, unexpected = model.ldm.load_state_dict(ckpt["ldm"], strict=False)
            if unexpected or any(not k.startswith("denoiser.") for k in missing):
                raise ValueError(
                    f"{path}: bad LDM state (missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
            model.ldm.copy_ema_to_denoiser()
        else:
            model.ldm.load_state_dict(ckpt["ldm"])
        model.num_atoms_counts.copy_(ckpt["num_atoms_counts"])
        return model.to(map_location).eval()
