"""Training loops for the latent-diffusion generator (VAE first, then the latent DiT).

Public API
----------
``train_vae(generator, structures, config=None, *, epochs=None, device="cpu", callback=None,
..., **settings) -> history``
    Trains ``generator.vae`` on the weighted negative ELBO with random translation / rotation
    augmentation (AdamW, the paper's optimiser).
``train_ldm(generator, structures, config=None, *, ...) -> history``
    Freezes the VAE, fits the atom-count histogram and the latent normalisation, encodes
    (augmented) crystals on the fly to per-atom latents (posterior mean by default) and trains
    the DiT denoiser with the DDPM loss, updating the EMA weights after every step.

``finetune_decoder(generator, structures, noise_max=0.3, config=None, *, ...)``
    Keeps the encoder (hence every latent, and a diffusion model trained on them) fixed and
    trains only the decoder to return each clean crystal from its posterior mean plus Gaussian
    noise of a random level in ``[0, noise_max]`` latent standard deviations, so that latents
    near the data manifold (a diffusion model's imprecise samples) decode to plausible crystals.

The optimisation settings are one :class:`TrainConfig` (``config``), or its fields as keyword
arguments (``steps=100, lr=3e-4``), or both (the keywords override). ``structures`` may be a
sequence of pymatgen structures or a prebuilt
:class:`~xtalforge.models.crystal.CrystalBatch`. ``history`` is a dict of lists (``step``,
``loss`` and the components, averaged over each logging window) plus ``wall_time_s``,
``steps`` and ``epochs``. ``callback(step, metrics)`` is called at every logging point; if it
returns True, training stops early.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from xtalforge.models.crystal import CrystalBatch, augment, structures_to_batch
from xtalforge.models.diffusion import autocast, resolve_autocast_dtype
from xtalforge.models.generator import LatentDiffusionGenerator

__all__ = ["TrainConfig", "as_batch", "finetune_decoder", "resolve_config", "train_ldm",
           "train_vae"]

logger = logging.getLogger(__name__)

Callback = Callable[[int, dict[str, float]], "bool | None"]


@dataclass
class TrainConfig:
    """Optimisation settings of one training stage (VAE, LDM or decoder fine-tuning).

    The training functions (:func:`train_vae`, :func:`train_ldm`, :func:`finetune_decoder`,
    :func:`xtalforge.models.wyckoff.training.train_wyckoff`) take one as ``config`` and any of
    its fields as keyword overrides (:func:`resolve_config`).

    Parameters
    ----------
    steps
        Optimiser steps of the whole stage (summed over resumed runs); ``None`` when the
        training function is given ``epochs`` instead.
    batch_size, lr, weight_decay, grad_clip
        AdamW settings (Park & Walsh 2025 use batch 256, lr 1e-4, no weight decay).
    warmup_steps, schedule
        Linear warm-up over steps, then ``"constant"`` or ``"cosine"`` decay over ``steps``.
    dtype
        ``"fp32"`` or ``"bf16"`` (autocast, CUDA only).
    seed
        Seeds the minibatch order, augmentation and noise.
    augment_data
        Random translation and rotation of every minibatch.
    log_every
        Steps between history entries (``None``: about 20 entries per stage).
    max_minutes
        Wall-clock budget of one run: training saves its state and stops cleanly when it is
        spent; a later run with the same state file continues (``None``: no budget).
    save_every_minutes
        Interval between saves of the full training state (only when a state file is given).
    max_run_steps
        Like ``max_minutes``, in optimiser steps of one run (``None``: no budget).
    """

    steps: int | None = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"
    dtype: str = "fp32"
    seed: int = 0
    augment_data: bool = True
    log_every: int | None = None
    max_minutes: float | None = None
    save_every_minutes: float = 5.0
    max_run_steps: int | None = None



#: Defaults of the latent-diffusion training functions when no ``config`` is given (the
#: Park & Walsh 2025 optimiser: batch 256, lr 1e-4; give ``steps`` or ``epochs``).
LDM_FAMILY_DEFAULTS: dict[str, Any] = {"steps": None, "batch_size": 256, "lr": 1e-4,
                                       "log_every": 100}

_TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))


def resolve_config(config: TrainConfig | None, defaults: dict[str, Any],
                   overrides: dict[str, Any]) -> TrainConfig:
    """Return the settings of one training call.

    Parameters
    ----------
    config
        Settings given by the caller (``None``: ``TrainConfig(**defaults)``).
    defaults
        The training function's defaults, used only without ``config``.
    overrides
        Keyword arguments of the call, each a :class:`TrainConfig` field.

    Raises
    ------
    TypeError
        For a keyword that is not a :class:`TrainConfig` field, naming it.
    """
    unknown = sorted(set(overrides) - _TRAIN_FIELDS)
    if unknown:
        raise TypeError(f"unknown training setting(s) {', '.join(map(repr, unknown))}; "
                        f"TrainConfig fields: {', '.join(sorted(_TRAIN_FIELDS))}")
    base = config if config is not None else TrainConfig(**defaults)
    return replace(base, **overrides)


def as_batch(structures: Sequence | CrystalBatch, max_atoms: int) -> CrystalBatch:
    """Return a :class:`CrystalBatch` built from structures (or the batch itself)."""
    if isinstance(structures, CrystalBatch):
        return structures
    return structures_to_batch(list(structures), max_atoms=max_atoms)


class _EpochSampler:
    """Minibatch indices over shuffled epochs, resumable at any step.

    Each epoch's permutation is drawn from ``generator``; the generator's state at the start of
    the current epoch and the step count make the stream restartable mid-epoch (the last
    partial batch of an epoch is kept).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.per_epoch = math.ceil(n / batch_size)
        self.epoch_state = generator.get_state()
        self.perm = torch.randperm(n, generator=generator)
        self.offset = 0

    def next(self) -> torch.Tensor:
        """Return the next minibatch of indices."""
        if self.offset >= self.per_epoch:
            self.epoch_state = self.generator.get_state()
            self.perm = torch.randperm(self.n, generator=self.generator)
            self.offset = 0
        lo = self.offset * self.batch_size
        self.offset += 1
        return self.perm[lo : lo + self.batch_size]

    def state_dict(self) -> dict:
        """Return what :meth:`load_state_dict` needs to continue the stream."""
        return {"epoch_state": self.epoch_state, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream where :meth:`state_dict` was taken."""
        self.generator.set_state(state["epoch_state"])
        self.epoch_state = self.generator.get_state()
        self.perm = torch.randperm(self.n, generator=self.generator)
        self.offset = int(state["offset"])


STATE_FORMAT = "xtalforge-train-state"


class TrainStateError(ValueError):
    """A training-state file that cannot be resumed (foreign, corrupt or for other settings)."""


def load_train_state(path: str | Path | None) -> dict | None:
    """Return the training state saved at ``path``, or ``None`` when there is no file.

    Raises
    ------
    TrainStateError
        When the file is not an xtalforge training state.
    """
    if path is None or not Path(path).is_file():
        return None
    from xtalforge.models.checkpoint import CheckpointError, load_checkpoint_file

    try:
        return load_checkpoint_file(path, STATE_FORMAT, "xtalforge training state")
    except CheckpointError as exc:
        raise TrainStateError(str(exc)) from None


def _save_train_state(path: Path, state: dict) -> None:
    """Write ``state`` atomically (a killed save leaves the previous file intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@dataclass
class _Checkpointing:
    """Where and how often a training loop saves its full state."""

    path: Path
    model: torch.nn.Module
    rng: dict[str, torch.Generator]
    every_s: float
    settings: dict
    on_save: Callable[[Path], None] | None = None


def resume_state(
    name: str,
    generator: torch.nn.Module,
    state_path: str | Path | None,
    settings: dict,
) -> dict | None:
    """Load a saved state for stage ``name`` into ``generator``; ``None`` starts afresh."""
    state = load_train_state(state_path)
    if state is None:
        return None
    if state.get("stage") != name:
        raise TrainStateError(
            f"{state_path} holds a {state.get('stage')!r} training state, not {name!r}"
        )
    for key, value in settings.items():
        if state["settings"].get(key) != value:
            raise TrainStateError(
                f"{state_path} was saved with {key}={state['settings'].get(key)!r}, "
                f"this run has {key}={value!r}: resume with the same settings or a new state file"
            )
    generator.load_state_dict(state["model"])
    return state


def make_checkpointing(
    state_path: str | Path | None,
    generator: torch.nn.Module,
    rng: dict[str, torch.Generator],
    save_every_minutes: float,
    settings: dict,
    on_save: Callable[[Path], None] | None,
) -> _Checkpointing | None:
    if state_path is None:
        return None
    return _Checkpointing(
        Path(state_path), generator, rng, 60.0 * save_every_minutes, settings, on_save
    )


def _restore_requires_grad(module: torch.nn.Module, flags: list[bool]) -> None:
    """Set back the ``requires_grad`` flags recorded as ``[p.requires_grad for p in ...]``."""
    for p, flag in zip(module.parameters(), flags, strict=True):
        p.requires_grad_(flag)


def resolve_steps(n: int, batch_size: int, steps: int | None, epochs: float | None) -> int:
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


def run_loop(
    name: str,
    params: list[torch.nn.Parameter],
    step_fn: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    n: int,
    total_steps: int,
    cfg: TrainConfig,
    callback: Callback | None,
    progress: bool | None,
    after_step: Callable[[], None] | None = None,
    max_time_s: float | None = None,
    checkpointing: _Checkpointing | None = None,
    resume: dict | None = None,
) -> dict:
    """Optimise ``params`` on minibatch losses from ``step_fn(indices)``; return the history.

    ``cfg`` gives the optimiser, schedule, seed and budgets (``log_every`` None: about 20
    history entries). ``max_time_s`` is the budget of the whole stage (the cosine schedule
    follows it); ``cfg.max_minutes`` (and ``cfg.max_run_steps``) is the budget of this run only:
    the state is saved and the loop returns with ``completed=False``, and a run given that state
    as ``resume`` continues exactly where this one stopped (parameters, EMA, optimiser moments,
    step, minibatch order, RNG).
    """
    from tqdm.auto import tqdm

    batch_size, lr = cfg.batch_size, cfg.lr
    weight_decay, grad_clip = cfg.weight_decay, cfg.grad_clip
    warmup_steps, schedule, seed = cfg.warmup_steps, cfg.schedule, cfg.seed
    log_every = cfg.log_every or max(1, total_steps // 20)
    max_minutes, max_run_steps = cfg.max_minutes, cfg.max_run_steps

    _lr_factor(0, 0.0, warmup_steps, schedule)  # validate the schedule name early
    fused = all(p.is_cuda for p in params)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    sampler = _EpochSampler(n, batch_size, torch.Generator().manual_seed(seed))
    history: dict = defaultdict(list)
    window: dict[str, list[torch.Tensor]] = defaultdict(list)
    step = 0
    elapsed_before = 0.0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sampler.load_state_dict(resume["sampler"])
        for key, gen in (checkpointing.rng if checkpointing else {}).items():
            gen.set_state(resume["rng"][key])
        torch.set_rng_state(resume["rng"]["torch_cpu"])
        if torch.cuda.is_available() and resume["rng"].get("torch_cuda") is not None:
            torch.cuda.set_rng_state_all(resume["rng"]["torch_cuda"])
        history.update({k: list(v) for k, v in resume["history"].items()})
        step = int(resume["step"])
        elapsed_before = float(resume["elapsed_s"])
        logger.info("%s: resuming at step %d/%d", name, step, total_steps)
    resumed_from = step
    t_start = time.perf_counter()
    last_save = t_start
    disable = None if progress is None else not progress
    bar = tqdm(total=total_steps, initial=step, desc=name, disable=disable, leave=False)
    lr_now = lr

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_start

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

    def save(completed: bool) -> None:
        if checkpointing is None:
            return
        state = {
            "format": STATE_FORMAT,
            "version": 1,
            "stage": name,
            "step": step,
            "total_steps": total_steps,
            "completed": completed,
            "settings": checkpointing.settings,
            "model": {k: v.detach().cpu() for k, v in checkpointing.model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": {
                **{k: g.get_state() for k, g in checkpointing.rng.items()},
                "torch_cpu": torch.get_rng_state(),
                "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
            "history": {k: list(v) for k, v in history.items()},
            "elapsed_s": elapsed(),
        }
        _save_train_state(checkpointing.path, state)
        logger.info("%s: training state saved at step %d to %s", name, step, checkpointing.path)
        if checkpointing.on_save is not None:
            checkpointing.on_save(checkpointing.path)

    run_budget_s = None if max_minutes is None else 60.0 * max_minutes
    stopped_by_budget = False
    while step < total_steps:
        now = time.perf_counter()
        if max_time_s is not None and elapsed() >= max_time_s:
            logger.info("%s: time budget of %.0f s reached at step %d", name, max_time_s, step)
            break
        if run_budget_s is not None and now - t_start >= run_budget_s:
            logger.info("%s: run budget of %g min reached at step %d", name, max_minutes, step)
            stopped_by_budget = True
            break
        if max_run_steps is not None and step - resumed_from >= max_run_steps:
            logger.info("%s: run budget of %d steps reached at step %d", name, max_run_steps, step)
            stopped_by_budget = True
            break
        if checkpointing is not None and now - last_save >= checkpointing.every_s:
            if window:
                flush()
            save(completed=False)
            last_save = time.perf_counter()
        frac = step / total_steps
        if max_time_s:
            frac = max(frac, elapsed() / max_time_s)
        lr_now = lr * _lr_factor(step, frac, warmup_steps, schedule)
        for group in opt.param_groups:
            group["lr"] = lr_now
        out = step_fn(sampler.next())
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
    completed = not stopped_by_budget
    save(completed=completed)
    history = dict(history)
    history["wall_time_s"] = elapsed()
    history["steps"] = step
    history["epochs"] = step * batch_size / n
    history["completed"] = completed
    history["resumed_from_step"] = resumed_from
    return history


def train_vae(
    generator: LatentDiffusionGenerator,
    structures: Sequence | CrystalBatch,
    config: TrainConfig | None = None,
    *,
    epochs: float | None = None,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
    progress: bool | None = None,
    max_time_s: float | None = None,
    state_path: str | Path | None = None,
    on_save: Callable[[Path], None] | None = None,
    **settings: Any,
) -> dict:
    """Train the generator's VAE.

    Parameters
    ----------
    generator
        Model whose ``vae`` is trained (moved to ``device``).
    structures
        Training crystals (structures or a :class:`CrystalBatch`).
    config
        Optimisation settings (:class:`TrainConfig`: steps, AdamW, schedule, dtype, seed,
        augmentation, logging, run budgets). Without it: :data:`LDM_FAMILY_DEFAULTS` (batch
        256, lr 1e-4, a history entry every 100 steps; give ``steps`` or ``epochs``). The
        seed also seeds augmentation and posterior sampling; the cosine schedule follows
        ``max(step / steps, elapsed / max_time_s)``.
    epochs
        Training length in epochs, instead of ``steps``.
    device
        Torch device.
    callback
        ``callback(step, metrics) -> stop?``.
    progress
        tqdm bar (None: only on a TTY).
    max_time_s
        Wall-clock budget of the stage: training stops when it is spent (``steps`` is then an
        upper bound) and the cosine schedule follows it.
    state_path
        File of the full training state (weights, EMA, optimiser, step, minibatch order, RNG),
        saved every ``config.save_every_minutes``, at a budget stop (``config.max_minutes``,
        e.g. a batch job's wall time, or ``config.max_run_steps``: the function then returns
        with ``history["completed"]`` False) and at the end. When it exists, training resumes
        from it (a completed state returns at once); the schedule follows ``steps`` only, so
        resumed and uninterrupted runs are identical.
    on_save
        Called with ``state_path`` after each save (e.g. to copy the state to a store).
    **settings
        :class:`TrainConfig` fields overriding ``config`` (``steps=``, ``batch_size=``,
        ``lr=`` ...); any other name is a ``TypeError`` that names it.

    Returns
    -------
    dict
        Training history.
    """
    cfg = resolve_config(config, LDM_FAMILY_DEFAULTS, settings)
    device = torch.device(device)
    data = as_batch(structures, generator.max_atoms).to(device)
    generator.to(device)
    vae = generator.vae.train()
    total = resolve_steps(len(data), cfg.batch_size, cfg.steps, epochs)
    state_settings = {"n": len(data), "batch_size": cfg.batch_size, "seed": cfg.seed}
    resume = resume_state("vae", generator, state_path, state_settings)
    if resume is None and generator.num_atoms_counts[1:].std() == 0:
        generator.fit_num_atoms_distribution(data.num_atoms)  # still uniform: fit it here too
    dev_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    ac = resolve_autocast_dtype(cfg.dtype, device)
    ckpt = make_checkpointing(
        state_path, generator, {"device": dev_gen}, cfg.save_every_minutes, state_settings, on_save
    )

    def step_fn(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = data[idx.to(device)]
        if cfg.augment_data:
            batch = augment(batch, dev_gen)
        with autocast(device, ac):
            return vae.loss(batch, sample_posterior=True, generator=dev_gen)

    logger.info(
        "train_vae: %d crystals, %d steps, batch %d, lr %g, device %s",
        len(data),
        total,
        cfg.batch_size,
        cfg.lr,
        device,
    )
    hist = run_loop(
        "vae",
        [p for p in vae.parameters() if p.requires_grad],
        step_fn,
        len(data),
        total,
        cfg,
        callback,
        progress,
        max_time_s=max_time_s,
        checkpointing=ckpt,
        resume=resume,
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
    config: TrainConfig | None = None,
    *,
    epochs: float | None = None,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
    progress: bool | None = None,
    max_time_s: float | None = None,
    state_path: str | Path | None = None,
    on_save: Callable[[Path], None] | None = None,
    use_posterior_mean: bool = True,
    fit_latent_stats: bool = True,
    **settings: Any,
) -> dict:
    """Train the latent diffusion denoiser with the VAE frozen.

    Parameters
    ----------
    generator
        Model with a trained VAE (moved to ``device``).
    structures
        Training crystals (structures or a :class:`CrystalBatch`); their atom counts become
        the generator's atom-count distribution.
    config, epochs, device, callback, progress, max_time_s, state_path, on_save, **settings
        As in :func:`train_vae` (``config.augment_data``: encode randomly translated / rotated
        crystals).
    use_posterior_mean
        Diffuse the posterior means (True) or posterior samples.
    fit_latent_stats
        Set the latent normalisation from the (augmented) training latents first.

    Returns
    -------
    dict
        Training history.
    """
    cfg = resolve_config(config, LDM_FAMILY_DEFAULTS, settings)
    device = torch.device(device)
    data = as_batch(structures, generator.max_atoms).to(device)
    generator.to(device)
    vae, ldm = generator.vae, generator.ldm
    total = resolve_steps(len(data), cfg.batch_size, cfg.steps, epochs)
    state_settings = {"n": len(data), "batch_size": cfg.batch_size, "seed": cfg.seed}
    resume = resume_state("ldm", generator, state_path, state_settings)
    vae_flags = [p.requires_grad for p in vae.parameters()]
    vae.eval().requires_grad_(False)
    dev_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    ac = resolve_autocast_dtype(cfg.dtype, device)
    if resume is None:
        generator.fit_num_atoms_distribution(data.num_atoms)
        if fit_latent_stats:
            _fit_latent_stats(generator, data, 1024, cfg.augment_data, dev_gen)
    ckpt = make_checkpointing(
        state_path, generator, {"device": dev_gen}, cfg.save_every_minutes, state_settings, on_save
    )
    ldm.denoiser.train()

    def step_fn(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = data[idx.to(device)]
        if cfg.augment_data:
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
        cfg.batch_size,
        cfg.lr,
        device,
    )
    try:
        hist = run_loop(
            "ldm",
            list(ldm.denoiser.parameters()),
            step_fn,
            len(data),
            total,
            cfg,
            callback,
            progress,
            after_step=ldm.update_ema,
            max_time_s=max_time_s,
            checkpointing=ckpt,
            resume=resume,
        )
    finally:
        _restore_requires_grad(vae, vae_flags)
    ldm.eval()
    return hist


def finetune_decoder(
    generator: LatentDiffusionGenerator,
    structures: Sequence | CrystalBatch,
    noise_max: float = 0.3,
    config: TrainConfig | None = None,
    *,
    epochs: float | None = None,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
    progress: bool | None = None,
    max_time_s: float | None = None,
    state_path: str | Path | None = None,
    on_save: Callable[[Path], None] | None = None,
    **settings: Any,
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
    config, epochs, device, callback, progress, max_time_s, state_path, on_save, **settings
        As in :func:`train_vae`.

    Returns
    -------
    dict
        Training history, plus ``noise_max``.
    """
    cfg = resolve_config(config, LDM_FAMILY_DEFAULTS, settings)
    if not noise_max >= 0.0:
        raise ValueError(f"noise_max must be >= 0, got {noise_max}")
    device = torch.device(device)
    data = as_batch(structures, generator.max_atoms).to(device)
    generator.to(device)
    vae, ldm = generator.vae, generator.ldm
    total = resolve_steps(len(data), cfg.batch_size, cfg.steps, epochs)
    state_settings = {"n": len(data), "batch_size": cfg.batch_size, "seed": cfg.seed,
                      "noise_max": noise_max}
    resume = resume_state("decoder", generator, state_path, state_settings)
    dev_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
    ac = resolve_autocast_dtype(cfg.dtype, device)
    identity = bool((ldm.latent_std == 1).all()) and bool((ldm.latent_mean == 0).all())
    if resume is None and identity:
        _fit_latent_stats(generator, data, 1024, cfg.augment_data, dev_gen)
    ckpt = make_checkpointing(
        state_path, generator, {"device": dev_gen}, cfg.save_every_minutes, state_settings, on_save
    )
    latent_std = ldm.latent_std.detach().clone()
    flags = [p.requires_grad for p in vae.parameters()]
    vae.requires_grad_(False)
    params = vae.decoder_parameters()
    for p in params:
        p.requires_grad_(True)
    vae.train()

    def step_fn(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = data[idx.to(device)]
        if cfg.augment_data:
            batch = augment(batch, dev_gen)
        scale = noise_max * torch.rand(len(batch), generator=dev_gen, device=device)
        with autocast(device, ac):
            return vae.noisy_latent_loss(batch, scale, latent_std, generator=dev_gen)

    logger.info(
        "finetune_decoder: %d crystals, %d steps, batch %d, lr %g, noise_max %g, device %s",
        len(data),
        total,
        cfg.batch_size,
        cfg.lr,
        noise_max,
        device,
    )
    try:
        hist = run_loop(
            "decoder",
            params,
            step_fn,
            len(data),
            total,
            cfg,
            callback,
            progress,
            max_time_s=max_time_s,
            checkpointing=ckpt,
            resume=resume,
        )
    finally:
        _restore_requires_grad(vae, flags)
    vae.eval()
    hist["noise_max"] = float(noise_max)
    return hist
