"""Sampling throughput (structures/s) of the latent-diffusion generator.

Measures ``LatentDiffusionGenerator.generate`` for ``--n`` samples (DDIM, 50 steps, eta 0) with
separate timings for denoising (GPU-synchronised), VAE decoding and conversion to pymatgen
``Structure`` objects, and prints ratios against baselines measured in the same run:
bf16 vs fp32, and batched vs a small-batch run (``--baseline-batch-size``, default 1).

Defaults: on CUDA the paper-size model (DiT 12 x 768, 12 heads) in fp32 and bf16 (and, with
``--tf32``, fp32 with TF32 matmuls); on CPU the tiny model in fp32. ``--also-cpu-tiny`` adds the
tiny model on the CPU to a CUDA run. Weights are random unless ``--checkpoint`` is given: the
throughput of the network does not depend on them (invalid decodes, which skip the pymatgen
step, are counted and reported).

Examples
--------
::

    python benchmarks/sampling.py --device cuda --n 10000 --batch-size 2000 --json out/s.json
    python benchmarks/sampling.py --device cpu --n 200 --batch-size 100
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from xtalforge.models.generator import GeneratorConfig, LatentDiffusionGenerator


def _model(preset: str, checkpoint: str | None, device: str) -> LatentDiffusionGenerator:
    if checkpoint:
        return LatentDiffusionGenerator.load(checkpoint, map_location=device)
    torch.manual_seed(0)
    gen = LatentDiffusionGenerator(getattr(GeneratorConfig, preset)())
    # the EMA denoiser starts as a copy of the (zero-initialised-output) DiT; perturb all
    # weights slightly so the network does real work and outputs vary
    with torch.no_grad():
        for p in gen.ldm.ema_denoiser.parameters():
            if p.dim() > 1 and float(p.abs().sum()) == 0.0:
                p.normal_(0.0, 0.02)
    return gen.to(device)


def run_one(
    gen,
    n: int,
    batch_size: int,
    device: str,
    dtype: str,
    steps: int,
    seed: int,
    sort_by_size: bool = True,
    overlap_decode: bool | None = None,
) -> dict:
    """Generate ``n`` samples and return throughput and timings."""
    # warm-up (kernels, allocator) on one small batch
    gen.generate(
        min(batch_size, 64),
        seed=seed + 100,
        batch_size=min(batch_size, 64),
        device=device,
        dtype=dtype,
        steps=2,
        progress=False,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = gen.generate(
        n,
        seed=seed,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        steps=steps,
        progress=False,
        sort_by_size=sort_by_size,
        overlap_decode=overlap_decode,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    t = res.timings
    return {
        "n": n,
        "batch_size": batch_size,
        "dtype": dtype,
        "steps": steps,
        "total_s": total,
        "denoise_s": t["denoise"],
        "vae_decode_s": t["vae_decode"],
        "to_structures_s": t["to_structures"],
        "structures_per_s": n / total,
        "denoise_structures_per_s": n / max(t["denoise"], 1e-9),
        "to_structures_per_s": n / max(t["to_structures"], 1e-9),
        "invalid_decodes": sum(r is not None for r in res.reasons),
        "sort_by_size": sort_by_size,
        "overlap_decode": overlap_decode,
    }


def diagnose(gen, n: int, bs: int, device: str, steps: int, seed: int) -> dict:
    """bf16 variants (SDPA backends, no decode overlap) and a kernel profile of one batch."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    res: dict = {}
    variants = {"default": None, "math": SDPBackend.MATH}
    if device.startswith("cuda"):
        variants["efficient"] = SDPBackend.EFFICIENT_ATTENTION
        variants["cudnn"] = SDPBackend.CUDNN_ATTENTION
    for name, backend in variants.items():
        try:
            if backend is None:
                r = run_one(gen, n, bs, device, "bf16", steps, seed)
            else:
                with sdpa_kernel([backend]):
                    r = run_one(gen, n, bs, device, "bf16", steps, seed)
        except RuntimeError as exc:  # backend not available for these inputs
            print(f"sdpa {name}: failed ({str(exc).splitlines()[0][:120]})")
            continue
        res[f"sdpa_{name}"] = r
        print(_fmt(f"bf16 bs{bs} sdpa={name}", r))
    r = run_one(gen, n, bs, device, "bf16", steps, seed, overlap_decode=False)
    res["no_overlap"] = r
    print(_fmt(f"bf16 bs{bs} no decode overlap", r))
    # kernel profile of the denoising of one batch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    na = gen.sample_num_atoms(bs, torch.Generator().manual_seed(seed)).to(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        gen.ldm.sample(na, steps=steps, dtype="bf16", use_ema=True, seed=seed)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    sort_key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_key, row_limit=18, max_name_column_width=60)
    print(f"profile: one batch of {bs}, {steps} steps, wall {wall:.2f}s (profiler on)")
    print(table)
    res["profile_table"] = table
    return res


