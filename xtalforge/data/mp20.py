"""The project's MP-20 split: what the generator trains on, what it is checked on.

The MP-20 benchmark (Xie et al. 2022, as used by Park & Walsh 2025 and Cao & Wang 2025) has a
27,136-crystal train split whose atomic positions are not distributed with the copies this
project reads, plus validation (9,047) and test (9,046) splits with positions. The project
therefore trains on

* **train** = MP-20 val + MP-20 test minus a held-out set (17,093 crystals with the default),
* **held-out** = 1,000 MP-20 test crystals drawn once with a fixed seed; their ``material_id`` s
  are committed in ``xtalforge/data/splits/mp20_test_heldout_1000.txt``, so every run, every
  machine and every later session holds out the same crystals. They serve VAE reconstruction
  and validation loss, never training;
* **novelty reference** = every MP-20 structure available (val + test, held-out included), as
  Park & Walsh 2025 measure novelty against all of MP-20.

:func:`mp20_split_fingerprint` describes the split for the dataset fingerprint of a campaign
record (file hashes, ids file hash, sizes).
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "HELDOUT_IDS_FILE",
    "MP20Split",
    "heldout_ids",
    "load_mp20_report",
    "load_mp20_split",
    "make_heldout_ids",
    "mp20_formation_hull",
    "mp20_split_fingerprint",
]

logger = logging.getLogger(__name__)

HELDOUT_IDS_FILE = Path(__file__).parent / "splits" / "mp20_test_heldout_1000.txt"
HELDOUT_SEED = 0
HELDOUT_SIZE = 1000


def make_heldout_ids(test_ids: list[str], n: int = HELDOUT_SIZE, seed: int = HELDOUT_SEED
                     ) -> list[str]:
    """Draw the held-out ids: ``n`` of the sorted MP-20 test ids, numpy ``default_rng(seed)``.

    This is how the committed ids file was made; it is kept so that the draw can be checked.
    """
    import numpy as np

    ids = sorted(set(test_ids))
    if n > len(ids):
        raise ValueError(f"cannot hold out {n} of {len(ids)} test crystals")
    pick = np.random.default_rng(seed).choice(len(ids), size=n, replace=False)
    return sorted(ids[i] for i in pick)


def heldout_ids(path: str | Path = HELDOUT_IDS_FILE) -> list[str]:
    """Return the committed held-out ``material_id`` s (one per line, ``#`` comments allowed)."""
    lines = Path(path).read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mp20_split_fingerprint(data_dir: str | Path, ids_file: str | Path = HELDOUT_IDS_FILE
                           ) -> dict:
    """Describe what the split is made of, for a campaign's dataset fingerprint."""
    data_dir = Path(data_dir)
    ids = heldout_ids(ids_file)
    return {
        "name": "mp20-valtest-minus-heldout",
        "train": "MP-20 val + MP-20 test minus held-out",
        "heldout": f"{len(ids)} MP-20 test crystals (seed {HELDOUT_SEED}), ids in "
                   f"{Path(ids_file).name}",
        "novelty_reference": "MP-20 val + test (all available MP-20 structures)",
        "heldout_ids_sha256": _sha256(Path(ids_file)),
        "files": {name: _sha256(data_dir / f"{name}.csv.gz") for name in ("val", "test")},
    }


def _parse(cif: str):
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(cif, fmt="cif")


@dataclass
class MP20Split:
    """Structures and ids of the project's MP-20 split (see the module docstring)."""

    train: list = field(repr=False)
    train_ids: list[str] = field(repr=False)
    heldout: list = field(repr=False)
    heldout_ids: list[str] = field(repr=False)
    reference: list = field(repr=False)
    reference_ids: list[str] = field(repr=False)
    train_table: object = field(default=None, repr=False)
    fingerprint: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"MP20Split(train={len(self.train)}, heldout={len(self.heldout)}, "
                f"reference={len(self.reference)})")


