"""Load xtalforge checkpoint files safely, with one clear error for a bad file.

Every xtalforge checkpoint (generator, training state, RL trainer state, property surrogate) is
a ``torch.save`` of plain data and tensors with a ``format`` tag, loaded with
``torch.load(weights_only=True)``. :func:`load_checkpoint_file` turns every way that can fail
(missing, truncated or corrupt file, a foreign pickle, a dict of another format) into a
:class:`CheckpointError` whose message names the file and the reason::

    not an xtalforge generator checkpoint: /path/x.pt (not a torch archive: truncated or corrupt)

It never repeats torch's advice to retry with ``weights_only=False``: unpickling an arbitrary
file that way can run code from it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file that is missing, corrupt or not of the expected kind."""


def _reason(exc: BaseException, path: Path) -> str:
    """Say why ``torch.load(weights_only=True)`` refused a file, without torch's advice."""
    import zipfile

    text = str(exc)
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives
        return "not a torch archive: truncated or corrupt"
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return "it holds Python objects other than tensors and plain data (refused: unsafe to load)"
    if isinstance(exc, (EOFError,)) or "failed finding central directory" in text or (
        "PytorchStreamReader" in text
    ):
        return "not a torch archive: truncated or corrupt"
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and "weights_only" not in ln]
    first = lines[0][:200] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint_file(
    path: str | Path,
    fmt: str | tuple[str, ...],
    what: str = "xtalforge checkpoint",
    map_location: str | torch.device = "cpu",
    mmap: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint dict written by ``torch.save`` and check its ``format`` tag.

    Parameters
    ----------
    path
        The file.
    fmt
        Accepted value(s) of the dict's ``"format"`` entry.
    what
        What the file should be, for the message (``"xtalforge generator checkpoint"``).
    map_location, mmap
        Passed to :func:`torch.load` (``mmap=True``: tensors stay on disk until used, for a
        quick look at the tags).

    Returns
    -------
    dict
        The checkpoint.

    Raises
    ------
    CheckpointError
        ``"not an <what>: PATH (reason)"`` for a missing, corrupt or foreign file.
    """
    path = Path(path)
    article = "an" if what[:1].lower() in "aeioux" else "a"  # an xtalforge ...
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - every unpickling failure means a bad file
        raise CheckpointError(f"not {article} {what}: {path} ({_reason(exc, path)})") from None
    formats = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"not {article} {what}: {path} (it holds a {type(ckpt).__name__}, not a checkpoint "
            "dict)"
        )
    if ckpt.get("format") not in formats:
        raise CheckpointError(
            f"not {article} {what}: {path} (format {ckpt.get('format')!r}, expected "
            f"{' or '.join(map(repr, formats))})"
        )
    return ckpt
