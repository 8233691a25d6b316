"""Dataset loaders with explicit rejection of bad entries.

Supported inputs (``load_dataset`` dispatches on the suffix or ``fmt``):

* CDVAE-style CSV (``.csv``/``.csv.gz``): a ``cif`` column plus property columns; an id column is
  taken from ``material_id`` or ``id`` when present, else the row number;
* pymatgen JSON (``.json``/``.json.gz``): a list of ``Structure`` dicts, of
  ``ComputedStructureEntry`` dicts, or of ``{"structure": ..., **properties}`` records;
* extxyz (``.extxyz``/``.xyz``) through ASE, ``info`` entries as properties;
* ASE database (``.db``), key-value pairs as properties.

Every entry either becomes a :class:`DatasetEntry` or a :class:`Rejection` with a reason (an
unparsable CIF, a NaN lattice, overlapping atoms, an unknown element ...). A bad entry never stops
the load, and nothing is dropped silently: :class:`LoadReport` counts and lists both.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Element, Structure
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: Minimum allowed interatomic distance (Angstrom) for an entry to be accepted.
MIN_DISTANCE = 0.5


@dataclass
class DatasetEntry:
    """One accepted dataset entry."""

    source_id: str
    structure: Structure
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejection:
    """One rejected dataset entry, with the reason."""

    source_id: str
    reason: str
    raw: str | None = None


@dataclass
class LoadReport:
    """Result of loading a dataset: accepted entries, rejections and a fingerprint."""

    name: str
    path: str | None
    entries: list[DatasetEntry]
    rejected: list[Rejection]
    fingerprint: str
    heldout: set[str] = field(default_factory=set)
    """Source ids to keep out of training (labelled ``split="heldout"`` on ingestion)."""

    @property
    def n_total(self) -> int:
        """Number of entries read (accepted + rejected)."""
        return len(self.entries) + len(self.rejected)

    def summary(self) -> dict[str, Any]:
        """Return counts and rejection reasons grouped by kind."""
        kinds = Counter(r.reason.split(":")[0] for r in self.rejected)
        return {
            "name": self.name,
            "path": self.path,
            "n_total": self.n_total,
            "n_accepted": len(self.entries),
            "n_rejected": len(self.rejected),
            "rejected_by_reason": dict(kinds),
            "fingerprint": self.fingerprint,
        }


def validate_structure(structure: Structure, min_distance: float = MIN_DISTANCE) -> str | None:
    """Return why a structure is unusable, or ``None`` when it is fine.

    Checks: at least one site; ordered sites of real elements (no dummy species such as ``X``);
    a finite, non-degenerate lattice; finite coordinates; no two atoms closer than
    ``min_distance`` (periodic images included).
    """
    if len(structure) == 0:
        return "empty: structure has no sites"
    if not structure.is_ordered:
        return "disordered: partial occupancies are not supported"
    for sp in structure.composition.elements:
        if not isinstance(sp, Element) and not hasattr(sp, "element"):
            return f"unknown element: {sp}"
        symbol = getattr(sp, "symbol", str(sp))
        if not Element.is_valid_symbol(symbol):
            return f"unknown element: {symbol}"
    matrix = structure.lattice.matrix
    if not np.all(np.isfinite(matrix)):
        return "NaN lattice: lattice matrix has non-finite values"
    vol = float(abs(np.linalg.det(matrix)))
    if not math.isfinite(vol) or vol < 1e-3:
        return f"degenerate lattice: volume {vol:.3g} A^3"
    if not np.all(np.isfinite(structure.frac_coords)):
        return "NaN coordinates: non-finite fractional coordinates"
    if len(structure) > 1 or vol < 50:
        dmin = _min_distance(structure)
        if dmin < min_distance:
            return (
                f"overlapping atoms: minimum interatomic distance {dmin:.3f} A < {min_distance} A"
            )
    return None


def _min_distance(structure: Structure) -> float:
    """Minimum interatomic distance including periodic images (self-images too)."""
    if len(structure) == 1:
        return float(min(structure.lattice.abc))
    dm = structure.distance_matrix
    np.fill_diagonal(dm, np.inf)
    d = float(dm.min())
    # self-images (a lattice vector shorter than the threshold) are not in the distance matrix
    return min(d, float(min(structure.lattice.abc)))


def _parse_cif(text: str) -> Structure:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = CifParser(io.StringIO(text))
        structures = parser.parse_structures(primitive=False, on_error="raise")
    if not structures:
        raise ValueError("no structure in CIF")
    return structures[0]


def _clean_value(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def build_load_report(
    name: str, path: str | None, items: Iterable[tuple[str, Any, dict[str, Any]]], progress: bool
) -> LoadReport:
    """Parse and validate ``(source_id, structure-or-callable, properties)`` items."""
    entries: list[DatasetEntry] = []
    rejected: list[Rejection] = []
    h = hashlib.sha256()
    seen: Counter[str] = Counter()
    for source_id, raw, props in tqdm(
        items, desc=f"load {name}", disable=not progress, unit="entry"
    ):
        seen[source_id] += 1
        if seen[source_id] > 1:  # duplicate ids in a source get a suffix, never overwrite
            source_id = f"{source_id}#{seen[source_id]}"
        try:
            structure = raw() if callable(raw) else raw
        except Exception as exc:  # noqa: BLE001 - any parse failure is a rejection
            msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            rejected.append(Rejection(source_id, f"unparsable: {msg}"))
            h.update(f"{source_id}|rejected".encode())
            continue
        reason = validate_structure(structure)
        if reason:
            rejected.append(Rejection(source_id, reason))
            h.update(f"{source_id}|rejected".encode())
            continue
        props = {k: _clean_value(v) for k, v in props.items()}
        entries.append(DatasetEntry(source_id, structure, props))
        # lattice lengths to 1e-6 A: the full float repr differs in its last bits between
        # CPUs and math libraries, and the fingerprint must not
        abc = ",".join(f"{x:.6f}" for x in structure.lattice.abc)
        h.update(f"{source_id}|{structure.composition.formula}|{abc}".encode())
    if rejected:
        logger.warning(
            "%s: rejected %d of %d entries (%s)",
            name,
            len(rejected),
            len(entries) + len(rejected),
            dict(Counter(r.reason.split(":")[0] for r in rejected)),
        )
    return LoadReport(name, path, entries, rejected, h.hexdigest())


def load_cdvae_csv(
    path: str | Path, limit: int | None = None, progress: bool = True, cif_column: str = "cif"
) -> LoadReport:
    """Load a CDVAE-style CSV (``cif`` column plus properties; gzip allowed)."""
    import pandas as pd

    path = Path(path)
    df = pd.read_csv(path, nrows=limit)
    if cif_column not in df.columns:
        raise ValueError(f"{path}: no {cif_column!r} column (columns: {list(df.columns)})")
    id_col = next((c for c in ("material_id", "id", "mp_id") if c in df.columns), None)
    prop_cols = [c for c in df.columns if c not in {cif_column, "Unnamed: 0"}]

    def items() -> Iterator[tuple[str, Any, dict[str, Any]]]:
        for i, row in enumerate(df.to_dict("records")):
            sid = str(row[id_col]) if id_col else str(i)
            cif = row[cif_column]
            if not isinstance(cif, str):
                yield sid, _raiser(ValueError("empty CIF")), {}
                continue
            yield sid, (lambda c=cif: _parse_cif(c)), {k: row[k] for k in prop_cols}

    return build_load_report(path.name.split(".")[0], str(path), items(), progress)


def _raiser(exc: Exception):
    def f():
        raise exc

    return f


def load_pymatgen_json(
    path: str | Path, limit: int | None = None, progress: bool = True
) -> LoadReport:
    """Load a JSON list of Structures, ComputedStructureEntries or ``{structure, ...}`` records."""
    import json

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get("structures") or data.get("entries") or list(data.values())
    data = data[:limit] if limit else data

    def items() -> Iterator[tuple[str, Any, dict[str, Any]]]:
        for i, d in enumerate(data):
            if not isinstance(d, dict):
                yield str(i), _raiser(ValueError(f"not a dict: {type(d).__name__}")), {}
                continue
            cls = d.get("@class", "")
            sid = str(d.get("entry_id") or d.get("material_id") or d.get("id") or i)
            if cls == "Structure" or "lattice" in d and "sites" in d:
                yield sid, (lambda d=d: Structure.from_dict(d)), dict(d.get("properties") or {})
            elif "structure" in d:
                props = {k: v for k, v in d.items() if k not in {"structure", "@module", "@class"}}
                if cls.endswith("Entry"):
                    props = {
                        "energy": d.get("energy"),
                        "correction": d.get("correction"),
                        **(d.get("data") or {}),
                    }
                props = {k: v for k, v in props.items() if not isinstance(v, (dict, list))}
                yield sid, (lambda s=d["structure"]: Structure.from_dict(s)), props
            else:
                yield sid, _raiser(ValueError("no structure in record")), {}

    return build_load_report(path.name.split(".")[0], str(path), items(), progress)


def _atoms_items(atoms_iter: Iterable[tuple[str, Any, dict[str, Any]]]):
    from pymatgen.io.ase import AseAtomsAdaptor

    for sid, atoms, props in atoms_iter:
        yield sid, (lambda a=atoms: AseAtomsAdaptor.get_structure(a)), props


def load_extxyz(path: str | Path, limit: int | None = None, progress: bool = True) -> LoadReport:
    """Load an extxyz file through ASE (``atoms.info`` scalars become properties)."""
    from ase.io import iread

    path = Path(path)

    def gen():
        try:
            for i, atoms in enumerate(iread(str(path), index=":", format="extxyz")):
                if limit and i >= limit:
                    break
                props = {k: v for k, v in atoms.info.items() if np.isscalar(v)}
                yield str(atoms.info.get("id", i)), atoms, props
        except Exception as exc:  # noqa: BLE001 - a broken frame ends the file: report it
            yield "end-of-file", _raiser(ValueError(f"extxyz read error: {exc}")), {}

    def items():
        for sid, atoms, props in gen():
            if callable(atoms):
                yield sid, atoms, props
            else:
                yield from _atoms_items([(sid, atoms, props)])

    return build_load_report(path.name.split(".")[0], str(path), items(), progress)


def load_ase_db(path: str | Path, limit: int | None = None, progress: bool = True) -> LoadReport:
    """Load an ASE database (key-value pairs become properties)."""
    from ase.db import connect

    path = Path(path)
    db = connect(str(path))

    def gen():
        for i, row in enumerate(db.select()):
            if limit and i >= limit:
                break
            yield str(row.get("uid", row.id)), row.toatoms(), dict(row.key_value_pairs)

    return build_load_report(path.name.split(".")[0], str(path), _atoms_items(gen()), progress)


def load_dataset(
    path: str | Path, fmt: str | None = None, limit: int | None = None, progress: bool = True
) -> LoadReport:
    """Load a dataset file, choosing the loader from ``fmt`` or the file suffix.

    Parameters
    ----------
    path
        File path (``.csv[.gz]``, ``.json[.gz]``, ``.extxyz``/``.xyz``, ``.db``).
    fmt
        ``"csv"``, ``"json"``, ``"extxyz"`` or ``"asedb"`` to override the suffix.
    limit
        Read at most this many entries.
    progress
        Show a progress bar.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist")
    suffixes = "".join(path.suffixes).lower()
    fmt = fmt or (
        "csv"
        if ".csv" in suffixes
        else "json"
        if ".json" in suffixes
        else "extxyz"
        if suffixes.endswith((".extxyz", ".xyz"))
        else "asedb"
        if suffixes.endswith(".db")
        else None
    )
    loaders = {
        "csv": load_cdvae_csv,
        "json": load_pymatgen_json,
        "extxyz": load_extxyz,
        "asedb": load_ase_db,
    }
    if fmt not in loaders:
        raise ValueError(f"cannot tell the format of {path}; pass fmt= one of {sorted(loaders)}")
    return loaders[fmt](path, limit=limit, progress=progress)