def load_mp20_split(
    data_dir: str | Path,
    *,
    ids_file: str | Path = HELDOUT_IDS_FILE,
    train_sets: tuple[str, ...] = ("val", "test"),
    workers: int = 1,
) -> MP20Split:
    """Load the split from ``data_dir`` (``val.csv.gz``, ``test.csv.gz`` with a ``cif`` column).

    Parameters
    ----------
    data_dir
        Folder of the MP-20 CSVs.
    ids_file
        Held-out ids (the committed file by default).
    train_sets
        Which splits feed training (``("val",)`` gives the 9,047-crystal set of earlier runs;
        held-out crystals are removed whatever is chosen).
    workers
        CIF parsing processes.

    Raises
    ------
    ValueError
        When a held-out id is not in the test split (the files are not the ones the ids were
        drawn from).
    """
    import pandas as pd

    data_dir = Path(data_dir)
    frames = {name: pd.read_csv(data_dir / f"{name}.csv.gz") for name in ("val", "test")}
    held = set(heldout_ids(ids_file))
    missing = held - set(frames["test"]["material_id"])
    if missing:
        raise ValueError(
            f"{len(missing)} held-out ids are not in {data_dir / 'test.csv.gz'} "
            f"(e.g. {sorted(missing)[:3]}): not the MP-20 test split the ids were drawn from"
        )
    both = pd.concat([frames["val"], frames["test"]], ignore_index=True)
    cifs = both["cif"].tolist()
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            structs = pool.map(_parse, cifs, chunksize=64)
    else:
        structs = [_parse(c) for c in cifs]
    ids = both["material_id"].tolist()
    in_train = both["material_id"].isin(
        set().union(*(set(frames[s]["material_id"]) for s in train_sets))
    ) & ~both["material_id"].isin(held)
    is_held = both["material_id"].isin(held)
    train_idx = [i for i in range(len(both)) if in_train.iloc[i]]
    held_idx = [i for i in range(len(both)) if is_held.iloc[i]]
    fp = mp20_split_fingerprint(data_dir, ids_file)
    fp["train_sets"] = list(train_sets)
    fp["sizes"] = {"train": len(train_idx), "heldout": len(held_idx), "reference": len(both)}
    split = MP20Split(
        train=[structs[i] for i in train_idx], train_ids=[ids[i] for i in train_idx],
        heldout=[structs[i] for i in held_idx], heldout_ids=[ids[i] for i in held_idx],
        reference=structs, reference_ids=ids,
        train_table=both.iloc[train_idx].reset_index(drop=True), fingerprint=fp,
    )
    logger.info("MP-20 split: %r", split)
    return split


def mp20_formation_hull(data_dir: str | Path, chemical_potentials: dict[str, float],
                        queries: str):
    """Build the MP-20 formation-energy hull (all 45,229 entries) for MLIP queries.

    Parameters
    ----------
    data_dir
        Folder holding ``mp20_all_formation_energies_ehull.csv.gz``.
    chemical_potentials
        The MLIP's elemental ``mu_a`` (see
        :func:`xtalforge.screening.hull.mlip_chemical_potentials`).
    queries
        How candidates are queried, recorded in the hull convention (e.g.
        ``"CHGNet 0.3.0 single points, E_form = E - sum mu_a n_a"``).

    Returns
    -------
    xtalforge.screening.hull.ReferenceHull
    """
    import pandas as pd

    from xtalforge.screening.hull import ReferenceHull

    allf = pd.read_csv(Path(data_dir) / "mp20_all_formation_energies_ehull.csv.gz")
    return ReferenceHull.from_formation_energies(
        allf["pretty_formula"], allf["formation_energy_per_atom"], allf["material_id"],
        chemical_potentials=chemical_potentials,
        convention={"energy_source": "DFT (MP GGA/GGA+U, MP2020 as in MP-20)",
                    "reference_set": f"MP-20 all formation energies ({len(allf):,})",
                    "queries": queries,
                    "chemical_potentials_source": "the querying MLIP"})


def load_mp20_report(data_dir: str | Path, limit: int | None = None, progress: bool = False):
    """Load MP-20 val + test as one dataset report, for campaign ingestion (``"mp20:DIR"``).

    Returns the :class:`~xtalforge.data.loaders.LoadReport` of both CSVs (entries keep their
    ``material_id``) named ``mp20-valtest``, whose fingerprint also covers the held-out ids
    file, with the held-out ids in ``heldout``: the ingest labels those documents
    ``split="heldout"`` so that training (``split="train"``) never sees them.
    """
    from xtalforge.data.loaders import LoadReport, load_cdvae_csv

    data_dir = Path(data_dir)
    parts = [load_cdvae_csv(data_dir / f"{name}.csv.gz", limit=limit, progress=progress)
             for name in ("val", "test")]
    fp = mp20_split_fingerprint(data_dir)
    h = hashlib.sha256()
    for p in parts:
        h.update(p.fingerprint.encode())
    h.update(fp["heldout_ids_sha256"].encode())
    report = LoadReport(
        name="mp20-valtest", path=str(data_dir),
        entries=[e for p in parts for e in p.entries],
        rejected=[r for p in parts for r in p.rejected], fingerprint=h.hexdigest(),
        heldout=set(heldout_ids()))
    return report
