"""Transformer VAE mapping crystals to per-atom latents (Chemeleon2-style).

Public API
----------
``VAEConfig``
    Sizes and ELBO weights (species 1.0, lengths 1.0, angles 10.0, coords 10.0, KL 1e-5,
    ``latent_dim=8`` per atom). ``VAEConfig.tiny()`` for tests.
``CrystalVAE(config)``
    ``encode(batch) -> (mean, logvar)`` each ``[B, N, latent_dim]`` (zero at padded atoms);
    ``decode(z, mask) -> VAEDecoding`` (logits and continuous predictions;
    ``VAEDecoding.to_batch()`` gives a :class:`~xtalforge.models.crystal.CrystalBatch`);
    ``decode_batch(z, mask) -> CrystalBatch``; ``loss(batch) -> dict[str, Tensor]`` (key
    ``"loss"`` is the weighted negative ELBO); ``embed(batch) -> [B, latent_dim]`` (masked mean of
    the posterior means, the structure embedding for FMD / MMD diversity);
    ``composition_embedding(batch) -> [B, hidden_dim]`` (masked mean of the encoder's species
    embeddings, the composition embedding).

Lattice parameterisation: lengths enter and leave the model as ``log(length / N^(1/3))`` and
angles in radians, so both are invariant to rotations of the cell (random-rotation augmentation
is then a no-op for the model, but kept in the training loop for representations that are not
invariant). Fractional coordinates enter as Fourier features and are predicted as three numbers
compared to the target with a periodic (minimum-image) squared error; decoding wraps them into
``[0, 1)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from xtalforge.models.crystal import (
    MAX_ATOMIC_NUMBER,
    CrystalBatch,
    lattice_to_params,
    params_to_lattice,
)

__all__ = [
    "CrystalVAE",
    "MultiheadSelfAttention",
    "TransformerBlock",
    "VAEConfig",
    "VAEDecoding",
    "masked_mean",
]


@dataclass
class VAEConfig:
    """Configuration of :class:`CrystalVAE`.

    Attributes
    ----------
    max_atoms
        Padded number of atoms per crystal.
    num_species
        Size of the species vocabulary (index = atomic number, 0 = padding).
    hidden_dim, num_heads, encoder_layers, decoder_layers, ff_mult, dropout
        Transformer sizes.
    latent_dim
        Latent dimension per atom.
    num_frequencies
        Fourier frequencies ``k = 1..K`` used to embed fractional coordinates.
    w_species, w_lengths, w_angles, w_coords, w_kl
        ELBO weights (paper defaults).
    """

    max_atoms: int = 20
    num_species: int = MAX_ATOMIC_NUMBER + 1
    hidden_dim: int = 256
    num_heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    ff_mult: int = 4
    dropout: float = 0.0
    latent_dim: int = 8
    num_frequencies: int = 8
    w_species: float = 1.0
    w_lengths: float = 1.0
    w_angles: float = 10.0
    w_coords: float = 10.0
    w_kl: float = 1e-5

    @classmethod
    def tiny(cls, **kw) -> VAEConfig:
        """Return a very small VAE config for CPU tests and the demo."""
        base = dict(hidden_dim=32, num_heads=2, encoder_layers=1, decoder_layers=1, ff_mult=2)
        base.update(kw)
        return cls(**base)

    def to_dict(self) -> dict:
        """Plain dict (JSON / checkpoint friendly)."""
        return asdict(self)


_CUDA_SDPA_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, N, ...]`` over the atoms where ``mask [B, N]`` is True."""
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class MultiheadSelfAttention(nn.Module):
    """Multi-head self-attention over atom tokens with a key-padding mask (SDPA).

    Parameters
    ----------
    dim, num_heads
        Model width and number of heads (``dim % num_heads == 0``).
    dropout
        Attention dropout (training only).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attend over tokens ``x [B, N, D]``; ``mask [B, N]`` True for real atoms."""
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = mask[:, None, None, :]  # keys only: every query sees >= 1 real atom
        p = self.dropout if self.training else 0.0
        if q.is_cuda:
            # for ~20 tokens the memory-efficient kernel is much faster than the cuDNN one
            # that torch picks by default on Hopper (measured in benchmarks/sampling.py)
            with sdpa_kernel(_CUDA_SDPA_BACKENDS):
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (self-attention + MLP)."""

    def __init__(self, dim: int, num_heads: int, ff_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiheadSelfAttention(dim, num_heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, ff_mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * dim, dim),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Apply the block to ``x [B, N, D]`` with key-padding ``mask [B, N]``."""
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


