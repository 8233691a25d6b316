"""Property surrogate on VAE latents (Park & Walsh 2025, Supplementary Note S1: band-gap predictor).

A :class:`PropertySurrogate` maps the per-atom VAE latents of a crystal (posterior means from
the generator's encoder) to a scalar property: a per-atom MLP, masked mean + max pooling over
atoms, then a feed-forward head with SiLU activations and layer normalisation after each hidden
layer (the architecture Note S1 describes), trained with AdamW (lr 1e-3, batch 256) on MSE of
standardised targets, with 10 % of the data held out for validation. Generated crystals are
scored by encoding their decoded structures, so a prediction always refers to the structure
actually produced.

Public API
----------
``PropertySurrogate(latent_dim, hidden_dim=128, ...)``
    ``predict_latents(z, mask) -> Tensor``; ``predict_structures(generator, structures) ->
    np.ndarray`` (NaN for ``None``); ``save(path) -> sha256``; ``PropertySurrogate.load(path)``.
``encode_structures(generator, structures) -> (z, mask)``
``train_surrogate(generator, structures, targets, ...) -> (surrogate, history)``
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

    from xtalforge.models.generator import LatentDiffusionGenerator

logger = logging.getLogger(__name__)

__all__ = ["SURROGATE_FORMAT", "PropertySurrogate", "encode_structures", "train_surrogate"]

#: Format tag stored in surrogate checkpoints.
SURROGATE_FORMAT = "xtalforge.property_surrogate/1"


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:], strict=True):
        layers += [nn.Linear(a, b), nn.SiLU(), nn.LayerNorm(b)]
    return nn.Sequential(*layers)


class PropertySurrogate(nn.Module):
    """MLP property predictor on per-atom VAE latents.

    Parameters
    ----------
    latent_dim
        Per-atom latent dimension of the generator's VAE.
    hidden_dim
        Width of the hidden layers.
    atom_layers, head_layers
        Hidden layers before and after pooling.
    property_name, units
        Recorded metadata.
    nonnegative
        Clamp predictions at 0 (band gaps).
    """

    def __init__(self, latent_dim: int, hidden_dim: int = 128, atom_layers: int = 2,
                 head_layers: int = 2, property_name: str = "band_gap", units: str = "eV",
                 nonnegative: bool = True) -> None:
        super().__init__()
        self.hparams = {"latent_dim": int(latent_dim), "hidden_dim": int(hidden_dim),
                        "atom_layers": int(atom_layers), "head_layers": int(head_layers),
                        "property_name": property_name, "units": units,
                        "nonnegative": bool(nonnegative)}
        self.property_name, self.units, self.nonnegative = property_name, units, nonnegative
        self.atom_mlp = _mlp([latent_dim] + [hidden_dim] * atom_layers)
        self.head = _mlp([2 * hidden_dim] + [hidden_dim] * head_layers)
        self.out = nn.Linear(hidden_dim, 1)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        self.metadata: dict[str, Any] = {}

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Standardised prediction ``[B]`` from latents ``[B, N, d]`` and mask ``[B, N]``."""
        h = self.atom_mlp(z.float())
        m = mask[..., None].to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        mx = h.masked_fill(~mask[..., None], -1e4).max(1).values
        return self.out(self.head(torch.cat([mean, mx], dim=-1))).squeeze(-1)

    def predict_latents(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prediction in property units ``[B]`` (clamped at 0 when ``nonnegative``)."""
        y = self(z, mask) * self.target_std + self.target_mean
        return y.clamp_min(0.0) if self.nonnegative else y

    @torch.no_grad()
    def predict_structures(self, generator: LatentDiffusionGenerator,
                           structures: Sequence[Structure | None], batch_size: int = 512,
                           device: str | torch.device | None = None) -> np.ndarray:
        """Encode structures with the generator's VAE and predict; NaN for ``None``."""
        device = torch.device(device) if device is not None else generator.device
        self.to(device).eval()
        out = np.full(len(structures), np.nan)
        idx = [i for i, s in enumerate(structures) if s is not None]
        if not idx:
            return out
        z, mask = encode_structures(generator, [structures[i] for i in idx], batch_size, device)
        preds = []
        for k in range(0, len(idx), batch_size):
            preds.append(self.predict_latents(z[k : k + batch_size].to(device),
                                              mask[k : k + batch_size].to(device)).cpu())
        out[idx] = torch.cat(preds).double().numpy()
        return out

    def describe(self) -> dict[str, Any]:
        """Hyper-parameters and training metadata."""
        return {**self.hparams, **{k: v for k, v in self.metadata.items()
                                   if isinstance(v, (int, float, str, bool, type(None)))}}

    def save(self, path: str | Path) -> str:
        """Write a ``weights_only``-loadable checkpoint; return its sha256."""
        from xtalforge.models.generator import file_sha256

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": SURROGATE_FORMAT, "hparams": self.hparams,
                    "state": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                    "metadata": _plain(self.metadata)}, path)
        return file_sha256(path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu"
             ) -> PropertySurrogate:
        """Load a checkpoint written by :meth:`save`."""
        from xtalforge.models.checkpoint import load_checkpoint_file

        ckpt = load_checkpoint_file(path, SURROGATE_FORMAT, "xtalforge surrogate checkpoint",
                                    map_location)
        model = cls(**ckpt["hparams"])
        model.load_state_dict(ckpt["state"])
        model.metadata = dict(ckpt.get("metadata") or {})
        return model.to(map_location).eval()


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj if isinstance(obj, (int, float, str, bool, type(None))) else str(obj)


