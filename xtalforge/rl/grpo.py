"""GRPO (and a REINFORCE ablation) over the reverse diffusion of the latent generator.

The MDP (Park & Walsh 2025, Methods "GRPO algorithm"): the state is the noisy latent ``z_t``, the
action the next latent ``z_{t-1}`` drawn from the stochastic DDIM transition ``N(mean_theta(z_t),
std_t^2)`` (``eta > 0``; ``eta = 1`` is DDPM-like), the policy's log-probability is the
Gaussian log-density of the recorded ``z_{t-1}`` **averaged over real atoms x latent dims**
(Chemeleon2's ``reduce="mean"``; :meth:`LatentDiffusion.step_log_probs`), and the only reward is
terminal: the VAE decodes ``z_0`` (VAE frozen) and a :class:`~xtalforge.rewards.CompositeReward`
scores the crystal. Steps with ``std = 0`` (the last DDIM step) carry no density and are skipped.

One training step
-----------------
1. **Rollouts.** ``num_conditions`` (C) atom counts are drawn from the generator's training
   distribution; ``group_size`` (G) trajectories are sampled per count with the *trainable*
   denoiser (one ``sample`` call per group, so the recomputed log-probabilities reproduce the
   recorded ones bit for bit and the first ratio is exactly 1).
2. **Rewards** for the C x G decoded crystals; components are min-max normalised over the
   batch (or per group; :class:`~xtalforge.rewards.CompositeReward`) and summed with their
   weights.
3. **Advantages.** GRPO: ``A_i = (r_i - mean_group) / (std_group + eps)`` within each group
   (0 for a constant group); REINFORCE (``algorithm="reinforce"``): the same over the whole
   batch. ``A_i`` is shared by every step of trajectory ``i``.
4. **Update.** The groups are split into ``num_inner_batches`` inner batches (one AdamW step
   each, gradient clipping at ``grad_clip``), ``num_epochs`` passes. Per element (trajectory
   ``i``, step ``t``), with ``rho = exp(logp_new - logp_old)``::

       loss = -min(rho A, clip(rho, 1-eps, 1+eps) A)
              + beta * k3(logp_new, logp_ref) - gamma * (-logp_new)

   averaged over elements (backward per step, memory-light, as Chemeleon2). ``k3 = exp(d) - d
   - 1`` with ``d = logp_ref - logp_new`` is the unbiased, non-negative KL estimator (Schulman;
   ``kl_estimator="analytic"`` penalises the closed-form KL of the two Gaussian transitions
   instead); ``-logp_new`` is the sample entropy estimate (Chemeleon2's entropy bonus).
   REINFORCE uses the same objective: with one inner batch and one epoch the ratio is 1 and the
   gradient is the plain score-function (REINFORCE) gradient ``A grad logp``.

Reference policy (``reference``)
--------------------------------
``"pretrained"``
    A frozen copy of the starting denoiser (Park & Walsh 2025: "the pretrained denoiser").
``"rollout"``
    The policy that sampled the batch (``logp_ref = logp_old``; what Chemeleon2's code does): the
    KL term is then a trust-region penalty, 0 on the first inner batch.
The choice is recorded in every output.

Drift monitor (``val_nll``)
---------------------------
The LDM's DDPM training loss (epsilon-prediction MSE) on held-out *real* crystal latents, with a
fixed seed for timesteps and noise so that values are comparable across steps. Up to constants
and per-timestep weights this is the diffusion model's variational bound on the negative
log-likelihood of real crystals; a rise means the policy drifts away from the data distribution
(the role CrystalFormer-RL's validation NLL plays).

Early stopping: the mean *raw* weighted reward over the last ``plateau_window`` steps must improve
by more than ``min_delta`` within ``patience`` steps (paper: 500-step plateau).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xtalforge.models.diffusion import gaussian_kl
from xtalforge.rl.common import TrainerConfigDict, evaluation_row

if TYPE_CHECKING:  # pragma: no cover
    from xtalforge.models.diffusion import LatentDiffusion, Trajectory
    from xtalforge.models.generator import LatentDiffusionGenerator
    from xtalforge.rewards.base import CompositeReward, RewardBreakdown
    from xtalforge.rewards.resources import RewardResources

logger = logging.getLogger(__name__)

__all__ = [
    "GRPOConfig",
    "GRPOTrainer",
    "Rollout",
    "group_advantages",
    "k3_kl",
    "policy_loss",
    "sequence_log_prob",
    "validation_loss",
]

ALGORITHMS = ("grpo", "reinforce")
REFERENCES = ("pretrained", "rollout")
KL_ESTIMATORS = ("k3", "analytic")


@dataclass
class GRPOConfig(TrainerConfigDict):
    """Settings of :class:`GRPOTrainer` (defaults: Park & Walsh 2025, Methods).

    Attributes
    ----------
    algorithm
        ``"grpo"`` (group-normalised advantages) or ``"reinforce"`` (batch-normalised).
    group_size, num_conditions
        G rollouts for each of C atom counts per step (paper: 64 x 5 = 320).
    clip_eps, kl_weight, entropy_weight
        PPO clip (1e-3), KL weight beta (1.0), entropy weight gamma (1e-5).
    reference
        ``"pretrained"`` (frozen starting denoiser) or ``"rollout"`` (sampling policy).
    lr, weight_decay, betas
        AdamW (lr 1e-5; no weight decay by default, so pretrained weights are not pulled to 0).
    num_inner_batches, num_epochs
        Optimiser steps per rollout batch (paper: 2 inner batches, 1 pass).
    grad_clip
        Max gradient norm (None: off).
    max_steps, patience, plateau_window, min_delta
        Length and early stopping on a reward plateau.
    sampling_steps, eta, reduce, dtype
        Rollout sampler: DDIM steps (50), stochasticity (1.0), log-prob reduction ("mean"),
        denoiser autocast ("fp32"/"bf16").
    adv_eps
        Added to the reward std in the advantage.
    val_every
        Validation-NLL period in steps (0: never).
    seed
        Base seed (step ``s`` rolls out with seeds derived from ``(seed, s)``, so a resumed run
        draws the same conditions and noise as an uninterrupted one).
    start_from_ema
        Initialise the trainable denoiser (and the pretrained reference) from the EMA weights,
        which are what the pretrained generator samples with.
    steps_per_pass
        Denoising steps whose log-probabilities are recomputed in one denoiser pass during the
        update (0: all of a group's stochastic steps at once; 1: one step at a time, the least
        memory). The loss and its gradient are the same; larger passes are much faster on a GPU.
    max_kl
        Stop when a step's mean KL to the reference exceeds this (None: never). A step whose
        loss or gradient is not finite is never applied, and training stops there.
    kl_estimator
        ``"k3"`` (the paper's unbiased estimator from the sampled latents) or ``"analytic"``:
        the closed-form KL ``|mean - mean_ref|^2 / (2 std^2)`` between the policy's and the
        reference's Gaussian transitions at each recorded state (reduced like the
        log-probabilities; :func:`xtalforge.models.diffusion.gaussian_kl`). Both have the same
        expectation; the analytic one has no sampling noise, whose ``(z - mean) / std^2``
        factor is largest on the last, low-noise steps.
    select_by
        Curve key of the rollout metrics (e.g. ``"frac_msun"``, ``"reward_raw_total"``) by
        which the best policy seen is kept; :meth:`GRPOTrainer.restore_best` puts it back at
        the end. A step's rollouts measure the policy *before* that step's update, so the kept
        weights are the ones that produced the best rollouts. Ties go to the higher raw reward.
        None keeps the last policy. Rollout metrics also depend on the atom counts each step
        draws (a group of one-atom cells makes metastable elemental crystals easily), so a
        selection on them picks favourable conditions as well as good policies: confirm the
        kept policy on fresh samples, or select on the fixed evaluation (``"eval/frac_msun"``).
    eval_every, eval_samples, eval_seed
        Every ``eval_every`` steps (0: never), before the step's update, sample
        ``eval_samples`` crystals from the policy with the same atom counts and noise each time
        (``eval_seed``) and score them with the reward's metrics: curve keys ``eval/...``
        (``eval/frac_msun``, ``eval/mean_e_above_hull``, ``eval/reward_raw_total``...). Unlike
        the rollouts, these numbers are comparable from step to step.
    """

    algorithm: str = "grpo"
    group_size: int = 64
    num_conditions: int = 5
    clip_eps: float = 1e-3
    kl_weight: float = 1.0
    entropy_weight: float = 1e-5
    reference: str = "pretrained"
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    num_inner_batches: int = 2
    num_epochs: int = 1
    grad_clip: float | None = 1.0
    max_steps: int = 1000
    patience: int = 500
    plateau_window: int = 10
    min_delta: float = 0.0
    sampling_steps: int = 50
    eta: float = 1.0
    reduce: str = "mean"
    dtype: str = "fp32"
    adv_eps: float = 1e-8
    val_every: int = 1
    seed: int = 0
    start_from_ema: bool = True
    steps_per_pass: int = 0
    max_kl: float | None = None
    kl_estimator: str = "k3"
    select_by: str | None = None
    eval_every: int = 0
    eval_samples: int = 256
    eval_seed: int = 2_000_003

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}")
        if self.reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}")
        if self.eta <= 0:
            raise ValueError("eta must be > 0: a deterministic sampler has no log-probabilities")
        if self.eval_every < 0 or (self.eval_every and self.eval_samples < 2):
            raise ValueError("eval_every must be >= 0 and eval_samples >= 2")
        if self.group_size < 2 and self.algorithm == "grpo":
            raise ValueError("GRPO needs group_size >= 2")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}")
        if self.num_inner_batches < 1 or self.num_epochs < 1:
            raise ValueError("num_inner_batches and num_epochs must be >= 1")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------
# loss pieces (pure functions, unit-tested on hand-made tensors)
# --------------------------------------------------------------------------------------------
def k3_kl(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """Unbiased, non-negative estimator of ``KL(pi || pi_ref)`` from samples of ``pi``.

    ``k3 = exp(d) - d - 1`` with ``d = logp_ref - logp`` (0 exactly when the two agree).
    """
    d = logp_ref - logp
    return torch.exp(d) - d - 1.0


def policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    logp_ref: torch.Tensor | None = None,
    clip_eps: float = 1e-3,
    kl_weight: float = 1.0,
    entropy_weight: float = 1e-5,
    reduction: str = "mean",
    kl_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate GRPO loss with k3 KL penalty and entropy bonus (to minimise).

    Parameters
    ----------
    logp_new
        Log-probabilities under the current parameters (differentiable), any shape.
    logp_old
        Log-probabilities recorded at rollout (same shape).
    advantages
        Advantages (broadcastable to the same shape).
    logp_ref
        Reference-policy log-probabilities (``None``: no KL term).
    clip_eps, kl_weight, entropy_weight
        Clip range, beta, gamma.
    reduction
        ``"mean"`` or ``"sum"`` over elements.
    kl_values
        Per-element KL values to penalise instead of the k3 estimate (e.g. the analytic
        Gaussian KL); same shape as ``logp_new``.

    Returns
    -------
    (Tensor, dict)
        The loss and detached element sums: ``n``, ``clipped`` (``|rho - 1| > eps``),
        ``ratio``, ``ratio_absdev_max``, ``kl``, ``entropy`` (``-logp_new``), ``surrogate``.
    """
    logp_old = logp_old.detach()
    adv = torch.as_tensor(advantages, dtype=logp_new.dtype, device=logp_new.device).detach()
    ratio = torch.exp(logp_new - logp_old)
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    elem = -surr
    kl = torch.zeros_like(logp_new)
    if kl_values is not None:
        kl = kl_values
        elem = elem + kl_weight * kl
    elif logp_ref is not None:
        kl = k3_kl(logp_new, logp_ref.detach())
        elem = elem + kl_weight * kl
    entropy = -logp_new
    elem = elem - entropy_weight * entropy
    loss = elem.sum() if reduction == "sum" else elem.mean()
    with torch.no_grad():
        dev = (ratio - 1.0).abs()
        stats = {
            "n": torch.tensor(float(ratio.numel())),
            "clipped": (dev > clip_eps).float().sum().cpu(),
            "ratio": ratio.sum().cpu(),
            "ratio_absdev_max": dev.max().cpu() if ratio.numel() else torch.tensor(0.0),
            "kl": kl.sum().cpu(),
            "entropy": entropy.sum().cpu(),
            "surrogate": surr.sum().cpu(),
        }
    return loss, stats


