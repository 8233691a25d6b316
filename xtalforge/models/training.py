"""Training loops for the latent-diffusion generator (VAE first, then the latent DiT).

Public API
----------
``train_vae(generator, structures, steps=None, epochs=None, batch_size=256, lr=1e-4,
device="cpu", seed=0, log_every=100, callback=None, ...) -> history``
    Trains ``generator.vae`` on the weighted negative ELBO with random translation / rotation
    augmentation (AdamW, the paper's optimiser).
``train_ldm(generator, structures, steps=None, epochs=None, batch_size=256, lr=1e-4,
device="cpu", seed=0, log_every=100, callback=None, ...) -> history``
    Freezes the VAE, fits the atom-count histogram and the latent normalisation, encodes
    (augmented) crystals on the fly to per-atom latents (posterior mean by default) and trains
    the DiT denoiser with the DDPM loss, updating the EMA weights after every step.

``finetune_decoder(generator, structures, noise_max=0.3, steps=None, epochs=None, ...)``
    Keeps the encoder (hence every latent, and a diffusion model trained on them) fixed and
    trains only the decoder to return each clean crystal from its posterior mean plus Gaussian
    noise of a random level in ``[0, noise_max]`` latent standard deviations, so that latents
    near the data manifold (a diffusion model's imprecise samples) decode to plausible crystals.

``structures`` may be a sequence of pymatgen structures or a prebuilt
:class:`~xtalforge.models.crystal.CrystalBatch`. ``history`` is a dict of lists (``step``,
``loss`` and the components, averaged over each logging window) plus ``wall_time_s``,
``steps`` and ``epochs``. ``callback(step, metrics)`` is called at every logging point; if it
returns True, training stops early.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import torch

from xtalforge.models.crystal import CrystalBatch, augment, structures_to_batch
from xtalforge.models.diffusion import autocast, resolve_autocast_dtype
from xtalforge.models.generator import LatentDiffusionGenerator

__all__ = ["as_batch", "finetune_decoder", "train_ldm", "train_vae"]

logger = logging.getLogger(__name__)

Callback = Callable[[int, dict[str, float]], "bool | None"]


def as_batch(structures: Sequence | CrystalBatch, max_atoms: int) -> CrystalBatch:
    """Return a :class:`CrystalBatch` built from structures (or the batch itself)."""
    if isinstance(structures, CrystalBatch):
        return structures
    return structures_to_batch(list(structures), max_atoms=max_atoms)


def _index_stream(
    n: int, batch_size: int, total_steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """Minibatch indices over shuffled epochs (the last partial batch of an epoch is kept)."""
    step = 0
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            if step >= total_steps:
                return
            yield perm[start : start + batch_size]
            step += 1


def _restore_requires_grad(module: torch.nn.Module, flags: list[bool]) -> None:
    """Set back the ``requires_grad`` flags recorded as ``[p.requires_grad for p in ...]``."""
    for p, flag in zip(module.parameters(), flags, strict=True):
        p.requires_grad_(flag)


def _resolve_steps(n: int, batch_size: int, steps: int | None, epochs: float | None) -> int:
    if (steps is None) == (epochs is None):
        raise ValueError("give exactly one of steps or epochs")
    if steps is not None:
        return int(steps)
    return max(1, int(math.ceil(epochs * math.ceil(n / batch_size))))


def _lr_factor(step: int, progress: float, warmup_steps: int, schedule: str) -> float:
    """LR multiplier: linear warm-up over steps, then constant or cosine over ``progress``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    raise ValueError(f"unknown schedule {schedule!r}")


