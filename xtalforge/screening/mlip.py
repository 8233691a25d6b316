"""Registry of machine-learned interatomic potentials (MLIPs) used as energy models.

Every model is wrapped in an :class:`EnergyModel` with one interface::

    model = get_energy_model("chgnet")                       # offline default
    model = get_energy_model("mace:/path/to/model.model", device="cuda", dtype="float64")
    model = get_energy_model("mace:medium-mpa-0")            # downloads (only when asked)
    model = get_energy_model("ase:ase.calculators.emt.EMT")  # any ASE calculator factory
    results = model.predict(structures, batch_size=64)       # list[EnergyResult]

Specs
-----
``"chgnet"`` / ``"chgnet:<name or path>"``
    CHGNet (weights ship in the ``chgnet`` wheel, ``0.3.0`` by default). Evaluated in
    ``mode="fast"`` (the default: :mod:`xtalforge.screening.chgnet_batch`, CHGNet's graphs,
    optionally built in ``graph_workers`` processes, one vectorised forward per batch),
    through CHGNet's own ``predict_structure`` (``mode="batched"``) or an ASE loop over
    ``CHGNetCalculator`` (``mode="ase"``). See ``benchmarks/chgnet_profile.py``.
``"mace:<path>"`` / ``"mace:<foundation name>"``
    A MACE model file (``torch.save`` of the model object, the format of ``*.model`` files), or
    a MACE-MP foundation model name (``medium-mpa-0``, ``medium``, ``small-omat-0`` ...), which
    mace-torch downloads into its cache the first time it is asked for. Evaluation is batched:
    one forward over a ``torch_geometric`` batch of many graphs.
``"ase:<module>.<attr>"``
    Any callable returning an ASE calculator (a class or a factory function), called with the
    keyword arguments given to :func:`get_energy_model`. Evaluated one structure at a time.

Relaxation
----------
:meth:`EnergyModel.relax` relaxes one structure at a time with an ASE optimizer (the
reference path, every model); :meth:`EnergyModel.relax_batched` relaxes many at once with
torch-sim's batched FIRE (:mod:`xtalforge.screening.relax`) through the model's
:meth:`EnergyModel.torchsim_model` (CHGNet: our wrapper; MACE: torch-sim's ``MaceModel``).

Failures
--------
A structure the model cannot handle (``None`` input, unsupported element, graph construction
error, NaN/inf energy, forces above ``force_threshold``) yields an :class:`EnergyResult` with
``error`` set and NaN energies; the other structures are still evaluated. When a whole batch
fails, the batch is re-run one structure at a time to isolate the culprit.

dtype
-----
MACE changes torch's global default dtype when its calculator helpers are used; this module
never leaves it changed: every MACE call runs inside a context manager that restores the
caller's default dtype.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import logging
import math
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xtalforge.device import resolve_device

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from ase import Atoms
    from ase.calculators.calculator import Calculator
    from pymatgen.core import Structure

logger = logging.getLogger(__name__)

#: eV/Å^3 per GPa
EV_A3_PER_GPA = 1.0 / 160.21766208

#: Default threshold (eV/Å) above which the largest atomic force marks a result as failed.
DEFAULT_FORCE_THRESHOLD = 1000.0

__all__ = [
    "ASEEnergyModel",
    "CHGNetEnergyModel",
    "EnergyModel",
    "EnergyResult",
    "MACEEnergyModel",
    "RelaxResult",
    "build_mace_model",
    "get_energy_model",
    "preserve_torch_dtype",
]


# --------------------------------------------------------------------------------------
# autograd for force-taking models
# --------------------------------------------------------------------------------------
def _autograd_enabled() -> contextlib.AbstractContextManager:
    """``torch.enable_grad()`` (a null context without torch)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - every packaged model needs torch
        return contextlib.nullcontext()
    return torch.enable_grad()


def _with_autograd(fn: Any) -> Any:
    """Run ``fn`` with autograd on.

    The MLIPs take forces and stresses as energy gradients, so a caller inside
    ``torch.no_grad()`` (an RL evaluation, say) would otherwise fail every structure with
    "element 0 of tensors does not require grad".
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _autograd_enabled():
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
@dataclass
class EnergyResult:
    """Single-point result for one structure.

    Attributes
    ----------
    energy : float
        Total energy in eV (NaN on failure).
    energy_per_atom : float
        ``energy / n_atoms`` in eV/atom (NaN on failure).
    n_atoms : int
        Number of sites (0 when the input was ``None``).
    forces : numpy.ndarray or None
        ``(n_atoms, 3)`` forces in eV/Å, when computed.
    stress : numpy.ndarray or None
        Voigt stress ``(xx, yy, zz, yz, xz, xy)`` in eV/Å^3 (ASE sign convention), when computed.
    max_force : float
        Largest atomic force norm in eV/Å (NaN when forces were not computed).
    error : str or None
        Reason of failure, ``None`` on success.
    """

    energy: float = math.nan
    energy_per_atom: float = math.nan
    n_atoms: int = 0
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    max_force: float = math.nan
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the evaluation succeeded."""
        return self.error is None

    def as_dict(self, arrays: bool = False) -> dict[str, Any]:
        """Return a JSON-friendly dict (forces and stress only when ``arrays``)."""
        out: dict[str, Any] = {
            "energy": float(self.energy),
            "energy_per_atom": float(self.energy_per_atom),
            "n_atoms": int(self.n_atoms),
            "max_force": float(self.max_force),
            "error": self.error,
        }
        if arrays:
            out["forces"] = None if self.forces is None else np.asarray(self.forces).tolist()
            out["stress"] = None if self.stress is None else np.asarray(self.stress).tolist()
        return out