def group_advantages(rewards: np.ndarray, groups: np.ndarray | None, eps: float = 1e-8
                     ) -> np.ndarray:
    """``(r - mean) / (std + eps)`` within each group (whole batch when ``groups`` is None).

    A group whose rewards are all equal (``std < 1e-12``) gets zero advantages.
    """
    r = np.asarray(rewards, dtype=np.float64)
    out = np.zeros_like(r)
    blocks = [np.arange(len(r))] if groups is None else [
        np.flatnonzero(groups == g) for g in np.unique(groups)]
    for idx in blocks:
        b = r[idx]
        sd = b.std()
        out[idx] = (b - b.mean()) / (sd + eps) if sd > 1e-12 else 0.0
    return out


@torch.no_grad()
def validation_loss(ldm: LatentDiffusion, z: torch.Tensor, mask: torch.Tensor,
                    batch_size: int = 256, seed: int = 1234) -> float:
    """DDPM loss of the trainable denoiser on real latents with fixed timesteps and noise.

    Parameters
    ----------
    ldm
        The latent diffusion (its trainable ``denoiser`` is evaluated).
    z, mask
        Held-out VAE latents ``[n, N, d]`` and masks (moved to the LDM's device).
    batch_size
        Evaluation batch size.
    seed
        Seed of the timestep / noise draws (fixed: values are comparable across calls).

    Returns
    -------
    float
        Atom-weighted mean epsilon-MSE.
    """
    dev = ldm.alphas_cumprod.device
    g = torch.Generator(device=dev).manual_seed(seed)
    total, weight = 0.0, 0.0
    was = ldm.denoiser.training
    ldm.denoiser.eval()
    for k in range(0, len(z), batch_size):
        zb, mb = z[k : k + batch_size].to(dev), mask[k : k + batch_size].to(dev)
        w = float(mb.sum())
        total += float(ldm.training_loss(zb, mb, generator=g)) * w
        weight += w
    ldm.denoiser.train(was)
    return total / max(weight, 1.0)