def _run_loop(
    name: str,
    params: list[torch.nn.Parameter],
    step_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    n: int,
    total_steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    grad_clip: float | None,
    warmup_steps: int,
    schedule: str,
    seed: int,
    log_every: int,
    callback: Callback | None,
    progress: bool | None,
    after_step: Callable[[], None] | None = None,
    max_time_s: float | None = None,
) -> dict:
    """Optimise ``params`` on minibatch losses from ``step_fn(indices)``; return the history."""
    from tqdm.auto import tqdm

    _lr_factor(0, 0.0, warmup_steps, schedule)  # validate the schedule name early
    fused = all(p.is_cuda for p in params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    cpu_gen = torch.Generator().manual_seed(seed)
    history: dict = defaultdict(list)
    window: dict[str, list[torch.Tensor]] = defaultdict(list)
    t_start = time.perf_counter()
    disable = None if progress is None else not progress
    bar = tqdm(total=total_steps, desc=name, disable=disable, leave=False)
    step = 0
    lr_now = lr

    def flush() -> dict[str, float]:
        # averages the window (one device sync per logging point, not per step)
        metrics = {k: float(torch.stack(v).float().mean()) for k, v in window.items()}
        window.clear()
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"{name}: non-finite loss before step {step}")
        history["step"].append(step)
        history["lr"].append(lr_now)
        for k, v in metrics.items():
            history[k].append(v)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        msg = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        logger.info("%s step %d/%d lr=%.3g %s", name, step, total_steps, lr_now, msg)
        return metrics

    for idx in _index_stream(n, batch_size, total_steps, cpu_gen):
        elapsed = time.perf_counter() - t_start
        if max_time_s is not None and elapsed >= max_time_s:
            logger.info("%s: time budget of %.0f s reached at step %d", name, max_time_s, step)
            break
        frac = step / total_steps
        if max_time_s:
            frac = max(frac, elapsed / max_time_s)
        lr_now = lr * _lr_factor(step, frac, warmup_steps, schedule)
        for group in opt.param_groups:
            group["lr"] = lr_now
        out = step_fn(idx)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if after_step is not None:
            after_step()
        for k, v in out.items():
            window[k].append(v.detach())
        step += 1
        bar.update(1)
        if step % log_every == 0 or step == total_steps:
            metrics = flush()
            if callback is not None and callback(step, metrics):
                logger.info("%s: stopped by callback at step %d", name, step)
                break
    if window:
        flush()
    bar.close()
    history = dict(history)
    history["wall_time_s"] = time.perf_counter() - t_start
    history["steps"] = step
    history["epochs"] = step * batch_size / n
    return history


