"""Supervised fine-tuning baseline of RL (Cao & Wang 2025, Fig. 5 and Appendix A).

The comparison RL must beat: sample from the base model, relax the samples with the MLIP,
keep those with ``E_hull < 0.1`` eV/atom, and fine-tune the base model on them by maximum
likelihood (the paper: 10,000 samples relaxed with Orb, 55 epochs, batch 100, Adam lr 1e-5).

:func:`select_stable` picks the training set from screening records (the relaxed structure
when the screening relaxed, else the sample itself); :func:`supervised_finetune` fine-tunes a
generator of either family on structures (the Wyckoff transformer on its sequence likelihood,
the latent diffusion model on its denoising loss with the VAE frozen); :func:`run_sft_baseline`
chains sampling, screening (relaxation on by default), selection and fine-tuning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["run_sft_baseline", "select_stable", "supervised_finetune"]

logger = logging.getLogger(__name__)


def select_stable(structures: Sequence, records: Sequence[Mapping[str, Any]],
                  threshold: float = 0.1) -> tuple[list, list[int]]:
    """Structures whose ``e_above_hull`` is below ``threshold`` (relaxed ones when present).

    Returns
    -------
    (list, list of int)
        The kept structures and their indices in ``structures``.
    """
    from pymatgen.core import Structure

    kept, idx = [], []
    for i, (s, r) in enumerate(zip(structures, records, strict=True)):
        e = r.get("e_above_hull")
        if s is None or e is None or not np.isfinite(e) or not e < threshold:
            continue
        rel = r.get("relaxed_structure")
        kept.append(Structure.from_dict(rel) if rel else s)
        idx.append(i)
    return kept, idx


def supervised_finetune(generator, structures: Sequence, *, steps: int | None = None,
                        epochs: float | None = 55, batch_size: int = 100, lr: float = 1e-5,
                        device: str = "cpu", seed: int = 0, **train_kwargs: Any) -> dict:
    """Maximum-likelihood fine-tuning on ``structures`` (defaults: the paper's SFT settings).

    Parameters
    ----------
    generator
        A :class:`~xtalforge.models.wyckoff.generator.WyckoffTransformerGenerator` or a
        :class:`~xtalforge.models.generator.LatentDiffusionGenerator` (fine-tuned in place).
    structures
        Training crystals.
    steps, epochs, batch_size, lr, device, seed, train_kwargs
        Passed to :func:`~xtalforge.models.wyckoff.training.train_wyckoff` or
        :func:`~xtalforge.models.training.train_ldm` (give exactly one of steps / epochs).

    Returns
    -------
    dict
        The training history.
    """
    from xtalforge.models.generator import LatentDiffusionGenerator
    from xtalforge.models.wyckoff.generator import WyckoffTransformerGenerator

    if not structures:
        raise ValueError("no structures to fine-tune on (no sample passed the selection)")
    if steps is not None:
        epochs = None
    kw = dict(steps=steps, epochs=epochs, batch_size=min(batch_size, len(structures)), lr=lr,
              device=device, seed=seed, **train_kwargs)
    if isinstance(generator, WyckoffTransformerGenerator):
        from xtalforge.models.wyckoff.training import train_wyckoff

        # keep the base model's space-group distribution and element vocabulary
        return train_wyckoff(generator, structures, fit_distributions=False, **kw)
    if isinstance(generator, LatentDiffusionGenerator):
        from xtalforge.models.training import train_ldm

        # keep the base model's latent normalisation and atom-count distribution
        return train_ldm(generator, structures, fit_latent_stats=False, **kw)
    raise TypeError(f"no supervised fine-tuning for {type(generator).__name__}")


def run_sft_baseline(generator, energy_model, hull, *, n_samples: int = 10_000,
                     threshold: float = 0.1, relax: bool = True,
                     relax_kwargs: Mapping[str, Any] | None = None, seed: int = 0,
                     device: str = "cpu", sample_batch_size: int = 1000, n_jobs: int = 1,
                     reference=None, **finetune_kwargs: Any) -> dict[str, Any]:
    """Sample, screen (relaxing by default), keep ``E_hull < threshold``, fine-tune.

    Returns
    -------
    dict
        ``history``, ``n_samples``, ``n_selected``, ``frac_selected``, ``screen_summary``
        (JSON-friendly entries), ``relaxed``, ``threshold``.
    """
    from xtalforge.screening.screen import screen_structures

    res = generator.generate(n_samples, seed=seed, batch_size=sample_batch_size, device=device)
    records, summary = screen_structures(res.structures, energy_model, hull,
                                         reference_structures=reference, relax=relax,
                                         relax_kwargs=relax_kwargs, n_jobs=n_jobs,
                                         include_structures=relax)
    kept, idx = select_stable(res.structures, records, threshold)
    logger.info("SFT: %d/%d samples below %.3g eV/atom", len(kept), n_samples, threshold)
    hist = supervised_finetune(generator, kept, device=device, seed=seed, **finetune_kwargs)
    return {"history": hist, "n_samples": n_samples, "n_selected": len(kept),
            "frac_selected": len(kept) / max(n_samples, 1), "selected_indices": idx,
            "screen_summary": {k: v for k, v in summary.items()
                               if isinstance(v, (int, float, str, bool))},
            "relaxed": bool(relax), "threshold": threshold,
            "hull_convention": summary.get("hull_convention")}