@dataclass
class VAEDecoding:
    """Raw decoder predictions.

    Attributes
    ----------
    type_logits
        ``[B, N, num_species]`` (class 0 = padding, never chosen by :meth:`to_batch`).
    frac_coords
        ``[B, N, 3]`` unwrapped fractional coordinate predictions.
    log_scaled_lengths
        ``[B, 3]``, ``log(length / N^(1/3))``.
    angles
        ``[B, 3]`` radians.
    mask, num_atoms
        Atom mask ``[B, N]`` and counts ``[B]``.
    """

    type_logits: torch.Tensor
    frac_coords: torch.Tensor
    log_scaled_lengths: torch.Tensor
    angles: torch.Tensor
    mask: torch.Tensor
    num_atoms: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """Lattice lengths ``[B, 3]`` in Å."""
        scale = self.num_atoms.float().clamp_min(1.0).pow(1.0 / 3.0)[:, None]
        return torch.exp(self.log_scaled_lengths.float()) * scale

    def to_batch(self) -> CrystalBatch:
        """Discretise into a :class:`CrystalBatch` (argmax species, coords mod 1)."""
        logits = self.type_logits.float().clone()
        logits[..., 0] = -float("inf")
        types = logits.argmax(-1) * self.mask
        frac = torch.remainder(self.frac_coords.float(), 1.0)
        frac = torch.where(frac >= 1.0, frac - 1.0, frac) * self.mask[..., None]
        lattice = params_to_lattice(self.lengths, self.angles.float())
        return CrystalBatch(types.long(), frac, lattice, self.mask, self.num_atoms)


def _fourier(frac: torch.Tensor, num_frequencies: int) -> torch.Tensor:
    """Periodic features ``sin/cos(2 pi k x)``, ``k = 1..K``: ``[B, N, 6K]``."""
    k = torch.arange(1, num_frequencies + 1, device=frac.device, dtype=frac.dtype)
    ang = 2.0 * math.pi * frac[..., None] * k  # [B, N, 3, K]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(-2)