@dataclass
class RelaxResult:
    """Result of a bounded relaxation of one structure.

    Attributes
    ----------
    structure : pymatgen.core.Structure or None
        Relaxed structure (the last one reached when not converged; ``None`` on failure).
    energy, energy_per_atom : float
        Final total energy (eV) and per atom (eV/atom).
    n_steps : int
        Optimizer steps taken.
    converged : bool
        Whether ``fmax`` was reached within ``steps``.
    error : str or None
        Reason of failure, ``None`` on success.
    forces : numpy.ndarray or None
        Final ``(n_atoms, 3)`` forces (eV/Å), when the backend returns them.
    stress : numpy.ndarray or None
        Final Voigt stress (eV/Å^3, ASE sign convention), when the backend returns it.
    max_force : float
        Largest final atomic force norm (eV/Å).
    backend : str
        ``"ase"`` (one structure at a time) or ``"torch-sim"`` (batched).
    """

    structure: Structure | None = None
    energy: float = math.nan
    energy_per_atom: float = math.nan
    n_steps: int = 0
    converged: bool = False
    error: str | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    max_force: float = math.nan
    backend: str = "ase"

    def as_dict(self) -> dict[str, Any]:
        """Per-structure bookkeeping as a JSON-friendly dict (no arrays, no structure)."""
        return {
            "energy": float(self.energy),
            "energy_per_atom": float(self.energy_per_atom),
            "n_steps": int(self.n_steps),
            "converged": bool(self.converged),
            "max_force": float(self.max_force),
            "error": self.error,
            "backend": self.backend,
        }

    @property
    def ok(self) -> bool:
        """Whether the relaxation produced a finite energy."""
        return self.error is None


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def preserve_torch_dtype(dtype: str | torch.dtype | None = None) -> Iterator[None]:
    """Set torch's global default dtype inside the block (optional) and always restore it.

    Parameters
    ----------
    dtype : str or torch.dtype, optional
        ``"float32"``/``"float64"`` or a torch dtype to use inside the block.
    """
    import torch

    before = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(_torch_dtype(dtype))
        yield
    finally:
        torch.set_default_dtype(before)


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "float64": torch.float64, "float": torch.float32,
             "double": torch.float64}
    if dtype not in table:
        raise ValueError(f"unsupported dtype {dtype!r}; use 'float32' or 'float64'")
    return table[dtype]


def to_structure(obj: Any) -> Structure:
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        return obj
    from ase import Atoms

    if isinstance(obj, Atoms):
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(obj)
    if isinstance(obj, dict):
        return Structure.from_dict(obj)
    raise TypeError(f"cannot convert {type(obj).__name__} to a Structure")


def _to_atoms(obj: Any) -> Atoms:
    from ase import Atoms

    if isinstance(obj, Atoms):
        return obj.copy()
    from pymatgen.io.ase import AseAtomsAdaptor

    return AseAtomsAdaptor.get_atoms(to_structure(obj))


def _atomic_numbers(obj: Any) -> list[int]:
    from ase import Atoms

    if isinstance(obj, Atoms):
        return [int(z) for z in obj.get_atomic_numbers()]
    return [int(z) for z in to_structure(obj).atomic_numbers]


def _file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _finalize(
    energy: float,
    n_atoms: int,
    forces: np.ndarray | None,
    stress: np.ndarray | None,
    force_threshold: float | None,
) -> EnergyResult:
    """Build an :class:`EnergyResult`, turning NaN/inf/exploding forces into errors."""
    res = EnergyResult(n_atoms=n_atoms, forces=forces, stress=stress)
    if not np.isfinite(energy):
        res.error = f"non-finite energy ({energy})"
        res.forces = None
        res.stress = None
        return res
    res.energy = float(energy)
    res.energy_per_atom = float(energy) / max(n_atoms, 1)
    if forces is not None:
        if not np.all(np.isfinite(forces)):
            res.error = "non-finite forces"
        else:
            res.max_force = float(np.linalg.norm(forces, axis=1).max()) if n_atoms else 0.0
            if force_threshold is not None and res.max_force > force_threshold:
                res.error = (
                    f"exploding forces: max |F| = {res.max_force:.3g} eV/A > "
                    f"threshold {force_threshold:g} eV/A"
                )
    if res.error is None and stress is not None and not np.all(np.isfinite(stress)):
        res.error = "non-finite stress"
    if res.error is not None:
        res.energy = math.nan
        res.energy_per_atom = math.nan
    return res


