"""Write an fp16 copy of a ``torch.save`` checkpoint (for bringing weights back from a GPU host).

Every floating-point tensor in the (nested) checkpoint is stored as float16, except the latent
normalisation buffers ``latent_mean`` / ``latent_std`` of the latent-diffusion generator, which
stay in full precision; integer tensors and plain Python values are unchanged. Loading the copy
into a model casts the weights back to the model's dtype.

    python benchmarks/gpu/fp16_checkpoint.py IN.pt OUT.pt
"""

from __future__ import annotations

import sys

import torch

KEEP = ("latent_mean", "latent_std")


def to_fp16(obj, key: str = ""):
    """Return ``obj`` with its floating tensors halved (those named in ``KEEP`` excepted)."""
    if isinstance(obj, torch.Tensor):
        return obj.half() if obj.is_floating_point() and key.rsplit(".", 1)[-1] not in KEEP else obj
    if isinstance(obj, dict):
        return {k: to_fp16(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_fp16(v) for v in obj)
    return obj


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ckpt = torch.load(argv[0], map_location="cpu", weights_only=True)
    torch.save(to_fp16(ckpt), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
