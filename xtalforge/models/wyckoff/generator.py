"""The Wyckoff transformer as a generator family (a ``CrystalGenerator``).

Public API
----------
``WyckoffTransformerGenerator(config)`` (an ``nn.Module`` with ``.model``)
    ``sample(n, conditions, seed, device, batch_size)`` and ``generate(n, num_atoms=None,
    seed=0, batch_size=1000, device="cpu", space_group=None, ...)`` (the latent diffusion
    generator's signature, so the sampling and screening code calls either);
    ``rollout`` / ``log_prob`` for RL; ``sample_sequences`` / ``decode``;
    ``embed_structures``; ``save(path) -> sha256`` / ``load(path)``.

Space groups are drawn from the training distribution (``fit_space_group_distribution``) or
fixed per sample; the atom count condition is exact (primitive cell). Sampling runs in batches
on the device; decoding to pymatgen runs on the CPU, in ``decode_workers`` processes when set.

A checkpoint is one ``torch.save`` file of plain containers and tensors (``weights_only``):
format tag, config, state dict (with the space-group histogram).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xtalforge.models.interface import GeneratorRollout, SampleConditions, SampledCrystals
from xtalforge.models.wyckoff.model import (
    SequenceBatch,
    WyckoffTransformer,
    WyckoffTransformerConfig,
)

__all__ = ["WYCKOFF_CHECKPOINT_FORMAT", "WyckoffGenerationResult", "WyckoffTransformerGenerator",
           "decode_sequences", "tokenize_structures"]

logger = logging.getLogger(__name__)

WYCKOFF_CHECKPOINT_FORMAT = "xtalforge.wyckoff_transformer/1"


@dataclass
class WyckoffGenerationResult(SampledCrystals):
    """:class:`SampledCrystals` plus the token sequences (a ``SequenceBatch`` on the CPU)."""

    sequences: SequenceBatch | None = field(default=None, repr=False)


def _decode_chunk(seqs: list, primitive: bool) -> tuple[list, list]:
    """Structures and failure reasons of a list of sequences (worker-process entry point)."""
    from xtalforge.models.wyckoff.tokenizer import TokenizeError, sequence_to_structure

    structures, reasons = [], []
    for seq in seqs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = sequence_to_structure(seq, primitive=primitive)
            structures.append(s)
            reasons.append(None)
        except (TokenizeError, ValueError) as exc:
            structures.append(None)
            reasons.append(f"{type(exc).__name__}: {exc}")
    return structures, reasons


_DECODE_POOLS: dict[int, Any] = {}


def _decode_pool(workers: int) -> Any:
    """Return a pool of ``workers`` decoder processes, started once per process and reused."""
    if workers not in _DECODE_POOLS:
        import atexit
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: never fork a process holding a CUDA context
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        _DECODE_POOLS[workers] = pool
        atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    return _DECODE_POOLS[workers]


def decode_sequences(batch: SequenceBatch, primitive: bool = True, workers: int = 0
                     ) -> tuple[list, list]:
    """Structures (or ``None``) and failure reasons of a batch of sequences.

    Parameters
    ----------
    batch
        Sampled sequences.
    primitive
        Reduce each crystal to its primitive cell.
    workers
        Decode in that many worker processes (a pool kept for the process's lifetime): the
        assembly of a pymatgen structure (about 10 ms a crystal on one core) otherwise bounds
        GPU sampling. ``0``: in this process. The result is the same either way.
    """
    seqs = batch.to_sequences()
    if workers <= 0 or len(seqs) < 2 * workers:
        return _decode_chunk(seqs, primitive)
    per = -(-len(seqs) // (4 * workers))  # a few chunks per worker evens out their load
    try:
        futs = [_decode_pool(workers).submit(_decode_chunk, seqs[k : k + per], primitive)
                for k in range(0, len(seqs), per)]
        structures, reasons = [], []
        for f in futs:
            s, r = f.result()
            structures += s
            reasons += r
        return structures, reasons
    except Exception as exc:  # noqa: BLE001 - a broken pool: decode here
        logger.warning("decode workers failed (%s); decoding in-process", exc)
        _DECODE_POOLS.pop(workers, None)
        return _decode_chunk(seqs, primitive)


def tokenize_structures(structures: Sequence, max_sites: int, max_atoms: int | None = None,
                        symprec: float = 0.01, progress: bool | None = None
                        ) -> tuple[list, list[str | None]]:
    """Wyckoff sequences of ``structures`` (``None`` + a reason for those that do not fit).

    A structure fails when it is ``None``, cannot be symmetrised, has more than ``max_sites``
    inequivalent sites or more than ``max_atoms`` atoms in its primitive cell.
    """
    from tqdm.auto import tqdm

    from xtalforge.models.wyckoff.tokenizer import TokenizeError, structure_to_sequence

    seqs: list = []
    reasons: list[str | None] = []
    disable = None if progress is None else not progress
    for s in tqdm(structures, desc="tokenize", disable=disable, leave=False):
        if s is None:
            seqs.append(None)
            reasons.append("input is None")
            continue
        try:
            q = structure_to_sequence(s, symprec=symprec)
        except TokenizeError as exc:
            seqs.append(None)
            reasons.append(str(exc))
            continue
        if len(q) > max_sites:
            seqs.append(None)
            reasons.append(f"{len(q)} Wyckoff sites > max_sites {max_sites}")
        elif max_atoms is not None and q.num_atoms > max_atoms:
            seqs.append(None)
            reasons.append(f"{q.num_atoms} atoms > max_atoms {max_atoms}")
        else:
            seqs.append(q)
            reasons.append(None)
    return seqs, reasons


class WyckoffTransformerGenerator(nn.Module):
    """Space-group-aware autoregressive generator (Cao & Wang 2025).

    Parameters
    ----------
    config
        :class:`~xtalforge.models.wyckoff.model.WyckoffTransformerConfig`.
    """

    family = "wyckoff_transformer"
    supported_conditions = frozenset({"num_atoms", "space_group"})

    def __init__(self, config: WyckoffTransformerConfig | None = None) -> None:
        super().__init__()
        self.config = config or WyckoffTransformerConfig()
        self.model = WyckoffTransformer(self.config)
        #: worker processes that assemble sampled sequences into pymatgen structures
        #: (:func:`decode_sequences`); 0 decodes in this process
        self.decode_workers = 0

    @property
    def max_atoms(self) -> int:
        """Largest primitive cell the model makes."""
        return self.config.max_atoms

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.model.device

    def fit_space_group_distribution(self, groups) -> None:
        """Space-group histogram of the training data (sampling distribution)."""
        self.model.fit_space_group_distribution(groups)

    # ------------------------------------------------------------------ sampling
    def _conditions(self, n: int, conditions: SampleConditions | None, seed: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = conditions or SampleConditions()
        c.check(n, self.supported_conditions, self.family)
        gen = torch.Generator().manual_seed(int(seed))
        if c.space_group is None:
            groups = self.model.sample_space_groups(n, gen)
        else:
            groups = torch.as_tensor(np.asarray(c.space_group), dtype=torch.long).flatten()
            if (groups < 1).any() or (groups > 230).any():
                raise ValueError("space groups must be in 1..230")
        if c.num_atoms is None:
            na = torch.full((n,), -1, dtype=torch.long)
        else:
            na = torch.as_tensor(np.asarray(c.num_atoms), dtype=torch.long).flatten()
            bad = sorted({(int(g), int(a)) for g, a in zip(groups, na, strict=True)
                          if not self.model.check_num_atoms(int(g), int(a))})
            if bad:
                raise ValueError(f"(space group, atom count) pairs with no Wyckoff combination "
                                 f"within {self.config.max_sites} sites: {bad[:5]}")
        return groups, na

    @torch.no_grad()
    def sample_sequences(self, n: int, conditions: SampleConditions | None = None, *,
                         seed: int = 0, device: str | torch.device = "cpu",
                         batch_size: int = 1000, temperature: float = 1.0,
                         progress: bool | None = None, use_cache: bool = True
                         ) -> tuple[SequenceBatch, torch.Tensor]:
        """Sample ``n`` token sequences and their log-probabilities (reproducible per seed).

        ``use_cache=False`` decodes without the key/value cache (the full prefix per token;
        same draws up to rounding, slower; see :meth:`WyckoffTransformer.sample`).

        Returns
        -------
        (SequenceBatch, Tensor)
            On ``device``.
        """
        from tqdm.auto import tqdm

        device = torch.device(device)
        self.to(device)
        self.model.eval()
        groups, na = self._conditions(n, conditions, seed)
        out, lps = [], []
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed) + 1)
            disable = None if progress is None else not progress
            for start in tqdm(range(0, n, batch_size), desc="sample", disable=disable,
                              leave=False):
                sl = slice(start, start + batch_size)
                b, lp = self.model.sample(groups[sl].to(device), na[sl].to(device), temperature,
                                          use_cache=use_cache)
                out.append(b)
                lps.append(lp)
        return SequenceBatch.cat(out), torch.cat(lps)

    def decode(self, batch: SequenceBatch, primitive: bool = True) -> tuple[list, list]:
        """Structures and failure reasons of sampled sequences (see :func:`decode_sequences`)."""
        return decode_sequences(batch.to("cpu"), primitive=primitive,
                                workers=self.decode_workers)

    def sample(self, n: int, conditions: SampleConditions | None = None, *, seed: int = 0,
               device: str | torch.device = "cpu", batch_size: int = 1000,
               temperature: float = 1.0, progress: bool | None = None
               ) -> WyckoffGenerationResult:
        """Draw ``n`` crystals (:class:`~xtalforge.models.interface.CrystalGenerator`)."""
        t0 = time.perf_counter()
        seqs, lp = self.sample_sequences(n, conditions, seed=seed, device=device,
                                         batch_size=batch_size, temperature=temperature,
                                         progress=progress)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        seqs = seqs.to("cpu")
        structures, reasons = self.decode(seqs)
        t2 = time.perf_counter()
        from xtalforge.models.wyckoff.symmetry import wyckoff_tables

        t = wyckoff_tables()
        g = seqs.group.numpy()
        conv = t.multiplicity[g[:, None], seqs.letters.numpy()].sum(1)
        n_bad = sum(r is not None for r in reasons)
        if n_bad:
            logger.info("sample: %d/%d sequences did not give a crystal", n_bad, n)
        return WyckoffGenerationResult(
            structures=structures, reasons=reasons, num_atoms=conv // t.centering[g],
            space_groups=g, log_probs=lp.cpu().numpy(),
            timings={"sample_tokens": t1 - t0, "to_structures": t2 - t1},
            settings={"n": n, "seed": seed, "batch_size": batch_size, "device": str(device),
                      "temperature": temperature, "family": self.family,
                      "space_group": "given" if conditions and conditions.space_group is not None
                      else "training distribution"},
            sequences=seqs)

    def generate(self, n: int, num_atoms=None, seed: int = 0, batch_size: int = 1000,
                 device: str | torch.device = "cpu", space_group=None,
                 temperature: float = 1.0, progress: bool | None = None, **sampler_settings
                 ) -> WyckoffGenerationResult:
        """Sample with the latent diffusion generator's ``generate`` signature (:meth:`sample`).

        ``space_group`` (an int or ``n`` ints) fixes the groups. Diffusion settings
        (``steps``, ``eta``, ``dtype``, ``use_ema`` ...) have no meaning here and are recorded
        as ignored.
        """
        sg = space_group
        if sg is not None and np.ndim(sg) == 0:
            sg = [int(sg)] * n
        res = self.sample(n, SampleConditions(num_atoms=num_atoms, space_group=sg), seed=seed,
                          device=device, batch_size=batch_size, temperature=temperature,
                          progress=progress)
        if sampler_settings:
            res.settings["ignored_settings"] = sorted(sampler_settings)
        return res

    # ------------------------------------------------------------------ RL
    def rollout(self, n: int, conditions: SampleConditions | None = None, *, seed: int = 0,
                device: str | torch.device = "cpu", batch_size: int | None = None
                ) -> GeneratorRollout:
        """Sample with recorded log-probabilities; the payload is the ``SequenceBatch``."""
        seqs, lp = self.sample_sequences(n, conditions, seed=seed, device=device,
                                         batch_size=batch_size or n)
        structures, reasons = self.decode(seqs)
        return GeneratorRollout(structures, reasons, lp.detach(), seqs,
                                groups=seqs.group.cpu().numpy())

    def log_prob(self, rollout: GeneratorRollout | SequenceBatch) -> torch.Tensor:
        """Exact log-probabilities ``[n]`` under the current parameters (differentiable)."""
        b = rollout.payload if isinstance(rollout, GeneratorRollout) else rollout
        return self.model.log_prob(b.to(self.device))

    # ------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def embed_structures(self, structures: Sequence, batch_size: int = 512,
                         device: str | torch.device | None = None) -> np.ndarray:
        """Mean-pooled transformer states ``[n, d_model]`` of the tokenised structures.

        NaN rows for ``None`` and for structures that cannot be tokenised.
        """
        device = torch.device(device) if device is not None else self.device
        self.to(device)
        self.model.eval()
        out = np.full((len(structures), self.config.d_model), np.nan, dtype=np.float32)
        seqs, _ = tokenize_structures(structures, self.config.max_sites)
        idx = [i for i, q in enumerate(seqs) if q is not None]
        for start in range(0, len(idx), batch_size):
            part = idx[start : start + batch_size]
            b = SequenceBatch.from_sequences([seqs[i] for i in part], self.config.max_sites)
            out[part] = self.model.embed(b.to(device)).float().cpu().numpy()
        return out

    # ------------------------------------------------------------------ persistence
    def checkpoint_dict(self) -> dict:
        """Checkpoint payload (plain containers and CPU tensors)."""
        return {"format": WYCKOFF_CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "versions": {"torch": str(torch.__version__)}}

    def save(self, path: str | Path) -> str:
        """Write a single-file checkpoint; return its sha256 (hex)."""
        from xtalforge.models.generator import file_sha256

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.checkpoint_dict(), path)
        digest = file_sha256(path)
        logger.info("saved Wyckoff transformer checkpoint %s (sha256 %s)", path, digest)
        return digest

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu"
             ) -> WyckoffTransformerGenerator:
        """Load a checkpoint written by :meth:`save` (``weights_only=True``)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or ckpt.get("format") != WYCKOFF_CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a {WYCKOFF_CHECKPOINT_FORMAT} checkpoint")
        gen = cls(WyckoffTransformerConfig.from_dict(ckpt["config"]))
        gen.model.load_state_dict(ckpt["model"])
        return gen.to(map_location).eval()
