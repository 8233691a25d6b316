"""Token-sampling throughput of the Wyckoff transformer: key/value cache vs full prefix.

Draws ``--n`` sequences with :meth:`WyckoffTransformer.sample` twice from the same
``torch.Generator`` seed, once with the key/value cache (each token is one position through the
layers) and once recomputing the whole prefix for every token, and prints samples/s of both and
their ratio, measured in the same run on the same device. It also checks that both draws agree
(identical tokens, largest log-probability difference). With ``--decode-workers W`` it then
times the assembly of the sampled sequences into pymatgen structures in this process and in
``W`` worker processes (the pool started before the timing), and checks that both give the
same crystals.

Weights are random unless ``--checkpoint`` is given. Random weights are fine for this speed
ratio only: a random model ends its sequences earlier than a trained one (the mean and largest
number of Wyckoff sites are printed), and the uncached cost grows with the square of the length,
so the ratio on a trained model is at least as large. No quality number comes from this script.
Space groups are drawn uniformly over 1..230 (random weights) or from the checkpoint's
training histogram.

Examples
--------
::

    python benchmarks/wyckoff_sampling.py --model medium --n 200 --batch-size 100
    python benchmarks/wyckoff_sampling.py --device cuda --model paper --n 2000 --batch-size 1000 \
        --json out/wyckoff_sampling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch

logger = logging.getLogger("wyckoff_sampling")


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU {os.uname().machine}, {torch.get_num_threads()} threads"


def _run(model, groups: torch.Tensor, batch_size: int, seed: int, use_cache: bool,
         device: str) -> tuple[float, list, torch.Tensor]:
    """Sample ``groups`` in batches; return (seconds, batches, log-probabilities)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    out, lps = [], []
    for start in range(0, len(groups), batch_size):
        b, lp = model.sample(groups[start : start + batch_size].to(device), generator=gen,
                             use_cache=use_cache)
        out.append(b)
        lps.append(lp)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t, out, torch.cat(lps)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return the result row."""
    from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator
    from xtalforge.models.wyckoff.model import SequenceBatch, wyckoff_preset

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="medium", choices=["tiny", "medium", "paper"],
                    help="preset of the random-weight model (ignored with --checkpoint)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decode-workers", type=int, default=0,
                    help="also time decoding to structures in this many processes")
    ap.add_argument("--json", default=None, help="append the result row to this JSON-lines file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    torch.manual_seed(args.seed)
    if args.checkpoint:
        gen = WyckoffTransformerGenerator.load(args.checkpoint, map_location=args.device)
        weights = f"checkpoint {args.checkpoint}"
    else:
        gen = WyckoffTransformerGenerator(wyckoff_preset(args.model)).to(args.device)
        weights = "random (speed ratio only)"
    model = gen.model.eval()
    groups = model.sample_space_groups(args.n, torch.Generator().manual_seed(args.seed + 1))
    # warm-up (kernels, allocator) on a small batch, both paths
    for c in (True, False):
        _run(model, groups[: min(8, args.n)], args.batch_size, args.seed, c, args.device)
    t_c, b_c, lp_c = _run(model, groups, args.batch_size, args.seed, True, args.device)
    t_u, b_u, lp_u = _run(model, groups, args.batch_size, args.seed, False, args.device)
    bc, bu = SequenceBatch.cat(b_c), SequenceBatch.cat(b_u)
    n_sites = (bc.letters > 0).sum(1).float()
    row = {
        "benchmark": "wyckoff_sampling", "device": _device_name(args.device),
        "weights": weights, "config": gen.config.to_dict(),
        "params": sum(p.numel() for p in gen.parameters()), "n": args.n,
        "batch_size": args.batch_size, "seed": args.seed,
        "cached_samples_per_s": args.n / t_c, "uncached_samples_per_s": args.n / t_u,
        "speedup_cached_over_uncached": t_u / t_c,
        "identical_tokens": bool(torch.equal(bc.letters, bu.letters)
                                 and torch.equal(bc.elements, bu.elements)),
        "max_abs_logprob_diff": float((lp_c - lp_u).abs().max()),
        "mean_sites": float(n_sites.mean()), "max_sites": int(n_sites.max()),
        "torch": torch.__version__,
    }
    logger.info("Wyckoff transformer token sampling on %s, %s weights, %d params, n %d, batch %d",
                row["device"], weights, row["params"], args.n, args.batch_size)
    logger.info("  KV cache   : %8.1f samples/s", row["cached_samples_per_s"])
    logger.info("  full prefix: %8.1f samples/s", row["uncached_samples_per_s"])
    logger.info("  ratio cached / uncached: %.2fx (same run); identical tokens: %s, "
                "max |d log p| %.2e; Wyckoff sites per sample: mean %.2f, max %d",
                row["speedup_cached_over_uncached"], row["identical_tokens"],
                row["max_abs_logprob_diff"], row["mean_sites"], row["max_sites"])
    if args.decode_workers > 0:
        from xtalforge.models.wyckoff.generator import decode_sequences

        bcpu = bc.to("cpu")
        decode_sequences(bcpu[: 4 * args.decode_workers], workers=args.decode_workers)  # start
        t = time.perf_counter()
        serial = decode_sequences(bcpu, workers=0)
        t_serial = time.perf_counter() - t
        t = time.perf_counter()
        pooled = decode_sequences(bcpu, workers=args.decode_workers)
        t_pooled = time.perf_counter() - t
        row.update({
            "decode_workers": args.decode_workers, "cpu_count": os.cpu_count(),
            "decode_serial_per_s": args.n / t_serial, "decode_pooled_per_s": args.n / t_pooled,
            "decode_speedup": t_serial / t_pooled,
            "decode_identical": serial[1] == pooled[1] and all(
                (a is None and b is None) or a == b
                for a, b in zip(serial[0], pooled[0], strict=True)),
            "decoded_fraction": sum(x is not None for x in serial[0]) / args.n})
        logger.info("  decoding to structures: %.1f/s in-process, %.1f/s with %d workers "
                    "(%.2fx, same run; identical: %s; %.0f%% decoded; %d CPUs)",
                    row["decode_serial_per_s"], row["decode_pooled_per_s"], args.decode_workers,
                    row["decode_speedup"], row["decode_identical"],
                    100 * row["decoded_fraction"], os.cpu_count())
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