def lattice_features(batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation-invariant lattice targets: ``(log(length / N^(1/3)) [B, 3], angles [B, 3])``."""
    lengths, angles = lattice_to_params(batch.lattice.float())
    scale = batch.num_atoms.float().clamp_min(1.0).pow(1.0 / 3.0)[:, None]
    return torch.log(lengths.clamp_min(1e-6) / scale), angles


class CrystalVAE(nn.Module):
    """Transformer VAE with a per-atom Gaussian latent.

    Parameters
    ----------
    config
        :class:`VAEConfig`.
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or VAEConfig()
        h = config.hidden_dim
        # encoder
        self.type_embedding = nn.Embedding(config.num_species, h, padding_idx=0)
        self.coord_embedding = nn.Linear(6 * config.num_frequencies, h)
        self.lattice_embedding = nn.Sequential(nn.Linear(9, h), nn.SiLU(), nn.Linear(h, h))
        self.enc_natoms = nn.Embedding(config.max_atoms + 1, h)
        self.encoder = nn.ModuleList(
            TransformerBlock(h, config.num_heads, config.ff_mult, config.dropout)
            for _ in range(config.encoder_layers)
        )
        self.enc_norm = nn.LayerNorm(h)
        self.to_latent = nn.Linear(h, 2 * config.latent_dim)
        # decoder
        self.from_latent = nn.Linear(config.latent_dim, h)
        self.dec_natoms = nn.Embedding(config.max_atoms + 1, h)
        self.decoder = nn.ModuleList(
            TransformerBlock(h, config.num_heads, config.ff_mult, config.dropout)
            for _ in range(config.decoder_layers)
        )
        self.dec_norm = nn.LayerNorm(h)
        self.type_head = nn.Linear(h, config.num_species)
        self.coord_head = nn.Linear(h, 3)
        self.lattice_head = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 6))
        # Embedding tables start at N(0, 0.02^2) as in standard transformer init: torch's
        # N(0, 1) default makes the species embedding swamp the coordinate features in the
        # residual stream, and a wide VAE then learns positions only after a long plateau.
        for emb in (self.type_embedding, self.enc_natoms, self.dec_natoms):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.type_embedding.weight[0].zero_()

    # ------------------------------------------------------------------ encoder
    def encode(self, batch: CrystalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters.

        Parameters
        ----------
        batch
            Crystals on the model's device.

        Returns
        -------
        mean, logvar : Tensor
            ``[B, N, latent_dim]`` each, zero at padded atoms.
        """
        cfg = self.config
        mask = batch.mask
        loglen, angles = lattice_features(batch)
        lat = torch.cat([loglen, angles, torch.cos(angles)], dim=-1)
        frac = batch.frac_coords.float()
        x = (
            self.type_embedding(batch.atom_types)
            + self.coord_embedding(_fourier(frac, cfg.num_frequencies))
            + self.lattice_embedding(lat)[:, None, :]
            + self.enc_natoms(batch.num_atoms.clamp(0, cfg.max_atoms))[:, None, :]
        )
        for block in self.encoder:
            x = block(x, mask)
        mean, logvar = self.to_latent(self.enc_norm(x)).float().chunk(2, dim=-1)
        m = mask[..., None].to(mean.dtype)
        return mean * m, logvar.clamp(-30.0, 20.0) * m

    @staticmethod
    def reparameterize(
        mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``z = mean + exp(logvar / 2) * eps``."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    # ------------------------------------------------------------------ decoder
    def decode(self, z: torch.Tensor, mask: torch.Tensor) -> VAEDecoding:
        """Decode per-atom latents.

        Parameters
        ----------
        z
            ``[B, N, latent_dim]`` latents.
        mask
            ``[B, N]`` bool atom mask (number of atoms = ``mask.sum(1)``).

        Returns
        -------
        VAEDecoding
        """
        cfg = self.config
        num_atoms = mask.sum(1)
        x = self.from_latent(z * mask[..., None].to(z.dtype))
        x = x + self.dec_natoms(num_atoms.clamp(0, cfg.max_atoms))[:, None, :]
        for block in self.decoder:
            x = block(x, mask)
        x = self.dec_norm(x)
        lat = self.lattice_head(masked_mean(x, mask)).float()
        angles = lat[:, 3:] + math.pi / 2.0
        return VAEDecoding(
            type_logits=self.type_head(x).float(),
            frac_coords=self.coord_head(x).float(),
            log_scaled_lengths=lat[:, :3] + 1.0,
            angles=angles,
            mask=mask,
            num_atoms=num_atoms,
        )

    def decode_batch(self, z: torch.Tensor, mask: torch.Tensor) -> CrystalBatch:
        """Decode latents straight to a discrete :class:`CrystalBatch`."""
        return self.decode(z, mask).to_batch()

    # ------------------------------------------------------------------ objective
    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the decoder side only (latent projection, blocks, heads).

        The encoder (species / coordinate / lattice embeddings, encoder blocks, posterior
        head) is excluded, so training these leaves every latent, and hence a latent
        diffusion model trained on them, unchanged.
        """
        modules = [
            self.from_latent,
            self.dec_natoms,
            self.decoder,
            self.dec_norm,
            self.type_head,
            self.coord_head,
            self.lattice_head,
        ]
        return [p for m in modules for p in m.parameters()]

    def reconstruction_terms(
        self, out: VAEDecoding, batch: CrystalBatch
    ) -> dict[str, torch.Tensor]:
        """Reconstruction terms of the ELBO of a decoding against its target crystals.

        Returns
        -------
        dict
            ``species`` (cross-entropy), ``lengths``, ``angles`` (MSE), ``coords`` (periodic
            MSE), their weighted sum ``recon`` and the detached diagnostic ``species_acc``.
        """
        cfg = self.config
        m = batch.mask.float()
        n_valid = m.sum().clamp_min(1.0)
        ce = F.cross_entropy(
            out.type_logits.reshape(-1, cfg.num_species),
            batch.atom_types.reshape(-1),
            reduction="none",
        ).view_as(m)
        species = (ce * m).sum() / n_valid
        diff = out.frac_coords - batch.frac_coords.float()
        diff = diff - torch.round(diff)
        coords = ((diff**2).mean(-1) * m).sum() / n_valid
        t_len, t_ang = lattice_features(batch)
        lengths = F.mse_loss(out.log_scaled_lengths, t_len)
        angles = F.mse_loss(out.angles, t_ang)
        recon = (
            cfg.w_species * species
            + cfg.w_lengths * lengths
            + cfg.w_angles * angles
            + cfg.w_coords * coords
        )
        with torch.no_grad():
            acc = ((out.type_logits.argmax(-1) == batch.atom_types).float() * m).sum() / n_valid
        return {
            "recon": recon,
            "species": species,
            "lengths": lengths,
            "angles": angles,
            "coords": coords,
            "species_acc": acc,
        }

    def loss(
        self,
        batch: CrystalBatch,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted negative ELBO and its components.

        Parameters
        ----------
        batch
            Target crystals (augment them before calling, if wanted).
        sample_posterior
            Decode a posterior sample (training) or the posterior mean.
        generator
            Random generator for the posterior sample.

        Returns
        -------
        dict
            ``loss`` (weighted sum, differentiable), ``species`` (cross-entropy), ``lengths``,
            ``angles`` (MSE), ``coords`` (periodic MSE), ``kl`` (per atom, summed over latent
            dims), and the detached diagnostic ``species_acc``.
        """
        mean, logvar = self.encode(batch)
        z = self.reparameterize(mean, logvar, generator) if sample_posterior else mean
        terms = self.reconstruction_terms(self.decode(z, batch.mask), batch)
        m = batch.mask.float()
        kl_atom = 0.5 * (mean**2 + torch.exp(logvar) - 1.0 - logvar).sum(-1)
        kl = (kl_atom * m).sum() / m.sum().clamp_min(1.0)
        recon = terms.pop("recon")
        return {"loss": recon + self.config.w_kl * kl, **terms, "kl": kl}

    def noisy_latent_loss(
        self,
        batch: CrystalBatch,
        noise_scale: torch.Tensor,
        latent_std: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Reconstruction loss of crystals decoded from noised posterior means.

        The decoder sees ``z = mean + noise_scale * latent_std * eps`` and must still return
        the clean crystal: this trains it to map latents near (not on) the data manifold, such
        as a diffusion model's samples, back to plausible crystals. The encoder runs without
        gradients.

        Parameters
        ----------
        batch
            Target crystals.
        noise_scale
            ``[B]`` noise level of each crystal, in units of the latent standard deviation
            (the normalised space the diffusion model works in).
        latent_std
            ``[latent_dim]`` per-dimension standard deviation of the latents.
        generator
            Random generator for the noise.

        Returns
        -------
        dict
            ``loss`` (the weighted reconstruction terms) and the terms of
            :meth:`reconstruction_terms`.
        """
        with torch.no_grad():
            mean, _ = self.encode(batch)
            eps = torch.randn(mean.shape, generator=generator, device=mean.device)
            z = mean + noise_scale.to(mean)[:, None, None] * latent_std.to(mean) * eps
        terms = self.reconstruction_terms(self.decode(z, batch.mask), batch)
        return {"loss": terms.pop("recon"), **terms}

    # ------------------------------------------------------------------ embeddings
    def embed(self, batch: CrystalBatch) -> torch.Tensor:
        """Structure embedding ``[B, latent_dim]``: masked mean of the posterior means."""
        mean, _ = self.encode(batch)
        return masked_mean(mean, batch.mask)

    def composition_embedding(self, batch: CrystalBatch) -> torch.Tensor:
        """Composition embedding ``[B, hidden_dim]``: masked mean of species embeddings."""
        return masked_mean(self.type_embedding(batch.atom_types).float(), batch.mask)
