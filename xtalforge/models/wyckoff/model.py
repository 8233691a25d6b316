"""Space-group-aware autoregressive Wyckoff transformer (Cao et al. 2024; Cao & Wang 2025).

Sequence
--------
``[G, W_0, A_0, X_0, Y_0, Z_0, W_1, ..., Z_{n-1}, W_n]`` then the lattice: the space group
``G`` (a condition, drawn from the training distribution or fixed by the user), per
symmetry-inequivalent site its Wyckoff letter ``W``, element ``A`` and fractional coordinates,
then the lattice parameters. ``W = 0`` ends the sites (every later slot is padding); the lattice
is predicted from the transformer output at that end token. Every token is predicted from the
output at the token before it (causal attention).

Distributions (all masked so that every sample is a valid Wyckoff sequence)
----------------------------------------------------------------------------
``W``
    Categorical over the group's letters. Letters never decrease along the sequence (sites are
    sorted by letter in the data); a letter without free coordinates is used at most once (two
    atoms on one fixed point would overlap); the conventional-cell atom count stays within
    ``max_atoms`` x the centring factor; ending is allowed after the first site. With an atom
    count condition, only letters from which that exact count stays reachable are allowed (a
    dynamic programme over the group's multiplicities).
``A``
    Categorical over the elements of the training data (all 118 until fitted).
``X, Y, Z``
    Mixture of ``K_x`` von Mises distributions on ``[0, 1)`` for each *free* coordinate of the
    letter's representative (``x, x, 1/4`` has one); the others are fixed by the letter and
    the earlier free coordinates (the representative is a projection), carry no probability
    and enter the transformer as a learned "constrained" embedding.
``lattice``
    Mixture of ``K_l`` diagonal Gaussians over ``(log a', log b', log c', alpha, beta,
    gamma)`` with ``a' = a / N^(1/3)`` (``N`` atoms in the conventional cell) and angles in
    radians; only the crystal system's free parameters carry probability, the others are tied
    or fixed (:func:`~xtalforge.models.wyckoff.symmetry.symmetrize_lattice`).

:meth:`WyckoffTransformer.log_prob` is the exact log-density of a sequence given its space
group (and atom count condition) under these masked distributions: the sum over the letters
(including the end token), elements, free coordinates and free lattice parameters. It is what
sampling records, so a sample's recorded log-probability equals its teacher-forced one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xtalforge.models.wyckoff.symmetry import MAX_LETTERS, wyckoff_tables

__all__ = ["SequenceBatch", "WyckoffTransformer", "WyckoffTransformerConfig"]

NUM_ELEMENTS = 118
_N_W = MAX_LETTERS + 1  # letters + padding


@dataclass
class WyckoffTransformerConfig:
    """Sizes of a :class:`WyckoffTransformer` (Cao & Wang 2025 Table S1 in ``paper()``).

    Attributes
    ----------
    max_sites
        Symmetry-inequivalent sites per crystal (the paper's atom sequence is 21 with padding).
    max_atoms
        Largest primitive cell the model may generate (MP-20: 20).
    d_model, num_layers, num_heads, ff_dim, dropout
        Transformer sizes (dropout is used in pretraining only).
    embed_dim
        Embedding size of the discrete inputs (space group, Wyckoff position, element).
    num_coord_modes, num_lattice_modes
        ``K_x`` von Mises modes per coordinate and ``K_l`` lattice Gaussian modes.
    num_fourier
        Fourier frequencies of the coordinate inputs.
    """

    max_sites: int = 20
    max_atoms: int = 20
    d_model: int = 256
    num_layers: int = 8
    num_heads: int = 8
    ff_dim: int = 1024
    dropout: float = 0.1
    embed_dim: int = 64
    num_coord_modes: int = 16
    num_lattice_modes: int = 4
    num_fourier: int = 5

    @classmethod
    def tiny(cls) -> WyckoffTransformerConfig:
        """Return a model of a few ten thousand parameters (CPU tests)."""
        return cls(d_model=32, num_layers=2, num_heads=2, ff_dim=64, embed_dim=16,
                   num_coord_modes=4, num_lattice_modes=2, dropout=0.0)

    @classmethod
    def medium(cls) -> WyckoffTransformerConfig:
        """About 4.5 M parameters (d 256, 8 layers)."""
        return cls()

    @classmethod
    def paper(cls) -> WyckoffTransformerConfig:
        """Cao & Wang 2025 Table S1: 16 layers, 16 heads, K_x 16, K_l 4, 5 frequencies.

        The paper's model size 64 with key size 64 x 16 heads is a 1024-wide attention; here
        the residual stream is 512 wide with 16 heads of 32 (about 50 M parameters).
        """
        return cls(d_model=512, num_layers=16, num_heads=16, ff_dim=2048, embed_dim=32,
                   max_sites=21)

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WyckoffTransformerConfig:
        """Inverse of :meth:`to_dict` (unknown keys rejected)."""
        return cls(**d)


def wyckoff_preset(model: str | dict, max_atoms: int = 20) -> WyckoffTransformerConfig:
    """Return the Wyckoff transformer config of a preset (``tiny``, ``medium``, ``paper``).

    Parameters
    ----------
    model
        Preset name, or a :meth:`WyckoffTransformerConfig.to_dict` dict (used as is).
    max_atoms
        Largest primitive cell the preset is set to generate.

    Returns
    -------
    WyckoffTransformerConfig
        A new config.

    Raises
    ------
    ValueError
        For an unknown preset name (the message lists the known ones).
    """
    if isinstance(model, dict):
        return WyckoffTransformerConfig.from_dict(model)
    presets = {"tiny": WyckoffTransformerConfig.tiny, "medium": WyckoffTransformerConfig.medium,
               "paper": WyckoffTransformerConfig.paper}
    if model not in presets:
        raise ValueError(f"unknown Wyckoff transformer preset {model!r}: use one of "
                         f"{sorted(presets)}")
    cfg = presets[model]()
    cfg.max_atoms = max_atoms
    return cfg


@dataclass
class SequenceBatch:
    """Padded tensors of a batch of Wyckoff sequences (slot ``max_sites`` is always padding).

    Attributes
    ----------
    group
        ``[B]`` space groups.
    letters, elements
        ``[B, S + 1]`` letter indices / atomic numbers (0 = padding).
    coords
        ``[B, S + 1, 3]`` fractional coordinates (0 in padding).
    lattice
        ``[B, 6]`` lattice tokens ``(log a', log b', log c', alpha, beta, gamma)`` (radians).
    num_atoms
        ``[B]`` atom count condition (primitive cell) or ``-1`` for none.
    """

    group: torch.Tensor
    letters: torch.Tensor
    elements: torch.Tensor
    coords: torch.Tensor
    lattice: torch.Tensor
    num_atoms: torch.Tensor

    def __len__(self) -> int:
        return int(self.group.shape[0])

    def to(self, device: str | torch.device) -> SequenceBatch:
        """Move every tensor."""
        return SequenceBatch(*(getattr(self, k).to(device) for k in self._keys()))

    def __getitem__(self, idx) -> SequenceBatch:
        return SequenceBatch(*(getattr(self, k)[idx] for k in self._keys()))

    @staticmethod
    def _keys() -> tuple[str, ...]:
        return ("group", "letters", "elements", "coords", "lattice", "num_atoms")

    @classmethod
    def cat(cls, batches: list[SequenceBatch]) -> SequenceBatch:
        """Concatenate batches (same ``max_sites``)."""
        return cls(*(torch.cat([getattr(b, k) for b in batches]) for k in cls._keys()))

    @classmethod
    def from_sequences(cls, seqs: list, max_sites: int, condition_num_atoms: bool = False
                       ) -> SequenceBatch:
        """Pad :class:`~xtalforge.models.wyckoff.tokenizer.WyckoffSequence` objects.

        Raises
        ------
        ValueError
            When a sequence has more than ``max_sites`` sites.
        """
        b = len(seqs)
        g = torch.zeros(b, dtype=torch.long)
        w = torch.zeros(b, max_sites + 1, dtype=torch.long)
        a = torch.zeros(b, max_sites + 1, dtype=torch.long)
        x = torch.zeros(b, max_sites + 1, 3)
        lat = torch.zeros(b, 6)
        na = torch.full((b,), -1, dtype=torch.long)
        for i, s in enumerate(seqs):
            n = len(s)
            if n > max_sites:
                raise ValueError(f"sequence {i} has {n} sites > max_sites {max_sites}")
            g[i] = s.group
            w[i, :n] = torch.as_tensor(s.letters)
            a[i, :n] = torch.as_tensor(s.elements)
            x[i, :n] = torch.as_tensor(s.coords, dtype=torch.float32)
            lat[i] = lattice_to_tokens(np.asarray(s.lattice), s.num_atoms_conventional)
            if condition_num_atoms:
                na[i] = s.num_atoms
        return cls(g, w, a, x, lat, na)

    def to_sequences(self) -> list:
        """Back to :class:`~xtalforge.models.wyckoff.tokenizer.WyckoffSequence` objects."""
        from xtalforge.models.wyckoff.symmetry import symmetrize_lattice
        from xtalforge.models.wyckoff.tokenizer import WyckoffSequence

        t = wyckoff_tables()
        out = []
        g = self.group.cpu().numpy()
        w, a = self.letters.cpu().numpy(), self.elements.cpu().numpy()
        x, lat = self.coords.double().cpu().numpy(), self.lattice.double().cpu().numpy()
        for i in range(len(g)):
            n = int((w[i] > 0).sum())
            conv = int(t.multiplicity[g[i], w[i, :n]].sum())
            params = symmetrize_lattice(t.lattice_type[g[i]], tokens_to_lattice(lat[i], conv))
            out.append(WyckoffSequence(int(g[i]), w[i, :n], a[i, :n], x[i, :n], params))
        return out


@dataclass
class _KVCache:
    """Keys and values ``[B, heads, T, d_head]`` per layer and the outputs ``[B, d]`` so far."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    outputs: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        """Positions fed so far."""
        return len(self.outputs)


def lattice_to_tokens(params: np.ndarray, num_atoms_conventional: int) -> torch.Tensor:
    """Map ``(a, b, c, alpha, beta, gamma)`` (Å, degrees) to ``(log a', ..., radians)``."""
    p = np.asarray(params, dtype=float)
    scale = max(int(num_atoms_conventional), 1) ** (1.0 / 3.0)
    return torch.as_tensor(np.concatenate([np.log(p[:3] / scale), np.radians(p[3:])]),
                           dtype=torch.float32)


def tokens_to_lattice(tokens: np.ndarray, num_atoms_conventional: int) -> np.ndarray:
    """Inverse of :func:`lattice_to_tokens`."""
    t = np.asarray(tokens, dtype=float)
    scale = max(int(num_atoms_conventional), 1) ** (1.0 / 3.0)
    with np.errstate(over="ignore"):
        return np.concatenate([np.exp(t[:3]) * scale, np.degrees(t[3:])])


def _vm_log_prob(x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor
                 ) -> torch.Tensor:
    """Log-density on [0, 1) of a von Mises mixture at ``x`` (``[...]``; params ``[..., K]``)."""
    theta = 2 * math.pi * x.unsqueeze(-1)
    # log vM(theta) + log(2 pi) (change of variables theta = 2 pi x); log I0(k) = log i0e(k) + k
    comp = kappa * (torch.cos(theta - mu) - 1.0) - torch.log(torch.special.i0e(kappa))
    return torch.logsumexp(F.log_softmax(logits, -1) + comp, -1)


def _gmm_log_prob(y: torch.Tensor, logits: torch.Tensor, mean: torch.Tensor,
                  log_std: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Log-density of the free dims of ``y`` ``[B, 6]`` under a diagonal GMM ``[B, K(, 6)]``."""
    z = (y.unsqueeze(1) - mean) / log_std.exp()
    comp = -0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)  # [B, K, 6]
    comp = (comp * free.unsqueeze(1)).sum(-1)
    return torch.logsumexp(F.log_softmax(logits, -1) + comp, -1)


class _Reachability:
    """Which exact conventional atom counts remain reachable (atom count conditioning)."""

    def __init__(self, max_sites: int, max_atoms: int) -> None:
        self.max_sites, self.max_atoms = max_sites, max_atoms
        self._cache: dict[int, np.ndarray] = {}

    def table(self, g: int) -> np.ndarray:
        """Return ``f[l, s, r]``: can ``r`` atoms be made from letters >= l with ``s`` sites.

        Letters without free coordinates are used at most once; the shape is
        ``[n_letters + 2, max_sites + 1, R + 1]``.
        """
        if g in self._cache:
            return self._cache[g]
        t = wyckoff_tables()
        n_l = int(t.num_letters[g])
        r_max = self.max_atoms * int(t.centering[g])
        f = np.zeros((n_l + 2, self.max_sites + 1, r_max + 1), dtype=bool)
        f[:, :, 0] = True
        for s in range(1, self.max_sites + 1):
            for letter in range(n_l, 0, -1):
                m = int(t.multiplicity[g, letter])
                nxt = letter + 1 if t.dof[g, letter] == 0 else letter
                row = f[letter + 1, s].copy()
                if m <= r_max:
                    row[m:] |= f[nxt, s - 1, : r_max + 1 - m]
                f[letter, s] = row
        self._cache[g] = f
        return f


class WyckoffTransformer(nn.Module):
    """The network and its masked sequence distribution (see the module docstring).

    Parameters
    ----------
    config
        :class:`WyckoffTransformerConfig`.
    """

    def __init__(self, config: WyckoffTransformerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or WyckoffTransformerConfig()
        t = wyckoff_tables()
        d, e = cfg.d_model, cfg.embed_dim
        self.register_buffer("t_mult", torch.as_tensor(t.multiplicity), persistent=False)
        self.register_buffer("t_dof", torch.as_tensor(t.dof), persistent=False)
        self.register_buffer("t_free", torch.as_tensor(t.free), persistent=False)
        self.register_buffer("t_nlet", torch.as_tensor(t.num_letters), persistent=False)
        self.register_buffer("t_wpi", torch.as_tensor(t.wp_index), persistent=False)
        self.register_buffer("t_lfree", torch.as_tensor(t.lattice_free), persistent=False)
        self.register_buffer("t_cent", torch.as_tensor(t.centering), persistent=False)
        self.register_buffer("t_rot", torch.as_tensor(t.rotation, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("t_trans", torch.as_tensor(t.translation, dtype=torch.float32),
                             persistent=False)
        self.emb_group = nn.Embedding(231, e)
        self.emb_wp = nn.Embedding(t.num_wyckoff_positions + 1, e)
        self.emb_el = nn.Embedding(NUM_ELEMENTS + 1, e)
        self.proj_g = nn.Linear(e, d)
        self.proj_w = nn.Linear(e + 2, d)  # + log multiplicity, dof
        self.proj_a = nn.Linear(e, d)
        self.proj_x = nn.Linear(2 * cfg.num_fourier, d)
        self.x_fixed = nn.Parameter(torch.zeros(d))
        self.emb_type = nn.Embedding(6, d)
        self.emb_slot = nn.Embedding(cfg.max_sites + 1, d)
        layer = nn.TransformerEncoderLayer(d, cfg.num_heads, cfg.ff_dim, cfg.dropout,
                                           batch_first=True, norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head_w = nn.Linear(d, _N_W)
        self.head_a = nn.Linear(d, NUM_ELEMENTS + 1)
        self.head_x = nn.Linear(d, 3 * cfg.num_coord_modes)
        self.head_l = nn.Linear(d, cfg.num_lattice_modes * 13)
        counts = torch.zeros(231, dtype=torch.float64)
        counts[1:] = 1.0  # uniform until fitted
        self.register_buffer("space_group_counts", counts)
        allowed = torch.ones(NUM_ELEMENTS + 1, dtype=torch.bool)
        allowed[0] = False  # padding; every element until fitted
        self.register_buffer("element_allowed", allowed)
        self._reach = _Reachability(cfg.max_sites, cfg.max_atoms)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self.x_fixed.device

    @property
    def seq_len(self) -> int:
        """Tokens of a full sequence (``2 + 5 * max_sites``)."""
        return 2 + 5 * self.config.max_sites

    @torch.no_grad()
    def fit_space_group_distribution(self, groups) -> None:
        """Set the space-group histogram (sampling distribution) from training-set groups."""
        g = torch.as_tensor(np.asarray(groups), dtype=torch.long).flatten().cpu()
        if (g < 1).any() or (g > 230).any():
            raise ValueError("space groups must be in 1..230")
        self.space_group_counts.copy_(torch.bincount(g, minlength=231).double().to(
            self.space_group_counts.device))

    @torch.no_grad()
    def fit_element_vocabulary(self, elements) -> None:
        """Allow only the elements that occur in the training data (atomic numbers)."""
        z = torch.as_tensor(np.asarray(elements), dtype=torch.long).flatten().cpu()
        z = z[z > 0]
        if (z > NUM_ELEMENTS).any() or len(z) == 0:
            raise ValueError(f"atomic numbers must be in 1..{NUM_ELEMENTS}")
        allowed = torch.zeros(NUM_ELEMENTS + 1, dtype=torch.bool)
        allowed[z] = True
        self.element_allowed.copy_(allowed.to(self.element_allowed.device))

    def sample_space_groups(self, n: int, generator: torch.Generator | None = None
                            ) -> torch.Tensor:
        """Draw ``n`` space groups (CPU Long tensor) from the fitted histogram."""
        p = self.space_group_counts.detach().cpu().double()
        return torch.multinomial(p / p.sum(), n, replacement=True, generator=generator)

    def _fourier(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.arange(1, self.config.num_fourier + 1, device=x.device, dtype=x.dtype)
        ang = 2 * math.pi * x.unsqueeze(-1) * k
        return torch.cat([torch.sin(ang), torch.cos(ang)], -1)

    def _site_tokens(self, g: torch.Tensor, w: torch.Tensor, a: torch.Tensor, x: torch.Tensor,
                     first_slot: int = 0) -> torch.Tensor:
        """Embeddings ``[B, s, 5, d]`` of the ``(W, A, X, Y, Z)`` tokens of ``s`` slots.

        ``w``, ``a`` are ``[B, s]``, ``x`` is ``[B, s, 3]``; the slots start at ``first_slot``.
        The space-group condition is not added here.
        """
        s1 = w.shape[1]
        gw = g.unsqueeze(1).expand(-1, s1)
        mult = self.t_mult[gw, w].float()
        feat = torch.stack([torch.log1p(mult), self.t_dof[gw, w].float()], -1)
        tok_w = self.proj_w(torch.cat([self.emb_wp(self.t_wpi[gw, w]), feat], -1))
        tok_a = self.proj_a(self.emb_el(a))
        free = self.t_free[gw, w]  # [B, s, 3]
        fx = self.proj_x(self._fourier(x))  # [B, s, 3, d]
        tok_x = torch.where(free.unsqueeze(-1), fx, self.x_fixed)
        site = torch.cat([tok_w.unsqueeze(2), tok_a.unsqueeze(2), tok_x], 2)  # [B, s, 5, d]
        slots = self.emb_slot.weight[first_slot : first_slot + s1]
        return site + self.emb_type.weight[1:6] + slots.unsqueeze(1)

    def _tokens(self, b: SequenceBatch, length: int | None = None) -> torch.Tensor:
        """Input embeddings ``[B, T, d]`` of the first ``length`` tokens."""
        cfg = self.config
        bsz, s1 = b.letters.shape
        cond = self.proj_g(self.emb_group(b.group)).unsqueeze(1)  # conditions every token
        site = self._site_tokens(b.group, b.letters, b.elements, b.coords)
        site = site.reshape(bsz, s1 * 5, -1)[:, : 5 * cfg.max_sites + 1]  # ends at W_S
        tok = torch.cat([self.emb_type.weight[0].expand(bsz, 1, -1), site], 1) + cond
        return tok if length is None else tok[:, :length]

    def _token_at(self, b: SequenceBatch, pos: int) -> torch.Tensor:
        """Input embedding ``[B, d]`` of the token at position ``pos`` (as in :meth:`_tokens`)."""
        cond = self.proj_g(self.emb_group(b.group))
        if pos == 0:
            return self.emb_type.weight[0].expand(len(b), -1) + cond
        slot, part = divmod(pos - 1, 5)
        sl = slice(slot, slot + 1)
        site = self._site_tokens(b.group, b.letters[:, sl], b.elements[:, sl], b.coords[:, sl],
                                 first_slot=slot)
        return site[:, 0, part] + cond

    def hidden(self, b: SequenceBatch, length: int | None = None) -> torch.Tensor:
        """Return the transformer outputs ``[B, T, d]`` (causal) of the first ``length`` tokens."""
        x = self._tokens(b, length)
        t = x.shape[1]
        mask = torch.triu(torch.full((t, t), float("-inf"), device=x.device), 1)
        return self.norm(self.encoder(x, mask=mask, is_causal=True))

    def _new_cache(self, batch_size: int) -> _KVCache:
        """Return an empty key/value cache for ``batch_size`` sequences of ``seq_len`` tokens."""
        cfg = self.config
        shape = (batch_size, cfg.num_heads, self.seq_len, cfg.d_model // cfg.num_heads)
        dtype = self.x_fixed.dtype
        return _KVCache(
            keys=[torch.empty(shape, dtype=dtype, device=self.device)
                  for _ in range(cfg.num_layers)],
            values=[torch.empty(shape, dtype=dtype, device=self.device)
                    for _ in range(cfg.num_layers)])

    def _step(self, tok: torch.Tensor, cache: _KVCache) -> torch.Tensor:
        """Feed the next token ``[B, d]``; return its transformer output ``[B, d]``.

        The same computation as :meth:`hidden` for the last position (pre-norm encoder layers,
        causal attention) with the keys and values of the earlier positions read from
        ``cache`` instead of recomputed: one position per layer instead of the whole prefix.
        """
        pos = cache.length
        if pos >= self.seq_len:
            raise ValueError(f"the cache holds {self.seq_len} positions")
        x = tok.unsqueeze(1)  # [B, 1, d]
        bsz = x.shape[0]
        for layer, kc, vc in zip(self.encoder.layers, cache.keys, cache.values, strict=True):
            sa = layer.self_attn
            q, k, v = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
            q, k, v = (t.view(bsz, 1, sa.num_heads, -1).transpose(1, 2) for t in (q, k, v))
            kc[:, :, pos : pos + 1] = k
            vc[:, :, pos : pos + 1] = v
            att = F.scaled_dot_product_attention(
                q, kc[:, :, : pos + 1], vc[:, :, : pos + 1],
                dropout_p=sa.dropout if self.training else 0.0)
            x = x + layer.dropout1(sa.out_proj(att.transpose(1, 2).reshape(bsz, 1, -1)))
            ff = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(x)))))
            x = x + layer.dropout2(ff)
        if self.encoder.norm is not None:
            x = self.encoder.norm(x)
        out = self.norm(x[:, 0])
        cache.outputs.append(out)
        return out

    # ------------------------------------------------------------------ masks
    def letter_mask(self, group: torch.Tensor, prev: torch.Tensor, count: torch.Tensor,
                    slot: int, num_atoms: torch.Tensor) -> torch.Tensor:
        """Return the allowed letters ``[B, 28]`` at ``slot`` (previous letter, atom count).

        Parameters
        ----------
        group, prev, count
            ``[B]`` space groups, previous letters (0 at slot 0) and conventional atoms so far.
        slot
            Site slot (``max_sites``: only the end token).
        num_atoms
            ``[B]`` primitive atom count condition, ``-1`` for none.
        """
        cfg = self.config
        bsz = group.shape[0]
        letters = torch.arange(_N_W, device=group.device)
        if slot >= cfg.max_sites:
            m = torch.zeros(bsz, _N_W, dtype=torch.bool, device=group.device)
            m[:, 0] = True
            return m
        prev_fixed = (self.t_dof[group, prev] == 0) & (prev > 0)
        wmin = prev + prev_fixed.long()
        cap = cfg.max_atoms * self.t_cent[group]
        ok = (letters >= wmin.unsqueeze(1)) & (letters <= self.t_nlet[group].unsqueeze(1))
        ok &= letters >= 1
        ok &= (count.unsqueeze(1) + self.t_mult[group]) <= cap.unsqueeze(1)
        ok[:, 0] = slot > 0
        cond = num_atoms >= 0
        if bool(cond.any()):
            ok = ok.clone()
            for i in torch.nonzero(cond).flatten().tolist():
                ok[i] = self._exact_row(int(group[i]), int(wmin[i]), int(count[i]), slot,
                                        int(num_atoms[i]), ok.device)
        return ok

    def _exact_row(self, g: int, wmin: int, count: int, slot: int, n_prim: int, device
                   ) -> torch.Tensor:
        t = wyckoff_tables()
        f = self._reach.table(g)
        r = n_prim * int(t.centering[g]) - count
        row = torch.zeros(_N_W, dtype=torch.bool)
        row[0] = r == 0 and slot > 0
        s_left = self.config.max_sites - slot
        if r > 0 and s_left > 0 and r < f.shape[2]:
            for letter in range(max(wmin, 1), int(t.num_letters[g]) + 1):
                m = int(t.multiplicity[g, letter])
                nxt = letter + 1 if t.dof[g, letter] == 0 else letter
                if m <= r and f[nxt, s_left - 1, r - m]:
                    row[letter] = True
        return row.to(device)

    def check_num_atoms(self, group: int, num_atoms: int) -> bool:
        """Whether ``num_atoms`` (primitive) can be made in ``group`` within ``max_sites``."""
        t = wyckoff_tables()
        r = num_atoms * int(t.centering[group])
        f = self._reach.table(group)
        return 0 < r < f.shape[2] and bool(f[1, self.config.max_sites, r])

    # ------------------------------------------------------------------ heads
    def _coord_params(self, h: torch.Tensor):
        k = self.config.num_coord_modes
        o = self.head_x(h).float()
        return o[..., :k], o[..., k : 2 * k], F.softplus(o[..., 2 * k :]) + 1e-3

    def _lattice_params(self, h: torch.Tensor):
        k = self.config.num_lattice_modes
        o = self.head_l(h).float()
        logits, mean, log_std = o[..., :k], o[..., k : 7 * k], o[..., 7 * k :]
        mean = mean.reshape(*o.shape[:-1], k, 6)
        log_std = log_std.reshape(*o.shape[:-1], k, 6).clamp(-7.0, 3.0)
        return logits, mean, log_std

    @staticmethod
    def _masked_log_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits.float().masked_fill(~mask, float("-inf")), -1)

    # ------------------------------------------------------------------ likelihood
    def log_prob(self, b: SequenceBatch, return_parts: bool = False):
        """Exact log-probability ``[B]`` of each sequence given its group (and atom condition).

        Differentiable. With ``return_parts`` also returns ``{"wyckoff", "element", "coords",
        "lattice"}`` per-sample terms.
        """
        cfg = self.config
        h = self.hidden(b)  # [B, T, d]
        bsz, s1 = b.letters.shape
        g = b.group
        gw = g.unsqueeze(1).expand(-1, s1)
        # letters: predicted at positions 5i
        lw = self.head_w(h[:, 0 : 5 * cfg.max_sites + 1 : 5])  # [B, S1, 28]
        prev = torch.cat([torch.zeros_like(b.letters[:, :1]), b.letters[:, :-1]], 1)
        mult = self.t_mult[gw, b.letters]
        count = torch.cumsum(mult, 1) - mult
        lp_w = torch.zeros(bsz, device=h.device)
        started = torch.ones(bsz, dtype=torch.bool, device=h.device)  # before the end token
        for i in range(s1):
            mask = self.letter_mask(g, prev[:, i], count[:, i], i, b.num_atoms)
            lps = self._masked_log_softmax(lw[:, i], mask)
            term = lps.gather(1, b.letters[:, i : i + 1]).squeeze(1)
            lp_w = lp_w + torch.where(started, term, torch.zeros_like(term))
            started = started & (b.letters[:, i] > 0)
        real = b.letters > 0  # [B, S1]
        # elements: positions 5i + 1
        la = self.head_a(h[:, 1 : 5 * cfg.max_sites + 1 : 5])  # [B, S, 119]
        amask = self.element_allowed
        lpa = self._masked_log_softmax(la, amask).gather(
            2, b.elements[:, : cfg.max_sites].unsqueeze(-1)).squeeze(-1)
        lp_a = torch.where(real[:, : cfg.max_sites], lpa, torch.zeros_like(lpa)).sum(1)
        # coordinates: positions 5i + 2 + j predict coordinate j of site i
        hx = torch.stack([h[:, 2 + j : 5 * cfg.max_sites + 2 : 5] for j in range(3)], 2)
        logits, mu, kappa = self._coord_params(hx)  # [B, S, 3, K]
        lpx = _vm_log_prob(b.coords[:, : cfg.max_sites].float(), logits, mu, kappa)
        free = self.t_free[gw, b.letters][:, : cfg.max_sites]  # padding letters: none free
        lp_x = torch.where(free, lpx, torch.zeros_like(lpx)).sum((1, 2))
        # lattice: at the end token W_n, position 1 + 5 n
        n_sites = real.sum(1)
        hl = h[torch.arange(bsz, device=h.device), 1 + 5 * n_sites]
        lg, mean, log_std = self._lattice_params(hl)
        lp_l = _gmm_log_prob(b.lattice.float(), lg, mean, log_std, self.t_lfree[g].float())
        total = lp_w + lp_a + lp_x + lp_l
        if return_parts:
            return total, {"wyckoff": lp_w, "element": lp_a, "coords": lp_x, "lattice": lp_l}
        return total

    def nll_loss(self, b: SequenceBatch) -> dict[str, torch.Tensor]:
        """Mean negative log-likelihood per crystal and its parts (training loss)."""
        total, parts = self.log_prob(b, return_parts=True)
        out = {"loss": -total.mean()}
        out.update({f"nll_{k}": -v.mean().detach() for k, v in parts.items()})
        return out

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, group: torch.Tensor, num_atoms: torch.Tensor | None = None,
               temperature: float = 1.0, generator: torch.Generator | None = None,
               use_cache: bool = True) -> tuple[SequenceBatch, torch.Tensor]:
        """Sample one sequence per entry of ``group`` (on ``group.device``).

        Parameters
        ----------
        group
            ``[B]`` space groups.
        num_atoms
            ``[B]`` primitive atom counts to condition on (``-1``: none).
        temperature
            Softmax temperature of the discrete tokens (1: the model's distribution; only at
            1 is the returned log-probability that of the sampled distribution).
        generator
            Random number generator on ``group.device`` (default: the global one).
        use_cache
            Decode with a key/value cache (:meth:`_step`: each token costs one position
            through the layers). ``False`` recomputes the whole prefix for every token
            (:meth:`hidden`); both draw the same sequences from the same random state up to
            floating-point rounding.

        Returns
        -------
        (SequenceBatch, Tensor)
            The sequences and their log-probabilities ``[B]`` (exact at temperature 1).
        """
        cfg = self.config
        dev = group.device
        bsz, s1 = group.shape[0], cfg.max_sites + 1
        na = (torch.full((bsz,), -1, dtype=torch.long, device=dev) if num_atoms is None
              else num_atoms.to(dev).long())
        b = SequenceBatch(group, torch.zeros(bsz, s1, dtype=torch.long, device=dev),
                          torch.zeros(bsz, s1, dtype=torch.long, device=dev),
                          torch.zeros(bsz, s1, 3, device=dev), torch.zeros(bsz, 6, device=dev), na)
        cache = self._new_cache(bsz) if use_cache else None

        def out_at(pos: int) -> torch.Tensor:
            """Return the output ``[B, d]`` at position ``pos`` (its tokens are final)."""
            if cache is None:
                return self.hidden(b, pos + 1)[:, -1]
            while cache.length <= pos:
                self._step(self._token_at(b, cache.length), cache)
            return cache.outputs[pos]

        def draw(probs: torch.Tensor) -> torch.Tensor:
            return torch.multinomial(probs, 1, generator=generator).squeeze(1)

        logp = torch.zeros(bsz, device=dev)
        alive = torch.ones(bsz, dtype=torch.bool, device=dev)
        count = torch.zeros(bsz, dtype=torch.long, device=dev)
        prev = torch.zeros(bsz, dtype=torch.long, device=dev)
        amask = self.element_allowed
        for i in range(cfg.max_sites):
            h = out_at(5 * i)
            mask = self.letter_mask(group, prev, count, i, na)
            lps = self._masked_log_softmax(self.head_w(h), mask)
            w = draw((lps / temperature).softmax(-1))
            w = torch.where(alive, w, torch.zeros_like(w))
            logp += torch.where(alive, lps.gather(1, w[:, None]).squeeze(1), 0.0)
            alive = alive & (w > 0)
            b.letters[:, i] = w
            if not bool(alive.any()):
                break
            h = out_at(5 * i + 1)
            lps = self._masked_log_softmax(self.head_a(h), amask)
            a = draw((lps / temperature).softmax(-1))
            logp += torch.where(alive, lps.gather(1, a[:, None]).squeeze(1), 0.0)
            b.elements[:, i] = torch.where(alive, a, torch.zeros_like(a))
            free = self.t_free[group, w]  # [B, 3]
            for j in range(3):
                h = out_at(5 * i + 2 + j)
                logits, mu, kappa = self._coord_params(h)
                x = _sample_vm_mixture(logits, mu, kappa, generator)
                use = alive & free[:, j]
                logp += torch.where(use, _vm_log_prob(x, logits, mu, kappa), 0.0)
                b.coords[:, i, j] = torch.where(use, x, torch.zeros_like(x))
            # project onto the representative (free coordinates are unchanged)
            xp = torch.einsum("bij,bj->bi", self.t_rot[group, w], b.coords[:, i]) + \
                self.t_trans[group, w]
            b.coords[:, i] = torch.where(alive.unsqueeze(1), xp - torch.floor(xp), 0.0)
            count = count + torch.where(alive, self.t_mult[group, w], 0)
            prev = torch.where(alive, w, prev)
        # a crystal that used every slot ends with the forced end token (probability 1)
        n_sites = (b.letters > 0).sum(1)
        sel = torch.arange(bsz, device=dev)
        if cache is None:
            h = self.hidden(b)[sel, 1 + 5 * n_sites]
        else:
            out_at(1 + 5 * int(n_sites.max()))
            h = torch.stack(cache.outputs, 1)[sel, 1 + 5 * n_sites]
        lg, mean, log_std = self._lattice_params(h)
        k = draw(lg.softmax(-1))
        eps = torch.randn(bsz, 6, device=dev, generator=generator)
        y = mean[sel, k] + log_std[sel, k].exp() * eps
        y = _tie_lattice_tokens(y, self.t_lfree[group], group, self)
        logp += _gmm_log_prob(y, lg, mean, log_std, self.t_lfree[group].float())
        b.lattice = y
        return b, logp

    def embed(self, b: SequenceBatch) -> torch.Tensor:
        """Mean of the transformer outputs over each sequence's real tokens ``[B, d]``."""
        h = self.hidden(b)
        n_sites = (b.letters > 0).sum(1)
        pos = torch.arange(h.shape[1], device=h.device)
        keep = (pos.unsqueeze(0) <= (1 + 5 * n_sites).unsqueeze(1)).float().unsqueeze(-1)
        return (h * keep).sum(1) / keep.sum(1)


def _tie_lattice_tokens(y: torch.Tensor, free: torch.Tensor, group: torch.Tensor,
                        model: WyckoffTransformer) -> torch.Tensor:
    """Set the non-free lattice tokens from the free ones (tied lengths, fixed angles)."""
    t = wyckoff_tables()
    lt = [t.lattice_type[int(g)] for g in group.tolist()]
    hexa = torch.tensor([x in ("hexagonal", "trigonal") for x in lt], device=y.device)
    cubic = torch.tensor([x == "cubic" for x in lt], device=y.device)
    out = y.clone()
    out[:, 1] = torch.where(free[:, 1], y[:, 1], y[:, 0])
    out[:, 2] = torch.where(free[:, 2] | ~cubic, y[:, 2], y[:, 0])
    right = torch.full_like(y[:, 0], math.pi / 2)
    for j in (3, 4):
        out[:, j] = torch.where(free[:, j], y[:, j], right)
    out[:, 5] = torch.where(free[:, 5], y[:, 5],
                            torch.where(hexa, torch.full_like(right, 2 * math.pi / 3), right))
    return out


def _sample_vm_mixture(logits: torch.Tensor, mu: torch.Tensor, kappa: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw ``x`` in [0, 1) from a von Mises mixture (``[B, K]`` parameters)."""
    k = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
    sel = torch.arange(len(k), device=k.device)
    theta = _sample_von_mises(mu[sel, k].double(), kappa[sel, k].double(), generator).float()
    x = theta / (2 * math.pi)
    return x - torch.floor(x)


def _sample_von_mises(loc: torch.Tensor, kappa: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Von Mises draws (Best & Fisher 1979 rejection sampler, as ``torch.distributions``).

    ``torch.distributions.VonMises.sample`` takes no ``generator``; this is its algorithm
    (double precision, the Taylor form of the proposal for tiny concentrations) drawing from
    ``generator``. Returns angles in ``[-pi, pi)``.
    """
    tau = 1 + (1 + 4 * kappa**2).sqrt()
    rho = (tau - (2 * tau).sqrt()) / (2 * kappa)
    r = torch.where(kappa < 1e-5, 1 / kappa + kappa, (1 + rho**2) / (2 * rho))
    x = torch.zeros_like(loc)
    done = torch.zeros(loc.shape, dtype=torch.bool, device=loc.device)
    while not bool(done.all()):
        u1, u2, u3 = torch.rand((3, *loc.shape), dtype=loc.dtype, device=loc.device,
                                generator=generator).unbind()
        z = torch.cos(math.pi * u1)
        f = (1 + r * z) / (r + z)
        c = kappa * (r - f)
        accept = ~done & (((c * (2 - c) - u2) > 0) | ((c / u2).log() + 1 - c >= 0))
        x = torch.where(accept, (u3 - 0.5).sign() * f.acos(), x)
        done = done | accept
    return (x + math.pi + loc) % (2 * math.pi) - math.pi