# --------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------
@dataclass
class EnergyModel(ABC):
    """Common interface of all energy models.

    Subclasses implement :meth:`_predict_batch` (a list of valid structures to a list of
    results, raising on a whole-batch failure) and :meth:`calculator` (an ASE calculator).

    Attributes
    ----------
    name : str
        Short model name (``"chgnet"``, ``"mace"``, ``"ase"``).
    spec : str
        The spec string the model was created from.
    device : str
        torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    dtype : str
        ``"float32"`` or ``"float64"``.
    supported_atomic_numbers : frozenset of int or None
        Elements the model covers (``None``: unknown, everything is tried).
    force_threshold : float or None
        Largest allowed force norm (eV/Å); above it the result is an error.
    """

    name: str
    spec: str
    device: str = "cpu"
    dtype: str = "float32"
    supported_atomic_numbers: frozenset[int] | None = None
    force_threshold: float | None = DEFAULT_FORCE_THRESHOLD
    fingerprint: str | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)

    # ---- to implement -------------------------------------------------------------
    @abstractmethod
    def _predict_batch(
        self, structures: list[Any], compute_forces: bool, compute_stress: bool
    ) -> list[EnergyResult]:
        """Evaluate a list of (pre-validated) structures; raise if the batch fails."""

    @abstractmethod
    def calculator(self) -> Calculator:
        """Return an ASE calculator for this model (used for relaxation and ASE loops)."""

    # ---- public API ---------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        """Description recorded with every result (name, spec, dtype, device, fingerprint)."""
        return {
            "name": self.name,
            "spec": self.spec,
            "dtype": self.dtype,
            "device": self.device,
            "fingerprint": self.fingerprint,
            **self.extra_info,
        }

    def check_structure(self, structure: Any) -> str | None:
        """Return a reason why ``structure`` cannot be evaluated, or ``None`` if it can."""
        if structure is None:
            return "invalid structure (None)"
        try:
            numbers = _atomic_numbers(structure)
        except Exception as exc:  # noqa: BLE001 - any conversion failure is a per-item error
            return f"cannot read structure: {type(exc).__name__}: {exc}"
        if len(numbers) == 0:
            return "empty structure"
        if self.supported_atomic_numbers is not None:
            from pymatgen.core.periodic_table import Element

            missing = sorted(set(numbers) - set(self.supported_atomic_numbers))
            if missing:
                names = ", ".join(Element.from_Z(z).symbol for z in missing)
                return f"unsupported element(s) for {self.name}: {names}"
        return None

    @_with_autograd
    def predict(
        self,
        structures: Sequence[Any],
        batch_size: int = 64,
        compute_forces: bool = True,
        compute_stress: bool = False,
        progress: bool = False,
    ) -> list[EnergyResult]:
        """Single-point energies of many structures.

        Parameters
        ----------
        structures : sequence of Structure, Atoms, dict or None
            Inputs; ``None`` entries (structures that failed upstream) give an error result.
        batch_size : int
            Structures per forward pass (ignored by per-structure models).
        compute_forces : bool
            Compute forces (needed for the exploding-force check).
        compute_stress : bool
            Compute the stress.
        progress : bool
            Show a tqdm progress bar over batches.

        Returns
        -------
        list of EnergyResult
            One result per input, in input order, never dropping one.
        """
        results, valid = _checked_inputs(self, structures)
        batch_size = max(int(batch_size), 1)
        batches = [valid[k : k + batch_size] for k in range(0, len(valid), batch_size)]
        iterator: Any = batches
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc=f"{self.name} single points", unit="batch")
        for idx in iterator:
            for i, res in zip(
                idx, self._predict_isolating([structures[i] for i in idx], compute_forces,
                                             compute_stress), strict=True
            ):
                results[i] = res
        return [r if r is not None else EnergyResult(error="internal: not evaluated")
                for r in results]

    def _predict_isolating(
        self, structures: list[Any], compute_forces: bool, compute_stress: bool
    ) -> list[EnergyResult]:
        try:
            out = self._predict_batch(structures, compute_forces, compute_stress)
            if len(out) != len(structures):
                raise RuntimeError("model returned a wrong number of results")
            return out
        except Exception as exc:  # noqa: BLE001 - isolate the failing structure
            if len(structures) == 1:
                return [EnergyResult(n_atoms=_safe_len(structures[0]),
                                     error=f"{type(exc).__name__}: {exc}"[:500])]
            logger.warning("batch of %d failed (%s: %s); retrying one by one", len(structures),
                           type(exc).__name__, exc)
            return [self._predict_isolating([s], compute_forces, compute_stress)[0]
                    for s in structures]

    @_with_autograd
    def relax(
        self,
        structures: Sequence[Any],
        optimizer: str = "FIRE",
        fmax: float = 0.1,
        steps: int = 200,
        cell_filter: str | None = "FrechetCellFilter",
        progress: bool = False,
    ) -> list[RelaxResult]:
        """Relax structures one by one with an ASE optimizer (bounded number of steps).

        Parameters
        ----------
        structures : sequence of Structure, Atoms or None
            Structures to relax; ``None`` gives an error result.
        optimizer : {"FIRE", "LBFGS", "BFGS"}
            ASE optimizer class name (``ase.optimize``).
        fmax : float
            Force convergence criterion (eV/Å).
        steps : int
            Maximum optimizer steps.
        cell_filter : str or None
            ASE filter from ``ase.filters`` relaxing the cell as well (``"FrechetCellFilter"``,
            ``"ExpCellFilter"``), or ``None`` for fixed-cell relaxation.
        progress : bool
            Show a tqdm progress bar.

        Returns
        -------
        list of RelaxResult
            One per input, in order.
        """
        import ase.filters
        import ase.optimize
        from pymatgen.io.ase import AseAtomsAdaptor

        opt_cls = getattr(ase.optimize, optimizer)
        filt_cls = getattr(ase.filters, cell_filter) if cell_filter else None
        calc = self.calculator()
        out: list[RelaxResult] = []
        iterator: Any = structures
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(structures, desc=f"{self.name} relax", unit="structure")
        for s in iterator:
            reason = self.check_structure(s)
            if reason is not None:
                out.append(RelaxResult(error=reason))
                continue
            try:
                with preserve_torch_dtype():
                    atoms = _to_atoms(s)
                    atoms.calc = calc
                    target = filt_cls(atoms) if filt_cls else atoms
                    opt = opt_cls(target, logfile=None)
                    converged = bool(opt.run(fmax=fmax, steps=steps))
                    energy = float(atoms.get_potential_energy())
                    forces = np.asarray(atoms.get_forces(), dtype=float)
                    n_steps = int(opt.nsteps)
                atoms.calc = None
                res = _finalize(energy, len(atoms), forces, None, self.force_threshold)
                rr = RelaxResult(
                    structure=AseAtomsAdaptor.get_structure(atoms) if res.ok else None,
                    energy=res.energy,
                    energy_per_atom=res.energy_per_atom,
                    n_steps=n_steps,
                    converged=converged and res.ok,
                    error=res.error,
                    forces=res.forces if res.ok else None,
                    max_force=res.max_force,
                )
            except Exception as exc:  # noqa: BLE001 - per-structure failure
                rr = RelaxResult(error=f"relaxation failed: {type(exc).__name__}: {exc}"[:500])
            out.append(rr)
        return out

    def torchsim_model(self) -> Any:
        """Return a torch-sim ``ModelInterface`` for batched relaxation.

        Raises
        ------
        NotImplementedError
            For models without a batched wrapper (relax them with :meth:`relax`).
        """
        raise NotImplementedError(f"{self.name} has no torch-sim wrapper; use relax()")

    @property
    def supports_batched_relax(self) -> bool:
        """Whether :meth:`relax_batched` is available for this model."""
        return type(self).torchsim_model is not EnergyModel.torchsim_model

    @_with_autograd
    def relax_batched(
        self,
        structures: Sequence[Any],
        fmax: float = 0.1,
        steps: int = 200,
        cell_filter: str | None = "FrechetCellFilter",
        max_atoms: int | None = None,
        check_every: int = 5,
        progress: bool = False,
        optimizer: str = "FIRE",
        log_every: float = 60.0,
        batch_frechet: bool = True,
    ) -> list[RelaxResult]:
        """Relax many structures at once with torch-sim (batched FIRE).

        See :func:`xtalforge.screening.relax.relax_batched`; ``optimizer`` must be
        ``"FIRE"`` (the only batched optimiser with cell filters).
        """
        if optimizer.upper() != "FIRE":
            raise ValueError(f"batched relaxation uses FIRE, not {optimizer!r}")
        from xtalforge.screening.relax import relax_batched

        with preserve_torch_dtype():
            return relax_batched(self, structures, fmax=fmax, steps=steps,
                                 cell_filter=cell_filter, max_atoms=max_atoms,
                                 check_every=check_every, progress=progress,
                                 log_every=log_every, batch_frechet=batch_frechet)

    def predict_ase_loop(
        self,
        structures: Sequence[Any],
        compute_forces: bool = True,
        compute_stress: bool = False,
    ) -> list[EnergyResult]:
        """Evaluate structures one at a time through :meth:`calculator` (reference path)."""
        calc = self.calculator()
        out = []
        for s in structures:
            reason = self.check_structure(s)
            if reason is not None:
                out.append(EnergyResult(n_atoms=_safe_len(s), error=reason))
                continue
            try:
                out.append(_ase_single_point(calc, s, compute_forces, compute_stress,
                                             self.force_threshold))
            except Exception as exc:  # noqa: BLE001
                out.append(EnergyResult(n_atoms=_safe_len(s),
                                        error=f"{type(exc).__name__}: {exc}"[:500]))
        return out


