"""CP2K as the open DFT engine: installation check, data paths, and the settings of one hull.

CP2K (GPW, Gaussian basis sets and GTH pseudopotentials) runs through atomate2's CP2K makers and
custodian. It needs a pymatgen CP2K data directory (basis sets and potentials parsed into one
YAML file per element, what ``pmg config --cp2k /usr/share/cp2k <dir>`` writes) and a few
environment variables. :func:`configure_cp2k` sets both up in the running process, so nobody
configures CP2K by hand: ``scripts/install_cp2k.sh`` installs the Debian package, and the DFT
stage calls :func:`configure_cp2k` before it builds a CP2K flow.

:class:`Cp2kSettings` is the one set of numerical settings that every calculation of a DFT hull
shares (functional, basis, pseudopotentials, plane-wave cutoff, k-point density, smearing). Its
:meth:`~Cp2kSettings.fingerprint` keys the cache of reference-phase energies: energies from two
different settings are never put on one hull.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xtalforge.stores.provenance import fingerprint_json

logger = logging.getLogger(__name__)

#: Where the Debian package ``cp2k-data`` puts basis sets and potentials.
CP2K_SHARE = Path("/usr/share/cp2k")
#: Executables tried, in order.
CP2K_EXECUTABLES = ("cp2k.psmp", "cp2k.ssmp", "cp2k.popt", "cp2k.sopt", "cp2k")


def cp2k_executable() -> str | None:
    """Return the first CP2K executable on PATH (``cp2k.psmp`` first), or ``None``."""
    for exe in CP2K_EXECUTABLES:
        path = shutil.which(exe)
        if path:
            return path
    return None


def cp2k_data_source() -> Path | None:
    """Return CP2K's own data directory (``$XTALFORGE_CP2K_SHARE``, default /usr/share/cp2k)."""
    from xtalforge.settings import get_settings

    src = get_settings().CP2K_SHARE
    ok = (src / "BASIS_MOLOPT").is_file() and (src / "GTH_POTENTIALS").is_file()
    return src if ok else None


def cp2k_status() -> tuple[bool, str]:
    """Return ``(available, reason)``: is a CP2K executable on PATH and are its data files there."""
    exe = cp2k_executable()
    src = cp2k_data_source()
    from xtalforge.settings import get_settings

    problems = []
    if exe is None:
        problems.append(
            f"no CP2K executable ({', '.join(CP2K_EXECUTABLES)}) on PATH; install it with "
            "scripts/install_cp2k.sh"
        )
    if src is None:
        problems.append(
            "no CP2K data directory (BASIS_MOLOPT, GTH_POTENTIALS) in "
            f"{get_settings().CP2K_SHARE}"
        )
    if problems:
        return False, "; ".join(problems)
    return True, f"CP2K {exe}, data in {src}"


def default_data_dir() -> Path:
    """Return where the pymatgen CP2K data directory is written (under ``$XTALFORGE_CACHE``)."""
    from xtalforge.settings import get_settings

    return get_settings().CACHE / "cp2k_data"


def _write_pmg_data_dir(source: Path, target: Path) -> None:
    """Write pymatgen's per-element CP2K data files (``pmg config --cp2k source target``)."""
    import contextlib
    import io

    from pymatgen.cli.pmg_config import setup_cp2k_data

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".cp2k_data."))
    tmp.rmdir()  # setup_cp2k_data creates it (and asks before reusing an existing one)
    with contextlib.redirect_stdout(io.StringIO()):
        setup_cp2k_data([str(source), str(tmp)])
    (tmp / ".complete").write_text(str(source))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)


def configure_cp2k(data_dir: str | os.PathLike | None = None, force: bool = False) -> dict:
    """Prepare this process to run CP2K through atomate2 and return the environment it set.

    Writes the pymatgen CP2K data directory once (``data_dir``, default
    :func:`default_data_dir`; reused when complete) from CP2K's own data files, and sets
    ``PMG_CP2K_DATA_DIR``, ``CP2K_DATA_DIR``, ``DEFAULT_CP2K_FUNCTIONAL=PBE``,
    ``DEFAULT_CP2K_BASIS_TYPE=DZVP-MOLOPT``, ``DEFAULT_POTENTIAL_TYPE=Pseudopotential``,
    ``DEFAULT_CP2K_AUX_BASIS_TYPE=pFIT`` and ``ATOMATE2_CP2K_CMD`` (the executable found on
    PATH). Values already in the environment are kept unless ``force``.

    Raises
    ------
    RuntimeError
        When CP2K or its data files are missing (the message says how to install them).
    """
    ok, reason = cp2k_status()
    if not ok:
        raise RuntimeError(f"CP2K is not available: {reason}")
    src = cp2k_data_source()
    target = Path(data_dir) if data_dir else default_data_dir()
    if not (target / ".complete").is_file():
        if target.exists():
            shutil.rmtree(target)
        logger.info("writing the pymatgen CP2K data directory %s from %s", target, src)
        _write_pmg_data_dir(src, target)
    env = {
        "PMG_CP2K_DATA_DIR": str(target),
        "CP2K_DATA_DIR": str(src),
        "DEFAULT_CP2K_FUNCTIONAL": "PBE",
        "DEFAULT_CP2K_BASIS_TYPE": "DZVP-MOLOPT",
        "DEFAULT_POTENTIAL_TYPE": "Pseudopotential",
        "DEFAULT_CP2K_AUX_BASIS_TYPE": "pFIT",
        "ATOMATE2_CP2K_CMD": Path(cp2k_executable() or "cp2k.psmp").name,
    }
    for k, v in env.items():
        if force or not os.environ.get(k):
            os.environ[k] = v
    _refresh_atomate2_settings()
    return {k: os.environ[k] for k in env}


