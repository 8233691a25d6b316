"""DiT denoiser and latent DDPM/DDIM diffusion over per-atom VAE latents.

Public API
----------
``DiTConfig``
    Denoiser sizes (``depth``, ``hidden_dim``, ``num_heads``) and conditions: the diffusion step
    and the number of atoms always; optionally a property vector (``property_dim > 0``) and a
    space group (``num_spacegroups > 0``), each with a learned null embedding that is swapped in
    with probability ``cond_drop_prob`` during training, which enables classifier-free guidance.
``DiffusionConfig``
    ``timesteps=1000``, ``beta_schedule`` ("linear" or "cosine"), EMA decay (0.99, the paper's).
``DiT(config, latent_dim, max_atoms)``
    ``forward(z_t, t, mask, num_atoms, conditions=None, force_drop=None) -> eps`` (adaLN-Zero).
``LatentDiffusion(latent_dim, max_atoms, dit, diffusion)``
    ``training_loss(z0, mask, conditions=None, generator=None)`` (epsilon prediction, masked MSE);
    ``update_ema()``; ``set_latent_stats(z, mask)`` (per-dimension normalisation of VAE latents);
    ``sample(num_atoms, steps=50, eta=0.0, generator=None, seed=None, return_trajectory=False,
    dtype=None, use_ema=False, conditions=None, cfg_scale=1.0, reduce="mean", pad_to=None)
    -> z0`` or ``(z0, Trajectory)``;
    ``step_log_probs(trajectory, steps=None, reduce="mean", use_ema=None) -> [S, B]``.

Sampling is DDIM (Song et al.) on a sub-sequence of ``steps`` timesteps from ``T-1`` to 0::

    x0  = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    std = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    mean = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps
    z_prev = mean + std * noise

with ``a = alpha_bar`` and ``a_prev = 1`` after the last step, so the last step is always
deterministic (``std = 0``), and every step is when ``eta = 0``.

RL hooks. ``sample(..., return_trajectory=True)`` returns a :class:`Trajectory` whose arrays all
have a leading step axis ``S = steps``. ``Trajectory.log_probs[k, b]`` is the log-density of the
recorded ``z_{t-1}`` under ``N(mean, std^2)`` of step ``k``, **averaged** (``reduce="mean"``, as
Chemeleon2) over the real atoms x latent dimensions of crystal ``b`` (``reduce="sum"`` sums
instead). Steps with ``std == 0`` have no density: their log-probability is exactly 0 (recorded
and recomputed, no gradient) and ``Trajectory.stochastic[k]`` is False; a GRPO loss must select
``trajectory.stochastic`` steps (or pass ``steps=trajectory.stochastic_steps``).
:meth:`LatentDiffusion.step_log_probs` recomputes the means with the *current* parameters,
differentiably, and equals the recorded values while the parameters are unchanged.
All trajectory latents live in the normalised diffusion space (see ``set_latent_stats``);
``sample`` returns ``z0`` in the VAE's latent space.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from xtalforge.models.crystal import num_atoms_to_mask
from xtalforge.models.vae import MultiheadSelfAttention

__all__ = [
    "DiT",
    "DiTConfig",
    "DiffusionConfig",
    "LatentDiffusion",
    "Trajectory",
    "gaussian_kl",
    "gaussian_log_prob",
]

logger = logging.getLogger(__name__)

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class DiTConfig:
    """Configuration of the :class:`DiT` denoiser.

    Attributes
    ----------
    depth, hidden_dim, num_heads, mlp_ratio
        Transformer sizes (paper: 12, 768, 12, 4).
    property_dim
        Length of an optional property-condition vector (0 = none).
    num_spacegroups
        Number of space groups for an optional space-group condition (0 = none; 230 for all).
    cond_drop_prob
        Probability of replacing the optional conditions by their null embedding in training.
    """

    depth: int = 12
    hidden_dim: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4.0
    property_dim: int = 0
    num_spacegroups: int = 0
    cond_drop_prob: float = 0.1

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)


@dataclass
class DiffusionConfig:
    """Configuration of the DDPM process.

    Attributes
    ----------
    timesteps
        Number of training diffusion steps ``T``.
    beta_schedule
        ``"linear"`` (``beta_start`` .. ``beta_end``) or ``"cosine"`` (Nichol & Dhariwal).
    ema_decay
        Decay of the exponential moving average of the denoiser weights.
    """

    timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    ema_decay: float = 0.99

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)


def make_betas(config: DiffusionConfig) -> torch.Tensor:
    """Beta schedule as a float64 tensor ``[T]``."""
    t = config.timesteps
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, t, dtype=torch.float64)
    if config.beta_schedule == "cosine":
        s = 0.008
        x = torch.arange(t + 1, dtype=torch.float64) / t
        ab = torch.cos((x + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - ab[1:] / ab[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta_schedule {config.beta_schedule!r}")


# --------------------------------------------------------------------------------------------
# denoiser
# --------------------------------------------------------------------------------------------
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (float) timesteps ``[B]``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class DiTBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = MultiheadSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, N, D]``, conditioning ``c [B, D]``, key-padding ``mask [B, N]``."""
        sh1, sc1, g1, sh2, sc2, g2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + g1[:, None, :] * self.attn(_modulate(self.norm1(x), sh1, sc1), mask)
        return x + g2[:, None, :] * self.mlp(_modulate(self.norm2(x), sh2, sc2))


