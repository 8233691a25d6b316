"""Maximum-likelihood pretraining of the Wyckoff transformer, resumable.

:func:`train_wyckoff` minimises the negative log-likelihood of the training crystals' Wyckoff
sequences (teacher forcing; :meth:`~xtalforge.models.wyckoff.model.WyckoffTransformer.log_prob`)
with the training loop of the latent diffusion generator
(:mod:`xtalforge.models.training`): AdamW, warm-up and constant/cosine schedule, gradient
clipping, a run budget (``max_minutes`` / ``max_run_steps``) and a full training state file
from which the same call continues (parameters, optimiser moments, step, minibatch order, RNG).
It takes the same :class:`~xtalforge.models.training.TrainConfig` (or its fields as keywords),
so the pretraining makers drive both families with one ``TrainConfig``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from xtalforge.models.diffusion import autocast, resolve_autocast_dtype
from xtalforge.models.training import (
    Callback,
    TrainConfig,
    make_checkpointing,
    resolve_config,
    resolve_steps,
    resume_state,
    run_loop,
)
from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator, tokenize_structures
from xtalforge.models.wyckoff.model import SequenceBatch

__all__ = ["sequences_for_training", "train_wyckoff", "validation_nll"]

logger = logging.getLogger(__name__)

#: Defaults of :func:`train_wyckoff` when no ``config`` is given (give ``steps`` or ``epochs``);
#: a Wyckoff sequence does not change under rigid motions, so there is nothing to augment.
WYCKOFF_DEFAULTS: dict[str, Any] = {"steps": None, "batch_size": 256, "lr": 1e-3,
                                    "log_every": 100, "augment_data": False}


def sequences_for_training(generator: WyckoffTransformerGenerator, structures: Sequence,
                           progress: bool | None = None) -> tuple[SequenceBatch, dict]:
    """Tokenise training crystals; return the batch and ``{n_input, n_used, skipped: {...}}``."""
    seqs, reasons = tokenize_structures(structures, generator.config.max_sites,
                                        generator.config.max_atoms, progress=progress)
    kept = [q for q in seqs if q is not None]
    skipped: dict[str, int] = {}
    for r in reasons:
        if r is not None:
            key = r.split(":")[0].split(" > ")[-1] if " > " in r else r.split(":")[0]
            skipped[key] = skipped.get(key, 0) + 1
    if not kept:
        raise ValueError(f"no structure could be tokenised ({skipped})")
    info = {"n_input": len(structures), "n_used": len(kept), "skipped": skipped}
    logger.info("tokenised %d/%d training crystals (skipped: %s)", len(kept), len(structures),
                skipped)
    return SequenceBatch.from_sequences(kept, generator.config.max_sites), info


@torch.no_grad()
def validation_nll(generator: WyckoffTransformerGenerator, data: SequenceBatch,
                   batch_size: int = 512) -> float:
    """Mean negative log-likelihood per crystal of held-out sequences (eval mode).

    A held-out crystal that the model gives probability zero (an element never seen in
    training is masked out of the element head) has an infinite NLL; it is left out of the
    mean and counted in a warning, so that one such crystal does not make the number useless.
    """
    model = generator.model
    was = model.training
    model.eval()
    total, n, impossible = 0.0, 0, 0
    for start in range(0, len(data), batch_size):
        b = data[start : start + batch_size].to(generator.device)
        nll = -model.log_prob(b).double()
        ok = torch.isfinite(nll)
        total += float(nll[ok].sum())
        n += int(ok.sum())
        impossible += int((~ok).sum())
    model.train(was)
    if impossible:
        logger.warning("validation_nll: %d of %d held-out crystals have probability zero under "
                       "the model (left out of the mean)", impossible, len(data))
    return total / n if n else float("inf")


def train_wyckoff(
    generator: WyckoffTransformerGenerator,
    structures: Sequence | SequenceBatch,
    config: TrainConfig | None = None,
    *,
    epochs: float | None = None,
    device: str | torch.device = "cpu",
    callback: Callback | None = None,
    progress: bool | None = None,
    max_time_s: float | None = None,
    state_path: str | Path | None = None,
    on_save: Callable[[Path], None] | None = None,
    fit_distributions: bool = True,
    **settings: Any,
) -> dict:
    """Train the Wyckoff transformer by maximum likelihood.

    Parameters
    ----------
    generator
        The model (moved to ``device``); its space-group histogram and element vocabulary are
        fitted to the data.
    structures
        Training crystals, or their :class:`SequenceBatch` (tokenise once with
        :func:`sequences_for_training` when training repeatedly).
    config, epochs, device, callback, progress, max_time_s, state_path, on_save, **settings
        As in :func:`xtalforge.models.training.train_vae`; without ``config`` the defaults are
        :data:`WYCKOFF_DEFAULTS`. ``config.augment_data`` is accepted for the shared
        ``TrainConfig`` and ignored: a Wyckoff sequence does not change under the rigid
        motions the other family augments with.
    fit_distributions
        Fit the space-group histogram and element vocabulary to ``structures`` (False keeps
        the model's: fine-tuning on a selection, as the SFT baseline does).

    Returns
    -------
    dict
        Training history (``loss`` = NLL per crystal, and its parts ``nll_wyckoff``,
        ``nll_element``, ``nll_coords``, ``nll_lattice``), ``steps``, ``completed`` ...
    """
    cfg = resolve_config(config, WYCKOFF_DEFAULTS, settings)
    device = torch.device(device)
    data = structures if isinstance(structures, SequenceBatch) else sequences_for_training(
        generator, structures, progress=progress)[0]
    data = data.to(device)
    generator.to(device)
    total = resolve_steps(len(data), cfg.batch_size, cfg.steps, epochs)
    state_settings = {"n": len(data), "batch_size": cfg.batch_size, "seed": cfg.seed}
    resume = resume_state("wyckoff", generator, state_path, state_settings)
    if resume is None and fit_distributions:
        generator.fit_space_group_distribution(data.group.cpu())
        generator.model.fit_element_vocabulary(data.elements.cpu())
    ckpt = make_checkpointing(state_path, generator, {}, cfg.save_every_minutes, state_settings,
                              on_save)
    ac = resolve_autocast_dtype(cfg.dtype, device)
    model = generator.model
    model.train()

    def step_fn(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(device, ac):
            return model.nll_loss(data[idx.to(device)])

    logger.info("train_wyckoff: %d crystals, %d steps, batch %d, lr %g, device %s", len(data),
                total, cfg.batch_size, cfg.lr, device)
    hist = run_loop("wyckoff", list(model.parameters()), step_fn, len(data), total, cfg,
                    callback, progress, max_time_s=max_time_s, checkpointing=ckpt, resume=resume)
    model.eval()
    return hist