def _safe_len(s: Any) -> int:
    try:
        return len(s) if s is not None else 0
    except Exception:  # noqa: BLE001
        return 0


def _checked_inputs(model: Any, structures: Sequence[Any]
                    ) -> tuple[list[EnergyResult | None], list[int]]:
    """Apply ``model.check_structure`` to every input before a batched evaluation.

    Returns one slot per input (an :class:`EnergyResult` carrying the rejection reason, or
    ``None`` for an input still to evaluate) and the indices of the inputs to evaluate.
    """
    results: list[EnergyResult | None] = [None] * len(structures)
    valid: list[int] = []
    for i, s in enumerate(structures):
        reason = model.check_structure(s)
        if reason is None:
            valid.append(i)
        else:
            results[i] = EnergyResult(n_atoms=_safe_len(s), error=reason)
    return results, valid


def _ase_single_point(
    calc: Calculator,
    structure: Any,
    compute_forces: bool,
    compute_stress: bool,
    force_threshold: float | None,
) -> EnergyResult:
    with preserve_torch_dtype():
        atoms = _to_atoms(structure)
        atoms.calc = calc
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces()) if compute_forces else None
        stress = np.asarray(atoms.get_stress(voigt=True)) if compute_stress else None
        atoms.calc = None
    return _finalize(energy, len(atoms), forces, stress, force_threshold)