class DiT(nn.Module):
    """Diffusion transformer predicting the noise of per-atom latents.

    Parameters
    ----------
    config
        :class:`DiTConfig`.
    latent_dim
        Per-atom latent dimension.
    max_atoms
        Largest number of atoms (size of the atom-count embedding).
    """

    def __init__(self, config: DiTConfig, latent_dim: int, max_atoms: int) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = latent_dim
        self.max_atoms = max_atoms
        h = config.hidden_dim
        self.x_embed = nn.Linear(latent_dim, h)
        self.t_embed = nn.Sequential(nn.Linear(256, h), nn.SiLU(), nn.Linear(h, h))
        self.natoms_embed = nn.Embedding(max_atoms + 1, h)
        if config.property_dim > 0:
            self.property_embed = nn.Sequential(
                nn.Linear(config.property_dim, h), nn.SiLU(), nn.Linear(h, h)
            )
            self.property_null = nn.Parameter(torch.zeros(h))
        if config.num_spacegroups > 0:
            # index 0 is the null (unconditional) space group
            self.spacegroup_embed = nn.Embedding(config.num_spacegroups + 1, h)
        self.blocks = nn.ModuleList(
            DiTBlock(h, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_norm = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(h, 2 * h))
        self.final_linear = nn.Linear(h, latent_dim)
        for mod in (self.final_adaLN[-1], self.final_linear):
            nn.init.zeros_(mod.weight)
            nn.init.zeros_(mod.bias)

    def condition(
        self,
        t: torch.Tensor,
        num_atoms: torch.Tensor,
        conditions: dict[str, torch.Tensor] | None = None,
        force_drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Conditioning vector ``[B, hidden]`` for adaLN.

        Parameters
        ----------
        t
            ``[B]`` diffusion steps.
        num_atoms
            ``[B]`` atom counts.
        conditions
            Optional ``{"property": [B, property_dim], "spacegroup": Long [B] (1..230)}``;
            a missing key means unconditional (null embedding).
        force_drop
            Bool ``[B]``; True replaces the optional conditions by the null embedding.
        """
        c = self.t_embed(timestep_embedding(t, 256)) + self.natoms_embed(
            num_atoms.clamp(0, self.max_atoms)
        )
        conditions = conditions or {}
        b = t.shape[0]
        if self.config.property_dim > 0:
            null = self.property_null[None].expand(b, -1)
            if "property" in conditions:
                emb = self.property_embed(conditions["property"].float().view(b, -1))
                if force_drop is not None:
                    emb = torch.where(force_drop[:, None], null.to(emb.dtype), emb)
            else:
                emb = null
            c = c + emb
        if self.config.num_spacegroups > 0:
            sg = conditions.get("spacegroup")
            sg = torch.zeros(b, dtype=torch.long, device=t.device) if sg is None else sg.long()
            if force_drop is not None:
                sg = torch.where(force_drop, torch.zeros_like(sg), sg)
            c = c + self.spacegroup_embed(sg)
        return c

    def forward(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor,
        num_atoms: torch.Tensor | None = None,
        conditions: dict[str, torch.Tensor] | None = None,
        force_drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the noise ``[B, N, latent_dim]`` of ``z [B, N, latent_dim]`` at steps ``t``."""
        if num_atoms is None:
            num_atoms = mask.sum(1)
        c = self.condition(t, num_atoms, conditions, force_drop)
        x = self.x_embed(z)
        for block in self.blocks:
            x = block(x, c, mask)
        shift, scale = self.final_adaLN(c).chunk(2, dim=-1)
        return self.final_linear(_modulate(self.final_norm(x), shift, scale))


# --------------------------------------------------------------------------------------------
# trajectory
# --------------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """A recorded DDIM sampling trajectory (all arrays have a leading step axis ``S``).

    Attributes
    ----------
    latents
        ``[S, B, N, d]`` state ``z_t`` before each step (normalised diffusion space).
    next_latents
        ``[S, B, N, d]`` state ``z_{t-1}`` after each step.
    timesteps, prev_timesteps
        Long ``[S]``; ``prev_timesteps[-1] == -1`` (clean data).
    means
        ``[S, B, N, d]`` Gaussian transition means.
    stds
        ``[S]`` transition standard deviations (0 where deterministic).
    log_probs
        ``[S, B]`` recorded log-probabilities of ``next_latents`` (0 where ``std == 0``).
    stochastic
        Bool ``[S]``: ``stds > 0``.
    mask, num_atoms
        ``[B, N]`` and ``[B]``.
    eta, cfg_scale, reduce, use_ema, autocast_dtype
        Sampler settings needed to recompute the transitions.
    conditions
        Optional extra conditions given to the sampler.
    """

    latents: torch.Tensor
    next_latents: torch.Tensor
    timesteps: torch.Tensor
    prev_timesteps: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    log_probs: torch.Tensor
    stochastic: torch.Tensor
    mask: torch.Tensor
    num_atoms: torch.Tensor
    eta: float
    cfg_scale: float = 1.0
    reduce: str = "mean"
    use_ema: bool = False
    autocast_dtype: str | None = None
    conditions: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        """Number of recorded steps ``S``."""
        return int(self.timesteps.shape[0])

    @property
    def stochastic_steps(self) -> list[int]:
        """Indices of steps with ``std > 0`` (those that carry a log-probability)."""
        return [int(i) for i in torch.nonzero(self.stochastic).flatten().tolist()]

    def to(self, device: torch.device | str) -> Trajectory:
        """Copy with every tensor on ``device``."""
        out = copy.copy(self)
        for name, val in vars(self).items():
            if isinstance(val, torch.Tensor):
                setattr(out, name, val.to(device))
        out.conditions = {k: v.to(device) for k, v in self.conditions.items()}
        return out

    def select(self, idx: torch.Tensor | Sequence[int]) -> Trajectory:
        """Sub-trajectory of the crystals ``idx`` (batch axis)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.mask.device)
        out = copy.copy(self)
        for name in ("latents", "next_latents", "means", "log_probs"):
            setattr(out, name, getattr(self, name)[:, idx])
        out.mask, out.num_atoms = self.mask[idx], self.num_atoms[idx]
        out.conditions = {k: v[idx] for k, v in self.conditions.items()}
        return out


def gaussian_kl(
    mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor, mask: torch.Tensor,
    reduce: str = "mean",
) -> torch.Tensor:
    """Closed-form KL between two diagonal Gaussian transitions of equal standard deviation.

    ``KL(N(mean, std^2) || N(mean_ref, std^2)) = (mean - mean_ref)^2 / (2 std^2)`` per latent
    entry, reduced like :func:`gaussian_log_prob` (so that it is the expectation, under the
    first Gaussian, of the difference of the two reduced log-probabilities).

    Parameters
    ----------
    mean, mean_ref
        ``[S, B, N, d]``.
    std
        ``[S]`` standard deviations; steps with ``std == 0`` give 0.
    mask
        ``[B, N]`` bool.
    reduce
        ``"mean"`` (over real atoms x latent dims) or ``"sum"``.

    Returns
    -------
    Tensor
        ``[S, B]`` (float32; differentiable in both means).
    """
    std = torch.as_tensor(std, dtype=torch.float32, device=mean.device)
    live = std > 0
    inv = torch.where(live, 1.0 / torch.where(live, std, torch.ones_like(std)),
                      torch.zeros_like(std))[:, None, None, None]
    m = mask[None, ..., None].float()
    kl = 0.5 * (((mean.float() - mean_ref.float()) * inv) ** 2 * m).sum(dim=(2, 3))
    if reduce == "sum":
        return kl
    if reduce != "mean":
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    return kl / (m.sum(dim=(2, 3)) * mean.shape[-1]).clamp_min(1.0)


def gaussian_log_prob(
    x: torch.Tensor, mean: torch.Tensor, std: float, mask: torch.Tensor, reduce: str = "mean"
) -> torch.Tensor:
    """Diagonal-Gaussian log-density of ``x`` per crystal, masked over padded atoms.

    Parameters
    ----------
    x, mean
        ``[B, N, d]``.
    std
        Scalar standard deviation (> 0).
    mask
        ``[B, N]`` bool.
    reduce
        ``"mean"`` averages over real atoms x latent dims (Chemeleon2); ``"sum"`` sums.

    Returns
    -------
    Tensor
        ``[B]`` (float32).
    """
    lp = -0.5 * ((x.float() - mean.float()) / std) ** 2 - math.log(std) - 0.5 * _LOG_2PI
    m = mask[..., None].float()
    total = (lp * m).sum(dim=(1, 2))
    if reduce == "sum":
        return total
    if reduce == "mean":
        return total / (m.sum(dim=(1, 2)) * x.shape[-1]).clamp_min(1.0)
    raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")


_DTYPES = {
    "fp32": None,
    "float32": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_autocast_dtype(
    dtype: str | torch.dtype | None, device: torch.device
) -> torch.dtype | None:
    """Map a dtype spec to an autocast dtype (``None`` = fp32); bf16/fp16 only on CUDA.

    On a CPU device a reduced precision request falls back to fp32 with a logged warning.
    """
    if dtype is None:
        return None
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use fp32 or bf16")
        dtype = _DTYPES[dtype]
    if dtype in (None, torch.float32):
        return None
    if device.type != "cuda":
        logger.warning(
            "dtype %s requested on %s: autocast is used on CUDA only, running fp32", dtype, device
        )
        return None
    return dtype


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` for a reduced precision ``dtype``; a no-op context for ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


# --------------------------------------------------------------------------------------------
# latent diffusion
# --------------------------------------------------------------------------------------------
class LatentDiffusion(nn.Module):
    """DDPM-trained, DDIM-sampled diffusion over per-atom latents with an EMA denoiser.

    Parameters
    ----------
    latent_dim
        Per-atom latent dimension (the VAE's).
    max_atoms
        Padded number of atoms.
    dit
        :class:`DiTConfig` of the denoiser.
    diffusion
        :class:`DiffusionConfig`.
    """

    def __init__(
        self,
        latent_dim: int = 8,
        max_atoms: int = 20,
        dit: DiTConfig | None = None,
        diffusion: DiffusionConfig | None = None,
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.max_atoms = max_atoms
        self.dit_config = dit or DiTConfig()
        self.diffusion_config = diffusion or DiffusionConfig()
        self.denoiser = DiT(self.dit_config, latent_dim, max_atoms)
        self.ema_denoiser = copy.deepcopy(self.denoiser).requires_grad_(False)
        betas = make_betas(self.diffusion_config)
        alphas_cumprod = torch.cumprod(1.0 - betas, 0)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self._alpha_bars: list[float] = alphas_cumprod.tolist()  # float64, host side
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))

    @property
    def num_timesteps(self) -> int:
        """Training diffusion steps ``T``."""
        return self.diffusion_config.timesteps

    # ------------------------------------------------------------------ normalisation / EMA
    @torch.no_grad()
    def set_latent_stats(self, z: torch.Tensor, mask: torch.Tensor) -> None:
        """Set the per-dimension mean and std used to normalise latents from real atoms."""
        flat = z[mask].double()
        self.latent_mean.copy_(flat.mean(0).to(self.latent_mean))
        self.latent_std.copy_(flat.std(0).clamp_min(1e-4).to(self.latent_std))

    def normalize(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """VAE latents -> diffusion space (zero at padded atoms)."""
        return (z - self.latent_mean) / self.latent_std * mask[..., None]

    def denormalize(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> VAE latents (zero at padded atoms)."""
        return (z * self.latent_std + self.latent_mean) * mask[..., None]

    @torch.no_grad()
    def update_ema(self, decay: float | None = None) -> None:
        """``ema = decay * ema + (1 - decay) * params`` (buffers copied)."""
        decay = self.diffusion_config.ema_decay if decay is None else decay
        ema_p = list(self.ema_denoiser.parameters())
        cur_p = [p.detach() for p in self.denoiser.parameters()]
        torch._foreach_lerp_(ema_p, cur_p, 1.0 - decay)
        for be, b in zip(self.ema_denoiser.buffers(), self.denoiser.buffers(), strict=True):
            be.copy_(b)

    @torch.no_grad()
    def copy_ema_to_denoiser(self) -> None:
        """Load the EMA weights into the trainable denoiser (e.g. before RL fine-tuning)."""
        self.denoiser.load_state_dict(self.ema_denoiser.state_dict())

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        z0: torch.Tensor,
        mask: torch.Tensor,
        conditions: dict[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Simplified DDPM loss ``E ||eps - eps_theta(z_t, t)||^2`` over real atoms.

        Parameters
        ----------
        z0
            Clean VAE latents ``[B, N, d]`` (normalised internally).
        mask
            ``[B, N]`` bool.
        conditions
            Optional extra conditions, dropped per sample with ``cond_drop_prob``.
        generator
            Random generator for ``t``, the noise and condition dropout.

        Returns
        -------
        Tensor
            Scalar loss.
        """
        b = z0.shape[0]
        dev = z0.device
        x0 = self.normalize(z0.float(), mask)
        t = torch.randint(0, self.num_timesteps, (b,), device=dev, generator=generator)
        noise = torch.randn(x0.shape, device=dev, generator=generator) * mask[..., None]
        ab = self.alphas_cumprod.to(dev)[t][:, None, None]
        zt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        drop = None
        if conditions:
            p = self.dit_config.cond_drop_prob
            drop = torch.rand(b, device=dev, generator=generator) < p
        eps = self.denoiser(zt, t, mask, mask.sum(1), conditions, drop).float()
        m = mask[..., None].float()
        return (((eps - noise) ** 2) * m).sum() / (m.sum() * self.latent_dim).clamp_min(1.0)

    # ------------------------------------------------------------------ sampling
    def ddim_timesteps(self, steps: int) -> list[int]:
        """Descending sub-sequence of ``steps`` training timesteps from ``T-1`` to 0."""
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"steps must be in 1..{self.num_timesteps}")
        ts = torch.linspace(self.num_timesteps - 1, 0, steps, dtype=torch.float64).round().long()
        return [int(v) for v in ts.tolist()]

    def _alpha_bar(self, t: int) -> float:
        return 1.0 if t < 0 else self._alpha_bars[t]

    def _step_std(self, t: int, t_prev: int, eta: float) -> float:
        a_t, a_prev = self._alpha_bar(t), self._alpha_bar(t_prev)
        return float(eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev))

    def _predict_eps(
        self,
        net: DiT,
        z: torch.Tensor,
        t: int | torch.Tensor,
        mask: torch.Tensor,
        num_atoms: torch.Tensor,
        conditions: dict[str, torch.Tensor],
        cfg_scale: float,
        autocast_dtype: torch.dtype | None,
    ) -> torch.Tensor:
        b = z.shape[0]
        if isinstance(t, torch.Tensor):  # one timestep per sample (batched steps)
            tt = t.to(device=z.device, dtype=torch.long)
        else:
            tt = torch.full((b,), t, device=z.device, dtype=torch.long)
        with autocast(z.device, autocast_dtype):
            if conditions and cfg_scale != 1.0:
                z2 = torch.cat([z, z])
                cond2 = {k: torch.cat([v, v]) for k, v in conditions.items()}
                drop = torch.cat(
                    [
                        torch.zeros(b, dtype=torch.bool, device=z.device),
                        torch.ones(b, dtype=torch.bool, device=z.device),
                    ]
                )
                eps2 = net(
                    z2,
                    torch.cat([tt, tt]),
                    torch.cat([mask, mask]),
                    torch.cat([num_atoms, num_atoms]),
                    cond2,
                    drop,
                ).float()
                e_c, e_u = eps2.chunk(2)
                eps = e_u + cfg_scale * (e_c - e_u)
            else:
                eps = net(z, tt, mask, num_atoms, conditions or None).float()
        return eps * mask[..., None]

    def _transition(
        self, z: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, std: float
    ) -> torch.Tensor:
        """DDIM mean of ``z_{t_prev}`` given ``z_t`` and the noise prediction (float32)."""
        a_t, a_prev = self._alpha_bar(t), self._alpha_bar(t_prev)
        x0 = (z - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        dir_coef = math.sqrt(max(1 - a_prev - std**2, 0.0))
        return math.sqrt(a_prev) * x0 + dir_coef * eps

    def _net(self, use_ema: bool) -> DiT:
        return self.ema_denoiser if use_ema else self.denoiser

    @torch.no_grad()
    def sample(
        self,
        num_atoms: torch.Tensor,
        steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        return_trajectory: bool = False,
        dtype: str | torch.dtype | None = None,
        use_ema: bool = False,
        conditions: dict[str, torch.Tensor] | None = None,
        cfg_scale: float = 1.0,
        reduce: str = "mean",
        pad_to: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Trajectory]:
        """DDIM sampling of per-atom latents.

        Parameters
        ----------
        num_atoms
            Long ``[B]`` atom counts (``1..max_atoms``); its device is the sampling device.
        steps
            Number of DDIM steps (paper: 50).
        eta
            DDIM stochasticity: 0 deterministic, 1 DDPM-like variance.
        generator, seed
            Random generator on ``num_atoms.device``, or a seed to make one; neither draws
            from the global RNG.
        return_trajectory
            Also return a :class:`Trajectory` (for GRPO).
        dtype
            ``None``/``"fp32"`` or ``"bf16"`` (autocast of the denoiser, CUDA only; the DDIM
            arithmetic and log-probabilities stay in float32).
        use_ema
            Sample with the EMA denoiser (generation) or the trainable one (RL rollouts).
        conditions
            Optional extra conditions (``"property"``, ``"spacegroup"``), batch-aligned.
        cfg_scale
            Classifier-free guidance scale (used only with ``conditions``; 1 = plain
            conditional).
        reduce
            Reduction of the recorded log-probabilities (``"mean"`` or ``"sum"``).
        pad_to
            Padded atom axis ``N`` of the latents (default ``max_atoms``); any value
            ``>= num_atoms.max()`` gives the same samples (the denoiser is permutation
            equivariant and masked), so a smaller one saves compute.

        Returns
        -------
        Tensor or (Tensor, Trajectory)
            ``z0 [B, N, d]`` in the VAE latent space (zero at padded atoms).
        """
        device = num_atoms.device
        num_atoms = num_atoms.long()
        if (num_atoms < 1).any() or (num_atoms > self.max_atoms).any():
            raise ValueError(f"num_atoms must be in 1..{self.max_atoms}")
        if generator is None:
            generator = torch.Generator(device=device)
            generator.manual_seed(0 if seed is None else int(seed))
        ac_dtype = resolve_autocast_dtype(dtype, device)
        conditions = {k: v.to(device) for k, v in (conditions or {}).items()}
        net = self._net(use_ema)
        was_training = net.training
        net.eval()
        b = num_atoms.shape[0]
        n_pad = self.max_atoms if pad_to is None else int(pad_to)
        if not int(num_atoms.max()) <= n_pad <= self.max_atoms:
            raise ValueError(f"pad_to must be in num_atoms.max()..{self.max_atoms}")
        mask = num_atoms_to_mask(num_atoms, n_pad)
        mfloat = mask[..., None].float()
        full = (b, self.max_atoms, self.latent_dim)  # noise drawn at full size: pad_to-invariant
        z = torch.randn(full, generator=generator, device=device)[:, :n_pad] * mfloat
        ts = self.ddim_timesteps(steps)
        prev = [*ts[1:], -1]
        rec: dict[str, list] = {"latents": [], "next": [], "means": [], "stds": [], "lp": []}
        for t, t_prev in zip(ts, prev, strict=True):
            eps = self._predict_eps(net, z, t, mask, num_atoms, conditions, cfg_scale, ac_dtype)
            std = self._step_std(t, t_prev, eta)
            mean = self._transition(z, eps, t, t_prev, std) * mfloat
            if std > 0:
                noise = torch.randn(full, generator=generator, device=device)[:, :n_pad]
                z_next = (mean + std * noise) * mfloat
            else:
                z_next = mean
            if return_trajectory:
                rec["latents"].append(z)
                rec["next"].append(z_next)
                rec["means"].append(mean)
                rec["stds"].append(std)
                rec["lp"].append(
                    gaussian_log_prob(z_next, mean, std, mask, reduce)
                    if std > 0
                    else torch.zeros(b, device=device)
                )
            z = z_next
        net.train(was_training)
        z0 = self.denormalize(z, mask)
        if not return_trajectory:
            return z0
        stds = torch.tensor(rec["stds"], dtype=torch.float32, device=device)
        traj = Trajectory(
            latents=torch.stack(rec["latents"]),
            next_latents=torch.stack(rec["next"]),
            timesteps=torch.tensor(ts, dtype=torch.long, device=device),
            prev_timesteps=torch.tensor(prev, dtype=torch.long, device=device),
            means=torch.stack(rec["means"]),
            stds=stds,
            log_probs=torch.stack(rec["lp"]),
            stochastic=stds > 0,
            mask=mask,
            num_atoms=num_atoms,
            eta=float(eta),
            cfg_scale=float(cfg_scale),
            reduce=reduce,
            use_ema=use_ema,
            autocast_dtype=None if ac_dtype is None else str(ac_dtype).replace("torch.", ""),
            conditions=conditions,
        )
        return z0, traj

    def step_log_probs(
        self,
        trajectory: Trajectory,
        steps: Sequence[int] | None = None,
        reduce: str | None = None,
        use_ema: bool | None = None,
        steps_per_pass: int = 1,
        return_means: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Recompute transition log-probabilities of a trajectory under the current parameters.

        Differentiable with respect to the denoiser parameters (call it outside
        ``torch.no_grad``). The denoiser is run in its current train/eval mode; the DiT has no
        dropout, so both give the same values.

        Parameters
        ----------
        trajectory
            From ``sample(..., return_trajectory=True)`` (on this module's device).
        steps
            Step indices (into the trajectory's step axis) to evaluate; default all ``S``.
        reduce
            ``"mean"`` over real atoms x latent dims or ``"sum"``; default the trajectory's.
        use_ema
            Evaluate the EMA denoiser instead; default the trajectory's setting.
        steps_per_pass
            Number of stochastic steps evaluated in one denoiser pass (their latents are stacked
            along the batch axis with one timestep per row). 1 is the step-by-step loop; larger
            values give the same values (to float32 round-off) with far fewer, larger kernels.
        return_means
            Also return the recomputed transition means (for :func:`gaussian_kl`).

        Returns
        -------
        Tensor, or (Tensor, Tensor) with ``return_means``
            ``[len(steps), B]``; rows of deterministic steps (``std == 0``) are exactly 0 and
            carry no gradient. The means are ``[len(steps), B, N, d]`` (0 on deterministic
            steps).
        """
        reduce = reduce or trajectory.reduce
        net = self._net(trajectory.use_ema if use_ema is None else use_ema)
        ac = (
            None if trajectory.autocast_dtype is None else getattr(torch, trajectory.autocast_dtype)
        )
        idx = range(trajectory.num_steps) if steps is None else steps
        if steps_per_pass > 1:
            lp, means = self._step_log_probs_stacked(trajectory, list(idx), reduce, net, ac,
                                                     steps_per_pass)
            return (lp, means) if return_means else lp
        mask = trajectory.mask
        mfloat = mask[..., None].float()
        ts = trajectory.timesteps.tolist()
        prev = trajectory.prev_timesteps.tolist()
        out, means = [], []
        for k in idx:
            t, t_prev = int(ts[k]), int(prev[k])
            std = self._step_std(t, t_prev, trajectory.eta)  # same float64 value as in sample()
            if std <= 0:
                out.append(torch.zeros(mask.shape[0], device=mask.device))
                means.append(torch.zeros_like(trajectory.latents[k], dtype=torch.float32))
                continue
            z = trajectory.latents[k]
            eps = self._predict_eps(
                net,
                z,
                t,
                mask,
                trajectory.num_atoms,
                trajectory.conditions,
                trajectory.cfg_scale,
                ac,
            )
            mean = self._transition(z, eps, t, t_prev, std) * mfloat
            out.append(gaussian_log_prob(trajectory.next_latents[k], mean, std, mask, reduce))
            means.append(mean.float())
        return (torch.stack(out), torch.stack(means)) if return_means else torch.stack(out)

    def _step_log_probs_stacked(
        self,
        trajectory: Trajectory,
        idx: list[int],
        reduce: str,
        net: DiT,
        ac: torch.dtype | None,
        steps_per_pass: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step_log_probs` with ``steps_per_pass`` steps per denoiser call (and means)."""
        mask = trajectory.mask
        b = mask.shape[0]
        dev = mask.device
        ts = trajectory.timesteps.tolist()
        prev = trajectory.prev_timesteps.tolist()
        out = torch.zeros(len(idx), b, device=dev)
        mean_rows: list[torch.Tensor] = []
        live = []
        for j, k in enumerate(idx):
            std = self._step_std(int(ts[k]), int(prev[k]), trajectory.eta)
            if std > 0:
                live.append((j, k, std))
        rows: list[torch.Tensor] = []
        for c0 in range(0, len(live), steps_per_pass):
            chunk = live[c0 : c0 + steps_per_pass]
            m = len(chunk)
            ks = [k for _, k, _ in chunk]
            z = trajectory.latents[ks].reshape(m * b, *trajectory.latents.shape[2:])
            tt = torch.as_tensor([int(ts[k]) for k in ks], device=dev).repeat_interleave(b)
            mm = mask.repeat(m, 1)
            na = trajectory.num_atoms.repeat(m)
            cond = {key: v.repeat(m, *([1] * (v.dim() - 1)))
                    for key, v in trajectory.conditions.items()}
            eps = self._predict_eps(net, z, tt, mm, na, cond, trajectory.cfg_scale, ac)
            # per-row DDIM coefficients, computed in float64 exactly as in sample()
            coef = []
            for _, k, std in chunk:
                a_t, a_prev = self._alpha_bar(int(ts[k])), self._alpha_bar(int(prev[k]))
                coef.append((math.sqrt(a_t), math.sqrt(1 - a_t), math.sqrt(a_prev),
                             math.sqrt(max(1 - a_prev - std**2, 0.0)), std, math.log(std)))
            cf = torch.tensor(coef, dtype=torch.float32, device=dev).repeat_interleave(b, 0)
            sa, s1a, sap, dcoef, std_t, log_std = (cf[:, i, None, None] for i in range(6))
            x0 = (z - s1a * eps) / sa  # same operations, in the same order, as _transition
            mean = (sap * x0 + dcoef * eps) * mm[..., None].float()
            x = trajectory.next_latents[ks].reshape(m * b, *trajectory.next_latents.shape[2:])
            lp = -0.5 * ((x.float() - mean) / std_t) ** 2 - log_std - 0.5 * _LOG_2PI
            mf = mm[..., None].float()
            total = (lp * mf).sum(dim=(1, 2))
            if reduce == "mean":
                total = total / (mf.sum(dim=(1, 2)) * x.shape[-1]).clamp_min(1.0)
            elif reduce != "sum":
                raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
            rows.append(total.reshape(m, b))
            mean_rows.append(mean.reshape(m, b, *mean.shape[1:]))
        means = torch.zeros(len(idx), *trajectory.latents.shape[1:], device=dev)
        if live:
            lp_all = torch.cat(rows)
            sel = torch.as_tensor([j for j, _, _ in live], device=dev)
            out = out.index_put((sel,), lp_all)
            means = means.index_put((sel,), torch.cat(mean_rows).float())
        return out, means