def _fmt(name: str, r: dict) -> str:
    return (
        f"{name:<34} n={r['n']:>6} bs={r['batch_size']:>5} total={r['total_s']:8.2f}s "
        f"denoise={r['denoise_s']:7.2f}s vae={r['vae_decode_s']:6.2f}s "
        f"pymatgen={r['to_structures_s']:6.2f}s -> {r['structures_per_s']:9.1f} struct/s "
        f"(denoise only {r['denoise_structures_per_s']:9.1f}/s)"
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=None, help="samples (default 10000 cuda, 200 cpu)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 2000 cuda, 100 cpu")
    ap.add_argument("--preset", default=None, help="tiny | medium | paper (default by device)")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--dtypes", default=None, help="comma list (default fp32,bf16 on cuda)")
    ap.add_argument("--tf32", action="store_true", help="also fp32 with TF32 matmuls (cuda)")
    ap.add_argument(
        "--extra-batch-sizes", default="", help="comma list: also run the last dtype at these"
    )
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument(
        "--compare-unsorted", action="store_true", help="also the last dtype without bucketing"
    )
    ap.add_argument("--baseline-batch-size", type=int, default=1)
    ap.add_argument("--baseline-n", type=int, default=None, help="default 20 cuda, 10 cpu")
    ap.add_argument("--also-cpu-tiny", action="store_true")
    ap.add_argument("--cpu-n", type=int, default=1000)
    ap.add_argument("--cpu-threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--diagnose",
        action="store_true",
        help="bf16 variants (SDPA backends, no overlap) and a kernel profile of one batch",
    )
    ap.add_argument("--only-diagnose", action="store_true", help="skip the standard runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)

    cuda = args.device.startswith("cuda")
    n = args.n or (10000 if cuda else 200)
    bs = args.batch_size or (2000 if cuda else 100)
    preset = args.preset or ("paper" if cuda else "tiny")
    dtypes = (args.dtypes or ("fp32,bf16" if cuda else "fp32")).split(",")
    base_n = args.baseline_n or (20 if cuda else 10)
    device_name = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    out: dict = {
        "device": args.device,
        "device_name": device_name,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "preset": preset,
        "checkpoint": args.checkpoint,
        "runs": {},
    }
    print(
        f"device: {device_name} | torch {torch.__version__} | preset {preset} | steps "
        f"{args.steps} | weights {'checkpoint' if args.checkpoint else 'random'}"
    )
    gen = _model(preset, args.checkpoint, args.device)
    out["params"] = {
        "vae": sum(p.numel() for p in gen.vae.parameters()),
        "denoiser": sum(p.numel() for p in gen.ldm.denoiser.parameters()),
    }
    print(f"params: {out['params']}")
    runs = out["runs"]
    if args.only_diagnose:
        out["diagnose"] = diagnose(gen, n, bs, args.device, args.steps, args.seed)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=2)
        return out
    for dt in dtypes:
        runs[f"{preset}/{dt}/bs{bs}"] = r = run_one(
            gen, n, bs, args.device, dt, args.steps, args.seed
        )
        print(_fmt(f"{preset} {dt} batch {bs}", r))
    if cuda and args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        runs[f"{preset}/tf32/bs{bs}"] = r = run_one(
            gen, n, bs, args.device, "fp32", args.steps, args.seed
        )
        torch.backends.cuda.matmul.allow_tf32 = False
        print(_fmt(f"{preset} tf32 batch {bs}", r))
    for ebs in [int(v) for v in args.extra_batch_sizes.split(",") if v]:
        dt = dtypes[-1]
        runs[f"{preset}/{dt}/bs{ebs}"] = r = run_one(
            gen, n, ebs, args.device, dt, args.steps, args.seed
        )
        print(_fmt(f"{preset} {dt} batch {ebs}", r))
    if args.compare_unsorted:
        dt = dtypes[-1]
        runs[f"{preset}/{dt}/bs{bs}/unsorted"] = r = run_one(
            gen, n, bs, args.device, dt, args.steps, args.seed, sort_by_size=False
        )
        print(_fmt(f"{preset} {dt} batch {bs} no bucketing", r))
    bkey = f"{preset}/{dtypes[0]}/bs{args.baseline_batch_size}"
    runs[bkey] = r = run_one(
        gen, base_n, args.baseline_batch_size, args.device, dtypes[0], args.steps, args.seed
    )
    print(_fmt(f"{preset} {dtypes[0]} batch {args.baseline_batch_size} (baseline)", r))

    ratios = {}
    main_key = f"{preset}/{dtypes[-1]}/bs{bs}"
    if "fp32" in dtypes and "bf16" in dtypes:
        a, b = runs[f"{preset}/bf16/bs{bs}"], runs[f"{preset}/fp32/bs{bs}"]
        ratios["bf16_vs_fp32_total"] = a["structures_per_s"] / b["structures_per_s"]
        ratios["bf16_vs_fp32_denoise"] = (
            a["denoise_structures_per_s"] / b["denoise_structures_per_s"]
        )
    if args.compare_unsorted:
        ratios["bucketed_vs_unsorted"] = (
            runs[main_key]["structures_per_s"]
            / runs[f"{preset}/{dtypes[-1]}/bs{bs}/unsorted"]["structures_per_s"]
        )
    ratios[f"{main_key}_vs_{bkey}"] = (
        runs[main_key]["structures_per_s"] / runs[bkey]["structures_per_s"]
    )
    if args.also_cpu_tiny and cuda:
        tiny = _model("tiny", None, "cpu")
        runs["tiny/fp32/cpu"] = r = run_one(
            tiny, args.cpu_n, min(args.cpu_n, 1000), "cpu", "fp32", args.steps, args.seed
        )
        print(_fmt(f"tiny fp32 cpu ({torch.get_num_threads()} threads)", r))
        ratios["gpu_main_vs_cpu_tiny"] = runs[main_key]["structures_per_s"] / r["structures_per_s"]
    if args.diagnose:
        out["diagnose"] = diagnose(gen, n, bs, args.device, args.steps, args.seed)
    out["ratios"] = ratios
    for k, v in ratios.items():
        print(f"ratio {k}: {v:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