# --------------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One step's rollouts.

    Attributes
    ----------
    trajectories
        One :class:`~xtalforge.models.diffusion.Trajectory` per group (G crystals each).
    groups
        ``[C*G]`` group index of each crystal.
    num_atoms
        ``[C*G]`` atom counts.
    structures, reasons
        Decoded crystals (``None`` + reason for failed decodes).
    latents, mask
        ``[C*G, N, d]`` sampled VAE latents and masks (CPU).
    """

    trajectories: list[Trajectory]
    groups: np.ndarray
    num_atoms: np.ndarray
    structures: list
    reasons: list
    latents: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.structures)


@dataclass
class _Unit:
    traj: Trajectory
    adv: torch.Tensor
    ref: torch.Tensor | None  # [S, b] reference log-probs (pretrained reference)
    ref_means: torch.Tensor | None = None  # [S, b, N, d] reference means (analytic KL)


@dataclass
class _EarlyStop:
    best: float = -math.inf
    since_best: int = 0
    history: list[float] = field(default_factory=list)
    stopped: bool = False


class GRPOTrainer:
    """GRPO / REINFORCE fine-tuning of a generator's latent denoiser.

    Parameters
    ----------
    generator
        The generator to fine-tune in place (only ``generator.ldm.denoiser`` is trained; the
        VAE stays frozen).
    reward
        :class:`~xtalforge.rewards.CompositeReward`.
    resources
        :class:`~xtalforge.rewards.RewardResources` for the metric providers.
    config
        :class:`GRPOConfig`.
    device
        Torch device.
    val_latents
        Optional ``(z, mask)`` of held-out real crystals for the drift monitor.
    reference_generator
        Source of the frozen ``"pretrained"`` reference (default: ``generator`` as given);
        pass the original checkpoint when resuming a run.
    init_policy_from_ema
        Copy the EMA weights into the trainable denoiser first (default:
        ``config.start_from_ema``; pass False when resuming from an RL checkpoint).
    """

    def __init__(
        self,
        generator: LatentDiffusionGenerator,
        reward: CompositeReward,
        resources: RewardResources,
        config: GRPOConfig | None = None,
        device: str | torch.device = "cpu",
        val_latents: tuple[torch.Tensor, torch.Tensor] | None = None,
        reference_generator: LatentDiffusionGenerator | None = None,
        init_policy_from_ema: bool | None = None,
    ) -> None:
        self.config = cfg = config or GRPOConfig()
        self.device = torch.device(device)
        self.generator = generator.to(self.device)
        self.reward = reward
        self.resources = resources
        ldm = generator.ldm
        init = cfg.start_from_ema if init_policy_from_ema is None else init_policy_from_ema
        if init:
            ldm.copy_ema_to_denoiser()
        generator.vae.eval().requires_grad_(False)
        ldm.ema_denoiser.requires_grad_(False)
        ldm.denoiser.requires_grad_(True)
        self.ref_ldm: LatentDiffusion | None = None
        if cfg.reference == "pretrained":
            src = (reference_generator or generator).ldm
            self.ref_ldm = copy.deepcopy(src).to(self.device).requires_grad_(False).eval()
            if cfg.start_from_ema:
                self.ref_ldm.copy_ema_to_denoiser()
        self.params = [p for p in ldm.denoiser.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay)
        self.val_latents = val_latents
        self.step = 0
        self.curves: list[dict[str, Any]] = []
        self.early = _EarlyStop()
        self.stop_reason: str | None = None
        self.best: dict[str, Any] | None = None  # {"key", "step", "state"} (select_by)

    # ------------------------------------------------------------------ properties
    @property
    def stopped(self) -> bool:
        """Whether early stopping triggered."""
        return self.early.stopped

    def describe(self) -> dict[str, Any]:
        """Describe what a run used: config, reference policy, reward config and resources."""
        return {"config": self.config.to_dict(), "reference": self.config.reference,
                "algorithm": self.config.algorithm, "reward": self.reward.config(),
                "resources": self.resources.describe()}

    # ------------------------------------------------------------------ rollouts
    def _seed(self, step: int, group: int) -> int:
        return (self.config.seed * 1_000_003 + step * 1009 + group) % (2**63 - 1)

    @torch.no_grad()
    def rollout(self, step: int | None = None) -> Rollout:
        """Sample C groups of G trajectories with the trainable denoiser and decode them."""
        from xtalforge.models.crystal import batch_to_structures_with_reasons, num_atoms_to_mask

        cfg = self.config
        step = self.step if step is None else step
        gen = self.generator
        cpu_gen = torch.Generator().manual_seed(self._seed(step, 10_000))
        conds = gen.sample_num_atoms(cfg.num_conditions, cpu_gen).clamp(1, gen.max_atoms)
        trajs, z0s, groups, natoms = [], [], [], []
        for c, na in enumerate(conds.tolist()):
            n = torch.full((cfg.group_size,), int(na), dtype=torch.long, device=self.device)
            z0, traj = gen.ldm.sample(n, steps=cfg.sampling_steps, eta=cfg.eta,
                                      seed=self._seed(step, c), return_trajectory=True,
                                      dtype=cfg.dtype, use_ema=False, reduce=cfg.reduce)
            trajs.append(traj)
            z0s.append(z0)
            groups += [c] * cfg.group_size
            natoms += [int(na)] * cfg.group_size
        z0 = torch.cat(z0s)
        mask = num_atoms_to_mask(torch.as_tensor(natoms, device=self.device), gen.max_atoms)
        batch = gen.vae.decode_batch(z0.float(), mask).to("cpu")
        structures, reasons = batch_to_structures_with_reasons(batch)
        return Rollout(trajs, np.asarray(groups), np.asarray(natoms), structures, reasons,
                       z0.cpu(), mask.cpu())

    # ------------------------------------------------------------------ rewards
    def score(self, rollout: Rollout) -> tuple[RewardBreakdown, Any]:
        """Rewards of a rollout; returns the breakdown and the :class:`RewardContext`."""
        from xtalforge.rewards.metrics import RewardContext

        ctx = RewardContext(rollout.structures, self.resources, groups=rollout.groups,
                            latents=rollout.latents, mask=rollout.mask)
        return self.reward(ctx, groups=rollout.groups), ctx

    def advantages(self, rewards: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Group-normalised (GRPO) or batch-normalised (REINFORCE) advantages."""
        g = groups if self.config.algorithm == "grpo" else None
        return group_advantages(rewards, g, self.config.adv_eps)

    # ------------------------------------------------------------------ update
    def _units(self, rollout: Rollout, adv: np.ndarray) -> list[list[_Unit]]:
        """Split the groups into ``num_inner_batches`` inner batches of units."""
        cfg = self.config
        adv_t = torch.as_tensor(adv, dtype=torch.float32, device=self.device)
        units: list[_Unit] = []
        pieces = max(1, math.ceil(cfg.num_inner_batches / len(rollout.trajectories)))
        for c, traj in enumerate(rollout.trajectories):
            idx = np.flatnonzero(rollout.groups == c)
            ref, ref_means = None, None
            if self.ref_ldm is not None:
                with torch.no_grad():
                    ref = self.ref_ldm.step_log_probs(
                        traj, steps_per_pass=cfg.steps_per_pass or traj.num_steps,
                        return_means=cfg.kl_estimator == "analytic")
                if cfg.kl_estimator == "analytic":
                    ref, ref_means = ref
            elif cfg.kl_estimator == "analytic":
                ref_means = traj.means  # the rollout policy's own transitions
            if pieces == 1:
                units.append(_Unit(traj, adv_t[idx], ref, ref_means))
                continue
            for part in np.array_split(np.arange(len(idx)), pieces):
                if len(part) == 0:
                    continue
                sub = traj.select(torch.as_tensor(part))
                units.append(_Unit(sub, adv_t[idx[part]], None if ref is None else ref[:, part],
                                   None if ref_means is None else ref_means[:, part]))
        n_ib = min(cfg.num_inner_batches, len(units))
        return [list(b) for b in np.array_split(np.array(units, dtype=object), n_ib)]

    def update(self, rollout: Rollout, adv: np.ndarray) -> dict[str, float]:
        """Policy update on one rollout batch; returns aggregated loss statistics."""
        cfg = self.config
        ldm = self.generator.ldm
        ldm.denoiser.train()
        inner = self._units(rollout, adv)
        steps = rollout.trajectories[0].stochastic_steps
        if not steps:
            raise ValueError("no stochastic steps: use eta > 0")
        sums: dict[str, float] = {}
        skipped = 0
        first_dev = 0.0
        grad_norms = []
        max_dev = 0.0
        for epoch in range(cfg.num_epochs):
            for ib, units in enumerate(inner):
                self.optimizer.zero_grad(set_to_none=True)
                n_elem = sum(len(u.adv) for u in units) * len(steps)
                per_pass = cfg.steps_per_pass if cfg.steps_per_pass > 0 else len(steps)
                chunks = [steps[i : i + per_pass] for i in range(0, len(steps), per_pass)]
                for u in units:
                    for ks in chunks:
                        kl_values = None
                        if cfg.kl_estimator == "analytic":
                            lp_new, mu_new = ldm.step_log_probs(
                                u.traj, steps=ks, steps_per_pass=len(ks), return_means=True)
                            kl_values = gaussian_kl(mu_new, u.ref_means[ks], u.traj.stds[ks],
                                                    u.traj.mask, u.traj.reduce)
                        else:
                            lp_new = ldm.step_log_probs(u.traj, steps=ks,
                                                        steps_per_pass=len(ks))
                        lp_old = u.traj.log_probs[ks]
                        lp_ref = u.ref[ks] if u.ref is not None else lp_old
                        adv_b = u.adv.expand(len(ks), -1)
                        loss, st = policy_loss(lp_new, lp_old, adv_b, lp_ref, cfg.clip_eps,
                                               cfg.kl_weight, cfg.entropy_weight, "sum",
                                               kl_values=kl_values)
                        (loss / n_elem).backward()
                        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
                        for key, val in st.items():
                            if key == "ratio_absdev_max":
                                max_dev = max(max_dev, float(val))
                                if epoch == 0 and ib == 0:
                                    first_dev = max(first_dev, float(val))
                            else:
                                sums[key] = sums.get(key, 0.0) + float(val)
                clip = cfg.grad_clip if cfg.grad_clip is not None else math.inf
                gn = torch.nn.utils.clip_grad_norm_(self.params, clip)
                grad_norms.append(float(gn))
                if not math.isfinite(float(gn)):
                    # never apply a NaN/inf step: the policy stays as it was
                    self.optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    continue
                self.optimizer.step()
        n = max(sums.get("n", 1.0), 1.0)
        return {
            "loss": sums["loss"] / n,
            "policy_objective": sums["surrogate"] / n,
            "clip_frac": sums["clipped"] / n,
            "ratio_mean": sums["ratio"] / n,
            "ratio_absdev_max": max_dev,
            "ratio_absdev_max_first_batch": first_dev,
            "kl": sums["kl"] / n,
            "entropy": sums["entropy"] / n,
            "grad_norm": float(np.mean(grad_norms)),
            "num_optimizer_steps": float(len(grad_norms) - skipped),
            "num_skipped_updates": float(skipped),
            "num_stochastic_steps": float(len(steps)),
        }

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict[str, Any]:
        """Roll out, score, update; append and return the step's curve row."""
        cfg = self.config
        t0 = time.perf_counter()
        evaluation = (self.evaluate_policy() if cfg.eval_every and self.step % cfg.eval_every == 0
                      else {})
        t_eval = time.perf_counter() - t0
        t0 = time.perf_counter()
        ro = self.rollout()
        t1 = time.perf_counter()
        br, ctx = self.score(ro)
        t2 = time.perf_counter()
        adv = self.advantages(br.total, ro.groups)
        row: dict[str, Any] = {"step": self.step + 1}
        row.update(br.summary())
        row.update(ctx.batch_summary())
        if evaluation:
            row.update(evaluation)
            row["t_eval_s"] = t_eval
        self._track_best(row)  # before the update: these rollouts are the current policy's
        stats = self.update(ro, adv)
        t3 = time.perf_counter()
        self.step += 1
        group_std = [float(br.total[ro.groups == g].std()) for g in np.unique(ro.groups)]
        row.update({
            "adv_var": float(np.var(adv)),
            "reward_group_std_mean": float(np.mean(group_std)),
            "n_constant_groups": float(sum(s < 1e-12 for s in group_std)),
            **stats,
        })
        if self.val_latents is not None and cfg.val_every and self.step % cfg.val_every == 0:
            row["val_nll"] = validation_loss(self.generator.ldm, *self.val_latents)
        row.update({"t_rollout_s": t1 - t0, "t_reward_s": t2 - t1, "t_update_s": t3 - t2,
                    "wall_time_s": time.perf_counter() - t0,
                    **{f"t_metric/{k}": v for k, v in ctx.timings.items()}})
        self.curves.append(row)
        self._early_stopping(row["reward_raw_total"])
        self._guards(row)
        row["early_stopped"] = self.early.stopped
        row["stop_reason"] = self.stop_reason
        return row

    @torch.no_grad()
    def evaluate_policy(self) -> dict[str, float]:
        """Score a fixed-seed sample of the current policy (see ``GRPOConfig.eval_every``).

        Returns
        -------
        dict
            ``eval/<key>`` for the batch fractions of :meth:`RewardContext.batch_summary` and
            the raw reward means of :meth:`RewardBreakdown.summary`.
        """
        cfg = self.config
        gen = self.generator
        counts = gen.sample_num_atoms(cfg.eval_samples,
                                      torch.Generator().manual_seed(cfg.eval_seed))
        was_training = gen.ldm.denoiser.training
        out = gen.generate(cfg.eval_samples, num_atoms=counts, seed=cfg.eval_seed,
                           batch_size=cfg.eval_samples, device=self.device, dtype=cfg.dtype,
                           steps=cfg.sampling_steps, eta=cfg.eta, use_ema=False, progress=False)
        gen.ldm.denoiser.train(was_training)
        return evaluation_row(self.reward, self.resources, out.structures)

    def _guards(self, row: dict[str, Any]) -> None:
        """Stop on a non-finite update or on KL drift beyond ``config.max_kl``."""
        cfg = self.config
        reason = None
        if row.get("num_skipped_updates", 0) > 0 or not math.isfinite(row.get("loss", 0.0)):
            reason = (f"non-finite loss or gradient at step {self.step} "
                      f"({int(row.get('num_skipped_updates', 0))} update(s) not applied)")
        elif cfg.max_kl is not None and not row.get("kl", 0.0) <= cfg.max_kl:
            reason = f"KL to the reference {row.get('kl'):.3g} > max_kl {cfg.max_kl:g}"
        if reason is not None:
            self.early.stopped = True
            self.stop_reason = reason
            logger.warning("stopping GRPO: %s", reason)

    def _track_best(self, row: dict[str, Any]) -> None:
        """Keep a copy of the current policy if its rollouts are the best so far."""
        key_name = self.config.select_by
        if key_name is None:
            return
        if key_name not in row:
            if key_name.startswith("eval/") and self.config.eval_every:
                return  # no evaluation at this step
            raise KeyError(f"select_by={key_name!r} is not a curve key; have {sorted(row)}")
        val, rew = float(row[key_name]), float(row.get("reward_raw_total", -math.inf))
        if not math.isfinite(val):
            return
        key = (val, rew if math.isfinite(rew) else -math.inf)
        if self.best is None or key > self.best["key"]:
            state = {k: v.detach().to("cpu", copy=True)
                     for k, v in self.generator.ldm.denoiser.state_dict().items()}
            self.best = {"key": key, "step": self.step, "value": val, "state": state}

    def restore_best(self) -> dict[str, Any] | None:
        """Load the policy kept by ``select_by`` (no-op without one).

        Returns
        -------
        dict or None
            ``{"select_by", "value", "policy_after_updates"}`` of the restored policy.
        """
        if self.best is None:
            return None
        self.generator.ldm.denoiser.load_state_dict(self.best["state"])
        info = {"select_by": self.config.select_by, "value": self.best["value"],
                "policy_after_updates": self.best["step"]}
        logger.info("restored the best policy by %s", info)
        return info

    def _early_stopping(self, value: float) -> None:
        cfg = self.config
        e = self.early
        e.history.append(float(value))
        window = float(np.mean(e.history[-cfg.plateau_window:]))
        if window > e.best + cfg.min_delta:
            e.best, e.since_best = window, 0
        else:
            e.since_best += 1
            if e.since_best >= cfg.patience:
                e.stopped = True
                logger.info("early stopping at step %d: no improvement of the %d-step mean "
                            "raw reward for %d steps", self.step, cfg.plateau_window,
                            cfg.patience)

    def train(self, num_steps: int | None = None,
              callback: Callable[[GRPOTrainer, dict[str, Any]], None] | None = None,
              progress: bool | None = None) -> list[dict[str, Any]]:
        """Run until ``num_steps`` (default ``config.max_steps``) or early stopping.

        Parameters
        ----------
        num_steps
            Total number of steps (counted from 0, so a resumed trainer continues).
        callback
            Called after every step with ``(trainer, row)`` (e.g. checkpointing).
        progress
            tqdm bar (None: only on a TTY).

        Returns
        -------
        list of dict
            All curve rows so far.
        """
        from tqdm.auto import tqdm

        target = self.config.max_steps if num_steps is None else int(num_steps)
        disable = None if progress is None else not progress
        with tqdm(total=target, initial=self.step, desc=f"{self.config.algorithm}",
                  disable=disable) as bar:
            while self.step < target and not self.early.stopped:
                row = self.train_step()
                bar.update(1)
                bar.set_postfix(r=f"{row['reward_raw_total']:.3f}", kl=f"{row['kl']:.2e}")
                logger.info("step %d: raw reward %.4f, kl %.3e, clip %.3f, %.1f s", self.step,
                            row["reward_raw_total"], row["kl"], row["clip_frac"],
                            row["wall_time_s"])
                if callback is not None:
                    callback(self, row)
        return self.curves

    # ------------------------------------------------------------------ persistence
    def sync_ema(self) -> None:
        """Copy the policy into the EMA denoiser (what ``generate`` samples with)."""
        ldm = self.generator.ldm
        ldm.ema_denoiser.load_state_dict(ldm.denoiser.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Trainer state for resuming (the generator weights are saved separately)."""
        e = self.early
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "curves": [dict(r) for r in self.curves], "config": self.config.to_dict(),
                "early": {"best": e.best, "since_best": e.since_best, "history": list(e.history),
                          "stopped": e.stopped},
                "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after loading the policy weights into the generator)."""
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.curves = [dict(r) for r in state["curves"]]
        e = state["early"]
        self.early = _EarlyStop(float(e["best"]), int(e["since_best"]),
                                [float(v) for v in e["history"]], bool(e["stopped"]))
        self.stop_reason = state.get("stop_reason")
        # the select_by copy is not part of the saved state: tracking restarts here
        self.best = None

    def checkpoint_dict(self) -> dict[str, Any]:
        """Return the generator checkpoint payload of the policy (EMA synced to it)."""
        self.sync_ema()
        return self.generator.checkpoint_dict()


def sequence_log_prob(ldm: LatentDiffusion, trajectory: Trajectory,
                      steps: Sequence[int] | None = None) -> torch.Tensor:
    """Sum of the per-step log-probabilities ``[B]`` of a trajectory under ``ldm`` (no grad)."""
    with torch.no_grad():
        steps = trajectory.stochastic_steps if steps is None else steps
        return ldm.step_log_probs(trajectory, steps=steps).sum(0)
