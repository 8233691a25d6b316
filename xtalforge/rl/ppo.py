"""PPO fine-tuning with a KL leash to the base model (Cao & Wang 2025, Eq. 1 and Appendix C).

Objective
---------
``L = E_{x ~ p_theta}[ r(x) - tau * ln(p_theta(x) / p_base(x)) ]`` (Eq. 1): the expected reward
with the KL divergence to the pretrained model as a penalty (``tau`` 0.1 in the paper for
-E_hull, 2 for the dielectric figure of merit). It is maximised with PPO on exact sequence
log-probabilities (:meth:`~xtalforge.models.interface.CrystalGenerator.log_prob`).

One training step (:meth:`PPOTrainer.train_step`)
-------------------------------------------------
1. **Sample** ``batch_size`` crystals from the current policy ``p_old`` (space groups from the
   training distribution unless fixed), recording ``ln p_old(x)``; score them with a
   :class:`~xtalforge.rewards.CompositeReward` from the reward registry. The reward used is the
   weighted sum of the *raw* component values (``RewardBreakdown.raw_total``: ``-E_hull`` in
   eV/atom for the stability component), not the batch-normalised one, as in the paper.
2. **Entropy-regularised reward** (S2): ``R(x) = r(x) - tau * (ln p_old(x) - ln p_base(x))``
   (``p_theta = p_old`` at sampling time; no gradient flows through ``R``).
3. **Baseline** (Appendix C): ``b_0 = mean(R_0)``, then ``b_k = eta * b_{k-1} + (1 - eta) *
   mean(R_k)`` with ``eta = 0.95``; the advantage is ``A(x) = R(x) - b_k`` (the baseline after
   this batch's update).
4. **Update** ``ppo_epochs`` (3) passes over the batch (in ``minibatch_size`` pieces), each
   an Adam step on ``-mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A))`` with ``rho =
   p_theta(x) / p_old(x)`` and ``eps`` 0.2 (S1), gradient clipping at 1. The first pass starts
   at ``rho = 1`` (recorded as ``ratio_absdev_max_first``). No dropout in fine-tuning.

Curves (one row per step) hold the reward (raw and per component), the KL estimate
``mean(ln p_old - ln p_base)`` over the batch (Fig. 2b), the baseline, advantage statistics,
clip fraction, ratio, the reward context's batch fractions (``frac_metastable``,
``mean_e_above_hull``, ``frac_msun`` ... when those metrics are computed) and timings; with
``eval_every`` also a fixed-seed evaluation of the policy (``eval/...``). The trainer's
:meth:`state_dict` resumes a run exactly: the rollout seed depends only on ``(seed, step)``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xtalforge.models.interface import CrystalGenerator, GeneratorRollout, SampleConditions
from xtalforge.rl.common import TrainerConfigDict, evaluation_row

if TYPE_CHECKING:  # pragma: no cover
    from xtalforge.rewards.base import CompositeReward
    from xtalforge.rewards.resources import RewardResources

logger = logging.getLogger(__name__)

__all__ = ["EMABaseline", "PPOConfig", "PPOTrainer", "clipped_surrogate", "kl_regularized_reward"]


@dataclass
class PPOConfig(TrainerConfigDict):
    """Settings of :class:`PPOTrainer` (defaults: Cao & Wang 2025, Appendix A and Table S1).

    Attributes
    ----------
    batch_size
        Crystals sampled per step (paper: 1000).
    minibatch_size
        Crystals per gradient computation within a pass (None: the whole batch). The gradient
        of a pass is accumulated over its minibatches: one optimiser step per pass.
    ppo_epochs
        Optimiser steps per sampled batch ("PPO steps between resampling": 3).
    clip_eps
        PPO clipping ``eps`` (0.2).
    kl_coef
        ``tau`` of Eq. 1 (0.1; 2 for the dielectric figure of merit).
    baseline_decay
        ``eta`` of the EMA baseline (0.95).
    lr, betas, grad_clip
        Adam (lr 1e-4), gradient-norm clipping (1).
    max_steps
        Training steps (paper: 100-200).
    use_normalized_reward
        Use the reward's batch-normalised total instead of the raw one (not the paper's).
    space_group, num_atoms
        Fix the space group / atom count of every rollout (None: training distribution).
    max_kl
        Stop when the step's KL estimate exceeds this (None: never).
    eval_every, eval_samples, eval_seed
        Fixed-seed evaluation of the policy every ``eval_every`` steps (0: never), before the
        step's update; curve keys ``eval/...``.
    seed
        Base seed (step ``s`` samples with a seed derived from ``(seed, s)``).
    """

    batch_size: int = 1000
    minibatch_size: int | None = None
    ppo_epochs: int = 3
    clip_eps: float = 0.2
    kl_coef: float = 0.1
    baseline_decay: float = 0.95
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0
    max_steps: int = 200
    use_normalized_reward: bool = False
    space_group: int | None = None
    num_atoms: int | None = None
    max_kl: float | None = None
    eval_every: int = 0
    eval_samples: int = 256
    eval_seed: int = 2_000_003
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2")
        if self.ppo_epochs < 1:
            raise ValueError("ppo_epochs must be >= 1")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError("baseline_decay must be in [0, 1)")
        if self.clip_eps <= 0 or self.kl_coef < 0:
            raise ValueError("clip_eps must be > 0 and kl_coef >= 0")
        if self.eval_every < 0 or (self.eval_every and self.eval_samples < 2):
            raise ValueError("eval_every must be >= 0 and eval_samples >= 2")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


class EMABaseline:
    """``b_0 = mean(R_0)``; ``b_k = eta * b_{k-1} + (1 - eta) * mean(R_k)`` (Appendix C)."""

    def __init__(self, decay: float = 0.95, value: float | None = None) -> None:
        self.decay = float(decay)
        self.value = value

    def update(self, rewards: np.ndarray) -> float:
        """Fold in one batch's rewards; return the new baseline."""
        m = float(np.mean(rewards))
        self.value = m if self.value is None else self.decay * self.value + (1 - self.decay) * m
        return self.value