def _refresh_atomate2_settings() -> None:
    """Make atomate2's already-built SETTINGS see ``ATOMATE2_CP2K_CMD`` set after import."""
    try:
        from atomate2 import SETTINGS
    except ImportError:  # pragma: no cover - atomate2 is a dependency
        return
    cmd = os.environ.get("ATOMATE2_CP2K_CMD")
    if cmd and SETTINGS.CP2K_CMD != cmd:
        SETTINGS.CP2K_CMD = cmd


@dataclass(frozen=True)
class Cp2kSettings:
    """Numerical settings shared by every CP2K calculation of one DFT hull.

    Parameters
    ----------
    functional
        Exchange-correlation functional (``PBE``).
    basis, basis_file
        Gaussian basis set of every element and the CP2K data file holding it
        (``DZVP-MOLOPT-SR-GTH`` from ``BASIS_MOLOPT``, VandeVondele & Hutter 2007).
    potential, potential_file
        Goedecker-Teter-Hutter pseudopotential family; each element gets the
        ``<potential>-q<n>`` whose valence count ``n`` matches its basis set.
    cutoff
        Plane-wave cutoff of the finest multigrid (Ry); ``0`` lets atomate2 choose from the
        basis exponents.
    rel_cutoff
        Relative cutoff (Ry) mapping Gaussians onto the multigrids.
    kpoint_density
        k-points per reciprocal atom (pymatgen's ``Kpoints.automatic_density``,
        like VASP's KPPRA); ``0`` = Gamma only.
    smearing
        Fermi-Dirac smearing (on for metals; atomate2 then uses diagonalisation, not OT).
    electronic_temperature
        Smearing temperature (K).
    spin_polarized
        Unrestricted Kohn-Sham (UKS, as MP's ISPIN=2), on by default; atomate2's CP2K parser
        (0.1.5) also fails on spin-restricted outputs.
    eps_scf
        SCF convergence criterion.
    max_scf
        SCF iterations per outer loop.
    mixing_alpha, mixing_beta
        Broyden density mixing (``&MIXING ALPHA``, Kerker ``BETA`` in 1/bohr); pymatgen's
        defaults (0.05, 0.01) converge small metallic cells slowly.
    """

    functional: str = "PBE"
    basis: str = "DZVP-MOLOPT-SR-GTH"
    basis_file: str = "BASIS_MOLOPT"
    potential: str = "GTH-PBE"
    potential_file: str = "POTENTIAL"
    cutoff: float = 400.0
    rel_cutoff: float = 50.0
    kpoint_density: int = 300
    smearing: bool = True
    electronic_temperature: float = 500.0
    spin_polarized: bool = True
    eps_scf: float = 1e-6
    max_scf: int = 100
    mixing_alpha: float = 0.3
    mixing_beta: float = 1.5

    def __post_init__(self) -> None:
        # one type per field, so that 300 and 300.0 (YAML, CLI) give one fingerprint
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("float", float) and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
            elif f.type in ("int", int) and isinstance(v, float) and v.is_integer():
                object.__setattr__(self, f.name, int(v))

    def record(self) -> dict[str, Any]:
        """Return the settings as a plain dict (recorded on every ``dft`` document)."""
        return {"engine": "cp2k", **dataclasses.asdict(self)}

    def fingerprint(self) -> str:
        """Return a short hash of the settings (part of the reference-energy cache key)."""
        return fingerprint_json(self.record())[:16]

    def basis_and_potential(self, elements: Iterable[str]) -> dict[str, Any]:
        """Return pymatgen ``DftSet`` basis/potential names per element.

        Each element's pseudopotential is the ``<potential>-q<n>`` whose valence count matches
        its basis set, checked against the pymatgen CP2K data directory written by
        :func:`configure_cp2k` (atomate2's built-in table pins data-file hashes of another
        pymatgen version, which do not resolve here).

        Raises
        ------
        ValueError
            When an element has no such basis set or no pseudopotential with its valence count.
        """
        choice: dict[str, Any] = {el: self._element_choice(el) for el in sorted(set(elements))}
        # absolute paths: atomate2 writes files named BASIS and POTENTIAL into each run
        # directory, which would shadow CP2K's own POTENTIAL file
        src = cp2k_data_source() or CP2K_SHARE
        choice["basis_filenames"] = [str(src / self.basis_file)]
        choice["potential_filename"] = str(src / self.potential_file)
        return choice

    def _element_choice(self, el: str) -> dict[str, str]:
        data = _element_data(el)
        bases = [
            (h, b) for h, b in data.get("basis_sets", {}).items()
            if b.get("name") == self.basis and b.get("filename") == self.basis_file
        ]  # fmt: skip
        if not bases:
            raise ValueError(f"CP2K: no {self.basis} basis set ({self.basis_file}) for {el}")
        bases.sort(key=lambda hb: -((hb[1].get("info") or {}).get("electrons") or 0))
        for _, b in bases:
            q = (b.get("info") or {}).get("electrons")
            want = f"{self.potential}-q{q}"
            for p in data.get("potentials", {}).values():
                if p.get("name") == want and p.get("filename") == self.potential_file:
                    # names, not hashes: CP2K reads them from basis_file / potential_file
                    return {"basis": self.basis, "potential": want}
        raise ValueError(
            f"CP2K: no {self.potential}-q<n> pseudopotential ({self.potential_file}) matching the "
            f"{self.basis} valence of {el}"
        )

    def input_settings(self, elements: Iterable[str]) -> dict[str, Any]:
        """Return atomate2 ``Cp2kInputGenerator.user_input_settings`` for these settings."""
        return {
            "basis_and_potential": self.basis_and_potential(elements),
            "cutoff": self.cutoff,
            "rel_cutoff": self.rel_cutoff,
            "smearing": self.smearing,
            # k-points and smearing need diagonalisation: OT only for Gamma-only insulators
            "ot": not self.smearing and self.kpoint_density <= 0,
            "elec_temp": self.electronic_temperature,
            "spin_polarized": self.spin_polarized,
            "eps_scf": self.eps_scf,
            "max_scf": self.max_scf,
            "override_default_params": {
                "FORCE_EVAL": {"DFT": {"SCF": {"MIXING": {
                    "ALPHA": self.mixing_alpha, "BETA": self.mixing_beta}}}}
            },  # fmt: skip
        }

    def kpoints_settings(self) -> dict[str, Any] | None:
        """Return atomate2 ``user_kpoints_settings`` (``{"grid_density": n}``; ``None``: Gamma)."""
        if self.kpoint_density <= 0:
            return None
        return {"grid_density": int(self.kpoint_density)}

    def static_maker(self, elements: Iterable[str], name: str = "CP2K static") -> Any:
        """Return atomate2's CP2K ``StaticMaker`` for structures of ``elements`` (custodian on)."""
        from atomate2.cp2k.jobs.core import StaticMaker
        from atomate2.cp2k.sets.core import StaticSetGenerator

        gen = StaticSetGenerator(
            user_input_settings=self.input_settings(elements),
            user_kpoints_settings=self.kpoints_settings(),
            config_dict=_base_config(),
        )
        return StaticMaker(name=name, input_set_generator=gen)

    def relax_maker(self, elements: Iterable[str], name: str = "CP2K cell opt") -> Any:
        """Return atomate2's CP2K ``CellOptMaker`` (cell and positions) with these settings."""
        from atomate2.cp2k.jobs.core import CellOptMaker
        from atomate2.cp2k.sets.core import CellOptSetGenerator

        gen = CellOptSetGenerator(
            user_input_settings=self.input_settings(elements),
            user_kpoints_settings=self.kpoints_settings(),
            config_dict=_base_config(),
        )
        return CellOptMaker(name=name, input_set_generator=gen)


def _base_config() -> dict[str, Any]:
    """Return atomate2's base CP2K set without its pinned per-element basis/potential hashes."""
    import copy
    from importlib.resources import files

    from monty.serialization import loadfn

    base = copy.deepcopy(loadfn(files("atomate2.cp2k.sets") / "BaseCp2kSet.yaml"))
    base["cp2k_input"]["basis_and_potential"] = {}
    return base


@functools.lru_cache(maxsize=256)
def _element_data_cached(root: str, el: str) -> dict[str, Any]:
    import yaml

    path = Path(root) / el
    if not path.is_file():
        raise ValueError(f"CP2K: no basis/potential data for element {el!r} in {root}")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader) or {}


def _element_data(el: str) -> dict[str, Any]:
    """Return one element's entry of the pymatgen CP2K data directory (configured on demand)."""
    root = Path(os.environ.get("PMG_CP2K_DATA_DIR") or default_data_dir())
    if not (root / ".complete").is_file():
        configure_cp2k(root)
    return _element_data_cached(str(root), el)