# --------------------------------------------------------------------------------------
# MACE
# --------------------------------------------------------------------------------------
class _GraphWorkers:
    """A lazily started pool of graph-building worker processes (``graph_workers`` of them).

    Mixed into the energy models that build neighbour graphs ahead of the accelerator
    (:class:`MACEEnergyModel`, :class:`CHGNetEnergyModel`); the pool stays warm across calls
    until :meth:`close`.
    """

    graph_workers: int = 0
    _pool: Any = None

    def _graph_pool(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: never fork a process holding a CUDA context
            self._pool = ProcessPoolExecutor(self.graph_workers,
                                             mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self) -> None:
        """Shut down the graph worker pool, if any."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _predict_with_graph_workers(
    model: Any,
    structures: Sequence[Any],
    batch_size: int,
    compute_forces: bool,
    compute_stress: bool,
    progress: bool,
    *,
    build: Callable[[list[Any]], list[Any]],
    raw: Callable[[Any], Any],
    chunk: Callable[[int, int], int],
    forward: Callable[[list[Any], bool, bool], list[EnergyResult]],
    desc: str,
) -> list[EnergyResult]:
    """Batched single points with every batch's graphs built ahead in the worker pool.

    All batches are submitted to ``model``'s pool up front, so the workers build batch ``k+1``
    while the model evaluates batch ``k``. A structure that fails :meth:`check_structure` or
    its graph gets its error; a broken pool falls back to building in this process; a failing
    batch is retried one structure at a time (``_predict_isolating``).

    Parameters
    ----------
    build
        Worker entry point: picklable, ``raws -> graphs`` (a failure becomes its message).
    raw
        Structure -> the plain arrays ``build`` takes.
    chunk
        ``(number of valid structures, batch size) -> structures per worker task``.
    forward
        ``(graphs, compute_forces, compute_stress) -> results`` of one batch.
    desc
        Progress-bar label.
    """
    results, valid = _checked_inputs(model, structures)
    batch_size = max(int(batch_size), 1)
    batches = [valid[k : k + batch_size] for k in range(0, len(valid), batch_size)]
    pool = model._graph_pool()
    per = chunk(len(valid), batch_size)
    futures = []
    for idx in batches:
        raws = [raw(structures[i]) for i in idx]
        futures.append([pool.submit(build, raws[k : k + per]) for k in range(0, len(raws), per)])
    iterator: Any = zip(batches, futures, strict=True)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, total=len(batches), desc=desc, unit="batch")
    for idx, futs in iterator:
        try:
            graphs = [g for f in futs for g in _unpack_graphs(f.result())]
        except Exception as exc:  # noqa: BLE001 - broken pool: build graphs here
            logger.warning("graph workers failed (%s); building graphs in-process", exc)
            graphs = _unpack_graphs(build([raw(structures[i]) for i in idx]))
        ok = [k for k, g in enumerate(graphs) if not isinstance(g, str)]
        for k, g in enumerate(graphs):
            if isinstance(g, str):
                results[idx[k]] = EnergyResult(n_atoms=_safe_len(structures[idx[k]]), error=g)
        if not ok:
            continue
        try:
            out = forward([graphs[k] for k in ok], compute_forces, compute_stress)
        except Exception as exc:  # noqa: BLE001 - isolate in this process
            logger.warning("batch failed (%s); retrying one by one", exc)
            out = model._predict_isolating([structures[idx[k]] for k in ok], compute_forces,
                                           compute_stress)
        for k, res in zip(ok, out, strict=True):
            results[idx[k]] = res
    return [r if r is not None else EnergyResult(error="internal: not evaluated")
            for r in results]


@dataclass
class MACEEnergyModel(_GraphWorkers, EnergyModel):
    """MACE model evaluated in batches (one forward over a ``torch_geometric`` batch).

    Create it with :func:`get_energy_model` (``"mace:<path or name>"``) or
    :meth:`from_module`.
    """

    model: Any = None
    head: str = "Default"
    heads: list[str] = field(default_factory=lambda: ["Default"])
    r_max: float = 5.0
    z_table: Any = None
    graph_workers: int = 0
    _pool: Any = None

    @classmethod
    def from_module(
        cls,
        module: torch.nn.Module,
        spec: str = "mace:<in-memory>",
        device: str = "cpu",
        dtype: str = "float32",
        head: str | None = None,
        fingerprint: str | None = None,
        force_threshold: float | None = DEFAULT_FORCE_THRESHOLD,
        graph_workers: int = 0,
    ) -> MACEEnergyModel:
        """Wrap an already loaded MACE ``torch.nn.Module``.

        ``graph_workers > 0`` builds graphs in that many worker processes, overlapping the
        CPU graph construction with the (GPU) forward passes.
        """
        from mace.tools import utils as mace_utils

        device = resolve_device(device)
        tdtype = _torch_dtype(dtype)
        module = module.to(device=device, dtype=tdtype)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        numbers = [int(z) for z in module.atomic_numbers]
        heads = list(getattr(module, "heads", None) or ["Default"])
        if head is None:
            lower = [h.lower() for h in heads]
            head = heads[lower.index("default")] if "default" in lower else heads[-1]
        elif head not in heads:
            raise ValueError(f"head {head!r} not in model heads {heads}")
        if fingerprint is None:
            fingerprint = _state_dict_fingerprint(module)
        return cls(
            name="mace",
            spec=spec,
            device=device,
            dtype=dtype,
            supported_atomic_numbers=frozenset(numbers),
            force_threshold=force_threshold,
            fingerprint=fingerprint,
            extra_info={"head": head, "r_max": float(module.r_max),
                        "model_class": type(module).__name__},
            model=module,
            head=head,
            heads=heads,
            r_max=float(module.r_max),
            z_table=mace_utils.AtomicNumberTable(numbers),
            graph_workers=int(graph_workers),
        )

    # graph construction -------------------------------------------------------------
    def _graph(self, structure: Any) -> Any:
        atoms = _to_atoms(structure)
        return _mace_graph(_raw(atoms), self._graph_spec())

    def _graph_spec(self) -> tuple[list[int], float, list[str], str, str]:
        return ([int(z) for z in self.z_table.zs], self.r_max, list(self.heads), self.head,
                self.dtype)

    def build_batch(self, structures: Sequence[Any]) -> Any:
        """Return a ``torch_geometric`` batch of the graphs of ``structures`` on the device."""
        with preserve_torch_dtype(self.dtype):
            return self._collate([self._graph(s) for s in structures])

    def _collate(self, graphs: list[Any]) -> Any:
        from mace.tools import torch_geometric

        return torch_geometric.Batch.from_data_list(graphs).to(self.device)

    def _predict_batch(
        self, structures: list[Any], compute_forces: bool, compute_stress: bool
    ) -> list[EnergyResult]:
        return self._forward(self.build_batch(structures), compute_forces, compute_stress)

    def _forward(self, batch: Any, compute_forces: bool, compute_stress: bool
                 ) -> list[EnergyResult]:
        import torch

        with preserve_torch_dtype(self.dtype), torch.set_grad_enabled(
            compute_forces or compute_stress
        ):
            data = batch.to_dict()
            out = self.model(
                data,
                training=False,
                compute_force=compute_forces,
                compute_stress=compute_stress,
            )
        energy = out["energy"].detach().to("cpu", torch.float64).numpy()
        ptr = batch["ptr"].to("cpu").numpy()
        forces = (
            out["forces"].detach().to("cpu", torch.float64).numpy()
            if compute_forces and out.get("forces") is not None
            else None
        )
        stress = (
            out["stress"].detach().to("cpu", torch.float64).numpy()
            if compute_stress and out.get("stress") is not None
            else None
        )
        results = []
        for g in range(len(ptr) - 1):
            n = int(ptr[g + 1] - ptr[g])
            f = forces[ptr[g] : ptr[g + 1]] if forces is not None else None
            s = _voigt(stress[g]) if stress is not None else None
            results.append(_finalize(float(energy[g]), n, f, s, self.force_threshold))
        return results

    @_with_autograd
    def predict(
        self,
        structures: Sequence[Any],
        batch_size: int = 64,
        compute_forces: bool = True,
        compute_stress: bool = False,
        progress: bool = False,
    ) -> list[EnergyResult]:
        """Batched single points; see :meth:`EnergyModel.predict`.

        With ``graph_workers > 0`` the neighbour lists / graphs are built in that many worker
        processes, ahead of the GPU, so that graph construction on the CPU overlaps with the
        forward passes; without, graphs are built in this process.
        """
        if self.graph_workers <= 0:
            return super().predict(structures, batch_size, compute_forces, compute_stress,
                                   progress)
        spec = self._graph_spec()

        def forward(graphs: list[Any], forces: bool, stress: bool) -> list[EnergyResult]:
            with preserve_torch_dtype(self.dtype):
                batch = self._collate(graphs)
            return self._forward(batch, forces, stress)

        return _predict_with_graph_workers(
            self, structures, batch_size, compute_forces, compute_stress, progress,
            build=functools.partial(_mace_graphs, spec=spec, packed=True),
            raw=lambda s: _raw(_to_atoms(s)),
            # chunks smaller than a batch keep every worker busy on one batch
            chunk=lambda n_valid, bs: max(1, math.ceil(bs / self.graph_workers)),
            forward=forward, desc="mace single points")

    def torchsim_model(self) -> Any:
        """torch-sim's ``MaceModel`` around this module (neighbour lists on the device)."""
        import torch
        from torch_sim.models.mace import MaceModel

        with preserve_torch_dtype(self.dtype):
            return MaceModel(model=self.model, device=torch.device(self.device),
                             dtype=_torch_dtype(self.dtype), compute_forces=True,
                             compute_stress=True)

    def calculator(self) -> Calculator:
        """Return mace-torch's ASE ``MACECalculator`` sharing this model."""
        from mace.calculators import MACECalculator

        with preserve_torch_dtype():
            return MACECalculator(models=self.model, device=self.device,
                                  default_dtype=self.dtype, head=self.head)


def _raw(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[bool, ...]]:
    return (np.asarray(atoms.get_atomic_numbers()), np.asarray(atoms.get_positions()),
            np.asarray(atoms.get_cell()), tuple(bool(p) for p in atoms.get_pbc()))


def _mace_graph(raw: tuple[Any, ...], spec: tuple[list[int], float, list[str], str, str]
                ) -> Any:
    """Build one mace ``AtomicData`` graph from raw arrays (picklable, for worker processes)."""
    from mace import data as mace_data
    from mace.tools import utils as mace_utils

    numbers, positions, cell, pbc = raw
    zs, r_max, heads, head, dtype = spec
    config = mace_data.Configuration(
        atomic_numbers=numbers, positions=positions, properties={}, property_weights={},
        cell=cell, pbc=pbc, head=head,
    )
    with preserve_torch_dtype(dtype):
        return mace_data.AtomicData.from_config(
            config, z_table=mace_utils.AtomicNumberTable(zs), cutoff=r_max, heads=heads
        )


def _mace_graphs(raws: list[tuple[Any, ...]], spec: tuple[list[int], float, list[str], str, str],
                 packed: bool = False) -> list[Any] | bytes:
    """Graphs of many structures; a failing one becomes its error string.

    With ``packed`` (the worker-pool entry point) the list comes back as ``pickle`` bytes:
    mace's graphs hold torch tensors, which ``multiprocessing`` would otherwise hand over
    through torch's shared-memory reductions (``/dev/shm``), where a container's small
    default (64 MB) kills the workers (:func:`_unpack_graphs` reads them back).
    """
    out: list[Any] = []
    for raw in raws:
        try:
            out.append(_mace_graph(raw, spec))
        except Exception as exc:  # noqa: BLE001
            out.append(f"graph construction failed: {type(exc).__name__}: {exc}"[:500])
    return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL) if packed else out


