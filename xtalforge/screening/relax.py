"""Batched MLIP relaxation with torch-sim (FIRE with a cell filter, in-flight batching).

Many structures relax at once on one device: torch-sim's batched FIRE
(``frechet_cell_fire``, ``unit_cell_fire`` or fixed-cell ``fire``, the ``"ase_fire"`` flavour
that follows ASE's FIRE) moves every structure of a batch with one model call per step, and
its ``InFlightAutoBatcher`` swaps finished structures out and waiting ones in, so that the
batch stays full until the queue is empty. The loop around them is ours, because a campaign
needs per-structure bookkeeping that torch-sim's ``optimize`` runner does not keep:

* ``converged``: every atomic force and every cell force below ``fmax`` (the criterion of
  ASE's filters, whose cell forces are the virial divided by the number of atoms);
* ``n_steps``: optimiser steps taken by that structure (checked every ``check_every`` steps,
  so a structure may take up to ``check_every - 1`` steps past convergence);
* final energy, forces and stress, and the relaxed structure;
* ``error``: a structure whose energy or forces turn non-finite, whose forces exceed the
  model's ``force_threshold`` (explosion) or whose graph cannot be built is taken out of
  the batch with its reason; the others go on. Structures the model cannot handle at all
  (unknown element, empty) are recorded before the batch starts.

The energy model comes from the registry (:func:`xtalforge.screening.mlip.get_energy_model`),
which gives the torch-sim model of each MLIP (:meth:`EnergyModel.torchsim_model`).
The per-structure ASE path, :meth:`EnergyModel.relax`, stays as the reference.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from xtalforge.screening.mlip import EnergyModel, RelaxResult

logger = logging.getLogger(__name__)

__all__ = ["CELL_FILTERS", "BatchedExpmFrechet", "batched_expm_frechet", "relax_batched"]

#: cell filter names (ASE's and torch-sim's) -> torch-sim optimiser factory name
CELL_FILTERS = {
    "FrechetCellFilter": "frechet_cell_fire",
    "frechet": "frechet_cell_fire",
    "UnitCellFilter": "unit_cell_fire",
    "unit_cell": "unit_cell_fire",
    None: "fire",
    "none": "fire",
}



class BatchedExpmFrechet:
    """``torch_sim.math.expm_frechet`` for every system of a batch at once.

    torch-sim 0.3's Fréchet cell filter computes the cell forces of each system with a Python
    loop over the systems and the nine unit directions, one ``expm_frechet(logm_F[b], E_k)``
    call each (``check_finite`` included: two host synchronisations per call on a GPU). For a
    batch of 566 cells that is 5,094 calls per FIRE step. In a 1,000-structure relaxation
    round on an H100, graph building and the model took 9% of the time (about 0.5 s of the
    5 s a step); this loop is the per-system work of the rest.

    Called with views ``A = logm_F[b]`` and ``E = directions[k]`` (what that loop passes), this
    callable computes the Fréchet derivatives of all ``(b, k)`` pairs with one batched
    ``torch.linalg.matrix_exp`` of the block matrices ``[[A_b, E_k], [0, A_b]]``, whose upper
    right block is ``L(A_b, E_k)`` (torch-sim's own ``blockEnlarge`` method, batched), and
    answers the following calls from that result while ``logm_F`` and ``directions`` are the
    same, unmodified tensors (weak references and version counters guard the cache). Any other
    call, and any batch with a non-finite entry, goes to the original function unchanged.
    """

    def __init__(self, original: Any) -> None:
        self.original = original
        self._key: tuple[Any, int, Any, int] | None = None
        self._value: Any = None
        self.n_batched = 0
        self.n_calls_served = 0

    @staticmethod
    def _index(view: Any, base: Any) -> int | None:
        """``i`` such that ``view`` is ``base[i]`` (a contiguous row view), else ``None``."""
        if (base.dim() != view.dim() + 1 or tuple(base.shape[1:]) != tuple(view.shape)
                or tuple(base.stride()[1:]) != tuple(view.stride())
                or view.untyped_storage().data_ptr() != base.untyped_storage().data_ptr()):
            return None
        off = view.storage_offset() - base.storage_offset()
        if off < 0 or off % base.stride(0):
            return None
        i = off // base.stride(0)
        return i if i < base.shape[0] else None

    def __call__(self, A: Any, E: Any, method: str | None = None, compute_expm: bool = True,
                 check_finite: bool = True) -> Any:
        """``L(A, E)`` as ``torch_sim.math.expm_frechet`` returns it (see the class)."""
        import torch

        def unbatched() -> Any:
            return self.original(A, E, method=method, compute_expm=compute_expm,
                                 check_finite=check_finite)

        a, e = getattr(A, "_base", None), getattr(E, "_base", None)
        if (compute_expm or method not in (None, "SPS") or a is None or e is None
                or A.dim() != 2 or A.shape != E.shape or a.dtype != e.dtype
                or a.device != e.device):
            return unbatched()
        i, k = self._index(A, a), self._index(E, e)
        if i is None or k is None:
            return unbatched()
        key = self._key
        if (key is None or key[0]() is not a or key[1] != a._version or key[2]() is not e
                or key[3] != e._version):
            value = None
            if not check_finite or bool(torch.isfinite(a).all() & torch.isfinite(e).all()):
                n, m, d = a.shape[0], e.shape[0], A.shape[0]
                block = torch.zeros((n, m, 2 * d, 2 * d), dtype=a.dtype, device=a.device)
                block[:, :, :d, :d] = a.detach()[:, None]
                block[:, :, :d, d:] = e.detach()[None]
                block[:, :, d:, d:] = a.detach()[:, None]
                value = torch.linalg.matrix_exp(block)[:, :, :d, d:]
                self.n_batched += 1
            self._key = (weakref.ref(a), a._version, weakref.ref(e), e._version)
            self._value = value
        if self._value is None:  # non-finite batch: the original raises its error
            return unbatched()
        self.n_calls_served += 1
        return self._value[i, k]


@contextlib.contextmanager
def batched_expm_frechet() -> Iterator[BatchedExpmFrechet]:
    """Route ``torch_sim.math.expm_frechet`` through :class:`BatchedExpmFrechet` for a while."""
    import torch_sim.math as tsm

    original = tsm.expm_frechet
    patched = BatchedExpmFrechet(original)
    tsm.expm_frechet = patched
    try:
        yield patched
    finally:
        tsm.expm_frechet = original


def _fitting_atoms(tsm: Any, structures: Sequence[Any], device: Any, dtype: Any) -> int:
    """Atoms per batch that fit on a CUDA device, searched no further than the input needs.

    torch-sim's own estimate (``BinningAutoBatcher`` without ``max_memory_scaler``) grows
    replicated copies of the largest and the smallest input system up to 500,000 systems or
    an out-of-memory error, whatever the input's size: for 1,000 MP-20 cells that meant
    forward passes on up to 190,000 atoms and minutes before the first relaxation step. Here
    the largest system is replicated (``torch_sim.autobatching.determine_max_batch_size``)
    only until the copies hold as many atoms as the whole input; if that fits, every
    structure goes into one batch.
    """
    import torch_sim as ts
    from torch_sim.autobatching import determine_max_batch_size

    total = sum(len(s) for s in structures)
    largest = max(structures, key=len)
    copies_needed = -(-total // len(largest))  # ceil
    # torch-sim tries copies 1, 2, 3, 5, ... (x 1.6) below its max_atoms argument: this bound
    # makes its last try hold at least copies_needed copies
    fit = determine_max_batch_size(ts.initialize_state(largest, device, dtype), tsm,
                                   max_atoms=int(copies_needed * 1.6) + 2)
    return total if fit >= copies_needed else fit * len(largest)

def relax_batched(
    model: EnergyModel,
    structures: Sequence[Any],
    fmax: float = 0.1,
    steps: int = 200,
    cell_filter: str | None = "FrechetCellFilter",
    max_atoms: int | None = None,
    check_every: int = 5,
    progress: bool = False,
    log_every: float = 60.0,
    batch_frechet: bool = True,
) -> list[RelaxResult]:
    """Relax many structures at once with torch-sim's batched FIRE.

    Parameters
    ----------
    model : EnergyModel
        Energy model with a torch-sim wrapper (CHGNet, MACE).
    structures : sequence of Structure, Atoms, dict or None
        Structures to relax (``None``: recorded as an error).
    fmax : float
        Convergence threshold on atomic and cell forces (eV/Å).
    steps : int
        Most optimiser steps per structure; a structure that reaches it unconverged keeps
        its last geometry with ``converged=False``.
    cell_filter : str or None
        ``"FrechetCellFilter"`` (default), ``"UnitCellFilter"`` or ``None`` (fixed cell).
    max_atoms : int, optional
        Atoms per batch. ``None``: torch-sim estimates what fits on a CUDA device; 2,048 on
        the CPU.
    check_every : int
        Steps between convergence checks and batch swaps.
    progress : bool
        tqdm bar over finished structures. Without it, progress (structures finished,
        optimiser steps) is logged at INFO level every ``log_every`` seconds.
    log_every : float
        Seconds between progress log lines.
    batch_frechet : bool
        Compute the Fréchet cell filter's matrix-exponential derivatives for the whole batch at
        once (:class:`BatchedExpmFrechet`); False leaves torch-sim's per-system loop as it is
        (the baseline of ``benchmarks/relax_frechet.py``).

    Returns
    -------
    list of RelaxResult
        One per input, in input order.
    """
    import torch
    import torch_sim as ts
    from pymatgen.core import Lattice, Structure

    from xtalforge.screening.mlip import RelaxResult, to_structure

    if cell_filter not in CELL_FILTERS:
        raise ValueError(f"unknown cell_filter {cell_filter!r}; one of "
                         f"{sorted(map(str, CELL_FILTERS))}")
    results: list[RelaxResult | None] = [None] * len(structures)
    todo: list[int] = []
    pmg: list[Any] = []
    for i, s in enumerate(structures):
        reason = model.check_structure(s)
        if reason is not None:
            results[i] = RelaxResult(error=reason, backend="torch-sim")
            continue
        try:
            pmg.append(to_structure(s))
            todo.append(i)
        except Exception as exc:  # noqa: BLE001
            results[i] = RelaxResult(error=f"cannot read structure: {exc}"[:500],
                                     backend="torch-sim")
    if not todo:
        return [r for r in results if r is not None]

    tsm = model.torchsim_model()
    device, dtype = tsm.device, tsm.dtype
    opt_factory = getattr(ts, CELL_FILTERS[cell_filter])
    init_fn, update_fn = opt_factory(model=tsm, md_flavor="ase_fire")
    has_cell = CELL_FILTERS[cell_filter] != "fire"

    if max_atoms is None:
        max_atoms = (_fitting_atoms(tsm, pmg, device, dtype) if device.type == "cuda"
                     else 2048)
    max_atoms = max(int(max_atoms), max(len(s) for s in pmg))
    # torch-sim's Frechet cell filter loops over systems: batch its matrix exponentials
    with batched_expm_frechet() if batch_frechet else contextlib.nullcontext():
        # initial energies and forces, bin by bin (the in-flight batches then keep that size)
        binner = ts.BinningAutoBatcher(
            model=tsm, memory_scales_with="n_atoms", max_memory_scaler=float(max_atoms),
        )
        binner.load_states([ts.initialize_state(s, device, dtype) for s in pmg])
        with torch.enable_grad():
            initialised = [init_fn(b) for b in binner]
        states = binner.restore_original_order(initialised)
        batcher = ts.InFlightAutoBatcher(
            model=tsm, memory_scales_with="n_atoms",
            max_memory_scaler=float(binner.max_memory_scaler), return_indices=True,
        )
        batcher.load_states(states)

        n_steps = np.zeros(len(todo), dtype=int)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc=f"{model.name} batched relax", unit="structure")
        threshold = model.force_threshold
        t_start = time.perf_counter()
        last_log = [t_start]
        n_done = [0]

        def log_progress(final: bool = False) -> None:
            now = time.perf_counter()
            if not final and now - last_log[0] < log_every:
                return
            last_log[0] = now
            timings = getattr(tsm, "timings", None) or {}
            split = "".join(f", {k} {v:.3g} s" for k, v in timings.items())
            logger.info("%s batched relax: %d/%d structures finished, %d optimiser steps, "
                        "%.1f s%s", model.name, n_done[0], len(todo), int(n_steps.sum()),
                        now - t_start, split)

        def record(state: Any, local: int, k: int, converged: bool, error: str | None) -> None:
            """Store the result of system ``local`` of ``state`` (original index ``todo[k]``)."""
            mask = state.system_idx == local
            n_at = int(mask.sum())
            energy = float(state.energy[local])
            forces = state.forces[mask].detach().to("cpu", torch.float64).numpy()
            stress = None
            if getattr(state, "stress", None) is not None:
                st = state.stress[local].detach().to("cpu", torch.float64).numpy()
                stress = np.array([st[0, 0], st[1, 1], st[2, 2], st[1, 2], st[0, 2], st[0, 1]])
            structure = None
            if error is None:
                pos = state.positions[mask].detach().to("cpu", torch.float64).numpy()
                cell = state.row_vector_cell[local].detach().to("cpu", torch.float64).numpy()
                z = state.atomic_numbers[mask].to("cpu").numpy()
                structure = Structure(Lattice(cell), [int(a) for a in z], pos,
                                      coords_are_cartesian=True)
            fmax_k = float(np.linalg.norm(forces, axis=1).max()) if n_at else 0.0
            results[todo[k]] = RelaxResult(
                structure=structure,
                energy=energy if error is None else math.nan,
                energy_per_atom=energy / max(n_at, 1) if error is None else math.nan,
                n_steps=int(n_steps[k]),
                converged=bool(converged and error is None),
                error=error,
                forces=forces if error is None else None,
                stress=stress if error is None else None,
                max_force=fmax_k if np.isfinite(fmax_k) else math.nan,
                backend="torch-sim",
            )
            n_done[0] += 1
            if bar is not None:
                bar.update(1)

        def step_batch(state: Any, idx: list[int]) -> Any:
            with torch.enable_grad():
                for _ in range(check_every):
                    state = update_fn(state)
                    n_steps[idx] += 1
                    if (n_steps[idx] >= steps).any():
                        break
            return state

        state, _, idx = batcher.next_batch(None, None)
        while state is not None:
            idx = list(idx)
            done = _assess(state, tsm, idx, n_steps, fmax, steps, threshold, has_cell)
            if all(d is None for d in done):
                state = step_batch(state, idx)
                if bar is None:
                    log_progress()
                continue
            flags = torch.zeros(state.n_systems, dtype=torch.bool, device=device)
            for local, (k, d) in enumerate(zip(idx, done, strict=True)):
                if d is not None:
                    record(state, local, k, d[0], d[1])
                    flags[local] = True
            state, _, idx = batcher.next_batch(state, flags)
        if bar is not None:
            bar.close()
        log_progress(final=True)
    return [r if r is not None else RelaxResult(error="internal: not relaxed",
                                                n_steps=0, backend="torch-sim")
            for r in results]


def _assess(state: Any, tsm: Any, idx: list[int], n_steps: np.ndarray, fmax: float,
            steps: int, threshold: float | None, has_cell: bool
            ) -> list[tuple[bool, str | None] | None]:
    """Per system of ``state``: ``None`` (keep going) or ``(converged, error)``."""
    import torch

    energy = state.energy.detach()
    n_sys = state.n_systems
    fnorm = torch.linalg.norm(state.forces.detach(), dim=1)
    max_f = torch.zeros(n_sys, dtype=fnorm.dtype, device=fnorm.device).scatter_reduce(
        0, state.system_idx, torch.nan_to_num(fnorm, nan=math.inf), reduce="amax",
        include_self=True)
    conv = max_f < fmax
    if has_cell and getattr(state, "cell_forces", None) is not None:
        cf = torch.linalg.norm(state.cell_forces.detach(), dim=2).max(dim=1).values
        conv = conv & (torch.nan_to_num(cf, nan=math.inf) < fmax)
    energy_c = energy.to("cpu").numpy()
    max_fc = max_f.to("cpu").numpy()
    conv_c = conv.to("cpu").numpy()
    errors = getattr(tsm, "system_errors", {}) or {}
    out: list[tuple[bool, str | None] | None] = []
    for local, k in enumerate(idx):
        if local in errors:
            out.append((False, errors[local]))
        elif not np.isfinite(energy_c[local]):
            out.append((False, f"non-finite energy ({energy_c[local]}) after {n_steps[k]} steps"))
        elif not np.isfinite(max_fc[local]):
            out.append((False, f"non-finite forces after {n_steps[k]} steps"))
        elif threshold is not None and max_fc[local] > threshold:
            out.append((False, f"exploding forces: max |F| = {max_fc[local]:.3g} eV/A > "
                               f"threshold {threshold:g} eV/A after {n_steps[k]} steps"))
        elif conv_c[local]:
            out.append((True, None))
        elif n_steps[k] >= steps:
            out.append((False, None))
        else:
            out.append(None)
    return out
