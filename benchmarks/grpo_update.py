"""GRPO update time: step-by-step log-probability recomputation vs stacked denoiser passes.

Both variants compute the same loss and gradient
(``tests/models/test_latent_diffusion.py`` checks values and gradients); this measures the
wall time of :meth:`GRPOTrainer.update` on one rollout batch, with the baseline
(``steps_per_pass=1``) measured in the same run::

    python benchmarks/grpo_update.py --checkpoint gen.pt --device cuda --group-size 32 \\
        --num-conditions 4
    python benchmarks/grpo_update.py --device cpu        # tiny random model

Prints the device name, the median time of each variant over ``--repeats`` updates and the
ratio.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("grpo_update")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="generator checkpoint (default: a tiny random model)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--num-conditions", type=int, default=2)
    ap.add_argument("--sampling-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="1,0",
                    help="steps_per_pass values (0: all steps of a group in one pass)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator
    from xtalforge.rewards import RewardResources
    from xtalforge.rl.grpo import GRPOConfig, GRPOTrainer

    device = torch.device(args.device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    if args.checkpoint:
        base = LatentDiffusionGenerator.load(args.checkpoint, map_location=device)
    else:
        torch.manual_seed(0)
        base = LatentDiffusionGenerator(GeneratorConfig.tiny())
        base.fit_num_atoms_distribution([2, 4, 6, 8, 10])
    base = base.to(device)
    # a cheap reward that needs no MLIP: the update's cost does not depend on the reward
    from xtalforge.rewards.base import CompositeReward, RewardComponent

    class _Volume(RewardComponent):
        name = "volume_per_atom"

        def compute(self, ctx):  # noqa: D102 - benchmark-local reward
            return np.array([s.volume / len(s) if s is not None else np.nan
                             for s in ctx.structures])

    reward = CompositeReward([_Volume(label="volume_per_atom")])
    times: dict[int, list[float]] = {}
    rollout = None
    adv = None
    for spp in [int(v) for v in args.variants.split(",")]:
        cfg = GRPOConfig(group_size=args.group_size, num_conditions=args.num_conditions,
                         sampling_steps=args.sampling_steps, steps_per_pass=spp, lr=1e-6,
                         val_every=0, seed=0)
        for _ in range(args.repeats):
            gen = copy.deepcopy(base)
            tr = GRPOTrainer(gen, reward, RewardResources(), cfg, device=device)
            if rollout is None:  # one rollout batch, reused by every variant
                rollout = tr.rollout()
                adv = np.random.default_rng(0).standard_normal(len(rollout))
            _sync(device)
            t0 = time.perf_counter()
            tr.update(rollout, adv)
            _sync(device)
            times.setdefault(spp, []).append(time.perf_counter() - t0)
    n = len(rollout)
    steps = len(rollout.trajectories[0].stochastic_steps)
    print(f"device: {name} | torch {torch.__version__} | {n} trajectories x {steps} stochastic "
          f"steps | model {'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'tiny'}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        label = "step by step (baseline)" if k == 1 else (
            "all steps in one pass" if k == 0 else f"{k} steps per pass")
        print(f"steps_per_pass={k:<3d} {label:<26s} median {v:8.3f} s over {len(times[k])}")
    if 1 in med:
        for k, v in med.items():
            if k != 1:
                print(f"ratio steps_per_pass={k} vs 1: {med[1] / v:.1f}x faster")


if __name__ == "__main__":
    main()