def train_vae(
    generator: LatentDiffusionGenerator,
    structures: Sequence | CrystalBatch,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 256,
    lr: float = 1e-4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    log_every: int = 100,
    callback: Callback | None = None,
    augment_data: bool = True,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    dtype: str = "fp32",
    warmup_steps: int = 0,
    schedule: str = "constant",
    progress: bool | None = None,
    max_time_s: float | None = None,
) -> dict:
    """Train the generator's VAE.

    Parameters
    ----------
    generator
        Model whose ``vae`` is trained (moved to ``device``).
    structures
        Training crystals (structures or a :class:`CrystalBatch`).
    steps, epochs
        Training length (exactly one).
    batch_size, lr, weight_decay, grad_clip
        AdamW settings (paper: batch 256, lr 1e-4, no weight decay).
    device
        Torch device.
    seed
        Seeds minibatch order, augmentation and posterior sampling.
    log_every
        Steps between history entries / log lines.
    callback
        ``callback(step, metrics) -> stop?``.
    augment_data
        Random translation and rotation of every minibatch.
    dtype
        ``"fp32"`` or ``"bf16"`` (autocast, CUDA only).
    warmup_steps, schedule
        Linear warm-up (steps), then ``"constant"`` or ``"cosine"`` decay; the cosine follows
        ``max(step / steps, elapsed / max_time_s)``.
    progress
        tqdm bar (None: only on a TTY).
    max_time_s
        Wall-clock budget: training stops when it is spent (``steps`` is then an upper bound).

    Returns
    -------
    dict
        Training history.
    """
    device = torch.device(device)
    data = as_batch(structures, generator.max_atoms).to(device)
    generator.to(device)
    vae = generator.vae.train()
    if generator.num_atoms_counts[1:].std() == 0:  # still uniform: fit it here too
        generator.fit_num_atoms_distribution(data.num_atoms)
    total = _resolve_steps(len(data), batch_size, steps, epochs)
    dev_gen = torch.Generator(device=device).manual_seed(seed + 1)
    ac = resolve_autocast_dtype(dtype, device)

    def step_fn(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = data[idx.to(device)]
        if augment_data:
            batch = augment(batch, dev_gen)
        with autocast(device, ac):
            return vae.loss(batch, sample_posterior=True, generator=dev_gen)

    logger.info(
        "train_vae: %d crystals, %d steps, batch %d, lr %g, device %s",
        len(data),
        total,
        batch_size,
        lr,
        device,
    )
    hist = _run_loop(
        "vae",
        [p for p in vae.parameters() if p.requires_grad],
        step_fn,
        len(data),
        total,
        batch_size,
        lr,
        weight_decay,
        grad_clip,
        warmup_steps,
        schedule,
        seed,
        log_every,
        callback,
        progress,
        max_time_s=max_time_s,
    )
    vae.eval()
    return hist


@torch.no_grad()
def _fit_latent_stats(
    generator: LatentDiffusionGenerator,
    data: CrystalBatch,
    batch_size: int,
    augment_data: bool,
    dev_gen: torch.Generator,
) -> None:
    zs, masks = [], []
    for start in range(0, len(data), batch_size):
        batch = data[slice(start, start + batch_size)]
        if augment_data:
            batch = augment(batch, dev_gen)
        zs.append(generator.vae.encode(batch)[0])
        masks.append(batch.mask)
    generator.ldm.set_latent_stats(torch.cat(zs), torch.cat(masks))
    logger.info(
        "latent stats: mean %s std %s",
        [round(v, 3) for v in generator.ldm.latent_mean.tolist()],
        [round(v, 3) for v in generator.ldm.latent_std.tolist()],
    )


def train_ldm(
    generator: LatentDiffusionGenerator,
    structures: Sequence | CrystalBatch,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 256,
    lr: float = 1e-4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    log_every: int = 100,
    callback: Callback | None = None,
    augment_data: bool = True,
    use_posterior_mean: bool = True,
    fit_latent_stats: bool = True,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    dtype: str = "fp32",
    warmup_steps: int = 0,
    schedule: str = "constant",
    progress: bool | None = None,
    max_time_s: float | None = None,
) -> dict:
    """Train the latent diffusion denoiser with the VAE frozen.

    Parameters
    ----------
    generator
        Model with a trained VAE (moved to ``device``).
    structures
        Training crystals (structures or a :class:`CrystalBatch`); their atom counts become
        the generator's atom-count distribution.
    steps, epochs
        Training length (exactly one).
    batch_size, lr, weight_decay, grad_clip, warmup_steps, schedule, dtype, progress, max_time_s
        As in :func:`train_vae`.
    device, seed, log_every, callback
        As in :func:`train_vae`.
    augment_data
        Encode randomly translated / rotated crystals.
    use_posterior_mean
        Diffuse the posterior means (True) or posterior samples.
    fit_latent_stats
        Set the latent normalisation from the (augmented) training latents first.

    Returns
    -------
    dict
        Training history.
    """
    device = torch.device(device)
    data = as_batch(structures, generator.max_atoms).to(device)
    generator.to(device)
    generator.fit_num_atoms_distribution(data.num_atoms)
    vae, ldm = generator.vae, generator.ldm
    vae_flags = [p.requires_grad for p in vae.parameters()]
    vae.eval().requires_grad_(False)
    total = _resolve_steps(len(data), batch_size, steps, epochs)
    dev_gen = torch.Generator(device=device).manual_seed(seed + 1)
    ac = resolve_autocast_dtype(dtype, device)
    if fit_latent_stats:
        _fit_latent_stats(generator, data, 1024, augment_data, dev_gen)
    ldm.denoiser.train()

    def step_fn(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = data[idx.to(device)]
        if augment_data:
            batch = augment(batch, dev_gen)
        with torch.no_grad():
            mean, logvar = vae.encode(batch)
            z = mean if use_posterior_mean else vae.reparameterize(mean, logvar, dev_gen)
        with autocast(device, ac):
            loss = ldm.training_loss(z, batch.mask, generator=dev_gen)
        return {"loss": loss}

    logger.info(
        "train_ldm: %d crystals, %d steps, batch %d, lr %g, device %s",
        len(data),
        total,
        batch_size,
        lr,
        device,
    )
    try:
        hist = _run_loop(
            "ldm",
            list(ldm.denoiser.parameters()),
            step_fn,
            len(data),
            total,
            batch_size,
            lr,
            weight_decay,
            grad_clip,
            warmup_steps,
            schedule,
            seed,
            log_every,
            callback,
            progress,
            after_step=ldm.update_ema,
            max_time_s=max_time_s,
        )
    finally:
        _restore_requires_grad(vae, vae_flags)
    ldm.eval()
    return hist


def finetune_decoder(
    generator: LatentDiffusionGenerator,
    structures: Sequence | CrystalBatch,
    noise_max: float = 0.3,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 256,
    lr: float = 1e-4,
    device: str | torch.device = "cpu",
    seed: int = 0,
    log_every: int = 100,
    callback: Callback | None = None,
    augment_data: bool = True,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    dtype: str = "fp32",
    warmup_steps: int = 0,
    schedule: str = "constant",
    progress: bool | None = None,
    max_time_s: float | None = None,
) -> dict:
    """Fine-tune the VAE decoder on noised latents; the encoder stays fixed.

    A latent diffusion model's samples sit near, not on, the latents of real crystals, and a
    decoder trained only on (almost noiseless) posterior latents can turn small latent errors
    into atoms far too close together. Here each crystal's posterior mean gets Gaussian noise of
    a level ``s ~ U(0, noise_max)`` (per crystal, in units of the per-dimension latent standard
    deviation of the diffusion model's normalisation) and the decoder is trained to reconstruct
    the clean crystal. Since the encoder is frozen, the latents, the latent statistics and any
    diffusion model trained on them stay valid: this can run before, after or alongside
    :func:`train_ldm`.

    Parameters
    ----------
    generator
        Model with a trained VAE. If its latent normalisation is still the identity it is
        fitted here (as :func:`train_ldm` does).
    structures
        Training crystals.
    noise_max
        Largest noise level, in latent standard deviations (0 continues plain decoder
        training on posterior means).
    steps, epochs, batch_size, lr, device, seed, log_every, callback, augment_data,
    weight_decay, grad_clip, dtype, warmup_steps, schedule, progress, max_time_s
        As in :func:`train_vae`.

    Returns
    -------
    dict
        Training history, plus ``noise_max``.
    """
    if not noise_max >= 0.0:
        raise ValueError(f"noise_max must be >= 0, got {noise_max}")
    device = torch.device(device)
    data = as_batch(structures, generator.max_atoms).to(device)
    generator.to(device)
    vae, ldm = generator.vae, generator.ldm
    total = _resolve_steps(len(data), batch_size, steps, epochs)
    dev_gen = torch.Generator(device=device).manual_seed(seed + 2)
    ac = resolve_autocast_dtype(dtype, device)
    if bool((ldm.latent_std == 1).all()) and bool((ldm.latent_mean == 0).all()):
        _fit_latent_stats(generator, data, 1024, augment_data, dev_gen)
    latent_std = ldm.latent_std.detach().clone()
    flags = [p.requires_grad for p in vae.parameters()]
    vae.requires_grad_(False)
    params = vae.decoder_parameters()
    for p in params:
        p.requires_grad_(True)
    vae.train()

    def step_fn(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = data[idx.to(device)]
        if augment_data:
            batch = augment(batch, dev_gen)
        scale = noise_max * torch.rand(len(batch), generator=dev_gen, device=device)
        with autocast(device, ac):
            return vae.noisy_latent_loss(batch, scale, latent_std, generator=dev_gen)

    logger.info(
        "finetune_decoder: %d crystals, %d steps, batch %d, lr %g, noise_max %g, device %s",
        len(data),
        total,
        batch_size,
        lr,
        noise_max,
        device,
    )
    try:
        hist = _run_loop(
            "decoder",
            params,
            step_fn,
            len(data),
            total,
            batch_size,
            lr,
            weight_decay,
            grad_clip,
            warmup_steps,
            schedule,
            seed,
            log_every,
            callback,
            progress,
            max_time_s=max_time_s,
        )
    finally:
        _restore_requires_grad(vae, flags)
    vae.eval()
    hist["noise_max"] = float(noise_max)
    return hist
