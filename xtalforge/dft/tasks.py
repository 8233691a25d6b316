"""Reading atomate2 task documents: engine availability, resolved task parts, inputs.

The DFT collector receives the parts of atomate2 task documents it needs as resolved jobflow
references (objects or dicts; ``None`` when the job failed); these helpers walk them.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: INCAR keys recorded on DFT documents (``dft_inputs``).
INCAR_KEYS = (
    "ENCUT",
    "EDIFF",
    "EDIFFG",
    "ALGO",
    "PREC",
    "ISMEAR",
    "SIGMA",
    "ISPIN",
    "LORBIT",
    "LASPH",
    "LREAL",
    "NSW",
    "IBRION",
    "ISIF",
    "ICHARG",
    "LCHARG",
    "LEPSILON",
    "LPEAD",
    "KSPACING",
    "LDAU",
    "LDAUU",
    "GGA",
    "METAGGA",
    "NBANDS",
)
#: Settings that MP2020-compatible energies require (checked on the static's inputs).
MP_STATIC_SETTINGS = {"ENCUT": 520.0}

def vasp_status(vasp_cmd: str | None = None) -> tuple[bool, str]:
    """Return ``(available, reason)``: is the VASP command on PATH and are POTCARs configured.

    Parameters
    ----------
    vasp_cmd
        Command to check; default atomate2's ``SETTINGS.VASP_CMD`` (``~/.atomate2.yaml``,
        ``$ATOMATE2_VASP_CMD``). The executable checked is the first token whose name contains
        ``vasp`` (``srun -n 64 vasp_std`` -> ``vasp_std``), else the first token.
    """
    from atomate2 import SETTINGS
    from pymatgen.core import SETTINGS as PMG_SETTINGS

    cmd = vasp_cmd or SETTINGS.VASP_CMD
    tokens = shlex.split(os.path.expandvars(cmd or ""))
    exe = next((t for t in tokens if "vasp" in os.path.basename(t).lower()), None)
    exe = exe or (tokens[0] if tokens else "")
    problems = []
    if not exe or shutil.which(exe) is None:
        problems.append(f"VASP command {cmd!r}: {exe or '(empty)'!r} not found on PATH")
    psp = os.environ.get("PMG_VASP_PSP_DIR") or PMG_SETTINGS.get("PMG_VASP_PSP_DIR")
    if not psp:
        problems.append("no POTCAR directory: PMG_VASP_PSP_DIR is not set")
    elif not Path(os.path.expanduser(str(psp))).is_dir():
        problems.append(f"PMG_VASP_PSP_DIR={psp} is not a directory")
    if problems:
        return False, "; ".join(problems)
    return True, f"VASP command {cmd!r} ({shutil.which(exe)}), POTCARs in {psp}"


def vasp_available(vasp_cmd: str | None = None) -> bool:
    """Return whether VASP can run here (see :func:`vasp_status`)."""
    return vasp_status(vasp_cmd)[0]


def get_path(obj: Any, *path: str | int) -> Any:
    """Walk attributes / keys / indices of resolved task-document parts (objects or dicts)."""
    for p in path:
        if obj is None:
            return None
        if isinstance(p, int):
            try:
                obj = obj[p]
            except (IndexError, KeyError, TypeError):
                return None
        elif isinstance(obj, Mapping):
            obj = obj.get(p)
        else:
            obj = getattr(obj, p, None)
    return obj


def incar_subset(incar: Any) -> dict[str, Any]:
    """Return the INCAR keys of :data:`INCAR_KEYS` present in ``incar``."""
    if incar is None:
        return {}
    d = dict(incar) if not isinstance(incar, Mapping) else dict(incar.items())
    return {k: d[k] for k in INCAR_KEYS if k in d}


def tensor_mean_eig(t: Any) -> float | None:
    """Return the mean eigenvalue of a symmetrised 3x3 tensor (``None`` if not finite)."""
    if t is None:
        return None
    a = np.asarray(t, dtype=float)
    if a.shape != (3, 3) or not np.all(np.isfinite(a)):
        return None
    return float(np.mean(np.linalg.eigvalsh(0.5 * (a + a.T))))


def failed_msg(kind: str, task: Mapping[str, Any], extra: str = "") -> str:
    """Return the error recorded for a DFT job that produced no output."""
    return (
        f"DFT failed: {kind} job {task.get('name')!r} ({task.get('uuid')}) produced no output "
        f"(the DFT job failed or was stopped; see its run directory){extra}"
    )


def task_summary(kind: str, task: Mapping[str, Any], errors: list[str]) -> dict[str, Any] | None:
    """Return the resolved parts of one task, or ``None`` (and an error) when it failed."""
    out = task.get("output") or {}
    state = get_path(out, "state")
    if state is None:
        errors.append(failed_msg(kind, task))
        return None
    state = getattr(state, "value", state)
    if str(state) != "successful":
        errors.append(f"DFT failed: {kind} task {task.get('uuid')} finished in state {state!r}")
        return None
    return out