@torch.no_grad()
def encode_structures(generator: LatentDiffusionGenerator, structures: Sequence[Structure],
                      batch_size: int = 512, device: str | torch.device | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior-mean VAE latents ``[n, max_atoms, d]`` and masks ``[n, max_atoms]`` (on CPU)."""
    from xtalforge.models.crystal import structures_to_batch

    device = torch.device(device) if device is not None else generator.device
    generator.vae.to(device).eval()
    zs, ms = [], []
    for k in range(0, len(structures), batch_size):
        batch = structures_to_batch(list(structures[k : k + batch_size]),
                                    generator.max_atoms).to(device)
        mean, _ = generator.vae.encode(batch)
        zs.append(mean.float().cpu())
        ms.append(batch.mask.cpu())
    if not zs:
        d = generator.config.vae.latent_dim
        return torch.zeros(0, generator.max_atoms, d), torch.zeros(0, generator.max_atoms,
                                                                   dtype=torch.bool)
    return torch.cat(zs), torch.cat(ms)


def train_surrogate(
    generator: LatentDiffusionGenerator,
    structures: Sequence[Structure],
    targets: Sequence[float],
    property_name: str = "band_gap",
    units: str = "eV",
    nonnegative: bool = True,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    val_fraction: float = 0.1,
    hidden_dim: int = 128,
    atom_layers: int = 2,
    head_layers: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> tuple[PropertySurrogate, dict[str, Any]]:
    """Train a :class:`PropertySurrogate` on a dataset's property values.

    The VAE encodes every structure once (posterior means, no augmentation); entries with a
    non-finite target are dropped (counted). A random ``val_fraction`` is held out; the
    weights of the epoch with the lowest validation MAE are kept.

    Parameters
    ----------
    generator
        Generator whose (frozen) VAE provides the latents.
    structures, targets
        Training crystals and property values.
    property_name, units, nonnegative
        Metadata / output clamping.
    epochs, batch_size, lr, weight_decay
        AdamW optimisation on MSE of standardised targets (Note S1: batch 256, lr 1e-3).
    val_fraction
        Held-out fraction (Note S1: 0.1).
    hidden_dim, atom_layers, head_layers
        Architecture.
    seed, device, progress
        Randomness, device, tqdm bar.

    Returns
    -------
    (PropertySurrogate, dict)
        The model (eval mode, on ``device``) and the history: per-epoch ``train_loss``,
        ``train_mae``, ``val_mae``, and ``best_epoch``, ``best_val_mae``, ``final_train_mae``,
        ``baseline_val_mae`` (predicting the training mean), ``n_train``, ``n_val``,
        ``n_dropped``.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    y_all = np.asarray(targets, dtype=np.float64)
    if len(y_all) != len(structures):
        raise ValueError("structures and targets differ in length")
    keep = [i for i in range(len(y_all)) if np.isfinite(y_all[i]) and structures[i] is not None
            and len(structures[i]) <= generator.max_atoms]
    if len(keep) < 10:
        raise ValueError(f"only {len(keep)} structures with a finite {property_name!r}: "
                         "need at least 10 to train a surrogate")
    t0 = time.perf_counter()
    z, mask = encode_structures(generator, [structures[i] for i in keep], 512, device)
    y = torch.as_tensor(y_all[keep], dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(keep), generator=g)
    n_val = max(1, int(round(val_fraction * len(keep)))) if val_fraction > 0 else 0
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    torch.manual_seed(seed)
    model = PropertySurrogate(z.shape[-1], hidden_dim, atom_layers, head_layers, property_name,
                              units, nonnegative).to(device)
    mu, sd = y[tr_idx].mean(), y[tr_idx].std().clamp_min(1e-6)
    model.target_mean.fill_(float(mu))
    model.target_std.fill_(float(sd))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    zt, mt, yt = z.to(device), mask.to(device), y.to(device)

    def mae(idx: torch.Tensor) -> float:
        if len(idx) == 0:
            return math.nan
        model.eval()
        with torch.no_grad():
            err = []
            for k in range(0, len(idx), 2048):
                b = idx[k : k + 2048].to(device)
                err.append((model.predict_latents(zt[b], mt[b]) - yt[b]).abs().cpu())
        model.train()
        return float(torch.cat(err).mean())

    hist: dict[str, Any] = {"train_loss": [], "train_mae": [], "val_mae": []}
    best = (math.inf, -1, None)
    disable = None if progress is None else not progress
    for epoch in tqdm(range(epochs), desc=f"surrogate {property_name}", disable=disable,
                      leave=False):
        model.train()
        order = tr_idx[torch.randperm(len(tr_idx), generator=g)]
        losses = []
        for k in range(0, len(order), batch_size):
            b = order[k : k + batch_size].to(device)
            pred = model(zt[b], mt[b])
            loss = ((pred - (yt[b] - model.target_mean) / model.target_std) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
        hist["train_loss"].append(float(np.mean(losses)))
        hist["train_mae"].append(mae(tr_idx))
        v = mae(val_idx) if n_val else hist["train_mae"][-1]
        hist["val_mae"].append(v)
        if v < best[0]:
            best = (v, epoch, copy.deepcopy(model.state_dict()))
    if best[2] is not None:
        model.load_state_dict(best[2])
    model.eval()
    base = float((y[val_idx] - mu).abs().mean()) if n_val else math.nan
    hist.update({
        "best_epoch": best[1], "best_val_mae": best[0], "final_train_mae": mae(tr_idx),
        "baseline_val_mae": base, "n_train": len(tr_idx), "n_val": n_val,
        "n_dropped": len(structures) - len(keep), "wall_time_s": time.perf_counter() - t0,
        "property_name": property_name, "units": units,
    })
    model.metadata = {k: hist[k] for k in ("best_epoch", "best_val_mae", "final_train_mae",
                                           "baseline_val_mae", "n_train", "n_val")}
    logger.info("surrogate %s: train MAE %.3f, val MAE %.3f (mean baseline %.3f) %s",
                property_name, hist["final_train_mae"], best[0], base, units)
    return model, hist
