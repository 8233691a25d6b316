"""Vectorised CHGNet evaluation: graphs built off the model's thread, one forward per batch.

CHGNet's own ``predict_structure`` spends most of a batch outside the network on a GPU:

* graphs (neighbour list, line graph) are built one structure at a time in the calling
  process;
* every graph's eight tensors are copied to the device separately;
* ``BatchedGraph.from_graphs`` loops over graphs in Python (bond and angle bases, offsets,
  a ``torch.tensor`` of per-graph volumes that synchronises the device once per graph);
* forces and stresses are taken with ``create_graph=True`` (second-order autograd graph
  kept for training) and copied back to the host structure by structure.

This module keeps CHGNet's graph definition (its ``CrystalGraphConverter``, run unchanged,
optionally in worker processes) and its network (``CHGNet._compute`` and its layers, run
unchanged), and replaces the glue: graphs are concatenated on the host into one set of
arrays (:func:`collate`), copied to the device once, featurised with CHGNet's own basis
modules in a handful of vectorised operations (:func:`forward`), and differentiated once
with ``create_graph=False``. Energies agree with ``predict_structure`` to float32
round-off (``tests/screening/test_chgnet_batch.py``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["GraphArrays", "build_graph", "build_graphs", "collate", "forward"]

#: eV/Å^3 -> GPa
GPA_PER_EV_A3 = 160.21766208


@dataclass
class GraphArrays:
    """One CHGNet crystal graph as numpy arrays (picklable, cheap to send between processes)."""

    atomic_number: np.ndarray  # (n,) int
    frac: np.ndarray  # (n, 3)
    lattice: np.ndarray  # (3, 3) row vectors
    atom_graph: np.ndarray  # (n_dir, 2) center, neighbour
    image: np.ndarray  # (n_dir, 3)
    directed2undirected: np.ndarray  # (n_dir,)
    undirected2directed: np.ndarray  # (n_und,)
    bond_graph: np.ndarray  # (n_angle, 5) atom, und_i, dir_i, und_j, dir_j

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.atomic_number.shape[0])


_CONVERTERS: dict[tuple[float, float, str], Any] = {}


def _converter(atom_cutoff: float, bond_cutoff: float, algorithm: str) -> Any:
    key = (float(atom_cutoff), float(bond_cutoff), algorithm)
    conv = _CONVERTERS.get(key)
    if conv is None:
        from chgnet.graph import CrystalGraphConverter

        conv = CrystalGraphConverter(atom_graph_cutoff=key[0], bond_graph_cutoff=key[1],
                                     algorithm=algorithm, on_isolated_atoms="ignore",
                                     verbose=False)
        _CONVERTERS[key] = conv
    return conv


def build_graph(raw: tuple[np.ndarray, np.ndarray, np.ndarray],
                spec: tuple[float, float, str]) -> GraphArrays:
    """Build the CHGNet graph of one structure given as ``(numbers, frac_coords, lattice)``.

    Uses CHGNet's ``CrystalGraphConverter`` (same neighbour list and line graph as
    ``CHGNet.predict_structure``).
    """
    from pymatgen.core import Lattice, Structure

    numbers, frac, lattice = raw
    structure = Structure(Lattice(lattice), [int(z) for z in numbers], frac,
                          coords_are_cartesian=False)
    g = _converter(*spec)(structure)
    bond_graph = g.bond_graph.numpy()
    if bond_graph.size == 0:
        bond_graph = np.zeros((0, 5), dtype=np.int64)
    atom_graph = g.atom_graph.numpy()
    if atom_graph.ndim == 1:
        atom_graph = atom_graph.reshape(0, 2)
    return GraphArrays(
        atomic_number=g.atomic_number.numpy().astype(np.int64),
        frac=np.asarray(frac, dtype=np.float32),
        lattice=np.asarray(lattice, dtype=np.float32),
        atom_graph=atom_graph.astype(np.int64),
        image=g.neighbor_image.numpy().astype(np.float32),
        directed2undirected=g.directed2undirected.numpy().astype(np.int64),
        undirected2directed=g.undirected2directed.numpy().astype(np.int64),
        bond_graph=bond_graph.astype(np.int64),
    )


def build_graphs(raws: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 spec: tuple[float, float, str]) -> list[GraphArrays | str]:
    """Graphs of many structures (worker-process entry point); a failure becomes its message."""
    out: list[GraphArrays | str] = []
    for raw in raws:
        try:
            out.append(build_graph(raw, spec))
        except Exception as exc:  # noqa: BLE001 - per-structure failure
            out.append(f"graph construction failed: {type(exc).__name__}: {exc}"[:500])
    return out


def collate(graphs: list[GraphArrays]) -> dict[str, np.ndarray]:
    """Concatenate graphs into one set of host arrays with batch offsets applied."""
    n_atoms = np.array([g.n_atoms for g in graphs], dtype=np.int64)
    n_dir = np.array([g.atom_graph.shape[0] for g in graphs], dtype=np.int64)
    n_und = np.array([g.undirected2directed.shape[0] for g in graphs], dtype=np.int64)
    n_ang = np.array([g.bond_graph.shape[0] for g in graphs], dtype=np.int64)
    off_atom = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    off_dir = np.concatenate([[0], np.cumsum(n_dir)[:-1]])
    off_und = np.concatenate([[0], np.cumsum(n_und)[:-1]])
    ang_atom = np.repeat(off_atom, n_ang)
    ang_und = np.repeat(off_und, n_ang)
    ang_dir = np.repeat(off_dir, n_ang)
    bond = np.concatenate([g.bond_graph for g in graphs]) if n_ang.sum() else \
        np.zeros((0, 5), dtype=np.int64)
    return {
        "atomic_number": np.concatenate([g.atomic_number for g in graphs]),
        "frac": np.concatenate([g.frac for g in graphs]).astype(np.float32),
        "lattice": np.stack([g.lattice for g in graphs]).astype(np.float32),
        "atom_owner": np.repeat(np.arange(len(graphs)), n_atoms),
        "n_atoms": n_atoms,
        "atom_graph": np.concatenate([g.atom_graph for g in graphs])
        + np.repeat(off_atom, n_dir)[:, None],
        "edge_owner": np.repeat(np.arange(len(graphs)), n_dir),
        "image": np.concatenate([g.image for g in graphs]).astype(np.float32),
        "directed2undirected": np.concatenate([g.directed2undirected for g in graphs])
        + np.repeat(off_und, n_dir),
        "undirected2directed": np.concatenate([g.undirected2directed for g in graphs])
        + np.repeat(off_dir, n_und),
        # CHGNet's batched bond graph keeps (atom, undirected i, undirected j); the directed
        # indices select the bond vectors of the angle
        "bond_graph": np.stack([bond[:, 0] + ang_atom, bond[:, 1] + ang_und,
                                bond[:, 3] + ang_und], axis=1),
        "angle_dir": np.stack([bond[:, 2] + ang_dir, bond[:, 4] + ang_dir], axis=1),
    }


def to_device(batch: dict[str, np.ndarray], device: str | torch.device) -> dict[str, Any]:
    """Move collated arrays to ``device`` (pinned host memory, non-blocking on CUDA)."""
    import torch

    dev = torch.device(device)
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if dev.type == "cuda":
            t = t.pin_memory().to(dev, non_blocking=True)
        out[k] = t
    return out


def forward(model: Any, batch: dict[str, Any], compute_forces: bool = True,
            compute_stress: bool = False, positions: torch.Tensor | None = None
            ) -> dict[str, torch.Tensor]:
    """Energies (eV, total), forces (eV/Å) and stresses (eV/Å^3) of a collated batch.

    Parameters
    ----------
    model : chgnet.model.CHGNet
        The network (evaluated through its own layers and ``_compute``).
    batch : dict
        :func:`collate` output on the model's device (:func:`to_device`).
    compute_forces, compute_stress : bool
        Also return ``forces`` (n_atoms, 3) and ``stress`` (n_graphs, 3, 3) (ASE sign
        convention: ``(1/V) dE/dstrain``).
    positions : torch.Tensor, optional
        Cartesian positions to use instead of ``frac @ lattice`` (torch-sim states).

    Returns
    -------
    dict
        ``energy`` (n_graphs,) and, when asked, ``forces`` and ``stress``; all detached.
    """
    import torch
    from chgnet.model.model import BatchedGraph

    z = batch["atomic_number"]
    owner = batch["atom_owner"]
    n_graphs = int(batch["n_atoms"].shape[0])
    lattice = batch["lattice"]
    with torch.enable_grad():
        strain = None
        if compute_stress:
            strain = torch.zeros_like(lattice, requires_grad=True)
            eye = torch.eye(3, dtype=lattice.dtype, device=lattice.device)
            lattice = lattice @ (eye + strain)
        if positions is None:
            pos = torch.einsum("ni,nij->nj", batch["frac"], lattice[owner])
        else:
            pos = positions
            if compute_stress:
                eye = torch.eye(3, dtype=lattice.dtype, device=lattice.device)
                pos = torch.einsum("ni,nij->nj", pos, (eye + strain)[owner])
        if compute_forces and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        ag = batch["atom_graph"]
        neighbor = pos[ag[:, 1]] + torch.einsum("ei,eij->ej", batch["image"],
                                                lattice[batch["edge_owner"]])
        vec = pos[ag[:, 0]] - neighbor
        length = torch.linalg.norm(vec, dim=1)
        vec = vec / length[:, None]
        und_length = length[batch["undirected2directed"]]
        enc = model.bond_basis_expansion
        bond_ag = enc.rbf_expansion_ag(und_length)
        bond_bg = enc.rbf_expansion_bg(und_length)
        ad = batch["angle_dir"]
        if ad.shape[0]:
            angle = model.angle_basis_expansion(vec[ad[:, 0]], vec[ad[:, 1]])
            bond_graph = batch["bond_graph"]
        else:
            angle = torch.tensor([], device=z.device)
            bond_graph = torch.tensor([], device=z.device)
        volumes = torch.linalg.det(lattice)
        g = BatchedGraph(
            atomic_numbers=z,
            bond_bases_ag=bond_ag,
            bond_bases_bg=bond_bg,
            angle_bases=angle,
            batched_atom_graph=ag,
            batched_bond_graph=bond_graph,
            atom_owners=owner.to(torch.int32),
            directed2undirected=batch["directed2undirected"],
            atom_positions=[pos],
            strains=[strain],
            volumes=volumes,
        )
        pred = model._compute(g)
        e = pred["e"]
        n_atoms = batch["n_atoms"].to(e.dtype)
        if model.composition_model is not None:
            cm = model.composition_model
            feas = torch.zeros((n_graphs, cm.max_num_elements), dtype=e.dtype, device=e.device)
            feas.index_put_((owner, (z - 1).long()), torch.ones_like(z, dtype=e.dtype),
                            accumulate=True)
            if cm.is_intensive:
                feas = feas / n_atoms[:, None]
            e = e + cm._get_energy(feas)
        energy = e * n_atoms if model.is_intensive else e
        out: dict[str, torch.Tensor] = {"energy": energy.detach()}
        wrt = []
        if compute_forces:
            wrt.append(pos)
        if compute_stress:
            wrt.append(strain)
        if wrt:
            grads = torch.autograd.grad(energy.sum(), wrt)
            k = 0
            if compute_forces:
                out["forces"] = -grads[0].detach()
                k = 1
            if compute_stress:
                out["stress"] = grads[k].detach() / volumes.detach()[:, None, None]
    return out


def chunk_sizes(n: int, workers: int, batch: int) -> int:
    """Structures per worker task: a batch spread over every worker."""
    return max(1, math.ceil(batch / max(workers, 1)))


def torchsim_model(energy_model: Any) -> Any:
    """Return a torch-sim ``ModelInterface`` evaluating a :class:`CHGNetEnergyModel`.

    torch-sim ships no CHGNet wrapper. This one rebuilds CHGNet's graphs from the state's
    positions and cells at every call (as CHGNet's own ASE relaxer does at every step), in
    the energy model's graph worker pool when it has one, and evaluates them with
    :func:`forward`. A system whose graph cannot be built gets NaN energy and forces and its
    reason in ``system_errors`` (keyed by its index in the state); the others are evaluated.
    ``timings`` accumulates the seconds spent building graphs (``graph``, CPU) and in the
    model (``model``, transfer, forward and backward), the split that decides whether more
    graph workers or a larger batch pays.
    """
    import torch
    from torch_sim.models.interface import ModelInterface

    class CHGNetTorchSimModel(ModelInterface):
        """CHGNet for torch-sim (energy, forces, stress in eV, eV/Å, eV/Å^3)."""

        def __init__(self) -> None:
            super().__init__()
            self.energy_model = energy_model
            self.chgnet = energy_model.model
            self._device = torch.device(energy_model.device)
            self._dtype = torch.float32
            self._compute_forces = True
            self._compute_stress = True
            self._memory_scales_with = "n_atoms"
            self.system_errors: dict[int, str] = {}
            self.timings = {"graph": 0.0, "model": 0.0}

        def forward(self, state: Any, **_: Any) -> dict[str, torch.Tensor]:
            t0 = time.perf_counter()
            n_sys = int(state.n_systems)
            counts = torch.bincount(state.system_idx, minlength=n_sys).tolist()
            lattice = state.row_vector_cell.detach().to("cpu", torch.float64).numpy()
            pos = state.positions.detach().to("cpu", torch.float64).numpy()
            z = state.atomic_numbers.detach().to("cpu").numpy()
            raws, start = [], 0
            for b, n in enumerate(counts):
                frac = np.linalg.solve(lattice[b].T, pos[start : start + n].T).T
                raws.append((z[start : start + n], frac, lattice[b]))
                start += n
            graphs = self.energy_model.build_graphs(raws)
            t1 = time.perf_counter()
            self.timings["graph"] += t1 - t0
            self.system_errors = {b: g for b, g in enumerate(graphs) if isinstance(g, str)}
            ok = [b for b, g in enumerate(graphs) if not isinstance(g, str)]
            dev, dt = self._device, self._dtype
            energy = torch.full((n_sys,), float("nan"), device=dev, dtype=dt)
            forces = torch.full((int(sum(counts)), 3), float("nan"), device=dev, dtype=dt)
            stress = torch.full((n_sys, 3, 3), float("nan"), device=dev, dtype=dt)
            if ok:
                batch = to_device(collate([graphs[b] for b in ok]), dev)
                out = forward(self.chgnet, batch, True, True)
                energy[ok] = out["energy"].to(dt)
                stress[ok] = out["stress"].to(dt)
                atom_ok = torch.cat([torch.full((n,), b in self.system_errors, dtype=torch.bool)
                                     for b, n in enumerate(counts)]).logical_not().to(dev)
                forces[atom_ok] = out["forces"].to(dt)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            self.timings["model"] += time.perf_counter() - t1
            return {"energy": energy, "forces": forces, "stress": stress}

    return CHGNetTorchSimModel()