def kl_regularized_reward(reward: np.ndarray, logp: np.ndarray, logp_base: np.ndarray,
                          kl_coef: float) -> np.ndarray:
    """``R = r - tau * (ln p - ln p_base)`` (Eq. S2)."""
    return np.asarray(reward, float) - kl_coef * (np.asarray(logp, float)
                                                  - np.asarray(logp_base, float))


def clipped_surrogate(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor,
                      clip_eps: float = 0.2) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO loss ``-mean(min(rho A, clip(rho, 1-eps, 1+eps) A))`` (S1) and its statistics."""
    ratio = torch.exp(logp_new - logp_old.detach())
    adv = adv.detach().to(ratio)
    surr = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
    with torch.no_grad():
        dev = (ratio - 1).abs()
        stats = {"ratio_mean": float(ratio.mean()), "ratio_absdev_max": float(dev.max()),
                 "clip_frac": float((dev > clip_eps).float().mean())}
    return -surr.mean(), stats


class PPOTrainer:
    """PPO fine-tuning of a :class:`~xtalforge.models.interface.CrystalGenerator`.

    Parameters
    ----------
    policy
        The generator to fine-tune in place (a ``torch.nn.Module`` implementing the interface,
        e.g. :class:`~xtalforge.models.wyckoff.generator.WyckoffTransformerGenerator`).
    reward
        :class:`~xtalforge.rewards.CompositeReward`.
    resources
        :class:`~xtalforge.rewards.RewardResources`.
    config
        :class:`PPOConfig`.
    device
        Torch device.
    base
        The frozen base model ``p_base`` (default: a copy of ``policy`` as given; pass the
        pretrained checkpoint when resuming).
    """

    def __init__(self, policy: CrystalGenerator, reward: CompositeReward,
                 resources: RewardResources, config: PPOConfig | None = None,
                 device: str | torch.device = "cpu", base: CrystalGenerator | None = None
                 ) -> None:
        if not isinstance(policy, CrystalGenerator) or not isinstance(policy, torch.nn.Module):
            raise TypeError("policy must be a torch module implementing CrystalGenerator")
        self.config = cfg = config or PPOConfig()
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.base = copy.deepcopy(base if base is not None else policy).to(self.device)
        self.base.eval().requires_grad_(False)
        self.policy.eval()  # no dropout in fine-tuning
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params, lr=cfg.lr, betas=cfg.betas)
        self.reward = reward
        self.resources = resources
        self.baseline = EMABaseline(cfg.baseline_decay)
        self.step = 0
        self.curves: list[dict[str, Any]] = []
        self.stop_reason: str | None = None

    # ------------------------------------------------------------------ pieces
    def _seed(self, step: int) -> int:
        return (self.config.seed * 1_000_003 + step * 1009) % (2**63 - 1)

    def _conditions(self, n: int) -> SampleConditions | None:
        cfg = self.config
        if cfg.space_group is None and cfg.num_atoms is None:
            return None
        return SampleConditions(
            space_group=None if cfg.space_group is None else [cfg.space_group] * n,
            num_atoms=None if cfg.num_atoms is None else [cfg.num_atoms] * n)

    def score(self, rollout: GeneratorRollout):
        """Reward breakdown and :class:`~xtalforge.rewards.RewardContext` of a rollout."""
        from xtalforge.rewards.metrics import RewardContext

        ctx = RewardContext(rollout.structures, self.resources)
        return self.reward(ctx, groups=None), ctx

    def _log_prob_chunks(self, model, rollout: GeneratorRollout) -> torch.Tensor:
        mb = self.config.minibatch_size or len(rollout)
        with torch.no_grad():
            return torch.cat([model.log_prob(_sub(rollout, sl)) for sl in _slices(len(rollout),
                                                                                  mb)])

    def update(self, rollout: GeneratorRollout, adv: np.ndarray) -> dict[str, float]:
        """``ppo_epochs`` clipped-surrogate steps on one batch; return their statistics."""
        cfg = self.config
        n = len(rollout)
        mb = cfg.minibatch_size or n
        adv_t = torch.as_tensor(adv, dtype=torch.float32, device=self.device)
        old = rollout.log_probs.to(self.device)
        stats: dict[str, list[float]] = {}
        first_dev = None
        for _epoch in range(cfg.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for sl in _slices(n, mb):
                lp = self.policy.log_prob(_sub(rollout, sl))
                loss, st = clipped_surrogate(lp, old[sl], adv_t[sl], cfg.clip_eps)
                w = (sl.stop - sl.start) / n
                (loss * w).backward()
                loss_sum += float(loss.detach()) * w
                if first_dev is None:
                    first_dev = st["ratio_absdev_max"]
                for k, v in st.items():
                    stats.setdefault(k, []).append(v)
            clip = cfg.grad_clip if cfg.grad_clip is not None else math.inf
            gn = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
            stats.setdefault("grad_norm", []).append(gn)
            stats.setdefault("loss", []).append(loss_sum)
            if not math.isfinite(gn) or not math.isfinite(loss_sum):
                self.optimizer.zero_grad(set_to_none=True)
                stats.setdefault("skipped", []).append(1.0)
                continue
            self.optimizer.step()
        out = {k: float(np.mean(v)) for k, v in stats.items() if k != "ratio_absdev_max"}
        out["ratio_absdev_max"] = float(np.max(stats["ratio_absdev_max"]))
        out["ratio_absdev_max_first"] = float(first_dev or 0.0)
        out["num_skipped_updates"] = float(sum(stats.get("skipped", [])))
        out.pop("skipped", None)
        return out

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict[str, Any]:
        """Sample, score, update; append and return the step's curve row."""
        cfg = self.config
        t_start = time.perf_counter()
        row: dict[str, Any] = {"step": self.step + 1}
        if cfg.eval_every and self.step % cfg.eval_every == 0:
            t = time.perf_counter()
            row.update(self.evaluate_policy())
            row["t_eval_s"] = time.perf_counter() - t
        t0 = time.perf_counter()
        ro = self.policy.rollout(cfg.batch_size, self._conditions(cfg.batch_size),
                                 seed=self._seed(self.step), device=self.device)
        t1 = time.perf_counter()
        br, ctx = self.score(ro)
        t2 = time.perf_counter()
        r = br.total if cfg.use_normalized_reward else br.raw_total
        lp_old = ro.log_probs.detach().cpu().double().numpy()
        lp_base = self._log_prob_chunks(self.base, ro).cpu().double().numpy()
        big_r = kl_regularized_reward(r, lp_old, lp_base, cfg.kl_coef)
        b = self.baseline.update(big_r)
        adv = big_r - b
        stats = self.update(ro, adv)
        t3 = time.perf_counter()
        self.step += 1
        row.update(br.summary())
        row.update(ctx.batch_summary())
        row.update({
            "reward": float(np.mean(r)), "reward_regularized": float(np.mean(big_r)),
            "kl": float(np.mean(lp_old - lp_base)), "baseline": b,
            "adv_mean": float(np.mean(adv)), "adv_std": float(np.std(adv)),
            "logp_mean": float(np.mean(lp_old)), **stats,
            "t_rollout_s": t1 - t0, "t_reward_s": t2 - t1, "t_update_s": t3 - t2,
            "wall_time_s": time.perf_counter() - t_start,
            **{f"t_metric/{k}": v for k, v in ctx.timings.items()}})
        self.curves.append(row)
        self._guards(row)
        row["stop_reason"] = self.stop_reason
        return row

    @torch.no_grad()
    def evaluate_policy(self) -> dict[str, float]:
        """Score ``eval_samples`` crystals of the policy drawn with the fixed ``eval_seed``."""
        cfg = self.config
        res = self.policy.sample(cfg.eval_samples, self._conditions(cfg.eval_samples),
                                 seed=cfg.eval_seed, device=self.device,
                                 batch_size=cfg.eval_samples)
        return evaluation_row(self.reward, self.resources, res.structures)

    def _guards(self, row: dict[str, Any]) -> None:
        cfg = self.config
        reason = None
        if row.get("num_skipped_updates", 0) > 0:
            reason = f"non-finite loss or gradient at step {self.step}"
        elif cfg.max_kl is not None and not row["kl"] <= cfg.max_kl:
            reason = f"KL to the base {row['kl']:.3g} > max_kl {cfg.max_kl:g}"
        if reason:
            self.stop_reason = reason
            logger.warning("stopping PPO: %s", reason)

    @property
    def stopped(self) -> bool:
        """Whether a guard stopped training."""
        return self.stop_reason is not None

    def train(self, num_steps: int | None = None,
              callback: Callable[[PPOTrainer, dict[str, Any]], None] | None = None,
              progress: bool | None = None) -> list[dict[str, Any]]:
        """Run until ``num_steps`` (default ``config.max_steps``) or a guard stops it."""
        from tqdm.auto import tqdm

        target = self.config.max_steps if num_steps is None else int(num_steps)
        disable = None if progress is None else not progress
        with tqdm(total=target, initial=self.step, desc="ppo", disable=disable) as bar:
            while self.step < target and not self.stopped:
                row = self.train_step()
                bar.update(1)
                logger.info("ppo step %d: reward %.4f, kl %.4f, baseline %.4f, clip %.3f, "
                            "%.1f s", self.step, row["reward"], row["kl"], row["baseline"],
                            row["clip_frac"], row["wall_time_s"])
                if callback is not None:
                    callback(self, row)
        return self.curves

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Trainer state for resuming (the policy weights are saved separately)."""
        return {"step": self.step, "optimizer": self.optimizer.state_dict(),
                "curves": [dict(r) for r in self.curves], "config": self.config.to_dict(),
                "baseline": self.baseline.value, "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (after loading the policy weights)."""
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.curves = [dict(r) for r in state["curves"]]
        self.baseline = EMABaseline(self.config.baseline_decay, state["baseline"])
        self.stop_reason = state.get("stop_reason")

    def checkpoint_dict(self) -> dict[str, Any]:
        """Return the policy's checkpoint payload."""
        return self.policy.checkpoint_dict()


def _slices(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, max(1, size))]


def _sub(rollout: GeneratorRollout, sl: slice) -> GeneratorRollout:
    """Part of a rollout whose payload can be sliced (token sequences)."""
    if sl.start == 0 and sl.stop == len(rollout):
        return rollout
    p = rollout.payload
    payload = p.select(torch.arange(sl.start, sl.stop)) if hasattr(p, "select") else p[sl]
    return GeneratorRollout(rollout.structures[sl], rollout.reasons[sl],
                            rollout.log_probs[sl], payload)