def _unpack_graphs(result: list[Any] | bytes) -> list[Any]:
    """Return a graph-building result as a list (see :func:`_mace_graphs`)."""
    return pickle.loads(result) if isinstance(result, bytes) else result  # noqa: S301 - own workers


def _voigt(s: np.ndarray) -> np.ndarray:
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def _state_dict_fingerprint(module: Any) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_mace(target: str, device: str, dtype: str, head: str | None,
               force_threshold: float | None, graph_workers: int = 0) -> MACEEnergyModel:
    import torch

    path = Path(target).expanduser()
    if path.is_file():
        file_path = path
    elif target.endswith(".model") or "/" in target or target.endswith(".pt"):
        raise FileNotFoundError(f"MACE model file not found: {target}")
    else:
        try:
            from mace.calculators.foundations_models import download_mace_mp_checkpoint

            file_path = Path(download_mace_mp_checkpoint(target))
        except Exception as exc:
            raise RuntimeError(
                f"could not obtain MACE foundation model {target!r} ({type(exc).__name__}: "
                f"{exc}). Downloads need network access; offline, download the .model file "
                "elsewhere and use spec 'mace:/path/to/file.model'."
            ) from exc
    with preserve_torch_dtype():
        module = torch.load(str(file_path), map_location=resolve_device(device),
                            weights_only=False)
    model = MACEEnergyModel.from_module(
        module,
        spec=f"mace:{target}",
        device=device,
        dtype=dtype,
        head=head,
        fingerprint=_file_sha256(file_path),
        force_threshold=force_threshold,
        graph_workers=graph_workers,
    )
    model.extra_info["path"] = str(file_path)
    return model


