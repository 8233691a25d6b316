"""Raw spread of the diversity rewards on one rollout-sized batch, with and without the
standardised kernel.

Every reward component is min-max normalised within its group before weighting, so a
component whose raw values barely vary gets the same range as stability. This prints the raw
standard deviation of the compositional and structural diversity rewards (leave-one-out MMD
against MP-20 val embeddings) of ``--n`` samples of a generator, with ``standardize`` off (the
raw ``(x.y/d + 1)^3`` kernel) and on (embeddings divided by the reference RMS entry).

Example::

    python benchmarks/diversity_spread.py --checkpoint out/s4/gen_dec025_fp16.pt \
        --cache-dir out/c5/cache
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True, type=Path)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mp20")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--n", type=int, default=64, help="samples (one rollout batch)")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    import rl_denovo

    from xtalforge.models.generator import LatentDiffusionGenerator
    from xtalforge.rewards import RewardContext, RewardResources
    from xtalforge.rewards.components import (
        CompositionDiversityReward,
        StructureDiversityReward,
    )

    torch.set_num_threads(2)
    gen = LatentDiffusionGenerator.load(args.checkpoint)
    val, _ = rl_denovo.load_split(args.data_dir, "val", 2, args.cache_dir)
    res = RewardResources(
        generator=gen,
        reference_structure_embeddings=gen.embed_structures(val),
        reference_composition_embeddings=gen.composition_embeddings(val),
    )
    samples = gen.generate(args.n, seed=args.seed, eta=1.0, steps=50).structures
    comp_emb, struct_emb = gen.composition_embeddings(samples), gen.embed_structures(samples)
    for standardize in (False, True):
        ctx = RewardContext(samples, res)
        ctx.metrics["composition_embedding"] = comp_emb
        ctx.metrics["structure_embedding"] = struct_emb
        c, _ = CompositionDiversityReward(normalize=None, standardize=standardize).values(ctx)
        s, _ = StructureDiversityReward(normalize=None, standardize=standardize).values(ctx)
        print(f"standardize={standardize}: raw std of compositional diversity "
              f"{np.nanstd(c):.3g}, structural diversity {np.nanstd(s):.3g} "
              f"({args.n} samples of {args.checkpoint.name})")


if __name__ == "__main__":
    main()