def build_mace_model(
    atomic_numbers: Sequence[int],
    hidden_irreps: str = "16x0e+16x1o",
    max_ell: int = 2,
    num_interactions: int = 2,
    r_max: float = 5.0,
    correlation: int = 2,
    num_bessel: int = 8,
    num_polynomial_cutoff: int = 5,
    mlp_irreps: str = "16x0e",
    radial_mlp: Sequence[int] = (64, 64, 64),
    avg_num_neighbors: float = 20.0,
    atomic_energies: Sequence[float] | None = None,
    seed: int = 0,
    dtype: str = "float32",
) -> torch.nn.Module:
    """Build a randomly initialised ``mace.modules.ScaleShiftMACE`` (tests and benchmarks).

    The MACE-MP-0 "medium" architecture corresponds to ``hidden_irreps="128x0e+128x1o"``,
    ``max_ell=3``, ``num_interactions=2``, ``r_max=6``, ``correlation=3``, ``num_bessel=10``:
    its evaluation cost does not depend on the weight values.
    """
    import torch
    from mace import modules

    # e3nn after mace: importing mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which e3nn's
    # constants need under torch >= 2.6
    o3 = importlib.import_module("e3nn.o3")

    numbers = sorted(int(z) for z in atomic_numbers)
    e0 = np.zeros(len(numbers)) if atomic_energies is None else np.asarray(atomic_energies)
    with preserve_torch_dtype(dtype):
        torch.manual_seed(seed)
        block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
        model = modules.ScaleShiftMACE(
            r_max=r_max,
            num_bessel=num_bessel,
            num_polynomial_cutoff=num_polynomial_cutoff,
            max_ell=max_ell,
            interaction_cls=block,
            interaction_cls_first=block,
            num_interactions=num_interactions,
            num_elements=len(numbers),
            hidden_irreps=o3.Irreps(hidden_irreps),
            MLP_irreps=o3.Irreps(mlp_irreps),
            atomic_energies=e0,
            avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=numbers,
            correlation=correlation,
            gate=torch.nn.functional.silu,
            radial_MLP=list(radial_mlp),
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    return model


# --------------------------------------------------------------------------------------
# CHGNet
# --------------------------------------------------------------------------------------
@dataclass
class CHGNetEnergyModel(_GraphWorkers, EnergyModel):
    """CHGNet (offline: its weights ship in the wheel).

    Modes
    -----
    ``"fast"`` (``"auto"``)
        :mod:`xtalforge.screening.chgnet_batch`: CHGNet's graphs, built in
        ``graph_workers`` worker processes ahead of the model (in this process when 0),
        concatenated on the host, one copy to the device and one vectorised forward and
        backward per batch. Same energies as ``"batched"`` to float32 round-off.
    ``"batched"``
        CHGNet's own ``predict_structure(list, batch_size)``.
    ``"ase"``
        A loop over structures with ``CHGNetCalculator`` (the per-structure baseline).
    """

    model: Any = None
    mode: str = "auto"
    graph_workers: int = 0
    _calc: Any = None
    _pool: Any = None

    @property
    def effective_mode(self) -> str:
        """Evaluation mode actually used (``"fast"``, ``"batched"`` or ``"ase"``)."""
        if self.mode == "auto":
            return "fast"
        return self.mode

    def graph_spec(self) -> tuple[float, float, str]:
        """``(atom cutoff, bond cutoff, algorithm)`` of the model's graph converter."""
        conv = self.model.graph_converter
        return (float(conv.atom_graph_cutoff), float(conv.bond_graph_cutoff),
                str(conv.algorithm))

    def _predict_batch(
        self, structures: list[Any], compute_forces: bool, compute_stress: bool
    ) -> list[EnergyResult]:
        mode = self.effective_mode
        if mode == "ase":
            calc = self.calculator()
            return [_ase_single_point(calc, s, compute_forces, compute_stress,
                                      self.force_threshold) for s in structures]
        if mode == "fast":
            from xtalforge.screening import chgnet_batch as cb

            graphs = cb.build_graphs([_raw_frac(s) for s in structures], self.graph_spec())
            bad = [g for g in graphs if isinstance(g, str)]
            if bad:
                raise RuntimeError(bad[0])
            return self._forward_graphs(graphs, compute_forces, compute_stress)
        task = "e" + ("f" if compute_forces else "") + ("s" if compute_stress else "")
        structs = [to_structure(s) for s in structures]
        with preserve_torch_dtype("float32"):
            preds = self.model.predict_structure(structs, task=task,
                                                 batch_size=max(len(structs), 1))
        if isinstance(preds, dict):
            preds = [preds]
        results = []
        for s, p in zip(structs, preds, strict=True):
            n = len(s)
            e = float(np.asarray(p["e"]).reshape(-1)[0]) * n  # CHGNet returns eV/atom
            f = np.asarray(p["f"], dtype=float) if "f" in p else None
            st = None
            if "s" in p:
                # CHGNet: GPa -> eV/A^3 (CHGNetCalculator uses the same factor, no sign flip)
                st = _voigt(np.asarray(p["s"], dtype=float)) * EV_A3_PER_GPA
            results.append(_finalize(e, n, f, st, self.force_threshold))
        return results

    def _forward_graphs(self, graphs: list[Any], compute_forces: bool, compute_stress: bool
                        ) -> list[EnergyResult]:
        """One vectorised forward over already built graphs (``"fast"`` mode)."""
        import torch

        from xtalforge.screening import chgnet_batch as cb

        with preserve_torch_dtype("float32"):
            batch = cb.to_device(cb.collate(graphs), self.device)
            out = cb.forward(self.model, batch, compute_forces, compute_stress)
            # one device-to-host copy per quantity
            energy = out["energy"].to("cpu", torch.float64).numpy()
            forces = out["forces"].to("cpu", torch.float64).numpy() if compute_forces \
                else None
            stress = out["stress"].to("cpu", torch.float64).numpy() if compute_stress \
                else None
        results = []
        start = 0
        for k, g in enumerate(graphs):
            n = g.n_atoms
            f = forces[start : start + n] if forces is not None else None
            st = _voigt(stress[k]) if stress is not None else None
            results.append(_finalize(float(energy[k]), n, f, st, self.force_threshold))
            start += n
        return results

    @_with_autograd
    def predict(
        self,
        structures: Sequence[Any],
        batch_size: int = 64,
        compute_forces: bool = True,
        compute_stress: bool = False,
        progress: bool = False,
    ) -> list[EnergyResult]:
        """Batched single points; see :meth:`EnergyModel.predict`.

        In ``"fast"`` mode with ``graph_workers > 0`` every batch's graphs are submitted to
        the worker pool up front, so that the workers build batch ``k+1`` while the model
        evaluates batch ``k``; the model and the pool stay warm across calls.
        """
        if self.effective_mode != "fast" or self.graph_workers <= 0:
            return super().predict(structures, batch_size, compute_forces, compute_stress,
                                   progress)
        from xtalforge.screening import chgnet_batch as cb

        return _predict_with_graph_workers(
            self, structures, batch_size, compute_forces, compute_stress, progress,
            build=functools.partial(cb.build_graphs, spec=self.graph_spec()), raw=_raw_frac,
            chunk=lambda n_valid, bs: cb.chunk_sizes(n_valid, self.graph_workers, bs),
            forward=self._forward_graphs, desc="chgnet single points")

    def build_graphs(self, raws: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
                     ) -> list[Any]:
        """CHGNet graphs of ``(numbers, frac, lattice)`` tuples (in the worker pool if any).

        A structure whose graph fails gives its error message instead of a graph.
        """
        from xtalforge.screening import chgnet_batch as cb

        spec = self.graph_spec()
        if self.graph_workers <= 0 or len(raws) < 2 * self.graph_workers:
            return cb.build_graphs(raws, spec)
        per = cb.chunk_sizes(len(raws), self.graph_workers, len(raws))
        try:
            futs = [self._graph_pool().submit(cb.build_graphs, raws[k : k + per], spec)
                    for k in range(0, len(raws), per)]
            return [g for f in futs for g in f.result()]
        except Exception as exc:  # noqa: BLE001 - broken pool: build here
            logger.warning("graph workers failed (%s); building graphs in-process", exc)
            self.close()
            return cb.build_graphs(raws, spec)

    def torchsim_model(self) -> Any:
        """torch-sim wrapper (:func:`xtalforge.screening.chgnet_batch.torchsim_model`)."""
        if self.effective_mode != "fast":
            raise NotImplementedError("batched relaxation uses CHGNet's 'fast' mode")
        from xtalforge.screening.chgnet_batch import torchsim_model

        return torchsim_model(self)

    def calculator(self) -> Calculator:
        """Return a cached ``CHGNetCalculator`` sharing this model."""
        if self._calc is None:
            from chgnet.model.dynamics import CHGNetCalculator

            self._calc = CHGNetCalculator(model=self.model, use_device=self.device,
                                          on_isolated_atoms="error")
        return self._calc


def _raw_frac(structure: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(atomic numbers, fractional coordinates, lattice rows)`` of a structure."""
    s = to_structure(structure)
    return (np.asarray(s.atomic_numbers, dtype=np.int64), np.asarray(s.frac_coords),
            np.asarray(s.lattice.matrix))


def _load_chgnet(target: str | None, device: str, dtype: str, mode: str,
                 force_threshold: float | None, graph_workers: int = 0) -> CHGNetEnergyModel:
    if dtype != "float32":
        raise ValueError("CHGNet is evaluated in float32 only")
    from chgnet.model import CHGNet

    device = resolve_device(device)
    name = target or "0.3.0"
    with preserve_torch_dtype("float32"):
        if Path(name).is_file():
            model = CHGNet.from_file(name)
            model = model.to(device)
        else:
            model = CHGNet.load(model_name=name, use_device=device, verbose=False)
    model.eval()
    fp = _state_dict_fingerprint(model)
    return CHGNetEnergyModel(
        name="chgnet",
        spec=f"chgnet:{name}",
        device=device,
        dtype="float32",
        supported_atomic_numbers=frozenset(range(1, 95)),
        force_threshold=force_threshold,
        fingerprint=fp,
        extra_info={"model_name": name, "mode": mode,
                    "energy_note": "CHGNet 0.3.0 is trained on MPtrj (MP2020-compatible)"},
        model=model,
        mode=mode,
        graph_workers=int(graph_workers),
    )


# --------------------------------------------------------------------------------------
# any ASE calculator
# --------------------------------------------------------------------------------------
@dataclass
class ASEEnergyModel(EnergyModel):
    """Any ASE calculator, built by a factory given by import path (one structure at a time)."""

    factory: Any = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    _calc: Any = None

    def _predict_batch(
        self, structures: list[Any], compute_forces: bool, compute_stress: bool
    ) -> list[EnergyResult]:
        calc = self.calculator()
        return [_ase_single_point(calc, s, compute_forces, compute_stress,
                                  self.force_threshold) for s in structures]

    def calculator(self) -> Calculator:
        """Return the (cached) calculator."""
        if self._calc is None:
            self._calc = self.factory(**self.factory_kwargs)
        return self._calc

    def predict(self, structures: Sequence[Any], batch_size: int = 1, **kw: Any
                ) -> list[EnergyResult]:
        """Per-structure evaluation (``batch_size`` is forced to 1 to isolate failures)."""
        return super().predict(structures, batch_size=1, **kw)


def _load_ase(target: str, kwargs: dict[str, Any], force_threshold: float | None
              ) -> ASEEnergyModel:
    module_name, _, attr = target.rpartition(".")
    if not module_name:
        raise ValueError(f"ase spec needs 'module.attr', got {target!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    fp = hashlib.sha256(repr((target, sorted(kwargs.items()))).encode()).hexdigest()
    return ASEEnergyModel(
        name="ase",
        spec=f"ase:{target}",
        force_threshold=force_threshold,
        fingerprint=fp,
        extra_info={"factory": target, "kwargs": {k: repr(v) for k, v in kwargs.items()}},
        factory=factory,
        factory_kwargs=dict(kwargs),
    )


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------
def get_energy_model(
    spec: str = "chgnet",
    device: str = "cpu",
    dtype: str = "float32",
    force_threshold: float | None = DEFAULT_FORCE_THRESHOLD,
    **kw: Any,
) -> EnergyModel:
    """Create an energy model from a spec string.

    Parameters
    ----------
    spec : str
        ``"chgnet"``, ``"chgnet:<model name or file>"``, ``"mace:<.model path>"``,
        ``"mace:<foundation name>"`` (e.g. ``"mace:medium-mpa-0"``; downloaded by mace-torch
        only when asked, a clear error offline) or ``"ase:<module>.<attr>"``.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    dtype : str
        ``"float32"`` or ``"float64"`` (CHGNet: float32 only).
    force_threshold : float or None
        Max force norm (eV/Å) above which a result is an error; ``None`` disables the check.
    **kw
        ``head`` (MACE), ``graph_workers`` (MACE and CHGNet: processes building graphs
        ahead of the model), ``mode`` (CHGNet: ``"auto"`` = ``"fast"``, ``"batched"``,
        ``"ase"``), or the keyword arguments of the ASE calculator factory.

    Returns
    -------
    EnergyModel
    """
    kind, _, target = spec.partition(":")
    kind = kind.strip().lower()
    t0 = time.perf_counter()
    if kind == "chgnet":
        model: EnergyModel = _load_chgnet(target or None, device, dtype,
                                          kw.pop("mode", "auto"), force_threshold,
                                          int(kw.pop("graph_workers", 0)))
    elif kind == "mace":
        if not target:
            raise ValueError("mace spec needs a path or a foundation name: 'mace:<...>'")
        model = _load_mace(target, device, dtype, kw.pop("head", None), force_threshold,
                           int(kw.pop("graph_workers", 0)))
    elif kind == "ase":
        if not target:
            raise ValueError("ase spec needs an import path: 'ase:module.attr'")
        model = _load_ase(target, kw, force_threshold)
        kw = {}
    else:
        raise ValueError(f"unknown energy model spec {spec!r} (chgnet, mace:..., ase:...)")
    if kw:
        raise TypeError(f"unexpected keyword arguments for {kind}: {sorted(kw)}")
    logger.info("loaded energy model %s in %.2f s", spec, time.perf_counter() - t0)
    return model
